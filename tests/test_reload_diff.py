"""The configuration diff of a reload (router.config.diff), pure."""

from __future__ import annotations

import dataclasses

from router.config import parse_config
from router.config.diff import diff_configs

BASE = """
[node]
name = "master"
data_dir = "/tmp/router-diff"
[tls]
ca = "/tmp/ca.crt"
cert = "/tmp/master.crt"
key = "/tmp/master.key"
[[zones]]
name = "master"
endpoints = ["master"]
[[zones]]
name = "a1"
endpoints = ["a1"]
parent = "master"
[[zones]]
name = "a2"
endpoints = ["a2"]
parent = "master"
[[endpoints]]
name = "master"
[[endpoints]]
name = "a1"
[[endpoints]]
name = "a2"
addresses = ["127.0.0.1:5665"]
"""


def cfg(text: str = BASE):
    return parse_config(text, "/tmp/router.toml")


def test_same_configuration_is_an_empty_diff() -> None:
    diff = diff_configs(cfg(), cfg(), old_tls_fingerprint="x", new_tls_fingerprint="x")
    assert diff.empty and not diff.topology
    assert diff.summary() == {} and diff.describe() == "none"


def test_endpoints_and_zones_added_removed_moved_readdressed() -> None:
    new = BASE.replace('name = "a1"\nendpoints = ["a1"]', 'name = "a1"\nendpoints = []')
    new = new.replace('name = "a2"\nendpoints = ["a2"]', 'name = "a2"\nendpoints = ["a2", "a1"]')
    new = new.replace('addresses = ["127.0.0.1:5665"]', 'addresses = ["127.0.0.1:5666"]')
    new += '[[zones]]\nname = "a3"\nendpoints = ["a3"]\nparent = "master"\n' \
           '[[endpoints]]\nname = "a3"\n'
    diff = diff_configs(cfg(), cfg(new))
    assert diff.endpoints_added == ("a3",)
    assert diff.zones_added == ("a3",)
    assert diff.endpoints_moved == ("a1",)
    assert diff.endpoints_readdressed == ("a2",)
    assert diff.zones_membership == ("a1", "a2")
    assert diff.endpoints_removed == () and diff.zones_removed == ()
    assert diff.topology and not diff.tls


def test_removed_and_reparented() -> None:
    new = BASE.replace('[[zones]]\nname = "a1"\nendpoints = ["a1"]\nparent = "master"\n', "")
    new = new.replace('[[endpoints]]\nname = "a1"\n', "")
    new = new.replace('name = "a2"\nendpoints = ["a2"]\nparent = "master"',
                      'name = "a2"\nendpoints = ["a2"]\nparent = "sat"')
    new += '[[zones]]\nname = "sat"\nparent = "master"\nendpoints = []\n'
    diff = diff_configs(cfg(), cfg(new))
    assert diff.endpoints_removed == ("a1",) and diff.zones_removed == ("a1",)
    assert diff.zones_reparented == ("a2",)
    assert diff.summary()["zones_removed"] == ["a1"]


def test_limits_timeouts_log_level_and_restart_only_keys() -> None:
    old = cfg()
    new = dataclasses.replace(
        old, limits=dataclasses.replace(old.limits, max_connections=5,
                                        handshake_threads=2),
        timeouts=dataclasses.replace(old.timeouts, liveness=30.0),
        log_level="debug", listen=("127.0.0.1", 1))
    diff = diff_configs(old, new)
    assert diff.limits == ("max_connections", "handshake_threads")
    assert diff.timeouts == ("liveness",)
    assert diff.log_level
    assert set(diff.restart_required) == {"listen", "limits.handshake_threads"}
    assert not diff.topology


def test_tls_change_by_path_or_by_content() -> None:
    old = cfg()
    moved = dataclasses.replace(old, tls=dataclasses.replace(old.tls, cert="/tmp/new.crt"))
    assert diff_configs(old, moved, old_tls_fingerprint="a", new_tls_fingerprint="a").tls
    assert diff_configs(old, old, old_tls_fingerprint="a", new_tls_fingerprint="b").tls
    assert not diff_configs(old, old, old_tls_fingerprint="a", new_tls_fingerprint="a").tls


def test_other_sections_are_reported_for_the_hooks() -> None:
    old = cfg()
    new = dataclasses.replace(old, pki=dataclasses.replace(old.pki, ticket_salt="s3cret"))
    diff = diff_configs(old, new)
    assert diff.other == ("pki",)
    assert "pki" not in diff.restart_required
