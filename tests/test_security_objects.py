"""Issue 16 S1: object ownership by default-deny; learning only as an explicit opt-in,
persisted, capped per zone, and clearable with ``router objects forget``."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time

import pytest
import uvloop
from click.testing import CliRunner

from router.cli.root import main as cli_main
from router.config import parse_config
from router.node.learned import LearnedHostsStore, forget_hosts, learned_path, read_learned
from router.routing import (LearnResult, ObjectZones, Router, Topology, UnknownObjects,
                            ZoneSpec, EndpointSpec)
from tests.nodeutil import ClusterSpec, FakePeer, check_result, metrics_text, wait_until
from tests.pkiutil import make_test_pki

CR = "event::CheckResult"

ZONES = [ZoneSpec("master", ("m1",)),
         ZoneSpec("sat", ("s1",), parent="master"),
         ZoneSpec("a1", ("a1",), parent="sat"),
         ZoneSpec("a2", ("a2",), parent="sat")]
ENDPOINTS = [EndpointSpec(n) for n in ("m1", "s1", "a1", "a2")]


def router_at(local: str, hosts=None, unknown=UnknownObjects.REJECT, cap=10_000) -> Router:
    t = Topology(ZONES, ENDPOINTS, local)
    return Router(t, ObjectZones(t, hosts or {}, unknown, max_learned_per_zone=cap))


def cr(host: str) -> dict:
    return {"host": host, "cr": {"state": 0, "performance_data": []}}


# -- pure: ObjectZones and the router ----------------------------------------------------------

def test_default_is_reject_configured_and_named_hosts_only() -> None:
    s1 = router_at("s1", {"web-a1": "a1"})
    up = {"m1", "a1", "a2"}
    assert s1.objects.unknown is UnknownObjects.REJECT
    assert s1.route(CR, cr("web-a1"), "a1", None, up).accepted        # configured for a1
    assert s1.route(CR, cr("a1"), "a1", None, up).accepted            # named like a1's endpoint
    # another agent: neither the configured host nor the one named like a1
    assert s1.route(CR, cr("web-a1"), "a2", None, up).reason == "wrong_zone"
    assert s1.route(CR, cr("a1"), "a2", None, up).reason == "wrong_zone"
    # unconfigured: refused, nothing learned
    assert s1.route(CR, cr("free"), "a1", None, up).reason == "unknown_object"
    assert s1.objects.learned == 0 and s1.objects.lookup("free") is None
    # the satellite's parent may speak about a host below it
    m1 = router_at("m1", {"web-a1": "a1"})
    assert m1.route(CR, cr("web-a1"), "s1", None, {"s1"}).accepted
    assert m1.route(CR, cr("a2"), "s1", None, {"s1"}).accepted        # endpoint below sat


def test_learning_cap_per_zone_refuses_and_counts() -> None:
    s1 = router_at("s1", unknown=UnknownObjects.LEARN, cap=3)
    up = {"m1", "a1", "a2"}
    for i in range(3):
        assert s1.route(CR, cr(f"h{i}"), "a1", None, up).accepted
    d = s1.route(CR, cr("h3"), "a1", None, up)
    assert not d.accepted and d.reason == "too_many_learned"
    assert s1.objects.learn_refused == {"a1": 1}
    # another zone still learns; a1's learned hosts still route
    assert s1.route(CR, cr("x"), "a2", None, up).accepted
    assert s1.route(CR, cr("h0"), "a1", None, up).accepted
    assert s1.objects.learned_in("a1") == 3 and s1.objects.learned == 4
    # forgetting frees room
    assert s1.objects.forget(["h0", "not-learned"]) == ["h0"]
    assert s1.route(CR, cr("h3"), "a1", None, up).accepted


def test_replace_config_hosts_wins_over_learning_and_replaces_the_previous_set() -> None:
    t = Topology(ZONES, ENDPOINTS, "s1")
    objs = ObjectZones(t, {"static": "a1"}, UnknownObjects.LEARN)
    assert objs.learn("h", "a2") is LearnResult.LEARNED
    changes = objs.changes
    objs.replace_config_hosts({"h": "a1", "static": "a2", "s": "a1", "bad": "nowhere"})
    assert objs.lookup("h") == "a1"               # config took it from the learned set
    assert objs.learned == 0 and objs.changes > changes
    assert objs.lookup("static") == "a1"          # [objects.hosts] keeps precedence
    assert objs.lookup("s") == "a1" and objs.lookup("bad") is None
    assert objs.learn("s", "a2") is LearnResult.KNOWN
    objs.replace_config_hosts({"other": "a2"})    # replaces, does not add
    assert objs.lookup("s") is None and objs.lookup("h") is None
    assert objs.lookup("other") == "a2" and objs.lookup("static") == "a1"
    assert objs.is_configured("other") and not objs.is_configured("s")


def test_load_learned_skips_gone_zones_configured_hosts_and_overflow() -> None:
    t = Topology(ZONES, ENDPOINTS, "s1")
    objs = ObjectZones(t, {"conf": "a1"}, UnknownObjects.LEARN, max_learned_per_zone=1)
    skipped = objs.load_learned({"ok": "a1", "conf": "a2", "gone": "old-zone", "more": "a1"})
    assert objs.lookup("ok") == "a1" and objs.lookup("conf") == "a1"
    assert {(h, why) for h, _, why in skipped} == {
        ("conf", "configured"), ("gone", "zone not configured"),
        ("more", "zone over max_learned_per_zone")}


# -- the file ---------------------------------------------------------------------------------

def test_store_saves_atomically_restores_and_takes_cli_forget(tmp_path) -> None:
    t = Topology(ZONES, ENDPOINTS, "s1")

    async def main():
        objs = ObjectZones(t, {}, UnknownObjects.LEARN)
        store = LearnedHostsStore.open(objs, str(tmp_path))
        objs.learn("h1", "a1")
        objs.learn("h2", "a2")
        await store.sync()
        path = learned_path(tmp_path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert {h: e["zone"] for h, e in read_learned(path).items()} == {"h1": "a1",
                                                                         "h2": "a2"}
        saves = store.saves
        await store.sync()                       # nothing changed: no write
        assert store.saves == saves
        # the operator forgets h1 while the node runs
        assert forget_hosts(path, ["h1", "nope"]) == {"h1": "a1"}
        await store.sync()
        assert objs.lookup("h1") is None and objs.lookup("h2") == "a2"
        objs.learn("h1", "a2")                   # the next report decides again
        await store.close()
        # a restart: the file is the memory
        again = ObjectZones(t, {}, UnknownObjects.LEARN)
        LearnedHostsStore.open(again, str(tmp_path))
        assert again.learned_hosts() == {"h1": "a2", "h2": "a2"}
        assert not [p for p in path.parent.iterdir() if p.name.startswith(".learned-")]

    asyncio.run(main())


def test_corrupt_file_is_a_clear_error(tmp_path) -> None:
    from router.node.learned import LearnedHostsError
    path = learned_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    t = Topology(ZONES, ENDPOINTS, "s1")
    with pytest.raises(LearnedHostsError, match="not valid JSON"):
        LearnedHostsStore.open(ObjectZones(t, {}, UnknownObjects.LEARN), str(tmp_path))


def test_cli_objects_list_and_forget(tmp_path) -> None:
    path = learned_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"version": 1, "hosts": {
        "web": {"zone": "a1", "learned_at": 1700000000.0},
        "db": {"zone": "a2", "learned_at": 1700000001.0}}}))
    runner = CliRunner()
    res = runner.invoke(cli_main, ["objects", "list", "--data-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "web" in res.output and "2023-11-14 22:13:20" in res.output
    assert "2 learned hosts" in res.output
    res = runner.invoke(cli_main, ["objects", "list", "--json", "--data-dir", str(tmp_path)])
    assert json.loads(res.output)["db"]["zone"] == "a2"
    res = runner.invoke(cli_main, ["objects", "forget", "web", "--data-dir", str(tmp_path)])
    assert res.exit_code == 0 and "forgot web (was owned by zone a1)" in res.output
    assert list(read_learned(path)) == ["db"]
    res = runner.invoke(cli_main, ["objects", "forget", "web", "--data-dir", str(tmp_path)])
    assert res.exit_code == 1 and "not learned hosts: web" in res.output
    res = runner.invoke(cli_main, ["objects", "list", "--data-dir", str(tmp_path / "empty")])
    assert res.exit_code == 0 and "no learned hosts" in res.output


def test_config_default_reject_and_cap_validated(tmp_path) -> None:
    base = ('[node]\nname = "m1"\ndata_dir = "/tmp/x"\n[[zones]]\nname = "master"\n'
            'endpoints = ["m1"]\n[[endpoints]]\nname = "m1"\n')
    cfg = parse_config(base)
    assert cfg.objects.unknown == "reject" and cfg.objects.max_learned_per_zone == 10_000
    cfg = parse_config(base + '[objects]\nunknown = "learn"\nmax_learned_per_zone = 5\n')
    assert cfg.objects.unknown == "learn" and cfg.objects.max_learned_per_zone == 5
    from router.errors import ConfigError
    with pytest.raises(ConfigError) as err:
        parse_config(base + '[objects]\nmax_learned_per_zone = 0\n', "r.toml")
    assert err.value.line == 10 and "positive integer" in str(err.value)
    from router.config import config_to_toml
    text = config_to_toml(parse_config(base + '[objects]\nunknown = "learn"\n'
                                                   'max_learned_per_zone = 7\n'))
    again = parse_config(text)
    assert again.objects.unknown == "learn" and again.objects.max_learned_per_zone == 7


# -- real TLS peers -----------------------------------------------------------------------------

@pytest.fixture
def pki(tmp_path):
    return make_test_pki(tmp_path / "pki", ["master", "agent1", "agent2"])


def spec_for(tmp_path, pki) -> ClusterSpec:
    return ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("agent1", ["agent1"], "master"),
                                       ("agent2", ["agent2"], "master")])


async def connected_agent(spec: ClusterSpec, pki, name: str) -> FakePeer:
    agent = await FakePeer.connect(spec.port("master"), pki, name, server_name="master")
    await wait_until(lambda: agent.messages("icinga::Hello"), what=f"hello to {name}")
    return agent


def refused(node, endpoint: str, reason: str) -> int:
    stats = node.stats.get(endpoint)
    return 0 if stats is None else stats.refused.get((CR, reason), 0)


def stored(node, host: str):
    result = node.results.get(host, None)
    return result.received_from if result is not None else None


LEARN = '[objects]\nunknown = "learn"\n[objects.hosts]\n"web-agent1" = "agent1"\n'


def test_agent_cannot_claim_another_agents_host_before_and_after_restart(tmp_path, pki, run,
                                                                          caplog):
    spec = spec_for(tmp_path, pki)

    async def main():
        master = await spec.start("master", extra=LEARN)
        try:
            a1 = await connected_agent(spec, pki, "agent1")
            a2 = await connected_agent(spec, pki, "agent2")
            a1.send(CR, check_result("free-host", None, "mine"))       # learned by agent1
            await wait_until(lambda: stored(master.node, "free-host") == "agent1",
                             what="agent1's first report stored")
            for host in ("free-host", "web-agent1", "agent1"):          # learned, configured,
                a2.send(CR, check_result(host, None, "stolen"))         # named like agent1
            await wait_until(lambda: refused(master.node, "agent2", "wrong_zone") == 3,
                             what="three wrong_zone refusals")
            assert master.node.results.get("free-host", None).cr["output"] == "mine"
            assert "refused event::CheckResult: object belongs to another zone: host " \
                in caplog.text
            await wait_until(lambda: learned_path(spec.directory / "master").exists(),
                             what="learned hosts saved")
            await a1.close()
            await a2.close()
        finally:
            await master.stop()
        data = read_learned(learned_path(spec.directory / "master"))
        assert {h: e["zone"] for h, e in data.items()} == {"free-host": "agent1"}

        # Restart: agent2 now reports first and still cannot take the host.
        master = await spec.start("master", extra=LEARN)
        try:
            assert master.node.objects.lookup("free-host") == "agent1"
            a2 = await connected_agent(spec, pki, "agent2")
            a2.send(CR, check_result("free-host", None, "stolen"))
            a2.send(CR, check_result("web-agent1", None, "stolen"))
            a2.send(CR, check_result("own-new", None, "fine"))
            await wait_until(lambda: stored(master.node, "own-new") == "agent2",
                             what="agent2's own new host")
            assert refused(master.node, "agent2", "wrong_zone") == 2
            assert stored(master.node, "free-host") is None
            # The operator forgets the host while the node runs; then agent2 may have it.
            res = await asyncio.to_thread(CliRunner().invoke, cli_main, [
                "objects", "forget", "free-host", "--data-dir", str(spec.directory / "master")])
            assert res.exit_code == 0, res.output
            await wait_until(lambda: master.node.objects.lookup("free-host") is None,
                             what="the node took in the forget")
            a2.send(CR, check_result("free-host", None, "now mine"))
            await wait_until(lambda: stored(master.node, "free-host") == "agent2",
                             what="agent2 owns it after the forget")
            await a2.close()
        finally:
            await master.stop()

    run(main())


def test_default_reject_over_tls_counts_and_keeps_the_session(tmp_path, pki, run, caplog):
    spec = spec_for(tmp_path, pki)

    async def main():
        master = await spec.start("master")       # no [objects]: the default, reject
        try:
            a1 = await connected_agent(spec, pki, "agent1")
            a1.send(CR, check_result("invented", None, "x"))
            a1.send(CR, check_result("agent1", "disk", "ok"))
            await wait_until(lambda: master.node.results.get("agent1", "disk") is not None,
                             what="the agent's own result")
            assert refused(master.node, "agent1", "unknown_object") == 1
            assert master.node.objects.learned == 0 and not a1.closed
            assert not learned_path(spec.directory / "master").exists()
            text = await metrics_text(master)
            assert ('router_messages_refused_total{endpoint="agent1",'
                    'method="event::CheckResult",reason="unknown_object"} 1') in text
            assert "object's zone is unknown: host 'invented'" in caplog.text
            assert "objects.unknown = \"learn\"" not in caplog.text
            await a1.close()
        finally:
            await master.stop()

    run(main())


def test_learned_host_cap_over_tls(tmp_path, pki, run, caplog):
    spec = spec_for(tmp_path, pki)

    async def main():
        master = await spec.start(
            "master", extra='[objects]\nunknown = "learn"\nmax_learned_per_zone = 5\n')
        try:
            assert 'objects.unknown = "learn"' in caplog.text     # the start-up warning
            a1 = await connected_agent(spec, pki, "agent1")
            for i in range(8):
                a1.send(CR, check_result(f"h{i}", None, "x"))
            await wait_until(lambda: refused(master.node, "agent1", "too_many_learned") == 3,
                             what="three refusals beyond the cap")
            assert master.node.objects.learned == 5 and not a1.closed
            text = await metrics_text(master)
            assert 'router_objects_learn_refused_total{zone="agent1"} 3' in text
            assert "router_objects_learned 5" in text
            await a1.close()
        finally:
            await master.stop()

    run(main())


@pytest.mark.parametrize("mode", ["reject", "learn"])
def test_flood_of_invented_hosts_does_not_starve_another_agent(tmp_path, pki, mode):
    """100 000 invented hosts from agent1 while agent2's results keep flowing."""
    spec = spec_for(tmp_path, pki)
    flood = 100_000

    async def main():
        extra = '[objects]\nunknown = "learn"\nmax_learned_per_zone = 1000\n' \
            if mode == "learn" else ""
        master = await spec.start("master", extra=extra)
        try:
            a1 = await connected_agent(spec, pki, "agent1")
            a2 = await connected_agent(spec, pki, "agent2")
            node = master.node

            async def flooder():
                batch = []
                for i in range(flood):
                    batch.append(check_result(f"invented-{i}", None, "x", now=1.0))
                    if len(batch) == 500:
                        for params in batch:
                            a1.send(CR, params)
                        batch.clear()
                        await a1.writer.drain()
                for params in batch:
                    a1.send(CR, params)
                await a1.writer.drain()

            task = asyncio.ensure_future(flooder())
            seen = during = 0
            started = time.monotonic()
            while not task.done() or seen < 20:
                if not task.done():
                    during = seen
                seen += 1
                a2.send(CR, check_result("agent2", "load", f"n{seen}"))
                await wait_until(lambda: (node.results.get("agent2", "load") is not None and
                                          node.results.get("agent2", "load").cr["output"]
                                          == f"n{seen}"),
                                 timeout=10, what=f"agent2 result {seen} during the flood")
                await asyncio.sleep(0.05)
            await task
            assert during >= 5        # agent2's results kept coming while agent1 flooded
            reason = "unknown_object" if mode == "reject" else "too_many_learned"
            expected = flood if mode == "reject" else flood - 1000
            await wait_until(lambda: refused(node, "agent1", reason) == expected, timeout=60,
                             what="every invented host refused")
            assert node.objects.learned == (0 if mode == "reject" else 1000)
            assert len(node.results) == 1 + (0 if mode == "reject" else 1000)
            assert not a1.closed and not a2.closed
            assert time.monotonic() - started < 120
            await a1.close()
            await a2.close()
        finally:
            await master.stop()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(main(), 180))


def test_umask_does_not_loosen_the_learned_file(tmp_path) -> None:
    t = Topology(ZONES, ENDPOINTS, "s1")
    old = os.umask(0)
    try:
        objs = ObjectZones(t, {}, UnknownObjects.LEARN)
        store = LearnedHostsStore.open(objs, str(tmp_path / "d"))
        objs.learn("h", "a1")
        asyncio.run(store.sync())
    finally:
        os.umask(old)
    path = learned_path(tmp_path / "d")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_store_follows_a_reload_that_swaps_the_object_zones(tmp_path) -> None:
    t = Topology(ZONES, ENDPOINTS, "s1")

    async def main():
        old = ObjectZones(t, {}, UnknownObjects.LEARN)
        store = LearnedHostsStore.open(old, str(tmp_path))
        old.learn("h1", "a1")
        await store.sync()
        new = ObjectZones(t, {"h1": "a2"}, UnknownObjects.LEARN)   # now configured
        new.load_learned(old.learned_hosts())
        new.learn("h2", "a1")
        store.objects = new
        await store.sync()
        assert {h: e["zone"] for h, e in read_learned(learned_path(tmp_path)).items()} == {
            "h2": "a1"}

    asyncio.run(main())
