"""Reload in-process over TLS on 127.0.0.1: sessions stay, bad configurations are refused."""

from __future__ import annotations

import asyncio
import logging
import shutil
import ssl
from pathlib import Path

import pytest
from click.testing import CliRunner

from router import pki as router_pki
from router.cli import main as cli_main
from tests.nodeutil import (ClusterSpec, FakePeer, check_result, http_get, metrics_text,
                            status_json, wait_until)
from tests.pkiutil import make_test_pki

AGENTS = [f"agent{i}" for i in range(8)]


@pytest.fixture
def pki(tmp_path):
    return make_test_pki(tmp_path / "pki", ["master", *AGENTS, "newagent"],
                         other_ca_names=["foreign"])


def cluster(tmp_path, pki, agents=AGENTS) -> ClusterSpec:
    return ClusterSpec(tmp_path, pki, [("master", ["master"], None)]
                       + [(a, [a], "master") for a in agents])


def rewrite(spec: ClusterSpec, name: str = "master", **kw) -> Path:
    path = spec.directory / f"{name}.toml"
    path.write_text(spec.toml(name, **kw))
    return path


async def connect(spec, pki, name, **kw) -> FakePeer:
    peer = await FakePeer.connect(spec.port("master"), pki, name, server_name="master", **kw)
    await wait_until(lambda: peer.messages("icinga::Hello"), what=f"hello for {name}")
    return peer


def post(port: int, path: str = "/v1/actions/reload", token: str | None = None
         ) -> tuple[int, bytes, dict]:
    import urllib.error
    import urllib.request

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=b"", method="POST",
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=40) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def test_reload_adds_and_removes_endpoints_and_keeps_the_others(tmp_path, pki, run):
    spec = cluster(tmp_path, pki)

    async def main():
        master = await spec.start("master")
        try:
            peers = {a: await connect(spec, pki, a) for a in AGENTS[:4]}
            conns = {a: master.node.connections[a] for a in peers}
            # newagent is unknown: it is let in anonymously and cannot report.
            spec.zones = [z for z in spec.zones if z[0] != "agent3"] + [
                ("newagent", ["newagent"], "master")]
            rewrite(spec)
            record = await master.reload("test")
            assert record.result == "ok", record
            assert record.sessions_closed == ["agent3"]
            assert record.changes["endpoints_added"] == ["newagent"]
            assert record.changes["endpoints_removed"] == ["agent3"]
            await peers["agent3"].wait_closed()
            for a in AGENTS[:3]:
                assert not peers[a].closed
                assert master.node.connections[a] is conns[a]   # the very same session
            new = await connect(spec, pki, "newagent")
            new.send("event::CheckResult", check_result("newagent", None, "OK"))
            await wait_until(lambda: master.node.check_results_received == 1,
                             what="newagent's result")
            # the removed agent is a stranger now: it is not admitted as an endpoint
            again = await FakePeer.connect(spec.port("master"), pki, "agent3",
                                           server_name="master")
            await wait_until(lambda: len(master.node.anonymous) == 1, what="anonymous")
            assert "agent3" not in master.node.connections
            status = await status_json(master)
            assert status["reload"]["last"]["result"] == "ok"
            assert status["reload"]["counts"]["ok"] == 1
            text = await metrics_text(master)
            assert 'router_reloads_total{result="ok"} 1.0' in text
            assert 'router_reloads_total{result="refused"} 0.0' in text
            for peer in [*peers.values(), new, again]:
                await peer.close()
        finally:
            await master.stop()

    run(main())


def test_broken_toml_is_refused_and_the_node_keeps_serving(tmp_path, pki, run):
    spec = cluster(tmp_path, pki)

    async def main():
        master = await spec.start("master")
        try:
            agent = await connect(spec, pki, "agent0")
            path = rewrite(spec)
            good = path.read_text()
            path.write_text(good.replace('parent = "master"', 'parent = "mastr"', 1))
            record = await master.reload("test")
            assert record.result == "refused"
            assert "mastr" in record.error and f"{path}:" in record.error
            # the same error `router config check` prints
            result = CliRunner().invoke(cli_main, ["config", "check", str(path)])
            assert result.exit_code == 1
            assert record.error in result.output
            path.write_text("[node\nname = ")
            record = await master.reload("test")
            assert record.result == "refused" and f"{path}:1" in record.error
            assert not agent.closed
            other = await connect(spec, pki, "agent1")     # still admitting
            agent.send("event::CheckResult", check_result("agent0", None, "OK"))
            await wait_until(lambda: master.node.check_results_received == 1, what="result")
            assert master.reloader.counts.get(("refused",)) == 2
            path.write_text(good)
            assert (await master.reload("test")).result == "ok"
            await agent.close()
            await other.close()
        finally:
            await master.stop()

    run(main())


def test_broken_zones_conf_is_refused(tmp_path, pki, run):
    from router.app import RouterService
    from router.cli.reload import config_source

    spec = cluster(tmp_path, pki, AGENTS[:2])
    zones = tmp_path / "zones.conf"
    zones.write_text('object Endpoint "master" { }\nobject Zone "master" { endpoints = '
                     '[ "master" ] }\nobject Endpoint "agent0" { }\nobject Zone "agent0" {'
                     ' endpoints = [ "agent0" ]; parent = "master" }\n')
    base = rewrite(spec)
    source = config_source(str(base), zones_file=str(zones))

    async def main():
        master = RouterService(source(), config_source=source)
        await master.start()
        try:
            agent = await connect(spec, pki, "agent0")
            zones.write_text(zones.read_text() + 'object Zone "broken" { parent = "nowhere" }\n')
            record = await master.reload("test")
            assert record.result == "refused", record
            assert str(zones) in record.error and "nowhere" in record.error
            assert not agent.closed and "agent0" in master.node.connections
            zones.write_text(zones.read_text().replace('parent = "nowhere"',
                                                       'parent = "master"'))
            record = await master.reload("test")
            assert record.result == "ok" and record.changes["zones_added"] == ["broken"]
            assert not agent.closed
            await agent.close()
        finally:
            await master.stop()

    run(main())


def test_bad_certificate_or_key_is_refused_and_the_old_context_kept(tmp_path, pki, run):
    spec = cluster(tmp_path, pki, AGENTS[:2])
    certs = tmp_path / "own"
    certs.mkdir()
    cert, key = certs / "master.crt", certs / "master.key"
    shutil.copy(pki.cert("master"), cert)
    shutil.copy(pki.key("master"), key)
    spec.pki = pki

    async def main():
        path = rewrite(spec)
        text = path.read_text().replace(str(pki.cert("master")), str(cert)).replace(
            str(pki.key("master")), str(key))
        path.write_text(text)
        from router.app import RouterService
        from router.config import load_config
        master = RouterService(load_config(path))
        await master.start()
        try:
            agent = await connect(spec, pki, "agent0")
            context = master.node.server_context
            cert.write_text("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
            record = await master.reload("test")
            assert record.result == "refused" and str(cert) in record.error
            assert master.node.server_context is context
            shutil.copy(pki.cert("master"), cert)
            router_pki.write_private_key(key, router_pki.generate_key("ec"))  # not its key
            record = await master.reload("test")
            assert record.result == "refused" and "does not match" in record.error
            assert master.node.server_context is context
            shutil.copy(pki.key("master"), key)
            other = await connect(spec, pki, "agent1")  # handshakes still work
            assert not agent.closed
            await agent.close()
            await other.close()
        finally:
            await master.stop()

    run(main())


def test_ca_swap_with_overlap_keeps_old_peers_and_admits_new_ones(tmp_path, pki, run):
    spec = cluster(tmp_path, pki, ["agent0", "foreign"])
    bundle = tmp_path / "bundle.crt"
    bundle.write_bytes(Path(pki.ca_cert).read_bytes() + Path(pki.other_ca_cert).read_bytes())

    async def main():
        master = await spec.start("master")
        try:
            agent = await connect(spec, pki, "agent0")
            try:       # before: its certificate does not verify, it is not admitted
                peer = await FakePeer.connect(spec.port("master"), pki, "foreign",
                                              server_name="master", ca=bundle)
                await peer.wait_closed(timeout=5)
            except (ssl.SSLError, OSError):
                pass
            assert "foreign" not in master.node.connections
            failures = master.node.handshake_failures.total()
            assert failures >= 1
            path = rewrite(spec)
            path.write_text(path.read_text().replace(f'ca = "{pki.ca_cert}"',
                                                     f'ca = "{bundle}"'))
            record = await master.reload("test")
            assert record.result == "ok" and record.changes.get("tls") is True, record
            foreign = await connect(spec, pki, "foreign", ca=bundle)
            await wait_until(lambda: "foreign" in master.node.connections, what="foreign")
            assert not agent.closed and "agent0" in master.node.connections
            assert master.node.handshake_failures.total() == failures
            await agent.close()
            await foreign.close()
        finally:
            await master.stop()

    run(main())


def _reload_under_load(tmp_path, run, n_agents: int, per_agent: int, gap: float) -> None:
    """``n_agents`` agents each send ``per_agent`` results ``gap`` seconds apart while 20
    reloads add and remove zones: no session of an unchanged endpoint drops, and every
    result is processed exactly once."""
    agents = [f"load{i}" for i in range(n_agents)]
    spares = [f"spare{i}" for i in range(5)]
    pki = make_test_pki(tmp_path / "pki", ["master", *agents, *spares])
    spec = cluster(tmp_path, pki, agents)

    async def main():
        master = await spec.start("master")
        try:
            peers = {a: await connect(spec, pki, a) for a in agents}
            conns = {a: master.node.connections[a] for a in agents}

            async def send(name: str) -> None:
                for i in range(per_agent):
                    peers[name].send("event::CheckResult",
                                     check_result(name, "svc", f"result {i}"))
                    await asyncio.sleep(gap)

            senders = asyncio.gather(*(send(a) for a in agents))
            for i in range(20):
                extra = spares[: (i % len(spares)) + 1] if i % 2 == 0 else spares[i % 3:][:2]
                spec.zones = ([("master", ["master"], None)]
                              + [(a, [a], "master") for a in agents]
                              + [(s, [s], "master") for s in extra])
                rewrite(spec)
                record = await master.reload(f"load {i}")
                assert record.result == "ok", record
                assert record.sessions_closed == []
                await asyncio.sleep(0.01)
            await senders
            total = len(agents) * per_agent
            await wait_until(lambda: master.node.check_results_received >= total,
                             timeout=30, what="every result")
            await asyncio.sleep(0.2)
            assert master.node.check_results_received == total
            for a in agents:
                assert master.node.stats[a].received.get("event::CheckResult") == per_agent
                assert master.node.connections[a] is conns[a] and not peers[a].closed
            assert master.node.disconnects.total() == 0
            for peer in peers.values():
                await peer.close()
        finally:
            await master.stop()

    run(main(), timeout=240)


def test_reload_under_load_loses_and_duplicates_nothing(tmp_path, run):
    _reload_under_load(tmp_path, run, n_agents=50, per_agent=60, gap=0.005)


@pytest.mark.slow
def test_reload_under_load_at_the_issues_scale(tmp_path, run):
    """500 agents at 2 000 results/s in total (4/s each, for 10 s) through 20 reloads."""
    _reload_under_load(tmp_path, run, n_agents=500, per_agent=40, gap=0.25)


def test_reload_route_is_post_only_and_cli_prints_outcome(tmp_path, pki, run):
    spec = cluster(tmp_path, pki, AGENTS[:1])

    async def main():
        master = await spec.start("master")
        try:
            port = master.status_port
            data_dir = spec.directory / "master"
            # An action: refused without a token, taken with the node's local one.
            code, body, headers = await asyncio.to_thread(post, port)
            assert code == 403 and b"reload.token" in body
            assert master.reloader.last is None
            token = (data_dir / "reload.token").read_text().strip()
            assert (data_dir / "reload.token").stat().st_mode & 0o777 == 0o600
            code, body, headers = await asyncio.to_thread(post, port, token=token)
            assert code == 200 and b'"result":"ok"' in body
            code, body = await asyncio.to_thread(http_get, port, "/v1/actions/reload")
            assert code == 405
            code, _, headers = await asyncio.to_thread(post, port, "/v1/status")
            assert code == 405 and headers["Allow"] == "GET, HEAD"
            code, body = await asyncio.to_thread(http_get, port, "/v1/reload")
            assert code == 200 and b'"phase":"idle"' in body
            runner = CliRunner()
            url = f"http://127.0.0.1:{port}"
            reload_args = ["reload", "--url", url, "--data-dir", str(data_dir)]
            result = await asyncio.to_thread(runner.invoke, cli_main, reload_args)
            assert result.exit_code == 0, result.output
            assert "reload applied" in result.output and "nothing changed" in result.output
            path = spec.directory / "master.toml"
            path.write_text(path.read_text().replace("[[zones]]", "[[zones]\n", 1))
            result = await asyncio.to_thread(runner.invoke, cli_main, reload_args)
            assert result.exit_code == 1
            assert "reload refused" in result.output and f"{path}:" in result.output
            result = await asyncio.to_thread(runner.invoke, cli_main,
                                             ["reload", "--url", "http://127.0.0.1:1"])
            assert result.exit_code == 2 and "cannot reach" in result.output
        finally:
            await master.stop()

    run(main())


def test_concurrent_reload_is_busy(tmp_path, pki, run):
    spec = cluster(tmp_path, pki, AGENTS[:1])

    async def main():
        master = await spec.start("master")
        try:
            first, second = await asyncio.gather(master.reload("a"), master.reload("b"))
            assert {first.result, second.result} == {"ok", "busy"}
            assert master.reloader.counts.get(("busy",)) == 1
            assert master.reloader.last.result == "ok"
        finally:
            await master.stop()

    run(main())


def test_learned_hosts_are_carried_over_and_still_saved(tmp_path, pki, run):
    spec = cluster(tmp_path, pki, AGENTS[:2])

    async def main():
        from router.app import RouterService
        from router.config import load_config

        path = rewrite(spec)
        path.write_text(path.read_text() + '[objects]\nunknown = "learn"\n')
        master = RouterService(load_config(path))
        await master.start()
        try:
            agent = await connect(spec, pki, "agent0")
            agent.send("event::CheckResult", check_result("webserver", None, "OK"))
            await wait_until(lambda: master.node.objects.lookup("webserver") == "agent0",
                             what="learned")
            spec.zones.append(("agent7", ["agent7"], "master"))
            rewrite(spec)
            path.write_text(path.read_text() + '[objects]\nunknown = "learn"\n')
            record = await master.reload("test")
            assert record.result == "ok", record
            assert master.node.objects.lookup("webserver") == "agent0"
            assert master.node.objects.learned == 1
            assert master.learned is not None and master.learned.objects is master.node.objects
            await master.learned.sync()
            saved = (tmp_path / "master").rglob("*learned*")
            assert any("webserver" in p.read_text() for p in saved if p.is_file())
            await agent.close()
        finally:
            await master.stop()

    run(main())


def test_reload_past_its_deadline_fails_and_the_machine_is_idle_again(tmp_path, pki, run):
    spec = cluster(tmp_path, pki, AGENTS[:1])

    async def main():
        master = await spec.start("master")
        try:
            async def stuck(config, diff):
                await asyncio.sleep(30)

            master.reload_hooks.register("stuck", stuck)
            master.reloader.deadline = 0.5
            record = await master.reload("test")
            assert record.result == "failed" and "within 0.5 s" in record.error
            assert master.reloader.phase.value == "idle"
            master.reload_hooks.unregister("stuck")
            assert (await master.reload("test")).result == "ok"
            text = await metrics_text(master)
            assert 'router_reloads_total{result="failed"} 1.0' in text
        finally:
            await master.stop()

    run(main())


def test_start_and_reload_warn_about_a_zone_of_three_endpoints(tmp_path, pki, run, caplog):
    spec = cluster(tmp_path, pki, agents=["agent1"])
    spec.zones = [("master", ["master"], None), ("sat", ["s1", "s2", "s3"], "master")]
    caplog.set_level(logging.WARNING)

    async def main():
        master = await spec.start("master")
        try:
            assert "configuration: zone 'sat' has 3 endpoints (s1, s2, s3)" in caplog.text
            spec.zones = [("master", ["master"], None), ("sat", ["s1", "s2"], "master"),
                          ("big", ["b1", "b2", "b3", "b4"], "master")]
            rewrite(spec)
            caplog.clear()
            record = await master.reload("test")
            assert record.result == "ok", record
            assert "reload (test): zone 'big' has 4 endpoints" in caplog.text
            assert "zone 'sat'" not in caplog.text
        finally:
            await master.stop()

    run(main())
