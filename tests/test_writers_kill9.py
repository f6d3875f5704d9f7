"""``kill -9`` of a real ``router serve`` (and its writers' process) with a writer backlog.

Results for InfluxDB pile up in the durable queue while InfluxDB is down; the node is
killed (SIGKILL to the node and to its writers' child) either with the whole backlog queued
or while the backlog is being written. After a restart on the same data directory InfluxDB
must hold exactly one point per result: nothing lost (the queue resumes at its confirmed
position), nothing doubled (a batch sent again has the same nanosecond timestamps).
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
import psutil
import pytest

from tests.backends import InfluxServer, influx_server  # noqa: F401
from tests.nodeutil import ClusterSpec, FakePeer, check_result, free_port, http_get, wait_until
from tests.pkiutil import make_test_pki

pytestmark = pytest.mark.timeout(180)
AGENTS = [f"agent{i}" for i in range(1, 11)]
PER_AGENT = 300


class RouterProcess:
    """``python -m router serve --config FILE`` as a child process."""

    def __init__(self, config: Path, status_port: int, log_path: Path) -> None:
        self.config, self.status_port, self.log_path = config, status_port, log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "router", "serve", "--config", str(self.config)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=Path(__file__).resolve().parent.parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"router exited: {self.log_path.read_text()[-3000:]}")
            try:
                if http_get(self.status_port, "/v1/status")[0] == 200:
                    return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        raise RuntimeError("router did not start")

    def writers(self) -> dict:
        code, body = http_get(self.status_port, "/v1/status?sections=writers")
        assert code == 200, body
        return orjson.loads(body)["writers"]

    def kill9(self) -> None:
        """SIGKILL the node and its writers' process at once."""
        assert self.proc is not None
        children = psutil.Process(self.proc.pid).children(recursive=True)
        for p in [self.proc.pid, *(c.pid for c in children)]:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)
        psutil.wait_procs(children, timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill9()


@pytest.fixture
def pki(tmp_path):
    return make_test_pki(tmp_path / "pki", ["master", *AGENTS])


def _setup(tmp_path, pki, influx: InfluxServer) -> tuple[ClusterSpec, RouterProcess]:
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       *[(a, [a], "master") for a in AGENTS]])
    status_port = free_port()
    text = spec.toml("master", extra=f"""[[writers]]
name = "influx"
type = "influxdb"
url = "{influx.url}"
flush_interval = "0.1s"
flush_threshold = 25
timeout = "2s"
""").replace('status_listen = "127.0.0.1:0"', f'status_listen = "127.0.0.1:{status_port}"')
    text = text.replace('log_level = "debug"', 'log_level = "info"')
    (tmp_path / "master").mkdir(exist_ok=True)
    config = tmp_path / "master.toml"
    config.write_text(text)
    return spec, RouterProcess(config, status_port, tmp_path / "master.log")


async def _send_all(spec: ClusterSpec, pki) -> int:
    agents = []
    for name in AGENTS:
        agent = await FakePeer.connect(spec.port("master"), pki, name, server_name="master")
        await wait_until(lambda a=agent: a.messages("icinga::Hello"), what="hello")
        agents.append(agent)
    base = time.time()
    for i in range(PER_AGENT):
        for name, agent in zip(AGENTS, agents):
            p = check_result(name, "load", f"r{i}", now=base + i * 0.001)
            p["cr"]["command"] = ["/usr/lib/nagios/plugins/check_load"]
            p["cr"]["performance_data"] = [f"load1={i}"]
            agent.send("event::CheckResult", p)
        if i % 20 == 0:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)
    for agent in agents:
        await agent.close()
    return PER_AGENT * len(AGENTS)


def _counts(influx: InfluxServer) -> dict[str, int]:
    rows = influx.query("icinga2", "SELECT count(value) FROM check_load GROUP BY hostname")
    return {s["tags"]["hostname"]: int(s["values"][0][1]) for s in rows}


@pytest.mark.slow
@pytest.mark.parametrize("when", ["backlog_full", "while_draining"])
def test_kill9_with_backlog_loses_and_doubles_nothing(tmp_path, pki, influx_server, when):
    spec, node = _setup(tmp_path, pki, influx_server)
    influx_server.stop()
    node.start()
    try:
        total = asyncio.run(_send_all(spec, pki))
        deadline = time.monotonic() + 30
        while node.writers()["influx"].get("appended", 0) < total:
            assert time.monotonic() < deadline, node.writers()
            time.sleep(0.1)
        if when == "while_draining":
            influx_server.start()
            deadline = time.monotonic() + 60
            while True:
                done = sum(_counts(influx_server).values())
                if done > 0:
                    break
                assert time.monotonic() < deadline, node.writers()
                time.sleep(0.05)
            assert done < total, "the backlog drained before the kill: make it larger"
        node.kill9()
        if when == "backlog_full":
            assert not _counts(influx_server) if influx_server.proc.poll() is None else True
            influx_server.start()
        node.start()
        deadline = time.monotonic() + 90
        while sum(_counts(influx_server).values()) < total:
            assert time.monotonic() < deadline, (node.writers(), _counts(influx_server))
            time.sleep(0.3)
        time.sleep(1.0)
        assert _counts(influx_server) == {a: PER_AGENT for a in AGENTS}
        w = node.writers()["influx"]
        assert w["backlog"] == 0 and w["evicted"] == 0
    finally:
        node.stop()
