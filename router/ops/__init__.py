"""Operations: what lets people run and watch a node.

* :mod:`~router.ops.metrics` -- the node's own metric data model: :class:`MetricFamily`,
  the :data:`CATALOG` of every metric it exports, plain counters and rate meters that the
  hot path increments without locks;
* :mod:`~router.ops.exposition` -- ``/metrics`` through prometheus_client (text format, or
  OpenMetrics when the scraper asks), read from those counters at scrape time;
* :mod:`~router.ops.http` -- the status listener on aiohttp, with its limits;
* :mod:`~router.ops.logs` -- logging set-up for ``router serve``;
* :mod:`~router.ops.statusview` -- the client side of ``router status``;
* :mod:`~router.ops.webfiles` -- the web console's static files (``console/``), served
  from the installed package.

This module imports none of them: import them by name (``from router.ops import
statusview``). aiohttp takes a noticeable fraction of a second to import, which ``router
status`` and ``router --help`` need not pay.
"""

__all__ = ["exposition", "http", "logs", "metrics", "statusview", "webfiles"]
