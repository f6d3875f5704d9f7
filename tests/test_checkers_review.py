"""Check execution after a review (2026-12-07); each test failed on the code before
its fix.

- Plugins run in sessions of their own, so when the pool killed an executor (its
  watchdog) or one crashed, its plugins ran on for ever: now the pool kills every
  process carrying that executor's mark (``checkers.runner.EXECUTOR_MARK``).
- 100 KB of output with a ``check_multi`` prefix became 70 MB of performance data, a
  reply the pool refused: the executor was killed with every check it ran.
- A NUL byte in a parent's macro leaked two descriptors a check in the executor.
- A check run on a command endpoint was abandoned after a fixed 90 s, whatever its
  command's timeout (Icinga waits the timeout and 30 s).
- An API execution's deadline was checked when it arrived, not when it left the queue:
  one that waited past it still ran and was answered to a requester that gave up.
- An agent resolved ``$`` again inside macro values its parent had resolved: a regex
  ``^OK$`` failed, a password ``pa$$w0rd`` was changed (Icinga takes them as sent).
- ``event::ExecutedCommand`` carried ``output|perfdata`` rebuilt from the parsed result:
  multi-line output with performance data on its first line came back reordered.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

import router.features.checks as checks_module
from checkers.catalog import Catalog
from checkers.messages import CheckOutcome, CheckRequest
from checkers.output import parse_plugin_output
from checkers.pool import CheckerPool
from checkers.runner import run_plugin
from router.config import CheckSpec
from router.features.checks import LocalChecks
from router.features.commands import CommandExecutor
from router.features.scheduler import Scheduler
from tests.test_checkers_pool import _alive, pid_file, sockdir

__all__ = ["pid_file", "sockdir"]  # fixtures, imported to be found by pytest


def write_plugin(directory: Path, name: str, body: str) -> Path:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


async def until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def pids(pid_file: Path) -> list[int]:
    return [int(x) for x in pid_file.read_text().split()] if pid_file.exists() else []


def lose_the_executor(run, sockdir: str, tmp_path: Path, pid_file: Path, sig: int,
                      timeout: float) -> tuple[Any, list[int]]:
    """A plugin that never ends, then ``sig`` to its executor; the check's outcome and
    the plugins still alive once the outcome came and ``settle`` passed."""
    plugin = write_plugin(tmp_path, "hang.sh", f'echo $$ >> "{pid_file}"\nexec sleep 300\n')

    async def scenario():
        pool = CheckerPool(sockdir, workers=1)
        await pool.start()
        try:
            task = asyncio.ensure_future(pool.run(CheckRequest(argv=(str(plugin),),
                                                               timeout=timeout)))
            await until(lambda: len(pids(pid_file)) == 1)
            os.kill(pool.stats()["executors"][0]["pid"], sig)
            outcome = await asyncio.wait_for(task, 30)
            try:
                await until(lambda: not [p for p in pids(pid_file) if _alive(p)], 5)
            except AssertionError:
                pass
            return outcome, [pid for pid in pids(pid_file) if _alive(pid)]
        finally:
            await pool.close(0)

    return run(scenario(), timeout=60)


@pytest.mark.slow
def test_plugins_of_a_hung_executor_are_killed(run, sockdir: str, tmp_path: Path,
                                              pid_file: Path) -> None:
    """A hung executor (SIGSTOP stands in for a blocked loop) is killed by the watchdog
    after a 1 s check timeout; its plugin must not outlive it."""
    outcome, survivors = lose_the_executor(run, sockdir, tmp_path, pid_file,
                                           signal.SIGSTOP, 1)
    assert outcome.state == 3 and outcome.error == "executor lost"
    assert survivors == [], survivors


def test_plugins_of_a_crashed_executor_are_killed(run, sockdir: str, tmp_path: Path,
                                                 pid_file: Path) -> None:
    outcome, survivors = lose_the_executor(run, sockdir, tmp_path, pid_file,
                                           signal.SIGKILL, 2)
    assert outcome.error == "executor lost"
    assert survivors == [], survivors


PREFIX = "A" * 100_000


def test_parsed_output_stays_bounded() -> None:
    raw = f"OK|p::x=1 {PREFIX}::a=1 " + "b=1 " * 700
    assert len(raw.encode()) < (1 << 20)                 # within the default output_limit
    _, perfdata = parse_plugin_output(raw)
    assert sum(len(item) for item in perfdata) <= 2 * len(raw) + 4096
    assert perfdata[:2] == ["p::x=1", f"{PREFIX}::a=1"]  # what fits is kept


def test_one_plugins_output_does_not_take_down_its_executor(run, sockdir: str,
                                                            tmp_path: Path) -> None:
    bomb = write_plugin(tmp_path, "bomb.sh", f"printf 'OK|p::x=1 {PREFIX}::a=1 '\n"
                        "i=0; while [ $i -lt 700 ]; do printf 'b=1 '; i=$((i+1)); done\n")
    sleeper = write_plugin(tmp_path, "sleeper.sh", "sleep 3; echo 'OK - slept'\n")

    async def scenario():
        pool = CheckerPool(sockdir, workers=1)
        await pool.start()
        try:
            innocent = asyncio.ensure_future(pool.run(CheckRequest(argv=(str(sleeper),),
                                                                   timeout=30)))
            await until(lambda: pool.stats()["running"] == 1)
            result = await pool.run(CheckRequest(argv=(str(bomb),), timeout=30))
            return result, await innocent, pool.stats()
        finally:
            await pool.close()

    result, other, stats = run(scenario())
    assert other.error is None and other.state == 0, other.output
    assert result.error != "executor lost", result.output
    assert stats["lost"] == 0 and stats["restarts"] == 0, stats


def test_a_nul_byte_in_an_argument_neither_raises_nor_leaks(run, sockdir: str) -> None:
    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def direct() -> tuple[list[Any], int, int]:
        await run_plugin(["/bin/true"], timeout=5)          # the process-wide /dev/null fds
        before = fds()
        outcomes = [await run_plugin(["/bin/echo", "a\x00b"], timeout=5) for _ in range(20)]
        return outcomes, before, fds()

    outcomes, before, after = run(direct())
    assert after == before
    assert outcomes[0].state == 3 and "embedded null byte" in outcomes[0].output

    catalog = Catalog.load()

    async def pooled() -> tuple[int, int]:
        pool = CheckerPool(sockdir, workers=1)
        await pool.start()
        try:
            pid = pool.stats()["executors"][0]["pid"]
            await pool.run(catalog.build("users", {}, use_defaults=True))
            start = len(os.listdir(f"/proc/{pid}/fd"))
            for _ in range(50):
                await pool.run(catalog.build("disk", {"disk_partitions": ["/\x00x"]},
                                             use_defaults=True))
            return start, len(os.listdir(f"/proc/{pid}/fd"))
        finally:
            await pool.close()

    start, end = run(pooled())
    assert end - start < 10, (start, end)


class FakeNode:
    name = "master"
    connected_names = {"agent1"}

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, str]] = []
        self.originated: list[tuple[str, dict]] = []

    def send_to(self, endpoint: str, frame: bytes, method: str) -> bool:
        self.sent.append((endpoint, frame, method))
        return True

    def originate(self, method: str, params: dict) -> bool:
        self.originated.append((method, params))
        return True


def test_remote_wait_follows_the_command_timeout(run, monkeypatch) -> None:
    catalog = Catalog.loads('[commands.slow]\ncommand = ["check_dummy", "0"]\ntimeout = 120\n')
    spec = CheckSpec(host="agent1", service="slow", command="slow", command_endpoint="agent1")
    seen: list[float] = []
    real_timeout = asyncio.timeout

    def recording_timeout(delay):
        seen.append(delay)
        return real_timeout(0.05)              # do not actually wait minutes

    async def scenario() -> None:
        node = FakeNode()
        scheduler = Scheduler([spec], local_endpoint="master", zone_endpoints=["master"],
                              started=time.time())
        checks = LocalChecks(node, scheduler, None, catalog)   # type: ignore[arg-type]
        monkeypatch.setattr(checks_module.asyncio, "timeout", recording_timeout)
        try:
            await checks._run_remote(spec)
        finally:
            monkeypatch.setattr(checks_module.asyncio, "timeout", real_timeout)

    run(scenario())
    assert seen and seen[0] >= 120 + checks_module.REMOTE_GRACE, \
        f"the remote check of a 120 s command is abandoned after {seen[0]:g} s"


def test_expired_api_execution_is_not_run_after_waiting_in_the_queue(
        run, sockdir: str, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    plugin = write_plugin(tmp_path, "touch.sh", f'touch "{marker}"; echo "OK - ran"\n')
    slow = write_plugin(tmp_path, "slow.sh", "sleep 2; echo OK\n")
    catalog = Catalog.loads(f'[commands.mark]\ncommand = ["{plugin}"]\n')

    async def scenario():
        pool = CheckerPool(sockdir, workers=1, max_concurrent=1)
        await pool.start()
        try:
            executor = CommandExecutor("agent1", pool, catalog)
            busy = asyncio.ensure_future(pool.run(CheckRequest(argv=(str(slow),),
                                                               timeout=10)))
            await until(lambda: pool.stats()["running"] == 1)
            params = {"command": "mark", "command_type": "check_command", "host": "agent1",
                      "macros": {}, "source": "0f0e0d0c-0000-4000-8000-000000000001",
                      "deadline": time.time() + 0.5, "endpoint": "agent1"}
            payload = await executor.execute(params, "master")
            await busy
            return payload, pool.stats()
        finally:
            await pool.close()

    payload, stats = run(scenario())
    assert stats["expired"] == 1, stats
    assert not marker.exists(), "the command ran although its deadline passed in the queue"
    assert payload is None, payload


class RecordingPool:
    def __init__(self) -> None:
        self.requests: list[CheckRequest] = []

    async def run(self, request: CheckRequest) -> CheckOutcome:
        self.requests.append(request)
        now = time.time()
        return CheckOutcome(0, 0, "HTTP OK", [], now, now, list(request.argv))


def _execute(run, macros: dict) -> tuple[RecordingPool, dict]:
    pool = RecordingPool()
    executor = CommandExecutor("agent1", pool)        # type: ignore[arg-type]
    params = {"command": "http", "command_type": "check_command", "host": "web1",
              "service": "http", "macros": macros}
    payload = run(executor.execute(params, "master"))
    return pool, orjson.loads(payload)["params"]["cr"]


def test_dollar_in_a_resolved_value_is_passed_verbatim(run) -> None:
    pool, cr = _execute(run, {"http_address": "192.0.2.10", "http_vhost": "web1",
                              "http_expect_body_regex": "^OK$"})
    assert cr["state"] == 0, f"UNKNOWN instead of running check_http: {cr['output']!r}"
    assert pool.requests and "^OK$" in pool.requests[0].argv


def test_password_with_dollars_is_not_rewritten(run) -> None:
    pool, cr = _execute(run, {"http_address": "192.0.2.10",
                              "http_auth_pair": "monitor:pa$$w0rd"})
    assert pool.requests, cr["output"]
    argv = list(pool.requests[0].argv)
    assert argv[argv.index("-a") + 1] == "monitor:pa$$w0rd", argv


def test_api_execution_returns_the_raw_plugin_output(run, sockdir: str,
                                                    tmp_path: Path) -> None:
    plugin = write_plugin(tmp_path, "multi.sh",
                          "printf 'DISK OK|root=5;8;9\\nsecond line\\nthird line\\n'\n")
    catalog = Catalog.loads(f'[commands.multi]\ncommand = ["{plugin}"]\n')

    async def scenario():
        pool = CheckerPool(sockdir, workers=1)
        await pool.start()
        try:
            executor = CommandExecutor("agent1", pool, catalog)
            return await executor.execute(
                {"command": "multi", "command_type": "check_command", "host": "agent1",
                 "macros": {}, "source": "0f0e0d0c-0000-4000-8000-000000000002",
                 "deadline": time.time() + 60, "endpoint": "agent1"}, "master")
        finally:
            await pool.close()

    params = orjson.loads(run(scenario()))["params"]
    assert params["exit"] == 0
    assert params["output"].strip() == "DISK OK|root=5;8;9\nsecond line\nthird line"
