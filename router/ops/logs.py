"""Logging set-up for ``router serve``: one line per record on stderr.

Two formats (``[node] log_format``, ``router serve --log-format``): ``text`` (default)
and ``json``, one object per line for log shippers. In both, a line that repeats is
written once per minute at most (:class:`RepeatFilter`): a broken agent that reconnects
every second, or a misconfigured zone refused on every message, must not bury every
other line (users.md P5, log noise). The level can change while running
(:func:`set_log_level`; a reload applies ``log_level``).
"""

from __future__ import annotations

import atexit
import logging
import sys
import time
from typing import Any

import orjson

__all__ = ["LOG_FORMAT", "LOG_FORMATS", "JsonFormatter", "LogFormatter", "RepeatFilter",
           "set_log_level", "setup_logging"]

#: Values of ``[node] log_format`` / ``--log-format``.
LOG_FORMATS = ("text", "json")

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class LogFormatter(logging.Formatter):
    """The stdlib formatter, with the date and time text made once per second.

    A storm logs a line per connecting endpoint (5 000 in a few seconds). With this and
    the lookups :func:`setup_logging` turns off, a record costs 6.7 instead of 9.9 us
    (``time.strftime`` alone was 1.2 us of it). Output is unchanged.
    """

    _second: int | None = None
    _second_text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._second_text = time.strftime(self.default_time_format,
                                              self.converter(second))
            self._second = second
        msec_format = self.default_msec_format
        if msec_format:
            return msec_format % (self._second_text, record.msecs)
        return self._second_text  # as the stdlib does without a msec format


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (Unix time), ``time`` (ISO 8601 UTC),
    ``level``, ``logger``, ``message`` and, with a traceback, ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 6),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        repeated = getattr(record, "repeated", None)
        if repeated is not None:
            doc["repeated"] = repeated
        return orjson.dumps(doc, default=str).decode()


def _grouped(n: int) -> str:
    return f"{n:,}".replace(",", " ")


class RepeatFilter(logging.Filter):
    """Let a line through once per ``window`` seconds; count the repeats in between.

    A line is the same when logger, level and the formatted message are. The first one
    passes; the same line again within the window is dropped and counted; when the
    window is over (checked at most once a second, on any record) a summary is written:
    ``<line> [repeated 1 200 times in 60 s]``. At most ``max_keys`` lines are tracked
    (the oldest half is forgotten beyond that), so memory stays bounded.
    """

    def __init__(self, handler: logging.Handler, window: float = 60.0,
                 max_keys: int = 10_000) -> None:
        super().__init__()
        self.handler = handler
        self.window = window
        self.max_keys = max_keys
        #: line -> (window start, repeats dropped, the first record)
        self._seen: dict[tuple[str, int, str], list[Any]] = {}
        self._next_sweep = 0.0
        #: Lines dropped as repeats (for tests and curiosity).
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "repeated", None) is not None:
            return True                 # our own summary
        now = record.created
        if now >= self._next_sweep:
            self._next_sweep = now + 1.0
            self.flush(now)
        key = (record.name, record.levelno, record.getMessage())
        entry = self._seen.get(key)
        if entry is None or now - entry[0] >= self.window:
            if entry is not None and entry[1]:
                self._summary(entry)
            if entry is None and len(self._seen) >= self.max_keys:
                for old in list(self._seen)[: self.max_keys // 2]:
                    del self._seen[old]
            self._seen[key] = [now, 0, record]
            return True
        entry[1] += 1
        self.suppressed += 1
        return False

    def flush(self, now: float | None = None) -> None:
        """Write the summaries of windows that are over (all of them when ``now`` is
        None, e.g. at shutdown)."""
        for key, entry in list(self._seen.items()):
            if now is None or now - entry[0] >= self.window:
                if entry[1]:
                    self._summary(entry)
                self._seen.pop(key, None)       # other threads log (and flush) too

    def _summary(self, entry: list[Any]) -> None:
        first: logging.LogRecord = entry[2]
        count = entry[1]
        entry[1] = 0
        summary = logging.makeLogRecord({
            "name": first.name, "levelno": first.levelno, "levelname": first.levelname,
            "msg": "%s [repeated %s times in %s s]",
            "args": (first.getMessage(), _grouped(count), f"{self.window:g}"),
            "repeated": count})
        self.handler.handle(summary)


#: The filters ``setup_logging`` installed, for ``flush_repeats``.
_FILTERS: list[RepeatFilter] = []


def flush_repeats(now: float | None = None) -> None:
    """Write the summaries of repeat windows that are over (``now``: wall-clock time; the
    node calls it every second, so a summary does not wait for an unrelated line), or of
    all of them (None: at exit, so repeats just before a stop are not lost; review)."""
    for repeats in _FILTERS:
        repeats.flush(now)


def setup_logging(level: str, log_format: str = "text") -> None:
    """Log records of LEVEL (a level name; unknown names mean INFO) and above to stderr,
    as ``text`` lines or ``json`` objects, repeated lines rate-limited."""
    # Nothing we print needs the caller's file and line, the thread or the process:
    # skip looking them up for every record (the logging HOWTO's "Optimization").
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else LogFormatter(LOG_FORMAT))
    repeats = RepeatFilter(handler)
    handler.addFilter(repeats)
    if not _FILTERS:
        atexit.register(flush_repeats)          # before logging's own shutdown (LIFO)
    _FILTERS[:] = [repeats]
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        handlers=[handler])


def set_log_level(level: str) -> None:
    """Change the level of the root logger while running (a reload applies ``log_level``).

    Loggers that cached ``isEnabledFor`` (the stdlib clears that cache on ``setLevel``) see
    the new level at once; modules that read it once at start (``Node._debug``) keep
    their debug-only lines as they were."""
    logging.getLogger().setLevel(getattr(logging, level.upper(), logging.INFO))
