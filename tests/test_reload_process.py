"""``router serve`` as a process: SIGHUP reloads in place, JSON logs, clean SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import orjson

from tests.nodeutil import ClusterSpec, free_port, http_get
from tests.pkiutil import make_test_pki


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_sighup_reloads_the_running_process(tmp_path):
    pki = make_test_pki(tmp_path / "pki", ["master", "agent1", "agent2"])
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("agent1", ["agent1"], "master")])
    status_port = free_port()
    spec.config("master")
    path = tmp_path / "master.toml"
    path.write_text(path.read_text().replace('status_listen = "127.0.0.1:0"',
                                             f'status_listen = "127.0.0.1:{status_port}"'))
    stderr = open(tmp_path / "stderr.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "router", "serve", "--config", str(path),
                             "--log-format", "json"],
                            stdout=subprocess.PIPE, stderr=stderr, cwd=os.getcwd())
    try:
        line = proc.stdout.readline().decode()
        assert "is up" in line, line

        def reload_doc():
            code, body = http_get(status_port, "/v1/reload")
            return orjson.loads(body) if code == 200 else None

        assert reload_doc()["last"] is None
        spec.zones.append(("agent2", ["agent2"], "master"))
        text = spec.toml("master").replace('status_listen = "127.0.0.1:0"',
                                           f'status_listen = "127.0.0.1:{status_port}"')
        path.write_text(text)
        proc.send_signal(signal.SIGHUP)
        doc = wait_for(lambda: (d := reload_doc()) and d["last"] and d, what="reload")
        assert doc["last"]["trigger"] == "SIGHUP" and doc["last"]["result"] == "ok"
        assert doc["last"]["changes"]["endpoints_added"] == ["agent2"]
        path.write_text(text.replace("[node]", "[node", 1))
        proc.send_signal(signal.SIGHUP)
        doc = wait_for(lambda: (d := reload_doc()) and d["counts"]["refused"] and d,
                       what="refused reload")
        assert f"{path}:" in doc["last"]["error"]
        code, _ = http_get(status_port, "/v1/status")
        assert code == 200                      # still serving
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stderr.close()
    records = [orjson.loads(line) for line in (tmp_path / "stderr.log").read_bytes().splitlines()
               if line.startswith(b"{")]
    assert records, (tmp_path / "stderr.log").read_text()
    messages = [r["message"] for r in records]
    assert any(m.startswith("reload (SIGHUP) applied") for m in messages)
    assert any(m.startswith("reload (SIGHUP) refused") for m in messages)
    assert all({"ts", "time", "level", "logger", "message"} <= r.keys() for r in records)
