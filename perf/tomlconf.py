"""TOML for the generated router configuration: merge a user's extra TOML, write the text."""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["dump_toml", "merge_toml"]


def merge_toml(base: dict[str, Any], extra: dict[str, Any]) -> None:
    """Merge a parsed TOML document into ``base``: tables key by key (so extra ``[tls]``
    or ``[timeouts]`` keys join ours instead of defining the table twice), arrays of
    tables appended, other values replaced."""
    for key, value in extra.items():
        mine = base.get(key)
        if isinstance(mine, dict) and isinstance(value, dict):
            merge_toml(mine, value)
        elif (isinstance(mine, list) and isinstance(value, list) and value
              and all(isinstance(v, dict) for v in value)):
            mine.extend(value)
        else:
            base[key] = value


def _toml_key(key: str) -> str:
    return key if key and all(c.isalnum() or c in "-_" for c in key) else orjson.dumps(
        key).decode()


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return orjson.dumps(value).decode()       # JSON numbers and strings are TOML too
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}"
                               for k, v in value.items()) + "}"
    raise ValueError(f"cannot write {type(value).__name__} {value!r} as TOML")


def dump_toml(doc: dict[str, Any], prefix: str = "") -> str:
    """TOML text for a document of tables, arrays of tables and plain values (what a
    router configuration holds; dates are not needed)."""
    def is_tables(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)

    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in doc.items()
             if not isinstance(v, dict) and not is_tables(v)]
    for key, value in doc.items():
        path = f"{prefix}{_toml_key(key)}"
        if isinstance(value, dict):
            lines += ["", f"[{path}]", dump_toml(value, f"{path}.").rstrip("\n")]
        elif is_tables(value):
            for item in value:
                lines += ["", f"[[{path}]]", dump_toml(item, f"{path}.").rstrip("\n")]
    return "\n".join(lines) + "\n"
