"""Run the router under test next to real Icinga 2 daemons.

:class:`RouterNode` runs one :class:`router.app.RouterService` in a background thread with
its own event loop (uvloop, as ``router serve`` does). The test's own thread stays free for
the blocking Icinga harness, which must start the daemons from a long-lived thread
(``PR_SET_PDEATHSIG`` is tied to the forking thread, see ``icinga.py``). Everything the
test asks the router goes over its status listener (plain HTTP on 127.0.0.1), so no router
state is touched from a foreign thread.

The configuration uses the harness's zone/endpoint dictionaries, so one topology
description can feed the Icinga configs and ours::

    zones = [{"name": "master", "endpoints": ["master"]},
             {"name": "agent1", "endpoints": ["agent1"], "parent": "master"}]
    router = RouterNode(tmp_path / "router", "master", zones=zones,
                        endpoints=[{"name": "master"}, {"name": "agent1"}],
                        cert=cert, key=key, ca=factory.ca_crt)
    router.start()
    ...
    router.stop()

An endpoint with ``port`` (and optionally ``host``) becomes ``addresses = ["host:port"]``:
the router dials it. The router's log records (``router.*`` loggers, debug level, only the
records of this router's thread) go to ``<dir>/router.log``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import uvloop

from router.app import RouterService
from router.config import parse_config

__all__ = ["RouterNode", "parse_metrics", "metric_value", "wait_for"]

T = TypeVar("T")

_LOG_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s"


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def _toml_list(values: list[str]) -> str:
    return "[" + ", ".join(_toml_str(v) for v in values) + "]"


class _ThreadFilter(logging.Filter):
    def __init__(self, thread_name: str) -> None:
        super().__init__()
        self.thread_name = thread_name

    def filter(self, record: logging.LogRecord) -> bool:
        return record.threadName == self.thread_name


class RouterNode:
    """The router under test in a background thread; blocking control from the test.

    Args:
        base_dir: the node's directory (config ``router.toml``, ``data/``, ``router.log``).
        name: our endpoint name (the certificate's CN).
        zones, endpoints: the topology, in the harness's dict format (see module doc).
        cert, key, ca: PEM files; all nodes of a test share the factory's CA.
        listen: cluster listener; port 0 picks a free port (read :attr:`listen_port`
            after :meth:`start`), ``None`` for an outbound-only node.
        timeouts: ``[timeouts]`` keys (reconnect_max defaults to 2 s here, so a dial
            that raced the peer's start-up is retried quickly).
        extra_toml: more top-level keys (placed before the first table).
        node_toml: more ``[node]`` keys (e.g. ``accept_commands = true``).
    """

    def __init__(self, base_dir: Path, name: str, *, zones: list[dict],
                 endpoints: list[dict], cert: Path, key: Path, ca: Path,
                 listen: str | None = "127.0.0.1:0", timeouts: dict[str, Any] | None = None,
                 extra_toml: str = "", node_toml: str = "") -> None:
        self.name = name
        self.dir = Path(base_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.dir / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.config_path = self.dir / "router.toml"
        self.log_path = self.dir / "router.log"
        self.zones = [dict(z) for z in zones]
        self.endpoints = [dict(e) for e in endpoints]
        if not any(e["name"] == name for e in self.endpoints):
            self.endpoints.insert(0, {"name": name})
        self.timeouts = {"reconnect_min": 0.5, "reconnect_max": 2}
        self.timeouts.update(timeouts or {})
        self.cert, self.key, self.ca = Path(cert), Path(key), Path(ca)
        self.listen = listen
        self.extra_toml = extra_toml
        self.node_toml = node_toml
        self.config_path.write_text(self.render_config())

        self.service: RouterService | None = None
        self.listen_port: int | None = None
        self.status_port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._handler: logging.Handler | None = None
        self._saved_level: int | None = None

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<RouterNode {self.name} port={self.listen_port} {state}>"

    # ------------------------------------------------------------------ configuration

    def render_config(self) -> str:
        lines = [
            'log_level = "debug"',
            f"listen = {_toml_str(self.listen)}" if self.listen else 'listen = "none"',
            'status_listen = "127.0.0.1:0"',
            self.extra_toml,
            "",
            "[node]",
            f"name = {_toml_str(self.name)}",
            f"data_dir = {_toml_str(str(self.data_dir))}",
            self.node_toml,
            "",
            "[tls]",
            f"ca = {_toml_str(str(self.ca))}",
            f"cert = {_toml_str(str(self.cert))}",
            f"key = {_toml_str(str(self.key))}",
            "",
            "[timeouts]",
        ]
        lines += [f"{k} = {v!r}" for k, v in self.timeouts.items()]
        for zone in self.zones:
            lines += ["", "[[zones]]", f"name = {_toml_str(zone['name'])}",
                      f"endpoints = {_toml_list(list(zone.get('endpoints', [])))}"]
            if zone.get("parent"):
                lines.append(f"parent = {_toml_str(zone['parent'])}")
            if zone.get("global"):
                lines.append("global = true")
        for endpoint in self.endpoints:
            lines += ["", "[[endpoints]]", f"name = {_toml_str(endpoint['name'])}"]
            if endpoint.get("port") is not None:
                address = f"{endpoint.get('host') or '127.0.0.1'}:{int(endpoint['port'])}"
                lines.append(f"addresses = {_toml_list([address])}")
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ life cycle

    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 15) -> None:
        """Start the router thread; return once both listeners are bound."""
        if self.is_running():
            return
        config = parse_config(self.config_path.read_text(), str(self.config_path))
        thread_name = f"router-{self.name}"
        self._install_log_handler(thread_name)
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, args=(config,), name=thread_name,
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise TimeoutError(f"router {self.name} did not start within {timeout}s\n"
                               f"{self.log_tail()}")
        if self._error is not None:
            error = self._error
            self.stop()
            raise RuntimeError(f"router {self.name} failed to start: {error!r}\n"
                               f"{self.log_tail()}") from error

    def pin_listen_port(self) -> int:
        """Make the next :meth:`start` bind the cluster port bound now (configured as port
        0), so that a restarted router keeps the address its peers dial. Returns it."""
        if self.listen_port is None:
            raise RuntimeError(f"router {self.name} has not bound a cluster port yet")
        host = (self.listen or "127.0.0.1:0").rsplit(":", 1)[0]
        self.listen = f"{host}:{self.listen_port}"
        self.config_path.write_text(self.render_config())
        return self.listen_port

    def _run(self, config: Any) -> None:
        try:
            uvloop.run(self._main(config))
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            if self._error is None:
                self._error = exc
            logging.getLogger("router.interop").exception("router thread failed")
        finally:
            self._ready.set()

    async def _main(self, config: Any) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        service = self.service = RouterService(config)
        try:
            await service.start()
            self.listen_port = service.listen_port
            self.status_port = service.status_port
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            await service.stop(drain_timeout=1)
            return
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            await service.stop(drain_timeout=2)

    def stop(self, timeout: float = 20) -> None:
        """Drain and stop the router, join its thread. Idempotent."""
        thread = self._thread
        if thread is not None:
            loop, event = self._loop, self._stop_event
            if loop is not None and event is not None and thread.is_alive():
                try:
                    loop.call_soon_threadsafe(event.set)
                except RuntimeError:  # loop already closed
                    pass
            thread.join(timeout)
            if thread.is_alive():
                raise RuntimeError(f"router {self.name} did not stop within {timeout}s\n"
                                   f"{self.log_tail()}")
            self._thread = None
        self._remove_log_handler()

    def __enter__(self) -> RouterNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ logging

    def _install_log_handler(self, thread_name: str) -> None:
        if self._handler is not None:
            return
        handler = logging.FileHandler(self.log_path)
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(logging.Formatter(_LOG_FORMAT, datefmt="%H:%M:%S"))
        handler.addFilter(_ThreadFilter(thread_name))
        logger = logging.getLogger("router")
        self._saved_level = logger.level
        logger.setLevel(logging.DEBUG)  # before the Node exists: it caches isEnabledFor
        logger.addHandler(handler)
        self._handler = handler

    def _remove_log_handler(self) -> None:
        if self._handler is None:
            return
        logger = logging.getLogger("router")
        logger.removeHandler(self._handler)
        self._handler.close()
        self._handler = None
        if self._saved_level is not None:
            logger.setLevel(self._saved_level)
            self._saved_level = None

    def log_lines(self) -> list[str]:
        try:
            return self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def log_tail(self, n: int = 60) -> str:
        lines = deque(self.log_lines(), maxlen=n)
        return f"--- last {len(lines)} lines of {self.log_path} ---\n" + "\n".join(lines)

    # ------------------------------------------------------------------ status API

    def _get(self, path: str, timeout: float = 5) -> bytes:
        if self.status_port is None:
            raise RuntimeError(f"router {self.name} is not running")
        url = f"http://127.0.0.1:{self.status_port}{path}"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()

    def status(self) -> dict[str, Any]:
        """GET /v1/status."""
        return json.loads(self._get("/v1/status"))

    def endpoint_status(self, name: str) -> dict[str, Any]:
        """The ``endpoints[]`` entry of ``name`` in /v1/status."""
        for entry in self.status()["endpoints"]:
            if entry["name"] == name:
                return entry
        raise KeyError(f"endpoint {name!r} not in the router's /v1/status")

    def checkresults(self, host: str | None = None, service: str | None = None
                     ) -> list[dict[str, Any]]:
        """GET /v1/objects/checkresults (optionally filtered): the ``results`` list."""
        query = "&".join(f"{k}={urllib.parse.quote(v)}"
                         for k, v in (("host", host), ("service", service)) if v is not None)
        doc = json.loads(self._get("/v1/objects/checkresults" + ("?" + query if query else "")))
        return doc["results"]

    def metrics(self) -> str:
        """GET /metrics (Prometheus text)."""
        return self._get("/metrics").decode()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels`` (0 if none)."""
        return metric_value(self.metrics(), name, **labels)

    def diagnostics(self, n: int = 60) -> str:
        """Status document (when reachable) and log tail, for failure messages."""
        parts = [f"===== router {self.name} (dir {self.dir}) ====="]
        try:
            parts.append("--- /v1/status ---\n" + json.dumps(self.status(), indent=1))
        except (OSError, RuntimeError, urllib.error.URLError, ValueError) as exc:
            parts.append(f"--- /v1/status unavailable: {exc!r} ---")
        parts.append(self.log_tail(n))
        return "\n".join(parts)

    def wait_for(self, predicate: Callable[[], T], timeout: float, interval: float = 0.2,
                 what: str = "condition", extra: Callable[[], str] | None = None) -> T:
        """Poll ``predicate`` until truthy; TimeoutError with our diagnostics (plus
        ``extra()``, e.g. an Icinga node's log tail) when the time is up."""
        __tracebackhide__ = True
        return wait_for(predicate, timeout, interval=interval, what=what,
                        diagnostics=lambda: self.diagnostics() + ("\n" + extra() if extra
                                                                  else ""))


def wait_for(predicate: Callable[[], T], timeout: float, *, interval: float = 0.2,
             what: str = "condition", diagnostics: Callable[[], str] | None = None) -> T:
    """Poll ``predicate`` (exceptions count as "not yet") until it returns something truthy."""
    __tracebackhide__ = True
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - reported below
            last_error = exc
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    detail = f" (last error: {last_error!r})" if last_error else ""
    text = diagnostics() if diagnostics else ""
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}{detail}\n{text}")


# ---------------------------------------------------------------------- Prometheus text

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) for every sample line of a Prometheus text exposition."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, label_text, value = match.groups()
        labels = {k: bytes(v, "utf-8").decode("unicode_escape")
                  for k, v in _LABEL.findall(label_text or "")}
        samples.append((name, labels, float(value)))
    return samples


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(value for n, l, value in parse_metrics(text)
               if n == name and all(l.get(k) == v for k, v in labels.items()))
