"""Receive positions: per sending endpoint, the newest ``ts`` this node has processed.

The other half of the replay-log contract. The replay log (``store``) keeps what *we*
send until the peer confirms it; ``ReceivedPositions`` keeps what we *received* and
processed, so that after a restart (a ``kill -9`` included) the node still recognises a
peer's replay of messages it had already handed on and drops them instead of delivering
them twice. Icinga keeps the same number (``Endpoint::remote_log_position``) in its state
file, which it writes every few minutes and on shutdown, not before a crash.

One small LMDB environment of its own (a directory beside the replay log, holding
``data.mdb`` and ``lock.mdb``), with one table: endpoint name (UTF-8) -> ``>d`` position.
Positions only move forward. Commits are synchronous (fsync): they are written a few
times a second at most, by the replay log's writer thread, after every record submitted
before them was committed (``ReplayWriter.call``), so a position on disk never covers a
message that is not yet in the log.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import threading
from collections.abc import Mapping
from pathlib import Path

import lmdb

from . import keys as K
from .errors import ReplayLogError

log = logging.getLogger("router.replaylog")

#: The table is tiny (one entry per endpoint): 5 000 agents take well under 1 MiB.
MAP_SIZE = 64 << 20


class ReceivedPositions:
    """Per-endpoint processed positions on disk (see the module doc).

    Args:
        path: the environment's directory (created when missing).
        readonly: open for reading only (``router replaylog`` inspection).
    """

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.Lock()
        if not readonly:
            try:
                self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as e:
                raise ReplayLogError(f"receive positions {self.path}: {e.strerror}") from e
        try:
            self._env: lmdb.Environment | None = lmdb.open(
                str(self.path), map_size=MAP_SIZE, subdir=True, readonly=readonly,
                sync=True, metasync=True, max_dbs=0, lock=not readonly)
        except (lmdb.InvalidError, lmdb.CorruptedError, lmdb.VersionMismatchError) as e:
            raise ReplayLogError(
                f"receive positions {self.path / 'data.mdb'} are corrupt or truncated "
                f"({e}); move the directory {self.path} aside and start again: peers then "
                f"replay what this node had not confirmed, and those messages are "
                f"processed once more") from e
        except lmdb.Error as e:
            raise ReplayLogError(f"cannot open receive positions {self.path}: {e}") from e

    def load(self) -> dict[str, float]:
        """Every stored position; an entry that does not decode is skipped and logged."""
        env = self._require()
        positions: dict[str, float] = {}
        with env.begin() as txn:
            for key, value in txn.cursor():
                try:
                    name = bytes(key).decode("utf-8")
                    positions[name] = K.POSITION.unpack(value)[0]
                except (UnicodeError, ValueError, TypeError, struct.error) as e:
                    log.warning("receive positions %s: skipping a damaged entry (%s)",
                                self.path, e)
        return positions

    def save(self, positions: Mapping[str, float]) -> int:
        """Raise the stored positions to ``positions`` in one synchronous transaction.

        A position never moves backwards; NaN and names that cannot be stored are
        skipped. Returns the number of entries that moved.
        """
        env = self._require()
        moved = 0
        with self._lock, env.begin(write=True) as txn:
            for name, ts in positions.items():
                if math.isnan(ts):
                    continue
                try:
                    raw = K.encode_name(name)
                except ValueError:
                    continue
                old = txn.get(raw)
                if old is not None and K.POSITION.unpack(old)[0] >= ts:
                    continue
                txn.put(raw, K.POSITION.pack(ts))
                moved += 1
        return moved

    def close(self) -> None:
        with self._lock:
            env, self._env = self._env, None
        if env is not None:
            env.close()

    def _require(self) -> lmdb.Environment:
        env = self._env
        if env is None:
            raise ReplayLogError(f"receive positions {self.path} are closed")
        return env

    def __enter__(self) -> ReceivedPositions:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["MAP_SIZE", "ReceivedPositions"]
