"""The router command line, run for real (subprocesses) where it matters."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

from click.testing import CliRunner

from router.cli import main
from tests.nodeutil import free_port

ZONES_CONF = """
// Icinga's zones.conf of a satellite
object Endpoint "master1" { host = "127.0.0.1"; port = "5665" }
object Endpoint "master2" { host = "127.0.0.1"; port = 5666 }
object Zone "master" { endpoints = [ "master1", "master2" ] }
object Endpoint NodeName { }
object Zone ZoneName { endpoints = [ NodeName ]; parent = "master" }
object Zone "global-templates" { global = true }
"""


def test_config_check_ok_and_line_precise_error(tmp_path):
    good = tmp_path / "router.toml"
    good.write_text('[node]\nname = "m1"\ndata_dir = "d"\n'
                    '[[zones]]\nname = "master"\nendpoints = ["m1"]\n'
                    '[[endpoints]]\nname = "m1"\n')
    result = CliRunner().invoke(main, ["config", "check", str(good)])
    assert result.exit_code == 0 and "OK" in result.output
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text() + '[[zones]]\nname = "sat"\nendpoints = []\n'
                   'parent = "mastr"\n')
    result = CliRunner().invoke(main, ["config", "check", str(bad)])
    assert result.exit_code != 0
    assert "bad.toml:12" in result.output and "mastr" in result.output \
        and "did you mean 'master'" in result.output


def test_config_check_warns_about_a_zone_of_three_endpoints(tmp_path):
    """Valid, but warned about (as Icinga 2 does): exactly-once delivery is only
    guaranteed for zones of one or two endpoints."""
    cfg = tmp_path / "router.toml"
    cfg.write_text('[node]\nname = "m1"\ndata_dir = "d"\n'
                   '[[zones]]\nname = "master"\nendpoints = ["m1", "m2", "m3"]\n'
                   + "".join(f'[[endpoints]]\nname = "m{i}"\n' for i in (1, 2, 3)))
    result = CliRunner().invoke(main, ["config", "check", str(cfg)])
    assert result.exit_code == 0 and "OK" in result.output
    assert "warning: zone 'master' has 3 endpoints (m1, m2, m3)" in result.output
    two = tmp_path / "two.toml"
    two.write_text(cfg.read_text().replace(', "m3"', ""))
    result = CliRunner().invoke(main, ["config", "check", str(two)])
    assert result.exit_code == 0 and "warning" not in result.output


def test_import_zones_output_loads_back(tmp_path):
    conf = tmp_path / "zones.conf"
    conf.write_text(ZONES_CONF)
    result = CliRunner().invoke(main, ["config", "import-zones", str(conf),
                                       "--node-name", "sat1", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "sat1.toml"
    out.write_text(result.output)
    check = CliRunner().invoke(main, ["config", "check", str(out)])
    assert check.exit_code == 0, check.output
    assert "3 zones" in check.output


def test_pki_commands_and_ticket_vector(tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["pki", "new-ca", str(tmp_path / "ca")]).exit_code == 0
    again = runner.invoke(main, ["pki", "new-ca", str(tmp_path / "ca")])
    assert again.exit_code != 0 and "not overwriting" in again.output
    issued = runner.invoke(main, ["pki", "issue", "agent1", "--ca-dir", str(tmp_path / "ca"),
                                  "--out", str(tmp_path / "certs")])
    assert issued.exit_code == 0
    assert (tmp_path / "certs" / "agent1.crt").exists()
    ticket = runner.invoke(main, ["pki", "ticket", "--cn", "agent1.example.com",
                                  "--salt", "example-salt"])
    assert ticket.output.strip() == "45e924c693ca6333141014ff7cb71356ee439ea8"


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read()


def test_serve_quickstart_status_and_sigterm(tmp_path):
    """`router serve` with only quick-start options: own CA, status page, clean SIGTERM."""
    port, status_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "router", "serve", "--node-name", "demo", "--data-dir",
         str(tmp_path / "data"), "--listen", f"127.0.0.1:{port}", "--status-listen",
         f"127.0.0.1:{status_port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{status_port}/v1/status" in line, proc.stderr.read()
        doc = json.loads(_get(f"http://127.0.0.1:{status_port}/v1/status"))
        assert doc["node"]["name"] == "demo" and doc["node"]["role"] == "master"
        assert (tmp_path / "data" / "certs" / "demo.crt").exists()
        human = CliRunner().invoke(main, ["status", "--url",
                                          f"http://127.0.0.1:{status_port}"])
        assert human.exit_code == 0 and "demo" in human.output
        as_json = CliRunner().invoke(main, ["status", "--json", "--url",
                                            f"127.0.0.1:{status_port}"])
        assert json.loads(as_json.output)["node"]["name"] == "demo"
        assert b"router_process_resident_memory_bytes" in _get(
            f"http://127.0.0.1:{status_port}/metrics")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert time.monotonic() - started < 15
        assert "draining queues" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_status_of_a_node_that_is_not_running():
    result = CliRunner().invoke(main, ["status", "--url", f"http://127.0.0.1:{free_port()}"])
    assert result.exit_code != 0 and "cannot reach" in result.output


def test_serve_reports_a_port_in_use(tmp_path):
    import socket

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "router", "serve", "--node-name", "demo", "--data-dir",
             str(tmp_path / "d"), "--listen", f"127.0.0.1:{port}", "--status-listen", "none"],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode != 0
    assert "cannot start" in proc.stderr and str(port) in proc.stderr


def test_replaylog_stats_dump_and_reset(tmp_path):
    from replaylog import ReplayStore
    from router.protocol import jsonrpc, netstring

    log_dir = tmp_path / "replaylog"
    store = ReplayStore(log_dir)
    frames = [netstring.encode(jsonrpc.notification("event::SetNextCheck",
                                                    {"host": "h", "next_check": 5.0}, ts=t))
              for t in (10.0, 11.0, 12.0)]
    store.append_many([("master", t, f, "agent1") for t, f in zip((10.0, 11.0, 12.0), frames)])
    store.confirm("m1", 10.5)
    store.close()
    runner = CliRunner()
    stats = runner.invoke(main, ["replaylog", "stats", "--data-dir", str(tmp_path)])
    assert stats.exit_code == 0, stats.output
    assert "master" in stats.output and "m1" in stats.output and "3 records" in stats.output
    dump = runner.invoke(main, ["replaylog", "dump", "--data-dir", str(tmp_path),
                                "--zone", "master", "--since", "10.5"])
    lines = [json.loads(line) for line in dump.output.splitlines()]
    assert [r["ts"] for r in lines] == [11.0, 12.0]
    assert lines[0]["message"]["method"] == "event::SetNextCheck"
    config = tmp_path / "node.toml"
    config.write_text('[node]\nname = "s1"\ndata_dir = "d"\n'
                      '[[zones]]\nname = "master"\nendpoints = ["m1"]\n'
                      '[[zones]]\nname = "sat"\nendpoints = ["s1"]\nparent = "master"\n'
                      '[[endpoints]]\nname = "m1"\n[[endpoints]]\nname = "s1"\n')
    by_peer = runner.invoke(main, ["replaylog", "dump", "--data-dir", str(tmp_path),
                                   "--peer", "m1", "--config", str(config), "--limit", "1"])
    assert by_peer.exit_code == 0, by_peer.output
    assert [json.loads(line)["ts"] for line in by_peer.output.splitlines()] == [10.0]
    (log_dir / "data.mdb").write_bytes(b"garbage" * 1000)
    broken = runner.invoke(main, ["replaylog", "stats", "--data-dir", str(tmp_path)])
    assert broken.exit_code != 0 and "router replaylog reset" in broken.output
    reset = runner.invoke(main, ["replaylog", "reset", "--data-dir", str(tmp_path)])
    assert reset.exit_code == 0 and "broken" in reset.output
    fresh = runner.invoke(main, ["replaylog", "stats", "--data-dir", str(tmp_path)])
    assert fresh.exit_code == 0 and "0 records" in fresh.output


def test_checker_command_runs_the_executor_main(tmp_path):
    """`router checker --socket PATH` is the executor process (checkers.worker); with no
    pool listening on PATH it fails at once with a message, instead of hanging."""
    help_text = CliRunner().invoke(main, ["checker", "--help"]).output
    assert "--socket" in help_text
    proc = subprocess.run([sys.executable, "-m", "router", "checker", "--socket",
                           str(tmp_path / "none.sock")], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode != 0
    assert "none.sock" in proc.stderr


def test_log_formatter_prints_what_the_stdlib_formatter_prints():
    """The per-second cache of the date text must never show a stale second."""
    import logging

    from router.ops.logs import LOG_FORMAT, LogFormatter
    ours, stdlib = LogFormatter(LOG_FORMAT), logging.Formatter(LOG_FORMAT)
    base = 1_700_000_000.0
    for created in (base + 0.0004, base + 0.9996, base + 1.0, base + 1.5, base + 0.25,
                    base + 86_400.001, base + 86_399.999):
        record = logging.LogRecord("router.node", logging.INFO, __file__, 1,
                                   "[%s %s] connected", ("agent-1", "127.0.0.1:1"), None)
        record.created, record.msecs = created, (created - int(created)) * 1000 // 1
        assert ours.format(record) == stdlib.format(record), created


def test_tune_gc_freezes_start_up_objects_and_raises_the_threshold():
    import gc

    from router.app import GC_THRESHOLD0, GC_THRESHOLD1, tune_gc
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_THRESHOLD0, GC_THRESHOLD1, before[2])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
