"""Tests of router.config: TOML parsing, line-precise validation, quickstart, round trips."""

from __future__ import annotations

import os
import pickle
import textwrap

import pytest

from router.config import (
    DEFAULT_LOG_DURATION,
    FrozenMap,
    Limits,
    NodeConfig,
    ObjectsConfig,
    RouterConfig,
    Timeouts,
    TLSConfig,
    check_topology,
    config_to_toml,
    format_address,
    load_config,
    load_zones,
    parse_address,
    parse_config,
    parse_duration,
    parse_size,
    quickstart_config,
    validate,
)
from router.errors import ConfigError
from router.routing import EndpointSpec, ZoneSpec

# Line numbers matter: the tests below refer to them.
BASE = """\
# test configuration
listen = "127.0.0.1:5665"
log_level = "info"

[node]
name = "master1"
data_dir = "/var/lib/router"

[[zones]]
name = "master"
endpoints = ["master1", "master2"]

[[zones]]
name = "satellite"
parent = "master"
endpoints = [
  "sat1",
  "sat2",
]

[[endpoints]]
name = "master1"

[[endpoints]]
name = "master2"
addresses = ["192.0.2.2:5665"]

[[endpoints]]
name = "sat1"
host = "sat1.example.com"

[[endpoints]]
name = "sat2"
host = "2001:db8::2"
port = 5666
"""
BASE_LINES = BASE.count("\n")          # 35


def with_line(n: int, text: str) -> str:
    """BASE with line ``n`` (1-based) replaced by ``text`` (which may hold several lines)."""
    lines = BASE.splitlines()
    lines[n - 1] = text
    return "\n".join(lines) + "\n"


def appended(text: str) -> str:
    """BASE followed by ``text``; its first line is line BASE_LINES + 1."""
    return BASE + textwrap.dedent(text)


def error_of(text: str, path: str = "router.toml") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, path=path)
    return info.value


# --------------------------------------------------------------------------------------------
# Happy path and defaults
# --------------------------------------------------------------------------------------------


def test_base_config_parses() -> None:
    cfg = parse_config(BASE, path="/etc/router/router.toml")
    assert cfg.node == NodeConfig(name="master1", data_dir="/var/lib/router")
    assert cfg.listen == ("127.0.0.1", 5665)
    assert cfg.zones == (
        ZoneSpec("master", ("master1", "master2")),
        ZoneSpec("satellite", ("sat1", "sat2"), parent="master"),
    )
    assert cfg.endpoints == (
        EndpointSpec("master1"),
        EndpointSpec("master2", (("192.0.2.2", 5665),)),
        EndpointSpec("sat1", (("sat1.example.com", 5665),)),
        EndpointSpec("sat2", (("2001:db8::2", 5666),)),
    )
    assert cfg.path == "/etc/router/router.toml"
    assert cfg.zone_of("sat2") == cfg.zones[1]
    assert cfg.keeps_results() is True


def test_defaults() -> None:
    cfg = parse_config(textwrap.dedent("""\
        [node]
        name = "solo"
        data_dir = "/srv/solo"
        [[zones]]
        name = "solo"
        endpoints = ["solo"]
        [[endpoints]]
        name = "solo"
        """))
    assert cfg.listen == ("127.0.0.1", 5665)
    assert cfg.status_listen == ("127.0.0.1", 9665)
    assert cfg.log_level == "info"
    assert cfg.results == "auto"
    assert cfg.node.icinga_version == 21306
    assert cfg.node.accept_commands is False
    assert cfg.tls == TLSConfig(ca="/srv/solo/certs/ca.crt", cert="/srv/solo/certs/solo.crt",
                                key="/srv/solo/certs/solo.key")
    assert cfg.limits == Limits()
    assert cfg.limits.max_message_size_anonymous == 1024 * 1024
    assert cfg.limits.max_message_size_child == 16 * 1024 * 1024
    assert cfg.limits.max_message_size_peer == 128 * 1024 * 1024
    assert (cfg.limits.send_queue_high_bytes, cfg.limits.send_queue_low_bytes) == (
        8 * 1024 * 1024, 2 * 1024 * 1024)
    assert (cfg.limits.send_queue_high_messages, cfg.limits.send_queue_low_messages) == (
        20000, 5000)
    assert (cfg.limits.max_connections, cfg.limits.max_anonymous_clients,
            cfg.limits.dial_concurrency, cfg.limits.max_json_depth) == (20000, 100, 64, 128)
    assert cfg.limits.handshake_threads == 0
    assert cfg.timeouts == Timeouts()
    assert (cfg.timeouts.handshake, cfg.timeouts.connect, cfg.timeouts.heartbeat_interval,
            cfg.timeouts.liveness, cfg.timeouts.anonymous, cfg.timeouts.enrollment,
            cfg.timeouts.reconnect_min, cfg.timeouts.reconnect_max,
            cfg.timeouts.slow_consumer, cfg.timeouts.drain) == (
        10.0, 15.0, 20.0, 60.0, 10.0, 60.0, 1.0, 60.0, 60.0, 10.0)
    assert cfg.objects == ObjectsConfig(unknown="reject", hosts={})  # issue 16: default-deny
    assert cfg.endpoint_log_duration == {"solo": DEFAULT_LOG_DURATION}
    assert cfg.log_duration("unknown") == 86400.0


def test_all_sections() -> None:
    cfg = parse_config(appended("""\
        [tls]
        ca = "/pki/ca.pem"
        [limits]
        max_message_size_child = "32MiB"
        send_queue_high_bytes = 1000000
        send_queue_low_bytes = "500KB"
        dial_concurrency = 8
        handshake_threads = 4
        [timeouts]
        liveness = "2m"
        heartbeat_interval = 15
        drain = 2.5
        reconnect_max = "500ms"
        reconnect_min = "100ms"
        [objects]
        unknown = "reject"
        [objects.hosts]
        web01 = "satellite"
        "db01.example.com" = "master"
        """).replace('log_level = "info"', 'log_level = "DEBUG"\nresults = false\n'
                                          'status_listen = "none"'))
    assert cfg.log_level == "debug"
    assert cfg.results == "off"
    assert cfg.status_listen is None
    assert cfg.tls.ca == "/pki/ca.pem"
    assert cfg.tls.cert == "/var/lib/router/certs/master1.crt"
    assert cfg.limits.max_message_size_child == 32 * 1024 * 1024
    assert cfg.limits.send_queue_low_bytes == 500_000
    assert cfg.limits.dial_concurrency == 8
    assert cfg.limits.handshake_threads == 4
    assert cfg.timeouts.liveness == 120.0
    assert cfg.timeouts.drain == 2.5
    assert cfg.timeouts.reconnect_min == pytest.approx(0.1)
    assert cfg.objects.unknown == "reject"
    assert dict(cfg.objects.hosts) == {"web01": "satellite", "db01.example.com": "master"}
    assert cfg.keeps_results() is False


@pytest.mark.parametrize("value, expected", [
    ('"none"', None), ("false", None), ('"None"', None),
    ('"0.0.0.0:5665"', ("0.0.0.0", 5665)),
    ('"[::]:5665"', ("::", 5665)),
    ('"[::1]"', ("::1", 5665)),
    ('"localhost"', ("localhost", 5665)),
    ('"127.0.0.1:0"', ("127.0.0.1", 0)),
])
def test_listen_values(value: str, expected: object) -> None:
    cfg = parse_config(with_line(2, f"listen = {value}"))
    assert cfg.listen == expected


def test_endpoint_address_styles() -> None:
    cfg = parse_config(appended("""\

        [[endpoints]]
        name = "e1"
        host = "e1.example.com"
        port = "5667"

        [[endpoints]]
        name = "e2"
        host = ""

        [[endpoints]]
        name = "e3"
        addresses = ["[2001:db8::3]:5665", "e3.example.com", "192.0.2.3:7000"]
        log_duration = "12h"
        """))
    eps = {e.name: e for e in cfg.endpoints}
    assert eps["e1"].addresses == (("e1.example.com", 5667),)
    assert eps["e2"].addresses == ()
    assert eps["e3"].addresses == (("2001:db8::3", 5665), ("e3.example.com", 5665),
                                   ("192.0.2.3", 7000))
    assert cfg.endpoint_log_duration["e3"] == 43200.0
    assert cfg.log_duration("e1") == 86400.0


# --------------------------------------------------------------------------------------------
# Address, duration and size parsing
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("[::1]:5665", ("::1", 5665)),
    ("[::1]", ("::1", 5665)),
    ("[2001:db8::1]:443", ("2001:db8::1", 443)),
    ("[fe80::1%eth0]:5665", ("fe80::1%eth0", 5665)),
    ("192.0.2.1:5665", ("192.0.2.1", 5665)),
    ("192.0.2.1", ("192.0.2.1", 5665)),
    ("icinga.example.com", ("icinga.example.com", 5665)),
    ("icinga.example.com:6000", ("icinga.example.com", 6000)),
    ("  host:1  ", ("host", 1)),
])
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text, reason", [
    ("::1", "brackets"),
    ("2001:db8::1:5665", "brackets"),
    ("[::1", "missing ']'"),
    ("[::1]5665", "after ']'"),
    ("[not-v6]:5665", "only IPv6"),
    ("[::g]:5665", "not a valid IPv6"),
    ("host:", "invalid port"),
    ("host:http", "invalid port"),
    ("host:70000", "out of range"),
    ("host:0", "out of range"),
    (":5665", "missing host"),
    ("", "empty"),
    ("bad host:5665", "not a valid host"),
])
def test_parse_address_errors(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_address(text)


def test_format_address_round_trip() -> None:
    for host, port in (("::1", 5665), ("192.0.2.1", 1), ("a.example", 5665)):
        assert parse_address(format_address(host, port)) == (host, port)
    assert format_address("::1", 5665) == "[::1]:5665"


@pytest.mark.parametrize("value, seconds", [
    (10, 10.0), (2.5, 2.5), ("30", 30.0), ("100ms", 0.1), ("45s", 45.0), ("30m", 1800.0),
    ("12h", 43200.0), ("1d", 86400.0), ("1.5m", 90.0), (".5s", 0.5),
])
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["5min", "1w", "", "-1s", True, [1]])
def test_parse_duration_errors(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize("value, size", [
    (1, 1), ("1MiB", 1048576), ("512 KiB", 524288), ("2MB", 2_000_000), ("7", 7),
    ("1gib", 1024**3), ("10B", 10),
])
def test_parse_size(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["1.5MiB", "1 PB", "lots", 1.0, True])
def test_parse_size_errors(value: object) -> None:
    with pytest.raises(ValueError):
        parse_size(value)


# --------------------------------------------------------------------------------------------
# Validation errors: every one with its exact line and key
# --------------------------------------------------------------------------------------------

E = BASE_LINES + 1      # first line of appended text

ERROR_CASES = [
    # (id, text, line, key, message fragment)
    ("parent-unknown", with_line(15, 'parent = "mastr"'), 15, "zones[1].parent",
     "zone 'mastr' is not defined (did you mean 'master'?)"),
    ("zone-endpoint-unknown", with_line(18, '  "sat3",'), 18, "zones[1].endpoints[1]",
     "endpoint 'sat3' is not defined (did you mean"),
    ("zone-endpoint-unknown-single-line", with_line(11, 'endpoints = ["master1", "mister"]'),
     11, "zones[0].endpoints[1]", "endpoint 'mister' is not defined"),
    ("zone-endpoint-unknown-no-hint", with_line(11, 'endpoints = ["master1", "zzzzzz"]'),
     11, "zones[0].endpoints[1]", "add an [[endpoints]] entry"),
    ("endpoint-in-two-zones", with_line(11, 'endpoints = ["master1", "master2", "sat1"]'),
     17, "zones[1].endpoints[0]", "endpoint 'sat1' is already in zone 'master'"),
    ("endpoint-twice-in-zone", with_line(11, 'endpoints = ["master1", "master1"]'),
     11, "zones[0].endpoints[1]", "listed twice in zone 'master'"),
    ("duplicate-zone", with_line(14, 'name = "master"'), 14, "zones[1].name",
     "zone 'master' is defined twice (first at line 9)"),
    ("duplicate-endpoint", with_line(29, 'name = "master2"'), 29, "endpoints[2].name",
     "endpoint 'master2' is defined twice (first at line 24)"),
    ("cycle", with_line(12, 'parent = "satellite"'), 12, "zones[0].parent",
     "zone parents form a cycle: master -> satellite -> master"),
    ("own-parent", with_line(12, 'parent = "master"'), 12, "zones[0].parent",
     "cannot be its own parent"),
    ("global-with-parent", appended("""\
        [[zones]]
        name = "global-templates"
        global = true
        parent = "master"
        """), E + 3, "zones[2].parent", "global zone 'global-templates' cannot have a parent"),
    ("global-with-endpoints", appended("""\
        [[endpoints]]
        name = "x"
        [[zones]]
        name = "global-templates"
        endpoints = ["x"]
        global = true
        """), E + 4, "zones[2].endpoints", "global zone 'global-templates' cannot have endpoints"),
    ("parent-is-global", appended("""\
        [[zones]]
        name = "global-templates"
        global = true
        [[zones]]
        name = "agents"
        parent = "global-templates"
        """), E + 5, "zones[3].parent", "parent zone 'global-templates' is a global zone"),
    ("node-not-an-endpoint", with_line(6, 'name = "master3"'), 6, "node.name",
     "node 'master3' is not a defined endpoint (did you mean"),
    ("node-in-no-zone", appended("""\
        [[endpoints]]
        name = "lonely"
        """).replace('name = "master1"\ndata_dir', 'name = "lonely"\ndata_dir'),
     6, "node.name", "node 'lonely' is not an endpoint of any zone (zones: 'master', "
     "'satellite')"),
    ("unknown-top-level-key", with_line(3, 'log_levl = "info"'), 3, "log_levl",
     "unknown key 'log_levl' at the top level (did you mean 'log_level'?)"),
    ("unknown-zone-key", with_line(15, 'parnet = "master"'), 15, "zones[1].parnet",
     "unknown key 'parnet' in [[zones]] (did you mean 'parent'?)"),
    ("unknown-node-key", with_line(7, 'datadir = "/x"'), 7, "node.datadir",
     "unknown key 'datadir' in [node] (did you mean 'data_dir'?)"),
    ("unknown-limits-key", appended("""\
        [limits]
        max_conections = 5
        """), E + 1, "limits.max_conections", "(did you mean 'max_connections'?)"),
    ("unknown-timeouts-key", appended("""\
        [timeouts]
        hartbeat_interval = 5
        """), E + 1, "timeouts.hartbeat_interval", "(did you mean 'heartbeat_interval'?)"),
    ("unknown-table", appended("""\
        [limit]
        max_connections = 5
        """), E, "limit", "unknown key 'limit' at the top level (did you mean 'limits'?)"),
    ("top-level-key-in-table", with_line(7, 'data_dir = "/x"\nstatus_listen = "none"'), 8,
     "node.status_listen", "'status_listen' is a top-level key: move it above the first"),
    ("key-of-other-section", with_line(3, "dial_concurrency = 3"), 3, "dial_concurrency",
     "(it belongs in [limits])"),
    ("unknown-endpoint-key", with_line(30, 'hots = "sat1.example.com"'), 30,
     "endpoints[2].hots", "unknown key 'hots' in [[endpoints]] (did you mean 'host'?)"),
    ("wrong-type-string", with_line(7, "data_dir = 5"), 7, "node.data_dir",
     "expected a string, got an integer"),
    ("wrong-type-bool", with_line(6, 'name = "master1"\naccept_commands = "yes"'), 7,
     "node.accept_commands", "expected true or false, got a string"),
    ("wrong-type-int", appended("""\
        [limits]
        max_connections = 1.5
        """), E + 1, "limits.max_connections", "expected an integer, got a float"),
    ("wrong-type-endpoints", with_line(11, 'endpoints = "master1"'), 11, "zones[0].endpoints",
     "expected an array of strings, got a string"),
    ("wrong-type-endpoint-item", with_line(17, "  1,"), 17, "zones[1].endpoints[0]",
     "expected a string, got an integer"),
    ("wrong-type-global", with_line(15, 'global = "yes"'), 15, "zones[1].global",
     "expected true or false"),
    ("wrong-type-node-table", with_line(5, "node = 5").replace(
        'name = "master1"\ndata_dir = "/var/lib/router"\n', ""), 5, "node",
     "expected a table ([node]), got an integer"),
    ("bad-address", with_line(26, 'addresses = ["192.0.2.2:99999"]'), 26,
     "endpoints[1].addresses[0]", "port 99999 out of range"),
    ("bad-address-multiline", with_line(26, 'addresses = [\n  "a.example",\n  "::1",\n]'), 28,
     "endpoints[1].addresses[1]", "IPv6 addresses must be written in brackets"),
    ("bad-listen", with_line(2, 'listen = "127.0.0.1:http"'), 2, "listen", "invalid port"),
    ("bad-listen-type", with_line(2, "listen = 5665"), 2, "listen",
     "expected \"host:port\", \"none\" or false, got an integer"),
    ("bad-port", with_line(35, 'port = "ssh"'), 35, "endpoints[3].port", "invalid port 'ssh'"),
    ("bad-host", with_line(30, 'host = "sat1 example"'), 30, "endpoints[2].host",
     "not a valid host name"),
    ("port-without-host", with_line(22, 'name = "master1"\nport = 5665'), 23,
     "endpoints[0].port", "'port' needs a 'host'"),
    ("addresses-and-host", with_line(26, 'addresses = ["a"]\nhost = "b"'), 27,
     "endpoints[1].host", "use either 'addresses' or 'host'/'port', not both"),
    ("zero-limit", appended("""\
        [limits]
        max_connections = 0
        """), E + 1, "limits.max_connections", "must be a positive integer, got 0"),
    ("negative-limit", appended("""\
        [limits]

        dial_concurrency = -4
        """), E + 2, "limits.dial_concurrency", "must be a positive integer, got -4"),
    ("negative-handshake-threads", appended("""\
        [limits]
        handshake_threads = -1
        """), E + 1, "limits.handshake_threads", "must be an integer from 0 to 256, got -1"),
    ("low-water-above-high-bytes", appended("""\
        [limits]
        send_queue_high_bytes = "1MiB"
        send_queue_low_bytes = "1MiB"
        """), E + 2, "limits.send_queue_low_bytes",
     "send_queue_low_bytes (1048576) must be lower than send_queue_high_bytes (1048576)"),
    ("low-water-above-high-messages-default-low", appended("""\
        [limits]
        send_queue_high_messages = 100
        """), E + 1, "limits.send_queue_high_messages",
     "send_queue_low_messages (5000) must be lower than send_queue_high_messages (100)"),
    ("bad-size", appended("""\
        [limits]
        max_message_size_peer = "lots"
        """), E + 1, "limits.max_message_size_peer", "invalid size 'lots'"),
    ("zero-timeout", appended("""\
        [timeouts]
        handshake = 0
        """), E + 1, "timeouts.handshake", "must be a positive number of seconds, got 0.0"),
    ("bad-duration", appended("""\
        [timeouts]
        drain = "10 minutes"
        """), E + 1, "timeouts.drain", "invalid duration '10 minutes'"),
    ("reconnect-order", appended("""\
        [timeouts]
        reconnect_min = "2m"
        """), E + 1, "timeouts.reconnect_min", "reconnect_min (120) must not exceed"),
    ("heartbeat-vs-liveness", appended("""\
        [timeouts]
        liveness = 20
        """), E + 1, "timeouts.liveness", "heartbeat_interval (20) must be shorter than liveness"),
    ("log-level", with_line(3, 'log_level = "verbose"'), 3, "log_level",
     "invalid value 'verbose': expected one of 'debug', 'info', 'warning', 'error', 'critical'"),
    ("log-level-typo", with_line(3, 'log_level = "warn"'), 3, "log_level",
     "(did you mean 'warning'?)"),
    ("results", with_line(3, 'results = "sometimes"'), 3, "results", "expected one of 'auto'"),
    ("objects-unknown", appended("""\
        [objects]
        unknown = "drop"
        """), E + 1, "objects.unknown", "expected one of 'learn', 'reject'"),
    ("objects-host-zone", appended("""\
        [objects.hosts]
        web01 = "satelite"
        """), E + 1, "objects.hosts.web01",
     "zone 'satelite' is not defined (did you mean 'satellite'?)"),
    ("objects-host-dotted", appended("""\
        [objects.hosts]
        db.example.com = "master"
        """), E + 1, "objects.hosts.db",
     'write host names that contain dots in quotes, e.g. "db.example.com" = "zone"'),
    ("status-listen-equals-listen", with_line(3, 'status_listen = "127.0.0.1:5665"'), 3,
     "status_listen", "status_listen must differ from listen"),
    ("icinga-version", with_line(7, 'data_dir = "/x"\nicinga_version = -1'), 8,
     "node.icinga_version", "must be a positive integer"),
    ("node-name-bang", with_line(6, 'name = "a!b"'), 6, "node.name", "must not contain '!'"),
    ("node-name-slash", with_line(6, 'name = "../etc"'), 6, "node.name", "path separator"),
    ("empty-zone-name", with_line(14, 'name = ""'), 14, "zones[1].name", "must not be empty"),
    ("missing-data-dir", with_line(7, ""), 5, "node.data_dir",
     "missing required key 'data_dir' in [node]"),
    ("missing-zone-name", with_line(10, ""), 9, "zones[0].name",
     "missing required key 'name' in [[zones]]"),
    ("zones-not-array", 'zones = 3\n[node]\nname = "a"\ndata_dir = "/d"\n', 1, "zones",
     "expected [[zones]] entries, got an integer"),
    ("negative-log-duration", with_line(22, 'name = "master1"\nlog_duration = -5'), 23,
     "endpoints[0].log_duration", "must be zero or a positive number of seconds"),
]


@pytest.mark.parametrize("text, line, key, fragment",
                         [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_validation_errors(text: str, line: int, key: str, fragment: str) -> None:
    err = error_of(text)
    assert fragment in err.message, err.message
    assert err.line == line, str(err)
    assert err.key == key, str(err)
    assert err.path == "router.toml"
    assert str(err).startswith(f"router.toml:{line}: [{key}] ")


def test_error_message_exact_format() -> None:
    err = error_of(with_line(15, 'parent = "mastr"'))
    assert str(err) == ("router.toml:15: [zones[1].parent] zone 'mastr' is not defined "
                        "(did you mean 'master'?)")


def test_missing_node_table() -> None:
    err = error_of('listen = "none"\n')
    assert err.key == "node" and err.line is None
    assert str(err) == ("router.toml: [node] missing [node] table (it needs at least 'name' "
                        "and 'data_dir')")


def test_dotted_keys_and_inline_tables_are_located() -> None:
    text = BASE.replace('log_level = "info"', 'node.accept_commands = "no"')
    text = text.replace('[node]\nname = "master1"\ndata_dir = "/var/lib/router"\n', "")
    text = 'node = {name = "master1", data_dir = "/d"}\n' + text.replace(
        'node.accept_commands = "no"\n', "")
    assert parse_config(text).node.name == "master1"
    err = error_of('node.name = "master1"\nnode.data_dir = "/d"\nnode.accept_commands = 1\n')
    assert (err.line, err.key) == (3, "node.accept_commands")
    err = error_of('x = 1\nnode = {name = "m", data_dir = "/d", icinga_version = "2"}\n')
    assert (err.line, err.key) == (1, "x")
    err = error_of('node = {name = "m", data_dir = "/d",\\\n')  # syntax error
    assert err.line == 1


# --------------------------------------------------------------------------------------------
# TOML syntax errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, line, fragment", [
    ('a = 1\nb = [1,\n2,\n\n]]\n', 5, "TOML syntax error"),
    ('[node]\nname = "x\n', 2, "TOML syntax error"),
    ('[node]\nname = \n', 2, "Invalid value"),
    ('[node]\nname = "a"\nname = "b"\n', 3, "'node.name' is defined twice (first at line 2)"),
    ('[node]\nname = "a"\n\n[node]\n', 4, "TOML syntax error"),
    ('listen = "x"\nlisten = "y"', 2, "'listen' is defined twice"),
    ('[node]\nname = """abc\n\n', 2, "TOML syntax error"),
    ('a = [\n1,\n2', 3, "TOML syntax error"),
])
def test_toml_syntax_errors(text: str, line: int, fragment: str) -> None:
    err = error_of(text)
    assert fragment in err.message
    assert err.line == line, str(err)


def test_syntax_error_column_kept() -> None:
    err = error_of('[node]\nname = "a" b\n')
    assert err.line == 2
    assert "(column" in err.message


def test_locator_handles_multiline_strings_and_comments() -> None:
    text = (
        '# comment with [brackets] and key = "value"\n'
        'log_level = """\n'
        'debug = 1\n'
        '[not.a.table]\n'
        '"""\n'
        "listen = '''\n"
        "x'''\n"
        '[node] # trailing\n'
        'name = "master1"  # comment, "quoted"\n'
        'data_dir = "/d"\n'
        'accept_commands = "x"\n'
    )
    err = error_of(text)
    assert (err.line, err.key) == (11, "node.accept_commands")
    err = error_of(text.replace('accept_commands = "x"', "accept_commands = true"))
    assert (err.line, err.key) == (2, "log_level")           # the multi-line value itself
    err = error_of(text.replace('accept_commands = "x"', "accept_commands = true").replace(
        'log_level = """\ndebug = 1\n[not.a.table]\n"""', 'log_level = "info"'))
    assert (err.line, err.key) == (6, "node.name")   # no zones: the node is in none


# --------------------------------------------------------------------------------------------
# Relative paths
# --------------------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_file(tmp_path) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    path = conf_dir / "router.toml"
    path.write_text(BASE.replace('"/var/lib/router"', '"state"') + textwrap.dedent("""\
        [tls]
        ca = "pki/ca.crt"
        key = "../secret/master1.key"
        """))
    cfg = load_config(path)
    assert cfg.path == str(path)
    assert cfg.node.data_dir == str(conf_dir / "state")
    assert cfg.tls.ca == str(conf_dir / "pki" / "ca.crt")
    assert cfg.tls.cert == str(conf_dir / "state" / "certs" / "master1.crt")
    assert cfg.tls.key == str(tmp_path / "secret" / "master1.key")
    for p in (cfg.node.data_dir, cfg.tls.ca, cfg.tls.cert, cfg.tls.key):
        assert os.path.isabs(p)


def test_base_dir_argument_and_cwd(tmp_path, monkeypatch) -> None:
    text = BASE.replace('"/var/lib/router"', '"state"')
    cfg = parse_config(text, path="elsewhere/router.toml", base_dir=str(tmp_path))
    assert cfg.node.data_dir == str(tmp_path / "state")
    monkeypatch.chdir(tmp_path)
    assert parse_config(text).node.data_dir == str(tmp_path / "state")
    assert parse_config(text, path="sub/router.toml").node.data_dir == str(
        tmp_path / "sub" / "state")


def test_load_config_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"listen = \"\xff\"\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(bad)
    typo = tmp_path / "typo.toml"
    typo.write_text(with_line(15, 'parent = "mastr"'))
    with pytest.raises(ConfigError) as info:
        load_config(typo)
    assert str(info.value).startswith(f"{typo}:15: [zones[1].parent] zone 'mastr'")


# --------------------------------------------------------------------------------------------
# validate() on configurations built in code
# --------------------------------------------------------------------------------------------


def _cfg(**changes: object) -> RouterConfig:
    base = RouterConfig(
        node=NodeConfig("m1", "/d"), listen=("127.0.0.1", 5665),
        status_listen=("127.0.0.1", 9665), tls=TLSConfig.for_node("m1", "/d"),
        zones=(ZoneSpec("master", ("m1",)),), endpoints=(EndpointSpec("m1"),))
    return RouterConfig(**{**{f: getattr(base, f) for f in base.__dataclass_fields__},
                           **changes})


def test_validate_programmatic_config() -> None:
    validate(_cfg())
    cases = [
        (dict(limits=Limits(send_queue_low_messages=30000)), "limits.send_queue_low_messages"),
        (dict(limits=Limits(max_json_depth=0)), "limits.max_json_depth"),
        (dict(timeouts=Timeouts(drain=float("inf"))), "timeouts.drain"),
        (dict(log_level="loud"), "log_level"),
        (dict(results="yes"), "results"),
        (dict(objects=ObjectsConfig(unknown="maybe")), "objects.unknown"),
        (dict(objects=ObjectsConfig(hosts={"h": "nowhere"})), "objects.hosts.h"),
        (dict(zones=(ZoneSpec("master", ("m2",)),)), "zones[0].endpoints[0]"),
        (dict(zones=()), "node.name"),
        (dict(endpoint_log_duration={"ghost": 5.0}), "endpoints"),
        (dict(endpoint_log_duration={"m1": -1.0}), "endpoints[0].log_duration"),
        (dict(listen=("x", 70000)), "listen"),
        (dict(node=NodeConfig("m1", "")), "node.data_dir"),
    ]
    for changes, key in cases:
        with pytest.raises(ConfigError) as info:
            validate(_cfg(**changes))
        assert info.value.key == key, (changes, str(info.value))
        assert info.value.line is None


def test_check_topology_public() -> None:
    check_topology([ZoneSpec("a", ("x",))], [EndpointSpec("x")], node_name="x")
    with pytest.raises(ConfigError) as info:
        check_topology([ZoneSpec("a", ("x",), parent="b")], [EndpointSpec("x")],
                       path="z.conf", lines={"zones[0].parent": 7})
    assert str(info.value) == "z.conf:7: [zones[0].parent] zone 'b' is not defined"


def test_frozen_and_hashable() -> None:
    cfg = parse_config(appended('[objects.hosts]\nweb01 = "master"\n'))
    with pytest.raises(AttributeError):
        cfg.log_level = "debug"  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.objects.hosts["web02"] = "master"  # type: ignore[index]
    assert hash(cfg) == hash(parse_config(appended('[objects.hosts]\nweb01 = "master"\n')))
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    m = FrozenMap({"a": 1})
    assert m == {"a": 1} and m == FrozenMap([("a", 1)]) and m != {"a": 2}
    assert repr(m) == "FrozenMap({'a': 1})"


# --------------------------------------------------------------------------------------------
# Round trip through config_to_toml
# --------------------------------------------------------------------------------------------


def test_round_trip_base() -> None:
    cfg = parse_config(BASE, path="router.toml")
    again = parse_config(config_to_toml(cfg), path="router.toml")
    assert again == cfg


def test_round_trip_everything() -> None:
    cfg = RouterConfig(
        node=NodeConfig("m 1", "/var/lib/router", icinga_version=21400, accept_commands=True),
        listen=None, status_listen=("::1", 9000),
        tls=TLSConfig(ca="/pki/ca.crt", cert="/var/lib/router/certs/m 1.crt", key="/k/k.pem"),
        zones=(ZoneSpec("master", ("m 1", 'we"ird\\one')),
               ZoneSpec("agent", ("a1",), parent="master"),
               ZoneSpec("global-templates", global_=True)),
        endpoints=(EndpointSpec("m 1"), EndpointSpec('we"ird\\one', (("::1", 5665),)),
                   EndpointSpec("a1", (("a1.example", 1), ("192.0.2.1", 5665)))),
        limits=Limits(dial_concurrency=3, send_queue_low_bytes=100),
        timeouts=Timeouts(drain=0.25, liveness=90.0),
        objects=ObjectsConfig(unknown="reject", hosts={"web.example.com": "agent", "x": "master"}),
        results="on", log_level="warning", path="x.toml",
        endpoint_log_duration={"a1": 0.0, "m 1": 3600.5})
    validate(cfg)
    text = config_to_toml(cfg)
    assert parse_config(text, path="x.toml") == cfg
    assert "[limits]\nsend_queue_low_bytes = 100\ndial_concurrency = 3\n" in text
    assert "max_connections" not in text          # defaults are left out


# --------------------------------------------------------------------------------------------
# load_zones and quickstart
# --------------------------------------------------------------------------------------------

ZONES_CONF = """\
object Endpoint NodeName { }
object Endpoint "agent1" { host = "192.0.2.10"; log_duration = 0 }
object Zone ZoneName { endpoints = [ NodeName ] }
object Zone "agent1" { endpoints = [ "agent1" ]; parent = ZoneName }
object Zone "global-templates" { global = true }
"""


def test_load_zones_detects_format(tmp_path) -> None:
    toml_file = tmp_path / "zones.toml"
    toml_file.write_text(BASE)
    zones, endpoints = load_zones(toml_file)
    assert [z.name for z in zones] == ["master", "satellite"]
    assert [e.name for e in endpoints] == ["master1", "master2", "sat1", "sat2"]

    for name in ("zones.conf", "zones"):
        conf = tmp_path / name
        conf.write_text(ZONES_CONF)
        zones, endpoints = load_zones(conf, node_name="m1")
        assert zones[0] == ZoneSpec("m1", ("m1",))
        assert zones[1] == ZoneSpec("agent1", ("agent1",), parent="m1")
        assert endpoints[1] == EndpointSpec("agent1", (("192.0.2.10", 5665),))

    no_ext = tmp_path / "topology"
    no_ext.write_text(BASE)
    assert len(load_zones(no_ext)[0]) == 2


def test_load_zones_errors_have_lines(tmp_path) -> None:
    toml_file = tmp_path / "zones.toml"
    toml_file.write_text(with_line(15, 'parent = "mastr"'))
    with pytest.raises(ConfigError) as info:
        load_zones(toml_file)
    assert (info.value.path, info.value.line) == (str(toml_file), 15)
    conf = tmp_path / "zones.conf"
    conf.write_text(ZONES_CONF)
    with pytest.raises(ConfigError) as info:
        load_zones(conf)                    # NodeName unknown
    assert info.value.line == 1 and "'NodeName' is not defined" in info.value.message


def test_quickstart_standalone(tmp_path) -> None:
    cfg = quickstart_config(node_name="master1", data_dir=str(tmp_path))
    assert cfg.zones == (ZoneSpec("master1", ("master1",)),)
    assert cfg.endpoints == (EndpointSpec("master1"),)
    assert cfg.listen == ("127.0.0.1", 5665)
    assert cfg.status_listen == ("127.0.0.1", 9665)
    assert cfg.tls == TLSConfig.for_node("master1", str(tmp_path))
    assert cfg.path is None
    assert cfg.keeps_results()


def test_quickstart_options(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = quickstart_config(node_name="n", data_dir="state", listen="none",
                            status_listen="[::1]:9999", accept_commands=True)
    assert cfg.listen is None
    assert cfg.status_listen == ("::1", 9999)
    assert cfg.node.data_dir == str(tmp_path / "state")
    assert cfg.node.accept_commands is True
    assert quickstart_config(node_name="n", data_dir="/d", listen="0.0.0.0").listen == (
        "0.0.0.0", 5665)
    assert quickstart_config(node_name="n", data_dir="/d", listen=False).listen is None
    assert quickstart_config(node_name="n", data_dir="/d",
                             listen=("10.0.0.1", 1)).listen == ("10.0.0.1", 1)


def test_quickstart_with_zones_file(tmp_path) -> None:
    conf = tmp_path / "zones.conf"
    conf.write_text(ZONES_CONF)
    cfg = quickstart_config(node_name="m1", data_dir="/d", zones_file=str(conf))
    assert [z.name for z in cfg.zones] == ["m1", "agent1", "global-templates"]
    assert cfg.log_duration("agent1") == 0.0
    assert cfg.log_duration("m1") == 86400.0


def test_quickstart_node_not_in_zones_file(tmp_path) -> None:
    zones = tmp_path / "zones.toml"
    zones.write_text(BASE)
    with pytest.raises(ConfigError) as info:
        quickstart_config(node_name="other", data_dir="/d", zones_file=zones)
    assert info.value.key == "node.name"
    assert info.value.path == str(zones)


def test_quickstart_overrides_base(tmp_path) -> None:
    base = parse_config(BASE.replace('listen = "127.0.0.1:5665"',
                                     'listen = "0.0.0.0:5665"\nresults = "on"') + textwrap.dedent(
        """\
        [tls]
        ca = "/pki/ca.crt"
        [limits]
        dial_concurrency = 2
        """), path="/etc/router/router.toml")
    cfg = quickstart_config(base=base)
    assert cfg == base

    cfg = quickstart_config(base=base, node_name="master2", data_dir="/other",
                            listen="127.0.0.2:5665", status_listen="none")
    assert cfg.node == NodeConfig("master2", "/other")
    assert cfg.listen == ("127.0.0.2", 5665) and cfg.status_listen is None
    assert cfg.tls == TLSConfig(ca="/pki/ca.crt", cert="/other/certs/master2.crt",
                                key="/other/certs/master2.key")
    assert cfg.limits.dial_concurrency == 2 and cfg.results == "on"
    assert cfg.zones == base.zones and cfg.path == base.path

    conf = tmp_path / "zones.conf"
    conf.write_text(ZONES_CONF)
    cfg = quickstart_config(base=base, node_name="m1", zones_file=conf)
    assert cfg.zones[0].name == "m1"
    assert cfg.node.data_dir == "/var/lib/router"


def test_quickstart_errors() -> None:
    with pytest.raises(ConfigError, match="--node-name"):
        quickstart_config(data_dir="/d")
    with pytest.raises(ConfigError, match="--data-dir"):
        quickstart_config(node_name="n")
    with pytest.raises(ConfigError) as info:
        quickstart_config(node_name="n", data_dir="/d", listen="::1")
    assert info.value.key == "listen"
    with pytest.raises(ConfigError, match="must not contain"):
        quickstart_config(node_name="a!b", data_dir="/d")


# --------------------------------------------------------------------------------------------
# The example file and the reference stay in step with the code
# --------------------------------------------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tls_library() -> None:
    assert parse_config(BASE).tls.library == "bundled"
    cfg = parse_config(appended("""\
        [tls]
        library = "system"
        """))
    assert cfg.tls.library == "system"
    assert parse_config(config_to_toml(cfg)) == cfg
    err = error_of(appended("""\
        [tls]
        library = "gnutls"
        """))
    assert err.key == "tls.library"
    assert "unknown TLS library 'gnutls'" in str(err) and "'system'" in str(err)


def test_example_config_loads() -> None:
    cfg = load_config(os.path.join(ROOT, "examples", "router.toml"))
    assert cfg.node.name == "master1.example.com"
    satellite = next(z for z in cfg.zones if z.name == "satellite")
    assert len(satellite.endpoints) == 2 and satellite.parent == "master"
    agents = [z for z in cfg.zones if z.name.startswith("agent")]
    assert len(agents) >= 2
    assert cfg.keeps_results()
    assert parse_config(config_to_toml(cfg), path=cfg.path) == cfg


def test_reference_documents_every_key() -> None:
    import dataclasses
    import re
    import tomllib

    with open(os.path.join(ROOT, "docs", "configuration.md"), encoding="utf-8") as f:
        doc = f.read()
    names = ["listen", "status_listen", "log_level", "results", "name", "data_dir",
             "icinga_version", "accept_commands", "ca", "cert", "key", "library", "endpoints",
             "parent",
             "global", "addresses", "host", "port", "log_duration", "unknown", "hosts"]
    names += [f.name for f in dataclasses.fields(Limits)]
    names += [f.name for f in dataclasses.fields(Timeouts)]
    for name in names:
        assert f"| `{name}` |" in doc, name
    for block in re.findall(r"```toml\n(.*?)```", doc, re.S):
        tomllib.loads(block)


CHECKS_BASE = '''[node]
name = "m1"
data_dir = "d"
[[zones]]
name = "master"
endpoints = ["m1"]
[[zones]]
name = "agent1"
endpoints = ["a1"]
parent = "master"
[[zones]]
name = "far"
endpoints = ["f1"]
parent = "agent1"
[[endpoints]]
name = "m1"
[[endpoints]]
name = "a1"
[[endpoints]]
name = "f1"
'''


def test_checks_parse_and_round_trip():
    from router.config import config_to_toml, parse_config

    cfg = parse_config(CHECKS_BASE + '''[[checks]]
host = "a1"
service = "disk"
command = "disk"
command_endpoint = "a1"
interval = "30s"
max_check_attempts = 2
[checks.macros]
disk_wfree = "20%"
disk_partitions = ["/"]
[[checks]]
host = "web01"
command = "ping4"
''', "c.toml")
    disk, ping = cfg.checks
    assert (disk.name, disk.interval, disk.max_check_attempts) == ("a1!disk", 30.0, 2)
    assert dict(disk.macros) == {"disk_wfree": "20%", "disk_partitions": ["/"]}
    assert ping.name == "web01" and ping.command_endpoint is None
    assert parse_config(config_to_toml(cfg), "again.toml").checks == cfg.checks


@pytest.mark.parametrize("extra,line,text", [
    ('[[checks]]\nhost = "a1"\ncommand = "dummy"\ncommand_endpoint = "f1"\n', 24,
     "must be in our zone or a direct child zone"),
    ('[[checks]]\nhost = "a1"\ncommand = "dummy"\nzone = "nope"\n', 24, "zone 'nope'"),
    ('[[checks]]\nhost = "a1"\n', 21, "missing required key 'command'"),
    ('[[checks]]\nhost = "a1"\ncommand = "dummy"\nintervall = 5\n', 24, "intervall"),
])
def test_check_errors_name_the_line(extra, line, text):
    from router.config import parse_config

    with pytest.raises(ConfigError) as info:
        parse_config(CHECKS_BASE + extra, "c.toml")
    assert info.value.line == line and text in str(info.value), str(info.value)


def test_command_catalog_is_checked_at_load(tmp_path):
    from router.config import parse_config

    good = tmp_path / "cmds.toml"
    good.write_text('[commands.x]\ncommand = ["/bin/true"]\n')
    base = CHECKS_BASE.replace('data_dir = "d"', 'data_dir = "d"\ncommand_catalog = "cmds.toml"')
    cfg = parse_config(base, str(tmp_path / "c.toml"))
    assert cfg.node.command_catalog == str(good)
    good.write_text('[commands.x]\ncommand = [\n')
    with pytest.raises(ConfigError) as info:
        parse_config(base, str(tmp_path / "c.toml"))
    assert info.value.line == 4 and "unusable command catalog" in str(info.value)
