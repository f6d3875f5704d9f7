"""docs/operations.md (Logs): "A line that repeats (same logger, level and text) is written
once per minute; the repeats are summarised when the minute is over: ... [repeated 1 200
times in 60 s]". RepeatFilter only writes a summary from inside filter(), i.e. when a
later record comes along after the window (or from flush(), which nothing in the
product calls). A burst of identical errors followed by a stop (often the very reason
the operator restarts the node) is never summarised: the journal shows the line once
and nothing says it happened N more times."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

from tests.nodeutil import ClusterSpec
from tests.pkiutil import make_test_pki


def receive(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n"))


def test_repeats_before_a_stop_are_summarised(tmp_path) -> None:
    pki = make_test_pki(tmp_path / "pki", ["master"])
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None)])
    spec.config("master")
    config = tmp_path / "master.toml"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(20)
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")}
    stderr_path = tmp_path / "stderr.txt"
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "router", "serve", "--config",
                                 str(config)], env=env, stdout=subprocess.DEVNULL,
                                stderr=stderr)
    try:
        def until_ready() -> dict[str, str]:
            while True:
                fields = receive(sock)
                if "READY" in fields:
                    return fields

        until_ready()
        config.write_text(config.read_text() + "\n[[[ this is not TOML\n")
        for _ in range(5):                 # five identical refusals, one at a time
            proc.send_signal(signal.SIGHUP)
            assert until_ready()["STATUS"].startswith("reload refused")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()
    lines = [line for line in stderr_path.read_text().splitlines()
             if "reload (SIGHUP) refused" in line]
    assert lines, stderr_path.read_text()[-3000:]
    assert len(lines) == 1 or any("repeated" in line for line in lines), lines
    assert any("[repeated 4 times" in line for line in lines), (
        "five identical 'reload refused' errors, then the node stopped: the log shows "
        f"the line once and never says it repeated 4 more times: {lines}")
