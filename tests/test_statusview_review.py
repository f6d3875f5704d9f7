"""router/ops/statusview.py promises (module docstring): "The formatter never trusts the
document: missing sections or keys (an older node), None values and values of an
unexpected type print as ``-`` or as their text". The writers section breaks it:
``sum(v for v in (w.get("errors") or {}).values() ...)`` (the Writers table in
format_status) calls ``.values()`` on whatever ``errors`` is, so `router status` dies with
a traceback (AttributeError) on a document whose writer ``errors`` is a number or a list
(another version's schema, a proxy's document), instead of printing it as text."""
from __future__ import annotations

import pytest

from router.ops.statusview import format_status


@pytest.mark.parametrize("errors", [3, ["timeout"], "many"])
def test_writer_errors_of_an_unexpected_type_do_not_crash_router_status(errors):
    doc = {"node": {"name": "n"}, "writers": {"graphite": {"type": "graphite",
                                                            "errors": errors}}}
    try:
        text = format_status(doc, now=0.0)
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"format_status crashed on writers.graphite.errors={errors!r}: "
                    f"{type(exc).__name__}: {exc}")
    assert "graphite" in text
