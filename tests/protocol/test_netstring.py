"""Netstring framing: every rule of Icinga's ``NetString::ReadStringFromStream``."""

from __future__ import annotations

import pytest

from router.errors import FramingError, MessageTooLarge
from router.protocol import netstring
from router.protocol.netstring import MAX_LENGTH_DIGITS, NetstringDecoder

HEARTBEAT = b'{"jsonrpc":"2.0","method":"event::Heartbeat","params":{}}'
HEARTBEAT_FRAME = b'57:{"jsonrpc":"2.0","method":"event::Heartbeat","params":{}},'
UNLIMITED = -1


def feed_whole(data: bytes, max_size: int = UNLIMITED) -> tuple[list[bytes], int]:
    decoder = NetstringDecoder(max_size)
    return decoder.feed(data), decoder.buffered


def feed_bytewise(data: bytes, max_size: int = UNLIMITED) -> tuple[list[bytes], int]:
    decoder = NetstringDecoder(max_size)
    frames: list[bytes] = []
    for index in range(len(data)):
        frames += decoder.feed(data[index:index + 1])
    return frames, decoder.buffered


def feed_with_trailing_partial(data: bytes, max_size: int = UNLIMITED) -> tuple[list[bytes], int]:
    """Feed ``data`` plus the start of another frame, which must stay buffered."""
    decoder = NetstringDecoder(max_size)
    frames = decoder.feed(data + b"5:ab")
    assert decoder.buffered == 4
    frames += decoder.feed(b"cde,")
    assert frames[-1] == b"abcde"
    return frames[:-1], decoder.buffered


FEEDERS = [feed_whole, feed_bytewise, feed_with_trailing_partial]


@pytest.fixture(params=FEEDERS, ids=lambda feeder: feeder.__name__)
def feed(request: pytest.FixtureRequest):
    return request.param


# -- encoding --------------------------------------------------------------------------

def test_encode_matches_the_golden_framing_example() -> None:
    assert netstring.encode(HEARTBEAT) == HEARTBEAT_FRAME


def test_encode_counts_bytes_not_characters() -> None:
    payload = '{"output":"Grüße"}'.encode()
    assert netstring.encode(payload) == b"%d:%b," % (len(payload), payload)
    assert netstring.encode(payload).startswith(b"20:")


def test_encode_empty_payload() -> None:
    assert netstring.encode(b"") == b"0:,"


def test_max_length_digits_is_icingas_nine() -> None:
    assert MAX_LENGTH_DIGITS == 9


# -- legal streams, fed three ways ------------------------------------------------------

def test_single_frame(feed) -> None:
    assert feed(HEARTBEAT_FRAME) == ([HEARTBEAT], 0)


def test_many_frames_in_order(feed) -> None:
    payloads = [b"a", b"", b"bc", HEARTBEAT, b"x" * 1000, b"1:2,"]
    data = b"".join(netstring.encode(p) for p in payloads)
    assert feed(data) == (payloads, 0)


def test_empty_payload_is_legal_framing(feed) -> None:
    assert feed(b"0:,0:,") == ([b"", b""], 0)


def test_payload_may_contain_framing_characters(feed) -> None:
    assert feed(b"5:1:a,,,") == ([b"1:a,,"], 0)


def test_nine_digit_length_is_accepted_and_waits_for_the_body() -> None:
    decoder = NetstringDecoder(UNLIMITED)
    assert decoder.feed(b"999999999:abc") == []
    assert decoder.buffered == 13


def test_trailing_partial_frame_is_buffered() -> None:
    decoder = NetstringDecoder(UNLIMITED)
    assert decoder.feed(b"1:a,2:b") == [b"a"]
    assert decoder.buffered == 3
    assert decoder.feed(b"c,3") == [b"bc"]
    assert decoder.buffered == 1
    assert decoder.feed(b":xyz,") == [b"xyz"]
    assert decoder.buffered == 0


def test_large_body_arriving_in_pieces() -> None:
    payload = bytes(range(256)) * 4096                 # 1 MiB
    frame = netstring.encode(payload)
    decoder = NetstringDecoder(UNLIMITED)
    frames: list[bytes] = []
    for start in range(0, len(frame), 65536):
        frames += decoder.feed(frame[start:start + 65536])
    assert frames == [payload]
    assert decoder.buffered == 0


def test_many_small_frames_in_one_feed_with_pending_buffer() -> None:
    decoder = NetstringDecoder(UNLIMITED)
    frame = netstring.encode(HEARTBEAT)
    assert decoder.feed(frame[:10]) == []
    frames = decoder.feed(frame[10:] + frame * 50_000 + frame[:3])
    assert len(frames) == 50_001
    assert all(f == HEARTBEAT for f in frames)
    assert decoder.buffered == 3


def test_payloads_are_immutable_bytes_whatever_the_input_type() -> None:
    for data in (b"1:a,", bytearray(b"1:a,"), memoryview(b"1:a,")):
        frames = NetstringDecoder(UNLIMITED).feed(data)
        assert frames == [b"a"] and type(frames[0]) is bytes
    decoder = NetstringDecoder(UNLIMITED)
    decoder.feed(b"1:")
    assert [type(f) for f in decoder.feed(b"a,")] == [bytes]


# -- the limit -----------------------------------------------------------------------

def test_limit_is_checked_as_soon_as_the_colon_arrives() -> None:
    decoder = NetstringDecoder(1000)
    with pytest.raises(MessageTooLarge):
        decoder.feed(b"20000000:")


def test_limit_is_checked_when_the_header_arrives_bytewise() -> None:
    decoder = NetstringDecoder(1000)
    for byte in b"1001":
        assert decoder.feed(bytes([byte])) == []
    with pytest.raises(MessageTooLarge, match="Max data length exceeded"):
        decoder.feed(b":")


def test_length_equal_to_limit_is_accepted() -> None:
    assert NetstringDecoder(3).feed(b"3:abc,") == [b"abc"]
    with pytest.raises(MessageTooLarge):
        NetstringDecoder(3).feed(b"4:")


def test_negative_limit_means_only_the_nine_digit_ceiling() -> None:
    assert NetstringDecoder(-1).feed(b"999999999:") == []


def test_max_size_is_writable() -> None:
    decoder = NetstringDecoder(2)
    assert decoder.feed(b"2:ab,") == [b"ab"]
    decoder.max_size = 5
    assert decoder.feed(b"5:abcde,") == [b"abcde"]
    decoder.max_size = 1
    with pytest.raises(MessageTooLarge):
        decoder.feed(b"2:ab,")


# -- broken prefixes -------------------------------------------------------------------

@pytest.mark.parametrize("data", [b"01:a,", b"00:,", b"0123:abc,"])
def test_leading_zero(feed, data: bytes) -> None:
    with pytest.raises(FramingError, match="leading zero"):
        feed(data)


def test_leading_zero_is_noticed_before_the_colon() -> None:
    with pytest.raises(FramingError, match="leading zero"):
        NetstringDecoder(UNLIMITED).feed(b"01")


def test_tenth_digit(feed) -> None:
    with pytest.raises(FramingError, match="must not exceed 9"):
        feed(b"1000000000:" + b"x" * 10 + b",")


def test_tenth_digit_is_noticed_before_the_colon() -> None:
    decoder = NetstringDecoder(UNLIMITED)
    assert decoder.feed(b"123456789") == []
    with pytest.raises(FramingError, match="must not exceed 9"):
        decoder.feed(b"0")


@pytest.mark.parametrize("data", [b":", b":,", b"0:,:abc,"])
def test_colon_without_digits(feed, data: bytes) -> None:
    with pytest.raises(FramingError, match="no length specifier"):
        feed(data)


@pytest.mark.parametrize("data", [
    b"1a:b,", b"a:b,", b" 1:a,", b"+1:a,", b"-1:a,", b"1_0:0123456789,", b"1 :a,",
    b"\xd9\xa3:abc,",           # ARABIC-INDIC DIGIT THREE: not an ASCII digit
    b"GET / HTTP/1.1\r\n",
])
def test_non_digit_in_prefix(feed, data: bytes) -> None:
    with pytest.raises(FramingError, match="missing :"):
        feed(data)


def test_non_digit_is_noticed_before_any_colon() -> None:
    decoder = NetstringDecoder(UNLIMITED)
    assert decoder.feed(b"12") == []
    with pytest.raises(FramingError):
        decoder.feed(b"x")


# -- broken trailer -------------------------------------------------------------------

@pytest.mark.parametrize("data", [b"1:ab", b"1:a;", b"0:x", b"3:abc\n", b"1:a,1:bc"])
def test_missing_comma(feed, data: bytes) -> None:
    with pytest.raises(FramingError, match="missing ,"):
        feed(data)


def test_missing_comma_waits_for_the_byte_after_the_body() -> None:
    decoder = NetstringDecoder(UNLIMITED)
    assert decoder.feed(b"3:abc") == []
    with pytest.raises(FramingError):
        decoder.feed(b"d")


# -- after an error --------------------------------------------------------------------

@pytest.mark.parametrize(("bad", "error"), [(b"x", FramingError), (b"9:", MessageTooLarge)])
def test_decoder_stays_failed(bad: bytes, error: type[Exception]) -> None:
    decoder = NetstringDecoder(5)
    with pytest.raises(error):
        decoder.feed(bad)
    assert decoder.buffered == 0
    for _ in range(2):
        with pytest.raises(error):
            decoder.feed(b"1:a,")


def test_feed_into_keeps_the_frames_before_the_error() -> None:
    decoder = NetstringDecoder(UNLIMITED)
    decoder.feed(b"1:")
    frames: list[bytes] = []
    with pytest.raises(FramingError):
        decoder.feed_into(b"a,2:bc,x:", frames)
    assert frames == [b"a", b"bc"]


def test_feed_into_fast_path_keeps_the_frames_before_the_error() -> None:
    frames: list[bytes] = []
    with pytest.raises(MessageTooLarge):
        NetstringDecoder(2).feed_into(b"1:a,2:bc,3:", frames)
    assert frames == [b"a", b"bc"]
