"""On-disk layout of the replay log: sub-databases, keys and values.

One LMDB environment (a directory holding ``data.mdb`` and ``lock.mdb``) with five named
sub-databases:

``records``
    key ``>IQ`` = (zone id, seq), 12 bytes. ``seq`` starts at 1 and only grows per zone
    (it is kept in the zone's meta entry, so it is not reused after the zone is emptied).
    Because the zone id comes first, one zone's records are contiguous and in append
    order, and a reader seeks straight to ``(zone id, seq)``.
    value = ``>dI`` header (``ts``: float64, object zone id: uint32, ``NO_ZONE`` for none)
    followed by the frame bytes, exactly as they would be sent (netstring framing
    included).
``zones``
    zone name (UTF-8) -> ``>I`` zone id. Ids are allocated from 0 upwards and never
    reused. Object zones (the zone of the object a message is about) share the table.
``zone_names``
    ``>I`` zone id -> zone name: the reverse map, so a reader can name an object zone
    without loading the whole table.
``positions``
    endpoint name (UTF-8) -> ``>d`` confirmed log position (a ``ts``).
``meta``
    ``version`` -> ``>I`` format version; ``next_zone`` -> ``>I``; ``total`` -> ``>QQ``
    (records, bytes); ``map_size`` -> ``>Q`` (the map size last grown to);
    ``z`` + ``>I`` zone id -> ``ZONE_META`` (records, bytes, last seq, evicted,
    newest ts, flags).

"Bytes" everywhere means key + value lengths: what the records cost before LMDB's own
page overhead (``stats()`` reports the file and page figures separately).
"""

from __future__ import annotations

import struct

FORMAT_VERSION = 1

RECORDS_DB = b"records"
ZONES_DB = b"zones"
ZONE_NAMES_DB = b"zone_names"
POSITIONS_DB = b"positions"
META_DB = b"meta"
MAX_DBS = 8  # five used, a little room for a later format

RECORD_KEY = struct.Struct(">IQ")
HEADER = struct.Struct(">dI")
HEADER_SIZE = HEADER.size
KEY_SIZE = RECORD_KEY.size
ZONE_ID = struct.Struct(">I")
POSITION = struct.Struct(">d")
U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")
TOTALS = struct.Struct(">QQ")
#: records, bytes, last seq, evicted, newest ts, flags
ZONE_META = struct.Struct(">QQQQdI")

NO_ZONE = 0xFFFFFFFF
MAX_ZONE_ID = NO_ZONE - 1
MAX_SEQ = 2**64 - 1

#: zone flag: a record was appended with a ts older than the newest one already stored,
#: so ts is not monotonic in seq order and readers cannot binary-search by ts.
FLAG_DISORDER = 1

META_VERSION = b"version"
META_NEXT_ZONE = b"next_zone"
META_TOTAL = b"total"
META_MAP_SIZE = b"map_size"
META_ZONE_PREFIX = b"z"

#: LMDB's default maximum key size.
MAX_NAME_BYTES = 511

record_key = RECORD_KEY.pack
split_key = RECORD_KEY.unpack


def zone_meta_key(zone_id: int) -> bytes:
    return META_ZONE_PREFIX + ZONE_ID.pack(zone_id)


def encode_name(name: str) -> bytes:
    """A zone or endpoint name as a key; ``ValueError`` when it cannot be one."""
    # Checked at run time although annotated: names arrive from peers and config files.
    if not isinstance(name, str) or not name:  # type: ignore[redundant-expr]
        raise ValueError(f"a zone or endpoint name must be a non-empty string, not {name!r}")
    data = name.encode("utf-8")
    if len(data) > MAX_NAME_BYTES:
        raise ValueError(f"name longer than {MAX_NAME_BYTES} bytes: {name[:40]!r}...")
    return data


def check_name(name: object) -> None:
    """Cheap validation for the hot path (``ReplayWriter.submit``)."""
    if type(name) is not str or not name or (len(name) > 127 and
                                             len(name.encode("utf-8")) > MAX_NAME_BYTES):
        encode_name(name)  # type: ignore[arg-type]  # raises the precise ValueError
