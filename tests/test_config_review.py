"""Configuration and command-line faults a review found (2026-12-07), each failing on the
code before its fix: an InfluxDB url with a bad port or an open bracket; commands that
printed a traceback on a bad file or argument; an agent_receive_buffer the kernel API
cannot take; a local check with an unknown command; zones.conf strings read unlike
Icinga's lexer; ``router replaylog dump --limit 0``."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from router.cli import main
from router.config import parse_config
from router.config.zonesconf import parse_zones_conf
from router.errors import ConfigError
from router.node.sessions import Sessions


# [[writers]] type = "influxdb": the url is only checked for scheme and hostname, so a
# malformed or out-of-range port passes `router config check` (the writer then fails on
# every connect with an internal-error traceback), and a malformed IPv6 url crashes the
# validator itself with a ValueError traceback instead of a file:line error.


BASE = ('[node]\nname = "m1"\ndata_dir = "d"\n'
        '[[zones]]\nname = "master"\nendpoints = ["m1"]\n'
        '[[endpoints]]\nname = "m1"\n'
        '[[writers]]\nname = "influx"\ntype = "influxdb"\n')


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999", "http://127.0.0.1:abc"])
def test_influxdb_url_with_a_bad_port_is_refused(url):
    with pytest.raises(ConfigError) as err:
        parse_config(BASE + f'url = "{url}"\n', path="router.toml")
    assert "writers[0].url" in str(err.value)


def test_influxdb_url_malformed_ipv6_gives_a_config_error_not_a_traceback(tmp_path):
    cfg = tmp_path / "router.toml"
    cfg.write_text(BASE + 'url = "http://[::1"\n')
    result = CliRunner().invoke(main, ["config", "check", str(cfg)])
    # a clean refusal: click exit code 1 and "Error: FILE:LINE: [writers[0].url] ..."
    assert not isinstance(result.exception, ValueError), repr(result.exception)
    assert result.exit_code == 1 and "writers[0].url" in result.output


# CLI commands that print a Python traceback instead of one 'Error: ...' line on a bad
# file or argument (the other commands wrap their work in operator_errors()).


def _clean_error(result) -> None:
    # click reports a ClickException as 'Error: ...' with exit code 1 and no exception
    # object other than SystemExit; anything else is a traceback for the operator.
    assert result.exit_code in (1, 2), (result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    assert "Error:" in result.output


def test_import_zones_non_utf8_file(tmp_path):
    conf = tmp_path / "zones.conf"
    conf.write_bytes(b'object Endpoint "caf\xe9" { }\n')      # Latin-1, as old files are
    _clean_error(CliRunner().invoke(main, ["config", "import-zones", str(conf)]))


def test_pki_issue_with_a_ca_dir_without_ca_files(tmp_path):
    ca_dir = tmp_path / "ca"
    ca_dir.mkdir()
    _clean_error(CliRunner().invoke(main, ["pki", "issue", "n1", "--ca-dir", str(ca_dir),
                                           "--out", str(tmp_path / "out")]))


def test_pki_new_ca_below_a_file(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    _clean_error(CliRunner().invoke(main, ["pki", "new-ca", str(afile / "ca")]))


def test_pki_new_cert_cn_with_a_slash(tmp_path):
    _clean_error(CliRunner().invoke(main, ["pki", "new-cert", "--cn", "a/b",
                                           "--data-dir", str(tmp_path / "d")]))


def test_reload_with_a_malformed_url(tmp_path):
    result = CliRunner().invoke(main, ["reload", "--url", "http://[::1",
                                       "--data-dir", str(tmp_path)])
    assert not isinstance(result.exception, ValueError), repr(result.exception)
    assert result.exit_code in (1, 2) and "Error" in result.output


def test_status_with_a_malformed_url():
    result = CliRunner().invoke(main, ["status", "--url", "http://[::1"])
    assert not isinstance(result.exception, ValueError), repr(result.exception)
    assert result.exit_code != 0 and "Error" in result.output


# [limits] agent_receive_buffer has a lower bound (>= 0) but no upper one: "2GiB" (or
# more) passes `router config check`, and then every agent session start calls
# setsockopt(SO_RCVBUF, 2**31), which raises TypeError/OverflowError (not OSError, the
# only thing router/node/sessions.py _limit_receive_buffer catches), in the middle of
# Sessions.handshake_done (after the connection was registered, before start_session).


BUFFER_TOML = ('[node]\nname = "m1"\ndata_dir = "d"\n'
               '[[zones]]\nname = "master"\nendpoints = ["m1"]\n'
               '[[endpoints]]\nname = "m1"\n'
               '[limits]\nagent_receive_buffer = "2GiB"\n')


def test_a_receive_buffer_the_kernel_api_cannot_take_is_refused_or_harmless():
    try:
        cfg = parse_config(BUFFER_TOML, path="router.toml")
    except ConfigError as exc:
        assert "agent_receive_buffer" in str(exc)
        return
    sessions = Sessions.__new__(Sessions)        # only .host is used by this method
    logged = []
    sessions.host = SimpleNamespace(log_peer=lambda *a, **k: logged.append(a))
    with socket.socket() as sock:
        conn = SimpleNamespace(transport=SimpleNamespace(get_extra_info=lambda k: sock))
        # accepted by the validator, so starting an agent's session must not raise
        sessions._limit_receive_buffer(conn, cfg.limits.agent_receive_buffer)


# A [[checks]] entry that runs locally (no command_endpoint) with a command that is in
# neither the bundled catalog nor [node] command_catalog passes `router config check`
# (validate.py _check_checks checks zone and command_endpoint only), although the catalog
# is at hand when the configuration loads (builder.py already loads command_catalog there).
# The misspelling shows up only at run time, as an UNKNOWN "unknown command" result per
# check interval. Icinga refuses such a Service at config validation.


CHECKS_TOML = ('[node]\nname = "m1"\ndata_dir = "d"\n'
               '[[zones]]\nname = "master"\nendpoints = ["m1"]\n'
               '[[endpoints]]\nname = "m1"\n'
               '[[checks]]\nhost = "h"\nservice = "disk"\ncommand = "dsik"\n')


def test_a_local_check_with_an_unknown_command_is_refused():
    parse_config(CHECKS_TOML.replace('"dsik"', '"disk"'), path="router.toml")  # the known one loads
    with pytest.raises(ConfigError) as err:
        parse_config(CHECKS_TOML, path="router.toml")
    assert "checks[0].command" in str(err.value)


# zones.conf strings the Icinga 2 lexer (lib/config/config_lexer.ll) reads differently:
#
# * octal escapes are bytes (`\303\251` is the UTF-8 of 'é', as in a name written by a
#   tool that escapes non-ASCII); the importer turns each into a code point ('Ã©'), so the
#   endpoint name no longer matches the certificate CN;
# * a backslash before a newline continues the string (Icinga keeps the newline); the
#   importer refuses it as an invalid escape;
# * an octal escape above 0xff (`\777`) is an error in Icinga ("Constant is out of
#   bounds"); the importer accepts it as U+01FF.


def test_octal_escapes_are_utf8_bytes_as_in_icinga():
    zc = parse_zones_conf('object Endpoint "caf\\303\\251" { }\n', path="zones.conf")
    assert zc.endpoints[0].name == "café"


def test_backslash_newline_continues_the_string_as_in_icinga():
    from router.config.source import Where
    from router.config.zonesconf import _tokenize
    toks = [t for t in _tokenize('"h\\\nx" y\n', Where("zones.conf")) if t.kind != "nl"]
    assert (toks[0].value, toks[1].value, toks[1].line) == ("h\nx", "y", 2)
    with pytest.raises(ConfigError, match="zones.conf:1: "):   # a name with a newline
        parse_zones_conf('object Endpoint "a" { host = "h\\\nx" }\n', path="zones.conf")


def test_octal_escape_out_of_byte_range_is_an_error_as_in_icinga():
    with pytest.raises(ConfigError):
        parse_zones_conf('object Endpoint "a\\777" { }\n', path="zones.conf")


# `router replaylog dump --limit 0` (or a negative limit) prints one record: the limit
# is checked only after a record was printed (router/cli/replaylog.py replaylog_dump).


def test_dump_limit_zero_prints_nothing(tmp_path):
    from replaylog import ReplayStore
    from router.protocol import jsonrpc, netstring

    store = ReplayStore(tmp_path / "replaylog")
    frames = [netstring.encode(jsonrpc.notification("event::SetNextCheck",
                                                    {"host": "h", "next_check": 5.0}, ts=t))
              for t in (10.0, 11.0)]
    store.append_many([("master", t, f, "agent1") for t, f in zip((10.0, 11.0), frames)])
    store.close()
    result = CliRunner().invoke(main, ["replaylog", "dump", "--data-dir", str(tmp_path),
                                       "--zone", "master", "--limit", "0"])
    # either refused as a bad value or an empty dump; not one record
    assert result.exit_code != 0 or result.output.strip() == "", result.output
