"""Receive positions: per sending endpoint, the newest ``ts`` this node has processed.

The other half of the replay-log contract. The replay log (``store``) keeps what *we*
send until the peer confirms it; ``ReceivedPositions`` keeps what we *received* and
processed, so that after a restart (a ``kill -9`` included) the node still recognises a
peer's replay of messages it had already handed on and drops them instead of delivering
them twice. Icinga keeps the same number (``Endpoint::remote_log_position``) in its state
file, which it writes every few minutes and on shutdown, not before a crash.

One small LMDB environment of its own (a directory beside the replay log, holding
``data.mdb`` and ``lock.mdb``), with one table: endpoint name (UTF-8) -> ``>d`` position.
Positions only move forward. Beside them, under keys no endpoint name can take
(``RECENT_PREFIX`` and a save counter), the origin stamps processed recently, one value
per save, the oldest values dropped once the newer ones hold ``keep_recent`` stamps: a
position alone cannot tell an older message that was never processed here from one that
was, when the two arrive by different paths (an HA partner's relay; the receipts'
rule 1), and after a restart it took every older one for a replay. Commits are
synchronous (fsync): they are written a few times a second at most, by the replay log's
writer thread, after every record submitted before them was committed
(``ReplayWriter.call``), so a position on disk never covers a message that is not yet in
the log.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import threading
from array import array
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

import lmdb

from . import keys as K
from .errors import ReplayLogError

log = logging.getLogger("router.replaylog")

#: The table is tiny (one entry per endpoint): 5 000 agents take well under 1 MiB.
MAP_SIZE = 64 << 20
#: Keys of the recent stamps: this prefix (no endpoint name starts with a NUL), then a
#: big-endian save counter, so the cursor reads them oldest first.
RECENT_PREFIX = b"\x00recent:"
_COUNTER = struct.Struct(">Q")
#: A value of recent stamps: their count, then groups of (hop and origin name lengths,
#: stamps), the two names (UTF-8) and the stamps as native doubles (an LMDB file is
#: native-endian anyway).
_COUNT = struct.Struct("<I")
_GROUP = struct.Struct("<HHI")

#: Recent stamps as the receipts hand them over: hop -> (origin, ts), oldest first.
RecentStamps = Mapping[str, Sequence[tuple[str, float]]]


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
        #: (key, stamps) of the recent values on disk, oldest first; read at the first save.
        self._recent_index: deque[tuple[bytes, int]] | None = None
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
                if bytes(key).startswith(RECENT_PREFIX):
                    continue
                try:
                    name = bytes(key).decode("utf-8")
                    positions[name] = K.POSITION.unpack(value)[0]
                except (UnicodeError, ValueError, TypeError, struct.error) as e:
                    log.warning("receive positions %s: skipping a damaged entry (%s)",
                                self.path, e)
        return positions

    def load_recent(self) -> list[tuple[str, str, list[float]]]:
        """The recent stamps on disk as (hop, origin, stamps), oldest save first; a value
        that does not decode is skipped and logged."""
        env = self._require()
        out: list[tuple[str, str, list[float]]] = []
        with env.begin() as txn:
            cursor = txn.cursor()
            if not cursor.set_range(RECENT_PREFIX):
                return out
            for key, value in cursor:
                if not bytes(key).startswith(RECENT_PREFIX):
                    break
                try:
                    out.extend(_decode_recent(bytes(value)))
                except (UnicodeError, ValueError, struct.error) as e:
                    log.warning("receive positions %s: skipping damaged recent stamps (%s)",
                                self.path, e)
        return out

    def save(self, positions: Mapping[str, float], recent: RecentStamps | None = None,
             keep_recent: int = 0) -> int:
        """Raise the stored positions to ``positions`` in one synchronous transaction,
        with ``recent`` stamps beside them (the oldest values dropped while the newer ones
        hold at least ``keep_recent`` stamps).

        A position never moves backwards; NaN and names that cannot be stored are
        skipped. Returns the number of entries that moved.
        """
        env = self._require()
        moved = 0
        with self._lock, env.begin(write=True) as txn:
            if recent:
                self._put_recent(txn, recent, keep_recent)
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

    def _put_recent(self, txn: lmdb.Transaction, recent: RecentStamps, keep: int) -> None:
        index = self._recent_index
        if index is None:   # the first save: what is on disk (count from each header)
            index = self._recent_index = deque()
            cursor = txn.cursor()
            if cursor.set_range(RECENT_PREFIX):
                for key, value in cursor:
                    if not bytes(key).startswith(RECENT_PREFIX):
                        break
                    count = _COUNT.unpack_from(value)[0] if len(value) >= 4 else 0
                    index.append((bytes(key), count))
        value, count = _encode_recent(recent, keep)
        if not count:
            return
        number = _COUNTER.unpack(index[-1][0][len(RECENT_PREFIX):])[0] + 1 if index else 0
        key = RECENT_PREFIX + _COUNTER.pack(number)
        txn.put(key, value)
        index.append((key, count))
        total = sum(n for _, n in index)
        while len(index) > 1 and total - index[0][1] >= keep:
            old, n = index.popleft()
            txn.delete(old)
            total -= n

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


def _encode_recent(recent: RecentStamps, keep: int) -> tuple[bytes, int]:
    """One value of ``recent`` stamps and their count; past ``keep`` stamps (a save that
    carries several checkpoints after a long wait), the first groups lose their oldest."""
    total = sum(len(stamps) for stamps in recent.values())
    skip = max(0, total - keep) if keep else 0
    parts: list[bytes] = []
    count = 0
    for hop, pairs in recent.items():
        try:
            hop_raw = K.encode_name(hop)
        except (ValueError, UnicodeError):
            continue
        if skip:
            dropped = min(skip, len(pairs))
            skip -= dropped
            pairs = pairs[dropped:]
        origins: dict[str, list[float]] = {}
        for origin, ts in pairs:        # grouped here, in the writer's thread
            stamps = origins.get(origin)
            if stamps is None:
                origins[origin] = [ts]
            else:
                stamps.append(ts)
        for origin, stamps in origins.items():
            try:
                origin_raw = K.encode_name(origin)
            except (ValueError, UnicodeError):
                continue
            parts.append(_GROUP.pack(len(hop_raw), len(origin_raw), len(stamps)))
            parts.append(hop_raw + origin_raw + array("d", stamps).tobytes())
            count += len(stamps)
    return _COUNT.pack(count) + b"".join(parts), count


def _decode_recent(value: bytes) -> list[tuple[str, str, list[float]]]:
    out = []
    offset = _COUNT.size
    while offset < len(value):
        hop_len, origin_len, n = _GROUP.unpack_from(value, offset)
        offset += _GROUP.size
        hop = value[offset:offset + hop_len].decode("utf-8")
        offset += hop_len
        origin = value[offset:offset + origin_len].decode("utf-8")
        offset += origin_len
        stamps = array("d")
        stamps.frombytes(value[offset:offset + 8 * n])    # ValueError when cut short
        if len(stamps) != n:
            raise ValueError(f"{len(stamps)} stamps where the header says {n}")
        offset += 8 * n
        out.append((hop, origin, stamps.tolist()))
    return out


__all__ = ["MAP_SIZE", "RECENT_PREFIX", "ReceivedPositions", "RecentStamps"]
