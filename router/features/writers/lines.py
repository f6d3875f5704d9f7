"""What the line-protocol writers (Graphite, InfluxDB) share: turning a batch of queued
records into check results, and counting what cannot be written.

A record that is not a usable check result is skipped, counted (``invalid_record``) and
logged; invalid performance data is skipped value by value and counted (``perfdata``),
the rest of the result is still written (Icinga's writers do the same).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from router.config import WriterSpec
from router.features.writers.base import Batch
from router.features.writers.formats import NameCache, ResultView, result_view
from router.features.writers.perfdata import PerfdataError

__all__ = ["LineBackendBase"]

log = logging.getLogger("router.writers")


class LineBackendBase:
    """The common part of ``GraphiteBackend`` and ``InfluxdbBackend``."""

    def __init__(self, spec: WriterSpec, count_error: Callable[[str], None]) -> None:
        self.name = spec.name
        self.spec = spec
        self._count_error = count_error
        self._names = NameCache()

    def _views(self, batch: Batch) -> Iterator[ResultView]:
        """The batch's usable check results, in order; the others counted and logged."""
        for position, record in batch:
            view = result_view(record)
            if view is None:
                self._count_error("invalid_record")
                log.warning("writer %s: skipping record %d: not a usable check result "
                            "(host, cr, execution_end)", self.name, position)
                continue
            yield view

    def _invalid_perfdata(self, e: PerfdataError) -> None:
        self._count_error("perfdata")
        log.debug("writer %s: ignoring invalid perfdata: %s", self.name, e)
