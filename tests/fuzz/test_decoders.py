"""Property tests: hostile bytes only ever produce the documented protocol errors.

The decoders face untrusted peers, so anything other than ``FramingError``,
``MessageTooLarge`` (netstrings) or ``InvalidMessage`` (payloads) escaping them would
be a crash path. The round-trip properties pin down that the split points of the TCP
stream never change what is decoded.
"""

from __future__ import annotations

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.errors import FramingError, InvalidMessage, MessageTooLarge
from router.protocol import netstring
from router.protocol.events import HelloReceived, MessageReceived, ProtocolFailed
from router.protocol.jsonrpc import parse_message, relay_payload
from router.protocol.netstring import NetstringDecoder
from router.protocol.peer import PeerProtocol, Role, State

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# Bytes that look like netstrings often enough to reach the deep branches.
framing_bytes = st.lists(
    st.one_of(
        st.binary(max_size=40),
        st.sampled_from([b":", b",", b"0", b"0:,", b"1:a,", b"10:", b"999999999:", b"01:"]),
        st.binary(max_size=20).map(netstring.encode),
    ),
    max_size=12,
).map(b"".join)

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**63, max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=20,
)
json_objects = st.dictionaries(
    st.one_of(st.sampled_from(["method", "params", "ts", "originZone", "id", "jsonrpc"]),
              st.text(max_size=8)),
    json_values, max_size=6)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def decode_in_pieces(pieces: list[bytes], max_size: int) -> list[bytes]:
    decoder = NetstringDecoder(max_size)
    frames: list[bytes] = []
    for piece in pieces:
        frames += decoder.feed(piece)
    return frames


@SETTINGS
@given(data=framing_bytes, cuts=st.lists(st.integers(min_value=0), max_size=8),
       max_size=st.integers(min_value=-1, max_value=2000))
def test_netstring_decoder_raises_only_framing_errors(data: bytes, cuts: list[int],
                                                      max_size: int) -> None:
    decoder = NetstringDecoder(max_size)
    try:
        for piece in split(data, cuts):
            for payload in decoder.feed(piece):
                assert type(payload) is bytes
                assert max_size < 0 or len(payload) <= max_size
    except (FramingError, MessageTooLarge):
        return
    assert decoder.buffered <= len(data)


@SETTINGS
@given(data=framing_bytes, cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_split_points_do_not_change_the_outcome(data: bytes, cuts: list[int]) -> None:
    def outcome(pieces: list[bytes]) -> tuple[str, list[bytes]]:
        decoder = NetstringDecoder(-1)
        frames: list[bytes] = []
        try:
            for piece in pieces:
                decoder.feed_into(piece, frames)
        except (FramingError, MessageTooLarge) as error:
            return type(error).__name__, frames
        return "ok", frames

    assert outcome(split(data, cuts)) == outcome([data])


@SETTINGS
@given(payloads=st.lists(st.binary(max_size=300), max_size=20),
       cuts=st.lists(st.integers(min_value=0), max_size=10))
def test_round_trip_encode_then_feed(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(netstring.encode(p) for p in payloads)
    assert decode_in_pieces(split(stream, cuts), max_size=300) == payloads
    assert decode_in_pieces([stream[i:i + 1] for i in range(len(stream))], -1) == payloads


@SETTINGS
@given(payload=st.binary(max_size=200))
def test_parse_message_raises_only_invalid_message_on_random_bytes(payload: bytes) -> None:
    try:
        msg = parse_message(payload)
    except InvalidMessage:
        return
    assert type(msg.data) is dict


@SETTINGS
@given(obj=json_values, max_depth=st.integers(min_value=1, max_value=8))
def test_parse_message_raises_only_invalid_message_on_any_json(obj: object,
                                                               max_depth: int) -> None:
    try:
        msg = parse_message(orjson.dumps(obj), max_depth)
    except InvalidMessage:
        return
    assert msg.data == obj


@SETTINGS
@given(obj=json_objects, ts=st.floats(allow_nan=False, allow_infinity=False),
       zone=st.one_of(st.none(), st.text(max_size=8)))
def test_relay_round_trip(obj: dict, ts: float, zone: str | None) -> None:
    msg = parse_message(orjson.dumps(obj), max_depth=1100)
    again = parse_message(relay_payload(msg, ts, zone), max_depth=1100)
    assert again.ts == ts
    assert again.origin_zone == zone
    assert again.method == msg.method
    assert msg.data == obj


@SETTINGS
@given(data=st.one_of(framing_bytes, st.binary(max_size=200)),
       cuts=st.lists(st.integers(min_value=0), max_size=6),
       role=st.sampled_from(Role), authenticated=st.booleans())
def test_peer_never_raises_on_hostile_input(data: bytes, cuts: list[int], role: Role,
                                            authenticated: bool) -> None:
    peer = PeerProtocol(role, 0.0, identity=None, authenticated=authenticated,
                        max_message_size=500)
    now = 0.0
    for piece in split(data, cuts):
        now += 1.0
        peer.receive_data(piece, now)
        peer.handle_timer(now)
    events = peer.events_received()
    failures = [e for e in events if isinstance(e, ProtocolFailed)]
    assert len(failures) <= 1
    if failures:
        assert events[-1] is failures[0] and peer.state == State.CLOSED
    delivered = [e for e in events if isinstance(e, (HelloReceived, MessageReceived))]
    assert peer.messages_received >= len(delivered)
