"""The sans-I/O peer state machine, driven by an injected clock (no sleeps)."""

from __future__ import annotations

import orjson
import pytest

from router.errors import FramingError, InvalidMessage, MessageTooLarge
from router.protocol import netstring
from router.protocol.events import (
    HelloReceived,
    MessageReceived,
    NotJsonRpc,
    PeerTimedOut,
    ProtocolFailed,
)
from router.protocol.jsonrpc import notification
from router.protocol.peer import HEARTBEAT_FRAME, PeerProtocol, Role, State
from .test_jsonrpc import GOLDEN

T0 = 1_700_000_000.0
HELLO_FRAME = (b'86:{"jsonrpc":"2.0","method":"icinga::Hello",'
               b'"params":{"capabilities":1,"version":21306}},')
GOLDEN_HEARTBEAT_FRAME = b'57:{"jsonrpc":"2.0","method":"event::Heartbeat","params":{}},'


def frame(data: dict) -> bytes:
    return netstring.encode(orjson.dumps(data))


def hello(params: object = None) -> bytes:
    if params is None:
        params = {"capabilities": 1, "version": 21306}
    return frame({"jsonrpc": "2.0", "method": "icinga::Hello", "params": params})


def event(method: str = "event::SetNextCheck", **params: object) -> bytes:
    return frame({"jsonrpc": "2.0", "method": method, "params": params})


def client(authenticated: bool = True, **kwargs: object) -> PeerProtocol:
    peer = PeerProtocol(Role.CLIENT, T0, identity="sat1", authenticated=authenticated,
                        max_message_size=-1 if authenticated else 1 << 20, **kwargs)
    peer.data_to_send()
    return peer


def server(authenticated: bool = True, **kwargs: object) -> PeerProtocol:
    return PeerProtocol(Role.SERVER, T0, identity="sat1", authenticated=authenticated,
                        max_message_size=-1 if authenticated else 1 << 20, **kwargs)


def methods(events: list) -> list[str | None]:
    return [e.message.method for e in events if isinstance(e, MessageReceived)]


# -- opening ---------------------------------------------------------------------------

def test_client_sends_hello_at_start() -> None:
    peer = PeerProtocol(Role.CLIENT, T0, identity="master1", authenticated=True,
                        max_message_size=-1)
    assert peer.state == State.OPEN
    assert peer.data_to_send() == [HELLO_FRAME]
    assert peer.data_to_send() == []
    assert peer.events_received() == []


def test_hello_params_are_configurable() -> None:
    peer = PeerProtocol(Role.CLIENT, T0, identity=None, authenticated=True,
                        max_message_size=-1, hello_params={"version": 21400, "capabilities": 3})
    assert peer.data_to_send() == [netstring.encode(
        b'{"jsonrpc":"2.0","method":"icinga::Hello","params":{"capabilities":3,"version":21400}}')]


def test_server_waits_for_a_digit_before_saying_hello() -> None:
    peer = server()
    assert peer.state == State.WAITING
    assert peer.data_to_send() == []
    assert peer.get_timer() == T0 + 15
    peer.receive_data(b"8", T0 + 1)
    assert peer.state == State.OPEN
    assert peer.data_to_send() == [HELLO_FRAME]
    assert peer.events_received() == []
    peer.receive_data(hello()[1:], T0 + 2)
    assert peer.events_received() == [HelloReceived(21306, 1)]


def test_server_handles_messages_in_the_first_chunk() -> None:
    peer = server()
    peer.receive_data(hello() + event(host="web01"), T0 + 1)
    assert peer.data_to_send() == [HELLO_FRAME]
    events = peer.events_received()
    assert events[0] == HelloReceived(21306, 1)
    assert methods(events) == ["event::SetNextCheck"]


@pytest.mark.parametrize("first", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01", b":"])
def test_server_refuses_a_non_digit_first_byte(first: bytes) -> None:
    peer = server()
    peer.receive_data(first, T0 + 1)
    assert peer.events_received() == [NotJsonRpc(first)]
    assert peer.state == State.CLOSED
    assert peer.data_to_send() == []
    assert peer.get_timer() is None
    peer.receive_data(hello(), T0 + 2)
    assert peer.events_received() == []


def test_server_first_byte_timeout() -> None:
    peer = server()
    peer.handle_timer(T0 + 14.9)
    assert peer.events_received() == [] and peer.state == State.WAITING
    peer.handle_timer(T0 + 15)
    assert peer.events_received() == [PeerTimedOut("first_byte")]
    assert peer.state == State.CLOSED
    assert peer.get_timer() is None


def test_first_byte_deadline_ends_with_the_first_byte() -> None:
    peer = server(first_byte_timeout=5.0)
    peer.receive_data(b"1", T0 + 4)
    peer.handle_timer(T0 + 30)
    assert PeerTimedOut("first_byte") not in peer.events_received()
    assert peer.state == State.OPEN


def test_empty_read_changes_nothing() -> None:
    peer = server()
    peer.receive_data(b"", T0 + 10)
    assert peer.state == State.WAITING
    assert peer.last_received == T0
    assert peer.bytes_received == 0


# -- heartbeat -------------------------------------------------------------------------

def test_heartbeat_frame_is_icingas() -> None:
    assert HEARTBEAT_FRAME == GOLDEN_HEARTBEAT_FRAME


def test_heartbeat_cadence() -> None:
    peer = client()
    assert peer.get_timer() == T0 + 20
    peer.handle_timer(T0 + 19.9)
    assert peer.data_to_send() == []
    peer.handle_timer(T0 + 20)
    peer.handle_timer(T0 + 20)                      # idempotent
    assert peer.data_to_send() == [GOLDEN_HEARTBEAT_FRAME]
    assert peer.get_timer() == T0 + 40
    peer.receive_data(event(), T0 + 30)
    peer.handle_timer(T0 + 40)
    assert peer.data_to_send() == [HEARTBEAT_FRAME]
    assert methods(peer.events_received()) == ["event::SetNextCheck"]


def test_late_timer_sends_one_heartbeat_and_reschedules_from_now() -> None:
    peer = client()
    peer.receive_data(event(), T0 + 50)
    peer.handle_timer(T0 + 55)                      # 35 s late: one heartbeat, not two
    assert peer.data_to_send() == [HEARTBEAT_FRAME]
    assert peer.get_timer() == T0 + 75


def test_server_heartbeat_counts_from_the_first_byte() -> None:
    peer = server()
    peer.receive_data(b"5", T0 + 5)
    assert peer.get_timer() == T0 + 25
    peer.handle_timer(T0 + 24)
    assert peer.data_to_send() == [HELLO_FRAME]
    peer.handle_timer(T0 + 25)
    assert peer.data_to_send() == [HEARTBEAT_FRAME]


def test_no_heartbeat_while_waiting() -> None:
    peer = server(first_byte_timeout=100.0, liveness_timeout=1000.0)
    assert peer.get_timer() == T0 + 100
    peer.handle_timer(T0 + 50)
    assert peer.data_to_send() == []


def test_received_heartbeat_is_consumed() -> None:
    peer = client()
    peer.receive_data(GOLDEN_HEARTBEAT_FRAME, T0 + 1)
    assert peer.events_received() == []
    assert peer.messages_received == 1


# -- liveness --------------------------------------------------------------------------

def test_liveness_timeout_is_60s() -> None:
    peer = client()
    peer.handle_timer(T0 + 20)
    peer.handle_timer(T0 + 40)
    assert peer.get_timer() == T0 + 60
    peer.handle_timer(T0 + 59.9)
    assert peer.events_received() == []
    peer.handle_timer(T0 + 60)
    assert peer.events_received() == [PeerTimedOut("liveness")]
    assert peer.state == State.CLOSED
    assert peer.data_to_send() == [HEARTBEAT_FRAME, HEARTBEAT_FRAME]
    assert peer.get_timer() is None


def test_silence_while_we_hold_its_reading_is_not_a_timeout() -> None:
    """Back-pressure holds the peer's input unread for longer than the liveness timeout:
    the window starts again where we last held it, then runs out normally."""
    peer = client()
    peer.reading_held(T0 + 59)                      # the transport: still not reading
    peer.handle_timer(T0 + 60)
    peer.reading_held(T0 + 100)
    peer.handle_timer(T0 + 118)
    assert PeerTimedOut("liveness") not in peer.events_received()
    assert peer.get_timer() is not None and peer.get_timer() <= T0 + 160
    peer.reading_held(T0 + 90)                      # an older hold moves nothing back
    peer.handle_timer(T0 + 160)
    assert peer.events_received() == [PeerTimedOut("liveness")]


def test_any_byte_resets_liveness() -> None:
    peer = client()
    peer.receive_data(b"5", T0 + 50)                # not even a whole frame
    assert peer.last_received == T0 + 50
    peer.handle_timer(T0 + 60)
    peer.handle_timer(T0 + 80)
    peer.handle_timer(T0 + 100)
    assert peer.events_received() == []
    assert peer.get_timer() == T0 + 110
    peer.handle_timer(T0 + 110)
    assert peer.events_received() == [PeerTimedOut("liveness")]


def test_liveness_timeout_is_configurable() -> None:
    peer = client(liveness_timeout=5.0)
    peer.handle_timer(T0 + 5)
    assert peer.events_received() == [PeerTimedOut("liveness")]


# -- anonymous peers -------------------------------------------------------------------

def test_anonymous_peer_is_closed_after_10s_even_when_busy() -> None:
    peer = client(authenticated=False)
    assert peer.get_timer() == T0 + 10
    peer.receive_data(event(), T0 + 9)
    peer.handle_timer(T0 + 9.99)
    assert [type(e) for e in peer.events_received()] == [MessageReceived]
    peer.handle_timer(T0 + 10)
    assert peer.events_received() == [PeerTimedOut("anonymous")]
    assert peer.state == State.CLOSED


def test_enrolling_anonymous_peer_gets_60s() -> None:
    peer = client(authenticated=False)
    request = event("pki::RequestCertificate", ticket="45e9")
    peer.receive_data(request, T0 + 5)
    (received,) = peer.events_received()
    assert isinstance(received, MessageReceived)
    assert received.message.method == "pki::RequestCertificate"
    assert received.message.params == {"ticket": "45e9"}
    assert peer.enrolling
    assert peer.get_timer() == T0 + 20             # heartbeat first now
    for now in (10, 20, 40, 59.9):
        peer.receive_data(GOLDEN_HEARTBEAT_FRAME, T0 + now)
        peer.handle_timer(T0 + now)
    assert peer.events_received() == []
    assert peer.get_timer() == T0 + 60
    peer.handle_timer(T0 + 60)
    assert peer.events_received() == [PeerTimedOut("anonymous")]


def test_enrollment_after_the_anonymous_deadline_is_too_late() -> None:
    peer = client(authenticated=False)
    peer.handle_timer(T0 + 10)
    peer.receive_data(event("pki::RequestCertificate", ticket=""), T0 + 11)
    assert peer.events_received() == [PeerTimedOut("anonymous")]


def test_authenticated_peer_requesting_a_certificate_is_not_enrolling() -> None:
    peer = client()
    peer.receive_data(event("pki::RequestCertificate", ticket=""), T0 + 1)
    assert methods(peer.events_received()) == ["pki::RequestCertificate"]
    assert not peer.enrolling
    assert peer.get_timer() == T0 + 20


def test_earliest_expired_deadline_names_the_reason() -> None:
    peer = server(authenticated=False)             # anonymous at +10, first byte at +15
    assert peer.get_timer() == T0 + 10
    peer.handle_timer(T0 + 1000)
    assert peer.events_received() == [PeerTimedOut("anonymous")]


# -- protocol errors -------------------------------------------------------------------

def test_framing_error_fails_and_later_data_is_ignored() -> None:
    peer = client()
    peer.receive_data(b"x:", T0 + 1)
    (failed,) = peer.events_received()
    assert isinstance(failed, ProtocolFailed) and isinstance(failed.error, FramingError)
    assert peer.state == State.CLOSED
    peer.receive_data(hello() + event(), T0 + 2)
    peer.handle_timer(T0 + 100)
    assert peer.events_received() == []
    assert peer.messages_received == 0
    assert peer.get_timer() is None


def test_events_before_the_error_are_delivered_in_order() -> None:
    peer = client()
    peer.receive_data(event()[:5], T0)
    chunk = event()[5:] + hello() + event("event::SetAcknowledgement") + b"01:x," + event()
    peer.receive_data(chunk, T0 + 1)
    events = peer.events_received()
    assert [type(e) for e in events] == [MessageReceived, HelloReceived, MessageReceived,
                                         ProtocolFailed]
    assert methods(events) == ["event::SetNextCheck", "event::SetAcknowledgement"]
    assert "leading zero" in str(events[-1].error)
    assert peer.messages_received == 3


def test_invalid_message_discards_the_rest_of_the_chunk() -> None:
    peer = client()
    peer.receive_data(event("a") + b"2:[]," + event("b") + b"1:{,", T0 + 1)
    events = peer.events_received()
    assert methods(events) == ["a"]
    assert isinstance(events[1], ProtocolFailed)
    assert isinstance(events[1].error, InvalidMessage)
    assert str(events[1].error) == "JSON-RPC message must be an object"
    assert len(events) == 2


def test_invalid_json_in_an_empty_frame_fails() -> None:
    peer = client()
    peer.receive_data(b"0:,", T0 + 1)
    (failed,) = peer.events_received()
    assert isinstance(failed.error, InvalidMessage)


def test_too_deep_message_fails() -> None:
    peer = client(max_depth=4)
    peer.receive_data(frame({"method": "m", "params": {"a": {"b": {"c": {}}}}}), T0 + 1)
    (failed,) = peer.events_received()
    assert isinstance(failed.error, InvalidMessage)


def test_oversized_message_fails_at_its_header() -> None:
    peer = client(authenticated=False)
    assert peer.max_message_size == 1 << 20
    peer.receive_data(b"1048577:", T0 + 1)
    (failed,) = peer.events_received()
    assert isinstance(failed.error, MessageTooLarge)


def test_max_message_size_forwards_to_the_decoder() -> None:
    peer = client()
    peer.max_message_size = 10
    assert peer.max_message_size == 10
    peer.receive_data(event(host="web01"), T0 + 1)
    (failed,) = peer.events_received()
    assert isinstance(failed.error, MessageTooLarge)


# -- messages --------------------------------------------------------------------------

@pytest.mark.parametrize(("params", "expected"), [
    ({"version": 21306, "capabilities": 1}, (21306, 1)),
    ({"version": 21306.0, "capabilities": 1.0}, (21306, 1)),
    ({"version": 21200}, (21200, 0)),
    ({}, (0, 0)),
    ({"version": "21306", "capabilities": True}, (0, 0)),
    ({"version": -5, "capabilities": -1.5}, (0, 0)),
    ({"version": None, "capabilities": [1]}, (0, 0)),
    ([], (0, 0)),
    ("x", (0, 0)),
])
def test_hello_parsing(params: object, expected: tuple[int, int]) -> None:
    peer = client()
    peer.receive_data(hello(params), T0 + 1)
    assert peer.events_received() == [HelloReceived(*expected)]
    assert (peer.remote_version, peer.remote_capabilities) == expected


def test_hello_without_params() -> None:
    peer = client()
    assert peer.remote_version is None and peer.remote_capabilities is None
    peer.receive_data(frame({"jsonrpc": "2.0", "method": "icinga::Hello"}), T0 + 1)
    assert peer.events_received() == [HelloReceived(0, 0)]


def test_message_without_method_is_still_delivered() -> None:
    peer = client()
    peer.receive_data(frame({"id": "7d0e", "jsonrpc": "2.0", "result": {}}), T0 + 1)
    (received,) = peer.events_received()
    assert isinstance(received, MessageReceived)
    assert received.message.method is None and received.message.id == "7d0e"


def test_golden_messages_through_the_peer() -> None:
    peer = server()
    chunk = b"".join(netstring.encode(raw) for raw, *_ in GOLDEN) + GOLDEN_HEARTBEAT_FRAME
    peer.receive_data(chunk, T0 + 1)
    events = peer.events_received()
    assert events[0] == HelloReceived(21306, 1)
    assert methods(events) == [method for _, method, *_ in GOLDEN[1:]]
    assert [e.message.raw for e in events[1:]] == [raw for raw, *_ in GOLDEN[1:]]
    assert peer.messages_received == len(GOLDEN) + 1
    assert peer.bytes_received == len(chunk)


def test_counters_include_framing_and_partial_reads() -> None:
    peer = client()
    data = event(host="web01")
    peer.receive_data(data[:7], T0 + 1)
    assert (peer.messages_received, peer.bytes_received) == (0, 7)
    peer.receive_data(data[7:] + GOLDEN_HEARTBEAT_FRAME, T0 + 2)
    assert peer.messages_received == 2
    assert peer.bytes_received == len(data) + len(GOLDEN_HEARTBEAT_FRAME)


def test_notification_frames_are_delivered_as_parsed() -> None:
    peer = client()
    payload = notification("event::SetNextCheck", {"host": "web01"}, ts=T0)
    peer.receive_data(netstring.encode(payload), T0 + 1)
    (received,) = peer.events_received()
    assert received.message.raw == payload
    assert received.message.ts == T0


# -- end of the connection ---------------------------------------------------------------

def test_clean_eof_closes_without_events() -> None:
    peer = client()
    peer.receive_data(event(), T0 + 1)
    peer.events_received()
    peer.receive_eof(T0 + 2)
    assert peer.state == State.CLOSED
    assert peer.events_received() == []
    assert peer.get_timer() is None


def test_eof_inside_a_frame_is_a_framing_failure() -> None:
    peer = client()
    peer.receive_data(event()[:-1], T0 + 1)
    peer.receive_eof(T0 + 2)
    (failed,) = peer.events_received()
    assert isinstance(failed.error, FramingError)
    assert peer.state == State.CLOSED


def test_eof_while_waiting_closes() -> None:
    peer = server()
    peer.receive_eof(T0 + 1)
    assert peer.state == State.CLOSED
    assert peer.events_received() == []


def test_local_close_makes_everything_a_no_op() -> None:
    peer = client()
    peer.close()
    assert peer.state == State.CLOSED
    assert peer.get_timer() is None
    peer.receive_data(hello(), T0 + 1)
    peer.handle_timer(T0 + 1000)
    peer.receive_eof(T0 + 1001)
    peer.close()
    assert peer.events_received() == []
    assert peer.data_to_send() == []


def test_events_received_swaps_the_list_out() -> None:
    peer = client()
    peer.receive_data(event(), T0 + 1)
    first = peer.events_received()
    assert len(first) == 1
    peer.receive_data(event(), T0 + 2)
    assert len(peer.events_received()) == 1
    assert len(first) == 1
