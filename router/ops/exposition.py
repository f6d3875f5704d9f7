"""The ``/metrics`` exposition through prometheus_client.

The node keeps its own plain counters (ints, :class:`~router.ops.metrics.LabeledCounter`,
:class:`~router.ops.metrics.RateSeries`); nothing on the hot path touches prometheus_client.
Only when ``/metrics`` is scraped, :class:`FamilyCollector` calls its source (for a node
``router.node.report.metric_families``) and turns the :class:`MetricFamily` list into
prometheus_client metric families; prometheus_client then renders them in the Prometheus
text format (0.0.4) or, when the scraper's ``Accept`` header asks for it, in OpenMetrics
1.0 (:func:`prometheus_client.exposition.choose_encoder`).

Every node has its own :class:`~prometheus_client.CollectorRegistry` (:func:`registry`)
holding only that collector: not the process-global default registry, and no process or
platform collectors (the router exports its own ``router_process_*`` families).

Names are kept exactly: a counter family ``x_total`` is handed to prometheus_client as
family ``x`` with samples ``x_total`` (prometheus_client adds ``_total`` back to the text
format's ``# HELP``/``# TYPE`` lines; OpenMetrics names the family ``x``, as its spec
wants); histogram samples keep their ``_bucket``/``_sum``/``_count`` names and ``le``
labels as the node produced them.
"""

from __future__ import annotations

import asyncio
from typing import Callable, Iterable, Iterator, Mapping

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample

from router.ops.http import Response, WithHeaders
from router.ops.metrics import MetricFamily

__all__ = [
    "FamilyCollector",
    "registry",
    "render",
    "render_families",
    "metrics_route",
    "to_metric",
    "TEXT_CONTENT_TYPE",
    "OPENMETRICS_CONTENT_TYPE",
]

TEXT_CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
"""``text/plain; version=0.0.4; charset=utf-8``: the default answer of ``/metrics``."""

FamilySource = Callable[[], Iterable[MetricFamily]]


def to_metric(fam: MetricFamily) -> Metric:
    """One :class:`MetricFamily` as a prometheus_client :class:`Metric`, names unchanged."""
    name = fam.name
    typ: str = fam.type
    family_name = name
    if typ == "counter":
        if name.endswith("_total"):
            # prometheus_client's convention (CounterMetricFamily): the family is named
            # without _total, the samples with it; the text format adds it back.
            family_name = name[:-6]
        else:
            # A counter without _total cannot keep its name through prometheus_client
            # (it would print "# TYPE x_total"); the catalog never has one, but should a
            # family ever be built that way it is exported untyped under its exact name.
            typ = "unknown"
    metric = Metric(family_name, fam.help, typ)
    samples = metric.samples
    for labels, value in fam.samples:
        samples.append(Sample(name, labels, value))
    for suffix, labels, value in fam.suffixed:
        samples.append(Sample(name + suffix, labels, value))
    return metric


class FamilyCollector(Collector):
    """A prometheus_client collector reading ``source()`` at every scrape."""

    def __init__(self, source: FamilySource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        for fam in self._source():
            yield to_metric(fam)

    def describe(self) -> Iterable[Metric]:
        # Nothing known in advance (families come and go with the node's features); an
        # empty describe also keeps register() from calling collect().
        return ()


def registry(source: FamilySource) -> CollectorRegistry:
    """A registry of its own holding only a :class:`FamilyCollector` over ``source``."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(FamilyCollector(source))
    return reg


def render(reg: CollectorRegistry, accept: str | None = None) -> tuple[bytes, str]:
    """``(body, content type)`` of a scrape: OpenMetrics when ``accept`` (the request's
    ``Accept`` header) asks for ``application/openmetrics-text``, else the text format."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(reg), content_type


def render_families(families: Iterable[MetricFamily], accept: str | None = None
                    ) -> tuple[bytes, str]:
    """:func:`render` for a fixed list of families (tests, tools)."""
    fams = list(families)
    return render(registry(lambda: fams), accept)


class _Snapshot(Collector):
    """The families of one scrape, read on the loop, converted and encoded one family at
    a time in the encoding thread.

    Each family is released once the encoder has taken it, so a scrape holds the node's
    plain samples and one family's prometheus_client objects at a time instead of both
    for every family: at 5 000 endpoints (some 70 000 samples) converting everything
    up front made a scrape's peak 40 MB above the node's RSS, and the allocator kept
    much of that high water afterwards (perf/RESULTS.md, the soak).
    """

    def __init__(self, families: list[MetricFamily]) -> None:
        families.reverse()
        self._families = families

    def collect(self) -> Iterator[Metric]:
        families, self._families = self._families, []
        while families:
            yield to_metric(families.pop())


def metrics_route(source: FamilySource) -> WithHeaders:
    """A status-server route serving ``/metrics`` from ``source`` (content negotiation on
    the request's ``Accept`` header).

    The node's state is read on the event loop (``source()`` builds plain tuples of
    labels and values), so the scrape is one consistent snapshot; the conversion to
    prometheus_client's objects and its encoding, most of a scrape's cost (about 0.5 s
    for 5 000 endpoints, some 70 000 samples), run in the loop's default executor.
    Routing keeps running meanwhile: the encoder is Python and shares the GIL, so the
    loop slows down for that time instead of stopping.
    """

    async def metrics(query: dict[str, str], headers: Mapping[str, str]) -> Response:
        encoder, content_type = choose_encoder(headers.get("Accept") or "")
        snapshot = CollectorRegistry(auto_describe=False)
        snapshot.register(_Snapshot(list(source())))
        body = await asyncio.get_running_loop().run_in_executor(None, encoder, snapshot)
        return 200, content_type, body

    return WithHeaders(metrics)
