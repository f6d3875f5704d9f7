"""Objects a parent creates and deletes at runtime: ``DATA_DIR/objects/runtime-objects.json``.

A master's REST API (``PUT /v1/objects/hosts/NAME``, the Director's and most automation's
way to add hosts) creates objects at runtime; Icinga sends them down as
``config::UpdateObject`` (with the object's ``zone``), their deletion as
``config::DeleteObject`` (without one); only the deletion is logged for replay. An Icinga
satellite creates each such object itself (its ``_api`` package), so it then knows the
host's zone, routes the deletion there, and sends a child that connects later every
runtime object its zone may see (``ApiListener::SendRuntimeConfigObjects``). Relaying
them without keeping them, our satellite refused every result of a host created this way
as an unknown object, never passed its deletion on, and an agent that was offline when it
was created never got it (found with a real Icinga master and agent). This module keeps
what a parent sent:

- every accepted ``config::UpdateObject`` is kept by (type, name) with its zone and its
  parameters (the newest ``version`` wins, as in Icinga), up to ``MAX_OBJECTS``; a
  ``Host`` is placed in its zone like a configured host (``ObjectZones.set_runtime``), so
  its agent's results, next-check and the like are routed; any object's zone is where its
  ``config::DeleteObject`` goes;
- a ``config::DeleteObject`` forgets it, after it was routed to the recorded zone;
- an endpoint of our zone or a zone below that connects gets, after its zones'
  configuration, every kept object whose zone it may see (Icinga's ``CanAccessObject``:
  its own zone, a zone below, a global zone), unlogged, as Icinga sends them;
- the file is written atomically, mode 0600, at most once per ``SAVE_INTERVAL`` and only
  after a change, in a thread; read back at start, before any connection, so results of
  such hosts are routed while the parent is still unreachable.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from router.node.periodic import PeriodicSave
from router.pki import atomic_write
from router.protocol import jsonrpc, netstring
from router.routing import ObjectZones, Topology

if TYPE_CHECKING:  # pragma: no cover
    from router.node.stats import Connection

__all__ = ["DELETE", "MAX_OBJECTS", "UPDATE", "RuntimeObjects"]

log = logging.getLogger("router.node")

UPDATE = "config::UpdateObject"
DELETE = "config::DeleteObject"
#: Objects kept at most (each up to ``limits.max_message_bytes``, usually a few KB); more
#: are relayed but not kept (counted, logged).
MAX_OBJECTS = 50_000
SAVE_INTERVAL = 2.0
#: Frames queued at a time for a peer that just connected, before waiting for its queue.
SEND_BATCH = 256

_Key = tuple[str, str]


class RuntimeHost(Protocol):
    """What sending the kept objects to a new session needs from the node."""

    @property
    def connections(self) -> dict[str, Connection]: ...

    @property
    def topology(self) -> Topology: ...

    def wait_drained(self, conn: Connection) -> asyncio.Future[None]: ...


def runtime_path(data_dir: str) -> Path:
    return Path(data_dir) / "objects" / "runtime-objects.json"


def _version(params: dict[str, Any]) -> float:
    v = params.get("version")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0.0


class RuntimeObjects:
    """The runtime objects our parent created, kept for routing, deletion and new children."""

    def __init__(self, objects: ObjectZones, path: Path | None,
                 max_objects: int = MAX_OBJECTS) -> None:
        self.objects = objects
        self.path = path
        self.max_objects = max_objects
        #: (type, name) -> (zone, the UpdateObject's parameters)
        self._entries: dict[_Key, tuple[str, dict[str, Any]]] = {}
        #: zone -> its kept objects: a connecting agent's share without a scan of all
        self._by_zone: dict[str, set[_Key]] = {}
        #: (type, name) -> the entry as the file holds it, encoded once when it came (a
        #: save encoding 50 000 entries held the GIL, and the loop, for 55-175 ms; review)
        self._encoded: dict[_Key, bytes] = {}
        self._frames: dict[_Key, bytes] = {}
        self._senders: set[asyncio.Task[None]] = set()
        self.changes = 0
        self._saved_changes = 0
        self.not_kept = 0
        self.saves = 0
        self._saver = PeriodicSave(self.save, SAVE_INTERVAL, f"runtime objects to {path}")

    # ------------------------------------------------------------------ messages

    def observe(self, method: str, params: dict[str, Any] | None, zone: str | None) -> None:
        """An accepted ``config::UpdateObject`` / ``DeleteObject`` from our parent (or HA
        peer), routed towards ``zone``."""
        if params is None:
            return
        type_, name = params.get("type"), params.get("name")
        if not isinstance(type_, str) or not isinstance(name, str):
            return
        key = (type_, name)
        if method == DELETE:
            if self._forget(key):
                self.changes += 1
            self.objects.drop_runtime(type_, name)
            return
        if zone is None:
            return
        old = self._entries.get(key)
        if old is not None and _version(old[1]) > _version(params):
            return                      # older than what we have: Icinga ignores it too
        if old is None and len(self._entries) >= self.max_objects:
            self.not_kept += 1
            if self.not_kept == 1 or self.not_kept % 1000 == 0:
                log.warning("runtime objects: %d kept already (the most); %s %r in zone %s "
                            "is relayed but not kept (%d so far)", len(self._entries), type_,
                            name, zone, self.not_kept)
            return
        self._keep(key, zone, dict(params))
        self.objects.set_runtime(type_, name, zone)
        self.changes += 1

    def _keep(self, key: _Key, zone: str, params: dict[str, Any]) -> None:
        self._forget(key)
        self._entries[key] = (zone, params)
        self._by_zone.setdefault(zone, set()).add(key)
        self._encoded[key] = orjson.dumps({"zone": zone, "params": params})

    def _forget(self, key: _Key) -> bool:
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        keys = self._by_zone.get(entry[0])
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_zone[entry[0]]
        self._encoded.pop(key, None)
        self._frames.pop(key, None)
        return True

    def for_endpoint(self, topology: Topology, endpoint: str) -> list[bytes]:
        """The frames of every kept object ``endpoint``'s zone may see (Icinga's
        ``SendRuntimeConfigObjects`` on connect): its zone's, the zones' below it and the
        global zones' (``CanAccessObject``), looked up by zone."""
        zone = topology.zone_of(endpoint)
        if zone is None:
            return []
        frames = []
        for name in _visible_zones(topology, zone):
            for key in sorted(self._by_zone.get(name, ())):
                frame = self._frames.get(key)
                if frame is None:
                    frame = self._frames[key] = netstring.encode(
                        jsonrpc.notification(UPDATE, self._entries[key][1]))
                frames.append(frame)
        return frames

    def send_on_connect(self, host: RuntimeHost, conn: Connection, endpoint: str) -> None:
        """Queue what ``endpoint`` may see on its new session: a batch now (before the
        replay starts, as Icinga sends them), the rest as its queue drains. All at once, an
        HA partner's share (every object) went over the queue's hard limit and the
        partner was cut off as a slow consumer at the next message, again at every
        reconnect (review)."""
        frames = self.for_endpoint(host.topology, endpoint)
        if not frames or conn.queue is None:
            return
        self._queue_batch(conn, frames[:SEND_BATCH])
        if len(frames) > SEND_BATCH:
            task = asyncio.get_running_loop().create_task(
                self._send_rest(host, conn, endpoint, frames[SEND_BATCH:]))
            self._senders.add(task)
            task.add_done_callback(self._senders.discard)

    @staticmethod
    def _queue_batch(conn: Connection, frames: list[bytes]) -> None:
        queue = conn.queue
        assert queue is not None
        for frame in frames:
            queue.put(frame, UPDATE)
        conn.schedule_flush()

    async def _send_rest(self, host: RuntimeHost, conn: Connection, endpoint: str,
                         frames: list[bytes]) -> None:
        for start in range(0, len(frames), SEND_BATCH):
            while conn.queue is not None and conn.queue.congested and conn.state == "open":
                await host.wait_drained(conn)
            if conn.state != "open" or host.connections.get(endpoint) is not conn:
                return                      # gone: its next session gets them all again
            self._queue_batch(conn, frames[start:start + SEND_BATCH])

    def attach(self, objects: ObjectZones) -> list[_Key]:
        """Place the kept objects in ``objects`` (at start, and in a reload's new table);
        those whose zone is gone are dropped and returned."""
        self.objects = objects
        gone = []
        for (type_, name), (zone, _) in list(self._entries.items()):
            if not objects.set_runtime(type_, name, zone):
                self._forget((type_, name))
                gone.append((type_, name))
        if gone:
            self.changes += 1
        return gone

    def __len__(self) -> int:
        return len(self._entries)

    # ------------------------------------------------------------------ the file

    @classmethod
    def open(cls, objects: ObjectZones, data_dir: str) -> RuntimeObjects:
        """The objects kept by a previous run (none without the file; a damaged file is
        logged and started over: the parent sends them again when we connect)."""
        store = cls(objects, runtime_path(data_dir))
        assert store.path is not None
        skipped = 0
        try:
            raw = orjson.loads(store.path.read_bytes())
            for entry in raw if isinstance(raw, list) else ():
                zone = entry.get("zone") if isinstance(entry, dict) else None
                params = entry.get("params") if isinstance(entry, dict) else None
                if isinstance(zone, str) and isinstance(params, dict) \
                        and isinstance(params.get("type"), str) \
                        and isinstance(params.get("name"), str):
                    store._keep((params["type"], params["name"]), zone, params)
                else:
                    skipped += 1        # a damaged entry must not stop the start (review)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.error("runtime objects: cannot read %s (%s); starting without them (the "
                      "parent sends them again when it connects)", store.path, exc)
        if skipped:
            log.error("runtime objects: %d damaged entries in %s skipped", skipped,
                      store.path)
        gone = store.attach(objects)
        for type_, name in gone[:20]:
            log.warning("runtime object %s %r from %s not restored: its zone is not "
                        "configured any more", type_, name, store.path)
        store._saved_changes = store.changes if not gone else store.changes - 1
        if store._entries:
            log.info("runtime objects: %d restored from %s", len(store._entries), store.path)
        return store

    def start(self) -> None:
        self._saver.start()

    async def save(self) -> None:
        """Write the file if something changed since the last write (in a thread)."""
        changes = self.changes
        if changes == self._saved_changes or self.path is None:
            return
        snapshot = list(self._encoded.values())        # encoded when they came
        await asyncio.get_running_loop().run_in_executor(None, self._write, snapshot)
        self._saved_changes = changes
        self.saves += 1

    def _write(self, snapshot: list[bytes]) -> None:
        """Thread side: the JSON array, written in chunks (a join of the whole held the
        GIL as long), to a temporary file, fsynced and renamed over the old one."""
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(self.path, _json_array(snapshot), 0o600, sync_dir=True)

    async def close(self) -> None:
        """Stop the senders and the timer, and save one last time."""
        for sender in list(self._senders):
            sender.cancel()
        await self._saver.close()


def _visible_zones(topology: Topology, zone: str) -> list[str]:
    """``zone``, the zones below it and the global zones."""
    out, todo = [], [zone]
    while todo:
        name = todo.pop()
        out.append(name)
        todo.extend(topology.children(name))
    return out + [g for g in topology.global_zones if g != zone]


def _json_array(entries: list[bytes], chunk: int = 1000) -> Iterable[bytes]:
    yield b"["
    for start in range(0, len(entries), chunk):
        if start:
            yield b","
        yield b",".join(entries[start:start + chunk])
    yield b"]"

