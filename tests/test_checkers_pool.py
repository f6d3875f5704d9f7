"""Check pool: real executor processes over the Unix socket (asyncio and uvloop)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from checkers.catalog import Catalog
from checkers.messages import CheckOutcome, CheckRequest, outcome_to_cr
from checkers.pool import SOCKET_NAME, CheckerPool
from checkers.wire import FrameReader, frame
from checkers.errors import InvalidState



@pytest.fixture
def sockdir() -> Iterator[str]:
    # short on purpose: Unix socket paths are limited to ~104 bytes
    path = tempfile.mkdtemp(prefix="ckp-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)




@pytest.fixture
def pid_file(tmp_path: Path) -> Iterator[Path]:
    """Sleeper plugins append their pid here; whatever is still alive is killed after."""
    path = tmp_path / "pids"
    yield path
    if path.exists():
        for line in path.read_text().split():
            try:
                os.killpg(int(line), signal.SIGKILL)
            except (ProcessLookupError, PermissionError, ValueError):
                pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as file:
            state = file.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def _sleeper(plugins: Path, seconds: float, pid_file: Path | None = None,
             timeout: float = 60) -> CheckRequest:
    argv = [str(plugins / "sleeper.sh"), str(seconds)]
    if pid_file is not None:
        argv.append(str(pid_file))
    return CheckRequest(argv=tuple(argv), timeout=timeout)


def _quick(plugins: Path) -> CheckRequest:
    return CheckRequest(argv=(str(plugins / "ok_perf.sh"),), timeout=10)


async def _until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def _pids(pid_file: Path) -> list[int]:
    return [int(line) for line in pid_file.read_text().split()] if pid_file.exists() else []


# --------------------------------------------------------------------------- throughput


def test_200_quick_checks_through_two_workers(run, sockdir: str, plugins: Path) -> None:
    async def scenario() -> tuple[list[CheckOutcome], dict]:
        pool = CheckerPool(sockdir, workers=2)
        await pool.start()
        try:
            outcomes = await asyncio.gather(*(pool.run(_quick(plugins)) for _ in range(200)))
            return outcomes, pool.stats()
        finally:
            await pool.close()

    outcomes, stats = run(scenario())
    assert len(outcomes) == 200
    assert {(o.state, o.exit_status, o.error) for o in outcomes} == {(0, 0, None)}
    assert all(o.performance_data == ["time=0.25s;1;2;0;", "size=1024B;;;0"] for o in outcomes)
    assert all(o.command == [str(plugins / "ok_perf.sh")] for o in outcomes)
    assert stats["executed"] == 200 and stats["running"] == 0 and stats["queued"] == 0
    per_executor = [e["executed"] for e in stats["executors"]]
    assert sum(per_executor) == 200 and min(per_executor) > 0
    assert stats["queue_wait_seconds"]["count"] == 200
    assert stats["queue_wait_seconds"]["buckets"]["+Inf"] == 200
    assert {o.executor for o in outcomes} == {0, 1}


def test_least_loaded_dispatch(run, sockdir: str, plugins: Path, pid_file: Path) -> None:
    async def scenario() -> None:
        pool = CheckerPool(sockdir, workers=2, per_worker_inflight=8)
        await pool.start()
        try:
            slow = asyncio.ensure_future(pool.run(_sleeper(plugins, 1.0, pid_file)))
            await _until(lambda: pool.stats()["running"] == 1)
            busy = next(e["index"] for e in pool.stats()["executors"] if e["inflight"])
            # while one executor holds the slow check, every quick one goes to the other
            for _ in range(5):
                outcome = await pool.run(_quick(plugins))
                assert outcome.state == 0 and outcome.executor == 1 - busy
            # four more slow checks spread out: 1+1 -> 2+2 -> 3+2 ... never 4+0
            more = [asyncio.ensure_future(pool.run(_sleeper(plugins, 0.3, pid_file)))
                    for _ in range(3)]
            await _until(lambda: pool.stats()["running"] == 4)
            assert sorted(e["inflight"] for e in pool.stats()["executors"]) == [2, 2]
            assert {o.state for o in await asyncio.gather(slow, *more)} == {0}
        finally:
            await pool.close()

    run(scenario())


def test_queue_overflow_is_answered_at_once(run, sockdir: str, plugins: Path,
                                            pid_file: Path) -> None:
    async def scenario() -> None:
        pool = CheckerPool(sockdir, workers=1, max_concurrent=2, max_queue=3)
        await pool.start()
        try:
            tasks = [asyncio.ensure_future(pool.run(_sleeper(plugins, 0.4, pid_file)))
                     for _ in range(5)]
            await _until(lambda: pool.stats()["queued"] == 3)
            assert pool.stats()["running"] == 2
            started = time.monotonic()
            rejected = await pool.run(_sleeper(plugins, 0.4, pid_file))
            assert time.monotonic() - started < 0.1           # no waiting for a slot
            assert rejected.state == 3 and rejected.exit_status == 3
            assert rejected.error == "check queue full"
            assert rejected.output.startswith("Check queue full")
            assert rejected.command == [str(plugins / "sleeper.sh"), "0.4", str(pid_file)]
            accepted = await asyncio.gather(*tasks)
            assert [o.state for o in accepted] == [0] * 5
            assert max(o.queue_wait for o in accepted) >= 0.3  # the queued ones waited
            stats = pool.stats()
            assert stats["overflow"] == 1 and stats["executed"] == 5
            buckets = stats["queue_wait_seconds"]["buckets"]
            assert buckets["0.1"] == 2 and buckets["+Inf"] == 5
        finally:
            await pool.close()

    run(scenario())


# --------------------------------------------------------------------------- failures


def test_executor_killed_mid_check(run, sockdir: str, plugins: Path, pid_file: Path) -> None:
    async def scenario() -> None:
        pool = CheckerPool(sockdir, workers=2, per_worker_inflight=4)
        await pool.start()
        try:
            tasks = [asyncio.ensure_future(pool.run(_sleeper(plugins, 20, pid_file)))
                     for _ in range(4)]
            await _until(lambda: len(_pids(pid_file)) == 4)      # all four plugins run
            executors = pool.stats()["executors"]
            assert [e["inflight"] for e in executors] == [2, 2]
            victim = executors[0]["pid"]
            os.kill(victim, signal.SIGKILL)
            done, _ = await asyncio.wait(tasks, timeout=5, return_when=asyncio.FIRST_COMPLETED)
            await _until(lambda: sum(t.done() for t in tasks) == 2, timeout=5)
            lost = [t.result() for t in tasks if t.done()]
            assert len(lost) == 2
            for outcome in lost:
                assert outcome.state == 3 and outcome.error == "executor lost"
                assert "executor lost" in outcome.output.lower()
                assert outcome.executor == 0
            assert pool.stats()["lost"] == 2
            # restarted with a new process, and usable again
            await _until(lambda: pool.stats()["restarts"] == 1
                         and pool.stats()["workers_ready"] == 2, timeout=10)
            assert pool.stats()["executors"][0]["pid"] != victim
            for _ in range(4):
                assert (await pool.run(_quick(plugins))).state == 0
            # the other executor's checks are unaffected: still running
            assert sum(t.done() for t in tasks) == 2
            await pool.close(drain_timeout=0.2)
            rest = [t.result() for t in tasks if t not in done]
            assert all(o.error in ("shutdown", "executor lost") for o in rest)
            assert any(o.error == "shutdown" for o in rest)
        finally:
            await pool.close(0)

    run(scenario())


def test_timeouts_are_counted(run, sockdir: str, plugins: Path) -> None:
    async def scenario() -> tuple[CheckOutcome, dict]:
        pool = CheckerPool(sockdir, workers=1)
        await pool.start()
        try:
            outcome = await pool.run(_sleeper(plugins, 10, timeout=0.3))
            return outcome, pool.stats()
        finally:
            await pool.close()

    outcome, stats = run(scenario())
    assert outcome.timed_out and outcome.state == 3 and outcome.exit_status == 128
    assert "<Timeout exceeded.>" in outcome.output
    assert stats["timeouts"] == 1 and stats["executed"] == 1


def test_missing_plugin_through_the_pool(run, sockdir: str, tmp_path: Path) -> None:
    async def scenario() -> CheckOutcome:
        pool = CheckerPool(sockdir, workers=1)
        await pool.start()
        try:
            return await pool.run(CheckRequest(argv=(str(tmp_path / "check_gone"),)))
        finally:
            await pool.close()

    outcome = run(scenario())
    assert (outcome.state, outcome.exit_status) == (3, 128)
    assert outcome.output == f"execvpe({tmp_path / 'check_gone'}) failed: No such file or directory"
    assert outcome.error.startswith("spawn failed")


# --------------------------------------------------------------------------- shutdown


def test_close_drains_running_and_queued_checks(run, sockdir: str, plugins: Path,
                                                 pid_file: Path) -> None:
    async def scenario() -> None:
        pool = CheckerPool(sockdir, workers=2, max_concurrent=2)
        await pool.start()
        pids = [e["pid"] for e in pool.stats()["executors"]]
        tasks = [asyncio.ensure_future(pool.run(_sleeper(plugins, 0.3, pid_file)))
                 for _ in range(4)]
        await _until(lambda: pool.stats()["running"] == 2)
        assert pool.stats()["queued"] == 2
        # a second, impatient close waits for the first one's drain instead of cutting it
        await asyncio.gather(pool.close(drain_timeout=10), pool.close(drain_timeout=0))
        outcomes = [t.result() for t in tasks]
        assert [(o.state, o.error) for o in outcomes] == [(0, None)] * 4
        assert pool.stats()["state"] == "closed"
        assert not any(_alive(pid) for pid in pids)
        assert not os.path.exists(os.path.join(sockdir, SOCKET_NAME))
        late = await pool.run(_quick(plugins))
        assert late.state == 3 and late.error == "shutdown"
        await pool.close()                                   # idempotent

    run(scenario())


def test_close_after_drain_timeout_answers_the_rest(run, sockdir: str, plugins: Path,
                                                    pid_file: Path) -> None:
    async def scenario() -> None:
        pool = CheckerPool(sockdir, workers=1, max_concurrent=1)
        await pool.start()
        tasks = [asyncio.ensure_future(pool.run(_sleeper(plugins, 20, pid_file)))
                 for _ in range(2)]
        await _until(lambda: len(_pids(pid_file)) == 1)
        started = time.monotonic()
        await pool.close(drain_timeout=0.2)
        assert time.monotonic() - started < 5
        running, queued = (t.result() for t in tasks)
        assert (running.state, running.error) == (3, "shutdown")
        assert "before the check finished" in running.output
        assert (queued.state, queued.error) == (3, "shutdown")
        assert "before the check started" in queued.output
        # the executor killed its plugin's process group on the way out
        pid = _pids(pid_file)[0]
        await _until(lambda: not _alive(pid), timeout=3)

    run(scenario())


def test_run_before_start_is_a_bug(run, sockdir: str, plugins: Path) -> None:
    async def scenario() -> None:
        with pytest.raises(InvalidState):
            await CheckerPool(sockdir, workers=1).run(_quick(plugins))

    run(scenario())


# --------------------------------------------------------------------------- results


def test_dummy_runs_in_process_and_cr_shape(run, sockdir: str) -> None:
    async def scenario() -> tuple[CheckOutcome, dict]:
        pool = CheckerPool(sockdir, workers=1)
        await pool.start()
        try:
            request = Catalog.load().build("dummy", {"dummy_state": 2,
                                                     "dummy_text": "Host down|rta=0ms"})
            outcome = await pool.run(request)
            return outcome, pool.stats()
        finally:
            await pool.close()

    outcome, stats = run(scenario())
    assert (outcome.state, outcome.exit_status, outcome.output) == (2, 2, "Host down")
    assert outcome.executor is None and outcome.command == "dummy"
    assert stats["executed"] == 1 and stats["executors"][0]["executed"] == 0
    cr = outcome_to_cr(outcome, check_source="agent1", schedule_start=10.0,
                       schedule_end=11.0, is_host=True)
    assert list(cr) == sorted(cr)                      # Icinga's key order
    assert cr == {
        "active": True, "check_source": "agent1", "command": "dummy",
        "execution_end": outcome.execution_end, "execution_start": outcome.execution_start,
        "exit_status": 2, "output": "Host down", "performance_data": ["rta=0ms"],
        "previous_hard_state": 0, "schedule_end": 11.0, "schedule_start": 10.0,
        "scheduling_source": "agent1",
        "state": 2,             # a ServiceState, also for hosts: the receiver maps it to DOWN
        "ttl": 0, "type": "CheckResult", "vars_after": None, "vars_before": None}
    orjson.dumps(cr)


def test_cr_always_has_performance_data() -> None:
    outcome = CheckOutcome.unknown("Check queue full", error="check queue full", now=5.0,
                                   command=["/bin/x"])
    cr = outcome_to_cr(outcome, check_source="a", schedule_start=1.0, schedule_end=2.0,
                       vars_before={"state": 0}, vars_after={"state": 3},
                       scheduling_source="master")
    assert cr["performance_data"] == [] and cr["state"] == 3 and cr["exit_status"] == 3
    assert cr["scheduling_source"] == "master" and cr["command"] == ["/bin/x"]
    assert (cr["vars_before"], cr["vars_after"]) == ({"state": 0}, {"state": 3})


# --------------------------------------------------------------------------- the wire


def test_executor_protocol_by_hand(tmp_path: Path, plugins: Path, sockdir: str) -> None:
    """Speak the documented frame protocol to one executor, without the pool."""
    path = os.path.join(sockdir, "hand.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    server.settimeout(15)
    process = subprocess.Popen([sys.executable, "-m", "checkers.worker", "--socket", path,
                                "--max-inflight", "2"],
                               env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    try:
        conn, _ = server.accept()
        conn.settimeout(15)
        reader = FrameReader()
        messages: list[dict] = []

        def receive(count: int) -> list[dict]:
            while len(messages) < count:
                data = conn.recv(65536)
                assert data, "executor closed the socket"
                messages.extend(reader.feed(data))
            taken = messages[:count]
            del messages[:count]
            return taken

        (hello,) = receive(1)
        assert hello == {"op": "hello", "version": 1, "pid": process.pid, "max_inflight": 2}
        conn.sendall(frame({"id": 1, "argv": [str(plugins / "multiline.sh")], "env": {},
                            "timeout": 10, "output_limit": 1 << 20})
                     + frame({"id": 2, "internal": "dummy",
                              "macros": {"dummy_state": 1, "dummy_text": "meh"}})
                     + frame({"id": 3, "argv": "not a list"}))
        replies = {reply["id"]: reply for reply in receive(3)}
        # multiline.sh has performance data on its first line and more lines after
        # it: output|perfdata is not what it wrote, so the reply carries that too.
        assert set(replies[1]) == {"id", "exit_status", "output", "performance_data",
                                   "execution_start", "execution_end", "timed_out",
                                   "truncated", "error", "raw_output"}
        assert replies[1]["exit_status"] == 1 and len(replies[1]["performance_data"]) == 4
        assert (replies[2]["exit_status"], replies[2]["output"]) == (1, "meh")
        assert replies[3]["exit_status"] == 3 and replies[3]["error"] == "invalid request"
        conn.sendall(frame({"op": "shutdown"}))
        assert process.wait(timeout=10) == 0
        conn.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        server.close()
