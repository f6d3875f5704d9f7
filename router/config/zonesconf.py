"""Import of the zone tree from an Icinga 2 ``zones.conf``.

Only the part of the Icinga configuration language that describes a cluster topology is
understood:

* ``object Endpoint NAME { host = ...; port = ...; log_duration = ... }``
* ``object Zone NAME { endpoints = [ ... ]; parent = ...; global = true }``
* ``const NAME = VALUE`` and references to constants (``NodeName``, ``ZoneName`` or any
  constant defined earlier) wherever a name or a list item is expected;
* comments (``//``, ``#``, ``/* ... */``), newlines or semicolons between statements and
  attributes, strings (``"..."`` with Icinga's escapes, ``{{{...}}}``), numbers, durations
  (``1d``, ``12h``, ``30m``, ``45s``, ``100ms``), ``true``/``false``/``null`` and arrays.

Objects of other types (``ApiUser``, ``Host``...) are skipped with a warning, and so are
unknown attributes of Endpoint and Zone objects (``bind_host``...). Anything else (apply
rules, templates, ``include``, functions, operators) raises
:class:`router.errors.ConfigError` with the line number, because the topology it would
produce cannot be known without evaluating the whole Icinga configuration.

``ZoneName`` defaults to ``NodeName`` when the file uses it without defining it, as in
Icinga's default ``constants.conf``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from router.config.emit import toml_str, topology_to_toml
from router.config.model import DEFAULT_PORT, FrozenMap
from router.config.source import Where, read_text
from router.config.units import check_host, suggest
from router.config.validate import check_topology_at
from router.errors import ConfigError
from router.routing import EndpointSpec, ZoneSpec

__all__ = ["ZonesConf", "parse_zones_conf", "load_zones_conf", "zones_conf_to_toml",
           "DEFAULT_ICINGA_DATA_DIR"]

DEFAULT_ICINGA_DATA_DIR = "/var/lib/icinga2"
"""Icinga's state directory: its ``certs/`` holds ``ca.crt``, ``NAME.crt`` and ``NAME.key``."""

_DURATION_FACTORS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

# Statements of the Icinga language that a topology file may not contain.
_UNSUPPORTED = {
    "apply": "apply rules",
    "template": "templates",
    "import": "templates",
    "include": "include directives",
    "include_recursive": "include directives",
    "include_zones": "include directives",
    "function": "functions",
    "globals": "global variables",
    "var": "variables",
    "if": "conditionals",
    "for": "loops",
    "while": "loops",
    "library": "library directives",
    "namespace": "namespaces",
    "using": "namespaces",
    "object": "objects",
}

_ENDPOINT_ATTRS = ("host", "port", "log_duration")
_ZONE_ATTRS = ("endpoints", "parent", "global")


@dataclass(frozen=True, slots=True)
class ZonesConf:
    """What :func:`parse_zones_conf` found."""

    zones: tuple[ZoneSpec, ...]
    """Zone objects, in file order."""
    endpoints: tuple[EndpointSpec, ...]
    """Endpoint objects, in file order (``host`` + ``port`` become one address)."""
    log_durations: Mapping[str, float]
    """``log_duration`` in seconds, for the endpoints that set it."""
    warnings: tuple[str, ...]
    """What was skipped, one ``file:line: text`` message each."""
    constants: Mapping[str, Any] = field(default_factory=FrozenMap)
    """Constants known after the parse (given and defined in the file)."""
    lines: Mapping[str, int] = field(default_factory=FrozenMap)
    """Line of each key path (``zones[1].parent``...), the same paths as in the TOML file."""


@dataclass(slots=True)
class _Tok:
    kind: str        # str, num, ident, nl, op, eof
    value: Any
    line: int
    text: str


_TOKEN_RE = re.compile(r"""
    (?P<ws>[ \t\r\f\v]+)
  | (?P<nl>\n)
  | (?P<lc>(?://|\#)[^\n]*)
  | (?P<bc>/\*)
  | (?P<mstr>\{\{\{)
  | (?P<str>")
  | (?P<num>\d+(?:\.\d+)?[A-Za-z_]*)
  | (?P<ident>@?[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>\+=|-=|\*=|/=|==|!=|<=|>=|&&|\|\||<<|>>|=>|[{}\[\](),;=+\-*/%!<>&|^~.?:$])
""", re.X)

_ESCAPES = {'"': '"', "\\": "\\", "t": "\t", "r": "\r", "n": "\n", "b": "\b", "f": "\f"}


def _tokenize(text: str, where: Where) -> list[_Tok]:
    toks: list[_Tok] = []
    pos, line, n = 0, 1, len(text)
    while pos < n:
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            raise _where_error(where, line, f"unexpected character {text[pos]!r}")
        kind = m.lastgroup
        start_line = line
        if kind == "ws" or kind == "lc":
            pos = m.end()
            continue
        if kind == "nl":
            toks.append(_Tok("nl", "\n", line, "newline"))
            line += 1
            pos = m.end()
            continue
        if kind == "bc":
            end = text.find("*/", pos + 2)
            if end < 0:
                raise _where_error(where, start_line, "unterminated comment (missing '*/')")
            line += text.count("\n", pos, end)
            pos = end + 2
            continue
        if kind == "mstr":
            end = text.find("}}}", pos + 3)
            if end < 0:
                raise _where_error(where, start_line, "unterminated string (missing '}}}')")
            value = text[pos + 3:end]
            line += value.count("\n")
            toks.append(_Tok("str", value, start_line, "a string"))
            pos = end + 3
            continue
        if kind == "str":
            value, end = _read_string(text, pos + 1, line, where)
            line += text.count("\n", pos, end)        # backslash-newlines in it
            pos = end
            toks.append(_Tok("str", value, start_line, "a string"))
            continue
        word = m.group()
        pos = m.end()
        if kind == "num":
            num = re.match(r"(\d+(?:\.\d+)?)(.*)", word)
            assert num is not None
            suffix = num.group(2)
            if suffix not in _DURATION_FACTORS:
                raise _where_error(where, line, f"invalid number or duration {word!r} "
                                  "(suffixes: ms, s, m, h, d)")
            digits = num.group(1)
            number: int | float
            if suffix == "" and "." not in digits:
                number = int(digits)
            else:
                number = float(digits) * _DURATION_FACTORS[suffix]
            toks.append(_Tok("num", number, line, word))
        elif kind == "ident":
            toks.append(_Tok("ident", word.lstrip("@"), line, f"'{word}'"))
        else:
            toks.append(_Tok("op", word, line, f"'{word}'"))
    toks.append(_Tok("eof", None, line, "end of file"))
    return toks


def _read_string(text: str, pos: int, line: int, where: Where) -> tuple[str, int]:
    """A "..." string from ``pos`` (after the quote) as Icinga's lexer reads it: its text
    is bytes, so an octal escape is a byte (``\\303\\251`` is "é" in UTF-8; above
    ``\\377`` an error), and a backslash before a newline keeps the newline (review)."""
    out = bytearray()
    n = len(text)
    while True:
        if pos >= n or text[pos] == "\n":
            raise _where_error(where, line, "unterminated string (missing '\"')")
        c = text[pos]
        if c == '"':
            try:
                return out.decode("utf-8"), pos + 1
            except UnicodeDecodeError:
                raise _where_error(where, line, "the string's escapes are not UTF-8") \
                    from None
        if c == "\\":
            nxt = text[pos + 1] if pos + 1 < n else ""
            octal = re.match(r"[0-7]{1,3}", text[pos + 1:pos + 4])
            if nxt in _ESCAPES:
                out += _ESCAPES[nxt].encode()
                pos += 2
            elif nxt == "\n":
                out += b"\n"
                line += 1
                pos += 2
            elif octal:
                value = int(octal.group(), 8)
                if value > 0xFF:
                    raise _where_error(where, line, f"octal escape '\\{octal.group()}' is "
                                       "out of bounds (at most \\377)")
                out.append(value)
                pos += 1 + len(octal.group())
            else:
                raise _where_error(where, line, f"invalid escape sequence '\\{nxt}' in string")
            continue
        out += c.encode("utf-8", "surrogatepass")
        pos += 1


def _where_error(where: Where, line: int | None, message: str,
                key: str | None = None) -> ConfigError:
    return ConfigError(message, path=where.path, line=line, key=key)


class _Parser:
    def __init__(self, text: str, path: str | None, constants: Mapping[str, Any] | None):
        self.where = Where(path)
        self.toks = _tokenize(text, self.where)
        self.i = 0
        self.given = dict(constants or {})
        self.consts: dict[str, Any] = {}
        self.const_lines: dict[str, int] = {}
        self.warnings: list[str] = []
        self.lines: dict[str, int] = {}
        self.zones: list[ZoneSpec] = []
        self.endpoints: list[EndpointSpec] = []
        self.durations: dict[str, float] = {}
        self.seen: dict[tuple[str, str], int] = {}

    # -- token helpers --------------------------------------------------------------------

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def next(self) -> _Tok:
        tok = self.toks[self.i]
        if tok.kind != "eof":
            self.i += 1
        return tok

    def error(self, tok: _Tok | int | None, message: str, key: str | None = None) -> ConfigError:
        line = tok.line if isinstance(tok, _Tok) else tok
        return _where_error(self.where, line, message, key)

    def is_op(self, tok: _Tok, *ops: str) -> bool:
        return tok.kind == "op" and tok.value in ops

    def skip_newlines(self) -> None:
        while self.peek().kind == "nl":
            self.next()

    def warn(self, line: int, message: str) -> None:
        where = self.where.path or "<zones.conf>"
        self.warnings.append(f"{where}:{line}: {message}")

    def expect_end_of_statement(self, what: str) -> None:
        tok = self.peek()
        if tok.kind in ("nl", "eof") or self.is_op(tok, ";"):
            return
        raise self.error(tok, f"unexpected {tok.text} after {what} "
                         "(expressions and operators are not supported)")

    # -- statements -----------------------------------------------------------------------

    def parse(self) -> None:
        while True:
            tok = self.peek()
            if tok.kind == "eof":
                return
            if tok.kind == "nl" or self.is_op(tok, ";"):
                self.next()
                continue
            if tok.kind == "ident" and tok.value == "object":
                self.object_statement()
            elif tok.kind == "ident" and tok.value == "const":
                self.const_statement()
            elif tok.kind == "ident" and tok.value in _UNSUPPORTED:
                raise self.error(tok, f"'{tok.value}' is not supported: {_UNSUPPORTED[tok.value]} "
                                 "cannot be imported (only object Endpoint, object Zone and "
                                 "const)")
            else:
                raise self.error(tok, f"unexpected {tok.text}: expected 'object' or 'const' "
                                 "(only object Endpoint, object Zone and const are imported)")

    def const_statement(self) -> None:
        self.next()
        name_tok = self.next()
        if name_tok.kind != "ident":
            raise self.error(name_tok, f"expected a constant name after 'const', got "
                             f"{name_tok.text}")
        eq = self.next()
        if not self.is_op(eq, "="):
            raise self.error(eq, f"expected '=' after 'const {name_tok.value}', got {eq.text}")
        if name_tok.value in self.consts:
            raise self.error(name_tok, f"constant '{name_tok.value}' is already defined at "
                             f"line {self.const_lines[name_tok.value]}")
        value = self.value(None)
        self.consts[name_tok.value] = value
        self.const_lines[name_tok.value] = name_tok.line
        self.expect_end_of_statement(f"const {name_tok.value}")

    def object_statement(self) -> None:
        obj_tok = self.next()
        type_tok = self.next()
        if type_tok.kind != "ident":
            raise self.error(type_tok, f"expected an object type after 'object', got "
                             f"{type_tok.text}")
        if type_tok.value not in ("Endpoint", "Zone"):
            self.skip_object(obj_tok, type_tok)
            return
        name_tok = self.peek()
        name = self.value(None)
        if not isinstance(name, str):
            raise self.error(name_tok, f"the name of an {type_tok.value} must be a string, "
                             f"got {_describe(name)}")
        if not name:
            raise self.error(name_tok, f"the name of an {type_tok.value} must not be empty")
        if "!" in name:
            raise self.error(name_tok, f"object names must not contain '!': {name!r}")
        if (type_tok.value, name) in self.seen:
            raise self.error(obj_tok, f"{type_tok.value} '{name}' is already defined at line "
                             f"{self.seen[(type_tok.value, name)]}")
        self.seen[(type_tok.value, name)] = obj_tok.line
        tok = self.peek()
        if tok.kind == "ident" and tok.value == "ignore_on_error":
            self.next()
            tok = self.peek()
        if not self.is_op(tok, "{"):
            raise self.error(tok, f"expected '{{' after {type_tok.value} \"{name}\", got "
                             f"{tok.text}")
        self.next()
        if type_tok.value == "Endpoint":
            prefix = f"endpoints[{len(self.endpoints)}]"
        else:
            prefix = f"zones[{len(self.zones)}]"
        self.lines[prefix] = obj_tok.line
        self.lines[f"{prefix}.name"] = name_tok.line
        attrs = self.object_body(type_tok.value, name, prefix, obj_tok)
        if type_tok.value == "Endpoint":
            self.endpoints.append(self.make_endpoint(name, attrs, prefix))
        else:
            self.zones.append(self.make_zone(name, attrs, prefix))
        self.expect_end_of_statement(f"{type_tok.value} \"{name}\"")

    def skip_object(self, obj_tok: _Tok, type_tok: _Tok) -> None:
        name = self.peek()
        label = f"{type_tok.value} \"{name.value}\"" if name.kind == "str" else type_tok.value
        while not self.is_op(self.peek(), "{"):
            tok = self.next()
            if tok.kind == "eof":
                raise self.error(obj_tok, f"object {label}: missing '{{'")
        depth = 0
        while True:
            tok = self.next()
            if tok.kind == "eof":
                raise self.error(obj_tok, f"object {label}: missing '}}'")
            if self.is_op(tok, "{", "[", "("):
                depth += 1
            elif self.is_op(tok, "}", "]", ")"):
                depth -= 1
                if depth == 0:
                    break
        self.warn(obj_tok.line, f"skipped object {label} "
                  "(only Endpoint and Zone objects are imported)")
        self.expect_end_of_statement(f"object {label}")

    def object_body(self, kind: str, name: str, prefix: str,
                    obj_tok: _Tok) -> dict[str, tuple[Any, _Tok]]:
        known = _ENDPOINT_ATTRS if kind == "Endpoint" else _ZONE_ATTRS
        attrs: dict[str, tuple[Any, _Tok]] = {}
        while True:
            tok = self.peek()
            if tok.kind == "nl" or self.is_op(tok, ";", ","):
                self.next()
                continue
            if self.is_op(tok, "}"):
                self.next()
                return attrs
            if tok.kind == "eof":
                raise self.error(obj_tok, f"{kind} \"{name}\": missing '}}'")
            if tok.kind != "ident":
                raise self.error(tok, f"expected an attribute name in {kind} \"{name}\", got "
                                 f"{tok.text}")
            if tok.value in _UNSUPPORTED and tok.value != "object":
                raise self.error(tok, f"'{tok.value}' is not supported in {kind} \"{name}\": "
                                 f"{_UNSUPPORTED[tok.value]} cannot be imported")
            self.next()
            attr = tok.value
            op = self.peek()
            if attr not in known:
                self.warn(tok.line, f"{kind} \"{name}\": ignored attribute '{attr}'"
                          f"{suggest(attr, known, 0.7)}")
                self.skip_value()
                continue
            if not self.is_op(op, "="):
                raise self.error(op, f"expected '=' after '{attr}' in {kind} \"{name}\", got "
                                 f"{op.text} (only plain assignments are supported)")
            self.next()
            key = f"{prefix}.{attr}"
            self.lines[key] = tok.line
            value_tok = self.peek()
            value = self.value(key)
            after = self.peek()
            if not (after.kind == "nl" or self.is_op(after, ";", ",", "}")):
                raise self.error(after, f"unexpected {after.text} after the value of '{attr}' "
                                 "(expressions and operators are not supported)", key)
            attrs[attr] = (value, value_tok)

    def skip_value(self) -> None:
        depth = 0
        while True:
            tok = self.peek()
            if tok.kind == "eof":
                return
            if depth == 0 and (tok.kind == "nl" or self.is_op(tok, ";", ",", "}")):
                return
            if self.is_op(tok, "{", "[", "("):
                depth += 1
            elif self.is_op(tok, "}", "]", ")"):
                depth -= 1
            self.next()

    # -- values ---------------------------------------------------------------------------

    def value(self, key: str | None) -> Any:
        tok = self.next()
        if tok.kind == "str":
            return tok.value
        if tok.kind == "num":
            return tok.value
        if self.is_op(tok, "-") and self.peek().kind == "num":
            return -self.next().value
        if tok.kind == "ident":
            if tok.value == "true":
                return True
            if tok.value == "false":
                return False
            if tok.value == "null":
                return None
            return self.constant(tok)
        if self.is_op(tok, "["):
            items: list[Any] = []
            while True:
                self.skip_newlines()
                if self.is_op(self.peek(), "]"):
                    self.next()
                    return items
                item_tok = self.peek()
                if item_tok.kind == "eof":
                    raise self.error(tok, "unterminated array (missing ']')", key)
                item_key = f"{key}[{len(items)}]" if key else None
                if item_key:
                    self.lines[item_key] = item_tok.line
                items.append(self.value(item_key))
                self.skip_newlines()
                sep = self.peek()
                if self.is_op(sep, ","):
                    self.next()
                elif not self.is_op(sep, "]"):
                    raise self.error(sep, f"expected ',' or ']' in array, got {sep.text}", key)
        if self.is_op(tok, "{"):
            raise self.error(tok, "dictionaries are not supported here", key)
        raise self.error(tok, f"expected a value, got {tok.text}", key)

    def constant(self, tok: _Tok) -> Any:
        name = tok.value
        if name in self.consts:
            return self.consts[name]
        if name in self.given:
            return self.given[name]
        if name == "ZoneName":
            for src in (self.consts, self.given):
                if "NodeName" in src:
                    return src["NodeName"]
        known = sorted(set(self.consts) | set(self.given))
        hint = suggest(name, known)
        if not hint and name in ("NodeName", "ZoneName"):
            hint = (f" (give the node name, e.g. --node-name, or add const {name} = \"...\" "
                    "at the top of the file)")
        raise self.error(tok, f"'{name}' is not defined{hint}")

    # -- objects --------------------------------------------------------------------------

    def make_endpoint(self, name: str, attrs: dict[str, tuple[Any, _Tok]],
                      prefix: str) -> EndpointSpec:
        host = None
        port = DEFAULT_PORT
        if "host" in attrs:
            value, tok = attrs["host"]
            if value is not None and not isinstance(value, str):
                raise self.error(tok, f"Endpoint \"{name}\": 'host' must be a string, got "
                                 f"{_describe(value)}", f"{prefix}.host")
            host = (value or "").strip()
            if host.startswith("[") and host.endswith("]"):
                host = host[1:-1]
            if host:
                try:
                    check_host(host, host)
                except ValueError as e:
                    raise self.error(tok, f"Endpoint \"{name}\": {e}", f"{prefix}.host") from None
        if "port" in attrs:
            value, tok = attrs["port"]
            text = value if isinstance(value, str) else (
                str(value) if isinstance(value, int) and not isinstance(value, bool) else None)
            if text is None or not text.strip().isdigit() or not 0 < int(text) < 65536:
                raise self.error(tok, f"Endpoint \"{name}\": 'port' must be a port number "
                                 f"(1-65535), got {_describe(value)}", f"{prefix}.port")
            port = int(text)
        if "log_duration" in attrs:
            value, tok = attrs["log_duration"]
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise self.error(tok, f"Endpoint \"{name}\": 'log_duration' must be a duration "
                                 f"(e.g. 1d, 12h, 0), got {_describe(value)}",
                                 f"{prefix}.log_duration")
            self.durations[name] = float(value)
        return EndpointSpec(name=name, addresses=((host, port),) if host else ())

    def make_zone(self, name: str, attrs: dict[str, tuple[Any, _Tok]], prefix: str) -> ZoneSpec:
        endpoints: tuple[str, ...] = ()
        parent = None
        global_ = False
        if "endpoints" in attrs:
            value, tok = attrs["endpoints"]
            if value is None:
                value = []
            if not isinstance(value, list):
                raise self.error(tok, f"Zone \"{name}\": 'endpoints' must be an array of "
                                 f"endpoint names, got {_describe(value)}",
                                 f"{prefix}.endpoints")
            for k, item in enumerate(value):
                if not isinstance(item, str):
                    key = f"{prefix}.endpoints[{k}]"
                    raise self.error(self.lines.get(key, tok.line),
                                     f"Zone \"{name}\": endpoint names must be strings, got "
                                     f"{_describe(item)}", key)
            endpoints = tuple(value)
        if "parent" in attrs:
            value, tok = attrs["parent"]
            if value is not None and not isinstance(value, str):
                raise self.error(tok, f"Zone \"{name}\": 'parent' must be a zone name, got "
                                 f"{_describe(value)}", f"{prefix}.parent")
            parent = value or None
        if "global" in attrs:
            value, tok = attrs["global"]
            if not isinstance(value, bool):
                raise self.error(tok, f"Zone \"{name}\": 'global' must be true or false, got "
                                 f"{_describe(value)}", f"{prefix}.global")
            global_ = value
        return ZoneSpec(name=name, endpoints=endpoints, parent=parent, global_=global_)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, int | float):
        return f"the number {value:g}"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def parse_zones_conf(text: str, path: str | None = None,
                     constants: Mapping[str, Any] | None = None) -> ZonesConf:
    """Parse and validate an Icinga ``zones.conf``.

    ``constants`` gives values for constants the file uses without defining them
    (typically ``{"NodeName": "..."}`` from ``constants.conf``); definitions in the file win.
    Raises :class:`ConfigError` (with line) for syntax the importer does not understand and
    for an invalid zone tree (unknown endpoint or parent, cycles, ...).
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    p = _Parser(text, path, constants)
    p.parse()
    p.where.lines = p.lines
    p.where.dialect = "zones.conf"
    check_topology_at(tuple(p.zones), tuple(p.endpoints), None, p.where)
    consts = dict(p.given)
    consts.update(p.consts)
    if "ZoneName" not in consts and "NodeName" in consts:
        consts["ZoneName"] = consts["NodeName"]
    return ZonesConf(zones=tuple(p.zones), endpoints=tuple(p.endpoints),
                     log_durations=FrozenMap(p.durations), warnings=tuple(p.warnings),
                     constants=FrozenMap(consts), lines=FrozenMap(p.lines))


def load_zones_conf(path: str | os.PathLike[str],
                    constants: Mapping[str, Any] | None = None) -> ZonesConf:
    """:func:`parse_zones_conf` on the contents of a file."""
    p = os.fspath(path)
    return parse_zones_conf(read_text(p), path=p, constants=constants)


def zones_conf_to_toml(text: str, path: str | None = None, node_name: str | None = None, *,
                       data_dir: str | None = None) -> str:
    """Translate a zones.conf into the router's TOML (``router config import-zones``).

    The output has ``[[zones]]`` and ``[[endpoints]]`` tables. When the node name is known
    (``node_name``, else a ``NodeName`` constant in the file) it also has a ``[node]`` table
    with that name and ``data_dir`` (default ``/var/lib/icinga2``, where an Icinga node keeps
    its certificates), so it loads as a complete configuration; otherwise it is a fragment
    to append to a file that has a ``[node]`` table. Skipped parts are listed as comments.
    """
    constants = {"NodeName": node_name} if node_name else None
    zc = parse_zones_conf(text, path=path, constants=constants)
    name = node_name or zc.constants.get("NodeName")
    if name is not None and not isinstance(name, str):
        name = None
    if name:
        check_topology_at(zc.zones, zc.endpoints, name, Where(path, zc.lines, "zones.conf"))
    out = [f"# zone tree imported from {path or 'zones.conf'} by 'router config import-zones'"]
    out += [f"# warning: {w}" for w in zc.warnings]
    out.append("")
    if name:
        out += ["[node]", f"name = {toml_str(name)}",
                f"data_dir = {toml_str(data_dir or DEFAULT_ICINGA_DATA_DIR)}", ""]
    out.append(topology_to_toml(zc.zones, zc.endpoints, zc.log_durations))
    return "\n".join(out).rstrip("\n") + "\n"
