"""The writers' process decodes a stored record once for all its writers (records.py):
what the cache may and may not share, and that sharing changes nothing written."""

from __future__ import annotations

import orjson

from router.config import WriterSpec
from router.features.writers.formats import graphite_lines, influx_lines, result_view
from router.features.writers.records import RecordCache, RecordParams, decode_record


def _raw(host: str, perfdata: list[str] | str, end: float = 1_700_000_000.25) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "method": "event::CheckResult", "params": {
        "host": host, "service": "disk space",
        "cr": {"execution_end": end, "state": 1, "performance_data": perfdata,
               "command": ["/usr/lib/nagios/plugins/check_disk", "-w", "10%"]}}})


def test_a_second_reader_of_a_position_gets_the_same_decoded_record() -> None:
    cache = RecordCache(limit=16)
    raw = _raw("web 01", ["/=10MB;20;30;0;40"])
    first = cache.decode(7, raw)
    again = cache.decode(7, bytes(raw))            # an equal copy, as another read returns
    assert first is not None and again is first
    assert (cache.hits, cache.misses) == (1, 1)


def test_same_position_other_bytes_is_decoded_again() -> None:
    """Overlapping positions of another queue (an old per-writer queue drained first)
    must never hand one writer another queue's record."""
    cache = RecordCache(limit=16)
    a = cache.decode(7, _raw("a", ["x=1"]))
    b = cache.decode(7, _raw("b", ["x=1"]))
    assert a is not None and b is not None
    assert (a["host"], b["host"]) == ("a", "b")
    assert cache.misses == 2


def test_the_cache_is_bounded_and_keeps_the_newest() -> None:
    cache = RecordCache(limit=10)
    raws = {p: _raw(f"h{p}", ["x=1"]) for p in range(100)}
    for p, raw in raws.items():
        cache.decode(p, raw)
    assert len(cache) <= 10
    hits = cache.hits
    cache.decode(99, raws[99])
    assert cache.hits == hits + 1


def test_unusable_records_are_none_and_cached_as_such() -> None:
    cache = RecordCache()
    assert cache.decode(1, b"not json") is None
    assert cache.decode(2, b'{"params": [1]}') is None
    assert decode_record(b'{"method": "x"}') is None


def test_the_view_and_its_perfdata_are_computed_once_per_record() -> None:
    params = decode_record(_raw("h", ["/=10MB;20;30;0;40", "bad=U", "b=2s"]))
    assert isinstance(params, RecordParams)
    view = result_view(params)
    assert view is not None and result_view(params) is view
    parsed = view.perfdata()
    assert view.perfdata() is parsed and len(parsed) == 3


def test_shared_records_give_each_writer_the_same_lines_and_counts_as_fresh_ones() -> None:
    """Graphite and InfluxDB formatting one shared record write and count exactly what
    each would from a record of its own (invalid perfdata counted per writer)."""
    raw = _raw("web 01.example", "a=1ms;2;3 'b c'=4KiB x=U d::e::f=5")
    spec = WriterSpec("g", "graphite")
    shared = decode_record(raw)
    assert shared is not None
    counted: list[str] = []

    def lines(record: dict[str, object]) -> tuple[list[str], list[str]]:
        view = result_view(record)
        assert view is not None
        g = graphite_lines(view, spec.host_name_template, spec.service_name_template,
                           thresholds=True, metadata=True,
                           on_invalid=lambda e: counted.append("g"))
        i = influx_lines(view, WriterSpec("i", "influxdb").service_template,
                         thresholds=True, metadata=True,
                         on_invalid=lambda e: counted.append("i"))
        return g, i
    first = lines(shared)
    second = lines(shared)                          # the second writer, same objects
    fresh = lines(dict(orjson.loads(raw)["params"]))  # a plain dict: no sharing at all
    assert first == second == fresh
    assert counted == ["g", "i"] * 3
    assert any(".perfdata.b_c.value 4096 " in line for line in first[0])
