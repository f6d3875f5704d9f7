"""The writers' process logs through the node (issue 19: JSON logs in the writers' process).

The child writes each record as a JSON line on stderr; the node logs it again through
its own logging, so with ``[node] log_format = "json"`` the writers' lines are JSON too,
in the node's one stream, and the node's repeat filter applies to them.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import orjson

from router.features.writers.service import relay_log_line


def test_a_record_of_the_child_keeps_its_level_and_logger(caplog) -> None:
    caplog.set_level(logging.DEBUG)
    relay_log_line(orjson.dumps({"level": logging.WARNING,
                                 "logger": "router.features.writers.postgresql",
                                 "message": "backend down", "exception": "Traceback ..."}))
    [rec] = caplog.records
    assert rec.levelno == logging.WARNING
    assert rec.name == "router.features.writers.postgresql"
    assert rec.getMessage() == "backend down\nTraceback ..."


def test_other_lines_are_errors_of_the_writers_and_odd_fields_fall_back(caplog) -> None:
    caplog.set_level(logging.DEBUG)
    relay_log_line(b"Traceback (most recent call last):\n")
    relay_log_line(orjson.dumps({"level": "loud", "logger": "evil", "message": "x"}))
    relay_log_line(b"\n")
    first, second = caplog.records
    assert (first.levelno, first.name) == (logging.ERROR, "router.writers")
    assert first.getMessage() == "writers process: Traceback (most recent call last):"
    assert (second.levelno, second.name, second.getMessage()) == (
        logging.ERROR, "router.writers", "x")


def test_the_real_writers_process_logs_json_lines_that_the_node_logs_again(caplog) -> None:
    """An unreadable control line makes the child log an error; on its stderr that is one
    JSON record, which the node logs with the child's level and logger."""
    proc = subprocess.run([sys.executable, "-m", "router.features.writers.child"],
                          input=b"this is not json\n", capture_output=True, timeout=60)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines, proc
    docs = [orjson.loads(line) for line in lines]      # every line is a JSON record
    assert {"level": logging.ERROR, "logger": "router.writers",
            "message": "writers: unreadable control line from the node"} in docs
    caplog.set_level(logging.DEBUG)
    for line in lines:
        relay_log_line(line)
    assert any(r.levelno == logging.ERROR and r.name == "router.writers"
               and r.getMessage() == "writers: unreadable control line from the node"
               for r in caplog.records)
