"""Issue 16 S4 (command answers bound to the asked endpoint), S5 (file modes) and S6 (the
bounded, indexed result view)."""

from __future__ import annotations

import asyncio
import os
import stat
import time

import pytest

from router.errors import TLSSetupError
from router.features.results import ResultStore
from router.node.filemodes import check_key_modes, ensure_private_dirs
from tests.nodeutil import (ClusterSpec, FakePeer, check_result, http_get, metrics_text,
                            status_json, wait_until)
from tests.pkiutil import make_test_pki


@pytest.fixture
def pki(tmp_path):
    return make_test_pki(tmp_path / "pki", ["master", "sat1", "agent1", "agent2"])


# -- S4 ------------------------------------------------------------------------------------------

def test_executed_command_only_from_where_the_command_went(tmp_path, pki, run, caplog):
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("sat", ["sat1"], "master"),
                                       ("agent1", ["agent1"], "sat"),
                                       ("agent2", ["agent2"], "sat")])

    async def main():
        sat = await spec.start("sat1")
        try:
            peers = {}
            for name in ("master", "agent1", "agent2"):
                peers[name] = await FakePeer.connect(spec.port("sat1"), pki, name,
                                                     server_name="sat1")
            node = sat.node
            await wait_until(lambda: len(node.connected_names) == 3, what="three sessions")
            execution = "0b9f6c2e-3f1a-4c55-9d7e-2a6a1d8e4f10"
            peers["master"].send("event::ExecuteCommand", {
                "command": "hostalive", "command_type": "check_command",
                "deadline": time.time() + 60, "endpoint": "agent1", "host": "agent1",
                "macros": {}, "source": execution})
            await wait_until(lambda: peers["agent1"].messages("event::ExecuteCommand"),
                             what="the command at agent1")
            answer = {"execution": execution, "exit": 0, "output": "forged", "start": 1.0,
                      "end": 2.0}
            # agent2 knows the id and answers about a host it may speak for
            peers["agent2"].send("event::ExecutedCommand", dict(answer, host="agent2"))
            await wait_until(lambda: node.stats["agent2"].refused.get(
                ("event::ExecutedCommand", "wrong_endpoint")) == 1, what="refused")
            assert "was sent towards zone(s) agent1, not to zone agent2" in caplog.text
            # the real answer still goes through
            peers["agent1"].send("event::ExecutedCommand",
                                 dict(answer, host="agent1", output="PING OK"))
            await wait_until(lambda: peers["master"].messages("event::ExecutedCommand"),
                             what="the answer at the master")
            [got] = peers["master"].messages("event::ExecutedCommand")
            assert got["params"]["output"] == "PING OK"
            text = await metrics_text(sat)
            assert ('router_messages_refused_total{endpoint="agent2",method='
                    '"event::ExecutedCommand",reason="wrong_endpoint"} 1') in text
            # answered once: a replay of the same answer is unknown now
            peers["agent1"].send("event::ExecutedCommand", dict(answer, host="agent1"))
            await wait_until(lambda: node.stats["agent1"].refused.get(
                ("event::ExecutedCommand", "unknown_execution")) == 1, what="unknown")
            for peer in peers.values():
                await peer.close()
        finally:
            await sat.stop()

    run(main())


def test_who_may_answer_a_relayed_execution_is_decided_by_the_zone_tree() -> None:
    """Kept per execution: only the target zone's name (``Executions.may_answer``)."""
    from types import SimpleNamespace

    from router.node.executions import Executions
    from router.routing import EndpointSpec, Topology, ZoneSpec
    zones = [ZoneSpec("master", ("m1",)), ZoneSpec("sat", ("s1",), parent="master"),
             ZoneSpec("sub", ("u1",), parent="sat"), ZoneSpec("agent", ("a1",), parent="sub"),
             ZoneSpec("other", ("o1",), parent="sat")]
    topology = Topology(zones, [EndpointSpec(n) for n in ("m1", "s1", "u1", "a1", "o1")],
                        "s1")                                # we are the satellite
    executions = Executions(SimpleNamespace(topology=topology))  # type: ignore[arg-type]
    may = executions.may_answer
    assert may("agent", "agent") and may("sub", "agent")     # the target and the path to it
    assert not may("other", "agent") and not may("sat", "agent") \
        and not may("master", "agent") and not may(None, "agent")
    assert may("sat", None) and may("sat", "sat") and not may("sub", "sat")
    assert executions.answer_zones("agent") == ["agent", "sub"]


# -- S5 ------------------------------------------------------------------------------------------

def test_private_dirs_are_0700_under_umask_000(tmp_path, pki, run):
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None)])
    old = os.umask(0)
    try:
        data = tmp_path / "master"
        (data / "certs").mkdir(parents=True)             # 0777 under this umask
        (data / "certificate-requests").mkdir()
        os.chmod(data, 0o777)

        async def main():
            master = await spec.start("master", extra='[objects]\nunknown = "learn"\n')
            await master.stop()

        run(main())
        for path in (data, data / "certs", data / "certificate-requests", data / "objects"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
        fresh = tmp_path / "a" / "b" / "data"
        ensure_private_dirs(fresh)
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
        assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
    finally:
        os.umask(old)


def test_readable_keys_refuse_to_start(tmp_path, pki, run):
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None)])
    key = pki.key("master")
    os.chmod(key, 0o644)

    async def main():
        with pytest.raises(TLSSetupError) as err:
            await spec.start("master")
        assert str(key) in str(err.value) and f"chmod 600 {key}" in str(err.value)

    run(main())
    os.chmod(key, 0o600)
    ca_dir = tmp_path / "master" / "ca"
    ca_dir.mkdir(parents=True)
    (ca_dir / "ca.key").write_text("x")
    os.chmod(ca_dir / "ca.key", 0o640)
    with pytest.raises(TLSSetupError, match="ca.key has mode 0640"):
        check_key_modes(key, ca_dir / "ca.key")
    os.chmod(ca_dir / "ca.key", 0o600)
    check_key_modes(key, ca_dir / "ca.key", tmp_path / "missing.key")


# -- S6 ------------------------------------------------------------------------------------------

def cr(start: float = 1.0) -> dict:
    return {"state": 0, "execution_start": start}


def test_result_view_caps_evict_least_recently_updated_per_zone_and_total() -> None:
    store = ResultStore(max_results=5, max_per_zone=3)
    for i in range(3):
        store.update("h1", f"s{i}", cr(), "a1", 0.0, "z1")
    store.update("h1", "s0", cr(2.0), "a1", 0.0, "z1")      # s0 is now the youngest
    store.update("h1", "s3", cr(), "a1", 0.0, "z1")         # z1 full: evicts s1
    assert store.get("h1", "s1") is None and store.get("h1", "s0") is not None
    assert store.evicted == {"z1": 1} and store.zone_count("z1") == 3
    for i in range(3):
        store.update(f"g{i}", None, cr(), "a2", 0.0, "z2")  # total 6 > 5: evicts z1's oldest
    assert len(store) == 5 and store.evicted == {"z1": 2}
    assert store.get("h1", "s2") is None
    assert store.zone_count("z2") == 3 and store.zone_count("z1") == 2
    # an old execution does not replace a newer one, and does not count as an update
    assert not store.update("h1", "s0", cr(1.0), "a1", 0.0, "z1")


def test_result_view_index_and_paging() -> None:
    store = ResultStore()
    for host in ("web2", "web1", "db"):
        for svc in (None, "ssh", "disk"):
            store.update(host, svc, cr(), "a", 0.0, "z")
    names = [(r.host, r.service) for r in store.select()]
    assert names[:4] == [("db", None), ("db", "disk"), ("db", "ssh"), ("web1", None)]
    assert len(names) == 9
    assert [(r.host, r.service) for r in store.select(offset=2, limit=3)] == names[2:5]
    assert [(r.host, r.service) for r in store.select(offset=4, limit=100)] == names[4:]
    assert list(store.select(limit=0)) == []
    assert [r.service for r in store.select(host="web1")] == [None, "disk", "ssh"]
    assert [r.host for r in store.select(service="ssh")] == ["db", "web1", "web2"]
    assert store.count() == 9 and store.count("web1") == 3 and store.count(service="ssh") == 3
    assert store.count("web1", "ssh") == 1 and store.count("nope") == 0


def test_result_view_host_query_does_not_scan_everything() -> None:
    store = ResultStore()
    for i in range(50_000):
        store.update(f"host{i:05d}", "svc", cr(), "a", 0.0, "z")
    started = time.perf_counter()
    for _ in range(1000):
        [result] = store.select(host="host04242")
    elapsed = time.perf_counter() - started
    assert result.host == "host04242"
    assert elapsed < 0.5        # a full sort of 50 000 keys per query would take minutes


def test_checkresults_limit_offset_and_caps_over_tls(tmp_path, pki, run):
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("agent1", ["agent1"], "master")],
                       limits="max_results_per_zone = 3")

    async def main():
        master = await spec.start("master")
        try:
            agent = await FakePeer.connect(spec.port("master"), pki, "agent1",
                                           server_name="master")
            for svc in ("a", "b", "c", "d", "e"):
                agent.send("event::CheckResult", check_result("agent1", svc, svc))
            await wait_until(lambda: master.node.results.updates == 5, what="five stored")
            doc = await status_json(master, "/v1/objects/checkresults")
            assert doc["total"] == 3 and [r["service"] for r in doc["results"]] == \
                ["c", "d", "e"]
            doc = await status_json(master, "/v1/objects/checkresults?limit=1&offset=1")
            assert [r["service"] for r in doc["results"]] == ["d"]
            assert (doc["offset"], doc["limit"], doc["total"]) == (1, 1, 3)
            code, body = await asyncio.to_thread(http_get, master.status_port,
                                                 "/v1/objects/checkresults?limit=abc")
            assert code == 400 and b"limit must be a whole number" in body
            code, _ = await asyncio.to_thread(http_get, master.status_port,
                                              "/v1/objects/checkresults?offset=-1")
            assert code == 400
            text = await metrics_text(master)
            assert 'router_check_results_evicted_total{zone="agent1"} 2' in text
            await agent.close()
        finally:
            await master.stop()

    run(main())


def test_expired_executions_are_forgotten_oldest_first_and_the_cap_holds(monkeypatch) -> None:
    """``Executions.prune`` walks from the oldest and stops at the first one still due
    (a scan of the whole table every second cost 3.3 ms at the cap); one whose deadline
    is far out does not keep the others for ever: the cap drops the oldest tenth."""
    from types import SimpleNamespace

    from router.node import executions as ex

    monkeypatch.setattr(ex, "MAX_PENDING_EXECUTIONS", 100)
    executions = ex.Executions(SimpleNamespace(topology=None))  # type: ignore[arg-type]
    now = time.time()
    for i in range(10):
        executions.pending[f"old{i}"] = ("m", now - 10 + i, None)
    executions.pending["due"] = ("m", now + 60, None)
    executions.pending["late-but-expired"] = ("m", now - 1, None)
    executions.prune()
    assert "due" in executions.pending          # (one behind it waits for it: fine)
    assert not [key for key in executions.pending if key.startswith("old")]
    executions.pending["far"] = ("m", now + 10 ** 9, None)      # an odd deadline
    for i in range(200):
        executions.remember("m", {"source": f"s{i}", "deadline": now - 1000.0 + i})
    assert len(executions.pending) <= 100 and "far" not in executions.pending
