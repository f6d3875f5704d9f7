"""Smoke test of ``router perf``: the tool runs and reports sane fields (never speed)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

#: Slow tier: deselect with -m 'not slow' (the fast tier is -m 'not slow and not interop').
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, *args: str, timeout: float = 90) -> tuple[dict, str]:
    out = tmp_path / "perf.json"
    proc = subprocess.run(
        [sys.executable, "-m", "router", "perf", *args, "--json", str(out)],
        cwd=str(REPO), capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout + proc.stderr


@pytest.mark.timeout(120)
def test_perf_steady_200_endpoints(tmp_path: Path) -> None:
    result, output = _run(tmp_path, "--endpoints", "200", "--duration", "5", "--warmup", "1")
    assert "time to all connected" in output and "steady: delivered results/s" in output
    # the live display: connected endpoints while connecting, results/s and p99 under load
    assert "connected," in output and re.search(r"results/s delivered, p99 [0-9.]+ ms", output)
    assert "router" in output
    (session,) = result["sessions"]
    assert session["target"] == "router"
    conn = session["connect"]
    assert conn["connected"] == 200 and conn["connect_failures"] == 0
    assert conn["all_connected_s"] > 0 and conn["handshakes_per_s"] > 0
    assert conn["node_rss_mb_connected"] > 0
    steady = session["steady"]
    assert steady["sent"] > 0 and steady["delivered_total"] > 0
    assert steady["delivered_per_s"] > 0 and steady["latency_samples"] > 0
    assert 0 < steady["latency_ms_p50"] <= steady["latency_ms_p99"] <= steady["latency_ms_p999"]
    assert steady["node_cpu_s_per_10k"] is not None and steady["node_cpu_s_per_10k"] >= 0
    assert steady["refused"] == 0
    assert not session["bad_messages_at_parent"]
    assert result["meta"]["endpoints"] == 200


@pytest.mark.timeout(120)
def test_perf_all_scenarios_small(tmp_path: Path) -> None:
    result, output = _run(tmp_path, "--endpoints", "20", "--duration", "1", "--warmup", "0.5",
                          "--rate", "500", "--scenario", "all", "--replay-cut", "1",
                          "--drain", "5")
    assert result["meta"]["drain"] == 5
    (session,) = result["sessions"]
    for sc in ("steady", "max", "churn", "replay", "storm"):
        assert sc in session, sc
    assert session["max"]["offered_per_s"] is None
    assert session["churn"]["churn_reconnects"] >= 0
    replay = session["replay"]
    assert replay["sent"] > 0
    assert replay["received_unique"] + replay["missing"] == replay["sent"]
    storm = session["storm"]
    assert storm["reconnected"] == 20 and storm["all_back_s"] is not None
    assert storm["port_open_s"] is not None and storm["all_back_since_port_open_s"] is not None
    assert "storm: all back since port open" in output


@pytest.mark.timeout(120)
def test_perf_against_an_existing_node(tmp_path: Path) -> None:
    """--target HOST:PORT --pki CA_DIR: the tool issues its own certificates from the
    node's CA and measures a node it did not start (here a router it cannot restart)."""
    sys.path.insert(0, str(REPO))
    from perf.common import RouterTarget, make_pki

    bench = make_pki(tmp_path / "pki", 20, shared_key=True)
    node = RouterTarget(tmp_path / "node", bench, 20)
    node.start()
    try:
        result, output = _run(
            tmp_path, "--endpoints", "20", "--duration", "1", "--warmup", "0.5",
            "--rate", "200", "--scenario", "steady,storm",
            "--target", f"127.0.0.1:{node.port}", "--pki", str(bench.ca_dir),
            "--status-url", f"http://127.0.0.1:{node.status_port}")
    finally:
        node.stop()
    (session,) = result["sessions"]
    assert session["target"] == "target"
    assert session["connect"]["connected"] == 20
    assert session["steady"]["delivered_total"] == session["steady"]["sent"] > 0
    assert session["storm"]["skipped"] == "cannot restart an existing node"
    assert "existing node at 127.0.0.1" in output


@pytest.mark.parametrize("args", [
    ["--endpoints", "0"], ["--duration", "0"], ["--duration", "-1"], ["--warmup", "-1"],
    ["--workers", "-1"], ["--rate", "-5"], ["--rate", "abc"], ["--scenario", "bogus"],
    ["--churn-fraction", "0"], ["--churn-fraction", "1.5"], ["--replay-cut", "0"],
    ["--drain", "0"], ["--connect-timeout", "-1"], ["--payload-bytes", "-1"],
])
def test_perf_rejects_bad_options_before_starting_anything(args: list[str]) -> None:
    """A bad value is a usage error at once, not a run that hangs (--workers -1 used to
    start no load process and wait for the connect timeout)."""
    from click.testing import CliRunner

    from router.cli import main
    result = CliRunner().invoke(main, ["perf", *args])
    assert result.exit_code == 2, result.output
    assert "Invalid value" in result.output or "Error" in result.output


def test_perf_api_rejects_bad_options() -> None:
    sys.path.insert(0, str(REPO))
    from perf.tool import Options, run
    for bad in (Options(workers=-1), Options(duration=0), Options(warmup=-1),
                Options(drain=0), Options(endpoints=0)):
        with pytest.raises(ValueError):
            run(bad)


@pytest.mark.parametrize("args, says", [
    (["--target", "nocolon", "--pki", "/tmp"], "expected HOST:PORT"),
    (["--target", "127.0.0.1:99999", "--pki", "/tmp"], "expected HOST:PORT"),
    (["--target", "127.0.0.1:5665"], "needs --pki"),
    (["--status-url", "http://127.0.0.1:1"], "use them with --target"),
    (["--target", "127.0.0.1:1", "--pki", "/nonexistent-ca-dir"], "does not exist"),
])
def test_perf_target_mistakes_are_clear_errors(args: list[str], says: str) -> None:
    """Mistakes about an existing node end with one line, not a traceback."""
    from click.testing import CliRunner

    from router.cli import main
    result = CliRunner().invoke(main, ["perf", "--endpoints", "2", *args])
    assert result.exit_code == 1, result.output
    assert says in result.output and "Traceback" not in result.output


@pytest.mark.timeout(120)
def test_perf_with_rsa_keys(tmp_path: Path) -> None:
    """--key-type: the whole PKI (CA, node, parent, agents) with RSA keys; every agent
    still connects and its results arrive."""
    result, _ = _run(tmp_path, "--endpoints", "20", "--duration", "1", "--warmup", "0.5",
                     "--rate", "200", "--key-type", "rsa")
    assert result["meta"]["key_type"] == "rsa"
    (session,) = result["sessions"]
    assert session["connect"]["connected"] == 20
    assert session["steady"]["delivered_total"] > 0 and session["steady"]["missing"] == 0


@pytest.mark.timeout(120)
def test_perf_reports_a_node_that_dies_and_fails(tmp_path: Path) -> None:
    """The node under test killed mid-run: the tool says so, skips what is left, still
    prints its report, and exits non-zero instead of reporting numbers that measure
    nothing."""
    import signal
    import time

    import psutil
    proc = subprocess.Popen(
        [sys.executable, "-m", "router", "perf", "--endpoints", "20", "--rate", "200",
         "--scenario", "steady,churn,replay", "--duration", "3", "--warmup", "0.5",
         "--json", str(tmp_path / "perf.json")],
        cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        node = None
        deadline = time.monotonic() + 60
        while node is None and time.monotonic() < deadline:
            for child in psutil.Process(proc.pid).children(recursive=True):
                try:
                    if "serve" in child.cmdline():
                        node = child
                except psutil.Error:
                    pass
            time.sleep(0.2)
        assert node is not None, "the node never started"
        time.sleep(2.5)                      # connected, into the steady scenario
        node.send_signal(signal.SIGKILL)
        output, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, output[-3000:]
    assert "was killed by signal 9" in output and "stopped during the run" in output
    result = json.loads((tmp_path / "perf.json").read_text())
    (session,) = result["sessions"]
    assert session["node_died"]["exit_code"] == -9
    assert "replay" not in session              # skipped after the node died


def test_router_toml_joins_the_demo_tables(tmp_path: Path) -> None:
    """--router-toml may set keys of tables the demo config already has ([tls],
    [timeouts]): they are merged, not appended as a second table (a TOML error)."""
    sys.path.insert(0, str(REPO))
    from perf.common import RouterTarget, agent_name, make_pki
    from router.config import load_config

    bench = make_pki(tmp_path / "pki", 3, shared_key=True)
    node = RouterTarget(tmp_path / "node", bench, 3,
                        '[tls]\nlibrary = "system"\n[timeouts]\ndrain = 5\n'
                        '[limits]\nhandshake_threads = 2\n'
                        '[[zones]]\nname = "extra"\nendpoints = ["extra"]\nparent = "satellite"\n'
                        '[[endpoints]]\nname = "extra"\n')
    cfg = load_config(str(node.config_path))
    assert cfg.tls.library == "system" and cfg.tls.ca == str(bench.ca_cert)
    assert cfg.timeouts.drain == 5 and cfg.limits.handshake_threads == 2
    assert {z.name for z in cfg.zones} >= {"satellite", "extra", agent_name(2)}
    with pytest.raises(ValueError, match="TOML for the router"):
        RouterTarget(tmp_path / "bad", bench, 3, "[tls\n")


def test_dump_toml_round_trips() -> None:
    import tomllib

    sys.path.insert(0, str(REPO))
    from perf.common import dump_toml

    doc = {"a": 1, "f": 0.5, "b": False, "s": 'q"uo\\te \u00e9', "odd key": [1, 2],
           "t": {"k": "v", "sub": {"x": [["n"]]}, "inline": [{"a": 1}, {"b": 2}]},
           "arr": [{"name": "one", "list": ["x"]}, {"name": "two"}]}
    assert tomllib.loads(dump_toml(doc)) == doc


@pytest.mark.timeout(150)
def test_perf_stormload_200_endpoints(tmp_path: Path) -> None:
    """Half the agents redial at once mid-window; the other half's latency is the figure."""
    toml = tmp_path / "limits.toml"
    toml.write_text("[limits]\nnew_connections_per_second = 1000\n")
    result, output = _run(tmp_path, "--endpoints", "200", "--duration", "4", "--warmup", "1",
                          "--rate", "1000", "--scenario", "steady,stormload",
                          "--router-toml", str(toml), timeout=120)
    (session,) = result["sessions"]
    sl = session["stormload"]
    assert sl["storm_agents"] == 100 and sl["established_agents"] == 100
    assert sl["reconnects"] >= 100 and sl["storm_at_s"] is not None
    assert sl["quiet_samples"] > 0 and sl["storm_samples"] > 0
    assert 0 < sl["established_latency_ms_p50"] <= sl["established_latency_ms_p99"]
    assert sl["quiet_latency_ms_p99"] > 0
    assert sl["all_back_s"] is None or sl["all_back_s"] >= 0
    assert "stormload: established p99, ms" in output and "stormload: quiet p99" in output
    assert "steady: latency p99, ms" in output          # the other scenarios unchanged
    assert "stormload" in result["meta"]["scenarios"]
