"""Config sync over real TLS on 127.0.0.1: our satellite between a scripted master and a
scripted agent, our master serving a zones directory, and the refusals."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from typing import Any

import pytest

from tests.nodeutil import (ClusterSpec, FakePeer, check_result, http_get, metrics_text,
                            status_json, wait_until)
from tests.pkiutil import make_test_pki

HOSTS_CONF = 'object Host "web01" {\n  check_command = "dummy"\n}\n'
GLOBAL_CONF = 'template Host "generic-host" {\n  max_check_attempts = 3\n}\n'
GLOBAL_ZONE = '[[zones]]\nname = "global-templates"\nglobal = true\n'


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def master_update(zones: dict[str, dict[str, str]], ts: str = "1700000000.000000"
                  ) -> dict[str, Any]:
    params: dict[str, Any] = {"checksums": {}, "update": {}, "update_v2": {}}
    for name, files in zones.items():
        etc = {f"/_etc/{p}": t for p, t in files.items()}
        v2 = {"/.checksums": json.dumps({p: sha(t) for p, t in sorted(etc.items())}),
              "/.timestamp": ts}
        params["update"][name] = etc
        params["update_v2"][name] = v2
        params["checksums"][name] = {p: sha(t) for p, t in {**etc, **v2}.items()}
    return params


@pytest.fixture
def sat_spec(tmp_path):
    pki = make_test_pki(tmp_path / "pki", ["master1", "sat1", "agent1"])
    spec = ClusterSpec(tmp_path, pki, [("master", ["master1"], None),
                                       ("satellite", ["sat1"], "master"),
                                       ("agents", ["agent1"], "satellite")])
    spec.limits = 'max_config_update_bytes = "64KiB"'
    return spec


def updates_metric(text: str, direction: str, result: str) -> float:
    needle = f'router_config_updates_total{{direction="{direction}",result="{result}"}} '
    for line in text.splitlines():
        if line.startswith(needle):
            return float(line.split()[-1])
    return 0.0


def refused_metric(text: str, endpoint: str, reason: str) -> float:
    for line in text.splitlines():
        if line.startswith("router_messages_refused_total{") and \
                f'endpoint="{endpoint}"' in line and 'method="config::Update"' in line \
                and f'reason="{reason}"' in line:
            return float(line.split()[-1])
    return 0.0


def test_satellite_relays_the_masters_zones(sat_spec, run, tmp_path, caplog):
    async def main():
        sat = await sat_spec.start("sat1", extra=GLOBAL_ZONE, node_extra="accept_config = true")
        port = sat_spec.port("sat1")
        try:
            master = await FakePeer.connect(port, sat_spec.pki, "master1", server_name="sat1")
            agent = await FakePeer.connect(port, sat_spec.pki, "agent1", server_name="sat1")
            await wait_until(lambda: agent.messages("config::Update"),
                             what="the empty update on connect")
            assert agent.messages("config::Update")[0]["params"] == {
                "checksums": {}, "update": {}, "update_v2": {}}
            params = master_update({"satellite": {"s.conf": 'object Host "satx" {}'},
                                    "agents": {"hosts.conf": HOSTS_CONF},
                                    "global-templates": {"templates.conf": GLOBAL_CONF}})
            master.send("config::Update", params)
            await wait_until(lambda: len(agent.messages("config::Update")) == 2,
                             what="the relayed update")
            relayed = agent.messages("config::Update")[1]
            assert "ts" not in relayed
            assert sorted(relayed["params"]["update"]) == ["agents", "global-templates"]
            for key in ("update", "update_v2", "checksums"):
                for zone in ("agents", "global-templates"):
                    assert relayed["params"][key][zone] == params[key][zone]
            zones_dir = tmp_path / "sat1/api/zones"
            assert (zones_dir / "agents/_etc/hosts.conf").read_text() == HOSTS_CONF
            assert (zones_dir / "agents/.timestamp").read_text() == "1700000000.000000"

            # The synced host now belongs to the agents zone: its results are routed.
            agent.send("event::CheckResult", check_result("web01", "ping", "PING OK"))
            master_seen = lambda: [m for m in master.messages("event::CheckResult")  # noqa: E731
                                   if m["params"]["host"] == "web01"]
            await wait_until(master_seen, what="the synced host's result at the master")

            # The agent reconnects: it gets byte-identical content (no reload for it).
            await agent.close()
            await wait_until(lambda: "agent1" not in sat.node.connections)
            again = await FakePeer.connect(port, sat_spec.pki, "agent1", server_name="sat1")
            await wait_until(lambda: again.messages("config::Update"), what="resend")
            assert again.messages("config::Update")[0]["params"] == relayed["params"]

            doc = await status_json(sat)
            zones = {z["zone"]: z for z in doc["config_zones"]}
            assert sorted(zones) == ["agents", "global-templates", "satellite"]
            assert zones["agents"]["files"] == 3 and not zones["agents"]["authoritative"]
            text = await metrics_text(sat)
            assert updates_metric(text, "received", "stored") == 1
            assert updates_metric(text, "sent", "connect") == 2
            assert updates_metric(text, "sent", "change") == 1
            await master.close()
            await again.close()
        finally:
            await sat.stop()

    run(main())


BAD_UPDATES = {
    "bad_path": lambda p: p["update"]["agents"].__setitem__("/../../../tmp/evil.conf", "x"),
    # raw bytes that are not UTF-8 (below): the decoder makes them U+FFFD, which the
    # sender's checksum does not match (U+FFFD itself is accepted, as Icinga does)
    "checksum_mismatch": None,
    "too_large": lambda p: p["update"]["agents"].__setitem__("/_etc/big.conf", "x" * 70000),
    "zone_not_allowed": lambda p: p["update"].__setitem__("master", {"/_etc/m.conf": "m"}),
}


def test_bad_updates_are_refused_logged_counted_and_not_written(sat_spec, run, tmp_path,
                                                                  caplog):
    async def main():
        sat = await sat_spec.start("sat1", extra=GLOBAL_ZONE, node_extra="accept_config = true")
        port = sat_spec.port("sat1")
        try:
            master = await FakePeer.connect(port, sat_spec.pki, "master1", server_name="sat1")
            agent = await FakePeer.connect(port, sat_spec.pki, "agent1", server_name="sat1")
            await wait_until(lambda: agent.messages("config::Update"))
            for reason, mutate in BAD_UPDATES.items():
                params = master_update({"agents": {"hosts.conf": HOSTS_CONF}})
                if mutate is None:
                    raw = json.dumps({"jsonrpc": "2.0", "method": "config::Update",
                                      "params": params}).encode()
                    raw = raw.replace(b"check_command", b"check_\xff\xfecommand", 1)
                    master.send_raw(b"%d:%s," % (len(raw), raw))
                else:
                    mutate(params)
                    master.send("config::Update", params)
            # From the child: the routing refuses it (DOWN); the agent stays connected.
            agent.send("config::Update", master_update({"agents": {"hosts.conf": "x"}}))

            async def all_counted():
                text = await metrics_text(sat)
                return all(refused_metric(text, "master1", r) == 1 for r in BAD_UPDATES) \
                    and refused_metric(text, "agent1", "not_allowed") == 1
            await wait_until(all_counted, what="every refusal counted")
            text = await metrics_text(sat)
            for reason in BAD_UPDATES:
                assert updates_metric(text, "received", reason) == 1, reason
            assert not (tmp_path / "sat1/api").exists()
            assert not os.path.exists("/tmp/evil.conf")
            assert len(agent.messages("config::Update")) == 1   # nothing relayed
            logged = caplog.text
            for reason in BAD_UPDATES:
                assert f"[master1 " in logged and f"({reason})" in logged
            assert "[agent1 " in logged
            assert not master.closed and not agent.closed   # refusals, not disconnects
            await master.close()
            await agent.close()
        finally:
            await sat.stop()

    run(main())


def test_accept_config_off_refuses_updates(sat_spec, run, tmp_path):
    async def main():
        sat = await sat_spec.start("sat1", extra=GLOBAL_ZONE)
        try:
            master = await FakePeer.connect(sat_spec.port("sat1"), sat_spec.pki, "master1",
                                            server_name="sat1")
            master.send("config::Update", master_update({"agents": {"h.conf": "x"}}))

            async def counted():
                return refused_metric(await metrics_text(sat), "master1", "not_accepted") == 1
            await wait_until(counted, what="the refusal")
            assert not (tmp_path / "sat1/api").exists()
            await master.close()
        finally:
            await sat.stop()

    run(main())


def test_master_serves_zones_dir_and_routes_synced_hosts(tmp_path, run):
    pki = make_test_pki(tmp_path / "pki", ["master1", "agent1"])
    spec = ClusterSpec(tmp_path, pki, [("master", ["master1"], None),
                                       ("agent1", ["agent1"], "master")])
    zd = tmp_path / "zones.d"
    (zd / "agent1").mkdir(parents=True)
    (zd / "agent1/hosts.conf").write_text('object Host "db01" {}\n')
    (zd / "global-templates").mkdir()
    (zd / "global-templates/t.conf").write_text(GLOBAL_CONF)

    async def main():
        master = await spec.start("master1", extra=GLOBAL_ZONE,
                                  node_extra=f'zones_dir = "{zd}"')
        try:
            agent = await FakePeer.connect(spec.port("master1"), pki, "agent1",
                                           server_name="master1")
            await wait_until(lambda: agent.messages("config::Update"))
            params = agent.messages("config::Update")[0]["params"]
            assert params["update"] == {
                "agent1": {"/_etc/hosts.conf": 'object Host "db01" {}\n'},
                "global-templates": {"/_etc/t.conf": GLOBAL_CONF}}
            agent.send("event::CheckResult", check_result("db01", "disk", "DISK OK"))
            async def stored():
                _, body = await asyncio.to_thread(http_get, master.status_port,
                                                  "/v1/objects/checkresults?host=db01")
                return b"DISK OK" in body
            await wait_until(stored, what="the synced host's result in the result view")
            # Reload: a changed zone is sent again, an unchanged one is not.
            (zd / "agent1/hosts.conf").write_text('object Host "db02" {}\n')
            assert master.node.configsync.reload() == ["agent1"]
            await wait_until(lambda: len(agent.messages("config::Update")) == 2)
            assert master.node.configsync.reload() == []
            await agent.close()
        finally:
            await master.stop()

    run(main())


def test_event_commands_run_like_icinga(tmp_path, run):
    """event::ExecuteCommand with command_type event_command (Icinga's event handlers on a
    command endpoint): run on the executors; a scheduled one is answered with nothing, an
    API one (``source``) with event::ExecutedCommand, an unknown one with Icinga's text."""
    pki = make_test_pki(tmp_path / "pki", ["master", "agent1"])
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("agent1", ["agent1"], "master")])

    async def main():
        agent = await spec.start("agent1", node_extra="accept_commands = true")
        try:
            parent = await FakePeer.connect(spec.port("agent1"), pki, "master",
                                            server_name="agent1")
            executor = agent.node.executor
            parent.send("event::ExecuteCommand", {
                "command": "dummy", "command_type": "event_command", "host": "agent1",
                "service": "svc", "macros": {"dummy_state": 0, "dummy_text": "handled"}})
            await wait_until(lambda: executor.executed == 1, what="the event handler ran")
            parent.send("event::ExecuteCommand", {
                "command": "dummy", "command_type": "event_command", "host": "agent1",
                "macros": {"dummy_state": 1, "dummy_text": "api handler"},
                "source": "6f0e5d6a-0000-4000-8000-00000000000e",
                "deadline": time.time() + 60, "endpoint": "agent1"})
            parent.send("event::ExecuteCommand", {
                "command": "no-such-handler", "command_type": "event_command",
                "host": "agent1", "macros": {},
                "source": "6f0e5d6a-0000-4000-8000-00000000000f",
                "deadline": time.time() + 60, "endpoint": "agent1"})
            await wait_until(lambda: len(parent.messages("event::ExecutedCommand")) == 2,
                             what="the API executions' answers")
            answers = {m["params"]["execution"][-1]: m["params"]
                       for m in parent.messages("event::ExecutedCommand")}
            assert answers["e"]["exit"] == 1 and answers["e"]["output"] == "api handler"
            assert answers["f"]["exit"] == 3
            assert answers["f"]["output"] == "Event command 'no-such-handler' does not exist."
            assert parent.messages("event::CheckResult") == []   # none for event handlers
            await parent.close()
        finally:
            await agent.stop()

    run(main())
