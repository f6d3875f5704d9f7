"""Host objects defined in Icinga DSL: which hosts a zone's synced files define.

A zone's configuration (a master's ``zones.d/<zone>/``, or what config sync brought) makes
each ``object Host "NAME"`` in it an object of that zone, and the routing rules must know
it: a check result for NAME is accepted from that zone's endpoints and relayed towards
it. This is not an Icinga parser; it finds the ``object Host <name>`` statements and
nothing else, skipping what could hide or fake one:

- comments: ``// ...``, ``# ...`` (to the end of the line) and ``/* ... */``;
- strings: ``"..."`` (with backslash escapes) and ``{{{ ... }}}`` (no escapes), so text
  such as ``vars.note = "object Host \\"x\\""`` defines nothing;
- ``template Host``, ``apply Service ... to Host`` and other types are not host objects.

The name is a quoted string (``object Host "web01"``) or a bare word (``object Host
web01``, taken literally). Pure: text in, names out.
"""

from __future__ import annotations

import re

__all__ = ["host_objects"]

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


def _tokens(text: str) -> list[tuple[str, str]]:
    """(kind, value) tokens: ``word``, ``string`` or ``other`` (one character)."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            i += 1
        elif c == "#" or text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif text.startswith("{{{", i):
            end = text.find("}}}", i + 3)
            out.append(("string", text[i + 3:n if end < 0 else end]))
            i = n if end < 0 else end + 3
        elif c == '"':
            chars: list[str] = []
            i += 1
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n:
                    chars.append(_ESCAPES.get(text[i + 1], text[i + 1]))
                    i += 2
                else:
                    chars.append(text[i])
                    i += 1
            out.append(("string", "".join(chars)))
            i += 1
        else:
            match = _WORD.match(text, i)
            if match:
                out.append(("word", match.group()))
                i = match.end()
            else:
                out.append(("other", c))
                i += 1
    return out


def host_objects(text: str) -> list[str]:
    """Names of the ``object Host`` definitions in ``text``, in order, without repeats."""
    tokens = _tokens(text)
    names: list[str] = []
    for i in range(len(tokens) - 2):
        if tokens[i] == ("word", "object") and tokens[i + 1] == ("word", "Host"):
            kind, name = tokens[i + 2]
            if kind in ("string", "word") and name and name not in names:
                names.append(name)
    return names
