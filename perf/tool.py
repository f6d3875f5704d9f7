"""``router perf``: N emulated agents -> node under test -> emulated parent, scenario by scenario.

One *session* per target (our router, and with ``against="icinga2"`` a real Icinga 2 under
the same load in the same run): start the node (or use ``target=HOST:PORT``), connect the
emulated parent, connect all N agents (time until the node reports all of them connected
and identified), then run the scenarios one after the other on the same connections:

* ``steady``: ``rate`` results/s in total (paced per agent) for warm-up + window;
* ``churn``: ``rate`` results/s while a fraction of the agents keep dropping and redialling;
* ``replay``: ``rate`` results/s while the parent is cut off for ``replay_cut`` seconds;
  then the load stops, the parent returns, and we time until every result sent arrived
  (count check per agent: none missing, duplicates counted);
* ``max``: flat out (every agent writes as fast as the node reads); a slow node keeps a
  backlog after it, hence it runs after the paced scenarios with ``all``;
* ``storm``: the node restarts; time until all N agents are back (they redial with a
  random 0-0.5 s delay, then back off up to 2 s), counted from the start of the restart,
  from the moment the node's port opens, and from its ready signal. The agents are
  watched from the moment the node is started, not after the parent has dialled in.

Everything runs on 127.0.0.1 and is bounded in time. ``run()`` is the Python API; the CLI
(``router perf``, in router/cli/) only parses options and calls it.

This module is the entry point; the pieces are :mod:`perf.options` (:class:`Options`),
:mod:`perf.scenarios` and :mod:`perf.session` (a session and its scenarios),
:mod:`perf.parent` (the emulated parent), :mod:`perf.targets` (the node under test),
:mod:`perf.load` (the agents) and :mod:`perf.report` (progress and the table). The names
this module had before they moved are re-exported here.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson
import psutil

from perf.benchpki import make_pki, pki_from_ca
from perf.measure import GEN_SATURATED, listening, raise_nofile, wait_listening
from perf.options import NAMED_ONLY, SCENARIOS, Options
from perf.parent import PerfParent, Tally
from perf.report import ROWS, Progress, format_report
from perf.scenarios import MACHINE_SATURATED, Session
from perf.targets import (
    ExternalTarget,
    IcingaTarget,
    RouterTarget,
    Target,
    node_connected,
    node_counters,
)

__all__ = [
    # the Python API
    "Options",
    "SCENARIOS",
    "format_report",
    "run",
    # defined here before the split, re-exported
    "GEN_SATURATED",
    "MACHINE_SATURATED",
    "ROWS",
    "ExternalTarget",
    "PerfParent",
    "Progress",
    "Session",
    "Tally",
    "listening",
    "node_connected",
    "node_counters",
    "wait_listening",
]


def run(opts: Options, echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns ``{"meta": ..., "sessions": [per target]}``."""
    import uvloop

    echo = echo or (lambda s: print(s, file=sys.stderr, flush=True))
    tty = opts.progress if opts.progress is not None else sys.stderr.isatty()
    raise_nofile()
    if opts.endpoints < 1:
        raise ValueError("endpoints must be >= 1")
    from router.pki import KEY_TYPES
    if opts.key_type not in KEY_TYPES:
        raise ValueError(f"key type {opts.key_type!r}: expected one of {', '.join(KEY_TYPES)}")
    if opts.workers < 0:
        raise ValueError("workers must be >= 0 (0: one per core)")
    if opts.duration <= 0 or opts.warmup < 0 or opts.drain <= 0 or opts.replay_cut <= 0:
        raise ValueError("duration, drain and replay_cut must be > 0, warmup >= 0")
    for sc in opts.scenarios:
        if sc not in SCENARIOS and sc not in NAMED_ONLY:
            raise ValueError(f"unknown scenario {sc!r}")
    if opts.topology not in ("direct", "chain"):
        raise ValueError(f"topology {opts.topology!r}: expected direct or chain")
    if opts.topology == "chain" and opts.target:
        raise ValueError("--topology chain starts its own two nodes: not with --target")
    if opts.target:
        host, sep, port = opts.target.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--target {opts.target!r}: expected HOST:PORT")
        if not opts.pki_dir:
            raise ValueError("--target needs --pki DIR (the CA: ca.crt and ca.key)")
    elif opts.pki_dir or opts.status_url:
        raise ValueError("--pki and --status-url describe an existing node: use them with "
                         "--target")
    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="router-perf-"))
    sessions: list[dict[str, Any]] = []
    nw = opts.workers or max(1, min(os.cpu_count() or 1, 8))
    try:
        t0 = time.monotonic()
        if opts.target:
            assert opts.pki_dir is not None             # checked above
            bpki = pki_from_ca(base, Path(opts.pki_dir), opts.endpoints, opts.key_type)
        else:
            bpki = make_pki(base, opts.endpoints, shared_key=True, key_type=opts.key_type)
        echo(f"certificates for {opts.endpoints} agents issued in {time.monotonic() - t0:.1f} s")
        kinds = ["target"] if opts.target else ["router"]
        againsts = (opts.against or "").split(",")
        if "icinga2" in againsts:
            kinds.append("icinga")
        if "floor" in againsts:
            kinds.append("floor")
        if opts.only_against and opts.against:
            kinds = kinds[1:]
        for kind in kinds:
            host = "127.0.0.1"
            if kind == "target":
                assert opts.target is not None          # kinds has "target" only then
                host, _, port = opts.target.rpartition(":")
                target: Target = ExternalTarget(host, int(port), opts.status_url)
            elif kind == "router" and opts.topology == "chain":
                from perf.chain import ChainTarget
                target = ChainTarget(base, bpki, opts.endpoints, opts.router_toml)
            elif kind == "router":
                target = RouterTarget(base, bpki, opts.endpoints, opts.router_toml)
            elif kind == "floor":
                from perf.floor import FloorTarget
                target = FloorTarget(base, bpki)
            else:
                target = IcingaTarget(base, bpki, opts.endpoints, "information")
                _scale_icinga_start(target, opts.endpoints)
            session = Session(target, bpki, opts, host, echo, tty)
            if hasattr(target, "make_tally"):           # the floor counts, not a parent
                session.tally = target.make_tally()
            sessions.append(uvloop.run(session.run()))
    finally:
        if opts.keep:
            echo(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    # uvloop's __all__ does not list __version__; its distribution's version is the same.
    from importlib.metadata import version as dist_version
    meta = {"benchmark": "router perf", **{k: v for k, v in asdict(opts).items()
                                            if k not in ("progress",)},
            "rate": opts.rate if opts.rate else "max",
            "workers": nw, "cpus": psutil.cpu_count(), "python": platform.python_version(),
            "uvloop": dist_version("uvloop"), "orjson": orjson.__version__,
            "total_run_s": time.monotonic() - started}
    result = {"meta": meta, "sessions": sessions}
    if opts.json_path:
        Path(opts.json_path).write_text(json.dumps(result, indent=2, default=str))
    return result


def _scale_icinga_start(target: IcingaTarget, n: int) -> None:
    """Icinga validates N hosts, services and zones before it listens: allow for that."""
    timeout = max(60.0, n / 25)
    orig = target.node.start
    # A deliberate per-instance override of a method, which mypy always reports.
    target.start = lambda: orig(timeout=timeout)  # type: ignore[method-assign]
