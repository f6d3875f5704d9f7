"""Operational logging (router.ops.logs): repeats rate-limited, JSON lines, runtime level."""

from __future__ import annotations

import io
import logging

import orjson
import pytest

from router.config import parse_config
from router.errors import ConfigError
from router.ops.logs import JsonFormatter, LogFormatter, RepeatFilter, set_log_level


def handler_with_filter(window: float = 60.0, json: bool = False):
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter() if json else LogFormatter("%(levelname)s %(message)s"))
    repeat = RepeatFilter(handler, window=window)
    handler.addFilter(repeat)
    return out, handler, repeat


def record(msg: str, created: float, *args, level=logging.WARNING, name="router.node"):
    rec = logging.makeLogRecord({"name": name, "levelno": level,
                                 "levelname": logging.getLevelName(level), "msg": msg,
                                 "args": args})
    rec.created = created
    rec.msecs = 0
    return rec


def test_repeated_lines_are_summarised_once_per_window() -> None:
    out, handler, repeat = handler_with_filter()
    start = 1000.0
    for i in range(1201):
        handler.handle(record("[agent1 %s] TLS handshake failed", start + i * 0.04,
                              "127.0.0.1:4000"))
    handler.handle(record("another line", start + 10))
    lines = out.getvalue().splitlines()
    assert lines == ["WARNING [agent1 127.0.0.1:4000] TLS handshake failed",
                     "WARNING another line"]
    assert repeat.suppressed == 1200
    # the window ends: the next record of any kind writes the summary
    handler.handle(record("third line", start + 61))
    lines = out.getvalue().splitlines()
    assert lines[2] == ("WARNING [agent1 127.0.0.1:4000] TLS handshake failed "
                        "[repeated 1 200 times in 60 s]")
    assert lines[3] == "WARNING third line"
    # after the window the line passes again
    handler.handle(record("[agent1 %s] TLS handshake failed", start + 70, "127.0.0.1:4000"))
    assert out.getvalue().splitlines()[-1] == "WARNING [agent1 127.0.0.1:4000] TLS handshake failed"


def test_different_arguments_or_levels_are_different_lines() -> None:
    out, handler, repeat = handler_with_filter()
    handler.handle(record("peer %s down", 1.0, "a"))
    handler.handle(record("peer %s down", 1.1, "b"))
    handler.handle(record("peer %s down", 1.2, "a", level=logging.ERROR))
    assert len(out.getvalue().splitlines()) == 3 and repeat.suppressed == 0


def test_flush_writes_pending_summaries_and_keys_stay_bounded() -> None:
    out, handler, repeat = handler_with_filter()
    handler.handle(record("x", 1.0))
    handler.handle(record("x", 2.0))
    repeat.flush()
    assert out.getvalue().splitlines()[-1] == "WARNING x [repeated 1 times in 60 s]"
    repeat.max_keys = 10
    for i in range(100):
        handler.handle(record(f"line {i}", 3.0))
    assert len(repeat._seen) <= 10


def test_json_lines() -> None:
    out, handler, _ = handler_with_filter(json=True)
    handler.handle(record("hello %s", 1700000000.25, "world"))
    handler.handle(record("hello %s", 1700000001.0, "world"))
    handler.handle(record("later", 1700000100.0))
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0] == {"ts": 1700000000.25, "time": "2023-11-14T22:13:20.000Z",
                        "level": "warning", "logger": "router.node", "message": "hello world"}
    assert lines[1]["message"] == "hello world [repeated 1 times in 60 s]"
    assert lines[1]["repeated"] == 1
    assert lines[2]["message"] == "later"


def test_log_level_changes_at_runtime() -> None:
    root = logging.getLogger()
    before = root.level
    try:
        set_log_level("debug")
        assert logging.getLogger("lvltest.x").isEnabledFor(logging.DEBUG)
        set_log_level("error")
        assert not logging.getLogger("lvltest.x").isEnabledFor(logging.WARNING)
    finally:
        root.setLevel(before)


BASE = """[node]
name = "n"
data_dir = "/tmp/n"
log_format = "%s"
[[zones]]
name = "z"
endpoints = ["n"]
[[endpoints]]
name = "n"
"""


def test_log_format_key() -> None:
    assert parse_config(BASE % "json", "/tmp/r.toml").node.log_format == "json"
    assert parse_config(BASE.replace('log_format = "%s"\n', ""),
                        "/tmp/r.toml").node.log_format == "text"
    with pytest.raises(ConfigError) as exc:
        parse_config(BASE % "xml", "/tmp/r.toml")
    assert "/tmp/r.toml:4" in str(exc.value) and "node.log_format" in str(exc.value)
