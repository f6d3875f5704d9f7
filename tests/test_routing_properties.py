"""Whole-cluster properties of the routing rules (hypothesis).

Random zone trees (depth 1..4, every zone with one endpoint or an HA pair, optionally a global
zone). Every endpoint runs its own :class:`Router` with its own :class:`Topology`; every adjacent
link is up. A message is originated with ``route_local`` on one endpoint and delivered
breadth-first along the decisions' targets: each receiver calls ``route`` with ``sender`` = the
previous hop and ``origin_zone`` = the ``originZone`` that hop would put on the wire (its
``from_zone``, None for a message it originated).

Properties:

* upward: a message about an object in zone Z originated by an endpoint of Z reaches every
  endpoint of Z and of every ancestor of Z exactly once, and nobody else;
* downward: originated by an endpoint of the root zone about an object in Z, it reaches every
  endpoint on the path root..Z exactly once, and nobody else;
* exception, ``event::UpdateExecutions``: Icinga relays a *received* one from the receiver's own
  zone (not the host's), so downward it stops after the first hop; kept as its own property;
* global: an object of a global zone, originated at the root, reaches every endpoint exactly
  once. Originated in a non-root zone Z it does **not** reach Z's ancestors: a global zone has no
  parents and expands to "our zone + direct children" only (Icinga ``RelayMessageOne``), so it
  reaches exactly the endpoints of Z's subtree. That is the counterexample to "global objects
  reach everybody", kept as its own property.

Every hop must accept the message, never target itself or the hop it came from, and the
simulation must terminate (bounded number of deliveries).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.routing import ObjectZones, Router
from router.routing import EndpointSpec, Topology, ZoneSpec

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

HOST = "h"
GLOBAL_HOST = "gh"
GLOBAL = "global-templates"


@dataclass
class Cluster:
    zones: list[ZoneSpec]
    parent: dict[str, str | None]

    @property
    def root(self) -> str:
        return self.zones[0].name

    def endpoints_of(self, zone: str) -> tuple[str, ...]:
        return next(z.endpoints for z in self.zones if z.name == zone)

    def ancestors(self, zone: str) -> list[str]:
        out = []
        p = self.parent[zone]
        while p is not None:
            out.append(p)
            p = self.parent[p]
        return out

    def subtree(self, zone: str) -> list[str]:
        return [z.name for z in self.zones
                if not z.global_ and (z.name == zone or zone in self.ancestors(z.name))]

    def all_endpoints(self) -> set[str]:
        return {e for z in self.zones for e in z.endpoints}


@st.composite
def clusters(draw) -> Cluster:
    depth = draw(st.integers(1, 4))
    zones: list[ZoneSpec] = []
    parent: dict[str, str | None] = {}

    def add(par: str | None, level: int, spine: bool) -> None:
        name = f"z{len(zones)}"
        n = draw(st.integers(1, 2))
        # names chosen so that configured order and byte order (routing master) may differ
        names = [f"{name}-{c}" for c in "ab"[:n]]
        if n == 2 and draw(st.booleans()):
            names.reverse()
        zones.append(ZoneSpec(name, tuple(names), par))
        parent[name] = par
        if level < depth:
            k = draw(st.integers(1 if spine else 0, 3 if level == 1 else 2))
            for i in range(k):
                add(name, level + 1, spine and i == 0)

    add(None, 1, True)
    if draw(st.booleans()):
        zones.append(ZoneSpec(GLOBAL, global_=True))
        parent[GLOBAL] = None
    return Cluster(zones, parent)


def build_routers(cluster: Cluster, hosts: dict[str, str]) -> tuple[dict[str, Router],
                                                                    dict[str, frozenset[str]]]:
    eps = [EndpointSpec(e) for z in cluster.zones for e in z.endpoints]
    routers: dict[str, Router] = {}
    connected: dict[str, frozenset[str]] = {}
    for ep in eps:
        t = Topology(cluster.zones, eps, ep.name)
        routers[ep.name] = Router(t, ObjectZones(t, hosts))
        connected[ep.name] = frozenset(t.adjacent_endpoints())
    return routers, connected


def simulate(routers: dict[str, Router], connected: dict[str, frozenset[str]], origin: str,
             method: str, params: dict) -> Counter[str]:
    first = routers[origin].route_local(method, params, connected[origin])
    assert first.accepted, first
    assert first.unreachable == (), first
    received: Counter[str] = Counter()
    queue = deque((t, origin, None) for t in first.targets)
    limit = 4 * len(routers) + 10
    deliveries = 0
    while queue:
        deliveries += 1
        assert deliveries <= limit, f"no termination after {limit} deliveries: {received}"
        receiver, sender, origin_zone = queue.popleft()
        assert receiver != sender
        received[receiver] += 1
        router = routers[receiver]
        d = router.route(method, params, sender, origin_zone, connected[receiver])
        assert d.accepted, (receiver, sender, origin_zone, d)
        assert d.unreachable == (), d
        assert receiver not in d.targets and sender not in d.targets, (receiver, sender, d)
        assert len(set(d.targets)) == len(d.targets)
        next_origin = router.from_zone(sender, origin_zone)
        for t in d.targets:
            queue.append((t, receiver, next_origin))
    return received


def assert_exactly_once(received: Counter[str], expected: set[str]) -> None:
    dupes = {e: n for e, n in received.items() if n > 1}
    assert not dupes, f"delivered more than once: {dupes}"
    assert set(received) == expected, (
        f"missing {sorted(expected - set(received))}, extra {sorted(set(received) - expected)}")


CHECKABLE = st.sampled_from(["event::CheckResult", "event::SetNextCheck",
                             "event::SetAcknowledgement", "event::UpdateExecutions"])
# UpdateExecutions is relayed from the receiver's own zone (see the dedicated property below)
CHECKABLE_DOWN = st.sampled_from(["event::CheckResult", "event::SetNextCheck",
                                  "event::SetAcknowledgement", "event::ClearAcknowledgement"])


@SETTINGS
@given(clusters(), st.data())
def test_upward_reaches_zone_and_ancestors_exactly_once(cluster: Cluster, data) -> None:
    zone = data.draw(st.sampled_from([z.name for z in cluster.zones if not z.global_]))
    origin = data.draw(st.sampled_from(cluster.endpoints_of(zone)))
    method = data.draw(CHECKABLE)
    routers, connected = build_routers(cluster, {HOST: zone})
    received = simulate(routers, connected, origin, method, {"host": HOST, "service": "s"})
    expected = {e for z in (zone, *cluster.ancestors(zone)) for e in cluster.endpoints_of(z)}
    assert_exactly_once(received, expected - {origin})


@SETTINGS
@given(clusters(), st.data())
def test_downward_from_root_reaches_the_path_exactly_once(cluster: Cluster, data) -> None:
    zone = data.draw(st.sampled_from([z.name for z in cluster.zones if not z.global_]))
    origin = data.draw(st.sampled_from(cluster.endpoints_of(cluster.root)))
    routers, connected = build_routers(cluster, {HOST: zone})
    kind = data.draw(st.sampled_from(["checkable", "config", "removal"]))
    if kind == "checkable":
        method, params = data.draw(CHECKABLE_DOWN), {"host": HOST}
    elif kind == "config":
        method = data.draw(st.sampled_from(["config::UpdateObject", "config::DeleteObject"]))
        params = {"name": "h!s!dt", "type": "Downtime", "version": 1.0, "zone": zone}
    else:
        method, params = "event::SetRemovalInfo", {"object_type": "Comment",
                                                   "object_name": f"{HOST}!c1"}
    received = simulate(routers, connected, origin, method, params)
    path = [zone, *cluster.ancestors(zone)]
    expected = {e for z in path for e in cluster.endpoints_of(z)}
    assert_exactly_once(received, expected - {origin})


@SETTINGS
@given(clusters(), st.data())
def test_update_executions_downward_stops_after_one_hop(cluster: Cluster, data) -> None:
    """Counterexample to the downward property, faithful to Icinga 2.13.6.

    ``UpdateExecutionsAPIHandler`` re-relays with ``Zone::GetLocalZone()`` as secobj, so a
    *received* UpdateExecutions only goes to the receiver's zone and its ancestors, never
    further down. Originated at the root about a host in Z it reaches the root zone and, if the
    originator is the root's routing master, the direct child zone on the path; nothing deeper.
    """
    zone = data.draw(st.sampled_from([z.name for z in cluster.zones if not z.global_]))
    root_eps = cluster.endpoints_of(cluster.root)
    origin = data.draw(st.sampled_from(root_eps))
    routers, connected = build_routers(cluster, {HOST: zone})
    received = simulate(routers, connected, origin, "event::UpdateExecutions",
                        {"host": HOST, "executions": {}})
    expected = set(root_eps)
    path = [zone, *cluster.ancestors(zone)]
    if zone != cluster.root and origin == min(root_eps):
        child_on_path = path[-2]
        expected |= set(cluster.endpoints_of(child_on_path))
    assert_exactly_once(received, expected - {origin})


@SETTINGS
@given(clusters(), st.data())
def test_global_object_from_root_reaches_everybody_exactly_once(cluster: Cluster, data) -> None:
    if GLOBAL not in cluster.parent:
        cluster.zones.append(ZoneSpec(GLOBAL, global_=True))
        cluster.parent[GLOBAL] = None
    origin = data.draw(st.sampled_from(cluster.endpoints_of(cluster.root)))
    routers, connected = build_routers(cluster, {GLOBAL_HOST: GLOBAL})
    if data.draw(st.booleans()):
        method, params = "event::CheckResult", {"host": GLOBAL_HOST}
    else:
        method, params = "config::UpdateObject", {"name": "x", "type": "Host", "zone": GLOBAL}
    received = simulate(routers, connected, origin, method, params)
    assert_exactly_once(received, cluster.all_endpoints() - {origin})


@SETTINGS
@given(clusters(), st.data())
def test_global_object_from_below_reaches_only_the_subtree(cluster: Cluster, data) -> None:
    if GLOBAL not in cluster.parent:
        cluster.zones.append(ZoneSpec(GLOBAL, global_=True))
        cluster.parent[GLOBAL] = None
    zone = data.draw(st.sampled_from([z.name for z in cluster.zones if not z.global_]))
    origin = data.draw(st.sampled_from(cluster.endpoints_of(zone)))
    routers, connected = build_routers(cluster, {GLOBAL_HOST: GLOBAL})
    received = simulate(routers, connected, origin, "event::CheckResult", {"host": GLOBAL_HOST})
    expected = {e for z in cluster.subtree(zone) for e in cluster.endpoints_of(z)}
    assert_exactly_once(received, expected - {origin})


def test_global_counterexample_is_real() -> None:
    """The documented exception: a satellite's global-zone message never reaches the master."""
    zones = [ZoneSpec("master", ("m1",)), ZoneSpec("sat", ("s1",), "master"),
             ZoneSpec(GLOBAL, global_=True)]
    cluster = Cluster(zones, {"master": None, "sat": "master", GLOBAL: None})
    routers, connected = build_routers(cluster, {GLOBAL_HOST: GLOBAL})
    received = simulate(routers, connected, "s1", "event::CheckResult", {"host": GLOBAL_HOST})
    assert received == Counter()
