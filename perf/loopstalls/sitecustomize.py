"""Time the event loop from inside ``router serve`` during a ``router perf`` run.

Not part of the program: a ``sitecustomize`` that Python loads at start when this
directory is on ``PYTHONPATH``. With ``LOOPSTALLS_OUT=PREFIX`` set::

    LOOPSTALLS_OUT=/tmp/ls PYTHONPATH=perf/loopstalls:. python -m router perf \\
        --endpoints 10000 --scenario steady --rate 3000 --duration 15 --warmup 5

the node (the process whose arguments hold ``serve``) writes ``PREFIX.<pid>`` at exit:

- ``callbacks``: calls, total and longest ms of the periodic callbacks in ``WRAPPED``
  and of each garbage-collector generation (``gc.callbacks``);
- ``lag``: how late a 1 ms loop timer fired (p50, p99, p999, max, counts over 2/5/10 ms);
- ``stalls``: (monotonic time, name, ms) of every wrapped call or collection over 3 ms;
- ``stall_stacks``: while the 1 ms timer is more than 8 ms late, a watcher thread samples
  the main thread's stack every 2 ms. It runs only when the main thread lets go of the
  GIL (cffi calls such as pyOpenSSL's do), so its samples lean towards those calls.

``router perf`` itself writes ``PREFIX.parent``: the emulated parent's (arrival
monotonic, latency s) per parsed result, to set beside ``stalls`` (same clock).
perf/RESULTS.md, "Where the latency tail comes from at 10 000 agents", used it.
"""

import os
import sys

OUT = os.environ.get("LOOPSTALLS_OUT")

#: module -> (class, method) pairs timed in the node.
WRAPPED = {
    "router.node.housekeeping": [("Housekeeping", "_on_housekeeping"),
                                 ("Housekeeping", "_on_log_position_tick"),
                                 ("Housekeeping", "_check_stall_slice")],
    "router.node.receipts": [("Receipts", "_tick")],
    "router.node.consoleweb": [("Console", "_tick")],
    "router.node.enrollment": [("Enrollment", "_on_tick")],
    "router.node.replay": [("ReplayManager", "housekeeping")],
}


def _after_import(modules, patch):
    """Call ``patch(module)`` once each of ``modules`` has been executed."""
    import importlib.abc

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name not in modules:
                return None
            for finder in sys.meta_path:
                if finder is not self and hasattr(finder, "find_spec"):
                    spec = finder.find_spec(name, path, target)
                    if spec is not None:
                        break
            else:
                return None
            execute = spec.loader.exec_module

            def exec_module(module):
                execute(module)
                patch(module)
            spec.loader.exec_module = exec_module
            return spec
    sys.meta_path.insert(0, Finder())


def _node() -> None:
    import atexit
    import collections
    import functools
    import gc
    import json
    import threading
    import time
    import traceback

    clock = time.perf_counter
    counts = collections.Counter()
    totals = collections.Counter()
    longest = collections.Counter()
    stalls, lags, stall_stacks = [], [], []
    last_tick = [time.monotonic()]

    def record(name, ms):
        counts[name] += 1
        totals[name] += ms
        longest[name] = max(longest[name], ms)
        if ms > 3:
            stalls.append((time.monotonic(), name, round(ms, 2)))

    def timed(function, name):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            start = clock()
            try:
                return function(*args, **kwargs)
            finally:
                record(name, (clock() - start) * 1000)
        return wrapper

    def patch(module):
        for cls_name, attr in WRAPPED[module.__name__]:
            cls = getattr(module, cls_name)
            setattr(cls, attr, timed(getattr(cls, attr), f"{cls_name}.{attr}"))
        if module.__name__ == "router.node.housekeeping":
            start = module.Housekeeping.start

            def start_and_watch(self):
                start(self)
                _watch_loop()
            module.Housekeeping.start = start_and_watch

    def _watch_loop():
        import asyncio
        loop = asyncio.get_running_loop()
        main = threading.get_ident()

        def tick(due):
            now = loop.time()
            last_tick[0] = time.monotonic()
            lags.append((now - due) * 1000)
            loop.call_at(now + 0.001, tick, now + 0.001)
        loop.call_soon(tick, loop.time())

        def watch():
            stalled = False
            while True:
                time.sleep(0.002)
                if time.monotonic() - last_tick[0] <= 0.008:
                    stalled = False
                    continue
                if not stalled:
                    stalled = True
                    stall_stacks.append({"t": time.monotonic(), "main": []})
                frame = sys._current_frames().get(main)
                samples = stall_stacks[-1]["main"]
                if frame is not None and len(samples) < 40:
                    samples.append([f"{f.name}:{os.path.basename(f.filename)}:{f.lineno}"
                                    for f in traceback.extract_stack(frame)[-10:]])
        threading.Thread(target=watch, daemon=True).start()

    start_gc = [0.0]

    def on_gc(phase, info):
        if phase == "start":
            start_gc[0] = clock()
        else:
            record(f"gc{info['generation']}", (clock() - start_gc[0]) * 1000)
    gc.callbacks.append(on_gc)

    def dump():
        ordered = sorted(lags)

        def at(q):
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2) \
                if ordered else None
        out = {
            "callbacks": {name: {"calls": counts[name], "total_ms": round(totals[name], 1),
                                 "longest_ms": round(longest[name], 2)} for name in counts},
            "lag": {"n": len(ordered), "p50": at(0.5), "p99": at(0.99), "p999": at(0.999),
                    "max": at(1.0), **{f"over_{ms}ms": sum(x > ms for x in lags)
                                       for ms in (2, 5, 10)}},
            "stalls": stalls,
            "stall_stacks": stall_stacks,
        }
        with open(f"{OUT}.{os.getpid()}", "w") as f:
            json.dump(out, f)
    atexit.register(dump)
    _after_import(WRAPPED, patch)


def _perf_tool() -> None:
    import atexit
    import json

    tallies = []

    def patch(module):
        init = module.Tally.__init__

        def keep(self, *args, **kwargs):
            init(self, *args, **kwargs)
            tallies.append(self)
        module.Tally.__init__ = keep

    def dump():
        for tally in tallies:
            if tally.latencies:
                with open(f"{OUT}.parent", "w") as f:
                    json.dump(tally.latencies, f)
    atexit.register(dump)
    _after_import({"perf.parent"}, patch)


if OUT:
    if "serve" in sys.argv:
        _node()
    elif "perf" in sys.argv:
        _perf_tool()
