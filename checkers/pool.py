"""Router side of the check executors: a pool of executor processes behind one queue.

Theory of operation:

* **Processes.** ``start()`` listens on ``<socket_dir>/checkers.sock`` (mode 0600 in a
  0700 directory) and starts ``workers`` executors with ``subprocess`` (``python -m
  checkers.worker --socket ...``, own session, never a fork of the router). Each one
  connects back and says hello; the pool matches the connection to the process by the
  peer PID the kernel reports (``SO_PEERCRED``), falling back to the PID in the hello.
* **Admission.** At most ``max_concurrent`` checks run at once across the pool (Icinga's
  ``MaxConcurrentChecks``, 512) and at most ``per_worker_inflight`` on one executor.
  Beyond that, checks wait in one FIFO queue of at most ``max_queue`` entries (25 000,
  Icinga's remote check queue). A check that finds the queue full is answered at once
  with UNKNOWN "check queue full" and counted (Icinga drops it with a log line; here the
  caller gets a result to send back).
* **Dispatch.** A check goes to the ready executor with the fewest checks in flight
  (ties broken round-robin). Requests written in one loop turn go out in one write.
* **Failure.** When an executor dies or its connection breaks, every check it had in
  flight is answered UNKNOWN "Check executor lost: ..." (never silently dropped), and
  the executor is restarted after an exponential backoff with jitter (``restarts``
  counts them). A watchdog kills an executor that has not answered a check long after
  the check's own timeout (timeout + kill grace + ``WATCHDOG_SLACK``).
* **Shutdown.** ``close(drain_timeout)`` stops taking checks (new ones get UNKNOWN
  "shutting down"), lets queued and running checks finish for up to ``drain_timeout``
  seconds, answers what is left with UNKNOWN, asks every executor to stop (they kill
  their plugins' process groups), and kills executors that do not exit in time.
* **Internal commands** (``dummy``) run in the router process, as Icinga runs them in
  its own process: no executor round trip.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import math
import os
import random
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from checkers.errors import InvalidState, PoolStartError, WireError
from checkers.messages import CheckOutcome, CheckRequest
from checkers.runner import EXECUTOR_MARK, KILL_GRACE, run_internal_dummy
from checkers.wire import FrameReader, frame, request_message, result_from_reply

__all__ = ["CheckerPool", "QUEUE_WAIT_BUCKETS", "SOCKET_NAME"]

logger = logging.getLogger("router.checkers.pool")

SOCKET_NAME = "checkers.sock"
QUEUE_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0)
"""Upper bounds (seconds) of the queue-wait histogram; a ``+Inf`` bucket follows."""
WATCHDOG_SLACK = 10.0
"""Seconds past a check's timeout and kill grace before its executor counts as hung."""
STABLE_UPTIME = 30.0
"""An executor that ran this long before dying restarts without accumulated backoff."""

_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
_PEERCRED = struct.Struct("3i")


class _Job:
    __slots__ = ("request", "future", "enqueued", "wait", "deadline", "executor")

    def __init__(self, request: CheckRequest, future: asyncio.Future[CheckOutcome],
                 enqueued: float) -> None:
        self.request = request
        self.future = future
        self.enqueued = enqueued
        self.wait = 0.0
        self.deadline = 0.0
        self.executor: int | None = None


class _Executor:
    """One executor slot; ``generation`` grows with every (re)start."""

    __slots__ = ("index", "generation", "process", "pid", "pidfd", "connection", "inflight",
                 "started", "failures", "executed", "restart_handle", "start_timer",
                 "exited", "poll_handle", "mark")

    def __init__(self, index: int) -> None:
        self.index = index
        self.generation = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.pidfd: int | None = None
        #: ``EXECUTOR_MARK`` of this generation (its plugins carry it)
        self.mark = ""
        self.connection: _Connection | None = None
        self.inflight: dict[int, _Job] = {}
        self.started = 0.0
        self.failures = 0
        self.executed = 0
        self.restart_handle: asyncio.TimerHandle | None = None
        self.start_timer: asyncio.TimerHandle | None = None
        self.exited: asyncio.Future[int] | None = None
        self.poll_handle: asyncio.TimerHandle | None = None

    @property
    def ready(self) -> bool:
        return self.connection is not None


class _Connection(asyncio.Protocol):
    """The pool's end of one executor connection."""

    def __init__(self, pool: CheckerPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.reader = FrameReader()
        self.executor: _Executor | None = None
        self.peer_pid: int | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport      # type: ignore[assignment] # uvloop's is no subclass
        sock = transport.get_extra_info("socket")
        try:
            pid, uid, _ = _PEERCRED.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
        except (AttributeError, OSError, struct.error):
            return
        if uid != os.getuid():
            logger.warning("refusing an executor connection from uid %d", uid)
            transport.close()
            return
        self.peer_pid = pid

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.reader.feed(data)
        except WireError as error:
            logger.error("executor %s: %s; dropping it", self._name(), error)
            self.abort()
            return
        pool = self.pool
        for message in messages:
            if self.executor is None:
                pool._on_hello(self, message)
                if self.executor is None:
                    return
            else:
                pool._on_reply(self.executor, message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.pool._on_connection_lost(self)

    def _name(self) -> str:
        return str(self.executor.index) if self.executor else f"pid {self.peer_pid}"

    def send(self, message: dict[str, Any]) -> None:
        if self.transport is None:
            return
        if not self.pending:
            self.pool._loop.call_soon(self._flush)
        self.pending.append(frame(message))

    def _flush(self) -> None:
        data, self.pending = self.pending, []
        if self.transport is not None and data:
            self.transport.write(b"".join(data))

    def close(self) -> None:
        self._flush()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def kill_orphans(mark: str, index: int) -> int:
    """SIGKILL the process groups of the plugins an executor left behind: those with its
    ``EXECUTOR_MARK`` in their environment (it reaches their children too). Blocking
    (reads ``/proc``): run it in a thread. How many groups it killed."""
    import psutil

    groups: set[int] = set()
    for process in psutil.process_iter(["environ"]):
        environ = process.info.get("environ") or {}
        if environ.get(EXECUTOR_MARK) == mark:
            try:
                groups.add(os.getpgid(process.pid))
            except OSError:
                pass
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except OSError:
            pass
    if groups:
        logger.warning("check executor %d left %d plugin process group(s) running; killed "
                       "them", index, len(groups))
    return len(groups)


class CheckerPool:
    """A pool of check executor processes.

    Args:
        socket_dir: directory for the pool's Unix socket (created 0700 if missing).
        workers: executor processes (default: CPU count).
        max_concurrent: checks running at once across the pool.
        max_queue: checks waiting beyond that; more are answered "check queue full".
        per_worker_inflight: checks at once on one executor (default: an even share
            of ``max_concurrent``).
        start_timeout: seconds an executor has to connect after it was started.
        restart_backoff: (first, longest) delay in seconds before restarting a dead
            executor; it doubles with every failure in a row.
        python: interpreter for the executors.
        worker_log_level: log level of the executor processes (they log to stderr).
    """

    def __init__(self, socket_dir: str | os.PathLike[str], *, workers: int | None = None,
                 max_concurrent: int = 512, max_queue: int = 25000,
                 per_worker_inflight: int | None = None, start_timeout: float = 15.0,
                 restart_backoff: tuple[float, float] = (0.1, 30.0),
                 python: str = sys.executable, worker_log_level: str = "WARNING") -> None:
        workers = workers if workers is not None else (os.cpu_count() or 1)
        if workers < 1 or max_concurrent < 1 or max_queue < 0:
            raise ValueError("workers and max_concurrent must be >= 1, max_queue >= 0")
        self.socket_dir = Path(socket_dir)
        self.socket_path = str(self.socket_dir / SOCKET_NAME)
        self.workers = workers
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.per_worker_inflight = per_worker_inflight or math.ceil(max_concurrent / workers)
        self.start_timeout = start_timeout
        self.restart_backoff = restart_backoff
        self.python = python
        self.worker_log_level = worker_log_level

        self._executors = [_Executor(index) for index in range(workers)]
        self._queue: deque[_Job] = deque()
        self._running = 0
        self._job_ids = itertools.count(1)
        self._rotation = 0
        self._state = "new"              # new -> running -> draining -> stopping -> closed
        self._server: asyncio.AbstractServer | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._idle: asyncio.Event | None = None
        self._closing: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop = None   # type: ignore[assignment]
        # counters
        self.executed = 0
        self.timeouts = 0
        self.restarts = 0
        #: Checks not started: their deadline (``CheckRequest.not_after``) passed in the queue.
        self.expired = 0
        #: Scans for the plugins of executors that died (kill_orphans), running.
        self._orphan_scans: set[asyncio.Future[int]] = set()
        self.overflow = 0
        self.lost = 0
        self._wait_counts = [0] * (len(QUEUE_WAIT_BUCKETS) + 1)
        self._wait_sum = 0.0

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Listen, start every executor and wait until all of them are connected.

        Raises:
            PoolStartError: the socket cannot be created, or the executors did not all
                connect within ``start_timeout``.
        """
        if self._state != "new":
            raise InvalidState(f"start() on a pool that is {self._state}")
        self._loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()
        self._idle.set()
        self._prepare_socket_dir()
        try:
            self._server = await self._loop.create_unix_server(
                lambda: _Connection(self), self.socket_path)
            os.chmod(self.socket_path, 0o600)
        except OSError as error:
            raise PoolStartError(f"cannot listen on {self.socket_path}: {error}") from None
        self._state = "running"
        for executor in self._executors:
            self._spawn(executor)
        deadline = self._loop.time() + self.start_timeout
        while not all(executor.ready for executor in self._executors):
            if self._loop.time() > deadline:
                missing = [e.index for e in self._executors if not e.ready]
                await self.close(0)
                raise PoolStartError(f"check executors {missing} did not connect within "
                                     f"{self.start_timeout} s")
            await asyncio.sleep(0.01)
        self._watchdog = self._loop.create_task(self._watch())
        logger.info("check pool started: %d executors, %d concurrent checks, queue %d",
                    self.workers, self.max_concurrent, self.max_queue)

    def _prepare_socket_dir(self) -> None:
        self.socket_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if len(os.fsencode(self.socket_path)) >= 104:
            raise PoolStartError(f"socket path too long for a Unix socket: {self.socket_path}")
        try:
            mode = os.lstat(self.socket_path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise PoolStartError(f"{self.socket_path} exists and is not a socket")
        os.unlink(self.socket_path)          # left over from a previous run

    async def close(self, drain_timeout: float = 10.0) -> None:
        """Drain and stop: see the module docstring.

        Safe to call more than once and concurrently: later calls wait for the first.
        """
        if self._state in ("new", "closed"):
            self._state = "closed"
            return
        if self._closing is None:
            self._closing = self._loop.create_task(self._close(drain_timeout))
        await asyncio.shield(self._closing)

    async def _close(self, drain_timeout: float) -> None:
        if self._state == "running":
            self._state = "draining"
            if self._queue or self._running:
                assert self._idle is not None
                try:
                    async with asyncio.timeout(max(drain_timeout, 0)):
                        await self._idle.wait()
                except TimeoutError:
                    logger.warning("check pool: %d running and %d queued checks did not "
                                   "finish within %s s", self._running, len(self._queue),
                                   drain_timeout)
        self._state = "stopping"
        now = time.time()
        while self._queue:
            job = self._queue.popleft()
            self._answer(job, CheckOutcome.unknown(
                "Check executor pool shut down before the check started.", error="shutdown",
                now=now, command=job.request.command_line))
        for executor in self._executors:
            for timer in (executor.restart_handle, executor.start_timer):
                if timer is not None:
                    timer.cancel()
            self._fail_inflight(executor, "Check executor pool shut down before the check "
                                          "finished.", error="shutdown")
            if executor.connection is not None:
                executor.connection.send({"op": "shutdown"})
                executor.connection.close()
        if self._watchdog is not None:
            self._watchdog.cancel()
        await self._wait_exits(KILL_GRACE + 2.0)
        for executor in self._executors:
            if executor.process is not None and executor.process.poll() is None:
                logger.warning("check executor %d did not stop; killing it", executor.index)
                executor.process.kill()
        await self._wait_exits(5.0)
        if self._orphan_scans:                  # the plugins of executors killed above
            await asyncio.wait(list(self._orphan_scans), timeout=10.0)
        if self._server is not None:
            self._server.close()
            try:
                os.unlink(self.socket_path)
            except FileNotFoundError:
                pass
        self._state = "closed"

    async def _wait_exits(self, timeout: float) -> None:
        waits = [e.exited for e in self._executors if e.exited is not None and not e.exited.done()]
        if waits:
            await asyncio.wait(waits, timeout=timeout)

    # ----------------------------------------------------------------- running checks

    async def run(self, request: CheckRequest) -> CheckOutcome:
        """Run ``request`` and return its outcome; never raises for plugin problems.

        Every call returns exactly one outcome: the plugin's result, or UNKNOWN with
        ``error`` set when the queue is full, the executor was lost, or the pool is
        shutting down. Cancelling the call abandons the check (a running plugin still
        runs to its end or timeout; its result is dropped).
        """
        if request.internal is not None:
            return self._run_internal(request)
        if self._state == "new":
            raise InvalidState("run() before start()")
        loop = self._loop
        if self._state != "running":
            return CheckOutcome.unknown("Check executor pool is shutting down.",
                                        error="shutdown", now=time.time(),
                                        command=request.command_line)
        job = _Job(request, loop.create_future(), loop.time())
        if not self._queue and self._running < self.max_concurrent:
            executor = self._pick()
            if executor is not None:
                self._dispatch(executor, job)
                return await job.future
        if len(self._queue) >= self.max_queue:
            self.overflow += 1
            return CheckOutcome.unknown(
                f"Check queue full: {len(self._queue)} checks are waiting and "
                f"{self._running} running; check dropped.", error="check queue full",
                now=time.time(), command=request.command_line)
        self._queue.append(job)
        assert self._idle is not None
        self._idle.clear()
        return await job.future

    def _run_internal(self, request: CheckRequest) -> CheckOutcome:
        if request.internal != "dummy":
            return CheckOutcome.unknown(f"Unknown internal command '{request.internal}'.",
                                        error="invalid request", now=time.time(),
                                        command=request.command_line)
        self.executed += 1
        return CheckOutcome.from_result(run_internal_dummy(request.macros),
                                        request.command_line)

    def _pick(self) -> _Executor | None:
        """The ready executor with the fewest checks in flight and room for one more."""
        executors = self._executors
        count = len(executors)
        self._rotation = (self._rotation + 1) % count
        best = None
        best_load = self.per_worker_inflight
        for offset in range(count):
            executor = executors[(self._rotation + offset) % count]
            if executor.connection is None:
                continue
            load = len(executor.inflight)
            if load < best_load:
                best, best_load = executor, load
                if load == 0:
                    break
        return best

    def _dispatch(self, executor: _Executor, job: _Job) -> None:
        job_id = next(self._job_ids)
        now = self._loop.time()
        wait = job.wait = now - job.enqueued
        self._wait_counts[bisect.bisect_left(QUEUE_WAIT_BUCKETS, wait)] += 1
        self._wait_sum += wait
        job.deadline = now + job.request.timeout + KILL_GRACE + WATCHDOG_SLACK
        job.executor = executor.index
        executor.inflight[job_id] = job
        self._running += 1
        assert self._idle is not None
        self._idle.clear()
        assert executor.connection is not None
        executor.connection.send(request_message(job_id, job.request))

    def _pump(self) -> None:
        queue = self._queue
        while queue and self._running < self.max_concurrent:
            executor = self._pick()
            if executor is None:
                break
            job = queue.popleft()
            if job.future.done():           # the caller gave up while it waited
                continue
            not_after = job.request.not_after
            if not_after is not None and time.time() > not_after:
                # Icinga checks an execution's deadline when it leaves the queue too.
                self.expired += 1
                self._answer(job, CheckOutcome.unknown(
                    "The check's deadline passed while it waited for an executor.",
                    error="expired", now=time.time(), command=job.request.command_line))
                continue
            self._dispatch(executor, job)
        if not queue and not self._running and self._idle is not None:
            self._idle.set()

    def _answer(self, job: _Job, outcome: CheckOutcome) -> None:
        if not job.future.done():
            job.future.set_result(outcome)

    # ----------------------------------------------------------------- executor events

    def _on_hello(self, connection: _Connection, message: dict[str, Any]) -> None:
        pid = connection.peer_pid
        hello_pid = message.get("pid")
        if message.get("op") != "hello" or (pid is not None and hello_pid not in (None, pid)):
            logger.warning("unexpected first frame from an executor connection; closing it")
            connection.abort()
            return
        if pid is None:
            pid = hello_pid
        for executor in self._executors:
            if executor.pid == pid and executor.connection is None \
                    and executor.process is not None and executor.process.poll() is None:
                break
        else:
            logger.warning("connection from unknown process %s on the check socket", pid)
            connection.abort()
            return
        if executor.start_timer is not None:
            executor.start_timer.cancel()
            executor.start_timer = None
        connection.executor = executor
        executor.connection = connection
        if self._state not in ("running", "draining"):
            connection.send({"op": "shutdown"})
            connection.close()
            return
        logger.debug("check executor %d (pid %s) connected", executor.index, pid)
        self._pump()

    def _on_reply(self, executor: _Executor, reply: dict[str, Any]) -> None:
        job = executor.inflight.pop(reply.get("id"), None)   # type: ignore[arg-type]
        if job is None:
            logger.warning("executor %d answered unknown check %r", executor.index,
                           reply.get("id"))
            return
        self._running -= 1
        try:
            result = result_from_reply(reply)
        except WireError as error:
            logger.error("executor %d: %s", executor.index, error)
            outcome = CheckOutcome.unknown(f"Check executor sent a malformed reply: {error}",
                                           error="executor error", now=time.time(),
                                           command=job.request.command_line,
                                           executor=executor.index)
        else:
            self.executed += 1
            executor.executed += 1
            if result.timed_out:
                self.timeouts += 1
            outcome = CheckOutcome.from_result(result, job.request.command_line,
                                               executor=executor.index)
        outcome.queue_wait = job.wait
        self._answer(job, outcome)
        self._pump()

    def _on_connection_lost(self, connection: _Connection) -> None:
        executor = connection.executor
        if executor is None or executor.connection is not connection:
            return
        executor.connection = None
        if self._state in ("running", "draining"):
            self._fail_inflight(executor, self._lost_text(executor))
            process = executor.process
            if process is not None and process.poll() is None:
                process.kill()              # a live executor without its socket is useless
        self._pump()

    def _lost_text(self, executor: _Executor) -> str:
        process = executor.process
        code = process.poll() if process is not None else None
        if code is None:
            how = "lost its connection"
        elif code < 0:
            how = f"was killed by signal {-code}"
        else:
            how = f"exited with status {code}"
        return (f"Check executor lost: executor {executor.index} (PID {executor.pid}) {how} "
                f"while the check was running.")

    def _fail_inflight(self, executor: _Executor, text: str, *,
                       error: str = "executor lost") -> None:
        if not executor.inflight:
            return
        jobs = list(executor.inflight.values())
        executor.inflight.clear()
        self._running -= len(jobs)
        now = time.time()
        if error == "executor lost":
            self.lost += len(jobs)
            logger.warning("check executor %d lost with %d checks in flight", executor.index,
                           len(jobs))
        for job in jobs:
            self._answer(job, CheckOutcome.unknown(text, error=error, now=now,
                                                   command=job.request.command_line,
                                                   queue_wait=job.wait,
                                                   executor=executor.index))

    def _on_process_exit(self, executor: _Executor, generation: int) -> None:
        if generation != executor.generation:
            return
        process = executor.process
        if process is None:
            return
        code = process.poll()
        if code is None:
            return
        if executor.pidfd is not None:
            self._loop.remove_reader(executor.pidfd)
            os.close(executor.pidfd)
            executor.pidfd = None
        if executor.poll_handle is not None:
            executor.poll_handle.cancel()
            executor.poll_handle = None
        if executor.start_timer is not None:
            executor.start_timer.cancel()
            executor.start_timer = None
        if executor.exited is not None and not executor.exited.done():
            executor.exited.set_result(code)
        if code != 0 and executor.mark:
            # Killed or crashed: its plugins (sessions of their own) live on without it.
            scan = self._loop.run_in_executor(None, kill_orphans, executor.mark,
                                              executor.index)
            self._orphan_scans.add(scan)
            scan.add_done_callback(self._orphan_scans.discard)
        if self._state not in ("running", "draining"):
            return
        logger.warning("check executor %d (pid %s) exited with %s", executor.index,
                       executor.pid, code)
        if executor.connection is not None:
            connection = executor.connection
            self._fail_inflight(executor, self._lost_text(executor))
            executor.connection = None
            connection.abort()
        if self._loop.time() - executor.started >= STABLE_UPTIME:
            executor.failures = 0
        first, longest = self.restart_backoff
        delay = min(longest, first * (2 ** executor.failures)) * random.uniform(0.5, 1.0)
        executor.failures += 1
        executor.restart_handle = self._loop.call_later(delay, self._restart, executor)
        self._pump()

    def _restart(self, executor: _Executor) -> None:
        executor.restart_handle = None
        if self._state not in ("running", "draining"):
            return
        self.restarts += 1
        self._spawn(executor)

    def _spawn(self, executor: _Executor) -> None:
        executor.generation += 1
        generation = executor.generation
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
        executor.mark = env[EXECUTOR_MARK] = f"{os.getpid()}.{executor.index}.{generation}"
        argv = [self.python, "-m", "checkers.worker", "--socket", self.socket_path,
                "--max-inflight", str(self.per_worker_inflight),
                "--log-level", self.worker_log_level]
        loop = self._loop
        executor.exited = loop.create_future()
        executor.started = loop.time()
        try:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, env=env,
                                       start_new_session=True, close_fds=True)
        except OSError as error:
            logger.error("cannot start check executor %d: %s", executor.index, error)
            executor.process = None
            executor.pid = None
            executor.exited.set_result(-1)
            first, longest = self.restart_backoff
            delay = min(longest, first * (2 ** executor.failures))
            executor.failures += 1
            executor.restart_handle = loop.call_later(delay, self._restart, executor)
            return
        executor.process = process
        executor.pid = process.pid
        try:
            executor.pidfd = os.pidfd_open(process.pid)
            loop.add_reader(executor.pidfd, self._on_process_exit, executor, generation)
        except (AttributeError, OSError):
            executor.pidfd = None
            self._poll_exit(executor, generation)
        executor.start_timer = loop.call_later(self.start_timeout, self._start_timed_out,
                                               executor, generation)

    def _poll_exit(self, executor: _Executor, generation: int) -> None:
        """Without pidfd: look at the executor's exit every 200 ms."""
        if generation != executor.generation:
            return
        self._on_process_exit(executor, generation)
        if executor.exited is not None and not executor.exited.done():
            executor.poll_handle = self._loop.call_later(0.2, self._poll_exit, executor,
                                                         generation)

    def _start_timed_out(self, executor: _Executor, generation: int) -> None:
        executor.start_timer = None
        if generation == executor.generation and not executor.ready \
                and executor.process is not None and executor.process.poll() is None:
            logger.error("check executor %d did not connect within %s s; killing it",
                         executor.index, self.start_timeout)
            executor.process.kill()

    async def _watch(self) -> None:
        """Kill executors that sit on a check far longer than its timeout allows."""
        while True:
            await asyncio.sleep(1.0)
            if not self._running:
                continue
            now = self._loop.time()
            for executor in self._executors:
                overdue = [job for job in executor.inflight.values() if job.deadline < now]
                if overdue and executor.process is not None:
                    logger.error("check executor %d has not answered a check %.0f s past "
                                 "its timeout; killing it", executor.index, WATCHDOG_SLACK)
                    try:
                        os.kill(executor.process.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass

    # ----------------------------------------------------------------- introspection

    def stats(self) -> dict[str, Any]:
        """Counters and gauges of the pool (see ``checkers/README.md``)."""
        cumulative = list(itertools.accumulate(self._wait_counts))
        buckets = {format(bound, "g"): count
                   for bound, count in zip(QUEUE_WAIT_BUCKETS, cumulative, strict=False)}
        buckets["+Inf"] = cumulative[-1]
        return {
            "state": self._state,
            "workers": self.workers,
            "workers_ready": sum(1 for e in self._executors if e.ready),
            "max_concurrent": self.max_concurrent,
            "max_queue": self.max_queue,
            "per_worker_inflight": self.per_worker_inflight,
            "running": self._running,
            "queued": len(self._queue),
            "executed": self.executed,
            "timeouts": self.timeouts,
            "restarts": self.restarts,
            "expired": self.expired,
            "overflow": self.overflow,
            "lost": self.lost,
            "queue_wait_seconds": {"buckets": buckets, "sum": self._wait_sum,
                                   "count": cumulative[-1]},
            "executors": [{"index": e.index, "pid": e.pid, "ready": e.ready,
                           "inflight": len(e.inflight), "executed": e.executed}
                          for e in self._executors],
        }
