"""``[[writers]] type`` -> backend class, imported lazily (a node without PostgreSQL
writers never imports asyncpg)."""

from __future__ import annotations

import importlib
from typing import cast

from router.features.writers.base import BackendFactory

__all__ = ["BACKEND_CLASSES", "backend_class"]

#: type -> (module, class) inside ``router.features.writers``.
BACKEND_CLASSES: dict[str, tuple[str, str]] = {
    "graphite": ("graphite", "GraphiteBackend"),
    "influxdb": ("influxdb", "InfluxdbBackend"),
    "postgresql": ("postgresql", "PostgresqlBackend"),
}


def backend_class(kind: str) -> BackendFactory:
    """The backend class for a writer type (KeyError for an unknown type)."""
    module, name = BACKEND_CLASSES[kind]
    return cast(BackendFactory,
                getattr(importlib.import_module(f"router.features.writers.{module}"), name))
