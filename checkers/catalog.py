"""Check command catalog: TOML command definitions and command lines built from macros.

A catalog maps check command names (the ``command`` of an ``event::ExecuteCommand``) to
definitions modelled on Icinga's ``CheckCommand`` objects: a command line template,
``arguments`` with ``value`` / ``set_if`` / ``required`` / ``order`` / ``key`` /
``skip_key`` / ``repeat_key`` / ``separator``, default ``vars``, ``env`` and a
``timeout``. The bundled ``catalog.toml`` covers the common monitoring-plugins with the
command and macro names of Icinga's template library (ITL), so a parent's request for
``disk`` with ``disk_wfree`` and friends means the same thing here.

File format (see ``checkers/README.md`` for the full reference)::

    [templates.ping-common]                 # importable, not runnable
    command = ["check_ping"]                # no '/': relative to plugin_dir
    timeout = 60
    arguments."-H" = { value = "$ping_address$", required = true }
    arguments."-w" = "$ping_wrta$,$ping_wpl$%"          # shorthand for { value = ... }
    vars.ping_wrta = 100

    [commands.ping4]
    import = ["ping-common"]                # merged in order, then this table on top
    command_append = ["-4"]                 # ITL: command += [ "-4" ]
    vars.ping_address = "$address$"

Values may be a template string, a number, a boolean, an array, or one of three
expression tables standing in for the few ITL lambdas: ``{ if = "$m$", then = ...,
else = ... }``, ``{ nonempty = "$m$" }`` and ``{ function = "ipv4_or_ipv6" }``.

Macro resolution follows ``lib/icinga/macroprocessor.cpp``:

* ``$name$`` is looked up by its literal name (``address``, ``host.name``, ``disk_wfree``);
  ``$$`` is a literal ``$``. A template that is exactly one macro keeps the macro's type
  (an array stays an array), otherwise values are formatted into the string
  (:func:`format_value`) and arrays are refused.
* By default (``use_defaults=False``) the macros given are the only source, without
  recursion: this is how an Icinga agent runs an ``event::ExecuteCommand``, with the
  macros its parent resolved and sent. ``use_defaults=True`` adds the command's ``vars``
  as a fallback and resolves macros inside values recursively (at most 15 levels), like
  a local Icinga check.
* An argument whose macro is missing is left out; if the argument is ``required`` that is
  a :class:`MacroMissing` error. A ``set_if`` that is missing, false, 0 or not a number
  leaves the argument out. An argument whose value is an array is repeated (the key
  before every element, or only the first with ``repeat_key = false``).
* Arguments are ordered by ``order``, then by their name: Icinga sorts the argument
  dictionary by name and then by ``order``, which gives the same result whenever at most
  16 arguments are present (its ``std::sort`` is an insertion sort up to that size).
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from checkers.errors import CatalogError, MacroError, MacroMissing, UnknownCommand
from checkers.messages import DEFAULT_OUTPUT_LIMIT, DEFAULT_TIMEOUT, CheckRequest

__all__ = [
    "DEFAULT_PLUGIN_DIR",
    "BUNDLED_CATALOG",
    "INTERNAL_COMMANDS",
    "Argument",
    "CommandDef",
    "Catalog",
    "format_value",
]

DEFAULT_PLUGIN_DIR = "/usr/lib/nagios/plugins"
BUNDLED_CATALOG = Path(__file__).with_name("catalog.toml")
MAX_RECURSION = 15
"""Icinga: "Infinite recursion detected while resolving macros" past 15 levels."""

#: Commands run in-process, and the macros each one reads.
INTERNAL_COMMANDS: dict[str, tuple[str, ...]] = {"dummy": ("dummy_state", "dummy_text")}

_EXPRESSION_KEYS = frozenset({"if", "then", "else", "nonempty", "function"})
_ARGUMENT_KEYS = frozenset({"key", "value", "set_if", "required", "order", "skip_key",
                            "repeat_key", "separator", "description"})
_COMMAND_KEYS = frozenset({"import", "command", "command_append", "internal", "arguments",
                           "vars", "env", "timeout", "description"})


def format_value(value: Any) -> str:
    """An Icinga ``Value`` as a string (``value-operators.cpp``, ``convert.cpp``).

    Empty is ``""``, booleans are ``true``/``false``, integral numbers have no decimals
    (``5.0`` is ``5``) and others six (``0.5`` is ``0.500000``, C++ ``std::fixed``);
    arrays are joined with ``;`` as Icinga joins them in command lines and environments.
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return f"{value:.0f}"
        return f"{value:f}"
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return ";".join(format_value(item) for item in value)
    return str(value)


def _truthy(value: Any) -> bool:
    """Icinga's ``Value::ToBool``: empty/0/false/""/[]/{} are false, the rest true."""
    if value is None:
        return False
    if isinstance(value, (bool, int, float)):
        return bool(value)
    if isinstance(value, (str, list, tuple, dict)):
        return len(value) > 0
    return True


# --------------------------------------------------------------------------- model


@dataclass(frozen=True, slots=True)
class Argument:
    """One entry of a command's ``arguments`` table."""

    name: str
    key: str
    value: Any = None               # None: a flag without value (Icinga: no 'value')
    set_if: Any = None
    required: bool = False
    order: int = 0
    skip_key: bool = False
    repeat_key: bool = True
    separator: str | None = None


@dataclass(frozen=True, slots=True)
class CommandDef:
    """A resolved (imports applied) check command."""

    name: str
    command: tuple[Any, ...] = ()
    internal: str | None = None
    arguments: tuple[Argument, ...] = ()       # in command line order
    vars: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, Any] = field(default_factory=dict)
    timeout: float = DEFAULT_TIMEOUT


class _Resolver:
    """Macro lookups for one build: the given macros, optionally the command's vars."""

    __slots__ = ("macros", "defaults", "literal")

    def __init__(self, macros: Mapping[str, Any], defaults: Mapping[str, Any] | None,
                 literal: bool = False) -> None:
        self.macros = macros
        self.defaults = defaults
        self.literal = literal

    def lookup(self, name: str) -> tuple[bool, Any, bool, bool]:
        """(found, value, resolve macros inside the value, value is from the catalog)."""
        recursive = self.defaults is not None and not self.literal
        if name in self.macros:
            return True, self.macros[name], recursive, False
        if self.defaults is not None and name in self.defaults:
            return True, self.defaults[name], True, True
        return False, None, False, False

    # The result of every resolve_* is (value, name of a missing macro or None).

    def resolve(self, spec: Any, depth: int = 0) -> tuple[Any, str | None]:
        if depth > MAX_RECURSION:
            raise MacroError("Infinite recursion detected while resolving macros")
        if isinstance(spec, str):
            return self.resolve_string(spec, depth)
        if isinstance(spec, list):
            return self.resolve_list(spec, depth)
        if isinstance(spec, dict) and spec.keys() <= _EXPRESSION_KEYS and spec:
            return self.evaluate(spec, depth)
        return spec, None

    def resolve_list(self, items: list[Any], depth: int) -> tuple[list[Any], str | None]:
        result: list[Any] = []
        missing = None
        for item in items:
            value, item_missing = self.resolve(item, depth + 1)
            missing = item_missing or missing
            result.append(format_value(value) if isinstance(value, list) else value)
        return result, missing

    def resolve_string(self, text: str, depth: int) -> tuple[Any, str | None]:
        if "$" not in text:
            return text, None
        if depth > MAX_RECURSION:
            raise MacroError("Infinite recursion detected while resolving macros")
        parts: list[str] = []
        missing = None
        pos = 0
        while True:
            first = text.find("$", pos)
            if first < 0:
                parts.append(text[pos:])
                break
            second = text.find("$", first + 1)
            if second < 0:
                raise MacroError(f"Closing $ not found in macro format string '{text}'.")
            parts.append(text[pos:first])
            name = text[first + 1:second]
            value, name_missing = self.resolve_macro(name, depth)
            missing = name_missing or missing
            if first == 0 and second == len(text) - 1:
                return value, missing             # the whole string is one macro: keep its type
            if isinstance(value, list):
                raise MacroError("Mixing both strings and non-strings in macros is not "
                                 "allowed.")
            parts.append(format_value(value))
            pos = second + 1
        return "".join(parts), missing

    def resolve_macro(self, name: str, depth: int) -> tuple[Any, str | None]:
        if not name:
            return "$", None
        found, value, recursive, from_catalog = self.lookup(name)
        if not found:
            return None, name
        missing = None
        if from_catalog and isinstance(value, dict) and value and value.keys() <= _EXPRESSION_KEYS:
            value, missing = self.evaluate(value, depth + 1)
        if recursive:
            if isinstance(value, str):
                value, missing = self.resolve_string(value, depth + 1)
            elif isinstance(value, list):
                value, missing = self.resolve_list(value, depth + 1)
        return value, missing

    def evaluate(self, expr: dict[str, Any], depth: int) -> tuple[Any, str | None]:
        """The expression tables that replace ITL lambdas.

        Inside Icinga lambdas ``macro()`` never reports a missing macro to the argument
        (a missing one is just empty); the same holds here, except that
        ``ipv4_or_ipv6`` without any address reports ``address`` as missing.
        """
        if "function" in expr:
            if expr["function"] == "ipv4_or_ipv6":
                return self._ipv4_or_ipv6(depth)
            raise MacroError(f"unknown function {expr['function']!r}")
        if "nonempty" in expr:
            value, _ = self.resolve(expr["nonempty"], depth + 1)
            return format_value(value) != "", None
        condition, _ = self.resolve(expr.get("if"), depth + 1)
        branch = expr.get("then") if _truthy(condition) else expr.get("else")
        value, _ = self.resolve(branch, depth + 1)
        return value, None

    def _ipv4_or_ipv6(self, depth: int) -> tuple[Any, str | None]:
        """ITL ``ipv4-or-ipv6``: ``address`` unless IPv6 is asked for (or no IPv4 address)."""
        addr_v4, _ = self.resolve_string("$address$", depth + 1)
        addr_v6, _ = self.resolve_string("$address6$", depth + 1)
        want_v6, _ = self.resolve_string("$check_ipv6$", depth + 1)
        want_v4, _ = self.resolve_string("$check_ipv4$", depth + 1)
        if (_truthy(addr_v4) and not _truthy(want_v6)) or _truthy(want_v4):
            value = addr_v4
        else:
            value = addr_v6
        return value, ("address" if value is None else None)


def _set_if_enabled(value: Any) -> bool:
    """Icinga's ``set_if`` test: "true"/"false", else the value as an integer."""
    text = format_value(value) if not isinstance(value, str) else value
    if value is True or text == "true":
        return True
    if value is False or text == "false" or value is None:
        return False
    try:
        return int(float(text)) != 0
    except ValueError:
        return False              # Icinga logs "Error evaluating set_if value" and skips


def _add_argument(argv: list[str], arg: Argument, value: Any, add_key: bool,
                  add_value: bool) -> None:
    """Icinga ``MacroProcessor::AddArgumentHelper``."""
    text = format_value(value)
    if add_key and add_value and arg.separator is not None:
        argv.append(arg.key + arg.separator + text)
        return
    if add_key:
        argv.append(arg.key)
    if add_value:
        argv.append(text)


# --------------------------------------------------------------------------- loading


def _check_type(value: Any, types: type | tuple[type, ...], path: str | None, key: str,
                what: str) -> Any:
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in
                                        (types if isinstance(types, tuple) else (types,))):
        raise CatalogError(f"{what} has the wrong type ({type(value).__name__})",
                           path=path, key=key)
    return value


def _parse_argument(name: str, raw: Any, path: str | None, key: str) -> Argument:
    if isinstance(raw, (str, list)) or (isinstance(raw, dict) and raw
                                        and raw.keys() <= _EXPRESSION_KEYS):
        return Argument(name=name, key=name, value=raw)
    if not isinstance(raw, dict):
        raise CatalogError("an argument is a string, an array or a table", path=path, key=key)
    unknown = set(raw) - _ARGUMENT_KEYS
    if unknown:
        raise CatalogError(f"unknown argument field(s) {sorted(unknown)}", path=path, key=key)
    order = raw.get("order", 0)
    _check_type(order, int, path, f"{key}.order", "order")
    for flag in ("required", "skip_key", "repeat_key"):
        if flag in raw:
            _check_type(raw[flag], bool, path, f"{key}.{flag}", flag)
    separator = raw.get("separator")
    if separator is not None:
        _check_type(separator, str, path, f"{key}.separator", "separator")
    arg_key = raw.get("key", name)
    _check_type(arg_key, str, path, f"{key}.key", "key")
    return Argument(name=name, key=arg_key, value=raw.get("value"), set_if=raw.get("set_if"),
                    required=raw.get("required", False), order=order,
                    skip_key=raw.get("skip_key", False),
                    repeat_key=raw.get("repeat_key", True), separator=separator)


class Catalog:
    """A set of check commands, loaded from TOML; builds :class:`CheckRequest` objects."""

    def __init__(self, commands: Mapping[str, CommandDef]) -> None:
        self.commands: dict[str, CommandDef] = dict(commands)

    # ----------------------------------------------------------------- loading

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> Catalog:
        """Load a catalog file; ``None`` loads the bundled ``checkers/catalog.toml``."""
        file = Path(path) if path is not None else BUNDLED_CATALOG
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as error:
            raise CatalogError(f"cannot read the catalog: {error.strerror}",
                               path=str(file)) from None
        return cls.loads(text, path=str(file))

    @classmethod
    def load_merged(cls, extra: str | os.PathLike[str] | None) -> Catalog:
        """The bundled catalog with ``extra``'s templates and commands merged over it.

        A definition in ``extra`` with a bundled name replaces the bundled one whole.
        """
        if extra is None:
            return cls.load()
        data = tomllib.loads(BUNDLED_CATALOG.read_text(encoding="utf-8"))
        try:
            text = Path(extra).read_text(encoding="utf-8")
        except OSError as error:
            raise CatalogError(f"cannot read the catalog: {error.strerror}",
                               path=str(extra)) from None
        try:
            more = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise CatalogError(str(error), path=str(extra)) from None
        for section in ("templates", "commands"):
            table = more.get(section, {})
            if not isinstance(table, dict):
                raise CatalogError("must be a table", path=str(extra), key=section)
            for name, body in table.items():
                other = "commands" if section == "templates" else "templates"
                data.get(other, {}).pop(name, None)
                data.setdefault(section, {})[name] = body
        unknown = set(more) - {"templates", "commands"}
        if unknown:
            raise CatalogError(f"unknown top-level table(s) {sorted(unknown)}", path=str(extra))
        return cls.from_dict(data, path=str(extra))

    @classmethod
    def loads(cls, text: str, *, path: str | None = None) -> Catalog:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise CatalogError(str(error), path=path) from None
        return cls.from_dict(data, path=path)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, path: str | None = None) -> Catalog:
        unknown = set(data) - {"templates", "commands"}
        if unknown:
            raise CatalogError(f"unknown top-level table(s) {sorted(unknown)}", path=path)
        templates = data.get("templates", {})
        commands = data.get("commands", {})
        for section, table in (("templates", templates), ("commands", commands)):
            if not isinstance(table, dict):
                raise CatalogError("must be a table", path=path, key=section)
        both = set(templates) & set(commands)
        if both:
            raise CatalogError(f"defined as template and command: {sorted(both)}", path=path)
        raw_defs: dict[str, tuple[str, dict[str, Any]]] = {}
        for section, table in (("templates", templates), ("commands", commands)):
            for name, body in table.items():
                if not isinstance(body, dict):
                    raise CatalogError("must be a table", path=path, key=f"{section}.{name}")
                unknown = set(body) - _COMMAND_KEYS
                if unknown:
                    raise CatalogError(f"unknown field(s) {sorted(unknown)}", path=path,
                                       key=f"{section}.{name}")
                raw_defs[name] = (f"{section}.{name}", body)

        merged: dict[str, dict[str, Any]] = {}

        def merge(name: str, chain: tuple[str, ...]) -> dict[str, Any]:
            if name in merged:
                return merged[name]
            where, body = raw_defs[name]
            result: dict[str, Any] = {"command": [], "arguments": {}, "vars": {}, "env": {},
                                      "internal": None, "timeout": None}
            imports = body.get("import", [])
            if isinstance(imports, str):
                imports = [imports]
            _check_type(imports, list, path, f"{where}.import", "import")
            for parent in imports:
                if parent not in raw_defs:
                    raise CatalogError(f"imports unknown template {parent!r}", path=path,
                                       key=f"{where}.import")
                if parent in chain:
                    raise CatalogError(f"import cycle through {parent!r}", path=path,
                                       key=f"{where}.import")
                base = merge(parent, chain + (parent,))
                if base["command"]:
                    result["command"] = list(base["command"])
                for table in ("arguments", "vars", "env"):
                    result[table].update(base[table])
                for scalar in ("internal", "timeout"):
                    if base[scalar] is not None:
                        result[scalar] = base[scalar]
            if "command" in body:
                result["command"] = list(_check_type(body["command"], list, path,
                                                     f"{where}.command", "command"))
            if "command_append" in body:
                result["command"] += _check_type(body["command_append"], list, path,
                                                 f"{where}.command_append", "command_append")
            for table in ("arguments", "vars", "env"):
                if table in body:
                    result[table].update(_check_type(body[table], dict, path,
                                                     f"{where}.{table}", table))
            if "internal" in body:
                internal = _check_type(body["internal"], str, path, f"{where}.internal",
                                       "internal")
                if internal not in INTERNAL_COMMANDS:
                    raise CatalogError(f"unknown internal command {internal!r}", path=path,
                                       key=f"{where}.internal")
                result["internal"] = internal
            if "timeout" in body:
                timeout = _check_type(body["timeout"], (int, float), path,
                                      f"{where}.timeout", "timeout")
                if timeout <= 0:
                    raise CatalogError("timeout must be positive", path=path,
                                       key=f"{where}.timeout")
                result["timeout"] = float(timeout)
            merged[name] = result
            return result

        defs: dict[str, CommandDef] = {}
        for name in commands:
            where = f"commands.{name}"
            body = merge(name, (name,))
            if body["internal"] is None and not body["command"]:
                raise CatalogError("has neither a command line nor an internal command",
                                   path=path, key=where)
            arguments = [_parse_argument(arg_name, raw, path, f"{where}.arguments.{arg_name}")
                         for arg_name, raw in body["arguments"].items()]
            arguments.sort(key=lambda arg: (arg.order, arg.name))
            defs[name] = CommandDef(
                name=name, command=tuple(body["command"]), internal=body["internal"],
                arguments=tuple(arguments), vars=dict(body["vars"]), env=dict(body["env"]),
                timeout=body["timeout"] if body["timeout"] is not None else DEFAULT_TIMEOUT)
        return cls(defs)

    # ----------------------------------------------------------------- queries

    def __contains__(self, name: object) -> bool:
        return name in self.commands

    def __len__(self) -> int:
        return len(self.commands)

    def names(self) -> list[str]:
        return sorted(self.commands)

    def get(self, name: str) -> CommandDef:
        try:
            return self.commands[name]
        except KeyError:
            raise UnknownCommand(name) from None

    # ----------------------------------------------------------------- building

    def collect_macros(self, command_name: str, macros: Mapping[str, Any]) -> dict[str, Any]:
        """The macros a parent sends with ``event::ExecuteCommand`` for ``command_name``.

        An Icinga parent resolves the command in "collect" mode and sends the values it
        found, including the command's own defaults derived from other macros (``ping4``'s
        ``ping_address`` from ``address``), because the child resolves only what it is
        given. So: the given macros, plus every command var that resolves completely.

        Raises:
            UnknownCommand: no such command.
        """
        definition = self.get(command_name)
        resolver = _Resolver(macros, definition.vars)
        collected = dict(macros)
        for name in definition.vars:
            if name in collected:
                continue
            try:
                value, missing = resolver.resolve_macro(name, 0)
            except MacroError:
                continue
            if missing is None and value is not None:
                collected[name] = value
        return collected

    def build(self, command_name: str, macros: Mapping[str, Any] | None = None, *,
              plugin_dir: str = DEFAULT_PLUGIN_DIR, use_defaults: bool = False,
              literal_macros: bool = False, timeout: float | None = None,
              output_limit: int = DEFAULT_OUTPUT_LIMIT) -> CheckRequest:
        """The :class:`CheckRequest` for ``command_name`` with ``macros``.

        Args:
            command_name: a command of this catalog.
            macros: macro values by name as written (``{"disk_wfree": "20%"}``), e.g. the
                ``macros`` of an ``event::ExecuteCommand``.
            plugin_dir: directory of programs named without ``/`` (Icinga ``PluginDir``).
            use_defaults: also use the command's ``vars`` and resolve macros inside
                values (a local check); off: only ``macros`` (what an agent does).
            literal_macros: with ``use_defaults``, take the values of ``macros`` as they
                are (a parent resolved them: ``^OK$`` or a password with ``$$`` in it
                stays what it is, as on an Icinga agent); the command's ``vars`` are
                still resolved.
            timeout: overrides the command's timeout (``check_timeout`` of the request).
            output_limit: bytes of plugin output to keep.

        Raises:
            UnknownCommand: no such command.
            MacroMissing: a required argument or the command line lacks a macro.
            MacroError: the macros cannot form a command line (arrays mixed into
                strings, endless recursion, an unclosed ``$``).
        """
        definition = self.get(command_name)
        resolver = _Resolver(macros or {}, definition.vars if use_defaults else None,
                             literal_macros)
        effective_timeout = definition.timeout if timeout is None else float(timeout)
        if definition.internal is not None:
            values = {}
            for name in INTERNAL_COMMANDS[definition.internal]:
                values[name], _ = resolver.resolve_macro(name, 0)
            return CheckRequest(internal=definition.internal, macros=values,
                                timeout=effective_timeout, output_limit=output_limit,
                                command=command_name)
        argv = self._command_line(definition, resolver, plugin_dir)
        for arg in definition.arguments:
            self._append_argument(argv, arg, resolver, command_name)
        env = {}
        for name, spec in definition.env.items():
            value, _ = resolver.resolve(spec)
            env[name] = format_value(value)
        return CheckRequest(argv=tuple(argv), env=env, timeout=effective_timeout,
                            output_limit=output_limit, command=command_name)

    @staticmethod
    def _command_line(definition: CommandDef, resolver: _Resolver,
                      plugin_dir: str) -> list[str]:
        argv: list[str] = []
        for item in definition.command:
            value, missing = resolver.resolve(item)
            if missing is not None:
                raise MacroMissing(missing, command=definition.name)
            argv.append(format_value(value))
        if argv and "/" not in argv[0]:
            argv[0] = os.path.join(plugin_dir, argv[0])
        return argv

    @staticmethod
    def _append_argument(argv: list[str], arg: Argument, resolver: _Resolver,
                         command_name: str) -> None:
        if arg.set_if is not None:
            enabled, missing = resolver.resolve(arg.set_if)
            if missing is not None or not _set_if_enabled(enabled):
                return
        add_value = arg.value is not None
        value = None
        if add_value:
            value, missing = resolver.resolve(arg.value)
            if missing is not None:
                if arg.required:
                    raise MacroMissing(missing, argument=arg.key, command=command_name)
                return
        if isinstance(value, dict):
            return                      # Icinga: "Tried to use dictionary in argument"
        if isinstance(value, list):
            for index, item in enumerate(value):
                add_key = not arg.skip_key and (index == 0 or arg.repeat_key)
                _add_argument(argv, arg, item, add_key, add_value)
            return
        _add_argument(argv, arg, value, not arg.skip_key, add_value)
