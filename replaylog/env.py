"""The replay log's LMDB environment: opening, the writer lock, map growth, the fork guard.

``EnvBase`` is the bottom layer of ``replaylog.store.ReplayStore``. It owns the
``lmdb.Environment`` and what concerns the files rather than the records: creating the
directory, the ``flock`` that lets one process write (``acquire_lock``), telling damaged
files (``CORRUPTION``) from full, busy or misused ones, the fork guard (``_check``),
short read transactions that wait for a map resize (``_read``, behind the ``Gate``),
growing the map and closing. ``ReplayStore.__init__`` sets the attributes declared here.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self, TypeVar

import lmdb

from . import keys as K
from .errors import InvalidState, ReplayLogBusy, ReplayLogCorrupt, ReplayLogError
from .lmdbfile import CORRUPTION, describe, open_checked, problem_before_open

log = logging.getLogger("router.replaylog")

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

DEFAULT_MAP_SIZE = 256 * MiB
#: Name of the file whose ``flock`` marks the one process allowed to write.
LOCK_FILE = "writer.lock"
#: Disk space set aside beside ``data.mdb`` (``DISK_RESERVE_FILE``) for the one commit a
#: full disk would otherwise forbid: the eviction that frees room. LMDB copies every page
#: it changes, and a page freed by a commit is reused only two commits later, so deleting
#: records on a disk with no free block fails like the append did, and the log would
#: refuse every write from then on. 256 KiB is 64 pages: a delete touches a handful.
DISK_RESERVE_BYTES = 256 * KiB
DISK_RESERVE_FILE = "disk.reserve"

_T = TypeVar("_T")

#: What decoding a damaged key or value raises (``struct.error`` is no ``ValueError``).
DAMAGED_ENTRY = (struct.error, UnicodeError)


def acquire_lock(path: Path) -> int:
    """Take the single-writer lock of the log at ``path`` (released by closing the fd)."""
    lock_path = path / LOCK_FILE
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError as e:
        raise ReplayLogError(f"replay log lock {lock_path}: {e.strerror}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise ReplayLogBusy(f"replay log {path} is open for writing elsewhere "
                                "(another router process, or another store here)") from e
        raise ReplayLogError(f"replay log lock {lock_path}: {e.strerror}") from e
    return fd


class Gate:
    """Shared (read transactions) / exclusive (map resize, close), writer-preferring."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._exclusive = False
        self._waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            try:
                while self._exclusive or self._readers:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class EnvBase:
    """The LMDB environment of a ``ReplayStore``: the bottom of its layers.

    Names with a leading underscore here and in the layers above (``state``,
    ``retention``, ``append``, ``positions``, ``read``) are shared between those layers,
    not with callers of the store.
    """

    path: Path
    readonly: bool
    sync_commits: bool
    max_map_size: int
    map_grown: int                      # MapFullError resolved by growing the map
    disk_reserve_used: int              # times the disk reserve was released to evict
    _pid: int                           # the process that opened it (the fork guard)
    _closed: bool
    _write_lock: threading.RLock        # serialises the write methods
    _gate: Gate                         # read transactions vs map resize and close
    _lock_fd: int | None                # the writer lock (None: read-only, or closed)
    _env: lmdb.Environment | None
    _warned: set[str]                   # keys of _warn_once

    # -- opening and closing -----------------------------------------------------------

    def _create_dir(self) -> None:
        try:
            self.path.mkdir(mode=0o750, parents=True, exist_ok=True)
        except OSError as e:
            raise ReplayLogError(f"replay log directory {self.path}: {e.strerror}") from e
        if not self.path.is_dir():
            raise ReplayLogError(f"replay log path {self.path} is not a directory")

    def _open_env(self, map_size: int) -> None:
        data = self.path / "data.mdb"
        if self.readonly and not data.exists():
            raise ReplayLogError(f"no replay log at {self.path}")
        try:
            problem = problem_before_open(data)
        except OSError as e:
            raise ReplayLogError(f"replay log {data}: {e.strerror}") from e
        if problem is not None:
            raise ReplayLogCorrupt(self.path, problem)
        try:
            opened, problem = open_checked(self.path, lambda: lmdb.open(
                str(self.path), map_size=map_size, subdir=True, readonly=self.readonly,
                sync=self.sync_commits, metasync=self.sync_commits, max_dbs=K.MAX_DBS,
                mode=0o640, create=not self.readonly, max_spare_txns=0, lock=True))
        except CORRUPTION as e:
            raise ReplayLogCorrupt(self.path, describe(e)) from e
        except lmdb.Error as e:
            raise ReplayLogError(f"cannot open replay log {self.path}: {describe(e)}") from e
        if opened is None:
            raise ReplayLogCorrupt(self.path, problem or "unusable")
        self._env = env = opened
        self._psize = env.stat()["psize"]
        self._map_size = env.info()["map_size"]
        if not self.readonly:
            stale = env.reader_check()  # reader slots of killed processes
            if stale:
                log.info("replay log %s: cleared %d stale reader slot(s)", self.path, stale)
            self._reserve_disk()

    def _reserve_disk(self) -> None:
        """Allocate ``DISK_RESERVE_FILE`` (best effort: a full disk leaves it smaller)."""
        reserve = self.path / DISK_RESERVE_FILE
        try:
            fd = os.open(reserve, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as e:
            log.warning("replay log %s: no disk reserve (%s): a full disk may stop the "
                        "log until space is freed", self.path, e.strerror)
            return
        try:
            os.posix_fallocate(fd, 0, DISK_RESERVE_BYTES)
        except OSError as e:
            log.warning("replay log %s: could not reserve %d bytes of disk (%s): a full "
                        "disk may stop the log until space is freed", self.path,
                        DISK_RESERVE_BYTES, e.strerror)
        finally:
            os.close(fd)

    def _release_disk_reserve(self) -> bool:
        """Delete the reserve so one commit can evict; False when there is none left."""
        try:
            (self.path / DISK_RESERVE_FILE).unlink()
        except FileNotFoundError:
            return False
        except OSError as e:
            log.error("replay log %s: cannot release the disk reserve: %s", self.path,
                      e.strerror)
            return False
        self.disk_reserve_used += 1
        log.warning("replay log %s: disk full and no page free to evict with: released "
                    "the %d-byte disk reserve (it is set aside again at the next start)",
                    self.path, DISK_RESERVE_BYTES)
        return True

    def _release(self) -> None:
        if self._env is not None:
            try:
                self._env.close()
            except lmdb.Error:
                pass
            self._env = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- housekeeping ------------------------------------------------------------------

    def _check(self, write: bool = False) -> lmdb.Environment:
        if self._closed or self._env is None:
            raise InvalidState("replay log store is closed")
        if os.getpid() != self._pid:
            raise InvalidState(f"replay log store opened in process {self._pid} used in "
                               f"process {os.getpid()}: open it after fork()")
        if write and self.readonly:
            raise InvalidState("replay log store is open read-only")
        return self._env

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Sync (when commits are not synced) and close. Idempotent."""
        with self._write_lock:
            if self._closed:
                return
            if os.getpid() != self._pid:
                # Never touch an inherited environment; just forget it.
                self._closed = True
                return
            with self._gate.exclusive():
                env = self._env
                if env is not None and not self.readonly and not self.sync_commits:
                    try:
                        env.sync(True)
                    except lmdb.Error as e:
                        log.error("replay log %s: final sync failed: %s", self.path, e)
                self._closed = True
                self._release()

    @property
    def closed(self) -> bool:
        return self._closed

    def sync(self) -> None:
        """Force the OS to write committed pages to disk (useful with ``sync=False``)."""
        env = self._check(write=True)
        with self._write_lock:
            env.sync(True)

    @property
    def map_size(self) -> int:
        return self._map_size

    def _warn_once(self, key: str, msg: str, *args: object, level: int = logging.WARNING
                   ) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.log(level, msg, *args)

    # -- read transactions and the map -------------------------------------------------

    def _read(self, fn: Callable[[lmdb.Transaction], _T]) -> _T:
        """Run ``fn`` in a short read transaction (``buffers=True``), any thread."""
        env = self._check()
        for _ in range(3):
            try:
                with self._gate.shared(), env.begin(buffers=True) as txn:
                    return fn(txn)
            except lmdb.MapResizedError:
                # Another process grew the map (we are a read-only tool): adopt it.
                with self._gate.exclusive():
                    env.set_mapsize(0)
                    self._map_size = env.info()["map_size"]
            except CORRUPTION as e:
                raise ReplayLogCorrupt(self.path, describe(e)) from e
            except DAMAGED_ENTRY as e:
                # A key or value of the wrong size or a name that is not UTF-8: the open
                # checks only the first and last records, the rest are found when read.
                raise ReplayLogCorrupt(self.path, f"damaged entry: {describe(e)}") from e
        raise ReplayLogError(f"replay log {self.path}: the map keeps being resized")

    def _resize(self, new_size: int) -> None:
        env = self._env
        assert env is not None
        with self._gate.exclusive():
            env.set_mapsize(new_size)
            self._map_size = env.info()["map_size"]

    def _grow(self) -> bool:
        """Double the map (up to ``max_map_size``). False when it is already there."""
        if self._map_size >= self.max_map_size:
            return False
        new = min(max(self._map_size * 2, self._map_size + MiB), self.max_map_size)
        new -= new % self._psize
        if new <= self._map_size:
            return False
        old = self._map_size
        self._resize(new)
        self.map_grown += 1
        log.info("replay log %s: map grown from %d to %d bytes (max %d)", self.path, old,
                 self._map_size, self.max_map_size)
        return True
