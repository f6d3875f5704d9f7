"""Sans-I/O protocol core: framing, JSON-RPC messages and the peer state machine.

Nothing in this package may import asyncio, ssl or socket (tests/test_sourcecode.py
enforces it): it takes bytes and ``now`` in and gives events and bytes out. The transport
feeds it decrypted bytes and the time, writes the bytes it hands back and acts on its
events; nothing here reads a clock, touches a socket or starts a timer.

Modules:

* :mod:`~router.protocol.netstring` -- ``<length>:<payload>,`` framing, byte-exact with
  Icinga 2's reader (:class:`~router.protocol.netstring.NetstringDecoder`, ``encode``);
* :mod:`~router.protocol.jsonrpc` -- parsing a payload once into a
  :class:`~router.protocol.jsonrpc.Message` and encoding notifications, answers and
  relayed copies;
* :mod:`~router.protocol.peer` -- :class:`~router.protocol.peer.PeerProtocol`, the
  per-connection state machine (Hello, heartbeat, close deadlines);
* :mod:`~router.protocol.events` -- the events that state machine emits;
* :mod:`~router.protocol.answers` -- the messages a node originates in answer to a peer;
* :mod:`~router.protocol.tlsrecord` -- whether a connection's first bytes hold its first
  TLS record whole (the transport waits for it before making a TLS session).

This module imports none of them (import them by name: ``from router.protocol import
jsonrpc``); ``__all__`` lists the submodules, so ``from router.protocol import *`` loads
them on demand.
"""

__all__ = ["answers", "events", "jsonrpc", "netstring", "peer", "tlsrecord"]
