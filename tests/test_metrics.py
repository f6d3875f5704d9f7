from __future__ import annotations

import math
import os
import re
from pathlib import Path

import psutil
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families

from router.ops.exposition import (
    OPENMETRICS_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    FamilyCollector,
    registry,
    render,
    render_families,
)
from router.ops.metrics import (
    CATALOG,
    LabeledCounter,
    MetricFamily,
    RateSeries,
    family,
    process_families,
    process_info,
)

DOCS = Path(__file__).resolve().parent.parent / "docs" / "status-api.md"


def render_prometheus(families) -> str:
    """The text exposition (0.0.4) of ``families``, now rendered by prometheus_client."""
    body, content_type = render_families(families)
    assert content_type == TEXT_CONTENT_TYPE
    return body.decode("utf-8")


# --------------------------------------------------------------------------- rendering


def test_render_golden() -> None:
    families = [
        MetricFamily("router_messages_received_total", "counter",
                     "Messages received.", [
                         ({"endpoint": "sat1", "method": "event::CheckResult"}, 12),
                         ({"endpoint": "sat2", "method": "event::Heartbeat"}, 3.0),
                     ]),
        MetricFamily("router_up", "gauge", "Constant 1.", [({}, 1)]),
        MetricFamily("router_empty", "gauge", "No samples yet.", []),
        MetricFamily("router_ratio", "gauge", "A float.", [({"k": "v"}, 0.25)]),
    ]
    assert render_prometheus(families) == (
        "# HELP router_messages_received_total Messages received.\n"
        "# TYPE router_messages_received_total counter\n"
        'router_messages_received_total{endpoint="sat1",method="event::CheckResult"} 12.0\n'
        'router_messages_received_total{endpoint="sat2",method="event::Heartbeat"} 3.0\n'
        "# HELP router_up Constant 1.\n"
        "# TYPE router_up gauge\n"
        "router_up 1.0\n"
        "# HELP router_empty No samples yet.\n"
        "# TYPE router_empty gauge\n"
        "# HELP router_ratio A float.\n"
        "# TYPE router_ratio gauge\n"
        'router_ratio{k="v"} 0.25\n'
    )


def test_render_escaping() -> None:
    # A counter's name ends in _total (prometheus_client's rule, and the catalog's).
    fam = MetricFamily("m_total", "counter", 'help with \\ backslash\nand "quotes"', [
        ({"a": 'x"y', "b": "back\\slash", "c": "new\nline"}, 1),
    ])
    assert render_prometheus([fam]) == (
        '# HELP m_total help with \\\\ backslash\\nand "quotes"\n'
        "# TYPE m_total counter\n"
        'm_total{a="x\\"y",b="back\\\\slash",c="new\\nline"} 1.0\n'
    )
    [parsed] = text_string_to_metric_families(render_prometheus([fam]))
    assert parsed.documentation == 'help with \\ backslash\nand "quotes"'
    assert parsed.samples[0].labels == {"a": 'x"y', "b": "back\\slash", "c": "new\nline"}


def test_render_nothing() -> None:
    assert render_prometheus([]) == ""


@pytest.mark.parametrize("value, text", [
    (0, "0.0"),
    (7, "7.0"),
    (-3, "-3.0"),
    (True, "1.0"),
    (False, "0.0"),
    (2.0, "2.0"),
    (1e20, "1e+20"),
    (12345678901234.0, "1.2345678901234e+13"),
    (-0.0, "-0.0"),
    (0.1, "0.1"),
    (1.5e-7, "1.5e-07"),
    (123.456, "123.456"),
    (math.inf, "+Inf"),
    (-math.inf, "-Inf"),
    (math.nan, "NaN"),
])
def test_format_value(value, text) -> None:
    """How a sample value is written (prometheus_client's Go-style floats) and that it
    reads back as the same number."""
    out = render_prometheus([MetricFamily("v", "gauge", "Value.", [({}, value)])])
    assert out.splitlines()[-1] == f"v {text}"
    [parsed] = text_string_to_metric_families(out)
    got = parsed.samples[0].value
    if math.isnan(value):
        assert math.isnan(got)
    else:
        assert got == float(value)


def test_render_parses_as_prometheus_lines() -> None:
    """Every sample line matches the exposition grammar (name, labels, value)."""
    counter = LabeledCounter(("endpoint", "reason"))
    counter.inc(("a\\b", 'q"uote'))
    counter.inc(("line\nbreak", "x"), 5)
    text = render_prometheus([counter.to_family("router_handshake_failures_total",
                                                "Failures.")])
    sample = re.compile(
        r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*",?)*\})?'
        r" (\S+)$")
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        assert sample.match(line), line


# --------------------------------------------------------------------------- catalog


def test_catalog_names_are_valid_and_unique() -> None:
    names = [spec.name for spec in CATALOG]
    assert len(names) == len(set(names))
    for spec in CATALOG:
        assert re.fullmatch(r"router_[a-z0-9_]+", spec.name)
        assert spec.type in ("counter", "gauge", "histogram")
        assert spec.help and "\n" not in spec.help
        if spec.type == "counter":
            assert spec.name.endswith(("_total", "_seconds_total")), spec.name
        for label in spec.labels:
            assert re.fullmatch(r"[a-z_][a-z0-9_]*", label)


def test_catalog_documented() -> None:
    doc = DOCS.read_text(encoding="utf-8")
    for spec in CATALOG:
        assert f"`{spec.name}`" in doc, f"{spec.name} missing from docs/status-api.md"
        for label in spec.labels:
            assert f"`{label}`" in doc, f"label {label} of {spec.name} not documented"


def test_family_uses_catalog() -> None:
    fam = family("router_check_results_total", [({}, 4)])
    assert fam.type == "counter"
    assert fam.help
    assert fam.samples == [({}, 4)]
    assert family("router_reading_paused").samples == []
    with pytest.raises(KeyError):
        family("router_does_not_exist")


# --------------------------------------------------------------------------- counters


def test_labeled_counter() -> None:
    c = LabeledCounter(("endpoint", "method"))
    assert c.label_names == ("endpoint", "method")
    c.inc(("sat1", "event::CheckResult"))
    c.inc(("sat1", "event::CheckResult"), 4)
    c.inc(("sat2", "event::SetNextCheck"))
    assert dict(c.items()) == {("sat1", "event::CheckResult"): 5,
                               ("sat2", "event::SetNextCheck"): 1}
    assert c.get(("sat1", "event::CheckResult")) == 5
    assert c.get(("nope", "x")) == 0
    assert c.total() == 6
    assert len(c) == 2
    assert c.samples() == [
        ({"endpoint": "sat1", "method": "event::CheckResult"}, 5),
        ({"endpoint": "sat2", "method": "event::SetNextCheck"}, 1),
    ]
    fam = c.to_family("router_messages_received_total")
    assert fam.type == "counter" and fam.name == "router_messages_received_total"
    assert len(fam.samples) == 2
    c.clear()
    assert len(c) == 0


# --------------------------------------------------------------------------- rate meter


class RateMeter:
    """One series of a RateSeries, the shape the tests below were written for."""

    def __init__(self) -> None:
        self.series = RateSeries(1)

    def add(self, now: float, n: int = 1) -> None:
        self.series.add(0, now, n)

    def count(self, now: float) -> int:
        return self.series.count(0, now)

    def rate(self, now: float) -> float:
        return self.series.rate(0, now)

    @property
    def total(self) -> int:
        return self.series.total(0)


def test_rate_series_are_independent_and_share_the_window() -> None:
    r = RateSeries(4)
    assert r.total(2) == 0 and r.count(3, 100.0) == 0 and r._buckets is None
    r.add(0, 100.0)
    r.add(2, 100.5, 1000)
    r.add(2, 130.0, 24)
    assert [r.count(i, 130.0) for i in range(4)] == [1, 0, 1024, 0]
    assert r.count(2, 159.9) == 1024                  # second 100 still in (100..159)
    assert [r.count(i, 160.0) for i in range(4)] == [0, 0, 24, 0]
    assert [r.total(i) for i in range(4)] == [1, 0, 1024, 0]
    assert r.rate(2, 160.0) == pytest.approx(24 / 60)


def test_rate_meter_empty() -> None:
    m = RateMeter()
    assert m.rate(1000.0) == 0.0
    assert m.count(1000.0) == 0


def test_rate_meter_window_slides() -> None:
    m = RateMeter()
    t0 = 1_000_000.0
    for i in range(60):                 # one message per second for 60 s
        m.add(t0 + i + 0.5)
    assert m.count(t0 + 59.9) == 60
    assert m.rate(t0 + 59.9) == pytest.approx(1.0)
    # One second later the first bucket leaves the window.
    assert m.count(t0 + 60.1) == 59
    # Thirty seconds later half is gone.
    assert m.count(t0 + 89.0) == 30
    assert m.rate(t0 + 89.0) == pytest.approx(0.5)
    # The last bucket (second 59) expires at second 119.
    assert m.count(t0 + 118.5) == 1
    assert m.count(t0 + 119.0) == 0
    assert m.total == 60


def test_rate_meter_bursts_in_one_second() -> None:
    m = RateMeter()
    m.add(50.0, 300)
    m.add(50.9, 300)
    assert m.rate(50.9) == pytest.approx(10.0)
    assert m.rate(109.99) == pytest.approx(10.0)   # second 50 still in window (50..109)
    assert m.rate(110.0) == 0.0


def test_rate_meter_gap_longer_than_window() -> None:
    m = RateMeter()
    for i in range(30):
        m.add(100.0 + i, 2)
    assert m.count(129.0) == 60
    m.add(100.0 + 30 + 61, 1)            # 61 s gap: everything before is gone
    assert m.count(191.0) == 1
    m.add(10_000.0, 7)                   # a huge gap
    assert m.count(10_000.0) == 7
    assert m.rate(10_000.0) == pytest.approx(7 / 60)
    assert m.total == 60 + 1 + 7


def test_rate_meter_gap_exactly_window() -> None:
    m = RateMeter()
    m.add(200.0, 5)
    m.add(260.0, 1)                      # bucket index reused after exactly 60 s
    assert m.count(260.0) == 1


def test_rate_meter_read_before_first_add() -> None:
    """The buckets are made by the first add: reads before it move the window only."""
    m = RateMeter()
    assert m.count(300.0) == 0
    assert m.count(320.0) == 0
    m.add(310.0, 4)                      # older than the last read: counted at second 320
    assert m.count(320.0) == 4
    assert m.count(379.9) == 4
    assert m.count(380.0) == 0
    m2 = RateMeter()
    assert m2.count(300.0) == 0
    m2.add(500.0, 2)                     # a gap after a read, nothing counted before
    assert m2.count(500.0) == 2
    assert m2.total == 2


def test_rate_meter_clock_step_back() -> None:
    m = RateMeter()
    m.add(500.0)
    m.add(490.0)                         # counted in the current second
    assert m.count(500.0) == 2
    assert m.count(450.0) == 2           # a query in the past does not rewind
    assert m.count(560.0) == 0


def test_rate_meter_matches_naive_model() -> None:
    import random

    rng = random.Random(42)
    m = RateMeter()
    events: list[tuple[int, int]] = []
    head = 0                             # the meter never rewinds (queries advance it)
    t = 10_000.0
    for _ in range(2000):
        t += rng.choice([0.0, 0.1, 0.7, 1.0, 3.2, 17.0, 59.0, 60.0, 61.0, 130.0])
        n = rng.randint(1, 5)
        m.add(t, n)
        head = max(head, int(t))
        events.append((head, n))
        now = t + rng.choice([0.0, 0.5, 10.0])
        head = max(head, int(now))
        expected = sum(k for s, k in events if head - 60 < s <= head)
        assert m.count(now) == expected


def test_rate_series_match_the_naive_model_each() -> None:
    """Four series written in random order: each equals its own naive window."""
    import random

    rng = random.Random(7)
    r = RateSeries(4)
    events: list[tuple[int, int, int]] = []
    head = 0
    t = 5_000.0
    for _ in range(3000):
        t += rng.choice([0.0, 0.0, 0.3, 1.0, 2.5, 59.0, 61.0, 140.0])
        series, n = rng.randrange(4), rng.randint(1, 9)
        r.add(series, t, n)
        head = max(head, int(t))
        events.append((series, head, n))
        now = t + rng.choice([0.0, 0.5, 30.0])
        head = max(head, int(now))
        for i in range(4):
            expected = sum(k for s, sec, k in events if s == i and head - 60 < sec <= head)
            assert r.count(i, now) == expected
    assert [r.total(i) for i in range(4)] == [sum(k for s, _, k in events if s == i)
                                              for i in range(4)]


# --------------------------------------------------------------------------- process


def test_process_families() -> None:
    fams = process_families()
    names = [f.name for f in fams]
    assert names == [
        "router_process_resident_memory_bytes",
        "router_process_cpu_seconds_total",
        "router_process_open_fds",
        "router_process_threads",
        "router_process_start_time_seconds",
    ]
    by_name = {f.name: f for f in fams}
    rss = by_name["router_process_resident_memory_bytes"].samples[0][1]
    assert rss > 1024 * 1024
    assert by_name["router_process_cpu_seconds_total"].type == "counter"
    assert by_name["router_process_cpu_seconds_total"].samples[0][1] > 0
    if hasattr(psutil.Process(), "num_fds"):
        assert by_name["router_process_open_fds"].samples[0][1] >= 3
    assert by_name["router_process_threads"].samples[0][1] >= 1
    start = by_name["router_process_start_time_seconds"].samples[0][1]
    assert abs(start - psutil.Process(os.getpid()).create_time()) < 1
    text = render_prometheus(fams)
    assert "# TYPE router_process_cpu_seconds_total counter" in text


def test_process_info_explicit_process_and_failures() -> None:
    info = process_info(psutil.Process(os.getpid()))
    assert set(info) == {"rss_bytes", "cpu_seconds", "open_fds", "threads", "start_time"}

    class Broken:
        def memory_info(self):
            raise psutil.AccessDenied(1)

        def cpu_times(self):
            raise psutil.AccessDenied(1)

        def num_threads(self):
            raise NotImplementedError

        def create_time(self):
            return 123.0

    info = process_info(Broken())
    assert info == {"rss_bytes": None, "cpu_seconds": None, "open_fds": None,
                    "threads": None, "start_time": 123.0}
    fams = process_families(Broken())
    assert [len(f.samples) for f in fams] == [0, 0, 0, 0, 1]
    text = render_prometheus(fams)
    assert "# HELP router_process_open_fds" in text
    assert "router_process_start_time_seconds 123.0\n" in text


def test_histogram_renders_suffixed_samples() -> None:
    fam = MetricFamily("wait_seconds", "histogram", "Wait.")
    fam.suffixed = [("_bucket", {"le": "0.1"}, 2), ("_bucket", {"le": "+Inf"}, 3),
                    ("_sum", {}, 0.25), ("_count", {}, 3)]
    assert render_prometheus([fam]) == (
        "# HELP wait_seconds Wait.\n# TYPE wait_seconds histogram\n"
        'wait_seconds_bucket{le="0.1"} 2.0\nwait_seconds_bucket{le="+Inf"} 3.0\n'
        "wait_seconds_sum 0.25\nwait_seconds_count 3.0\n")


# --------------------------------------------------------------------------- exposition


def _catalog_families() -> list[MetricFamily]:
    """One family per catalog entry, each with a sample carrying all its labels."""
    fams = []
    for spec in CATALOG:
        fam = family(spec.name)
        labels = {label: f"{label}-value" for label in spec.labels}
        if spec.type == "histogram":
            fam.suffixed = [("_bucket", {"le": "0.5"}, 1), ("_bucket", {"le": "+Inf"}, 2),
                            ("_sum", {}, 0.75), ("_count", {}, 2)]
        else:
            fam.samples = [(labels, 7)]
        fams.append(fam)
    return fams


def _expected_samples(spec) -> list[tuple[str, dict[str, str], float]]:
    if spec.type == "histogram":
        return [(spec.name + "_bucket", {"le": "0.5"}, 1.0),
                (spec.name + "_bucket", {"le": "+Inf"}, 2.0),
                (spec.name + "_sum", {}, 0.75), (spec.name + "_count", {}, 2.0)]
    return [(spec.name, {label: f"{label}-value" for label in spec.labels}, 7.0)]


def test_every_catalog_family_keeps_its_name_in_the_text_format() -> None:
    text = render_prometheus(_catalog_families())
    lines = text.splitlines()
    for spec in CATALOG:
        # prometheus_client strips _total from a counter family and adds it back here.
        assert f"# HELP {spec.name} {spec.help}" in lines, spec.name
        assert f"# TYPE {spec.name} {spec.type}" in lines, spec.name
    samples = {spec.name: [] for spec in CATALOG}
    for line in lines:
        if not line.startswith("#"):
            name = re.match(r"[a-z_]+", line).group(0)
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert base in samples, line
    parsed = [(s.name, s.labels, s.value)
              for fam in text_string_to_metric_families(text) for s in fam.samples]
    assert parsed == [sample for spec in CATALOG for sample in _expected_samples(spec)]
    for spec in CATALOG:
        # ... and the labels keep their names (prometheus_client sorts them by name).
        if spec.labels and spec.type != "histogram":
            inner = ",".join(f'{k}="{k}-value"' for k in sorted(spec.labels))
            assert f"{spec.name}{{{inner}}} 7.0" in lines, spec.name


def test_every_catalog_family_keeps_its_name_in_openmetrics() -> None:
    body, content_type = render_families(_catalog_families(),
                                         "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    text = body.decode()
    assert text.endswith("# EOF\n")
    fams = list(parse_openmetrics(text))        # the strict OpenMetrics parser accepts it
    assert [s.name for fam in fams for s in fam.samples] == [
        name for spec in CATALOG for name, _, _ in _expected_samples(spec)]
    assert [(s.labels, s.value) for fam in fams for s in fam.samples] == [
        (labels, value) for spec in CATALOG for _, labels, value in _expected_samples(spec)]
    types = {fam.name: fam.type for fam in fams}
    for spec in CATALOG:
        # OpenMetrics names a counter family without _total; its samples keep it.
        name = spec.name[:-len("_total")] if spec.type == "counter" else spec.name
        assert types[name] == spec.type, spec.name


@pytest.mark.parametrize("accept, openmetrics", [
    (None, False),
    ("", False),
    ("text/plain", False),
    ("*/*", False),
    ("application/json", False),
    ("application/openmetrics-text", True),
    ("application/openmetrics-text; version=1.0.0; charset=utf-8", True),
    # What Prometheus sends.
    ("application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;"
     "version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2", True),
])
def test_content_negotiation(accept, openmetrics) -> None:
    fams = [family("router_check_results_total", [({}, 5)])]
    body, content_type = render_families(fams, accept)
    text = body.decode()
    if openmetrics:
        assert content_type.startswith("application/openmetrics-text; version=1.0.0")
        assert "# TYPE router_check_results counter\nrouter_check_results_total 5.0\n" in text
        assert text.endswith("# EOF\n")
    else:
        assert content_type == TEXT_CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
        assert text == ("# HELP router_check_results_total "
                        "event::CheckResult messages accepted by the router.\n"
                        "# TYPE router_check_results_total counter\n"
                        "router_check_results_total 5.0\n")
    assert OPENMETRICS_CONTENT_TYPE.startswith("application/openmetrics-text")


def test_collector_reads_the_source_at_scrape_time() -> None:
    calls = []
    counter = {"n": 0}

    def source():
        calls.append(1)
        return [family("router_check_results_total", [({}, counter["n"])])]

    reg = registry(source)
    assert calls == []                          # registering does not collect
    counter["n"] = 3
    assert b"router_check_results_total 3.0\n" in render(reg)[0]
    counter["n"] += 1                           # the node's plain int moves on
    assert b"router_check_results_total 4.0\n" in render(reg)[0]
    assert len(calls) == 2
    assert [m.name for m in FamilyCollector(source).collect()] == ["router_check_results"]


def test_registry_has_no_default_collectors() -> None:
    text = render(registry(lambda: []))[0].decode()
    assert text == ""                           # no process_*, python_gc_*, python_info
    text = render(registry(lambda: [family("router_read_waiting", [({}, 0)])]))[0].decode()
    assert [line.split()[2] if line.startswith("#") else line.split()[0]
            for line in text.splitlines()] == ["router_read_waiting"] * 3


def test_counter_without_total_keeps_its_name() -> None:
    """Not in the catalog, but a hand-built counter family must not be renamed."""
    fam = MetricFamily("router_oddly_named", "counter", "Odd.", [({}, 2)])
    assert render_prometheus([fam]) == (
        "# HELP router_oddly_named Odd.\n# TYPE router_oddly_named untyped\n"
        "router_oddly_named 2.0\n")
