"""The operator HTTP surface after a review (2026-12-07); each test failed on the code
before its fix.

- ``ROUTER_ADMIN_TOKEN`` had no minimum length (the configuration's ``admin_token``
  does): a one-letter token opened the console's actions.
- Clients that asked for a large answer and never read it held their slots until the
  stall timer: a few of them locked every scrape out (503), round after round.
- The ``cluster`` health check counted endpoints Icinga does not (agents below a
  satellite, which a master never connects to) and went CRITICAL.
"""
from __future__ import annotations

import asyncio
import socket
import urllib.error
import urllib.request

import orjson

from router.node.consoleweb import ADMIN_TOKEN_ENV
from router.ops import health
from router.ops.http import StatusServer, json_response
from tests.nodeutil import ClusterSpec, FakePeer, status_json, wait_until
from tests.pkiutil import make_test_pki


def post(port: int, path: str, token: str) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=b"",
                                     method="POST")
    request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def test_short_admin_token_from_the_environment_is_not_accepted(tmp_path, run, monkeypatch):
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "a")
    pki = make_test_pki(tmp_path / "pki", ["master"])
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None)])

    async def main():
        try:
            master = await spec.start("master")
        except Exception:
            return          # refusing to start with a guessable token is a fine answer
        try:
            code, body = await asyncio.to_thread(post, master.status_port,
                                                 "/v1/console/actions/reload", "a")
            assert code == 403, (f"a 1-character admin token from {ADMIN_TOKEN_ENV} "
                                 f"opened the console's reload action: {code} {body}")
        finally:
            await master.stop()

    run(main())


BIG = b"x" * (32 * 1024 * 1024)


async def _read_status(reader: asyncio.StreamReader) -> int:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return int(head.split(b" ", 2)[1])


def test_clients_not_reading_answers_do_not_lock_out_scrapes(run) -> None:
    async def main():
        server = StatusServer({"/big": lambda q: (200, "text/plain", BIG),
                               "/v1/status": lambda q: json_response({"ok": True})},
                              header_timeout=5.0, max_clients=2)
        await server.start("127.0.0.1", 0)
        hogs = []
        try:
            for _ in range(2):
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.connect(("127.0.0.1", server.port))
                sock.setblocking(False)
                r, w = await asyncio.open_connection(sock=sock)
                w.write(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")   # and never read
                hogs.append((r, w))
            # both hogs' answers are stuck in the transport (writing paused)
            for _ in range(300):
                if (len(server._clients) == 2
                        and all(c._stall_timer is not None for c in server._clients)):
                    break
                await asyncio.sleep(0.01)
            assert all(c._stall_timer is not None for c in server._clients)
            await asyncio.sleep(0.3)              # well past EVICT_AFTER (0.1 s)

            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /v1/status HTTP/1.1\r\nHost: t\r\n\r\n")
            code = await _read_status(reader)
            writer.close()
            assert code == 200, (f"a scrape got {code} while both slots are held by "
                                 "clients that do not read their answers")
        finally:
            for _, w in hogs:
                w.transport.abort()
            await server.close()

    run(main(), 30)


def test_cluster_check_ignores_non_adjacent_endpoints(tmp_path, run) -> None:
    pki = make_test_pki(tmp_path / "pki", ["master", "sat1", "agent1"])
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("sat", ["sat1"], "master"),
                                       ("agent1", ["agent1"], "sat")])

    async def main():
        master = await spec.start("master")
        sat = None
        try:
            sat = await FakePeer.connect(spec.port("master"), pki, "sat1",
                                         server_name="master")
            await wait_until(lambda: "sat1" in master.node.connected_names, what="sat1")
            doc = await status_json(master)
            rel = {e["name"]: e["relation"] for e in doc["endpoints"]}
            assert rel["agent1"] == "other"      # grandchild: the master never dials it
            out = health.cluster(doc)
            perf = {p.label: p.value for p in out.perfdata}
            # What Icinga 2.13's master prints for this tree: sat1 is its only adjacent
            # endpoint, and it is connected.
            assert perf["api_num_endpoints"] == 1, out.plugin_text()
            assert out.state == health.OK, out.plugin_text()
            assert out.output.startswith("Icinga 2 Cluster OK: 1 endpoints are connected.")
        finally:
            if sat is not None:
                await sat.close()
            await master.stop()

    run(main())
