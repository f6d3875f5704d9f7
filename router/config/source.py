"""Configuration source text: reading a file, parsing its TOML, finding the line of a key.

``tomllib`` keeps no positions, so :class:`TomlLocator`, a small structural scanner, walks
the TOML text once and records the line of every key, table header, array-of-tables entry
and array item. :class:`Where` turns a dotted key path (``zones[1].parent``) into a
:class:`router.errors.ConfigError` with the file and the line; the zones.conf import uses it
with its own line table. Separate from the builder because it is about positions in the
text, not about what the keys mean.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

from router.config.emit import toml_str
from router.errors import ConfigError

__all__ = ["TomlLocator", "Where", "join_key", "load_toml", "read_text"]


_BARE_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_INDEX_SUFFIX = re.compile(r"\[\d+\]$")


def join_key(prefix: str, key: str) -> str:
    """``prefix.key``, or ``key`` at the top level."""
    return f"{prefix}.{key}" if prefix else key


def _parent_key(key: str) -> str:
    m = _INDEX_SUFFIX.search(key)
    if m:
        return key[:m.start()]
    dot = key.rfind(".")
    return key[:dot] if dot >= 0 else ""


class _ScanError(Exception):
    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


class TomlLocator:
    """Records the 1-based line of every key path in a TOML text.

    Paths: ``node.name``, ``zones[1]`` (the ``[[zones]]`` header), ``zones[1].endpoints[0]``
    (an array item), ``objects.hosts`` (a table header). The scanner assumes valid TOML;
    on invalid input it stops with :class:`_ScanError` at the line where it got lost,
    which helps to place some ``tomllib`` errors reported "at end of document".
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line_no = 1
        self.lines: dict[str, int] = {}
        self.defined: dict[str, int] = {}
        self.duplicates: list[tuple[str, int, int]] = []      # (key, first line, line)
        self.aot: dict[str, int] = {}
        self.error_line: int | None = None
        try:
            self._scan()
        except _ScanError as e:
            self.error_line = e.line
        except (IndexError, ValueError):          # pragma: no cover - defensive
            self.error_line = self.line_no

    # -- helpers --------------------------------------------------------------------------

    def _peek(self, n: int = 0) -> str:
        i = self.pos + n
        return self.text[i] if i < len(self.text) else ""

    def _record(self, key: str, line: int) -> None:
        self.lines.setdefault(key, line)

    def _define(self, key: str, line: int) -> None:
        if key in self.defined:
            self.duplicates.append((key, self.defined[key], line))
        else:
            self.defined[key] = line
        self._record(key, line)

    def _skip_ws(self) -> None:
        while self._peek() in (" ", "\t"):
            self.pos += 1

    def _skip_ws_nl_comments(self) -> None:
        while True:
            c = self._peek()
            if c in (" ", "\t", "\r"):
                self.pos += 1
            elif c == "\n":
                self.pos += 1
                self.line_no += 1
            elif c == "#":
                while self._peek() not in ("\n", ""):
                    self.pos += 1
            else:
                return

    def _skip_line_end(self) -> None:
        self._skip_ws()
        if self._peek() == "#":
            while self._peek() not in ("\n", ""):
                self.pos += 1
        if self._peek() == "\r":
            self.pos += 1
        if self._peek() not in ("\n", ""):
            raise _ScanError(self.line_no)

    # -- scanning -------------------------------------------------------------------------

    def _scan(self) -> None:
        prefix = ""
        while True:
            self._skip_ws_nl_comments()
            c = self._peek()
            if not c:
                return
            line = self.line_no
            if c == "[":
                aot = self._peek(1) == "["
                self.pos += 2 if aot else 1
                self._skip_ws()
                parts = self._read_key()
                self._skip_ws()
                close = "]]" if aot else "]"
                if self.text[self.pos:self.pos + len(close)] != close:
                    raise _ScanError(line)
                self.pos += len(close)
                prefix = self._resolve_header(parts, aot, line)
                self._skip_line_end()
            else:
                parts = self._read_key()
                self._skip_ws()
                if self._peek() != "=":
                    raise _ScanError(line)
                self.pos += 1
                self._skip_ws()
                path = prefix
                for part in parts[:-1]:
                    path = join_key(path, part)
                    self._record(path, line)
                path = join_key(path, parts[-1])
                self._define(path, line)
                self._read_value(path)
                self._skip_line_end()

    def _resolve_header(self, parts: list[str], aot: bool, line: int) -> str:
        path = ""
        for k, part in enumerate(parts):
            path = join_key(path, part)
            if aot and k == len(parts) - 1:
                idx = self.aot.get(path, 0)
                self.aot[path] = idx + 1
                self._record(path, line)
                path = f"{path}[{idx}]"
                self._record(path, line)
            else:
                if path in self.aot:
                    path = f"{path}[{self.aot[path] - 1}]"
                self._record(path, line)
        if not aot:
            self._define(path, line)
        return path

    def _read_key(self) -> list[str]:
        parts: list[str] = []
        while True:
            self._skip_ws()
            c = self._peek()
            if c == '"':
                parts.append(self._read_basic_string())
            elif c == "'":
                end = self.text.find("'", self.pos + 1)
                nl = self.text.find("\n", self.pos + 1)
                if end < 0 or (0 <= nl < end):
                    raise _ScanError(self.line_no)
                parts.append(self.text[self.pos + 1:end])
                self.pos = end + 1
            else:
                start = self.pos
                while self._peek() and self._peek() in _BARE_KEY_CHARS:
                    self.pos += 1
                if self.pos == start:
                    raise _ScanError(self.line_no)
                parts.append(self.text[start:self.pos])
            self._skip_ws()
            if self._peek() != ".":
                return parts
            self.pos += 1

    def _read_basic_string(self) -> str:
        start = self.pos
        self.pos += 1
        while True:
            c = self._peek()
            if c in ("", "\n"):
                raise _ScanError(self.line_no)
            if c == "\\":
                self.pos += 2
                continue
            self.pos += 1
            if c == '"':
                raw = self.text[start:self.pos]
                try:
                    key: str = tomllib.loads(f"k = {raw}")["k"]
                except tomllib.TOMLDecodeError:
                    return raw[1:-1]
                return key

    def _read_multiline(self, quote: str) -> None:
        line = self.line_no
        self.pos += 3
        delim = quote * 3
        while True:
            c = self._peek()
            if not c:
                raise _ScanError(line)
            if c == "\n":
                self.line_no += 1
                self.pos += 1
            elif c == "\\" and quote == '"':
                if self._peek(1) == "\n":
                    self.line_no += 1
                self.pos += 2
            elif self.text.startswith(delim, self.pos):
                self.pos += 3
                for _ in range(2):              # up to two quotes may precede the delimiter
                    if self._peek() == quote:
                        self.pos += 1
                return
            else:
                self.pos += 1

    def _read_value(self, path: str) -> None:
        c = self._peek()
        if c == '"':
            if self.text.startswith('"""', self.pos):
                self._read_multiline('"')
            else:
                self._read_basic_string()
        elif c == "'":
            if self.text.startswith("'''", self.pos):
                self._read_multiline("'")
            else:
                self._read_key()                # a literal string scans like a quoted key
        elif c == "[":
            self.pos += 1
            idx = 0
            while True:
                self._skip_ws_nl_comments()
                c = self._peek()
                if c == "]":
                    self.pos += 1
                    return
                if not c:
                    raise _ScanError(self.line_no)
                item = f"{path}[{idx}]"
                self._record(item, self.line_no)
                self._read_value(item)
                idx += 1
                self._skip_ws_nl_comments()
                if self._peek() == ",":
                    self.pos += 1
                elif self._peek() != "]":
                    raise _ScanError(self.line_no)
        elif c == "{":
            self.pos += 1
            while True:
                self._skip_ws()
                c = self._peek()
                if c == "}":
                    self.pos += 1
                    return
                line = self.line_no
                parts = self._read_key()
                self._skip_ws()
                if self._peek() != "=":
                    raise _ScanError(line)
                self.pos += 1
                self._skip_ws()
                sub = path
                for part in parts:
                    sub = join_key(sub, part)
                    self._record(sub, line)
                self._read_value(sub)
                self._skip_ws()
                if self._peek() == ",":
                    self.pos += 1
                elif self._peek() != "}":
                    raise _ScanError(line)
        else:
            start = self.pos
            while self._peek() and self._peek() not in ",]}#\n":
                self.pos += 1
            if self.pos == start:
                raise _ScanError(self.line_no)


class Where:
    """Turns a key path into a ConfigError with the right file and line."""

    def __init__(self, path: str | None, lines: Mapping[str, int] | None = None,
                 dialect: str = "toml",
                 locate: Callable[[], Mapping[str, int]] | None = None) -> None:
        self.path = path
        self._lines = lines if lines is not None or locate is not None else {}
        #: Computes ``lines`` when an error first needs one: scanning a 5 000-agent file
        #: for key lines took half a second of every start.
        self._locate = locate
        self.dialect = dialect          # "toml" or "zones.conf": changes the wording of hints

    @property
    def lines(self) -> Mapping[str, int]:
        if self._lines is None:
            self._lines = self._locate() if self._locate is not None else {}
            self._locate = None
        return self._lines

    @lines.setter
    def lines(self, value: Mapping[str, int]) -> None:
        self._lines, self._locate = value, None

    def define_endpoint_hint(self, name: str) -> str:
        if self.dialect == "zones.conf":
            return f"add an object Endpoint {toml_str(name)}"
        return "add an [[endpoints]] entry for it"

    def line(self, key: str | None) -> int | None:
        k = key or ""
        while k:
            if k in self.lines:
                return self.lines[k]
            k = _parent_key(k)
        return None

    def error(self, message: str, key: str | None = None) -> ConfigError:
        return ConfigError(message, path=self.path, line=self.line(key), key=key or None)

    def first_line_key(self, *keys: str) -> str:
        """The first of ``keys`` that appears in the file (else the first one)."""
        for k in keys:
            if k in self.lines:
                return k
        return keys[0]


def load_toml(text: str, path: str | None) -> tuple[dict[str, Any], Where]:
    """Parse TOML text; the Where locates keys only when an error first needs a line."""
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise _toml_syntax_error(e, text, path) from None
    return doc, Where(path, locate=lambda: TomlLocator(text).lines)


def _toml_syntax_error(e: tomllib.TOMLDecodeError, text: str, path: str | None) -> ConfigError:
    msg = str(e)
    line: int | None = None
    m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", msg)
    if m:
        line = int(m.group(1))
        msg = f"{msg[:m.start()]} (column {m.group(2)})"
    else:
        m = re.search(r"\s*\(at end of document\)$", msg)
        if m:
            msg = f"{msg[:m.start()]} (at end of file)"
    loc = TomlLocator(text)
    if ("overwrite" in msg or "twice" in msg) and loc.duplicates:
        key, first, dup = loc.duplicates[0]
        return ConfigError(f"TOML syntax error: '{key}' is defined twice (first at line "
                           f"{first})", path=path, line=dup, key=key)
    if line is None:
        line = loc.error_line if loc.error_line is not None else max(1, text.count("\n") + 1)
    return ConfigError(f"TOML syntax error: {msg}", path=path, line=line)


def read_text(path: str) -> str:
    """A configuration file's text; unreadable or non-UTF-8 files raise ConfigError."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"cannot read file: {e.strerror or e}", path=path) from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"file is not UTF-8 text ({e.reason} at byte {e.start})",
                          path=path) from None
