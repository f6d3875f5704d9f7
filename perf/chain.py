"""``router perf --topology chain``: agents -> our satellite -> our master, two real nodes.

Both are ``python -m router serve`` processes. The satellite (``sat1``, zone
``satellite``) is the one the agents dial, as in the direct topology; it dials the master
(``master``, zone ``master``). The emulated parent of the direct topology becomes
``master2``, the master's HA peer in zone ``master``: the master relays every result it
processes to its zone peer, as an HA master does, so what ``master2`` counts is what went
all the way through the master. ``master2`` is also where commands start down the chain
(``event::ExecuteCommand`` for every agent: master -> satellite -> agent; the ``down``
scenario), which a zone peer may send (EXEC: the sender is of our zone).

The node CPU of a chain session is both processes'; :func:`perf.scale.cpu_split` reports
it per node.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from perf.benchpki import BenchPKI
from perf.targets import RouterTarget
from perf.tomlconf import dump_toml
from perf.wire import MASTER, SAT

__all__ = ["MASTER2", "ChainTarget"]

#: the master's zone peer, emulated by the tool (the parent of the direct topology)
MASTER2 = "master2"


class _MasterTarget(RouterTarget):
    """Our router as ``master``: zone ``master`` (with the emulated peer ``master2``),
    ``satellite`` below it, the agents' zones below that."""

    name = "master"

    def __init__(self, base: Path, bench_pki: BenchPKI, agents: int, extra_toml: str) -> None:
        super().__init__(base / "master", bench_pki, agents, extra_toml)
        doc = tomllib.loads(self.config_path.read_text())
        doc["node"]["name"] = MASTER
        doc["tls"]["cert"] = str(bench_pki.cert(MASTER))
        doc["tls"]["key"] = str(bench_pki.key(MASTER))
        for zone in doc["zones"]:
            if zone["name"] == MASTER:
                zone["endpoints"] = [MASTER, MASTER2]
        doc["endpoints"].append({"name": MASTER2})
        self.config_path.write_text(dump_toml(doc))


class ChainTarget(RouterTarget):
    """The satellite under test, with its master started before it and stopped after it.

    ``root_pid`` is the satellite's (the agents' node); ``other_pids`` adds the master's
    for the node CPU and RSS; ``parent_dial`` tells the session to connect its emulated
    parent as ``master2`` to the master instead of as ``master`` to the satellite.
    """

    name = "chain"

    def __init__(self, base: Path, bench_pki: BenchPKI, agents: int,
                 extra_toml: str = "") -> None:
        super().__init__(base, bench_pki, agents, extra_toml)
        self.master = _MasterTarget(base, bench_pki, agents, extra_toml)
        doc = tomllib.loads(self.config_path.read_text())
        for ep in doc["endpoints"]:
            if ep["name"] == MASTER:
                ep["host"] = "127.0.0.1"
                ep["port"] = self.master.port
        self.config_path.write_text(dump_toml(doc))
        _issue(bench_pki, MASTER2)
        #: (our endpoint name, the node's name for SNI, port) of the emulated parent
        self.parent_dial = (MASTER2, MASTER, self.master.port)

    def start(self) -> None:
        self.master.start()
        super().start()

    def stop(self) -> None:
        """Both nodes (``storm`` restarts the whole chain)."""
        super().stop()
        self.master.stop()

    def other_pids(self) -> list[int]:
        pid = self.master.root_pid()
        return [pid] if pid is not None else []

    def parts(self) -> dict[int, str]:
        """pid -> node name, for the CPU per node."""
        out = {}
        for name, target in ((SAT, self), (MASTER, self.master)):
            pid = target.root_pid()
            if pid is not None:
                out[pid] = name
        return out

    def version(self) -> str:
        return super().version() + " (chain: satellite and master)"


def _issue(bench_pki: BenchPKI, name: str) -> None:
    """A certificate for ``name`` from the benchmark CA (the CA key is in ``ca_dir``)."""
    if bench_pki.cert(name).exists():
        return
    from router import pki
    ca_cert, ca_key = pki.load_ca(bench_pki.ca_dir)
    cert, key = pki.issue_certificate(ca_cert, ca_key, name, key_type="ec")
    pki.write_private_key(bench_pki.key(name), key)
    pki.write_certificate(bench_pki.cert(name), cert)
