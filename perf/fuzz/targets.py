"""The fuzz targets: one function per decoder that takes bytes from outside.

Each target takes one input (``bytes``) and returns normally when the decoder either
accepted it or refused it with one of its **documented** exceptions; anything else that
comes out of the decoder (a ``KeyError``, ``struct.error``, ``UnicodeDecodeError``,
``RecursionError``...) propagates, and the fuzzing engine records it as a crash. The
documented exceptions of every decoder are listed beside its target, with where they
are documented, in :data:`TARGETS`.

Several targets also check an invariant on what was accepted (a decoded frame is never
longer than the limit, a relayed message parses back to the same method...); a broken
invariant raises ``AssertionError``, which is a crash too.

The leading bytes of an input are *control bytes* for some targets (a size limit, how
the stream is split into reads, a trust level): the engine mutates them like the rest,
so the same input always takes the same path, and a crash file replays exactly.

Targets must be deterministic and must not keep state between inputs beyond caches set
up once (the CA of the CSR target, the template log of the replay-log target).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

__all__ = ["TARGETS", "Target", "control", "run_one", "split_reads", "throwaway_ca"]


@dataclass(frozen=True)
class Target:
    """A fuzz target: ``run(data)`` and the exceptions it is allowed to let out."""

    name: str
    run: Callable[[bytes], None]
    documented: str      #: which exceptions may come out, and where that is written down
    modules: tuple[str, ...]   #: what atheris instruments for coverage feedback


def control(data: bytes, count: int) -> tuple[bytes, bytes]:
    """The first ``count`` bytes (zero-padded) as control bytes, and the rest."""
    head = data[:count]
    return head + bytes(count - len(head)), data[count:]


def split_reads(data: bytes, seed: int) -> list[bytes]:
    """Split ``data`` into reads as a TCP stream might deliver it: ``seed`` picks sizes.

    Seed 0 delivers it whole; otherwise the read sizes cycle through a small pattern
    derived from the seed (1 byte, a few bytes, a larger chunk), so split points land
    inside length prefixes, bodies and the trailing comma.
    """
    if seed == 0 or not data:
        return [data]
    sizes = [1 + (seed >> shift) % span for shift, span in ((0, 3), (2, 11), (4, 97))]
    out: list[bytes] = []
    pos = index = 0
    while pos < len(data):
        size = sizes[index % len(sizes)]
        out.append(data[pos:pos + size])
        pos += size
        index += 1
    return out


# -- netstring framing -----------------------------------------------------------------

_LIMITS = (-1, 0, 1, 2, 10, 64, 100, 1000, 1 << 20)


def netstring(data: bytes) -> None:
    """``NetstringDecoder.feed_into`` over reads split by a control byte."""
    from router.errors import FramingError, MessageTooLarge
    from router.protocol.netstring import NetstringDecoder

    (limit_byte, split_byte), stream = control(data, 2)
    max_size = _LIMITS[limit_byte % len(_LIMITS)]
    decoder = NetstringDecoder(max_size)
    frames: list[bytes] = []
    try:
        for piece in split_reads(stream, split_byte):
            decoder.feed_into(piece, frames)
    except (FramingError, MessageTooLarge):
        pass
    for frame in frames:
        assert type(frame) is bytes, type(frame)
        assert max_size < 0 or len(frame) <= max_size, (len(frame), max_size)
    assert decoder.buffered <= len(stream)


# -- the first TLS record of an inbound connection ---------------------------------------

def tls_first_record(data: bytes) -> None:
    """What the transport does with an inbound connection's first bytes: gather reads
    (split by a control byte) until ``first_record_complete``; nothing may be raised, and
    a "not yet" must be a handshake record really not whole."""
    from router.protocol.tlsrecord import (HANDSHAKE, HEADER_SIZE, MAX_CIPHERTEXT,
                                           first_record_complete)

    (split_byte,), stream = control(data, 1)
    pending = b""
    for piece in split_reads(stream, split_byte):
        if not piece:
            continue
        pending += piece
        view = memoryview(pending)              # the transport hands a memoryview
        if first_record_complete(view):
            assert first_record_complete(pending)
            return
        assert pending[0] == HANDSHAKE
        if len(pending) >= HEADER_SIZE:
            length = int.from_bytes(pending[3:HEADER_SIZE], "big")
            assert length <= MAX_CIPHERTEXT and len(pending) < HEADER_SIZE + length
    assert len(pending) <= HEADER_SIZE + MAX_CIPHERTEXT


# -- JSON-RPC --------------------------------------------------------------------------

def jsonrpc(data: bytes) -> None:
    """``parse_message`` with a control-byte depth; accepted messages relay and re-parse."""
    from router.errors import InvalidMessage
    from router.protocol.jsonrpc import parse_message, relay_payload

    (depth_byte,), payload = control(data, 1)
    max_depth = 1 + depth_byte % 130
    try:
        message = parse_message(payload, max_depth)
    except InvalidMessage:
        return
    assert type(message.data) is dict
    assert message.method is None or type(message.method) is str
    again = parse_message(relay_payload(message, 1234.5, "zone"), max_depth + 2)
    assert again.method == message.method and again.ts == 1234.5, (again, message)
    assert again.origin_zone == "zone"


# -- the peer state machine ------------------------------------------------------------

def peer(data: bytes) -> None:
    """A ``PeerProtocol`` fed a sequence of messages; nothing may be raised at all.

    The input is a list of messages separated by ``\\n``; control bits choose the role,
    whether the peer is authenticated, and whether each message is netstring-framed (so
    the fuzzer reaches Hello, heartbeat and enrollment handling with plain JSON) or sent
    raw. Between reads the clock advances and the timers fire.
    """
    from router.protocol.events import ProtocolFailed
    from router.protocol.netstring import encode
    from router.protocol.peer import PeerProtocol, Role, State

    (flags, split_byte, step), rest = control(data, 3)
    role = Role.CLIENT if flags & 1 else Role.SERVER
    proto = PeerProtocol(role, 0.0, identity="agent" if flags & 2 else None,
                         authenticated=bool(flags & 4),
                         max_message_size=_LIMITS[(flags >> 3) % len(_LIMITS)])
    raw_mask = flags >> 6     # 0: frame every message; else every 2nd/3rd.../raw
    stream = b"".join(part if raw_mask and index % (raw_mask + 1) == raw_mask
                      else encode(part)
                      for index, part in enumerate(rest.split(b"\n")))
    now = 0.0
    events = []
    for piece in split_reads(stream, split_byte):
        now += step / 8
        proto.receive_data(piece, now)
        proto.handle_timer(now)
        timer = proto.get_timer()
        assert timer is None or not math.isnan(timer)
        events += proto.events_received()
        proto.data_to_send()
    proto.receive_eof(now)
    events += proto.events_received()
    failures = [e for e in events if isinstance(e, ProtocolFailed)]
    assert len(failures) <= 1, failures
    assert proto.state == State.CLOSED


# -- CSR / PEM (certificate requests from peers) -----------------------------------------

@cache
def throwaway_ca() -> tuple[Any, Any]:
    from router.pki.certs import ca_certificate, generate_key
    key = generate_key("ec")
    return ca_certificate(key, common_name="Fuzz CA"), key


def csr(data: bytes) -> None:
    """What enrollment does with a peer's ``cert_request`` (PEM) or TLS certificate (DER).

    ``parse_request`` -> ``common_name`` -> ``sign_request`` under the default key
    policy, with a throw-away CA; plus the request store's reading of a request file.
    """
    import datetime as dt

    from router.pki.requests import CertRequestError, common_name
    from router.pki.signing import parse_request, sign_request

    try:
        cert = parse_request(data)
    except CertRequestError:
        return
    common_name(cert)          # the node logs it before it decides anything
    ca_cert, ca_key = throwaway_ca()
    try:
        sign_request(ca_cert, ca_key, cert,
                     now=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    except CertRequestError:
        return


def csr_store(data: bytes) -> None:
    """A request file under ``certificate-requests/`` (a satellite stores what peers sent)."""
    from router.pki.requests import CertRequestError, RequestStore

    directory = _scratch_dir("csr_store")
    store = RequestStore(directory)
    fingerprint = "0" * 64
    store.path(fingerprint).parent.mkdir(parents=True, exist_ok=True)
    store.path(fingerprint).write_bytes(data)
    try:
        request = store.get(fingerprint)
    except CertRequestError:
        request = None
    if request is not None:
        request.common_name  # noqa: B018 - parsing the certificate is what is fuzzed
    listing = store.list()
    assert len(listing.requests) + len(listing.corrupt) == 1, listing


# -- TOML configuration ------------------------------------------------------------------

def toml_config(data: bytes) -> None:
    """``parse_config`` on arbitrary text (the file is read as UTF-8, undecodable bytes
    replaced: ``read_text`` refuses them with a ``ConfigError`` of its own)."""
    from router.errors import ConfigError
    from router.config.load import parse_config

    try:
        parse_config(data.decode("utf-8", "replace"), path="fuzz.toml",
                     base_dir=str(_scratch_dir("toml")))
    except ConfigError:
        pass


# -- zones.conf import -----------------------------------------------------------------

def zones_conf(data: bytes) -> None:
    """``parse_zones_conf`` on arbitrary text."""
    from router.errors import ConfigError
    from router.config.zonesconf import parse_zones_conf

    try:
        parse_zones_conf(data.decode("utf-8", "replace"), path="zones.conf")
    except ConfigError:
        pass


# -- config::Update params ---------------------------------------------------------------

def config_update(data: bytes) -> None:
    """``parse_update`` on the params of a ``config::Update`` (JSON from the parent)."""
    import orjson

    from router.features.configsync.files import UpdateRefused, parse_update

    (limit_byte,), payload = control(data, 1)
    try:
        params = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return
    if not isinstance(params, dict):
        return   # the node only calls the parser with an object (routing/fields checks)

    def zone_problem(name: str) -> str | None:
        return None if name in ("agent", "global-templates", "sat") else f"zone {name!r}"

    try:
        zones = parse_update(params, zone_problem, 64 << limit_byte % 12, 1.7e9)
    except UpdateRefused:
        return
    for zone in zones.values():
        zone.digest, zone.size, zone.timestamp  # noqa: B018 - computed from what was sent
        zone.update_v1(), zone.update_v2(), zone.hosts_files()


# -- replay-log records read back ------------------------------------------------------

_DBS = (b"records", b"zones", b"zone_names", b"positions", b"meta")


@cache
def _scratch_root() -> Path:
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="router-fuzz-", dir=base))


def _scratch_dir(name: str) -> Path:
    path = _scratch_root() / name
    path.mkdir(exist_ok=True)
    return path


@cache
def _template_log() -> bytes:
    """``data.mdb`` of a small valid log: two zones, an object zone, a position."""
    from replaylog import ReplayStore

    path = _scratch_dir("template") / "replaylog"
    with ReplayStore(path, map_size=1 << 20, sync=False) as store:
        for seq in range(1, 6):
            store.append_many([("agent", 100.0 + seq, b"%d:{},", "objzone" if seq % 2 else None)
                               for _ in range(1)])
        store.append_many([("sat", 50.0, b"2:{},", None)])
        store.confirm("sat1", 101.0)
    return (path / "data.mdb").read_bytes()


def _mutations(data: bytes) -> list[tuple[int, bytes, bytes | None]]:
    """The input as edits: ``[db | delete-bit] [key length] key [value length] value``."""
    edits: list[tuple[int, bytes, bytes | None]] = []
    pos = 0
    while pos + 2 <= len(data):
        op, klen = data[pos], data[pos + 1] % 40
        key = data[pos + 2:pos + 2 + klen]
        pos += 2 + klen
        if op & 0x80:
            edits.append((op % len(_DBS), key, None))
            continue
        vlen = data[pos] if pos < len(data) else 0
        value = data[pos + 1:pos + 1 + vlen]
        pos += 1 + vlen
        edits.append((op % len(_DBS), key, value))
    return edits


def replaylog_read(data: bytes) -> None:
    """A real LMDB replay log whose entries the input rewrote, opened and read back.

    The input edits a copy of a small valid log (put or delete entries of any of its
    five sub-databases, keys and values of any bytes) with raw LMDB; then the store
    opens it read-only and reads every zone, the positions and the stats: what a node
    does at start and when it replays after a crash left the file in any state. With
    control bit 0 set, the edits go to an empty environment instead.
    """
    import lmdb

    from replaylog import ReplayLogCorrupt, ReplayLogError, ReplayStore

    (mode,), rest = control(data, 1)
    path = _scratch_dir("replay") / "replaylog"
    if path.exists():
        shutil.rmtree(path)
    path.mkdir()
    if not mode & 1:
        (path / "data.mdb").write_bytes(_template_log())
    env = lmdb.open(str(path), map_size=1 << 20, max_dbs=8, sync=False, lock=False)
    try:
        handles = [env.open_db(name) for name in _DBS]
        with env.begin(write=True) as txn:
            for db, key, value in _mutations(rest):
                if not key:
                    continue
                if value is None:
                    txn.delete(key, db=handles[db])
                else:
                    txn.put(key, value, db=handles[db])
    except lmdb.BadValsizeError:
        return   # LMDB itself refused the edit (key too long): nothing to read back
    finally:
        env.close()
    try:
        with ReplayStore(path, readonly=True) as store:
            for zone in store.stats()["zones"]:
                records = list(store.iter_from(zone, chunk=3))
                list(store.iter_from(zone, 103.0, chunk=2))
                assert [r.seq for r in records] == sorted({r.seq for r in records})
            store.positions()
    except (ReplayLogCorrupt, ReplayLogError):
        return


# -- the table -------------------------------------------------------------------------

TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("netstring", netstring,
           "FramingError, MessageTooLarge (router/protocol/netstring.py NetstringDecoder."
           "feed, router/errors.py)", ("router.protocol.netstring",)),
    Target("tls_first_record", tls_first_record,
           "none (router/protocol/tlsrecord.py first_record_complete)",
           ("router.protocol.tlsrecord",)),
    Target("jsonrpc", jsonrpc,
           "InvalidMessage (router/protocol/jsonrpc.py parse_message)",
           ("router.protocol.jsonrpc",)),
    Target("peer", peer,
           "none: PeerProtocol turns every protocol error into a ProtocolFailed event "
           "(router/protocol/peer.py module docstring)",
           ("router.protocol.netstring", "router.protocol.jsonrpc", "router.protocol.events",
            "router.protocol.peer")),
    Target("csr", csr,
           "CertRequestError (router/pki/signing.py parse_request, sign_request)",
           ("router.pki",)),
    Target("csr_store", csr_store,
           "CertRequestError from RequestStore.get; list() never raises "
           "(router/pki/requests.py)", ("router.pki.requests",)),
    Target("toml_config", toml_config,
           "ConfigError (router/config/load.py module docstring)",
           ("router.config", "router.routing")),
    Target("zones_conf", zones_conf,
           "ConfigError (router/config/zonesconf.py parse_zones_conf)",
           ("router.config.zonesconf",)),
    Target("config_update", config_update,
           "UpdateRefused (router/features/configsync/files.py parse_update)",
           ("router.features.configsync.files",)),
    Target("replaylog_read", replaylog_read,
           "ReplayLogCorrupt, ReplayLogError (replaylog/store.py ReplayStore, "
           "replaylog/errors.py)", ("replaylog",)),
)}
"""Every target by name; ``documented`` says which exceptions may come out of it."""


def run_one(name: str, data: bytes) -> None:
    """Run target ``name`` on one input (what a regression test calls)."""
    TARGETS[name].run(data)

