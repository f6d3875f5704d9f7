"""Benchmarks of the router; ``router perf`` lives in :mod:`perf.tool`.

``perf.common``: shared pieces (benchmark PKI, the node under test, agents, parent, CPU
helpers) used by ``perf/bench_relay.py`` and ``router perf``; ``perf.load``: the load
processes of ``router perf``; ``perf.tool``: its scenarios, report and Python API
(``perf.tool.run(perf.tool.Options(...))``).
"""
