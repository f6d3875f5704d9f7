"""Whether an inbound connection's first bytes hold its first TLS record whole.

A TLS client opens with a ClientHello in one handshake record: a 5-byte header (content
type 22, version, length) and up to 2^14 bytes of it (RFC 8446 section 5.1). The
transport waits for that record before it makes the connection a TLS session, takes a
handshake slot or runs a handshake step (router.transport.connection), so a flood of
connections that send a header, or a few bytes, and then stall (issue 21) costs the node
their bytes, not ~17 KB and a handshake step each. Anything that is not a handshake
record, or announces more than a record may hold, is handed to OpenSSL at once: it
refuses it as it always did.
"""

from __future__ import annotations

__all__ = ["HANDSHAKE", "HEADER_SIZE", "MAX_CIPHERTEXT", "first_record_complete",
           "gather_first_record"]

#: ContentType handshake (RFC 8446 section 5.1; the same in TLS 1.0-1.2).
HANDSHAKE = 22
HEADER_SIZE = 5
#: The largest record payload a peer may send (TLSCiphertext: 2^14 + 256 in TLS 1.3,
#: 2^14 + 2048 in TLS 1.2); a header announcing more is not waited for.
MAX_CIPHERTEXT = 2**14 + 2048


def first_record_complete(data: bytes | memoryview) -> bool:
    """True when ``data`` (a connection's first bytes, not empty) holds its first TLS
    record whole, or is something OpenSSL should judge now: not a handshake record, or a
    length no record can have. False while a handshake record's header or payload is
    still incomplete."""
    if data[0] != HANDSHAKE:
        return True
    if len(data) < HEADER_SIZE:
        return False
    length = int.from_bytes(data[3:HEADER_SIZE], "big")
    return length > MAX_CIPHERTEXT or len(data) >= HEADER_SIZE + length


def gather_first_record(held: bytearray | None, data: memoryview
                        ) -> tuple[bytearray | None, memoryview | None]:
    """Add ``data`` (a read) to ``held`` (the connection's first bytes so far, None before
    any): ``(None, all the bytes)`` once :func:`first_record_complete`, else ``(what to
    hold, None)``. A stalled hello costs its connection only these bytes."""
    if held is not None:
        held += data                    # a bytearray: no copy of what came before
        data = memoryview(held)
    if first_record_complete(data):
        return None, data
    return (bytearray(data) if held is None else held), None
