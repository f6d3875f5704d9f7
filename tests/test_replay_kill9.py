"""``kill -9`` of a real ``router serve`` process while its replay log fills up.

Satellite sat1 (parent zone master, no address for master: the parent dials in) runs as a
subprocess. A scripted agent streams TOTAL check results with sequential outputs
``r0, r1, ...`` while the parent is away, so every one goes to the replay log of zone
master. Once the log holds more than half of them the test reads the committed count R
(``router_replay_log_records{zone="master"}``: records in committed LMDB transactions)
and SIGKILLs the process at once, with traffic still flowing.

What may be lost is the writer's open window (replaylog/README.md, "Durability"): the
records submitted but not yet committed, at most one group-commit batch (1000 records or
5 ms) plus whatever the writer was behind, and whatever the process had read off the
socket but not yet routed. What must hold:

- the log opens after the kill (``ReplayStore(readonly=True)``: not corrupt) and holds
  S >= R records, which are ``r0 .. r(S-1)``: a commit is atomic, so the log is a gap-free
  prefix of what the agent sent;
- a restarted process (same config, same data dir) reports the same S records;
- a scripted parent connecting to it receives exactly ``r0 .. r(S-1)``: every committed
  message exactly once, in order, with non-decreasing ``ts``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import orjson
import pytest

from replaylog import ReplayStore
from tests.interop.routerutil import metric_value
from tests.nodeutil import ClusterSpec, FakePeer, check_result, free_port, http_get, wait_until
from tests.pkiutil import make_test_pki

pytestmark = pytest.mark.timeout(120)

TOTAL = 20_000
#: Results sent per burst, and the pause between bursts: up to 50 000 results/s offered,
#: more than the node takes in here, so the kill (at half) lands
#: in the middle of the traffic, usually inside a group-commit batch.
BURST = 500
PAUSE = 0.01


def _metrics(port: int) -> str:
    code, body = http_get(port, "/metrics")
    assert code == 200, body
    return body.decode()


class RouterProcess:
    """``python -m router serve --config FILE`` as a child process."""

    def __init__(self, config: Path, status_port: int, log_path: Path) -> None:
        self.config = config
        self.status_port = status_port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20) -> None:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "router", "serve", "--config", str(self.config)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=Path(__file__).resolve().parent.parent)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"router exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if http_get(self.status_port, "/v1/status")[0] == 200:
                    return
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"router not ready after {timeout}s:\n{self.tail()}")
            time.sleep(0.05)

    def metric(self, name: str, **labels: str) -> float:
        return metric_value(_metrics(self.status_port), name, **labels)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 15) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""


def _outputs(peer: FakePeer) -> list[str]:
    return [m["params"]["cr"]["output"] for m in peer.messages("event::CheckResult")]


def test_kill_9_during_heavy_traffic_loses_no_committed_message(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path / "pki", ["master", "sat1", "agent1"])
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("sat", ["sat1"], "master"),
                                       ("agent1", ["agent1"], "sat")])
    status_port = free_port()
    text = spec.toml("sat1")
    # info, not debug: per-message debug lines would slow the node down, not the log.
    text = text.replace('log_level = "debug"', 'log_level = "info"')
    text = text.replace('status_listen = "127.0.0.1:0"',
                        f'status_listen = "127.0.0.1:{status_port}"')
    assert f"127.0.0.1:{status_port}" in text and "addresses" not in text
    (tmp_path / "sat1").mkdir()
    config = tmp_path / "sat1.toml"
    config.write_text(text)
    router = RouterProcess(config, status_port, tmp_path / "router.out")
    port = spec.port("sat1")

    async def traffic_then_kill() -> tuple[float, int]:
        agent = await FakePeer.connect(port, pki, "agent1", server_name="sat1")
        sent = 0

        async def send_all() -> None:
            nonlocal sent
            try:
                while sent < TOTAL:
                    for i in range(sent, min(sent + BURST, TOTAL)):
                        agent.send("event::CheckResult",
                                   check_result("agent1", "svc", f"r{i}"))
                    sent = min(sent + BURST, TOTAL)
                    await agent.writer.drain()
                    await asyncio.sleep(PAUSE)
            except (ConnectionError, OSError):
                pass  # the router died under us

        sender = asyncio.ensure_future(send_all())
        committed = 0.0
        while committed <= TOTAL / 2:
            text = await asyncio.to_thread(_metrics, status_port)
            committed = metric_value(text, "router_replay_log_records", zone="master")
            assert not sender.done() or sent == TOTAL
        router.kill()  # SIGKILL right after reading R: the store holds at least R
        try:
            await asyncio.wait_for(sender, 10)  # it ends on the broken connection
        except TimeoutError:
            pass
        await agent.close()
        return committed, sent

    async def collect_replay(expected: int) -> list[dict]:
        master = await FakePeer.connect(port, pki, "master", server_name="sat1")
        await wait_until(lambda: len(_outputs(master)) >= expected, timeout=30,
                         what=f"{expected} replayed results at the parent")
        await asyncio.sleep(0.5)  # anything extra (a duplicate) would arrive by now
        got = master.messages("event::CheckResult")
        await master.close()
        return got

    router.start()
    try:
        started = time.monotonic()
        committed, sent = asyncio.run(asyncio.wait_for(traffic_then_kill(), 60))
        traffic_seconds = time.monotonic() - started
        r = int(committed)
        assert r > TOTAL / 2
        # The kill landed while the agent was still sending.
        assert sent < TOTAL, f"traffic over before the kill ({traffic_seconds:.1f} s)"

        # The log opens after the kill and holds a gap-free prefix of what was sent.
        with ReplayStore(tmp_path / "sat1" / "replaylog", readonly=True) as store:
            stored = store.total_records
            records = list(store.iter_from("master", after_ts=0.0))
        assert stored >= r, (stored, r)
        assert len(records) == stored
        seqs = [rec.seq for rec in records]
        assert seqs == sorted(set(seqs))
        in_store = [_frame_output(rec.frame) for rec in records]
        assert in_store == [f"r{i}" for i in range(stored)]
        assert stored <= sent

        router.start()
        assert router.metric("router_replay_log_records", zone="master") == stored
        got = asyncio.run(asyncio.wait_for(collect_replay(stored), 60))
        outputs = [m["params"]["cr"]["output"] for m in got]
        # Every committed message exactly once, in order; nothing beyond the log.
        assert len(outputs) == stored, (len(outputs), stored)
        assert outputs == [f"r{i}" for i in range(stored)]
        stamps = [m["ts"] for m in got]
        assert stamps == sorted(stamps)
        assert router.metric("router_replay_replayed_total", endpoint="master") == stored
        print(f"kill -9 at R={r} committed (sent {sent} of {TOTAL}); log after the kill "
              f"{stored}; replayed {len(outputs)}")
    finally:
        router.terminate()
    assert router.proc is not None and router.proc.returncode == 0, router.tail()


def _frame_output(frame: bytes) -> str:
    payload = frame[frame.index(b":") + 1:-1]
    return orjson.loads(payload)["params"]["cr"]["output"]
