"""Objects a parent creates and deletes at runtime (router.node.runtime).

A real Icinga master sends hosts created through its REST API as ``config::UpdateObject``
and their deletion as ``config::DeleteObject`` (no zone). Relayed but not kept, our
satellite refused the agent's results for such a host as an unknown object, never passed
the deletion on, and never sent the object to an agent that connected later
(tests/interop/test_runtime_objects_interop.py has the real Icinga version)."""

from __future__ import annotations

import asyncio

from router.node.runtime import RuntimeObjects, runtime_path
from router.routing import ObjectZones, Router, Topology
from router.routing.topology import EndpointSpec, ZoneSpec
from tests.conftest import run  # noqa: F401  (fixture: both event loops)
from tests.nodeutil import ClusterSpec, FakePeer, check_result, wait_until
from tests.pkiutil import make_test_pki

UPDATE, DELETE = "config::UpdateObject", "config::DeleteObject"


def _topology() -> Topology:
    zones = [ZoneSpec("master", ("master",), None), ZoneSpec("sat", ("sat1",), "master"),
             ZoneSpec("agent1", ("agent1",), "sat"), ZoneSpec("agent2", ("agent2",), "sat"),
             ZoneSpec("global-templates", (), None, global_=True)]
    endpoints = [EndpointSpec(n) for n in ("master", "sat1", "agent1", "agent2")]
    return Topology(zones, endpoints, "sat1")


def _host(name: str, zone: str, version: float = 1.0) -> dict:
    return {"name": name, "type": "Host", "version": version, "zone": zone,
            "config": f'object Host "{name}" {{ check_command = "dummy" }}'}


def test_routing_knows_runtime_objects_and_routes_their_deletion() -> None:
    topology = _topology()
    objects = ObjectZones(topology)
    router = Router(topology, objects)
    store = RuntimeObjects(objects, None)
    connected = {"master", "agent1", "agent2"}
    # before: the agent's result for the API-created host is refused
    cr = {"host": "api-host", "cr": {"state": 0}}
    assert router.route("event::CheckResult", cr, "agent1", None, connected).reason \
        == "unknown_object"
    update = _host("api-host", "agent1")
    decision = router.route(UPDATE, update, "master", None, connected)
    assert decision.targets == ("agent1",)
    store.observe(UPDATE, update, decision.object_zone)
    assert router.route("event::CheckResult", cr, "agent1", None, connected).accepted
    # a global zone's object: its deletion goes to the global zone (us and below)
    command = {"name": "api-cmd", "type": "CheckCommand", "version": 1.0,
               "zone": "global-templates"}
    decision = router.route(UPDATE, command, "master", None, connected)
    store.observe(UPDATE, command, decision.object_zone)
    deleted = router.route(DELETE, {"name": "api-cmd", "type": "CheckCommand"}, "master",
                           None, connected)
    assert set(deleted.targets) == {"agent1", "agent2"}, deleted
    # the host's deletion carries no zone either: it goes where the host was created
    deleted = router.route(DELETE, {"name": "api-host", "type": "Host"}, "master", None,
                           connected)
    assert deleted.targets == ("agent1",), deleted
    store.observe(DELETE, {"name": "api-host", "type": "Host"}, deleted.object_zone)
    assert router.route("event::CheckResult", cr, "agent1", None, connected).reason \
        == "unknown_object"
    # an older version does not replace a newer one; names that are not strings are
    # not an error
    store.observe(UPDATE, _host("h2", "agent2", version=5.0), "agent2")
    store.observe(UPDATE, _host("h2", "agent1", version=4.0), "agent1")
    assert objects.lookup("h2") == "agent2"
    assert objects.runtime_zone("Host", ["h2"]) is None
    assert router.route(DELETE, {"name": ["x"], "type": "Host"}, "master", None,
                        connected).accepted


def test_a_new_child_gets_the_objects_its_zone_may_see_and_a_restart_keeps_them(
        tmp_path, run) -> None:
    pki = make_test_pki(tmp_path / "pki", ["master", "sat1", "agent1", "agent2"])
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("sat", ["sat1"], "master"),
                                       ("agent1", ["agent1"], "sat"),
                                       ("agent2", ["agent2"], "sat")])

    async def main() -> None:
        sat = await spec.start("sat1")
        agent1 = agent2 = master = None
        try:
            master = await FakePeer.connect(spec.port("sat1"), pki, "master",
                                            server_name="sat1")
            agent1 = await FakePeer.connect(spec.port("sat1"), pki, "agent1",
                                            server_name="sat1")
            await wait_until(lambda: {"master", "agent1"} <= sat.node.connected_names,
                             what="master and agent1")
            master.send(UPDATE, _host("api-host", "agent1"))
            master.send(UPDATE, _host("later-host", "agent2"))
            await wait_until(lambda: agent1.messages(UPDATE), what="the object at agent1")
            agent1.send("event::CheckResult", check_result("api-host", None, "up"))
            await wait_until(lambda: master.messages("event::CheckResult"),
                             what="the API host's result at the master")
            # agent2 was offline: it gets its zone's object when it connects, not agent1's
            agent2 = await FakePeer.connect(spec.port("sat1"), pki, "agent2",
                                            server_name="sat1")
            await wait_until(lambda: agent2.messages(UPDATE), what="agent2's object")
            await asyncio.sleep(0.3)
            assert [m["params"]["name"] for m in agent2.messages(UPDATE)] == ["later-host"]
        finally:
            for peer in (agent1, agent2, master):
                if peer is not None:
                    await peer.close()
            await sat.stop()
        # kept on disk: the next start routes the host's results before the master is back
        assert runtime_path(str(tmp_path / "sat1")).stat().st_mode & 0o777 == 0o600
        sat = await spec.start("sat1")
        try:
            assert sat.node.objects.lookup("api-host") == "agent1"
            assert sat.node.objects.lookup("later-host") == "agent2"
        finally:
            await sat.stop()

    run(main(), timeout=60)


def test_a_connect_looks_up_its_share_and_a_save_encodes_nothing(tmp_path, monkeypatch
                                                                  ) -> None:
    """An agent's connect walked every kept object through can_access (12-21 ms of loop
    at 50 000 objects, for each of 5 000 reconnecting agents), and each save encoded the
    whole table holding the GIL (55-175 ms of loop): found by review, measured in /tmp.
    Here: the connect asks no per-object question, the save encodes nothing, and what
    it writes reads back the same."""
    topology = _topology()
    store = RuntimeObjects(ObjectZones(topology), runtime_path(str(tmp_path)))
    for i in range(50):
        store.observe(UPDATE, _host(f"a1-{i}", "agent1"), "agent1")
        store.observe(UPDATE, _host(f"a2-{i}", "agent2"), "agent2")
    store.observe(UPDATE, {"name": "cmd", "type": "CheckCommand", "version": 1.0,
                           "zone": "global-templates"}, "global-templates")
    calls = []
    real = Topology.can_access
    monkeypatch.setattr(Topology, "can_access",
                        lambda self, a, b: calls.append((a, b)) or real(self, a, b))
    frames = store.for_endpoint(topology, "agent1")
    assert len(frames) == 51 and not calls
    assert not any(b"a2-" in f for f in frames) and any(b'"cmd"' in f for f in frames)

    def no_encoding(*args, **kwargs):
        raise AssertionError("save() encoded the table on the event loop")
    import router.node.runtime as runtime
    monkeypatch.setattr(runtime.orjson, "dumps", no_encoding)
    asyncio.run(store.save())
    monkeypatch.undo()
    again = RuntimeObjects.open(ObjectZones(topology), str(tmp_path))
    assert len(again) == 101 and again.objects.lookup("a2-7") == "agent2"
