"""The web console's server side: the document builder (pure parts without a node, then a
real Node with endpoint states), the static files from the installed package, and the
routes on a real node's status listener: 403 for every action without the admin token,
the actions with it (router.node.console, router.node.consoleweb, router.ops.webfiles)."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request

import orjson
import pytest
from click.testing import CliRunner

from router.cli import main as cli_main
from router.config import parse_config
from router.errors import ConfigError
from router.node import Node
from router.node.stats import MSGS_IN
from router.node.console import (
    ENDPOINT_COLUMNS,
    Caches,
    Sampler,
    Totals,
    console_document,
    find_problems,
    zone_health,
)
from router.node.consoleweb import ADMIN_TOKEN_ENV
from router.ops.webfiles import load_console_files
from tests.nodeutil import ClusterSpec, metrics_text, wait_until
from tests.pkiutil import make_test_pki

TOKEN = "a-long-enough-admin-token"
ACTIONS = ("/v1/console/actions/sign", "/v1/console/actions/reload")


# --------------------------------------------------------------------------- pure parts


def test_zone_health():
    assert zone_health(["a", "b"], {"a", "b"}, "me") == "all"
    assert zone_health(["a", "b"], {"a"}, "me") == "some"
    assert zone_health(["a", "b"], set(), "me") == "none"
    assert zone_health(["me"], set(), "me") == "self"
    assert zone_health(["me", "peer"], {"peer"}, "me") == "all"     # HA pair: the peer counts
    assert zone_health(["me", "peer"], set(), "me") == "none"
    assert zone_health([], set(), "me") == "empty"                 # a global zone


def test_sampler_turns_counters_into_rates_and_serves_only_new_samples():
    sampler = Sampler(maxlen=3)
    assert sampler.add(100.0, Totals(msgs_in=10, bytes_in=1000)) is None   # first: no rate
    sample = sampler.add(102.0, Totals(msgs_in=30, msgs_out=4, bytes_in=5000, connected=3))
    assert sample == [102.0, 10.0, 2.0, 2000.0, 0.0, 3, 0]
    # a counter that went backwards (a fresh node) is a rate of 0, never negative
    assert sampler.add(104.0, Totals(msgs_in=5))[1] == 0.0
    assert sampler.add(104.0, Totals(msgs_in=50)) is None   # no time passed: no sample
    sampler.add(106.0, Totals(msgs_in=25))
    sampler.add(108.0, Totals(msgs_in=45))
    assert [s[0] for s in sampler.since(None)] == [104.0, 106.0, 108.0]    # ring of 3
    assert [s[0] for s in sampler.since(105.0)] == [106.0, 108.0]
    assert sampler.since(108.0) == []


def _zone(name, health, up=0, total=1, **extra):
    return {"name": name, "health": health, "up": up, "total": total, "log_lag": 0.0,
            "replay_lag": None, **extra}


def test_problems_first():
    now = 1_000_000.0
    zones = [_zone("master", "self", total=0), _zone("a1", "none"),
             _zone("sat", "some", up=1, total=2),
             _zone("a2", "all", up=1, log_lag=0.0, replay_lag=400.0),
             _zone("a3", "all", up=1)]
    reload = {"last": {"trigger": "SIGHUP", "result": "refused", "error": "bad toml",
                       "finished": now - 10}, "last_ok": now - 3600}
    problems = find_problems(zones, own_expiry=now + 10 * 86400,
                             peer_expiry={"a2": now + 3 * 86400, "a3": now + 90 * 86400},
                             reload_status=reload, now=now)
    kinds = [(p["kind"], p.get("zone") or p.get("endpoint")) for p in problems["items"]]
    assert ("zone_down", "a1") in kinds
    assert ("zone_degraded", "sat") in kinds
    assert ("zone_lagging", "a2") in kinds
    assert ("cert_expiring", "a2") in kinds and ("cert_expiring", None) in kinds
    assert ("reload_error", None) in kinds
    assert not any(z == "a3" for _, z in kinds)
    # critical first
    severities = [p["severity"] for p in problems["items"]]
    assert severities == sorted(severities, key=lambda s: s != "critical")
    assert problems["counts"] == {"zone_down": 1, "zone_degraded": 1, "zone_lagging": 1,
                                  "cert_expiring": 2, "reload_error": 1}
    # writers (the status document's writers section): a lagging one is a problem
    lagging = find_problems([], None, {}, None, now, writers={
        "graphite": {"lag_seconds": 300.0, "connected": False},
        "influx": {"lag_seconds": 2.0, "connected": True}})
    assert lagging["items"] == [{"kind": "writer_lagging", "severity": "warning",
                                 "text": "writer graphite lags 5 min",
                                 "writer": "graphite"}]
    # a later successful reload clears the reload error
    reload["last_ok"] = now
    reload["last"]["finished"] = now - 10
    again = find_problems([], None, {}, reload, now)
    assert again == {"items": [], "counts": {}}


def test_problems_are_capped_per_kind_but_counted():
    zones = [_zone(f"agent{i}", "none") for i in range(500)]
    problems = find_problems(zones, None, {}, None, time.time(), limit=20)
    assert len(problems["items"]) == 20
    assert problems["counts"] == {"zone_down": 500}


def test_static_files_come_from_the_package():
    files = load_console_files()
    assert {"index.html", "console.css", "console.js", "favicon.svg"} <= set(files)
    page = files["index.html"].body.decode()
    # nothing fetched from elsewhere: every reference is to our own /console/ files
    assert "http://" not in page.replace("http://www.w3.org", "")
    assert "https://" not in page
    assert '<script src="console/console.js"' in page and "<script>" not in page
    assert files["console.js"].content_type.startswith("text/javascript")
    assert "prefers-color-scheme: dark" in files["console.css"].body.decode()


# --------------------------------------------------------------------------- a real Node


@pytest.fixture
def pki(tmp_path):
    return make_test_pki(tmp_path / "pki", ["master", "agent1", "agent2"])


def _config(tmp_path, pki, agents: int, extra: str = ""):
    lines = [f'[node]\nname = "master"\ndata_dir = "{tmp_path / "data"}"',
             f'[tls]\nca = "{pki.ca_cert}"\ncert = "{pki.cert("master")}"\n'
             f'key = "{pki.key("master")}"', extra,
             '[[zones]]\nname = "master"\nendpoints = ["master"]',
             '[[endpoints]]\nname = "master"']
    for i in range(agents):
        lines.append(f'[[zones]]\nname = "agent{i}"\nendpoints = ["agent{i}"]\n'
                     f'parent = "master"\n[[endpoints]]\nname = "agent{i}"')
    (tmp_path / "data").mkdir(exist_ok=True)
    return parse_config("\n".join(lines), str(tmp_path / "router.toml"))


def test_document_from_a_node_with_endpoint_states(tmp_path, pki):
    async def main():
        node = Node(_config(tmp_path, pki, 50), asyncio.get_running_loop())
        loop_now = node.loop.time()
        for i in range(0, 50, 2):       # every second agent has traffic and refusals
            stats = node.endpoint_stats(f"agent{i}")
            stats.received["event::CheckResult"] = 10 + i
            node.traffic.msgs_in += 10 + i      # the node counts its totals beside
            stats.rates.add(MSGS_IN, loop_now, 5)
            stats.bytes_received = 1000 * i
            stats.refused[("event::CheckResult", "not_allowed")] = 1
            stats.icinga_version = 21306
        node.handshake_failures.inc(("certificate_unknown",), 3)
        sampler = Sampler()
        caches = Caches()
        doc = console_document(node, caches=caches, sampler=sampler, admin=False)
        assert doc["endpoint_columns"] == ENDPOINT_COLUMNS
        assert len(doc["endpoints"]) == 51       # the node itself is a row too
        col = {name: i for i, name in enumerate(ENDPOINT_COLUMNS)}
        by_name = {row[col["name"]]: row for row in doc["endpoints"]}
        assert by_name["agent4"][col["msgs_in"]] == 14
        assert by_name["agent4"][col["icinga_version"]] == 21306
        assert by_name["agent4"][col["connected"]] == 0
        assert by_name["master"][col["connected"]] == 1
        assert by_name["agent1"][col["msgs_in"]] == 0
        assert doc["refusals"] == {"not_allowed": 25}
        assert doc["handshake_failures"] == {"certificate_unknown": 3}
        zones = {z["name"]: z for z in doc["zones"]}
        assert zones["master"]["health"] == "self"
        assert zones["agent7"]["health"] == "none" and zones["agent7"]["parent"] == "master"
        assert doc["problems"]["counts"]["zone_down"] == 50
        assert doc["totals"]["configured"] == 50 and doc["totals"]["connected"] == 0
        assert doc["totals"]["msgs_in"] == sum(10 + i for i in range(0, 50, 2))
        assert doc["certificates"] == {"signer": False, "pending": 0, "requests": []}
        assert doc["node"]["cert_expiry"] > time.time() + 86400
        assert doc["checks"] is None and doc["admin"] is False
        # the document is JSON as the route sends it
        assert orjson.loads(orjson.dumps(doc))["version"] == 1
        # without the endpoint rows (a poller that only wants the picture)
        lite = console_document(node, caches=caches, include_endpoints=False)
        assert lite["endpoints"] == [] and len(lite["zones"]) == 51
        node.stop_housekeeping()

    asyncio.run(main())


def test_admin_token_config(tmp_path, pki):
    config = _config(tmp_path, pki, 1, f'[status]\nadmin_token = "{TOKEN}"')
    assert config.status.admin_token == TOKEN
    assert _config(tmp_path, pki, 1).status.admin_token == ""
    with pytest.raises(ConfigError, match="at least 16 characters"):
        _config(tmp_path, pki, 1, '[status]\nadmin_token = "short"')
    with pytest.raises(ConfigError, match="unknown key 'token'"):
        _config(tmp_path, pki, 1, '[status]\ntoken = "x"')


# --------------------------------------------------------------------------- over HTTP


def post(port: int, path: str, token: str | None = None, scheme: str = "Bearer"
         ) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=b"",
                                     method="POST")
    if token is not None:
        request.add_header("Authorization", f"{scheme} {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def get(port: int, path: str, headers: dict | None = None):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def metric(text: str, action: str, result: str) -> float:
    prefix = f'router_console_actions_total{{action="{action}",result="{result}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    raise AssertionError(f"{prefix!r} not in /metrics")


def test_console_routes_read_only_without_a_token(tmp_path, pki, run, monkeypatch):
    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("agent1", ["agent1"], "master")], dialled={"master"})

    async def main():
        master = await spec.start("master")
        agent = await spec.start("agent1", listen=False)
        port = master.status_port
        try:
            await wait_until(lambda: "agent1" in master.node.connections, what="agent1")
            code, headers, body = await asyncio.to_thread(get, port, "/")
            assert code == 200 and headers["Content-Type"].startswith("text/html")
            assert "script-src 'self'" in headers["Content-Security-Policy"]
            assert headers["Cache-Control"] == "no-cache" and b"console.js" in body
            code, headers, body = await asyncio.to_thread(get, port, "/console/console.js")
            assert code == 200 and "max-age" in headers["Cache-Control"]
            etag = headers["ETag"]
            code, headers, body = await asyncio.to_thread(
                get, port, "/console/console.js", {"If-None-Match": etag})
            assert code == 304 and body == b""
            code, _, _ = await asyncio.to_thread(get, port, "/console/nope.js")
            assert code == 404
            code, _, body = await asyncio.to_thread(get, port, "/v1/console")
            doc = orjson.loads(body)
            assert code == 200 and doc["admin"] is False and doc["node"]["name"] == "master"
            col = doc["endpoint_columns"].index("connected")
            direction = doc["endpoint_columns"].index("direction")
            [agent_row] = [r for r in doc["endpoints"] if r[0] == "agent1"]
            assert agent_row[col] == 1 and agent_row[direction] == "accepted"
            assert doc["endpoint_columns"][doc["endpoint_columns"].index("cert_expiry")]
            assert agent_row[doc["endpoint_columns"].index("cert_expiry")] > time.time()
            # samples: only those after ?since
            await wait_until(lambda: len(master.console.sampler.samples) >= 1, timeout=10,
                             what="a sample")
            newest = master.console.sampler.samples[-1][0]
            code, _, body = await asyncio.to_thread(get, port, f"/v1/console?since={newest}")
            assert orjson.loads(body)["samples"] == []
            code, _, _ = await asyncio.to_thread(get, port, "/v1/console?since=x")
            assert code == 400
            # viewers polling together share one build (at most one a second)
            first = orjson.loads(master.console.document({}, {})[2])
            again = orjson.loads(master.console.document({"since": str(newest)}, {})[2])
            assert first["generated"] == again["generated"] and again["samples"] == []
            lite = orjson.loads(master.console.document({"endpoints": "0"}, {})[2])
            assert lite["endpoints"] == [] and first["endpoints"]
            # every action: 403 without a configured token, whatever the client sends
            for path in ACTIONS:
                for token in (None, "anything-at-all-here", ""):
                    code, body = await asyncio.to_thread(post, port, path, token)
                    assert code == 403, (path, token, body)
                    assert "no admin token is configured" in body["error"]
                code, _, _ = await asyncio.to_thread(get, port, path)
                assert code == 405
            # the operator's reload route too: it takes only the node's local token
            # (DATA_DIR/reload.token, what `router reload` reads), never no token
            for token in (None, "anything-at-all-here", ""):
                code, body = await asyncio.to_thread(post, port, "/v1/actions/reload", token)
                assert code == 403 and "reload.token" in body["error"], (token, body)
            text = await metrics_text(master)
            assert metric(text, "sign", "forbidden") == 3
            assert metric(text, "reload", "forbidden") == 6
            assert metric(text, "reload", "ok") == 0
            assert master.reloader.last is None            # nothing was reloaded
            local = (spec.directory / "master" / "reload.token").read_text().strip()
            code, body = await asyncio.to_thread(post, port, "/v1/actions/reload", local)
            assert code == 200 and body["result"] == "ok"
            code, body = await asyncio.to_thread(post, port, ACTIONS[1], local)
            assert code == 403                       # the console's actions: admin only
        finally:
            await agent.stop()
            await master.stop()

    run(main())


def test_console_actions_with_the_admin_token(tmp_path, pki, run, monkeypatch):
    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None)])

    async def main():
        master = await spec.start("master", extra=f'[status]\nadmin_token = "{TOKEN}"')
        port = master.status_port
        try:
            code, _, body = await asyncio.to_thread(get, port, "/v1/console")
            assert orjson.loads(body)["admin"] is True
            for path in ACTIONS:
                for token, scheme in ((None, "Bearer"), ("wrong-token-of-some-length",
                                                         "Bearer"), (TOKEN, "Basic"),
                                      (TOKEN[:-1], "Bearer"), (TOKEN + "x", "Bearer")):
                    code, body = await asyncio.to_thread(post, port, path, token, scheme)
                    assert code == 403, (path, token, scheme, body)
            assert master.reloader.last is None
            # the older reload route (router reload) needs the token too once one is set
            code, body = await asyncio.to_thread(post, port, "/v1/actions/reload")
            assert code == 403 and master.reloader.last is None
            code, body = await asyncio.to_thread(post, port, "/v1/actions/reload", TOKEN)
            assert code == 200 and body["trigger"] == "api"
            result = await asyncio.to_thread(
                CliRunner().invoke, cli_main,
                ["reload", "--url", f"http://127.0.0.1:{port}", "--token", TOKEN])
            assert result.exit_code == 0 and "reload applied" in result.output, result.output
            result = await asyncio.to_thread(
                CliRunner().invoke, cli_main, ["reload", "--url", f"http://127.0.0.1:{port}"])
            assert result.exit_code == 1 and "403" in result.output, result.output
            code, body = await asyncio.to_thread(post, port, "/v1/console/actions/reload", TOKEN)
            assert code == 200 and body["result"] == "ok" and body["trigger"] == "console"
            code, body = await asyncio.to_thread(post, port, "/v1/console/actions/sign", TOKEN)
            assert code == 400 and "fingerprint" in body["error"]
            code, body = await asyncio.to_thread(
                post, port, "/v1/console/actions/sign?fingerprint=" + "ab" * 32, TOKEN)
            assert code == 404
            text = await metrics_text(master)
            assert metric(text, "reload", "ok") == 1
            assert metric(text, "reload", "forbidden") == 7
            assert metric(text, "sign", "forbidden") == 5
            assert metric(text, "sign", "invalid") == 1
            assert metric(text, "sign", "not_found") == 1
            # a reload takes a new token at once (the node reads it on every request)
            path = spec.directory / "master.toml"
            new_token = "a-brand-new-admin-token"
            path.write_text(path.read_text().replace(TOKEN, new_token))
            code, body = await asyncio.to_thread(post, port, "/v1/console/actions/reload", TOKEN)
            assert code == 200 and body["result"] == "ok", body
            assert "status" in body["changes"]["other"]
            code, _ = await asyncio.to_thread(post, port, "/v1/console/actions/reload", TOKEN)
            assert code == 403
            code, _ = await asyncio.to_thread(post, port, "/v1/console/actions/reload",
                                              new_token)
            assert code == 200
        finally:
            await master.stop()

    run(main())


def test_admin_token_from_the_environment(tmp_path, pki, run, monkeypatch):
    monkeypatch.setenv(ADMIN_TOKEN_ENV, TOKEN)
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None)])

    async def main():
        master = await spec.start("master")
        port = master.status_port
        try:
            code, body = await asyncio.to_thread(post, port, "/v1/console/actions/reload")
            assert code == 403
            code, body = await asyncio.to_thread(post, port, "/v1/console/actions/reload", TOKEN)
            assert code == 200, body
        finally:
            await master.stop()

    run(main())


def test_the_console_files_are_package_data():
    """The console files are listed as package data for the wheel (pyproject.toml);
    load_console_files finds them through importlib.resources, as in an installed
    package (test_static_files_come_from_the_package)."""
    import tomllib
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    data = tomllib.loads((root / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["package-data"]["router"]
    assert "ops/console/*" in patterns
    for name in ("index.html", "console.css", "console.js", "favicon.svg"):
        assert (root / "router" / "ops" / "console" / name).is_file()


def test_replay_backlog_and_log_lag_of_an_absent_parent(tmp_path, run):
    """A satellite whose parent is away keeps its agent's results in the replay log: the
    console shows the parent zone down, its backlog growing (read in a worker thread by
    the sampler) and its lag, and the problems banner names it."""
    pki = make_test_pki(tmp_path / "pki", ["master", "sat1", "agent1"])
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("sat", ["sat1"], "master"),
                                       ("agent1", ["agent1"], "sat")])

    async def main():
        from tests.nodeutil import FakePeer, check_result
        sat = await spec.start("sat1")
        agent = None
        try:
            agent = await FakePeer.connect(spec.port("sat1"), pki, "agent1",
                                           server_name="sat1")
            await wait_until(lambda: "agent1" in sat.node.connected_names, what="agent1")
            for i in range(20):
                agent.send("event::CheckResult", check_result("agent1", "disk", f"r{i}"),
                           ts=time.time())

            async def master_zone():
                _, _, body = await asyncio.to_thread(get, sat.status_port, "/v1/console")
                doc = orjson.loads(body)
                return {z["name"]: z for z in doc["zones"]}["master"], doc

            async def backlog():
                zone, _ = await master_zone()
                return (zone["replay_records"] or 0) >= 20

            await wait_until(backlog, timeout=20, interval=0.5, what="the replay backlog")
            zone, doc = await master_zone()
            assert zone["health"] == "none" and zone["relation"] == "parent"
            assert zone["replay_bytes"] > 0 and zone["replay_lag"] >= 0
            assert {"kind": "zone_down", "severity": "critical",
                    "text": "zone master is disconnected (1 endpoint)",
                    "zone": "master"} in doc["problems"]["items"]
            assert sat.console.caches.replay_in_background
        finally:
            if agent is not None:
                await agent.close()
            await sat.stop()

    run(main())


def test_router_serve_keeps_the_admin_token_of_its_config_file(tmp_path, pki):
    """`router serve --config` builds its configuration through quickstart_config: the
    [status] table (the admin token) must survive it, as the writers do."""
    from router.config import quickstart_config

    cfg = _config(tmp_path, pki, 1, '[status]\nadmin_token = "0123456789abcdef0123"')
    assert quickstart_config(base=cfg).status.admin_token == "0123456789abcdef0123"
