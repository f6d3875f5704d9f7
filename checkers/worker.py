"""Executor process: ``python -m checkers.worker --socket PATH [--max-inflight N]``.

It connects to the pool's Unix socket, says hello, then runs the check requests it
receives (at most ``--max-inflight`` plugins at once, the rest wait here in order) and
answers each with one reply frame. Protocol: ``checkers/README.md``.

It lives as long as its connection: when the pool closes the socket, sends
``{"op": "shutdown"}``, or dies, the executor kills the process groups of the plugins
still running and exits. SIGTERM and SIGINT do the same. It never forks the router:
the pool starts it with ``subprocess`` in its own session.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import signal
import sys
import time
from collections import deque
from typing import Any

from checkers.errors import WireError
from checkers.messages import DEFAULT_OUTPUT_LIMIT, DEFAULT_TIMEOUT, PluginResult
from checkers.runner import run_internal_dummy, run_plugin
from checkers.wire import MAX_FRAME, PROTOCOL_VERSION, FrameReader, frame, reply_message

__all__ = ["ExecutorProtocol", "serve", "main"]

logger = logging.getLogger("router.checkers.worker")

DEFAULT_MAX_INFLIGHT = 256


def _bad_request(job_id: Any, text: str) -> dict[str, Any]:
    now = time.time()
    return reply_message(job_id, PluginResult(3, text, [], now, now, error="invalid request"))


class ExecutorProtocol(asyncio.Protocol):
    """The executor's end of the socket: requests in, replies out (coalesced per turn)."""

    def __init__(self, max_inflight: int) -> None:
        self.max_inflight = max(1, max_inflight)
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.reader = FrameReader()
        self.running: set[asyncio.Task[None]] = set()
        self.waiting: deque[dict[str, Any]] = deque()
        self.pending: list[bytes] = []
        self.closed: asyncio.Future[None] = self.loop.create_future()

    # ----------------------------------------------------------------- transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport      # type: ignore[assignment] # uvloop's is no subclass
        self.send({"op": "hello", "version": PROTOCOL_VERSION, "pid": os.getpid(),
                   "max_inflight": self.max_inflight})

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.reader.feed(data)
        except WireError as error:
            logger.error("closing the executor socket: %s", error)
            self.close()
            return
        for message in messages:
            self.handle(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.waiting.clear()
        for task in list(self.running):
            task.cancel()                    # run_plugin kills the process group
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # ----------------------------------------------------------------- requests

    def handle(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "shutdown":
            self.close()
            return
        if op is not None:
            logger.warning("ignoring unknown executor operation %r", op)
            return
        if "id" not in message:
            logger.warning("ignoring a request without id")
            return
        if len(self.running) >= self.max_inflight:
            self.waiting.append(message)
            return
        self.start(message)

    def start(self, message: dict[str, Any]) -> None:
        job_id = message["id"]
        internal = message.get("internal")
        if internal is not None:
            if internal == "dummy" and isinstance(message.get("macros", {}), dict):
                self.send(reply_message(job_id, run_internal_dummy(message.get("macros", {}))))
            else:
                self.send(_bad_request(job_id, f"Unknown internal command {internal!r}."))
            return
        argv = message.get("argv")
        env = message.get("env") or {}
        timeout = message.get("timeout", DEFAULT_TIMEOUT)
        limit = message.get("output_limit", DEFAULT_OUTPUT_LIMIT)
        if (not isinstance(argv, list) or not argv
                or not all(isinstance(arg, str) for arg in argv)
                or not isinstance(env, dict)
                or not isinstance(timeout, (int, float)) or not isinstance(limit, int)):
            self.send(_bad_request(job_id, "Invalid check request: needs argv (strings), "
                                           "env (object), timeout and output_limit."))
            return
        task = self.loop.create_task(self.run(job_id, argv, env, float(timeout), limit))
        self.running.add(task)
        task.add_done_callback(self._task_done)

    async def run(self, job_id: Any, argv: list[str], env: dict[str, Any], timeout: float,
                  limit: int) -> None:
        try:
            result = await run_plugin(argv, timeout=timeout, env=env, output_limit=limit)
        except asyncio.CancelledError:
            raise
        except Exception as error:          # a bug in the runner: still answer the check
            logger.exception("running %s failed", argv[0])
            now = time.time()
            result = PluginResult(3, f"Exception occurred while running the check: {error}",
                                  [], now, now, error="executor error")
        self.send(reply_message(job_id, result))

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.running.discard(task)
        while self.waiting and len(self.running) < self.max_inflight and self.transport:
            self.start(self.waiting.popleft())

    # ----------------------------------------------------------------- replies

    def send(self, message: dict[str, Any]) -> None:
        if self.transport is None:
            return
        data = frame(message)
        if len(data) > MAX_FRAME:
            # The pool refuses it, and kills us with every check we run: answer this
            # one check instead.
            now = time.time()
            data = frame(reply_message(message.get("id"), PluginResult(
                3, f"The plugin's output is too large to pass on ({len(data)} bytes "
                   "encoded).", [], now, now, error="output too large")))
        if not self.pending:
            self.loop.call_soon(self._flush)
        self.pending.append(data)

    def _flush(self) -> None:
        data, self.pending = self.pending, []
        if self.transport is not None and data:
            self.transport.write(b"".join(data))


async def serve(socket_path: str, max_inflight: int = DEFAULT_MAX_INFLIGHT) -> None:
    """Connect to the pool at ``socket_path`` and serve until the connection ends."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_unix_connection(
        lambda: ExecutorProtocol(max_inflight), socket_path)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, protocol.close)
    await protocol.closed
    if protocol.running:
        await asyncio.gather(*protocol.running, return_exceptions=True)


def _prepare_process() -> None:
    """Standard descriptors open (plugins get them via dup2) and the fd limit raised."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m checkers.worker",
                                     description="Check executor process of the router.")
    parser.add_argument("--socket", required=True, help="Unix socket of the check pool")
    parser.add_argument("--max-inflight", type=int, default=DEFAULT_MAX_INFLIGHT,
                        help="plugins run at once (default %(default)s)")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s executor[{os.getpid()}] %(levelname)s %(message)s")
    _prepare_process()
    try:
        import uvloop
        loop_factory = uvloop.new_event_loop
    except ImportError:                     # pragma: no cover - uvloop is a dependency
        loop_factory = None
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve(args.socket, args.max_inflight))
    except (ConnectionError, FileNotFoundError) as error:
        logger.error("cannot reach the check pool at %s: %s", args.socket, error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
