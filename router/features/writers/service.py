"""The writers as the node sees them: the queue feed plus the writers' process.

``WritersService`` is built by the app when the configuration has ``[[writers]]``. The
node calls ``submit(raw)`` for every check result it consumes (``Node._consume`` and its
own results); the rest runs off the routing loop: the feed's commit thread appends to
the node's one LMDB queue (every writer reads it from its own position) and the child
process (``child.py``) writes to the backends. This object
keeps the child running (restarted with backoff when it dies), sends it the
configuration on reload and the node's connected set for HA, and keeps its latest
statistics for ``/metrics``, ``/v1/status`` and ``router status``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable, Set
from typing import Any

import orjson

from router.config import RouterConfig, WriterSpec
from router.features.writers.feed import ResultFeed
from router.features.writers.spec import spec_to_json

__all__ = ["WritersService"]

log = logging.getLogger("router.writers")

PEERS_INTERVAL = 0.5
RESTART_MIN = 1.0
RESTART_MAX = 30.0


def _zone_endpoints(config: RouterConfig) -> tuple[str, ...]:
    zone = config.zone_of(config.node.name)
    return tuple(sorted(zone.endpoints)) if zone is not None else (config.node.name,)


def relay_log_line(line: bytes) -> None:
    """Log one line of the writers' process's stderr here, in the node's format.

    A record the child wrote (``child.RecordLines``) keeps its level and logger; any
    other line (an interpreter error before logging was set up) is an error of
    ``router.writers``."""
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("message"), str):
        level, name = doc.get("level"), doc.get("logger")
        text = doc["message"]
        if isinstance(doc.get("exception"), str):
            text = f"{text}\n{doc['exception']}"
        logging.getLogger(name if isinstance(name, str) and name.startswith("router.")
                          else "router.writers").log(
            level if isinstance(level, int) else logging.ERROR, "%s", text)
        return
    text = line.decode("utf-8", "replace").rstrip()
    if text:
        log.error("writers process: %s", text)


async def _relay_logs(stream: asyncio.StreamReader) -> None:
    while True:
        try:
            line = await stream.readline()
        except ValueError:                      # a line over the stream's limit
            log.error("writers process: a log line over 16 MiB, dropped")
            continue
        if not line:
            return
        relay_log_line(line)


class WritersService:
    """Node side of the result writers."""

    def __init__(self, config: RouterConfig, connected: Callable[[], Set[str]]) -> None:
        self.config = config
        self._connected = connected
        self.feed = ResultFeed(config.node.data_dir, config.writers)
        self.stats: dict[str, dict[str, Any]] = {}
        self.child_restarts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._peers_sent: frozenset[str] | None = None
        self._stopping = False
        self._ready = asyncio.Event()

    @property
    def specs(self) -> tuple[WriterSpec, ...]:
        return self.config.writers

    def submit(self, raw: bytes) -> None:
        """One consumed ``event::CheckResult`` (the message's JSON). Never blocks."""
        self.feed.submit(raw)

    def submit_params(self, method: str, params: dict[str, Any]) -> None:
        """A result this node produced itself (no raw message to reuse)."""
        self.feed.submit(orjson.dumps({"jsonrpc": "2.0", "method": method, "params": params}))

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name="writers-supervisor")

    async def wait_ready(self, timeout: float = 10.0) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
            return True
        except TimeoutError:
            return False

    def _configure_message(self) -> bytes:
        cfg = self.config
        return orjson.dumps({
            "op": "configure", "node_name": cfg.node.name, "data_dir": cfg.node.data_dir,
            "log_level": cfg.log_level, "zone_endpoints": list(_zone_endpoints(cfg)),
            "writers": [spec_to_json(s) for s in cfg.writers]}) + b"\n"

    async def _supervise(self) -> None:
        delay = RESTART_MIN
        while not self._stopping:
            started = time.monotonic()
            try:
                await self._run_child()
            except (OSError, ConnectionError) as e:
                log.error("writers: process failed: %s", e)
            if self._stopping:
                return
            self.child_restarts += 1
            if time.monotonic() - started > 60:
                delay = RESTART_MIN
            log.error("writers: process exited (code %s); restarting in %.0fs",
                      self._proc.returncode if self._proc else None, delay)
            await asyncio.sleep(delay)
            delay = min(RESTART_MAX, delay * 2)

    async def _run_child(self) -> None:
        env = dict(os.environ)
        self._proc = proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "router.features.writers.child",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, limit=16 << 20)
        assert proc.stdin is not None and proc.stdout is not None
        assert proc.stderr is not None
        self._peers_sent = None
        proc.stdin.write(self._configure_message())
        peers = asyncio.create_task(self._push_peers(proc))
        logs = asyncio.create_task(_relay_logs(proc.stderr))
        try:
            while True:
                line = await proc.stdout.readline()
                if not line:
                    break
                try:
                    msg = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(msg, dict) and msg.get("op") == "stats":
                    writers = msg.get("writers")
                    if isinstance(writers, dict):
                        self.stats = writers
                        self._ready.set()
        finally:
            peers.cancel()
            await proc.wait()
            try:        # its last lines (a traceback when it crashed)
                async with asyncio.timeout(2.0):
                    await logs
            except TimeoutError:
                pass

    async def _push_peers(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdin is not None
        while True:
            connected = frozenset(self._connected())
            if connected != self._peers_sent:
                proc.stdin.write(orjson.dumps({"op": "peers",
                                               "connected": sorted(connected)}) + b"\n")
                self._peers_sent = connected
            await asyncio.sleep(PEERS_INTERVAL)

    def reconfigure(self, config: RouterConfig) -> None:
        """Apply a reload: writers added, removed or changed."""
        self.config = config
        self.feed.reconfigure(config.writers)
        proc = self._proc
        if proc is not None and proc.stdin is not None and proc.returncode is None:
            proc.stdin.write(self._configure_message())

    async def stop(self, timeout: float = 10.0) -> None:
        """Commit what is pending to the queues, then let the child finish its current
        batch and exit (it stops at end of input)."""
        self._stopping = True
        await asyncio.get_running_loop().run_in_executor(None, self.feed.close)
        proc = self._proc
        if proc is not None and proc.returncode is None:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                async with asyncio.timeout(timeout):
                    await proc.wait()
            except TimeoutError:
                log.warning("writers: process did not stop within %.0fs; killing it", timeout)
                proc.kill()
                await proc.wait()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    # -- reporting -------------------------------------------------------------------

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per writer: the child's statistics merged with the feed's counters."""
        out: dict[str, dict[str, Any]] = {}
        feed = self.feed
        for spec in self.config.writers:
            s = dict(self.stats.get(spec.name, {}))
            s.setdefault("type", spec.type)
            s["appended"] = feed.appended.get(spec.name, 0)
            s["queue_failed"] = feed.failed.get(spec.name, 0)
            s["evicted"] = max(int(s.get("evicted", 0)), feed.evicted.get(spec.name, 0))
            s["dropped"] = feed.dropped
            s.setdefault("active", False)
            s.setdefault("connected", False)
            s.setdefault("backlog", 0)
            s.setdefault("lag_seconds", 0.0)
            s.setdefault("written", 0)
            s.setdefault("errors", {})
            s["process_running"] = self._proc is not None and self._proc.returncode is None
            out[spec.name] = s
        return out
