"""Routing: permission classes, origin, relay fan-out, routing master, learning.

Tree used throughout (all adjacent links up unless a test says otherwise)::

    master (m1, m2)
    ├── sat   (s1, s2)
    │   ├── a1 (a1)
    │   └── a2 (a2)
    └── sat-b (sb1)
    global-templates (global)
    endpoint "loose" belongs to no zone
"""

from __future__ import annotations

import pytest

from router.routing import (METHODS, REASONS, ObjectZones, Perm, RouteDecision, Router,
                            Target, UnknownObjects)
from router.routing import EndpointSpec, Topology, ZoneSpec

ZONES = [
    ZoneSpec("master", ("m1", "m2")),
    ZoneSpec("sat", ("s1", "s2"), parent="master"),
    ZoneSpec("sat-b", ("sb1",), parent="master"),
    ZoneSpec("a1", ("a1",), parent="sat"),
    ZoneSpec("a2", ("a2",), parent="sat"),
    ZoneSpec("global-templates", global_=True),
]
ENDPOINTS = [EndpointSpec(n) for n in ("m1", "m2", "s1", "s2", "sb1", "a1", "a2", "loose")]
HOSTS = {"web01": "sat", "mhost": "master", "a1host": "a1", "a2host": "a2", "bhost": "sat-b",
         "ghost": "global-templates"}

CR = "event::CheckResult"


def make(local: str, hosts=HOSTS, unknown=UnknownObjects.LEARN, zones=ZONES,
         endpoints=ENDPOINTS) -> Router:
    t = Topology(zones, endpoints, local)
    return Router(t, ObjectZones(t, hosts, unknown))


def up(router: Router, *down: str) -> frozenset[str]:
    """Every adjacent endpoint connected except ``down``."""
    return frozenset(router.topology.adjacent_endpoints()) - set(down)


def cr(host: str, service: str | None = "svc") -> dict:
    p = {"host": host, "cr": {"state": 0, "performance_data": []}}
    if service:
        p["service"] = service
    return p


def accepted(d: RouteDecision, targets: tuple[str, ...], **kw) -> None:
    assert d.accepted, d
    assert d.reason is None
    assert d.targets == targets, d
    for k, v in kw.items():
        assert getattr(d, k) == v, (k, d)


def refused(d: RouteDecision, reason: str) -> None:
    assert not d.accepted, d
    assert d.reason == reason, d
    assert d.targets == ()
    assert d.reason in REASONS


# -- method table ----------------------------------------------------------------------------

ALL_2136_METHODS = {
    "icinga::Hello", "event::Heartbeat", "log::SetLogPosition", "event::CheckResult",
    "event::SetNextCheck", "event::SetLastCheckStarted", "event::SetStateBeforeSuppression",
    "event::SetSuppressedNotifications", "event::SetSuppressedNotificationTypes",
    "event::SetNextNotification", "event::SetForceNextCheck", "event::SetForceNextNotification",
    "event::SetAcknowledgement", "event::ClearAcknowledgement", "event::SendNotifications",
    "event::NotificationSentUser", "event::NotificationSentToAllUsers", "event::ExecuteCommand",
    "event::ExecutedCommand", "event::UpdateExecutions", "event::SetRemovalInfo",
    "config::Update", "config::UpdateObject", "config::DeleteObject",
    "pki::RequestCertificate", "pki::UpdateCertificate",
}
CHECKABLE = ["event::CheckResult", "event::SetNextCheck", "event::SetLastCheckStarted",
             "event::SetForceNextCheck", "event::SetForceNextNotification",
             "event::SetAcknowledgement", "event::ClearAcknowledgement",
             "event::UpdateExecutions"]
LOCAL_METHODS = ["event::SetStateBeforeSuppression", "event::SetSuppressedNotifications",
                 "event::SetSuppressedNotificationTypes", "event::SendNotifications",
                 "event::NotificationSentUser", "event::NotificationSentToAllUsers"]


def test_method_table_covers_exactly_the_26_methods() -> None:
    assert set(METHODS) == ALL_2136_METHODS
    assert len(METHODS) == 26
    for name, spec in METHODS.items():
        assert spec.method == name


def test_method_table_classes_and_logging() -> None:
    for m in CHECKABLE:
        assert METHODS[m].perm is Perm.OBJ and METHODS[m].learn and METHODS[m].logged
    for m in LOCAL_METHODS:
        assert METHODS[m].perm is Perm.LOCAL and METHODS[m].target is Target.LOCAL_ZONE
        assert METHODS[m].logged
    assert METHODS["event::SetNextNotification"].perm is Perm.OBJ
    assert METHODS["event::SetRemovalInfo"].perm is Perm.DOWN
    assert METHODS["event::ExecuteCommand"].perm is Perm.EXEC
    assert METHODS["config::UpdateObject"].logged is False
    assert METHODS["config::DeleteObject"].logged is True
    assert METHODS["event::CheckResult"].local is True
    assert METHODS["event::SetNextCheck"].local is False
    for m in ("pki::RequestCertificate", "pki::UpdateCertificate", "log::SetLogPosition",
              "config::Update", "icinga::Hello", "event::Heartbeat", "event::ExecutedCommand"):
        assert METHODS[m].target is Target.NONE and METHODS[m].local and not METHODS[m].logged


def test_fast_decision_equals_dataclass() -> None:
    d = make("s1").route(CR, cr("a1host"), "a1", None, up(make("s1")))
    assert d == RouteDecision(True, None, ("s2", "m1"), (), "a1", True, True)
    assert hash(d) == hash(RouteDecision(True, None, ("s2", "m1"), (), "a1", True, True))
    with pytest.raises(AttributeError):
        d.accepted = False  # type: ignore[misc]


# -- generic refusals ------------------------------------------------------------------------

def test_unknown_method() -> None:
    r = make("s1")
    refused(r.route("event::Nope", {}, "s2", None, up(r)), "unknown_method")
    refused(r.route_local("event::Nope", {}, up(r)), "unknown_method")


def test_no_params() -> None:
    r = make("s1")
    refused(r.route(CR, None, "a1", None, up(r)), "no_params")
    refused(r.route("config::Update", None, "m1", None, up(r)), "no_params")
    refused(r.route(CR, {"cr": {}}, "a1", None, up(r)), "no_params")         # no host
    refused(r.route(CR, {"host": 7}, "a1", None, up(r)), "no_params")         # not a string
    refused(r.route("event::SetNextNotification", {}, "s2", None, up(r)), "no_params")
    refused(r.route_local(CR, None, up(r)), "no_params")


def test_anonymous_and_zoneless_senders() -> None:
    r = make("s1")
    refused(r.route(CR, cr("a1host"), "stranger", None, up(r)), "anonymous")
    refused(r.route(CR, cr("a1host"), "loose", None, up(r)), "not_allowed")
    assert r.from_zone("stranger", "sat") is None


def test_hello_and_heartbeat_are_consumed_even_without_params() -> None:
    r = make("s1")
    for m in ("icinga::Hello", "event::Heartbeat"):
        accepted(r.route(m, None, "m1", None, up(r)), (), local=True, logged=False)
        accepted(r.route(m, {}, "a1", None, up(r)), (), local=True)


# -- from_zone ---------------------------------------------------------------------------------

def test_from_zone_rules() -> None:
    r = make("s1")
    # other zones: the sender's zone, originZone ignored
    assert r.from_zone("a1", None) == "a1"
    assert r.from_zone("a1", "master") == "a1"
    assert r.from_zone("m1", "a2") == "master"
    # own zone: originZone when known, else None
    assert r.from_zone("s2", None) is None
    assert r.from_zone("s2", "a1") == "a1"
    assert r.from_zone("s2", "master") == "master"
    assert r.from_zone("s2", "no-such-zone") is None
    assert r.from_zone("s2", "global-templates") == "global-templates"


def test_origin_zone_is_only_honoured_from_our_own_zone() -> None:
    r = make("s1")
    # a child cannot borrow the parent's authority by claiming originZone=master
    refused(r.route(CR, cr("web01"), "a1", "master", up(r)), "wrong_zone")
    # the HA peer can tell us it came from a1
    refused(r.route(CR, cr("web01"), "s2", "a1", up(r)), "wrong_zone")
    accepted(r.route(CR, cr("web01"), "s2", None, up(r)), ("m1",))


# -- routing master ----------------------------------------------------------------------------

def test_routing_master() -> None:
    s1, s2 = make("s1"), make("s2")
    assert s1.routing_master({"s2"}) == "s1"
    assert s1.routing_master(set()) == "s1"
    assert s2.routing_master({"s1"}) == "s1"
    assert s2.routing_master(set()) == "s2"          # alone: we are the master
    assert s2.routing_master({"m1", "a1"}) == "s2"   # only our zone counts
    assert make("a1").routing_master({"s1"}) == "a1"


def test_routing_master_uses_byte_order_and_ignores_unknown_names() -> None:
    zones = [ZoneSpec("z", ("b", "B", "a"))]
    eps = [EndpointSpec(n) for n in ("a", "b", "B")]
    r = make("b", hosts={}, zones=zones, endpoints=eps)
    assert r.routing_master({"B", "a", "zzz", "0000"}) == "B"  # "B" < "a" < "b"
    assert r.routing_master({"a"}) == "a"
    assert r.routing_master({"ghost"}) == "b"


def test_non_master_sends_only_to_the_master() -> None:
    s2 = make("s2")
    # originated by the non-master: only s1, neither the parent nor the child
    accepted(s2.route_local("event::SetNextCheck", {"host": "a1host"}, up(s2)), ("s1",))
    # once s1 is gone, s2 is master and fans out itself
    accepted(s2.route_local("event::SetNextCheck", {"host": "a1host"}, up(s2, "s1")),
             ("a1", "m1"), unreachable=("sat",))


# -- upward flow -------------------------------------------------------------------------------

def test_agent_result_goes_to_one_satellite() -> None:
    a1 = make("a1")
    accepted(a1.route_local(CR, cr("a1host"), up(a1)), ("s1",), object_zone="a1",
             logged=True, local=True, unreachable=())
    # first connected in configured order
    accepted(a1.route_local(CR, cr("a1host"), up(a1, "s1")), ("s2",))
    d = a1.route_local(CR, cr("a1host"), frozenset())
    accepted(d, (), unreachable=("sat",))


def test_satellite_master_relays_to_peer_and_parent() -> None:
    s1 = make("s1")
    accepted(s1.route(CR, cr("a1host"), "a1", None, up(s1)), ("s2", "m1"), object_zone="a1")
    # parent zone: first connected in configured order
    accepted(s1.route(CR, cr("a1host"), "a1", None, up(s1, "m1")), ("s2", "m2"))


def test_satellite_non_master_relays_to_master_only() -> None:
    s2 = make("s2")
    accepted(s2.route(CR, cr("a1host"), "a1", None, up(s2)), ("s1",))


def test_peer_copy_is_not_relayed_again() -> None:
    s2 = make("s2")
    accepted(s2.route(CR, cr("a1host"), "s1", "a1", up(s2)), ())
    s1 = make("s1")
    # the master receiving from the non-master (originZone a1) fans out upwards only
    accepted(s1.route(CR, cr("a1host"), "s2", "a1", up(s1)), ("m1",))


def test_master_receives_and_tells_its_peer() -> None:
    m1, m2 = make("m1"), make("m2")
    accepted(m1.route(CR, cr("a1host"), "s1", None, up(m1)), ("m2",), object_zone="a1")
    accepted(m2.route(CR, cr("a1host"), "m1", "sat", up(m2)), ())
    # m2 got it from a satellite directly: only to its master m1
    accepted(m2.route(CR, cr("a1host"), "s2", None, up(m2)), ("m1",))


def test_satellite_own_result_goes_to_peer_and_parent() -> None:
    s1 = make("s1")
    accepted(s1.route_local(CR, cr("web01"), up(s1)), ("s2", "m1"), object_zone="sat")


# -- downward flow -----------------------------------------------------------------------------

def test_master_sends_down_one_hop_at_a_time() -> None:
    m1 = make("m1")
    # a1 is not adjacent to the master: the direct child 'sat' on the path gets it
    accepted(m1.route_local("event::SetNextCheck", {"host": "a1host"}, up(m1)), ("s1", "m2"),
             object_zone="a1")
    s1 = make("s1")
    accepted(s1.route("event::SetNextCheck", {"host": "a1host"}, "m1", None, up(s1)),
             ("a1", "s2"))
    s2 = make("s2")
    accepted(s2.route("event::SetNextCheck", {"host": "a1host"}, "s1", "master", up(s2)), ())
    a1 = make("a1")
    accepted(a1.route("event::SetNextCheck", {"host": "a1host"}, "s1", None, up(a1)), ())


def test_master_to_sibling_subtree() -> None:
    m1 = make("m1")
    accepted(m1.route_local("event::SetAcknowledgement", {"host": "bhost"}, up(m1)),
             ("sb1", "m2"))


def test_satellite_non_master_receiving_from_parent() -> None:
    # the master picked s2 (first connected in its order); s2 hands it to s1 only
    s2 = make("s2")
    accepted(s2.route("event::SetNextCheck", {"host": "a1host"}, "m1", None, up(s2)), ("s1",))
    s1 = make("s1")
    accepted(s1.route("event::SetNextCheck", {"host": "a1host"}, "s2", "master", up(s1)),
             ("a1",))


# -- unreachable / replay --------------------------------------------------------------------

def test_unreachable_zones() -> None:
    m1 = make("m1")
    d = m1.route_local("event::SetNextCheck", {"host": "a1host"}, up(m1, "s1", "s2"))
    accepted(d, ("m2",), unreachable=("sat",), logged=True)
    d = m1.route_local("event::SetNextCheck", {"host": "a1host"}, up(m1, "m2"))
    accepted(d, ("s1",), unreachable=("master",))
    # a zone with one connected endpoint is reached even when that endpoint is skipped
    s1 = make("s1")
    accepted(s1.route(CR, cr("a1host"), "a1", None, up(s1)), ("s2", "m1"), unreachable=())


def test_local_zone_with_three_endpoints_is_unreachable_if_any_peer_is_down() -> None:
    zones = [ZoneSpec("z", ("e1", "e2", "e3"))]
    eps = [EndpointSpec(n) for n in ("e1", "e2", "e3")]
    r = make("e1", hosts={"h": "z"}, zones=zones, endpoints=eps)
    accepted(r.route_local(CR, cr("h"), {"e2", "e3"}), ("e2", "e3"), unreachable=())
    accepted(r.route_local(CR, cr("h"), {"e2"}), ("e2",), unreachable=("z",))
    accepted(r.route_local(CR, cr("h"), {"e3"}), ("e3",), unreachable=("z",))


def test_zone_without_other_endpoints_is_never_unreachable() -> None:
    a1 = make("a1")
    d = a1.route("event::SetNextCheck", {"host": "a1host"}, "s1", None, frozenset({"s1"}))
    accepted(d, (), unreachable=())


def test_unknown_connected_names_are_ignored() -> None:
    s1 = make("s1")
    d = s1.route(CR, cr("a1host"), "a1", None, up(s1) | {"intruder", "m0"})
    accepted(d, ("s2", "m1"))


def test_target_order_follows_configuration_not_names() -> None:
    zones = [ZoneSpec("top", ("t2", "t1")), ZoneSpec("mid", ("x", "b"), "top"),
             ZoneSpec("leaf", ("l",), "mid")]
    eps = [EndpointSpec(n) for n in ("t1", "t2", "x", "b", "l")]
    r = make("x", hosts={"h": "leaf"}, zones=zones, endpoints=eps)
    # x is not master ("b" < "x") -> only b
    accepted(r.route_local(CR, cr("h"), {"t1", "t2", "b", "l"}), ("b",))
    r = make("b", hosts={"h": "leaf"}, zones=zones, endpoints=eps)
    accepted(r.route_local(CR, cr("h"), {"t1", "t2", "x", "l"}), ("l", "x", "t2"))
    accepted(r.route_local(CR, cr("h"), {"t1", "x", "l"}), ("l", "x", "t1"))


# -- OBJ class -------------------------------------------------------------------------------

def test_obj_child_about_other_zone_is_wrong_zone() -> None:
    s1 = make("s1")
    d = s1.route(CR, cr("a2host"), "a1", None, up(s1))
    refused(d, "wrong_zone")
    assert d.object_zone == "a2"
    refused(s1.route(CR, cr("web01"), "a1", None, up(s1)), "wrong_zone")   # parent's object
    refused(s1.route(CR, cr("mhost"), "a1", None, up(s1)), "wrong_zone")


def test_obj_not_allowed_from_parent_about_upper_object() -> None:
    a1 = make("a1")
    refused(a1.route(CR, cr("mhost"), "s1", None, up(a1)), "not_allowed")
    # sibling subtree talking to us directly (not adjacent, still a known endpoint)
    s1 = make("s1")
    refused(s1.route(CR, cr("web01"), "sb1", None, up(s1) | {"sb1"}), "not_allowed")


def test_obj_parent_may_send_down_and_global_is_open() -> None:
    a1 = make("a1")
    accepted(a1.route(CR, cr("a1host"), "s1", None, up(a1)), ())
    s1 = make("s1")
    accepted(s1.route(CR, cr("ghost"), "a1", None, up(s1)), ("s2", "a2"),
             object_zone="global-templates")


def test_obj_with_null_from_zone_passes() -> None:
    s1 = make("s1")
    accepted(s1.route(CR, cr("mhost"), "s2", None, up(s1)), ("m1",))


@pytest.mark.parametrize("method", CHECKABLE)
def test_every_checkable_event_is_obj_on_the_host(method: str) -> None:
    s1 = make("s1")
    refused(s1.route(method, {"host": "a2host"}, "a1", None, up(s1)), "wrong_zone")
    d = s1.route(method, {"host": "a1host"}, "a1", None, up(s1))
    # a received UpdateExecutions is relayed from our zone (Icinga passes the local zone as
    # secobj); here that makes no difference to the targets
    zone = "sat" if method == "event::UpdateExecutions" else "a1"
    accepted(d, ("s2", "m1"), logged=True, local=(method == CR), object_zone=zone)


def test_set_next_notification_uses_the_host_part() -> None:
    s1 = make("s1")
    p = {"notification": "a1host!svc!mail", "next_notification": 1.0}
    accepted(s1.route("event::SetNextNotification", p, "a1", None, up(s1)), ("s2", "m1"),
             object_zone="a1")
    p = {"notification": "a2host!mail"}
    refused(s1.route("event::SetNextNotification", p, "a1", None, up(s1)), "wrong_zone")
    # never learned
    p = {"notification": "newhost!mail"}
    refused(s1.route("event::SetNextNotification", p, "a1", None, up(s1)), "unknown_object")


# -- LOCAL class -----------------------------------------------------------------------------

@pytest.mark.parametrize("method", LOCAL_METHODS)
def test_local_class(method: str) -> None:
    s1 = make("s1")
    p = {"host": "a1host", "notification": "a1host!svc!mail"}
    # from the HA peer: relayed to the local zone (and, as Icinga does, its ancestors)
    accepted(s1.route(method, p, "s2", None, up(s1)), ("m1",), object_zone="sat", logged=True)
    # originZone = our zone: our zone is skipped, the parent still gets it from the master
    accepted(s1.route(method, p, "s2", "sat", up(s1)), ("m1",), object_zone="sat")
    accepted(make("s2").route(method, p, "s1", None, up(make("s2"))), (), object_zone="sat")
    refused(s1.route(method, p, "a1", None, up(s1)), "not_allowed")
    refused(s1.route(method, p, "m1", None, up(s1)), "not_allowed")
    refused(s1.route(method, p, "s2", "a1", up(s1)), "not_allowed")
    accepted(s1.route_local(method, p, up(s1)), ("s2", "m1"))
    # the parent discards what a satellite relays upwards
    refused(make("m1").route(method, p, "s1", None, up(make("m1"))), "not_allowed")


# -- DOWN class ------------------------------------------------------------------------------

def test_set_removal_info_is_down() -> None:
    p = {"object_type": "Downtime", "object_name": "a1host!svc!abc", "removed_by": "admin",
         "remove_time": 1.0}
    s1 = make("s1")
    accepted(s1.route("event::SetRemovalInfo", p, "m1", None, up(s1)), ("a1", "s2"),
             object_zone="a1", logged=True)
    refused(s1.route("event::SetRemovalInfo", p, "a1", None, up(s1)), "not_allowed")
    refused(s1.route("event::SetRemovalInfo", p, "s2", "a1", up(s1)), "not_allowed")
    accepted(s1.route("event::SetRemovalInfo", p, "s2", "master", up(s1)), ("a1",))
    p2 = dict(p, object_name="nohost!abc")
    refused(s1.route("event::SetRemovalInfo", p2, "m1", None, up(s1)), "unknown_object")
    p3 = dict(p, object_name="a1host")  # no "!": the whole name is the host
    accepted(s1.route("event::SetRemovalInfo", p3, "m1", None, up(s1)), ("a1", "s2"))


def test_config_update_is_down_and_consumed() -> None:
    s1 = make("s1")
    p = {"update": {}, "update_v2": {}, "checksums": {}}
    accepted(s1.route("config::Update", p, "m1", None, up(s1)), (), local=True, reason=None)
    accepted(s1.route("config::Update", p, "s2", None, up(s1)), (), local=True)
    refused(s1.route("config::Update", p, "a1", None, up(s1)), "not_allowed")
    refused(s1.route_local("config::Update", p, up(s1)), "not_routed")


def test_pki_methods() -> None:
    s1 = make("s1")
    req = {"ticket": "x"}
    accepted(s1.route("pki::RequestCertificate", req, "a1", None, up(s1)), (), local=True)
    accepted(s1.route("pki::RequestCertificate", req, "m1", None, up(s1)), (), local=True)
    # our own (or a pending) request: local zone and parent, never logged
    accepted(s1.route_local("pki::RequestCertificate", req, up(s1)), ("s2", "m1"),
             logged=False, local=True)
    upd = {"status_code": 0, "cert": "", "ca": "", "fingerprint_request": "ab"}
    accepted(s1.route("pki::UpdateCertificate", upd, "m1", None, up(s1)), (), local=True)
    refused(s1.route("pki::UpdateCertificate", upd, "a1", None, up(s1)), "not_allowed")
    refused(s1.route_local("pki::UpdateCertificate", upd, up(s1)), "not_routed")


def test_log_position_is_consumed() -> None:
    s1 = make("s1")
    accepted(s1.route("log::SetLogPosition", {"log_position": 1.0}, "a1", None, up(s1)), (),
             local=True, logged=False)
    refused(s1.route_local("log::SetLogPosition", {"log_position": 1.0}, up(s1)), "not_routed")
    refused(s1.route_local("icinga::Hello", {}, up(s1)), "not_routed")


# -- ExecuteCommand / ExecutedCommand --------------------------------------------------------

EXEC = "event::ExecuteCommand"


def test_execute_command_for_us_is_consumed() -> None:
    a1 = make("a1")
    p = {"command": "disk", "command_type": "check_command", "host": "a1", "macros": {}}
    accepted(a1.route(EXEC, p, "s1", None, up(a1)), (), local=True, logged=False)
    accepted(a1.route(EXEC, dict(p, endpoint="a1"), "s2", None, up(a1)), (), local=True)


def test_execute_command_sender_zone_rules() -> None:
    s1 = make("s1")
    p = {"command": "x", "host": "a1"}
    accepted(s1.route(EXEC, p, "m1", None, up(s1)), (), local=True)   # parent
    accepted(s1.route(EXEC, p, "s2", None, up(s1)), (), local=True)   # own zone
    refused(s1.route(EXEC, p, "a1", None, up(s1)), "not_allowed")     # child
    refused(s1.route(EXEC, p, "sb1", None, up(s1)), "not_allowed")    # not adjacent
    a1 = make("a1")
    refused(a1.route(EXEC, p, "m1", None, up(a1)), "not_allowed")     # grandparent directly
    # own zone, but from_zone (originZone) is a child zone: DOWN fails
    refused(s1.route(EXEC, p, "s2", "a1", up(s1)), "not_allowed")
    accepted(s1.route(EXEC, p, "s2", "master", up(s1)), (), local=True)


def test_execute_command_is_forwarded_toward_the_endpoint() -> None:
    p = {"command": "hostalive", "command_type": "check_command", "endpoint": "a1",
         "host": "a1", "source": "uuid", "deadline": 2.0}
    m1 = make("m1")
    accepted(m1.route_local(EXEC, p, up(m1)), ("s1", "m2"), object_zone="a1", logged=True,
             local=False)
    s1 = make("s1")
    accepted(s1.route(EXEC, p, "m1", None, up(s1)), ("a1", "s2"), object_zone="a1")
    s2 = make("s2")
    accepted(s2.route(EXEC, p, "s1", "master", up(s2)), ())
    accepted(s2.route(EXEC, p, "m1", None, up(s2)), ("s1",))
    a1 = make("a1")
    accepted(a1.route(EXEC, p, "s1", None, up(a1)), (), local=True)


def test_execute_command_endpoint_errors() -> None:
    s1 = make("s1")
    p = {"command": "x", "host": "h"}
    refused(s1.route(EXEC, dict(p, endpoint="ghost"), "m1", None, up(s1)), "unknown_object")
    refused(s1.route(EXEC, dict(p, endpoint="loose"), "m1", None, up(s1)), "unknown_object")
    d = s1.route(EXEC, dict(p, endpoint="m2"), "m1", None, up(s1))   # above us
    refused(d, "wrong_zone")
    refused(s1.route(EXEC, dict(p, endpoint="sb1"), "m1", None, up(s1)), "wrong_zone")
    refused(s1.route(EXEC, dict(p, endpoint=["a1"]), "m1", None, up(s1)), "no_params")
    # for our HA peer: the target zone is ours (Icinga relays to it and its ancestors)
    accepted(s1.route(EXEC, dict(p, endpoint="s2"), "m1", None, up(s1)), ("s2",))
    # route_local without a foreign endpoint: sent directly by the node, never routed
    refused(s1.route_local(EXEC, p, up(s1)), "not_routed")
    refused(s1.route_local(EXEC, dict(p, endpoint="s1"), up(s1)), "not_routed")


def test_executed_command_is_obj_and_consumed() -> None:
    s1 = make("s1")
    p = {"execution": "uuid", "host": "a1host", "exit": 0, "output": "", "start": 1, "end": 2}
    accepted(s1.route("event::ExecutedCommand", p, "a1", None, up(s1)), (), local=True,
             object_zone="a1", logged=False)
    refused(s1.route("event::ExecutedCommand", dict(p, host="a2host"), "a1", None, up(s1)),
            "wrong_zone")
    refused(s1.route("event::ExecutedCommand", dict(p, host="nohost"), "a1", None, up(s1)),
            "unknown_object")
    refused(s1.route_local("event::ExecutedCommand", p, up(s1)), "not_routed")


def test_update_executions_received_goes_to_local_zone() -> None:
    p = {"host": "a1host", "executions": {"uuid": {"pending": True, "deadline": 2.0}}}
    m1 = make("m1")
    accepted(m1.route_local("event::UpdateExecutions", p, up(m1)), ("s1", "m2"),
             object_zone="a1")
    s1 = make("s1")
    # received from the parent: relayed from our zone, so not down to a1 (a relay from the
    # host's zone would have given ("a1", "s2"))
    accepted(s1.route("event::UpdateExecutions", p, "m1", None, up(s1)), ("s2",),
             object_zone="sat", logged=True)
    accepted(s1.route("event::UpdateExecutions", p, "a1", None, up(s1)), ("s2", "m1"))


# -- config::UpdateObject / DeleteObject -----------------------------------------------------

def test_config_objects() -> None:
    s1 = make("s1")
    upd = {"name": "web01!http!dt", "type": "Downtime", "version": 1.0, "zone": "a1",
           "config": "object ..."}
    accepted(s1.route("config::UpdateObject", upd, "m1", None, up(s1)), ("a1", "s2"),
             object_zone="a1", logged=False)
    refused(s1.route("config::UpdateObject", upd, "a1", None, up(s1)), "not_allowed")
    refused(s1.route("config::DeleteObject", upd, "a1", None, up(s1)), "not_allowed")
    # the sender endpoint's zone counts, not originZone (a1 is then skipped as from_zone)
    accepted(s1.route("config::UpdateObject", upd, "s2", "a1", up(s1)), ("m1",))
    accepted(s1.route("config::UpdateObject", upd, "s2", None, up(s1)), ("a1", "m1"))
    # no zone: our zone
    dele = {"name": "web01!http!dt", "type": "Downtime", "version": 1.0}
    accepted(s1.route("config::DeleteObject", dele, "m1", None, up(s1)), ("s2",),
             object_zone="sat", logged=True)
    accepted(s1.route("config::DeleteObject", dict(dele, zone=""), "m1", None, up(s1)),
             ("s2",))
    # unknown zone: refused when received, our zone when we originate
    refused(s1.route("config::UpdateObject", dict(upd, zone="elsewhere"), "m1", None, up(s1)),
            "unknown_object")
    accepted(s1.route_local("config::UpdateObject", dict(upd, zone="elsewhere"), up(s1)),
             ("s2", "m1"))
    # global zone: our zone and every direct child
    g = dict(upd, zone="global-templates")
    accepted(s1.route("config::UpdateObject", g, "m1", None, up(s1)), ("s2", "a1", "a2"),
             object_zone="global-templates")
    m1 = make("m1")
    accepted(m1.route_local("config::UpdateObject", g, up(m1)), ("m2", "s1", "sb1"))


# -- learning ----------------------------------------------------------------------------------

def test_learning_first_child_wins() -> None:
    s1 = make("s1")
    objs = s1.objects
    assert objs.lookup("newhost") is None
    d = s1.route(CR, cr("newhost"), "a1", None, up(s1))
    accepted(d, ("s2", "m1"), object_zone="a1")
    assert objs.lookup("newhost") == "a1"
    assert objs.learned == 1
    refused(s1.route(CR, cr("newhost"), "a2", None, up(s1)), "wrong_zone")
    accepted(s1.route("event::SetNextCheck", {"host": "newhost"}, "a1", None, up(s1)),
             ("s2", "m1"))
    assert objs.learned == 1


def test_learning_through_the_peer_with_origin_zone() -> None:
    s2 = make("s2")
    accepted(s2.route(CR, cr("newhost"), "s1", "a2", up(s2)), ())
    assert s2.objects.lookup("newhost") == "a2"


def test_learning_from_deeper_descendants() -> None:
    m1 = make("m1")
    accepted(m1.route(CR, cr("newhost"), "s1", None, up(m1)), ("m2",))
    assert m1.objects.lookup("newhost") == "sat"    # the child zone the message came from
    # peer says: from a1 (Icinga peers would say "sat"; then 'sat' would be skipped)
    accepted(m1.route(CR, cr("deep"), "m2", "a1", up(m1)), ("s1",))
    assert m1.objects.lookup("deep") == "a1"


def test_unknown_from_parent_or_peer_or_local_is_refused() -> None:
    s1 = make("s1")
    refused(s1.route(CR, cr("newhost"), "m1", None, up(s1)), "unknown_object")
    refused(s1.route(CR, cr("newhost"), "s2", None, up(s1)), "unknown_object")
    refused(s1.route(CR, cr("newhost"), "s2", "master", up(s1)), "unknown_object")
    refused(s1.route(CR, cr("newhost"), "s2", "global-templates", up(s1)), "unknown_object")
    refused(s1.route_local(CR, cr("newhost"), up(s1)), "unknown_object")
    assert s1.objects.learned == 0


def test_reject_mode() -> None:
    s1 = make("s1", unknown=UnknownObjects.REJECT)
    refused(s1.route(CR, cr("newhost"), "a1", None, up(s1)), "unknown_object")
    assert s1.objects.lookup("newhost") is None
    accepted(s1.route(CR, cr("a1host"), "a1", None, up(s1)), ("s2", "m1"))


def test_lookup_fallbacks() -> None:
    s1 = make("s1", hosts={})
    objs = s1.objects
    assert objs.lookup("a1") == "a1"          # zone name (also the endpoint name here)
    assert objs.lookup("sat") == "sat"        # zone name
    assert objs.lookup("s2") == "sat"         # endpoint name -> its zone
    assert objs.lookup("loose") is None       # endpoint without zone
    assert objs.lookup("other") is None
    # command-endpoint agent: host named like the endpoint, accepted without learning
    accepted(s1.route(CR, cr("a1", "disk"), "a1", None, up(s1)), ("s2", "m1"))
    assert objs.learned == 0


def test_configured_host_beats_fallback_and_learn_does_not_override() -> None:
    t = Topology(ZONES, ENDPOINTS, "s1")
    objs = ObjectZones(t, {"a1": "sat"})
    assert objs.lookup("a1") == "sat"
    objs.learn("a1", "a2")
    assert objs.lookup("a1") == "sat"
    objs.learn("x", "no-such-zone")
    assert objs.lookup("x") is None
    objs.learn("x", "a2")
    assert objs.lookup("x") == "a2" and objs.learned == 1 and "x" in objs


def test_object_zones_validates_configured_zones() -> None:
    from router.errors import ConfigError
    t = Topology(ZONES, ENDPOINTS, "s1")
    with pytest.raises(ConfigError, match="nowhere"):
        ObjectZones(t, {"h": "nowhere"})


# -- route_local -------------------------------------------------------------------------------

def test_route_local_has_no_origin_skips() -> None:
    s1 = make("s1")
    accepted(s1.route_local(CR, cr("a1host"), up(s1)), ("a1", "s2", "m1"))
    accepted(s1.route_local(CR, cr("ghost"), up(s1)), ("s2", "a1", "a2"))


def test_origin_zone_is_never_unreachable_even_before_the_sender_counts_as_connected():
    """A sender that is still replaying (not in ``connected``) must not have its own
    message logged for its own zone: that would replay the message back to its origin."""
    from router.routing import ObjectZones, Router
    from router.routing import EndpointSpec, Topology, ZoneSpec

    zones = [ZoneSpec("master", ("m1",)), ZoneSpec("sat", ("s1", "s2"), parent="master"),
             ZoneSpec("leaf", ("leaf",), parent="sat")]
    endpoints = [EndpointSpec(n) for n in ("m1", "s1", "s2", "leaf")]
    topo = Topology(zones, endpoints, "s1")
    router = Router(topo, ObjectZones(topo))
    params = {"host": "leaf", "service": "x", "cr": {}}
    decision = router.route("event::CheckResult", params, "leaf", None, {"m1", "s2"})
    assert decision.accepted and "leaf" not in decision.unreachable
    assert decision.targets == ("s2", "m1")
    # An HA peer that is replaying sends us something: our zone is not unreachable for it.
    decision = router.route("event::CheckResult", params, "s2", "leaf", {"m1"})
    assert "sat" not in decision.unreachable and "leaf" not in decision.unreachable
