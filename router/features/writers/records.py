"""Stored messages back into check results, decoded once per process, sans-I/O.

Why: every writer of a node reads the same records from the one shared queue, and most of
the writers' process CPU per result was spent turning the same bytes into the same
objects once per writer: the JSON decode, the ``ResultView``, Icinga's perfdata parsing
(issue 19, perf/bench_writer_format.py). ``RecordCache`` keeps the decoded ``params`` of
the records read lately, keyed by queue position and checked against the stored bytes, so
the second and third writer reading a record get the first one's objects; a
``RecordParams`` carries its ``ResultView`` (``formats.result_view``), which carries its
parsed perfdata, so those are built once per record too. Writers far apart (one of them
backlogged) just miss the cache and decode for themselves: the cache changes what is
computed, never what is written.

Records handed to backends are shared between writers: backends must not modify them.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["RecordCache", "RecordParams", "decode_record"]


class RecordParams(dict[str, Any]):
    """The ``params`` of one stored ``event::CheckResult``: a plain dict for the backends,
    with a slot where ``formats.result_view`` memoises the record's view."""

    __slots__ = ("view",)

    def __init__(self, params: dict[str, Any]) -> None:
        super().__init__(params)
        #: ``formats.result_view`` of this record once computed (None: not a usable
        #: check result); False until then.
        self.view: Any = False


def decode_record(raw: bytes) -> RecordParams | None:
    """The ``params`` of a stored ``event::CheckResult`` message, or None if unusable."""
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    params = message.get("params") if isinstance(message, dict) else None
    return RecordParams(params) if isinstance(params, dict) else None


class RecordCache:
    """Decoded records by queue position, shared by the runners of one process (all on
    its one event loop thread). A hit needs the same position *and* the same bytes, so
    queues whose positions overlap (an old per-writer queue drained first, ``legacy.py``)
    never get each other's records. Bounded by ``limit`` records: when full, the older
    half is dropped (what every runner has read long ago)."""

    def __init__(self, limit: int = 4096) -> None:
        self.limit = max(2, limit)
        self.hits = 0
        self.misses = 0
        self._records: dict[int, tuple[bytes, RecordParams | None]] = {}

    def __len__(self) -> int:
        return len(self._records)

    def decode(self, position: int, raw: bytes) -> RecordParams | None:
        """``decode_record(raw)``, from the cache when a runner decoded it already."""
        cached = self._records.get(position)
        if cached is not None and cached[0] == raw:
            self.hits += 1
            return cached[1]
        self.misses += 1
        params = decode_record(raw)
        records = self._records
        if len(records) >= self.limit:
            keep = list(records.items())[len(records) // 2:]
            records = self._records = dict(keep)
        records[position] = (raw, params)
        return params
