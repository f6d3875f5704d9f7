"""Plugin runner: spawning, output parsing, timeouts, caps, signals (real processes).

The small plugins live in ``tests/data/plugins``; they are copied into ``tmp_path`` with
the execute bit set, so the tests do not depend on how the checkout kept file modes.
Loop-touching tests run under asyncio and uvloop (the ``run`` fixture).
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path

import pytest

from checkers.catalog import Catalog
from checkers.output import (
    HOST_DOWN,
    HOST_UP,
    exit_status_to_state,
    host_state,
    parse_check_output,
    parse_plugin_output,
    split_perfdata,
)
from checkers.runner import DEFAULT_PATH, KILL_GRACE, run_internal_dummy, run_plugin

from tests.conftest import PLUGIN_DATA as DATA
PLUGIN_DIR = Path("/usr/lib/nagios/plugins")




def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie waiting for its reaper."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            state = file.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def _real_plugin(name: str) -> str:
    path = PLUGIN_DIR / name
    if not os.access(path, os.X_OK):
        pytest.skip(f"{path} is not installed")
    return str(path)


# --------------------------------------------------------------------------- parsing (pure)


@pytest.mark.parametrize("code, state", [(0, 0), (1, 1), (2, 2), (3, 3), (4, 3), (126, 3),
                                         (128, 3), (255, 3), (-1, 3)])
def test_exit_status_to_state(code: int, state: int) -> None:
    assert exit_status_to_state(code) == state


def test_host_state_follows_icinga() -> None:
    assert [host_state(s) for s in (0, 1, 2, 3)] == [HOST_UP, HOST_UP, HOST_DOWN, HOST_DOWN]


def test_parse_single_line() -> None:
    assert parse_check_output("OK - fine|a=1 b=2") == ("OK - fine", "a=1 b=2")
    assert parse_check_output("OK - fine") == ("OK - fine", "")


def test_parse_keeps_the_text_before_the_pipe_as_is() -> None:
    # Icinga does not trim the text part: the space before '|' stays.
    assert parse_check_output("OK - fine | a=1") == ("OK - fine ", "a=1")


def test_a_pipe_without_equals_is_text() -> None:
    assert parse_check_output("status: a | b") == ("status: a | b", "")


def test_parse_long_text_and_second_perfdata_block() -> None:
    raw = "TEXT | p1=1\nlong 1\nlong 2 | p2=2\np3=3\np4=4"
    text, perf = parse_check_output(raw)
    assert text == "TEXT \nlong 1\nlong 2 "
    assert perf == "p1=1 p2=2 p3=3 p4=4"


def test_parse_perfdata_only_on_a_later_line() -> None:
    text, perf = parse_check_output("TEXT\nlong | p=1\nq=2")
    assert (text, perf) == ("TEXT\nlong ", "p=1 q=2")


def test_parse_crlf() -> None:
    assert parse_check_output("A|a=1\r\nB\r\n") == ("A\nB\n", "a=1")


def test_split_perfdata_like_icinga() -> None:
    assert split_perfdata("load1=0.1;1;2;0 load5=0.2;;;0") == ["load1=0.1;1;2;0",
                                                              "load5=0.2;;;0"]
    # quoted labels: quotes dropped, put back when there is a space
    assert split_perfdata("'with space'=1 'nospace'=2") == ["'with space'=1", "nospace=2"]
    # unquoted labels may contain spaces (everything up to '=')
    assert split_perfdata("a b=1") == ["'a b'=1"]
    # check_multi prefixes
    assert split_perfdata("multi::check1::a=1 b=2 c::d=3 e=4") == [
        "multi::check1::a=1", "multi::check1::b=2", "c::d=3", "c::e=4"]
    # trailing garbage without '=' is dropped
    assert split_perfdata("a=1 junk") == ["a=1"]
    assert split_perfdata("") == []


def test_split_perfdata_beyond_icinga() -> None:
    # Runs of spaces, '=' and '' inside quoted labels (Icinga mangles these).
    assert split_perfdata("a=1    b=2") == ["a=1", "b=2"]
    assert split_perfdata("'x=y'=1") == ["'x=y'=1"]
    assert split_perfdata("'it''s here'=3") == ["'it''s here'=3"]


def test_parse_plugin_output_trims_like_icinga() -> None:
    assert parse_plugin_output("\n  OK | a=1  \n\n") == ("OK ", ["a=1"])


# --------------------------------------------------------------------------- dummy


def test_dummy_uses_state_and_text() -> None:
    result = run_internal_dummy({"dummy_state": 2, "dummy_text": "Broken | x=1;2;3"})
    assert (result.exit_status, result.state) == (2, 2)
    assert result.output == "Broken "
    assert result.performance_data == ["x=1;2;3"]
    assert result.execution_start == result.execution_end


def test_dummy_converts_like_icinga() -> None:
    assert run_internal_dummy({}).exit_status == 0            # missing: empty -> 0
    assert run_internal_dummy({}).output == ""
    assert run_internal_dummy({"dummy_state": "1"}).state == 1
    assert run_internal_dummy({"dummy_state": 7}).state == 3  # exit 7 is UNKNOWN
    assert run_internal_dummy({"dummy_state": True}).exit_status == 1
    bad = run_internal_dummy({"dummy_state": "bogus"})
    assert bad.state == 3 and "bogus" in bad.output


def test_dummy_text_is_not_trimmed() -> None:
    assert run_internal_dummy({"dummy_text": " spaced "}).output == " spaced "


# --------------------------------------------------------------------------- processes


def test_ok_plugin(run, plugins: Path) -> None:
    result = run(run_plugin([str(plugins / "ok_perf.sh")], timeout=10))
    assert (result.exit_status, result.state) == (0, 0)
    assert result.output == "OK - all good "
    assert result.performance_data == ["time=0.25s;1;2;0;", "size=1024B;;;0"]
    assert not result.timed_out and not result.truncated and result.error is None
    assert result.execution_start <= result.execution_end <= time.time()


def test_multiline_output_with_perfdata_on_several_lines(run, plugins: Path) -> None:
    result = run(run_plugin([str(plugins / "multiline.sh")], timeout=10))
    assert result.state == 1
    assert result.output == ("DISK WARNING - free space: / 3326 MB (5%) \n"
                             "/ 15272 MB (77%);\n/boot 68 MB (69%); ")
    assert result.performance_data == [
        "/=2643MB;5948;5958;0;5968", "/boot=68MB;88;93;0;98",
        "/home=69357MB;253404;253409;0;253414", "'/var log'=818MB;970;975;0;980"]


def test_quoted_perfdata_labels(run, plugins: Path) -> None:
    result = run(run_plugin([str(plugins / "quoted_perf.sh")], timeout=10))
    assert result.performance_data == ["'eth0 in'=100c;;;0", "'eth0 out'=200c;;;0",
                                       "plain=1", "it's=3"]


def test_exit_255_is_unknown(run, plugins: Path) -> None:
    result = run(run_plugin([str(plugins / "exit255.sh")], timeout=10))
    assert (result.exit_status, result.state) == (255, 3)
    assert result.output == "something went badly wrong"


def test_killed_by_signal_is_unknown(run, plugins: Path) -> None:
    result = run(run_plugin([str(plugins / "selfkill.sh")], timeout=10))
    # Icinga: exit status 128 and "<Terminated by signal 9 (Killed).>" after the output
    assert (result.exit_status, result.state) == (128, 3)
    assert result.output == "about to die\n<Terminated by signal 9 (Killed).>"
    assert not result.timed_out


def test_timeout_kills_the_whole_process_group(run, plugins: Path, tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    started = time.monotonic()
    result = run(run_plugin([str(plugins / "hang_fork.sh"), str(pids_file)], timeout=0.5))
    elapsed = time.monotonic() - started
    assert result.timed_out
    assert (result.exit_status, result.state) == (128, 3)
    # Icinga's texts: the marker at SIGTERM, then the signal that ended the process
    assert result.output.startswith("started\n<Timeout exceeded.>")
    assert result.output.endswith("<Terminated by signal 15 (Terminated).>")
    # the child ignores SIGTERM and keeps the pipe open: only the group SIGKILL ends it
    assert 0.5 + KILL_GRACE - 0.1 <= elapsed < 0.5 + KILL_GRACE + 2.0
    pids = {line.split()[0]: int(line.split()[1]) for line in pids_file.read_text().split("\n")
            if line}
    assert set(pids) == {"parent", "child"}
    deadline = time.monotonic() + 2.0
    while any(_alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(_alive(pid) for pid in pids.values())


def test_timeout_then_sigkill_for_a_plugin_ignoring_sigterm(run, plugins: Path) -> None:
    started = time.monotonic()
    result = run(run_plugin([str(plugins / "ignore_term.sh")], timeout=0.3))
    elapsed = time.monotonic() - started
    assert result.timed_out and result.state == 3 and result.exit_status == 128
    assert result.output == ("stubborn\n<Timeout exceeded.><Terminated by signal 9 "
                             "(Killed).>")
    assert 0.3 + KILL_GRACE - 0.1 <= elapsed < 0.3 + KILL_GRACE + 2.0


def test_huge_output_is_capped_and_drained(run, plugins: Path) -> None:
    started = time.monotonic()
    result = run(run_plugin([str(plugins / "big_output.sh")], timeout=30,
                            output_limit=64 * 1024))
    elapsed = time.monotonic() - started
    assert elapsed < 10
    assert result.truncated and not result.timed_out
    assert (result.exit_status, result.state) == (2, 2)      # it ran to its own end
    kept, marker = result.output.rsplit("\n", 1)
    assert kept == "x" * (64 * 1024)
    assert marker == "<Output truncated: the plugin wrote more than 65536 bytes.>"


def test_missing_plugin(run, tmp_path: Path) -> None:
    missing = str(tmp_path / "check_nothing")
    result = run(run_plugin([missing, "-w", "1"], timeout=10))
    assert (result.exit_status, result.state) == (128, 3)
    assert result.output == f"execvpe({missing}) failed: No such file or directory"
    assert result.error is not None and result.error.startswith("spawn failed")


def test_missing_plugin_by_name(run) -> None:
    result = run(run_plugin(["check_surely_not_installed_anywhere"], timeout=10))
    assert result.state == 3
    assert result.output == ("execvpe(check_surely_not_installed_anywhere) failed: No such "
                             "file or directory")


def test_plugin_that_is_not_executable(run, plugins: Path) -> None:
    path = plugins / "ok_perf.sh"
    path.chmod(0o644)
    result = run(run_plugin([str(path)], timeout=10))
    assert (result.exit_status, result.state) == (128, 3)
    assert result.output == f"execvpe({path}) failed: Permission denied"


def test_script_without_shebang_runs_in_sh(run, tmp_path: Path) -> None:
    script = tmp_path / "noshebang"
    script.write_text("echo 'WARNING - from sh'\nexit 1\n")
    script.chmod(0o755)
    result = run(run_plugin([str(script)], timeout=10))
    assert (result.state, result.output) == (1, "WARNING - from sh")


def test_minimal_environment(run, plugins: Path) -> None:
    os.environ["EXTRA"] = "leaked"
    try:
        result = run(run_plugin([str(plugins / "env.sh")], timeout=10))
        assert result.output == f"PATH={DEFAULT_PATH} LANG=C HOME=unset EXTRA=unset"
        result = run(run_plugin([str(plugins / "env.sh")], timeout=10,
                                env={"EXTRA": "given", "LANG": "de_DE.UTF-8"}))
        assert result.output == f"PATH={DEFAULT_PATH} LANG=de_DE.UTF-8 HOME=unset EXTRA=given"
    finally:
        del os.environ["EXTRA"]


def test_argv_is_not_a_shell_line(run, tmp_path: Path) -> None:
    marker = tmp_path / "should-not-exist"
    result = run(run_plugin(["/bin/echo", f"$(touch {marker})", ";", "|x=1"], timeout=10))
    assert result.output == f"$(touch {marker}) ; "
    assert result.performance_data == ["x=1"]
    assert not marker.exists()


def test_cancelling_kills_the_plugin(run, plugins: Path, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"

    async def scenario() -> None:
        task = asyncio.ensure_future(run_plugin([str(plugins / "sleeper.sh"), "30",
                                                 str(pid_file)], timeout=60))
        while not pid_file.exists() or not pid_file.read_text().strip():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(scenario())
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 2
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(pid)


def test_many_plugins_at_once(run, plugins: Path) -> None:
    async def scenario() -> list:
        return await asyncio.gather(*(run_plugin([str(plugins / "ok_perf.sh")], timeout=10)
                                      for _ in range(100)))

    results = run(scenario())
    assert {r.state for r in results} == {0}
    assert all(r.performance_data == ["time=0.25s;1;2;0;", "size=1024B;;;0"] for r in results)


# --------------------------------------------------------------------------- real plugins


def test_real_check_dummy(run) -> None:
    plugin = _real_plugin("check_dummy")
    result = run(run_plugin([plugin, "2", "something is down"], timeout=10))
    assert (result.exit_status, result.state) == (2, 2)
    assert result.output == "CRITICAL: something is down"


def test_real_check_load_through_the_catalog(run) -> None:
    _real_plugin("check_load")
    request = Catalog.load().build("load", {}, use_defaults=True)
    result = run(run_plugin(request.argv, timeout=request.timeout, env=request.env))
    assert result.state in (0, 1, 2)
    assert "load average" in result.output
    labels = [item.split("=", 1)[0] for item in result.performance_data]
    assert labels == ["load1", "load5", "load15"]


def test_real_check_disk_golden_command_line(run) -> None:
    _real_plugin("check_disk")
    request = Catalog.load().build("disk", {"disk_cfree": "1%", "disk_partitions": ["/"],
                                            "disk_wfree": "2%"})
    result = run(run_plugin(request.argv, timeout=request.timeout))
    assert result.state in (0, 1, 2), result.output
    assert result.output.startswith("DISK ")
    assert any(item.startswith("/=") for item in result.performance_data)


def test_plugin_dir_mode_bits_are_sane() -> None:
    # guards the copy fixture: the data files are plain scripts
    for source in DATA.iterdir():
        assert stat.S_ISREG(source.stat().st_mode)
        assert source.read_text().startswith("#!/bin/sh")
