"""Helpers for tests that run real router nodes and scripted TLS peers on 127.0.0.1.

- ``ClusterSpec`` writes one TOML config per node (ports picked up front, certificates from
  ``tests.pkiutil``) and starts ``RouterService``\\ s in the running loop.
- ``FakePeer`` is a scripted cluster peer: it opens a mutual-TLS connection with its own
  certificate, sends netstring JSON-RPC, and collects what it receives. Tests use it to play
  an agent, a parent, or a misbehaving client.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from router.transport import tls
from router.app import RouterService
from router.config import parse_config
from router.protocol import jsonrpc, netstring

#: Scale every wait in these tests (slow CI machines): ROUTER_TEST_TIME_SCALE=3.
TIME_SCALE = float(__import__("os").environ.get("ROUTER_TEST_TIME_SCALE", "1"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class NodeSpec:
    name: str
    listen: bool = True
    port: int = 0
    extra: str = ""


@dataclass
class ClusterSpec:
    """Zones and endpoints shared by every node's config.

    ``zones``: list of (zone name, [endpoint names], parent or None).
    ``addresses``: endpoint name -> whether others get its address (they dial it).
    """

    directory: Path
    pki: Any
    zones: list[tuple[str, list[str], str | None]]
    dialled: set[str] = field(default_factory=set)
    ports: dict[str, int] = field(default_factory=dict)
    timeouts: str = ""
    limits: str = ""
    #: node name -> ``[tls] library`` (default: the config's default)
    libraries: dict[str, str] = field(default_factory=dict)

    def port(self, name: str) -> int:
        if name not in self.ports:
            self.ports[name] = free_port()
        return self.ports[name]

    def toml(self, name: str, *, listen: bool = True, extra: str = "",
             node_extra: str = "") -> str:
        lines = [
            "log_level = \"debug\"",
            f"listen = \"127.0.0.1:{self.port(name)}\"" if listen else "listen = \"none\"",
            "status_listen = \"127.0.0.1:0\"",
            extra,
            "[node]",
            f"name = \"{name}\"",
            f"data_dir = \"{self.directory / name}\"",
            node_extra,
            "[tls]",
            f"ca = \"{self.pki.ca_cert}\"",
            f"cert = \"{self.pki.cert(name)}\"",
            f"key = \"{self.pki.key(name)}\"",
        ]
        if name in self.libraries:
            lines.append(f"library = \"{self.libraries[name]}\"")
        if self.timeouts:
            lines += ["[timeouts]", self.timeouts]
        if self.limits:
            lines += ["[limits]", self.limits]
        every = sorted({e for _, eps, _ in self.zones for e in eps})
        for zone, eps, parent in self.zones:
            lines += ["[[zones]]", f"name = \"{zone}\"",
                      "endpoints = [" + ", ".join(f'"{e}"' for e in eps) + "]"]
            if parent:
                lines.append(f"parent = \"{parent}\"")
        for ep in every:
            lines += ["[[endpoints]]", f"name = \"{ep}\""]
            if ep in self.dialled and ep != name:
                lines.append(f"addresses = [\"127.0.0.1:{self.port(ep)}\"]")
        return "\n".join(lines) + "\n"

    def config(self, name: str, *, listen: bool = True, extra: str = "", node_extra: str = ""):
        (self.directory / name).mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{name}.toml"
        path.write_text(self.toml(name, listen=listen, extra=extra, node_extra=node_extra))
        return parse_config(path.read_text(), str(path))

    async def start(self, name: str, *, listen: bool = True, extra: str = "",
                    node_extra: str = "") -> RouterService:
        service = RouterService(self.config(name, listen=listen, extra=extra,
                                            node_extra=node_extra))
        await service.start()
        return service


def http_get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def status_json(service: RouterService, path: str = "/v1/status") -> dict[str, Any]:
    code, body = await asyncio.to_thread(http_get, service.status_port, path)
    assert code == 200, body
    return orjson.loads(body)


async def metrics_text(service: RouterService) -> str:
    code, body = await asyncio.to_thread(http_get, service.status_port, "/metrics")
    assert code == 200
    return body.decode()


async def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02,
                     what: str = "condition") -> None:
    deadline = time.monotonic() + timeout * TIME_SCALE
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)


def client_ssl_context(pki: Any, name: str | None, *, ca: Path | None = None) -> ssl.SSLContext:
    """Context for a scripted peer; ``name`` None means no client certificate."""
    if name is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(str(ca or pki.ca_cert))
        return ctx
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(str(ca or pki.ca_cert))
    ctx.load_cert_chain(str(pki.cert(name)), str(pki.key(name)))
    return ctx


class FakePeer:
    """A scripted cluster peer over real TLS."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = netstring.NetstringDecoder(-1)
        self.received: list[dict[str, Any]] = []
        self.closed = False
        self._task = asyncio.ensure_future(self._read_loop())

    @classmethod
    async def connect(cls, port: int, pki: Any, name: str | None, *,
                      server_name: str = "router", hello: bool = True,
                      ca: Path | None = None) -> FakePeer:
        ctx = client_ssl_context(pki, name, ca=ca)
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname=server_name), 10)
        peer = cls(reader, writer)
        if hello:
            peer.send("icinga::Hello", {"capabilities": 1, "version": 21306})
        return peer

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                for payload in self.decoder.feed(data):
                    self.received.append(orjson.loads(payload))
        except (ConnectionError, ssl.SSLError, OSError):
            pass
        finally:
            self.closed = True

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    def send(self, method: str, params: dict[str, Any] | None, **top: Any) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        message.update(top)
        self.writer.write(netstring.encode(orjson.dumps(message)))

    def messages(self, method: str) -> list[dict[str, Any]]:
        return [m for m in self.received if m.get("method") == method]

    async def wait_closed(self, timeout: float = 10.0) -> None:
        await wait_until(lambda: self.closed, timeout, what="connection closed by the node")

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(Exception):
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 2)


def check_result(host: str, service: str | None, output: str, *, state: int = 0,
                 source: str | None = None, now: float | None = None) -> dict[str, Any]:
    """``params`` of an agent's event::CheckResult (golden message 4 shape)."""
    now = time.time() if now is None else now
    params: dict[str, Any] = {
        "cr": {"active": True, "check_source": source or host, "command": ["/bin/true"],
               "execution_end": now, "execution_start": now - 0.01, "exit_status": state,
               "output": output, "performance_data": ["time=0.01s;;;0"],
               "previous_hard_state": 0, "schedule_end": now, "schedule_start": now - 0.02,
               "scheduling_source": source or host, "state": state, "ttl": 0,
               "type": "CheckResult",
               "vars_after": {"attempt": 1, "reachable": True, "state": state,
                              "state_type": 1},
               "vars_before": None},
        "host": host}
    if service is not None:
        params["service"] = service
    return params


def peer_tls_context(pki: Any, name: str) -> ssl.SSLContext:
    return tls.client_context(pki.ca_cert, pki.cert(name), pki.key(name))


__all__ = ["ClusterSpec", "FakePeer", "check_result", "free_port", "status_json",
           "metrics_text", "wait_until", "jsonrpc"]


def inbound_count(node) -> int:
    """Connections the node holds, with those accepted and still waiting in the
    listener's lobby for their first TLS record (router.transport.lobby)."""
    lobby = node.listener.lobby if node.listener is not None else None
    return len(node.all_connections) + (len(lobby) if lobby is not None else 0)
