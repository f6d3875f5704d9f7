"""Sans-I/O parts of the result writers: Icinga's perfdata rules, names, escaping, lines."""

from __future__ import annotations

import math

import pytest

from router.config import WriterSpec
from router.features.writers.formats import (
    check_command_name,
    escape_graphite_label,
    escape_graphite_metric,
    escape_influx,
    graphite_lines,
    influx_lines,
    resolve_macros,
    result_view,
)
from router.features.writers.perfdata import (
    PerfdataError,
    PerfdataValue,
    iter_perfdata,
    parse_perfdata,
    split_perfdata,
)

SPEC = WriterSpec("w", "graphite")


@pytest.mark.parametrize("text, expected", [
    ("rta=0.5ms;100;200;0", PerfdataValue("rta", 0.0005, False, "seconds", 0.1, 0.2, 0.0)),
    ("pl=0%;80;100;0;100", PerfdataValue("pl", 0.0, False, "percent", 80, 100, 0, 100)),
    ("'a b'=1KiB", PerfdataValue("a b", 1024.0, False, "bytes")),
    ("disk=1.5GB;;;0;10", PerfdataValue("disk", 1.5e9, False, "bytes", None, None, 0, 1e10)),
    ("c=12c", PerfdataValue("c", 12.0, True, "")),
    ("t=10s;5:10;@20", PerfdataValue("t", 10.0, False, "seconds")),     # ranges dropped
    ("x=5foo", PerfdataValue("x", 5.0, False, "")),                      # unknown unit
    ("e=1e3", PerfdataValue("e", 1000.0)),
    ("temp=20C", PerfdataValue("temp", 20.0, False, "degrees-celsius")),
    ("a=b=3", PerfdataValue("a=b", 3.0)),          # the label ends at the LAST '='
    ("load1=0.5;;;0;", PerfdataValue("load1", 0.5, False, "", None, None, 0.0)),
    ("energy=2kWh", PerfdataValue("energy", 2000.0, False, "watt-hours")),
])
def test_perfdata_parses_like_icinga(text, expected):
    assert parse_perfdata(text) == expected


@pytest.mark.parametrize("text", ["novalue", "x=U", "x=1,5", "x=", "x=abc", "x=inf",
                                  "x=nan", "x=1e999"])
def test_invalid_perfdata_raises(text):
    with pytest.raises(PerfdataError):
        parse_perfdata(text)


def test_split_perfdata_keeps_quotes_and_multi_prefix():
    assert split_perfdata("a=1 'b c'=2 x::y::z=3 w=4") == [
        "a=1", "'b c'=2", "x::y::z=3", "x::y::w=4"]


def test_iter_perfdata_yields_errors_in_place_and_accepts_objects():
    items = list(iter_perfdata(["a=1", "bad", {"type": "PerfdataValue", "label": "o",
                                               "value": 2, "warn": 1, "unit": "B"}, 7]))
    assert items[0] == PerfdataValue("a", 1.0)
    assert isinstance(items[1], PerfdataError)
    assert items[2] == PerfdataValue("o", 2.0, False, "B", 1.0)
    assert isinstance(items[3], PerfdataError)
    assert list(iter_perfdata(None)) == [] and list(iter_perfdata("")) == []


@pytest.mark.parametrize("command, name", [
    (["/usr/lib/nagios/plugins/check_ping", "-H", "x"], "check_ping"),
    ("/usr/lib/nagios/plugins/check_disk -w 10%", "check_disk"),
    (["check_dummy"], "check_dummy"),
    ([], "unknown"), (None, "unknown"), ([3], "unknown"), ("  ", "unknown"),
])
def test_check_command_falls_back_to_plugin_base_name(command, name):
    assert check_command_name({"command": command}) == name


def _record(host="web 01.example/a", service: str | None = "ping 4",
            perfdata=("rta=0.5ms;100;200;0", "bad=1,2", "a::b c=3")):
    params = {"host": host, "cr": {
        "command": ["/usr/lib/nagios/plugins/check_ping"], "execution_start": 100.5,
        "execution_end": 1700000000.123456789, "schedule_start": 100.0,
        "schedule_end": 101.0, "state": 2, "performance_data": list(perfdata),
        "vars_after": {"state_type": 1, "attempt": 2, "reachable": False}}}
    if service is not None:
        params["service"] = service
    return params


def test_escaping_matches_icinga():
    assert escape_graphite_metric("web 01.example/a\\b") == "web_01_example_a_b"
    assert escape_graphite_label("a b/c\\d::e.f") == "a_b_c_d.e.f"
    assert escape_influx('a b,c=d"e') == 'a\\ b\\,c\\=d\\"e'
    assert escape_influx("C:\\") == "C:_"       # a trailing backslash would escape the separator


def test_graphite_lines_for_a_service_with_thresholds_and_metadata():
    view = result_view(_record())
    invalid: list[PerfdataError] = []
    lines = graphite_lines(view, SPEC.host_name_template, SPEC.service_name_template,
                           thresholds=True, metadata=True, on_invalid=invalid.append)
    prefix = "icinga2.web_01_example_a.services.ping_4.check_ping"
    assert f"{prefix}.perfdata.rta.value 0.0005 1700000000\n" in lines
    assert f"{prefix}.perfdata.rta.crit 0.2 1700000000\n" in lines
    assert f"{prefix}.perfdata.rta.min 0 1700000000\n" in lines
    assert not any(".rta.max" in line for line in lines)
    assert f"{prefix}.perfdata.a.b_c.value 3 1700000000\n" in lines
    assert f"{prefix}.metadata.state 2 1700000000\n" in lines
    assert f"{prefix}.metadata.reachable 0 1700000000\n" in lines
    assert f"{prefix}.metadata.current_attempt 2 1700000000\n" in lines
    assert len(invalid) == 1
    assert all(line.count(" ") == 2 and line.endswith("\n") for line in lines)


def test_graphite_host_template_and_unknown_macro():
    view = result_view(_record(host="db.example", service=None, perfdata=["x=1"]))
    lines = graphite_lines(view, "$host.name$.$host.vars.nope$.$host.check_command$",
                           "unused", thresholds=False, metadata=False, on_invalid=print)
    assert lines == ["db_example..check_ping.perfdata.x.value 1 1700000000\n"]
    lines = graphite_lines(view, SPEC.host_name_template, "", thresholds=False,
                           metadata=False, on_invalid=print)
    assert lines == ["icinga2.db_example.host.check_ping.perfdata.x.value 1 1700000000\n"]


def test_influx_lines_nanosecond_timestamps_and_default_templates():
    spec = WriterSpec("i", "influxdb")
    view = result_view(_record())
    lines = influx_lines(view, spec.service_template, thresholds=False, metadata=False,
                         on_invalid=lambda e: None)
    ts = round(1700000000.123456789 * 1e9)
    assert lines[0] == (f"check_ping,hostname=web\\ 01.example/a,service=ping\\ 4,metric=rta "
                        f"value=0.0005,unit=\"seconds\" {ts}\n")
    assert len(lines) == 2
    host_view = result_view(_record(service=None, perfdata=["x=1"]))
    [line] = influx_lines(host_view, spec.host_template, thresholds=True, metadata=False,
                          on_invalid=print)
    assert line.startswith("check_ping,hostname=web\\ 01.example/a,metric=x value=1.0 ")


def test_influx_metadata_point_and_missing_macro_drops_the_tag():
    template = {"measurement": "$service.check_command$",
                "tags": {"hostname": "$host.name$", "team": "$host.vars.team$"}}
    view = result_view(_record(perfdata=[]))
    [line] = influx_lines(view, template, thresholds=False, metadata=True, on_invalid=print)
    assert line.startswith("check_ping,hostname=web\\ 01.example/a state=2i,"
                           "current_attempt=2i,state_type=1i,reachable=false,")
    assert "team" not in line


@pytest.mark.parametrize("record", [
    {}, {"host": "h"}, {"host": "", "cr": {"execution_end": 1}},
    {"host": "h", "cr": {"execution_end": "x"}}, {"host": "h", "cr": []},
    {"host": 5, "cr": {"execution_end": 1.0}},
    {"host": "h", "cr": {"execution_end": math.inf}},
])
def test_unusable_records_are_refused(record):
    assert result_view(record) is None


def test_macros_dollar_escape_and_completeness():
    view = result_view(_record())
    assert resolve_macros("$$x $service.name$", view) == ("$x ping 4", True)
    assert resolve_macros("$host.nope$", view) == ("", False)


def test_name_cache_reuses_names_but_not_for_state_templates():
    from router.features.writers.formats import NameCache

    cache = NameCache(limit=2)
    calls: list[str] = []
    view = result_view(_record())

    def compute() -> str:
        calls.append("x")
        return "name"
    template = "icinga2.$host.name$"
    assert cache.get(view, template, compute) == "name"
    assert cache.get(view, template, compute) == "name"
    assert len(calls) == 1
    state_template = "$service.state$"
    cache.get(view, state_template, compute)
    cache.get(view, state_template, compute)
    assert len(calls) == 3


def test_router_status_shows_the_writers_table():
    from router.ops.statusview import format_status
    from tests.test_statusview import SAMPLE

    doc = dict(SAMPLE, writers={"carbon": {
        "type": "graphite", "active": True, "written": 1234, "backlog": 5,
        "lag_seconds": 2.5, "evicted": 0, "errors": {"connect": 2, "timeout": 1},
        "last_error": ""}})
    text = format_status(doc, now=1700000100.0)
    [line] = [ln for ln in text.splitlines() if ln.startswith("carbon")]
    assert line.split()[:5] == ["carbon", "graphite", "y", "1234", "5"]
    assert "Writers (1)" in text and " 3 " in line
