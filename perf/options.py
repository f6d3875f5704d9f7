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
    sndbuf: int = 65536
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
