"""Performance data: Icinga's parsing rules, sans-I/O.

Follows Icinga 2's ``PerfdataValue::Parse`` and ``PluginUtility::SplitPerfdata``
(lib/base/perfdatavalue.cpp, lib/icinga/pluginutility.cpp), re-implemented: the label is
everything before the LAST ``=`` (single quotes around it removed); the value token runs to
the next space and is split on ``;`` into value[UOM];warn;crit;min;max; a ``,`` anywhere in
it or a value that is not a finite number makes the whole item invalid (the writers skip it,
count it and still write the rest of the result). Warn/crit/min/max that are ranges
(``10:20``, ``@5``) or ``U`` are dropped, as Icinga does. Known units are normalised to
their base (``5ms`` -> 0.005 seconds, ``1KiB`` -> 1024 bytes) with Icinga's unit table;
an unknown unit is dropped and the value kept.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, NamedTuple

__all__ = ["PerfdataValue", "PerfdataError", "parse_perfdata", "split_perfdata",
           "iter_perfdata"]


class PerfdataError(ValueError):
    """One perfdata item is not valid (Icinga: "Invalid performance data value")."""


class PerfdataValue(NamedTuple):
    """One parsed value. A named tuple rather than a frozen dataclass: it is built for
    every perfdata value of every result in the writers' process, and a tuple is built
    several times faster (issue 19, perf/bench_writer_format.py)."""

    label: str
    value: float
    counter: bool = False
    unit: str = ""
    warn: float | None = None
    crit: float | None = None
    min: float | None = None
    max: float | None = None


def _case_sensitive_units() -> dict[str, tuple[float, str]]:
    units: dict[str, tuple[float, str]] = {
        "": (1.0, ""), "%": (1.0, "percent"), "c": (1.0, ""), "C": (1.0, "degrees-celsius"),
        "b": (1.0, "bits"), "B": (1.0, "bytes")}
    # Data: k/K=1 ... y/Y=8 powers of 1000 (SI) or 1024 (with i/I).
    for power, letters in enumerate(("kK", "mM", "gG", "tT", "pP", "eE", "zZ", "yY"), 1):
        for letter in letters:
            for infix, base in (("", 1000.0), ("i", 1024.0), ("I", 1024.0)):
                for unit, out in (("b", "bits"), ("B", "bytes")):
                    units[letter + infix + unit] = (base ** power, out)
    # Energy: amperes, ohms, volts, watts with n..Y prefixes (powers of 1000).
    prefixes = (("nN", -3), ("uU", -2), ("m", -1), ("", 0), ("kK", 1), ("M", 2), ("gG", 3),
                ("tT", 4), ("pP", 5), ("eE", 6), ("zZ", 7), ("yY", 8))
    for letters, power in prefixes:
        factor = 1000.0 ** power
        for letter in (letters or ("",)):
            for ins, out in (("aA", "amperes"), ("oO", "ohms"), ("vV", "volts"),
                             ("wW", "watts")):
                for b in ins:
                    units[letter + b] = (factor, out)
            for suffix, seconds in (("s", 1.0), ("S", 1.0), ("m", 60.0), ("M", 60.0),
                                    ("h", 3600.0), ("H", 3600.0)):
                for ins, per, out in (("aA", 1.0, "ampere-seconds"),
                                      ("wW", 3600.0, "watt-hours")):
                    for b in ins:
                        units[letter + b + suffix] = (factor * seconds / per, out)
    return units


_CS_UNITS = _case_sensitive_units()
_CI_UNITS: dict[str, tuple[float, str]] = {
    "ns": (1e-9, "seconds"), "us": (1e-6, "seconds"), "ms": (1e-3, "seconds"),
    "s": (1.0, "seconds"), "m": (60.0, "seconds"), "h": (3600.0, "seconds"),
    "d": (86400.0, "seconds"),
    "ng": (1e-9, "grams"), "ug": (1e-6, "grams"), "mg": (1e-3, "grams"), "g": (1.0, "grams"),
    "kg": (1e3, "grams"), "t": (1e6, "grams"),
    "ml": (1e-3, "liters"), "l": (1.0, "liters"), "hl": (100.0, "liters"),
    "packets": (1.0, "packets"), "lm": (1.0, "lumens"), "dbm": (1.0, "decibel-milliwatts"),
    "f": (1.0, "degrees-fahrenheit"), "k": (1.0, "degrees-kelvin"),
}
_NUMBER_CHARS = "+-0123456789.eE"
_VALUE_CHARS = frozenset("0123456789.")


def _to_double(text: str) -> float:
    """Icinga's Convert::ToDouble: the whole text must be a number."""
    # Fast path (nearly every value): Python's float() takes what Icinga takes, except
    # '_' digit separators and nan/inf spellings, which the slow path below refuses.
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(value) and "_" not in text:
            return value
    t = text.strip()
    if not t or t.lower() in ("nan", "inf", "-inf", "+inf", "infinity", "-infinity") \
            or "_" in t:
        raise PerfdataError(f"not a number: {text!r}")
    try:
        return float(t)
    except ValueError:
        raise PerfdataError(f"not a number: {text!r}") from None


def _threshold(token: str) -> float | None:
    """A warn/crit/min/max token as a number, or None (empty, ``U``, a range)."""
    # strip() leaves something exactly when a character is outside the set (C speed).
    if not token or token == "U" or token.strip(_NUMBER_CHARS):
        return None
    try:
        value = float(token)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_perfdata(item: str) -> PerfdataValue:
    """Parse one ``label=value[UOM][;warn[;crit[;min[;max]]]]`` item (Icinga's rules)."""
    eq = item.rfind("=")
    if eq < 0:
        raise PerfdataError(f"no '=' in {item!r}")
    label = item[:eq]
    if len(label) > 2 and label[0] == "'" and label[-1] == "'":
        label = label[1:-1]
    space = item.find(" ", eq)
    value_str = item[eq + 1:] if space < 0 else item[eq + 1:space]
    if "," in value_str:
        raise PerfdataError(f"',' in value of {item!r}")
    first, _, rest = value_str.partition(";")
    # Icinga: everything up to and including the last digit or '.' is the number.
    cut = len(first)
    while cut and first[cut - 1] not in _VALUE_CHARS:
        cut -= 1
    found = cut > 0
    value = _to_double(first[:cut] if found else first)
    if not math.isfinite(value):
        raise PerfdataError(f"value out of range in {item!r}")
    unit_in = first[cut:] if found else ""
    counter = unit_in == "c"
    uom = _CS_UNITS.get(unit_in) or _CI_UNITS.get(unit_in.lower())
    factor, unit = uom if uom is not None else (1.0, "")
    if factor != 1.0:
        # A finite number can overflow once scaled (1e306KB): infinity is not a value
        # (Graphite's int() of it raised and lost the whole result; InfluxDB refused the
        # point), and a threshold that overflows is dropped (review).
        value *= factor
        if not math.isfinite(value):
            raise PerfdataError(f"value out of range once scaled to {unit} in {item!r}")
    if not rest:
        return _new_value(PerfdataValue, (label, value, counter, unit, None, None,
                                          None, None))
    limits = _LIMITS.get(rest)
    if limits is None:
        limits = _limits(rest)
    warn, crit, low, high = limits
    if factor != 1.0:
        warn, crit, low, high = (_scaled(warn, factor), _scaled(crit, factor),
                                 _scaled(low, factor), _scaled(high, factor))
    return _new_value(PerfdataValue, (label, value, counter, unit, warn, crit,
                                      low, high))


def _scaled(threshold: float | None, factor: float) -> float | None:
    if threshold is None:
        return None
    threshold *= factor
    return threshold if math.isfinite(threshold) else None


#: ``PerfdataValue``'s constructor without its Python-level ``__new__`` (a third of the
#: cost of building one, for every perfdata value of every result).
_new_value = tuple.__new__
_Limits = tuple[float | None, float | None, float | None, float | None]
#: warn;crit;min;max texts seen lately, parsed: a check's thresholds rarely change,
#: so most items find theirs here (bounded: cleared when full).
_LIMITS: dict[str, _Limits] = {}
_LIMITS_MAX = 4096


def _limits(rest: str) -> _Limits:
    """``warn;crit;min;max`` (the part after the value's ``;``), unscaled."""
    tokens = rest.split(";")
    n = len(tokens)
    limits = (_threshold(tokens[0]), _threshold(tokens[1]) if n > 1 else None,
              _threshold(tokens[2]) if n > 2 else None,
              _threshold(tokens[3]) if n > 3 else None)
    if len(_LIMITS) >= _LIMITS_MAX:
        _LIMITS.clear()
    _LIMITS[rest] = limits
    return limits


def split_perfdata(text: str) -> list[str]:
    """Split a plugin's perfdata string into items (Icinga's SplitPerfdata, with ``::``
    multi-value prefixes carried to the following labels)."""
    result: list[str] = []
    begin = 0
    multi_prefix = ""
    while True:
        eq = text.find("=", begin)
        if eq < 0:
            break
        label = text[begin:eq].lstrip()
        if len(label) > 2 and label[0] == "'" and label[-1] == "'":
            label = label[1:-1]
        multi_index = label.rfind("::")
        if multi_index >= 0:
            multi_prefix = ""
        space = text.find(" ", eq)
        if space < 0:
            space = len(text)
        value = text[eq + 1:space]
        if multi_prefix:
            label = f"{multi_prefix}::{label}"
        result.append(f"'{label}'={value}" if " " in label else f"{label}={value}")
        if multi_index >= 0:
            multi_prefix = label[:multi_index]
        begin = space + 1
    return result


def _from_object(item: dict[str, Any]) -> PerfdataValue:
    """A serialised Icinga ``PerfdataValue`` object (the API may send those)."""
    label, value = item.get("label"), item.get("value")
    if not isinstance(label, str) or isinstance(value, bool) or \
            not isinstance(value, int | float) or not math.isfinite(value):
        raise PerfdataError(f"bad PerfdataValue object {item!r}")

    def num(key: str) -> float | None:
        v = item.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            return float(v)
        return None
    unit = item.get("unit")
    return PerfdataValue(label, float(value), item.get("counter") is True,
                         unit if isinstance(unit, str) else "", num("warn"), num("crit"),
                         num("min"), num("max"))


def iter_perfdata(raw: object) -> Iterator[PerfdataValue | PerfdataError]:
    """The values of a check result's ``performance_data`` (list of items or one string);
    an invalid item yields its ``PerfdataError`` so the caller can count it and go on."""
    if raw is None or raw == "":
        return
    items: list[Any] = split_perfdata(raw) if isinstance(raw, str) else \
        raw if isinstance(raw, list) else [raw]
    for item in items:
        try:
            if isinstance(item, str):
                yield parse_perfdata(item)
            elif isinstance(item, dict):
                yield _from_object(item)
            else:
                yield PerfdataError(f"perfdata item of type {type(item).__name__}")
        except PerfdataError as e:
            yield e
