"""Helpers for the exactly-once chain tests: real ``router serve`` processes in a chain
(agent -> satellite -> master, HA masters) and an agent that replays like Icinga's.

``ReplayingAgent`` plays an Icinga 2 agent's side of the replay-log contract, which is
what makes a satellite crash visible at all: every ``event::CheckResult`` it sends carries
a ``ts`` (strictly increasing) and stays in its log until the node confirms it with
``log::SetLogPosition``; after a reconnect it first sends again everything newer than the
last confirmed position (Icinga's ``ApiListener::ReplayLog``), then new results. It is
at-least-once by construction: whatever the node confirmed too late comes again.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import orjson

from tests.nodeutil import ClusterSpec, FakePeer, check_result, free_port
from tests.test_replay_kill9 import RouterProcess


class ReplayingAgent:
    """An agent with an in-memory replay log, confirmed by its parent node."""

    def __init__(self, name: str, port: int, pki: Any, server_name: str) -> None:
        self.name = name
        self.port = port
        self.pki = pki
        self.server_name = server_name
        #: (ts, params) of every result sent, oldest first.
        self.log: list[tuple[float, dict[str, Any]]] = []
        self.confirmed = 0.0
        self.peer: FakePeer | None = None
        self._seen = 0
        self._last_ts = 0.0
        self.replayed = 0

    def _stamp(self) -> float:
        ts = max(time.time(), self._last_ts + 1e-6)
        self._last_ts = ts
        return ts

    def _take_positions(self) -> None:
        """Apply the log::SetLogPosition messages received since the last look."""
        peer = self.peer
        if peer is None:
            return
        received = peer.received
        for message in received[self._seen:]:
            if message.get("method") == "log::SetLogPosition":
                position = float(message["params"]["log_position"])
                self.confirmed = max(self.confirmed, position)
        self._seen = len(received)

    async def connect(self) -> None:
        """Connect (again) and replay everything after the confirmed position."""
        self._take_positions()
        self.peer = await FakePeer.connect(self.port, self.pki, self.name,
                                           server_name=self.server_name)
        self._seen = 0
        for ts, params in self.log:
            if ts > self.confirmed:
                self._write(ts, params)
                self.replayed += 1
        await self.peer.writer.drain()

    def _write(self, ts: float, params: dict[str, Any]) -> None:
        assert self.peer is not None
        self.peer.writer.write(b"%d:%s," % (len(payload := orjson.dumps(
            {"jsonrpc": "2.0", "method": "event::CheckResult", "params": params,
             "ts": ts})), payload))

    def send_result(self, service: str, output: str) -> None:
        params = check_result(self.name, service, output)
        ts = self._stamp()
        self.log.append((ts, params))
        if self.peer is not None and not self.peer.closed:
            self._write(ts, params)

    async def drain(self) -> None:
        if self.peer is not None and not self.peer.closed:
            with contextlib.suppress(ConnectionError, OSError):
                await self.peer.writer.drain()

    async def close(self) -> None:
        self._take_positions()
        if self.peer is not None:
            await self.peer.close()
            self.peer = None

    def unconfirmed(self) -> int:
        self._take_positions()
        return sum(1 for ts, _ in self.log if ts > self.confirmed)


class ChainProcesses:
    """Real ``router serve`` processes for the zones of ``spec``, one per endpoint.

    Every node's status listener gets a fixed port, so a restarted process (same config,
    same data dir) is reachable at the same address.
    """

    def __init__(self, spec: ClusterSpec, names: list[str],
                 node_extra: dict[str, str] | None = None) -> None:
        self.spec = spec
        self.processes: dict[str, RouterProcess] = {}
        for name in names:
            status_port = free_port()
            text = spec.toml(name, node_extra=(node_extra or {}).get(name, ""))
            text = text.replace('log_level = "debug"', 'log_level = "info"')
            text = text.replace('status_listen = "127.0.0.1:0"',
                                f'status_listen = "127.0.0.1:{status_port}"')
            (spec.directory / name).mkdir(parents=True, exist_ok=True)
            config = spec.directory / f"{name}.toml"
            config.write_text(text)
            self.processes[name] = RouterProcess(config, status_port,
                                                 spec.directory / f"{name}.out")

    def __getitem__(self, name: str) -> RouterProcess:
        return self.processes[name]

    def start_all(self) -> None:
        for process in self.processes.values():
            process.start()

    def stop_all(self) -> dict[str, int | None]:
        return {name: process.terminate() for name, process in self.processes.items()}

    def tails(self) -> str:
        return "\n".join(f"--- {name}\n{p.tail()}" for name, p in self.processes.items())


__all__ = ["ChainProcesses", "ReplayingAgent"]
