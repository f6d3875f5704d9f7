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
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import lmdb

from . import keys as K
from .errors import ReplayLogError
from .lmdbfile import CORRUPTION, aside_name, describe, open_checked, problem_before_open

log = logging.getLogger("router.replaylog")

#: The positions are tiny (one entry per endpoint: 5 000 agents take well under 1 MiB);
#: the recent stamps take 16 bytes each plus their names once per value, at most about
#: twice ``keep_recent`` stamps (2 MB at 5 000 agents, 50 000 stamps), more with long
#: names: the map is only an upper bound of the file (sparse), so it leaves them room.
MAP_SIZE = 512 << 20
#: Keys of the recent stamps: this prefix (no endpoint name starts with a NUL), then a
#: big-endian save counter, so the cursor reads them oldest first.
RECENT_PREFIX = b"\x00recent:"
_COUNTER = struct.Struct(">Q")
#: A value of recent stamps: their count and the number of names, the names (a length
#: and UTF-8 each), then per stamp the index of its origin's name and of its hop's
#: (native unsigned ints) and the stamps (native doubles; an LMDB file is native-endian
#: anyway), in the order they were processed.
_HEADER = struct.Struct("<II")
_NAME_LEN = struct.Struct("<H")

#: A recent stamp as the receipts hand it over: (origin, ts, hop); oldest first.
RecentStamp = tuple[str, float, str]


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
        data = self.path / "data.mdb"
        damaged = (f"receive positions {data} are corrupt or truncated ({{}}); move the "
                   f"directory aside (mv {self.path} {aside_name(self.path)}) and start "
                   f"again: peers then replay what this node had not confirmed, and those "
                   f"messages are processed once more")
        try:
            # LMDB maps the file: one cut short killed the node with SIGBUS at every start,
            # and an emptied one was started over without a word (review).
            problem = problem_before_open(data)
            if problem is not None:
                raise ReplayLogError(damaged.format(problem))
            self._env: lmdb.Environment | None
            self._env, problem = open_checked(self.path, lambda: lmdb.open(
                str(self.path), map_size=MAP_SIZE, subdir=True, readonly=readonly,
                sync=True, metasync=True, max_dbs=0, lock=not readonly))
            if self._env is None:
                raise ReplayLogError(damaged.format(problem))
        except CORRUPTION as e:
            raise ReplayLogError(damaged.format(describe(e))) from e
        except lmdb.Error as e:
            raise ReplayLogError(f"cannot open receive positions {self.path}: {e}") from e
        except OSError as e:
            raise ReplayLogError(f"cannot open receive positions {self.path}: "
                                 f"{e.strerror}") from e

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

    def load_recent(self) -> list[RecentStamp]:
        """The recent stamps on disk, oldest first; a value that does not decode is
        skipped and logged."""
        env = self._require()
        out: list[RecentStamp] = []
        with env.begin() as txn:
            for _, value in _recent_values(txn):
                try:
                    out.extend(_decode_recent(value))
                except (UnicodeError, ValueError, struct.error) as e:
                    log.warning("receive positions %s: skipping damaged recent stamps (%s)",
                                self.path, e)
        return out

    def save(self, positions: Mapping[str, float],
             recent: Sequence[RecentStamp] | None = None, keep_recent: int = 0) -> int:
        """Raise the stored positions to ``positions`` in one synchronous transaction,
        with ``recent`` stamps beside them (the oldest values dropped while the newer ones
        hold at least ``keep_recent`` stamps).

        A position never moves backwards; NaN and names that cannot be stored are
        skipped. Returns the number of entries that moved.
        """
        env = self._require()
        moved = 0
        with self._lock:
            index = self._recent_index
            if recent and index is None:
                index = self._recent_index = self._read_recent_index(env)
            with env.begin(write=True) as txn:
                added = self._put_recent(txn, index, recent, keep_recent) \
                    if recent and index is not None else None
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
            # Committed: only now does the index follow (a failed transaction left the
            # values it meant to delete on disk, and they were never deleted: review).
            if added is not None and index is not None:
                key, count, dropped = added
                index.append((key, count))
                for _ in range(dropped):
                    index.popleft()
        return moved

    @staticmethod
    def _read_recent_index(env: lmdb.Environment) -> deque[tuple[bytes, int]]:
        """(key, stamps) of the recent values on disk, oldest first."""
        index: deque[tuple[bytes, int]] = deque()
        with env.begin() as txn:
            for key, value in _recent_values(txn):
                count = _HEADER.unpack_from(value)[0] if len(value) >= _HEADER.size else 0
                index.append((key, count))
        return index

    @staticmethod
    def _put_recent(txn: lmdb.Transaction, index: deque[tuple[bytes, int]],
                    recent: Sequence[RecentStamp], keep: int
                    ) -> tuple[bytes, int, int] | None:
        """Write ``recent`` as a new value and delete the oldest values the newer ones
        make unneeded; (its key, its stamps, how many values were deleted), or None."""
        value, count = _encode_recent(recent, keep)
        if not count:
            return None
        number = _COUNTER.unpack(index[-1][0][len(RECENT_PREFIX):])[0] + 1 if index else 0
        key = RECENT_PREFIX + _COUNTER.pack(number)
        txn.put(key, value)
        total = count + sum(n for _, n in index)
        dropped = 0
        for old, n in index:
            if total - n < keep:
                break
            txn.delete(old)
            total -= n
            dropped += 1
        return key, count, dropped

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


def _recent_values(txn: lmdb.Transaction) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of every recent-stamps value, oldest first."""
    cursor = txn.cursor()
    if not cursor.set_range(RECENT_PREFIX):
        return
    for key, value in cursor:
        key = bytes(key)
        if not key.startswith(RECENT_PREFIX):
            return
        yield key, bytes(value)


def _encode_recent(recent: Sequence[RecentStamp], keep: int) -> tuple[bytes, int]:
    """One value of the last ``keep`` (if set) of ``recent`` and their count; stamps with
    a name that cannot be stored are left out."""
    if keep and len(recent) > keep:
        recent = recent[len(recent) - keep:]
    names: dict[str, int] = {}
    raw_names: list[bytes] = []
    origins, hops, stamps = array("I"), array("I"), array("d")
    for origin, ts, hop in recent:
        ids = []
        for name in (origin, hop):
            number = names.get(name)
            if number is None:
                try:
                    raw = K.encode_name(name)
                except (ValueError, UnicodeError):
                    break
                number = names[name] = len(raw_names)
                raw_names.append(_NAME_LEN.pack(len(raw)) + raw)
            ids.append(number)
        else:
            origins.append(ids[0])
            hops.append(ids[1])
            stamps.append(ts)
    count = len(stamps)
    return (_HEADER.pack(count, len(raw_names)) + b"".join(raw_names) + origins.tobytes()
            + hops.tobytes() + stamps.tobytes()), count


def _decode_recent(value: bytes) -> list[RecentStamp]:
    """The stamps of one value; ValueError (or struct.error) when it does not decode."""
    count, name_count = _HEADER.unpack_from(value)
    offset = _HEADER.size
    names = []
    for _ in range(name_count):
        (length,) = _NAME_LEN.unpack_from(value, offset)
        offset += _NAME_LEN.size
        names.append(value[offset:offset + length].decode("utf-8"))
        offset += length
    origins, hops, stamps = array("I"), array("I"), array("d")
    for part in (origins, hops, stamps):
        size = part.itemsize * count
        part.frombytes(value[offset:offset + size])
        offset += size
    if len(stamps) != count or offset != len(value):
        raise ValueError(f"{len(value)} bytes do not hold the {count} stamps the header says")
    if count and max(max(origins), max(hops)) >= len(names):
        raise ValueError("a stamp names an index past the names")
    return [(names[o], ts, names[h]) for o, ts, h in zip(origins, stamps, hops)]


__all__ = ["MAP_SIZE", "RECENT_PREFIX", "ReceivedPositions", "RecentStamp"]
