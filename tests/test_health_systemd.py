"""Running under systemd: sd_notify readiness, reload, stop and watchdog; the example unit."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from router.ops.sdnotify import SystemdNotifier
from tests.nodeutil import ClusterSpec
from tests.pkiutil import make_test_pki

UNIT = Path(__file__).resolve().parent.parent / "examples" / "router.service"


def listener(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    return sock


def receive(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n"))


def test_notifier_from_environ(tmp_path) -> None:
    assert SystemdNotifier.from_environ({}) is None
    assert SystemdNotifier.from_environ({"NOTIFY_SOCKET": "relative"}) is None
    sock = listener(tmp_path / "notify")
    notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "notify")})
    assert notifier is not None and notifier.watchdog_interval is None
    assert notifier.ready("serving")
    assert receive(sock) == {"READY": "1", "STATUS": "serving", "MAINPID": str(os.getpid())}
    assert notifier.reloading()
    fields = receive(sock)
    assert fields["RELOADING"] == "1" and int(fields["MONOTONIC_USEC"]) > 0
    assert notifier.stopping() and receive(sock)["STOPPING"] == "1"
    notifier.close()
    sock.close()


def test_notifier_refused_is_counted_not_raised(tmp_path) -> None:
    notifier = SystemdNotifier(str(tmp_path / "nobody-listens"))
    assert not notifier.status("x") and notifier.errors == 1
    notifier.close()


def test_abstract_socket_and_watchdog_pid() -> None:
    name = f"router-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    env = {"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "60000000"}
    notifier = SystemdNotifier.from_environ(env)
    assert notifier is not None and notifier.watchdog_interval == 30.0
    assert notifier.status("hello") and receive(sock) == {"STATUS": "hello"}
    notifier.close()
    other = SystemdNotifier.from_environ({**env, "WATCHDOG_PID": "1"})
    assert other is not None and other.watchdog_interval is None    # not ours
    other.close()
    sock.close()


def test_watchdog_pings_from_the_loop(tmp_path) -> None:
    sock = listener(tmp_path / "notify")
    notifier = SystemdNotifier(str(tmp_path / "notify"), watchdog_usec=100_000)

    async def main():
        assert notifier.start_watchdog(asyncio.get_running_loop())
        await asyncio.sleep(0.22)
        notifier.close()

    asyncio.run(main())
    pings = 0
    sock.settimeout(0.2)
    try:
        while True:
            assert receive(sock) == {"WATCHDOG": "1"}
            pings += 1
    except TimeoutError:
        pass
    assert 4 <= pings <= 6          # every 50 ms for 0.22 s, the first at once
    sock.close()


def test_serve_under_a_notify_socket(tmp_path) -> None:
    pki = make_test_pki(tmp_path / "pki", ["master"])
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None)])
    spec.config("master")
    sock = listener(tmp_path / "notify")
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify"),
           "WATCHDOG_USEC": "400000"}
    proc = subprocess.Popen([sys.executable, "-m", "router", "serve", "--config",
                             str(tmp_path / "master.toml")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        seen: list[dict[str, str]] = []

        def until(key: str) -> dict[str, str]:
            while True:
                fields = receive(sock)
                seen.append(fields)
                if key in fields:
                    return fields

        ready = until("READY")
        assert ready["MAINPID"] == str(proc.pid) and "serving as master" in ready["STATUS"]
        until("WATCHDOG")
        proc.send_signal(signal.SIGHUP)
        until("RELOADING")
        assert until("READY")["STATUS"] == "reload ok: applied"
        proc.send_signal(signal.SIGTERM)
        until("STOPPING")
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_example_unit_verifies(tmp_path) -> None:
    router = shutil.which("router") or "/usr/local/bin/router"
    if not os.access(router, os.X_OK):
        pytest.skip("no router executable to point the unit at")
    unit = tmp_path / "router.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/router", router))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if "router.service" in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr
    text = UNIT.read_text()
    for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "LimitNOFILE=",
                 "WatchdogSec=", "NoNewPrivileges=yes", "ProtectSystem=strict"):
        assert line in text
