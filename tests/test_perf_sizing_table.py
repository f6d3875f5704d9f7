"""perf/sizing_table.py: the RESULTS.md summary made from `router perf --json` files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from perf import sizing_table

SIZING = Path(__file__).resolve().parents[1] / "perf" / "sizing"


def test_table_from_the_recorded_runs_matches_results_md() -> None:
    runs = [json.loads((SIZING / f"n{n}.json").read_text()) for n in (100, 1000, 5000)]
    text = sizing_table.table(runs)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines()[2:]}
    # RESULTS.md carries this very table
    assert text in (SIZING.parent / "RESULTS.md").read_text()
    assert "| 4.35 | 10.51 | 0.41 |" in rows["time to all connected, s"]
    assert rows["replay: missing"].startswith("| replay: missing | 0 | 42 |")
    assert "| 4.16 | 10.35 | 0.40 |" in rows["storm: all back since the port opened, s"]
    # a measure no run has gets no row
    for run in runs:
        for session in run["sessions"]:
            session["storm"].pop("all_back_s", None)
    assert "after the node reported ready" not in sizing_table.table(runs)


def test_formatting() -> None:
    assert sizing_table.number(None, 2) == "-"
    assert sizing_table.number(41260.4, None) == "41 260"
    assert sizing_table.number(2863.04, 1) == "2 863.0"
    assert sizing_table.ratio(5.07, 12.67) == "0.40"
    assert sizing_table.ratio(4998, 3) == "1 666"
    assert sizing_table.ratio(0.4, 2863.0) == "0.0001"
    assert sizing_table.ratio(1.0, 0) == "" and sizing_table.ratio(None, 1.0) == ""


def test_a_run_without_icinga_is_refused(tmp_path: Path, capsys) -> None:
    run = json.loads((SIZING / "n100.json").read_text())
    run["sessions"] = [s for s in run["sessions"] if s["target"] == "router"]
    alone = tmp_path / "alone.json"
    alone.write_text(json.dumps(run))
    assert sizing_table.main([str(alone)]) == 2
    assert "--against icinga2" in capsys.readouterr().err
    with pytest.raises(ValueError):
        sizing_table.table([run])
