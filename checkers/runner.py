"""Run one monitoring plugin: argv in, :class:`PluginResult` out. Never raises for the plugin.

Theory of operation (matching ``lib/base/process.cpp`` of Icinga 2.13 where it matters):

* **Spawn.** ``os.posix_spawn`` (vfork + exec: cheap even from a large process) of the
  argv, no shell. The child gets a new session and process group (``setsid``, as Icinga
  does), stdin on ``/dev/null``, stdout *and* stderr on one pipe (Icinga merges them),
  an empty signal mask and default dispositions for the signals Python ignores (SIGPIPE,
  SIGXFSZ), and a minimal environment: ``PATH``, ``LANG=C`` and what the caller adds.
  A program name without ``/`` is looked up in that ``PATH``. A file that is not a binary
  and has no ``#!`` is run by ``/bin/sh``, like ``execvpe``.
* **Spawn failure.** Icinga's child prints ``execvpe(<argv0>) failed: <strerror>`` and
  exits 128; we produce the same output and exit status, so a missing or non-executable
  plugin gives ``UNKNOWN`` with e.g. "execvpe(/usr/lib/nagios/plugins/check_x) failed: No
  such file or directory".
* **Reading.** The pipe is read from the event loop. The first ``output_limit`` bytes are
  kept; anything beyond is drained and thrown away (``splice`` to ``/dev/null`` where
  possible), so a chatty plugin never blocks on a full pipe, and the result is marked
  ``truncated``.
* **Exit.** The process is watched through a pidfd and is reaped only after the output
  reached EOF (Icinga also reads until EOF). Until it is reaped its PID, which is also
  the process group ID, cannot be reused, so signalling the group is always safe.
* **Timeout.** At ``timeout`` the whole process group gets SIGTERM and
  ``<Timeout exceeded.>`` is appended to the output (Icinga's text); after ``kill_grace``
  (1 s) the group gets SIGKILL, forked children included. The exit status is then 128
  and a death by signal appends ``<Terminated by signal N (Name).>`` (Icinga's text), so
  the state is UNKNOWN. Icinga sends SIGTERM to the main process only and waits
  10 % of the timeout before the SIGKILL to the group; we signal the group both times.
* **Exit code to state** is :func:`checkers.output.exit_status_to_state`; the output is
  trimmed and parsed like Icinga's ``PluginCheckTask`` (:mod:`checkers.output`).
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import time
from collections.abc import Mapping, Sequence
from typing import Any

from checkers.catalog import format_value
from checkers.messages import (DEFAULT_OUTPUT_LIMIT, EXIT_PROCESS_FAILED, PluginResult,
                               rebuilt_output)
from checkers.output import parse_check_output, parse_plugin_output, split_perfdata

__all__ = [
    "DEFAULT_PATH",
    "KILL_GRACE",
    "run_plugin",
    "run_internal_dummy",
    "plugin_environment",
]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
KILL_GRACE = 1.0
"""Seconds between SIGTERM and SIGKILL to the process group of a plugin that timed out."""

_READ_SIZE = 65536
_READS_PER_WAKEUP = 16             # bound the time one readable pipe holds the loop
_DRAIN_PIPE_SIZE = 1 << 20         # pipe buffer once we only discard (fewer wakeups)
_REAP_WAIT = 5.0                   # after SIGKILL: how long to wait for the exit
_RESET_SIGNALS = tuple(s for s in (signal.SIGPIPE, getattr(signal, "SIGXFSZ", None),
                                   signal.SIGINT, signal.SIGTERM, signal.SIGHUP,
                                   signal.SIGQUIT) if s is not None)

_splice_works = True              # cleared when splice() to /dev/null is refused
_devnull_read: int | None = None
_devnull_write: int | None = None


def _devnull() -> tuple[int, int]:
    """Process-wide read and write descriptors on ``/dev/null`` (close-on-exec)."""
    global _devnull_read, _devnull_write
    if _devnull_read is None or _devnull_write is None:
        _devnull_read = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        _devnull_write = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    return _devnull_read, _devnull_write


#: Set by the pool in each executor's environment and passed on to every plugin it
#: starts: plugins run in sessions of their own, so when an executor dies (killed by the
#: pool's watchdog, a crash, the OOM killer) nobody kills them; the pool finds them by
#: this mark and does (``checkers.pool.kill_orphans``).
EXECUTOR_MARK = "ROUTER_CHECK_EXECUTOR"


def plugin_environment(env: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The environment a plugin gets: ``PATH``, ``LANG=C``, then ``env`` on top, and the
    executor's ``EXECUTOR_MARK``."""
    result = {"PATH": DEFAULT_PATH, "LANG": "C"}
    if env:
        for key, value in env.items():
            result[str(key)] = "" if value is None else str(value)
    mark = os.environ.get(EXECUTOR_MARK)
    if mark:
        result[EXECUTOR_MARK] = mark
    return result


def _find_program(name: str, path: str) -> str:
    """``name`` itself when it holds a ``/``, else the first executable match in ``path``.

    Like ``execvpe``: when no directory has an executable file of that name, the first
    existing one is returned (so the spawn fails with "Permission denied"), and when none
    exists at all, the name itself (so it fails with "No such file or directory").
    """
    if "/" in name:
        return name
    first_existing = None
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate):
            if os.access(candidate, os.X_OK):
                return candidate
            if first_existing is None:
                first_existing = candidate
    return first_existing or name


def _spawn(program: str, argv: list[str], env: dict[str, str], out_fd: int) -> int:
    stdin_fd, _ = _devnull()
    actions = [
        (os.POSIX_SPAWN_DUP2, stdin_fd, 0),
        (os.POSIX_SPAWN_DUP2, out_fd, 1),
        (os.POSIX_SPAWN_DUP2, out_fd, 2),
    ]
    try:
        return os.posix_spawn(program, argv, env, file_actions=actions, setsid=True,
                              setsigdef=_RESET_SIGNALS, setsigmask=())
    except OSError as error:
        if error.errno != errno.ENOEXEC:
            raise
        # A script without "#!": execvpe hands it to the shell.
        return os.posix_spawn("/bin/sh", ["/bin/sh", program, *argv[1:]], env,
                              file_actions=actions, setsid=True,
                              setsigdef=_RESET_SIGNALS, setsigmask=())


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_text(signum: int) -> str:
    """``9 (Killed)``: Icinga's rendering of a signal (number, then ``strsignal``)."""
    try:
        name = signal.strsignal(signum)
    except ValueError:
        name = None
    return f"{signum} ({name})" if name else str(signum)


class _PluginProcess:
    """Loop-side state of one running plugin: pipe reader, exit watcher, timers."""

    __slots__ = ("loop", "pid", "fd", "pidfd", "limit", "buffer", "plugin_bytes",
                 "truncated", "eof", "exited", "sent_sigterm", "killed", "done",
                 "timer", "draining")

    def __init__(self, loop: asyncio.AbstractEventLoop, pid: int, fd: int, limit: int) -> None:
        self.loop = loop
        self.pid = pid
        self.fd: int | None = fd
        self.pidfd: int | None = None
        self.limit = limit
        self.buffer = bytearray()
        self.plugin_bytes = 0            # bytes kept from the plugin (markers not counted)
        self.truncated = False
        self.eof = False
        self.exited = False
        self.sent_sigterm = False
        self.killed = False
        self.draining = False
        self.done: asyncio.Future[None] = loop.create_future()
        self.timer: asyncio.TimerHandle | None = None

    # ----------------------------------------------------------------- watchers

    def start(self, deadline: float) -> None:
        fd = self.fd
        assert fd is not None       # set by __init__, only cleared once the pipe is closed
        os.set_blocking(fd, False)
        self.loop.add_reader(fd, self._on_readable)
        try:
            self.pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            self.pidfd = None
        if self.pidfd is not None:
            self.loop.add_reader(self.pidfd, self._on_exit)
        else:
            self._poll_exit(0.005)
        self.timer = self.loop.call_at(deadline, self._on_timeout)

    def _poll_exit(self, delay: float) -> None:
        """Fallback without pidfd: peek at the exit with ``waitid(WNOWAIT)`` (no reaping)."""
        if self.exited:
            return
        try:
            exited = os.waitid(os.P_PID, self.pid,
                               os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            exited = True
        if exited:
            self._on_exit()
            return
        self.loop.call_later(delay, self._poll_exit, min(delay * 2, 0.1))

    def _on_readable(self) -> None:
        fd = self.fd
        if fd is None:
            return
        if self.draining and self._drain_splice(fd):
            return
        for _ in range(_READS_PER_WAKEUP):
            try:
                data = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._on_eof()
                return
            room = self.limit - self.plugin_bytes
            if room > 0:
                kept = data if len(data) <= room else data[:room]
                self.buffer += kept
                self.plugin_bytes += len(kept)
            if len(data) > room:
                self._start_draining(fd)
                return

    def _start_draining(self, fd: int) -> None:
        """Past the limit: discard from now on, with a big pipe buffer and ``splice``."""
        self.truncated = True
        if self.draining:
            return
        self.draining = True
        try:
            import fcntl
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _DRAIN_PIPE_SIZE)
        except (ImportError, AttributeError, OSError):
            pass

    def _drain_splice(self, fd: int) -> bool:
        """Discard pending pipe data without copying it; False to fall back to ``read``."""
        global _splice_works
        splice = getattr(os, "splice", None)
        if splice is None or not _splice_works:
            return False
        _, sink = _devnull()
        flags = getattr(os, "SPLICE_F_NONBLOCK", 0)
        try:
            for _ in range(_READS_PER_WAKEUP):
                moved = splice(fd, sink, _DRAIN_PIPE_SIZE, flags=flags)
                if moved == 0:
                    self._on_eof()
                    return True
        except BlockingIOError:
            return True
        except OSError:
            _splice_works = False       # not supported here: read and drop instead
            return False
        return True

    def _on_eof(self) -> None:
        self._stop_reading()
        self.eof = True
        self._check_done()

    def _stop_reading(self) -> None:
        if self.fd is not None:
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = None

    def _on_exit(self) -> None:
        if self.pidfd is not None:
            self.loop.remove_reader(self.pidfd)
        self.exited = True
        self._check_done()

    def _check_done(self) -> None:
        if self.exited and (self.eof or self.killed) and not self.done.done():
            self.done.set_result(None)

    # ----------------------------------------------------------------- timeout

    def _on_timeout(self) -> None:
        # Icinga writes the marker into the output stream when it sends SIGTERM, so
        # whatever the plugin prints while it dies comes after it.
        self.sent_sigterm = True
        self.buffer += b"<Timeout exceeded.>"
        _kill_group(self.pid, signal.SIGTERM)
        self.timer = self.loop.call_later(KILL_GRACE, self._on_kill_deadline)

    def _on_kill_deadline(self) -> None:
        self.timer = None
        self.kill()
        if not self.exited:
            self.timer = self.loop.call_later(_REAP_WAIT, self._give_up)

    def kill(self) -> None:
        """SIGKILL the whole group and stop reading (Icinga reads no more after it)."""
        self.killed = True
        _kill_group(self.pid, signal.SIGKILL)
        if self.fd is not None:
            self._final_read()
            self._stop_reading()
        self._check_done()

    def _final_read(self) -> None:
        """Take what is already in the pipe (non-blocking) before it is closed."""
        fd = self.fd
        while fd is not None and self.plugin_bytes < self.limit:
            try:
                data = os.read(fd, min(_READ_SIZE, self.limit - self.plugin_bytes))
            except OSError:
                return
            if not data:
                return
            self.buffer += data
            self.plugin_bytes += len(data)

    def _give_up(self) -> None:
        """The process survived SIGKILL for seconds (uninterruptible sleep): stop waiting."""
        self.timer = None
        if not self.done.done():
            self.done.set_result(None)

    # ----------------------------------------------------------------- the end

    def finish(self) -> tuple[int, bytes]:
        """Group cleanup, reaping, exit status (Icinga's rules) and the raw output."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.sent_sigterm:
            # Children that ignored SIGTERM or closed their stdout are still in the group.
            _kill_group(self.pid, signal.SIGKILL)
        self._stop_reading()
        if not self.exited:
            self._reap_later()
            return EXIT_PROCESS_FAILED, bytes(self.buffer)
        self._close_pidfd()
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            return EXIT_PROCESS_FAILED, bytes(self.buffer)
        if os.WIFSIGNALED(status):
            self.buffer += f"<Terminated by signal {_signal_text(os.WTERMSIG(status))}.>".encode()
            return EXIT_PROCESS_FAILED, bytes(self.buffer)
        if os.WIFEXITED(status) and not self.sent_sigterm:
            return os.WEXITSTATUS(status), bytes(self.buffer)
        return EXIT_PROCESS_FAILED, bytes(self.buffer)

    def abort(self) -> None:
        """The run was cancelled (executor shutting down): kill the group, reap later."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        _kill_group(self.pid, signal.SIGKILL)
        self._stop_reading()
        if self.exited:
            self._close_pidfd()
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
        else:
            self._reap_later()

    def _close_pidfd(self) -> None:
        if self.pidfd is not None:
            self.loop.remove_reader(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = None

    def _reap_later(self) -> None:
        """Leave no zombie: reap the process whenever it finally exits."""
        pid, pidfd, loop = self.pid, self.pidfd, self.loop
        self.pidfd = None

        def reap() -> None:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done == pid:
                if pidfd is not None:
                    loop.remove_reader(pidfd)
                    os.close(pidfd)
            elif pidfd is None:
                loop.call_later(1.0, reap)

        if pidfd is not None:
            loop.remove_reader(pidfd)
            loop.add_reader(pidfd, reap)
        else:
            loop.call_later(1.0, reap)


def _result(exit_status: int, raw: bytes, start: float, *, timed_out: bool = False,
            truncated: bool = False, limit: int = 0, error: str | None = None) -> PluginResult:
    decoded = raw.decode("utf-8", "replace")
    text, perfdata = parse_plugin_output(decoded)
    as_written = decoded.rstrip()
    raw_output = None if truncated or as_written == rebuilt_output(text, perfdata) \
        else as_written
    if truncated:
        text += f"\n<Output truncated: the plugin wrote more than {limit} bytes.>"
    return PluginResult(exit_status, text, perfdata, start, time.time(), timed_out,
                        truncated, error, raw_output)


async def run_plugin(argv: Sequence[str], *, timeout: float,
                     env: Mapping[str, Any] | None = None,
                     output_limit: int = DEFAULT_OUTPUT_LIMIT) -> PluginResult:
    """Run ``argv`` and return its result; plugin problems never raise.

    Args:
        argv: program and arguments (no shell); ``argv[0]`` without ``/`` is searched
            in the plugin's ``PATH``.
        timeout: seconds until the process group is terminated (``<= 0``: Icinga's
            "no timeout" is not offered; it is taken as an immediate timeout).
        env: variables added to the minimal environment (``PATH``, ``LANG=C``).
        output_limit: bytes of output kept; more is discarded and ``truncated`` set.

    Returns:
        A :class:`PluginResult`. Cancelling the call kills the plugin's process group.
    """
    start = time.time()
    args = [str(arg) for arg in argv]
    if not args or not args[0]:
        return PluginResult(EXIT_PROCESS_FAILED, "Invalid check command: empty command line.",
                            [], start, start, error="invalid request")
    environment = plugin_environment(env)
    program = _find_program(args[0], environment.get("PATH", DEFAULT_PATH))
    limit = max(int(output_limit), 0)
    loop = asyncio.get_running_loop()
    read_fd, write_fd = os.pipe()
    try:
        pid = _spawn(program, args, environment, write_fd)
    except (OSError, ValueError) as error:
        # ValueError: a NUL byte in an argument or a variable (a parent's macro); it
        # used to escape with both pipe ends open: two descriptors leaked a check.
        os.close(read_fd)
        os.close(write_fd)
        why = (error.strerror if isinstance(error, OSError) else None) or str(error)
        # What Icinga's forked child prints with perror() before _exit(128).
        output = f"execvpe({args[0]}) failed: {why}"
        return PluginResult(EXIT_PROCESS_FAILED, output, [], start, time.time(),
                            error=f"spawn failed: {why}")
    os.close(write_fd)
    process = _PluginProcess(loop, pid, read_fd, limit)
    process.start(loop.time() + max(float(timeout), 0.0))
    try:
        await process.done
    except BaseException:
        process.abort()
        raise
    exit_status, raw = process.finish()
    return _result(exit_status, raw, start, timed_out=process.sent_sigterm,
                   truncated=process.truncated, limit=limit)


def _icinga_number(value: Any) -> float:
    """Icinga's ``Value`` to number: empty is 0, booleans 0/1, strings parsed."""
    if value is None or value == "":
        return 0.0
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        raise ValueError(f"Can't convert '{value}' to a floating point number.") from None


def run_internal_dummy(macros: Mapping[str, Any]) -> PluginResult:
    """The ``dummy`` check, in-process (Icinga ``DummyCheckTask``).

    The state (and exit status) is ``dummy_state``, the output is ``dummy_text`` parsed
    for performance data but not trimmed; a missing macro counts as empty (0 and "").
    """
    now = time.time()
    try:
        state = int(_icinga_number(macros.get("dummy_state")))
    except ValueError as error:
        return PluginResult(3, f"Exception occurred while checking: {error}", [], now, now,
                            error="invalid macro")
    text = format_value(macros.get("dummy_text"))
    output, perfdata = parse_check_output(text)
    return PluginResult(state, output, split_perfdata(perfdata), now, now)
