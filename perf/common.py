"""What the relay benchmarks share (``bench_relay.py``, ``bench_handshake.py``,
``router perf``), under one name.

The pieces live in their own modules; this one re-exports them, so ``from perf.common
import ...`` keeps working:

* :mod:`perf.wire`: the topology's names (``SAT``, ``MASTER``, ``agent_name``), netstring
  frames, ``HELLO``, the CheckResult template and its stamping, the frame scanner, an
  agent's TLS client context;
* :mod:`perf.benchpki`: the benchmark PKI (:class:`BenchPKI`, :func:`make_pki`);
* :mod:`perf.targets`: the node under test (:class:`RouterTarget`, :class:`IcingaTarget`);
* :mod:`perf.tomlconf`: TOML merge and dump for the generated router configuration;
* :mod:`perf.measure`: CPU, RSS and machine load of process trees, ports, file limits;
* :mod:`perf.workers`: the pipe to the load processes, both ends;
* :mod:`perf.relay`: ``bench_relay.py``'s agents, their load process and its parent.

New code imports from those modules directly.
"""

from __future__ import annotations

from perf.benchpki import BenchPKI, make_pki, write_agent_chain
from perf.measure import (
    GEN_SATURATED,
    all_cpu,
    cpu_seconds,
    free_port,
    machine_busy,
    process_tree,
    raise_nofile,
    rss_bytes,
)
from perf.relay import SAMPLE_EVERY, Agent, ParentProtocol, load_worker
from perf.targets import REPO, IcingaTarget, RouterTarget, Target
from perf.tomlconf import dump_toml, merge_toml
from perf.wire import (
    CHECK_RESULT,
    HELLO,
    MASTER,
    PACE_TICK,
    SAT,
    SERVICE,
    agent_name,
    client_context,
    log_position_frame,
    message_template,
    netstring,
    scan_frames,
    stamped_frames,
)
from perf.workers import close_agents, pipe_commands, recv_from, stop_workers

__all__ = [
    "CHECK_RESULT",
    "GEN_SATURATED",
    "HELLO",
    "MASTER",
    "PACE_TICK",
    "REPO",
    "SAMPLE_EVERY",
    "SAT",
    "SERVICE",
    "Agent",
    "BenchPKI",
    "IcingaTarget",
    "ParentProtocol",
    "RouterTarget",
    "Target",
    "agent_name",
    "all_cpu",
    "client_context",
    "close_agents",
    "cpu_seconds",
    "dump_toml",
    "free_port",
    "load_worker",
    "log_position_frame",
    "machine_busy",
    "make_pki",
    "merge_toml",
    "message_template",
    "netstring",
    "pipe_commands",
    "process_tree",
    "raise_nofile",
    "recv_from",
    "rss_bytes",
    "scan_frames",
    "stamped_frames",
    "stop_workers",
    "write_agent_chain",
]
