"""Benchmarks of the router; ``router perf`` lives in :mod:`perf.tool`.

``perf.tool``: the Python API of ``router perf`` (``perf.tool.run(perf.tool.Options(...))``),
its pieces in ``perf.options``, ``perf.session``, ``perf.scenarios``, ``perf.parent``,
``perf.load`` (the load processes) and ``perf.report``. Shared with ``perf/bench_relay.py``:
``perf.wire``, ``perf.benchpki``, ``perf.targets``, ``perf.tomlconf``, ``perf.measure``,
``perf.workers``; ``perf.relay`` is bench_relay's own load. ``perf.common`` re-exports
the shared pieces under their old name. See perf/README.md.
"""
