"""``WriterSpec`` <-> JSON, for the control pipe to the writers' process."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from router.config import FrozenMap, WriterSpec

__all__ = ["spec_to_json", "spec_from_json"]


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _frozen(value: Any) -> Any:
    if isinstance(value, Mapping):
        return FrozenMap({str(k): _frozen(v) for k, v in value.items()})
    return value


def spec_to_json(spec: WriterSpec) -> dict[str, Any]:
    return {f.name: _plain(getattr(spec, f.name)) for f in dataclasses.fields(spec)}


def spec_from_json(data: Mapping[str, Any]) -> WriterSpec:
    names = {f.name for f in dataclasses.fields(WriterSpec)}
    return WriterSpec(**{k: _frozen(v) for k, v in data.items() if k in names})
