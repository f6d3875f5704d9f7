"""``[pki]`` in the TOML configuration: defaults, values, errors that name the line, and
``router serve --ticket-salt`` / a ``--config`` file keeping the table."""

from __future__ import annotations

import pytest

from router.config import parse_config, quickstart_config
from router.config.model import PKIConfig
from router.errors import ConfigError

BASE = """\
[node]
name = "m1"
data_dir = "/var/lib/router"

[[zones]]
name = "master"
endpoints = ["m1"]

[[endpoints]]
name = "m1"
"""
PKI_LINE = BASE.count("\n") + 3          # blank line, [pki], then the key


def test_defaults() -> None:
    cfg = parse_config(BASE, path="router.toml")
    assert cfg.pki == PKIConfig()
    assert cfg.pki.leaf_valid_days == 397 and cfg.pki.ticket_salt == ""
    assert cfg.pki.min_rsa_bits == 2048 and cfg.pki.max_pending_requests == 10000
    assert cfg.pki.renew_with_new_key is True


def test_values() -> None:
    cfg = parse_config(BASE + """
[pki]
ticket_salt = "s3cret"
leaf_valid_days = 90
min_rsa_bits = 3072
ec_curves = ["SECP384R1"]
max_pending_requests = 5
requests_per_minute = 2
renew_with_new_key = false
""", path="router.toml")
    assert cfg.pki == PKIConfig(ticket_salt="s3cret", leaf_valid_days=90, min_rsa_bits=3072,
                                ec_curves=("secp384r1",), max_pending_requests=5,
                                requests_per_minute=2, renew_with_new_key=False)


@pytest.mark.parametrize("line, key, fragment", [
    ('leaf_valid_days = 0', "pki.leaf_valid_days", "must be a positive integer"),
    ('leaf_valid_days = "1y"', "pki.leaf_valid_days", "expected an integer"),
    ('min_rsa_bits = 512', "pki.min_rsa_bits", "from 1024 to 16384"),
    ('ec_curves = ["secp256r2"]', "pki.ec_curves", "unknown EC curve 'secp256r2'"),
    ('ec_curves = "secp256r1"', "pki.ec_curves", "expected an array of strings"),
    ('max_pending_requests = -1', "pki.max_pending_requests", "must be a positive integer"),
    ('requests_per_minute = 0', "pki.requests_per_minute", "must be a positive integer"),
    ('ticket_salt = 5', "pki.ticket_salt", "expected a string"),
    ('renew_with_new_key = "yes"', "pki.renew_with_new_key", "expected true or false"),
    ('renew_before_days = 0', "pki.renew_before_days", "must be a positive integer"),
    ('renew_before_days = 397', "pki.renew_before_days",
     "must be less than pki.leaf_valid_days (397)"),
    ('ticket_sal = "x"', "pki.ticket_sal", "unknown key 'ticket_sal' in [pki]"),
])
def test_errors_name_the_line(line: str, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + "\n[pki]\n" + line + "\n", path="router.toml")
    err = info.value
    assert fragment in err.message, err.message
    assert err.key == key and err.line == PKI_LINE, str(err)
    assert str(err).startswith(f"router.toml:{PKI_LINE}: [{key}] ")


def test_quickstart_keeps_the_pki_table_of_the_config_file() -> None:
    base = parse_config(BASE + '\n[pki]\nticket_salt = "from-file"\n', path="router.toml")
    cfg = quickstart_config(base=base, listen="none")
    assert cfg.pki.ticket_salt == "from-file"


def test_serve_ticket_salt_option_overrides_the_file(tmp_path, monkeypatch) -> None:
    from click.testing import CliRunner

    from router import app
    from router.cli import main

    seen = []
    monkeypatch.setattr(app, "serve", lambda cfg, *args, **kw: seen.append(cfg) or 0)
    monkeypatch.setattr("router.ops.logs.setup_logging", lambda *args, **kw: None)
    path = tmp_path / "router.toml"
    path.write_text(BASE.replace("/var/lib/router", str(tmp_path / "data"))
                    + '\n[pki]\nticket_salt = "from-file"\n')
    plain = CliRunner().invoke(main, ["serve", "--config", str(path)])
    over = CliRunner().invoke(main, ["serve", "--config", str(path), "--ticket-salt", "cli"])
    assert plain.exit_code == 0 and over.exit_code == 0, plain.output + over.output
    assert [cfg.pki.ticket_salt for cfg in seen] == ["from-file", "cli"]


def test_round_trip_through_config_to_toml() -> None:
    from router.config import config_to_toml

    cfg = parse_config(BASE + """
[pki]
ticket_salt = "a \\"quoted\\" salt"
ec_curves = ["secp384r1", "secp521r1"]
requests_per_minute = 7
""", path="router.toml")
    text = config_to_toml(cfg)
    assert "[pki]" in text
    again = parse_config(text, path="router.toml")
    assert again.pki == cfg.pki
    assert "[pki]" not in config_to_toml(parse_config(BASE, path="router.toml"))
