"""The options of ``router perf`` (:class:`Options`) and its scenarios."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["NAMED_ONLY", "SCENARIOS", "Options"]

#: order of --scenario all: max leaves a backlog in a slow node, storm restarts the node
SCENARIOS = ("steady", "churn", "replay", "max", "down", "stormload", "agentstorm", "storm",
             "soak")
#: scenarios run only when named (not by ``all``): perf/bench_floods.py's floods
NAMED_ONLY = ("floods",)


@dataclass
class Options:
    endpoints: int = 5000
    rate: float | None = 5000.0          # results/s in total; None = max (flat out)
    duration: float = 10.0
    warmup: float = 3.0
    payload_bytes: int = 1024
    scenarios: tuple[str, ...] = ("steady",)
    target: str | None = None            # HOST:PORT of an existing node
    pki_dir: str | None = None           # its CA (ca.crt + ca.key) for --target
    status_url: str | None = None        # our router's status URL for --target (optional)
    against: str | None = None           # "icinga2", "floor" or "icinga2,floor": same run
    topology: str = "direct"             # "chain": agents -> satellite -> master (ours)
    py_spy: str | None = None            # DIR: a py-spy flame graph per node and load window
    workers: int = 0                     # load processes (0: one per core)
    batch: int = 32
    sndbuf: int = 0                      # SO_SNDBUF of each agent socket; 0: agent_sndbuf(N)
    replay_cut: float = 5.0
    churn_fraction: float = 0.1
    connect_timeout: float = 0.0         # 0: scaled with N
    drain: float = 30.0
    json_path: str | None = None
    keep: bool = False
    router_toml: str = ""                # appended to the demo router's configuration
    key_type: str = "ec"                 # every key: ec, rsa (2048) or rsa4096 (Icinga's)
    progress: bool | None = None         # None: when stderr is a terminal
    soak_interval: float = 60.0          # soak: seconds per row of its table (perf/soak.py)
    only_against: bool = False           # only the --against session (no router session)
    flood_repeat: int = 2                # floods: quiet/flood window pairs per flood kind
    pin_node_cpu: int | None = None      # floods: the node on this CPU, the rest on the others
    flooder_nice: int = 19               # floods: the flooder's nice value (0: as the agents)
    flood_decoy: bool = False            # floods: also aim each flood at perf.decoy
    flood_only: tuple[str, ...] = ()     # floods: these kinds only (empty: all)


#: Kernel memory the emulated agents' send buffers may take together (see agent_sndbuf).
AGENT_SNDBUF_BUDGET = 640 * 1024 * 1024


def agent_sndbuf(endpoints: int) -> int:
    """SO_SNDBUF of each emulated agent socket: 64 KiB up to 5 000 agents, less beyond.

    The emulated agents share the node's kernel, where real ones would not: their send
    buffers (the kernel doubles SO_SNDBUF) and the node's receive buffers together make
    the host's TCP memory. At 10 000 agents flat out with 64 KiB each that went past
    ``tcp_mem``'s pressure mark (1.5 GB on this machine): the kernel then drops packets
    on every connection, and both the direct node and the chain fell to a few hundred
    results/s for seconds at a time (issue 22). Bounded to ``AGENT_SNDBUF_BUDGET``
    together, in whole KiB."""
    per_agent = AGENT_SNDBUF_BUDGET // (2 * max(1, endpoints))
    return max(4096, min(65536, per_agent // 1024 * 1024))

