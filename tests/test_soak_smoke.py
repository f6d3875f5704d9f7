"""Smoke test of the soak (issue 21 part 2): 30 s of mixed traffic against a real
``router serve`` process, a row every 5 s (never a verdict on speed: the 10-minute run at
5 000 endpoints is perf/soak.py's, its table in perf/RESULTS.md)."""

from __future__ import annotations

import pytest

from perf.soak import format_table, verdict
from perf.tool import Options, run


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_soak_30_seconds() -> None:
    opts = Options(endpoints=60, rate=300.0, duration=30.0, warmup=1.0, workers=1,
                   scenarios=("soak",), soak_interval=5.0, drain=10.0)
    result = run(opts, echo=lambda s: None)
    (session,) = result["sessions"]
    assert not session.get("node_died"), session.get("warnings")
    soak = session["soak"]
    rows = soak["intervals"]
    assert len(rows) == 6
    for k, row in enumerate(rows, 1):
        assert row["interval"] == k
        assert row["rss_mb"] > 10 and row["fds"] > 60           # 60 agents' sockets
        assert row["latency_samples"] > 0 and row["latency_ms_p99"] is not None
        assert row["latency_ms_p50"] <= row["latency_ms_p99"]
        # our router reports its queues and its replay log
        for key in ("queue_bytes", "unconfirmed_bytes", "replay_bytes"):
            assert row[key] is not None and row[key] >= 0, key
        # one reload per interval, each applied (SIGHUP to the real process)
        assert row["reloads_ok"] == k, rows
        assert row["agents_up"] == 60
    assert rows[-1]["commands_relayed"] > 0                       # commands went down
    assert soak["missing"] == 0 and soak["sent"] > 0
    assert soak["verdict"]["flat"] in (True, False)
    table = format_table(soak)
    assert "verdict:" in table and len(table.splitlines()) == 1 + 6 + 2


def test_verdict_rules() -> None:
    def row(k, rss=100.0, fds=50, q=0.0, p99=5.0):
        return {"interval": k, "rss_mb": rss, "fds": fds, "queue_bytes": q,
                "unconfirmed_bytes": 0.0, "replay_bytes": 0.0, "replay_records_master": 0,
                "latency_ms_p99": p99}
    flat = [row(k) for k in range(1, 11)]
    assert verdict(flat)["flat"] is True
    growing = [row(k, rss=100 + 2 * k) for k in range(1, 11)]
    v = verdict(growing)
    assert v["flat"] is False and "rss_mb" in v["reasons"][0]
    queue = [row(k, q=0 if k <= 6 else 8 * 2**20 * k) for k in range(1, 11)]
    assert any("queue_bytes" in r for r in verdict(queue)["reasons"])
    slower = [row(k, p99=5.0 if k <= 6 else 40.0) for k in range(1, 11)]
    assert any("p99" in r for r in verdict(slower)["reasons"])
    assert verdict(flat[:2])["flat"] is None
