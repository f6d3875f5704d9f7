"""Command catalog: TOML loading and command lines built like Icinga's MacroProcessor."""

from __future__ import annotations

from pathlib import Path

import pytest

from checkers.catalog import DEFAULT_PLUGIN_DIR, Catalog, format_value
from checkers.errors import (
    CatalogError,
    CheckerError,
    MacroError,
    MacroMissing,
    UnknownCommand,
)
from router.cli import OPERATOR_ERRORS

P = DEFAULT_PLUGIN_DIR
ITL_NAMES = {"ping4", "ping6", "load", "disk", "procs", "users", "swap", "http", "tcp",
             "ssh", "dummy", "hostalive"}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


def small(text: str) -> Catalog:
    return Catalog.loads(text)


# --------------------------------------------------------------------------- bundled catalog


def test_bundled_catalog_has_the_itl_commands(catalog: Catalog) -> None:
    assert ITL_NAMES <= set(catalog.names())


def test_golden_execute_command_disk(catalog: Catalog) -> None:
    # icinga-protocol.md golden messages 8 and 9: the agent builds exactly this argv
    request = catalog.build("disk", {"disk_cfree": "10%", "disk_partitions": ["/"],
                                     "disk_wfree": "20%"})
    assert list(request.argv) == [f"{P}/check_disk", "-c", "10%", "-w", "20%", "-p", "/"]
    assert request.command_line == list(request.argv)
    assert request.internal is None and request.timeout == 60


def test_disk_several_partitions_and_defaults(catalog: Catalog) -> None:
    request = catalog.build("disk", {"disk_partitions": ["/", "/var"],
                                     "disk_exclude_type": ["tmpfs"]}, use_defaults=True)
    assert list(request.argv) == [f"{P}/check_disk", "-c", "10%", "-w", "20%",
                                  "-X", "tmpfs", "-m", "-p", "/", "-p", "/var"]


def test_disk_defaults_follow_the_itl(catalog: Catalog) -> None:
    argv = list(catalog.build("disk", {}, use_defaults=True).argv)
    assert argv[:5] == [f"{P}/check_disk", "-c", "10%", "-w", "20%"]
    assert argv[5:7] == ["-X", "none"] and argv.count("-X") == 16 and argv[-1] == "-m"


def test_ping4_with_collected_macros(catalog: Catalog) -> None:
    # what a parent sends: every macro it resolved, already final
    macros = {"ping_address": "192.0.2.1", "ping_wrta": 100, "ping_wpl": 5,
              "ping_crta": 200, "ping_cpl": 15}
    request = catalog.build("ping4", macros)
    assert list(request.argv) == [f"{P}/check_ping", "-4", "-H", "192.0.2.1",
                                  "-c", "200,15%", "-w", "100,5%"]


def test_ping4_with_defaults(catalog: Catalog) -> None:
    request = catalog.build("ping4", {"address": "192.0.2.1", "ping_packets": 3},
                            use_defaults=True)
    assert list(request.argv) == [f"{P}/check_ping", "-4", "-H", "192.0.2.1",
                                  "-c", "200,15%", "-p", "3", "-w", "100,5%"]


def test_ping6_uses_address6(catalog: Catalog) -> None:
    argv = catalog.build("ping6", {"address6": "2001:db8::1"}, use_defaults=True).argv
    assert argv[:4] == (f"{P}/check_ping", "-6", "-H", "2001:db8::1")


def test_hostalive_golden_api_execution(catalog: Catalog) -> None:
    # golden message 10: hostalive with only "address"; needs the ITL defaults
    request = catalog.build("hostalive", {"address": "10.0.0.7"}, use_defaults=True)
    assert list(request.argv) == [f"{P}/check_ping", "-H", "10.0.0.7",
                                  "-c", "5000,100%", "-w", "3000,80%"]


def test_hostalive_falls_back_to_address6(catalog: Catalog) -> None:
    argv = catalog.build("hostalive", {"address6": "::1"}, use_defaults=True).argv
    assert argv[1:3] == ("-H", "::1")
    argv = catalog.build("hostalive", {"address": "192.0.2.9", "address6": "::1",
                                       "check_ipv6": True}, use_defaults=True).argv
    assert argv[1:3] == ("-H", "::1")


def test_load_numbers_are_formatted_like_icinga(catalog: Catalog) -> None:
    request = catalog.build("load", {}, use_defaults=True)
    assert list(request.argv) == [f"{P}/check_load", "-c", "10,6,4", "-w", "5,4,3"]
    request = catalog.build("load", {"load_wload1": 0.5, "load_percpu": True},
                            use_defaults=True)
    assert list(request.argv) == [f"{P}/check_load", "-c", "10,6,4", "-r",
                                  "-w", "0.500000,4,3"]


def test_swap_conditional_values(catalog: Catalog) -> None:
    assert catalog.build("swap", {}, use_defaults=True).argv[1:] == ("-c", "25%", "-w", "50%")
    assert catalog.build("swap", {"swap_integer": True}, use_defaults=True).argv[1:] == \
        ("-c", "25", "-w", "50")


def test_http_address_only_when_not_empty(catalog: Catalog) -> None:
    argv = catalog.build("http", {"address": "192.0.2.5", "http_vhost": "example.org",
                                  "http_ssl": True}, use_defaults=True).argv
    assert argv == (f"{P}/check_http", "-H", "example.org", "-I", "192.0.2.5", "-S")
    argv = catalog.build("http", {"http_vhost": "example.org", "http_address": ""}).argv
    assert argv == (f"{P}/check_http", "-H", "example.org")


def test_tcp_keys_with_order(catalog: Catalog) -> None:
    argv = catalog.build("tcp", {"tcp_address": "192.0.2.1", "tcp_port": 25,
                                 "tcp_send": "QUIT", "tcp_escape_send": True,
                                 "tcp_quit": "BYE", "tcp_escape_quit": "true"}).argv
    assert argv == (f"{P}/check_tcp", "-H", "192.0.2.1", "-p", "25",
                    "-E", "-s", "QUIT", "-E", "-q", "BYE")


def test_ssh_host_is_positional(catalog: Catalog) -> None:
    argv = catalog.build("ssh", {"address": "192.0.2.3", "ssh_port": 2222},
                         use_defaults=True).argv
    assert argv == (f"{P}/check_ssh", "-p", "2222", "192.0.2.3")


def test_procs_and_users_defaults(catalog: Catalog) -> None:
    assert catalog.build("procs", {}, use_defaults=True).argv[1:] == \
        ("-c", "400", "-w", "250")
    assert catalog.build("users", {"users_wgreater": 5}, use_defaults=True).argv[1:] == \
        ("-c", "50", "-w", "5")


def test_dummy_is_internal(catalog: Catalog) -> None:
    request = catalog.build("dummy", {"dummy_state": 2, "dummy_text": "down"})
    assert request.internal == "dummy" and request.argv == ()
    assert dict(request.macros) == {"dummy_state": 2, "dummy_text": "down"}
    assert request.command_line == "dummy"          # Icinga puts the name in cr.command
    defaults = catalog.build("dummy", {}, use_defaults=True)
    assert dict(defaults.macros) == {"dummy_state": 0, "dummy_text": "Check was successful."}
    passive = catalog.build("passive", {}, use_defaults=True)
    assert passive.macros["dummy_state"] == 3


def test_timeout_and_plugin_dir(catalog: Catalog) -> None:
    request = catalog.build("users", {}, plugin_dir="/opt/plugins", timeout=30,
                            output_limit=4096)
    assert request.argv[0] == "/opt/plugins/check_users"
    assert (request.timeout, request.output_limit) == (30, 4096)


# --------------------------------------------------------------------------- errors


def test_missing_required_macro(catalog: Catalog) -> None:
    with pytest.raises(MacroMissing) as info:
        catalog.build("disk", {"disk_cfree": "10%"})
    assert info.value.macro == "disk_wfree" and info.value.argument == "-w"
    assert str(info.value) == ("Non-optional macro 'disk_wfree' used in argument '-w' is "
                               "missing.")
    assert isinstance(info.value, CheckerError) and isinstance(info.value, OPERATOR_ERRORS)


def test_missing_address_for_ping(catalog: Catalog) -> None:
    with pytest.raises(MacroMissing) as info:
        catalog.build("ping4", {"ping_wrta": 1})
    assert info.value.macro == "ping_address"
    with pytest.raises(MacroMissing) as info:
        catalog.build("hostalive", {}, use_defaults=True)
    assert info.value.macro == "address"


def test_optional_missing_macro_drops_the_argument(catalog: Catalog) -> None:
    argv = catalog.build("disk", {"disk_wfree": "1", "disk_cfree": "2",
                                  "disk_inode_wfree": "5%"}).argv
    assert argv == (f"{P}/check_disk", "-W", "5%", "-c", "2", "-w", "1")


def test_unknown_command(catalog: Catalog) -> None:
    with pytest.raises(UnknownCommand) as info:
        catalog.build("check_everything", {})
    assert str(info.value) == "Check command 'check_everything' does not exist."
    assert isinstance(info.value, KeyError) and info.value.command == "check_everything"


# --------------------------------------------------------------------------- semantics


def test_set_if_values() -> None:
    cat = small('[commands.c]\ncommand = ["/bin/c"]\narguments."-f" = { set_if = "$f$" }\n')
    for value, present in [(True, True), (False, False), ("true", True), ("false", False),
                           (1, True), (0, False), ("2", True), ("0", False), ("yes", False),
                           (None, False), (1.5, True)]:
        argv = cat.build("c", {"f": value}).argv
        assert ("-f" in argv) is present, value
    assert cat.build("c", {}).argv == ("/bin/c",)


def test_repeat_key_separator_skip_key() -> None:
    cat = small("""
[commands.c]
command = ["/bin/c"]
arguments."-a" = { value = "$list$", repeat_key = false }
arguments."--b" = { value = "$one$", separator = "=" }
arguments."pos" = { value = "$list$", skip_key = true, order = 5 }
""")
    argv = cat.build("c", {"list": ["x", "y"], "one": 3}).argv
    assert argv == ("/bin/c", "--b=3", "-a", "x", "y", "x", "y")


def test_templates_imports_and_command_append() -> None:
    cat = small("""
[templates.base]
command = ["check_base"]
timeout = 15
arguments."-x" = "$x$"
vars.x = "from-base"
[commands.child]
import = ["base"]
command_append = ["--child"]
vars.x = "from-child"
""")
    request = cat.build("child", {}, plugin_dir="/p", use_defaults=True)
    assert request.argv == ("/p/check_base", "--child", "-x", "from-child")
    assert request.timeout == 15
    assert "base" not in cat


def test_dollar_escape_and_mixed_strings() -> None:
    cat = small('[commands.c]\ncommand = ["/bin/c"]\narguments."-m" = "cost: $$$n$ $unit$"\n')
    assert cat.build("c", {"n": 5, "unit": "EUR"}).argv == ("/bin/c", "-m", "cost: $5 EUR")
    with pytest.raises(MacroError, match="Mixing"):
        cat.build("c", {"n": [1, 2], "unit": "EUR"})


def test_unclosed_macro_and_recursion() -> None:
    cat = small('[commands.c]\ncommand = ["/bin/c"]\narguments."-a" = "$a$"\n'
                'vars.a = "$b$"\nvars.b = "$a$"\n')
    with pytest.raises(MacroError, match="recursion"):
        cat.build("c", {}, use_defaults=True)
    with pytest.raises(MacroError, match="Closing"):
        small('[commands.c]\ncommand = ["/bin/c"]\narguments."-a" = "$a"\n').build("c", {})


def test_remote_macros_are_not_resolved_again() -> None:
    # An agent uses the parent's values as they are: no recursion into them.
    cat = small('[commands.c]\ncommand = ["/bin/c"]\narguments."-a" = "$a$"\n')
    assert cat.build("c", {"a": "$b$", "b": "x"}).argv == ("/bin/c", "-a", "$b$")
    assert cat.build("c", {"a": "$b$", "b": "x"}, use_defaults=True).argv == \
        ("/bin/c", "-a", "x")


def test_env_and_command_line_macros() -> None:
    cat = small("""
[commands.c]
command = ["/bin/c", "$target$"]
env.SECRET = "$secret$"
env.LIST = "$items$"
""")
    request = cat.build("c", {"target": "db1", "secret": "s3", "items": ["a", "b"]})
    assert request.argv == ("/bin/c", "db1")
    assert dict(request.env) == {"SECRET": "s3", "LIST": "a;b"}
    with pytest.raises(MacroMissing) as info:
        cat.build("c", {})
    assert info.value.macro == "target" and info.value.argument is None


def test_format_value() -> None:
    assert [format_value(v) for v in (None, True, False, 5, 5.0, 0.5, "s", [1, "a"])] == \
        ["", "true", "false", "5", "5", "0.500000", "s", "1;a"]


@pytest.mark.parametrize("text, needle", [
    ("[commands.c\n", "Expected"),
    ('[commands.c]\ncommand = ["/bin/c"]\nbogus = 1\n', "unknown field"),
    ('[commands.c]\nimport = ["nope"]\n', "unknown template"),
    (('[templates.a]\nimport = ["b"]\n[templates.b]\nimport = ["a"]\n'
      '[commands.c]\nimport = ["a"]\n'), "cycle"),
    ("[commands.c]\ntimeout = 5\n", "neither a command line"),
    ('[commands.c]\ncommand = ["/bin/c"]\narguments."-a" = { order = "1" }\n', "order"),
    ('[commands.c]\ncommand = ["/bin/c"]\narguments."-a" = { valeu = "x" }\n', "unknown"),
    ('[commands.c]\ninternal = "teleport"\n', "internal"),
    ("[whatever]\n", "top-level"),
])
def test_catalog_errors(text: str, needle: str) -> None:
    with pytest.raises(CatalogError) as info:
        Catalog.loads(text, path="x.toml")
    assert needle in str(info.value)
    assert str(info.value).startswith("x.toml:")


def test_load_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('[commands.mine]\ncommand = ["/usr/local/bin/check_mine"]\n'
                    'arguments."-v" = { set_if = "$verbose$" }\nvars.verbose = true\n')
    cat = Catalog.load(path)
    assert cat.build("mine", {}, use_defaults=True).argv == ("/usr/local/bin/check_mine", "-v")
    with pytest.raises(CatalogError, match="cannot read"):
        Catalog.load(tmp_path / "absent.toml")


def test_collect_macros_adds_resolved_command_vars_like_an_icinga_parent() -> None:
    from checkers.catalog import Catalog

    catalog = Catalog.load()
    collected = catalog.collect_macros("ping4", {"address": "192.0.2.7", "ping_packets": 1})
    assert collected["ping_address"] == "192.0.2.7"      # derived from address
    assert collected["ping_packets"] == 1                 # given values win
    # What the child builds from the collected macros alone has the address.
    request = catalog.build("ping4", collected)
    assert "192.0.2.7" in request.argv


def test_user_catalog_adds_and_replaces_commands(tmp_path) -> None:
    from checkers.catalog import Catalog

    extra = tmp_path / "mine.toml"
    extra.write_text('[commands.my-check]\ncommand = ["/opt/my_check", "-x", "$my_x$"]\n'
                     '[commands.load]\ncommand = ["/opt/better_load"]\n')
    catalog = Catalog.load_merged(extra)
    assert catalog.build("my-check", {"my_x": 3}).argv == ("/opt/my_check", "-x", "3")
    assert catalog.build("load", {}).argv == ("/opt/better_load",)
    assert "ping4" in catalog  # bundled commands stay
