"""``router perf`` for issue 22 (scale): the count-only floor, the chain topology, commands
down the chain, the agents' reconnect storm, per-node CPU and the flame-graph reader.

Sane fields only, never speed (speed is perf/RESULTS.md's business)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from perf.flame_top import top
from perf.options import Options
from perf.tool import run

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_chain_and_floor_small(tmp_path: Path) -> None:
    out = tmp_path / "perf.json"
    proc = subprocess.run(
        [sys.executable, "-m", "router", "perf", "--endpoints", "30", "--duration", "1.5",
         "--warmup", "0.5", "--rate", "300", "--scenario", "steady,down,agentstorm",
         "--replay-cut", "1", "--drain", "10", "--topology", "chain", "--against", "floor",
         "--json", str(out)],
        cwd=str(REPO), capture_output=True, text=True, timeout=230, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "down: ExecuteCommand msgs/s to agents" in proc.stdout
    assert "node CPU per message, us: sat1" in proc.stdout        # per node of the chain
    chain, floor = json.loads(out.read_text())["sessions"]
    assert chain["target"] == "chain" and floor["target"] == "floor"
    # results went agents -> sat1 -> master -> master's zone peer (the tool)
    steady = chain["steady"]
    assert steady["sent"] > 0 and steady["missing"] == 0
    assert steady["delivered_total"] >= steady["sent"]
    assert set(steady["node_cpu_us_per_result_each"]) == {"sat1", "master"}
    # every ExecuteCommand reached its agent through the satellite
    down = chain["down"]
    assert down["received"] == down["messages"] > 0 and down["all_received_s"] is not None
    assert set(down["node_cpu_us_per_message_each"]) == {"sat1", "master"}
    # the storm: all back, every replayed result processed
    storm = chain["agentstorm"]
    assert storm["reconnected"] == 30 and storm["all_back_s"] is not None
    assert storm["backlog"] == 30 * storm["backlog_per_agent"]
    assert storm["arrived"] + storm["coalesced"] >= storm["backlog"]
    assert storm["all_processed_s"] is not None and not storm["agent_errors"]
    # the floor counts what the agents sent, relays nothing
    assert floor["connect"]["connected"] == 30
    assert floor["steady"]["delivered_total"] == floor["steady"]["sent"] > 0
    assert floor["down"]["skipped"]
    assert floor["agentstorm"]["all_processed_s"] is not None
    assert floor["connect"]["rss_kb_per_endpoint"] is not None


def test_options_are_checked_before_anything_starts() -> None:
    with pytest.raises(ValueError, match="topology"):
        run(Options(endpoints=5, topology="ring"))
    with pytest.raises(ValueError, match="chain"):
        run(Options(endpoints=5, topology="chain", target="127.0.0.1:5665", pki_dir="/x"))
    proc = subprocess.run([sys.executable, "-m", "router", "perf", "--against", "nagios"],
                          cwd=str(REPO), capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode != 0 and "icinga2, floor or both" in proc.stderr


def test_agents_count_the_frames_the_node_sends() -> None:
    """The agents' frame counter (commands down the chain) across arbitrary splits."""
    from perf.load import _AgentProtocol
    frames = [b"5:hello,", b"0:,", b"12:ExecuteComma,", b'11:{"ts": 7.5},', b"3:abc,"]
    stream = b"".join(frames)
    for cut in range(1, len(stream)):
        counter = _AgentProtocol.__new__(_AgentProtocol)
        counter._frame_rest, counter._head, counter._frame = 0, b"", bytearray()
        counter.newest_ts = 0.0
        got = counter._count_frames(stream[:cut]) + counter._count_frames(stream[cut:])
        assert got == len(frames), cut
        assert counter.newest_ts == 7.5, cut      # what the agent confirms (Icinga's way)


def test_flame_top_reads_self_and_inclusive_samples() -> None:
    svg = "".join(
        f'<g><title>{name} ({n} samples, 1%)</title><rect x="0%" y="{y}" width="1%" '
        f'height="15" fill="red" fg:x="{x}" fg:w="{n}"/></g>'
        for name, x, y, n in [("main (a.py:1)", 0, 100, 10), ("parse (a.py:5)", 0, 116, 6),
                              ("loads (b.py:9)", 0, 132, 4), ("write (a.py:7)", 6, 116, 3)])
    total, rows = top(svg)
    assert total == 10
    by = {name: (s, inc) for name, s, inc in rows}
    assert by["loads (b.py)"] == (4, 4)
    assert by["parse (a.py)"] == (2, 6)
    assert by["main (a.py)"] == (1, 10)
    assert by["write (a.py)"] == (3, 3)
