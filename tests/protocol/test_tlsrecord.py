"""router.protocol.tlsrecord: when an inbound connection's first TLS record is whole."""

from __future__ import annotations

import pytest

from router.protocol.tlsrecord import (MAX_CIPHERTEXT, first_record_complete,
                                       gather_first_record)


def record(length: int, payload: bytes = b"") -> bytes:
    return b"\x16\x03\x01" + length.to_bytes(2, "big") + payload


@pytest.mark.parametrize("data", [
    b"\x16",                                   # a header begun
    b"\x16\x03\x01\x02",                       # a header not yet whole
    record(512),                               # the header of a ClientHello that stalls
    record(512, b"\x01" * 511),                # a byte short
])
def test_an_unfinished_handshake_record_is_waited_for(data: bytes) -> None:
    assert not first_record_complete(data)
    assert not first_record_complete(memoryview(data))    # the read buffer's view


@pytest.mark.parametrize("data", [
    record(512, b"\x01" * 512),                # whole
    record(512, b"\x01" * 600),                # whole, and the next record begun
    record(0),                                 # empty: OpenSSL refuses it
    record(MAX_CIPHERTEXT + 1),                # longer than any record: not waited for
    b"GET / HTTP/1.1\r\n",                     # not TLS: OpenSSL refuses it at once
    b"\x80",                                   # an SSLv2-style hello: OpenSSL's to judge
])
def test_a_whole_record_or_anything_else_goes_to_openssl_now(data: bytes) -> None:
    assert first_record_complete(data)


def test_a_real_client_hello_is_one_whole_record() -> None:
    """What a TLS client sends first is one handshake record, whole in one read."""
    import ssl

    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ctx.wrap_bio(incoming, outgoing, server_hostname="master")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    hello = outgoing.read()
    assert first_record_complete(hello)
    assert not first_record_complete(hello[:-1])
    assert not first_record_complete(hello[:5])


def test_reads_are_gathered_until_the_first_record_is_whole() -> None:
    whole = record(8, b"12345678")
    held, out = gather_first_record(None, memoryview(whole[:3]))
    assert out is None and held == whole[:3]
    held, out = gather_first_record(held, memoryview(whole[3:9]))
    assert out is None and held == whole[:9]
    held, out = gather_first_record(held, memoryview(whole[9:] + b"next"))
    assert held is None and out is not None and bytes(out) == whole + b"next"
    # one read with the whole record: nothing held, the read itself handed on
    read = memoryview(whole)
    held, out = gather_first_record(None, read)
    assert held is None and out is read
