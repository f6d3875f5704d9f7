"""Running out of file descriptors (issue 22): refused cleanly, never a crash.

A real ``router serve`` process whose RLIMIT_NOFILE (soft and hard) is lowered to
``LIMIT`` before it starts: it says at start that the limit cannot hold
``limits.max_connections``; an agent's session is established; then a flood of plain TCP
connections takes every descriptor the node would give. The newcomers beyond the
reserve are refused and counted (``router_disconnects_total{reason="out_of_fds"}``),
the agent's session is untouched and still routes, the process keeps running, and once
the flood is gone a new peer connects again.

Also: the descriptor table the node sizes at start (``reserve_fd_table``).
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import pytest

from router.app import reserve_fd_table
from tests.interop.routerutil import metric_value
from tests.nodeutil import ClusterSpec, FakePeer, check_result, free_port, http_get, wait_until
from tests.pkiutil import make_test_pki

pytestmark = pytest.mark.timeout(90)

#: the node's RLIMIT_NOFILE: room for a few dozen peers beside the node's own descriptors
LIMIT = 160
FLOOD = 200


def _lower_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))


def _metric(status_port: int, name: str, **labels: str) -> float:
    code, body = http_get(status_port, "/metrics")
    assert code == 200, body
    return metric_value(body.decode(), name, **labels)


def test_out_of_file_descriptors_refuses_newcomers_and_keeps_sessions(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path / "pki", ["master", "sat1", "agent1"])
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("sat", ["sat1"], "master"),
                                       ("agent1", ["agent1"], "sat")],
                       limits="max_unauthenticated = 100000\n"
                              "max_unauthenticated_per_address = 100000")
    status_port = free_port()
    text = spec.toml("sat1").replace('status_listen = "127.0.0.1:0"',
                                     f'status_listen = "127.0.0.1:{status_port}"')
    text = text.replace('log_level = "debug"', 'log_level = "info"')
    (tmp_path / "sat1").mkdir(exist_ok=True)
    config = tmp_path / "sat1.toml"
    config.write_text(text)
    log_path = tmp_path / "sat1.log"
    port = spec.port("sat1")
    with open(log_path, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "router", "serve", "--config",
                                 str(config)], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, preexec_fn=_lower_nofile,
                                cwd=Path(__file__).resolve().parent.parent)
    flood: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if http_get(status_port, "/v1/status")[0] == 200:
                    break
            except (OSError, urllib.error.URLError):
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        log_text = log_path.read_text()
        assert f"RLIMIT_NOFILE is {LIMIT}" in log_text, log_text
        assert "limits.max_connections = 20000" in log_text

        async def scenario() -> None:
            agent = await FakePeer.connect(port, pki, "agent1", server_name="sat1")
            await asyncio.sleep(0.3)
            # the flood: plain TCP, more than the node has descriptors for
            loop = asyncio.get_running_loop()
            for _ in range(FLOOD):
                sock = socket.socket()
                sock.setblocking(False)
                try:
                    await loop.sock_connect(sock, ("127.0.0.1", port))
                except OSError:
                    sock.close()
                    continue
                flood.append(sock)
            await wait_until(lambda: _metric(status_port, "router_disconnects_total",
                                             reason="out_of_fds") > 0, 15,
                             what="connections refused for want of descriptors")
            assert proc.poll() is None
            assert not agent.closed                     # the established session is intact
            parent = None
            # it still routes: the agent's result reaches the parent once it is back
            for sock in flood:
                sock.close()
            flood.clear()
            await asyncio.sleep(0.5)
            parent = await FakePeer.connect(port, pki, "master", server_name="sat1")
            await wait_until(lambda: bool(parent.received), 10, what="parent's hello")
            agent.send("event::CheckResult", check_result("agent1", "svc", "after the flood"),
                       ts=time.time())
            await wait_until(lambda: parent.messages("event::CheckResult"), 10,
                             what="the agent's result at the parent")
            await agent.close()
            await parent.close()

        asyncio.run(scenario())
        refused = _metric(status_port, "router_disconnects_total", reason="out_of_fds")
        assert refused > 0
        log_text = log_path.read_text()
        assert "out of file descriptors" in log_text or "file descriptors in use" in log_text
        assert "Traceback" not in log_text, log_text
    finally:
        for sock in flood:
            sock.close()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    assert proc.returncode == 0, log_path.read_text()[-3000:]


def _fd_table_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("FDSize:"):
            return int(line.split()[1])
    raise AssertionError("no FDSize in /proc/self/status")


def test_reserve_fd_table_grows_the_kernel_table_once() -> None:
    import resource
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    size = _fd_table_size()
    target = min(soft, size * 4)
    if target <= size:
        pytest.skip(f"RLIMIT_NOFILE {soft} leaves no room above the table's {size}")
    assert reserve_fd_table(target)
    assert _fd_table_size() >= target
    with pytest.raises(OSError):
        os.fstat(target - 1)                    # the probe descriptor is closed again


def test_reserve_fd_table_never_takes_a_descriptor_in_use() -> None:
    fd = os.open(os.devnull, os.O_RDONLY)
    try:
        assert not reserve_fd_table(fd + 1)     # fd is the table's top: in use
        os.fstat(fd)                            # still ours
    finally:
        os.close(fd)
