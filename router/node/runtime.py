"""Objects a parent creates and deletes at runtime: ``DATA_DIR/objects/runtime-objects.json``.

A master's REST API (``PUT /v1/objects/hosts/NAME``, the Director's and most automation's
way to add hosts) creates objects at runtime; Icinga sends them down as
``config::UpdateObject`` (with the object's ``zone``), their deletion as
``config::DeleteObject`` (without one), and neither is logged for replay. An Icinga
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
import contextlib
import logging
from pathlib import Path
from typing import Any

import orjson

from router.pki import atomic_write
from router.protocol import jsonrpc, netstring
from router.routing import ObjectZones, Topology

__all__ = ["MAX_OBJECTS", "RuntimeObjects", "UPDATE", "DELETE"]

log = logging.getLogger("router.node")

UPDATE = "config::UpdateObject"
DELETE = "config::DeleteObject"
#: Objects kept at most (each up to ``limits.max_message_bytes``, usually a few KB); more
#: are relayed but not kept (counted, logged).
MAX_OBJECTS = 50_000
SAVE_INTERVAL = 2.0

_Key = tuple[str, str]


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
        self.changes = 0
        self._saved_changes = 0
        self.not_kept = 0
        self.saves = 0
        self._task: asyncio.Task[None] | None = None

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
            if self._entries.pop(key, None) is not None:
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
        self._entries[key] = (zone, dict(params))
        self.objects.set_runtime(type_, name, zone)
        self.changes += 1

    def for_endpoint(self, topology: Topology, endpoint: str) -> list[bytes]:
        """The frames of every kept object ``endpoint``'s zone may see (Icinga's
        ``SendRuntimeConfigObjects`` on connect)."""
        zone = topology.zone_of(endpoint)
        if zone is None:
            return []
        return [netstring.encode(jsonrpc.notification(UPDATE, params))
                for obj_zone, params in self._entries.values()
                if topology.can_access(zone, obj_zone)]

    def attach(self, objects: ObjectZones) -> list[_Key]:
        """Place the kept objects in ``objects`` (at start, and in a reload's new table);
        those whose zone is gone are dropped and returned."""
        self.objects = objects
        gone = []
        for (type_, name), (zone, _) in list(self._entries.items()):
            if not objects.set_runtime(type_, name, zone):
                del self._entries[(type_, name)]
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
        try:
            raw = orjson.loads(store.path.read_bytes())
            for entry in raw if isinstance(raw, list) else ():
                zone, params = entry.get("zone"), entry.get("params")
                if isinstance(zone, str) and isinstance(params, dict) \
                        and isinstance(params.get("type"), str) \
                        and isinstance(params.get("name"), str):
                    store._entries[(params["type"], params["name"])] = (zone, params)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.error("runtime objects: cannot read %s (%s); starting without them (the "
                      "parent sends them again when it connects)", store.path, exc)
        gone = store.attach(objects)
        for type_, name in gone[:20]:
            log.warning("runtime object %s %r from %s not restored: its zone is not "
                        "configured any more", type_, name, store.path)
        store._saved_changes = store.changes if not gone else store.changes - 1
        if store._entries:
            log.info("runtime objects: %d restored from %s", len(store._entries), store.path)
        return store

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(SAVE_INTERVAL)
            try:
                await self.save()
            except OSError as exc:
                log.error("cannot save runtime objects to %s: %s", self.path, exc)

    async def save(self) -> None:
        """Write the file if something changed since the last write (in a thread)."""
        changes = self.changes
        if changes == self._saved_changes or self.path is None:
            return
        snapshot = [{"zone": zone, "params": params}
                    for zone, params in self._entries.values()]
        await asyncio.get_running_loop().run_in_executor(None, self._write, snapshot)
        self._saved_changes = changes
        self.saves += 1

    def _write(self, snapshot: list[dict[str, Any]]) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(self.path, orjson.dumps(snapshot), 0o600)

    async def close(self) -> None:
        """Stop the timer and save one last time."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await self.save()
        except OSError as exc:
            log.error("cannot save runtime objects to %s: %s", self.path, exc)
