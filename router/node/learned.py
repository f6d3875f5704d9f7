"""Learned host ownership on disk: ``DATA_DIR/objects/learned-hosts.json``.

With ``[objects] unknown = "learn"`` the first child zone that reports an unconfigured host
owns it (``router.routing.objects``). Kept only in memory, that ownership would go to
whichever agent reconnects first after a restart, so one enrolled agent could take over
another's host just by being quicker. This module keeps it on disk:

- the file is written atomically (temporary file, fsync, rename, fsync of the directory)
  with mode 0600 in a directory of mode 0700, at most once per ``SAVE_INTERVAL`` and only
  when something was learned or forgotten; writing runs in a thread, never on the loop;
- ``router objects forget HOST`` edits the same file under the same ``flock``; a running
  node notices that the file changed under it (its own writes are recognised by inode,
  size and mtime) and drops the hosts that disappeared from it;
- at start the node loads the file; entries whose zone is no longer configured, or that
  the configuration now places itself, are skipped and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from router.errors import RouterError
from router.node.periodic import PeriodicSave
from router.pki import atomic_write
from router.routing import ObjectZones

__all__ = ["LearnedHostsError", "LearnedHostsStore", "SAVE_INTERVAL", "forget_hosts",
           "learned_path", "read_learned"]

log = logging.getLogger("router.node")

#: Seconds between two checks for something to save (or a file changed by the CLI).
SAVE_INTERVAL = 1.0
FILE_NAME = "learned-hosts.json"
FORMAT_VERSION = 1

#: host -> {"zone": str, "learned_at": float}
Entries = dict[str, dict[str, Any]]
_StatKey = tuple[int, int, int] | None


class LearnedHostsError(RouterError):
    """The learned-hosts file cannot be read or written."""


def learned_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / "objects" / FILE_NAME


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive ``flock`` on ``path``'s lock file: the node and the CLI take turns."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)        # whatever the umask: host names are not public
    fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_learned(path: Path) -> Entries:
    """The entries of a learned-hosts file (empty when there is none)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise LearnedHostsError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise LearnedHostsError(f"{path}: not valid JSON ({exc}); move it away to start "
                                f"without learned hosts") from exc
    hosts = doc.get("hosts") if isinstance(doc, dict) else None
    if not isinstance(hosts, dict):
        raise LearnedHostsError(f"{path}: expected {{\"hosts\": {{...}}}}")
    out: Entries = {}
    for host, entry in hosts.items():
        if isinstance(entry, dict) and isinstance(entry.get("zone"), str):
            learned_at = entry.get("learned_at")
            out[host] = {"zone": entry["zone"],
                         "learned_at": learned_at if isinstance(learned_at, (int, float))
                         else 0.0}
    return out


def _write(path: Path, entries: Entries) -> None:
    """Atomic replace: a crash leaves the old file or the new one, never half of one."""
    data = orjson.dumps({"version": FORMAT_VERSION, "hosts": entries},
                        option=orjson.OPT_SORT_KEYS)
    atomic_write(path, data, 0o600, sync_dir=True)


def _stat_key(path: Path) -> _StatKey:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def forget_hosts(path: Path, hosts: list[str]) -> dict[str, str]:
    """Remove ``hosts`` from the file (the CLI); returns host -> zone of those removed."""
    with _locked(path):
        entries = read_learned(path)
        removed = {h: entries.pop(h)["zone"] for h in hosts if h in entries}
        if removed:
            _write(path, entries)
    return removed


class LearnedHostsStore:
    """Keeps ``objects``' learned hosts in ``path`` while the node runs."""

    def __init__(self, objects: ObjectZones, path: Path) -> None:
        self._objects = objects
        self.path = path
        #: When each learned host was first saved (shown by ``router objects list``).
        self._learned_at: dict[str, float] = {}
        self._saved_changes = objects.changes
        #: What we last wrote, and the file's identity right after (thread side only).
        self._written: Entries = {}
        self._stat: _StatKey = None
        self._saver = PeriodicSave(self.sync, SAVE_INTERVAL, f"learned hosts to {path}",
                                   (OSError, LearnedHostsError))
        self.saves = 0

    @property
    def objects(self) -> ObjectZones:
        return self._objects

    @objects.setter
    def objects(self, objects: ObjectZones) -> None:
        """A reload swapped the node's object zones: save them on the next tick."""
        self._objects = objects
        self._saved_changes = objects.changes - 1

    @classmethod
    def open(cls, objects: ObjectZones, data_dir: str) -> LearnedHostsStore:
        """Load the learned hosts of a previous run into ``objects``."""
        path = learned_path(data_dir)
        store = cls(objects, path)
        with _locked(path):
            entries = read_learned(path)
            store._stat = _stat_key(path)
        store._written = entries
        skipped = objects.load_learned({h: e["zone"] for h, e in entries.items()})
        for host, zone, why in skipped[:20]:
            log.warning("learned host %r (zone %s) from %s not restored: %s", host, zone,
                        path, why)
        if len(skipped) > 20:
            log.warning("... and %d more learned hosts not restored", len(skipped) - 20)
        store._learned_at = {h: e["learned_at"] for h, e in entries.items()}
        store._saved_changes = objects.changes if not skipped else objects.changes - 1
        log.warning("objects.unknown = \"learn\": a host no configuration places is owned by "
                    "the first child zone that reports it (%d learned hosts restored from %s; "
                    "at most %d per zone). Prefer [objects.hosts] or config sync.",
                    objects.learned, path, objects.max_learned_per_zone)
        return store

    def start(self) -> None:
        self._saver.start()

    async def sync(self) -> None:
        """Save what changed; take in what ``router objects forget`` removed meanwhile."""
        objects = self.objects
        snapshot: Entries | None = None
        changes = objects.changes
        if changes != self._saved_changes:
            now = time.time()
            learned_at = self._learned_at
            snapshot = {}
            for host, zone in objects.learned_hosts().items():
                snapshot[host] = {"zone": zone, "learned_at": learned_at.setdefault(host, now)}
        loop = asyncio.get_running_loop()
        removed = await loop.run_in_executor(None, self._sync_file, snapshot)
        self._saved_changes = changes
        if removed:
            dropped = objects.forget(removed)
            for host in dropped:
                self._learned_at.pop(host, None)
            log.info("learned hosts forgotten by the operator (%s): %s", self.path,
                     ", ".join(sorted(dropped)[:10]) + (" ..." if len(dropped) > 10 else ""))

    def _sync_file(self, snapshot: Entries | None) -> list[str]:
        """Thread side: under the lock, compare, drop what the CLI removed, write."""
        path = self.path
        with _locked(path):
            removed: list[str] = []
            current = _stat_key(path)
            if current != self._stat:
                on_disk = read_learned(path)
                removed = [h for h in self._written if h not in on_disk]
                self._written = on_disk
                self._stat = current
            if snapshot is None and not removed:
                return removed
            content = dict(self._written if snapshot is None else snapshot)
            for host in removed:
                content.pop(host, None)
            _write(path, content)
            self._written = content
            self._stat = _stat_key(path)
            self.saves += 1
            return removed

    async def close(self) -> None:
        """Stop the timer and save one last time."""
        await self._saver.close()
