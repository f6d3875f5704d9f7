"""Sans-I/O protocol core: framing, JSON-RPC messages and the peer state machine.

Nothing in this package may import asyncio, ssl or socket (tests/test_sourcecode.py
enforces it): it takes bytes and ``now`` in and gives events and bytes out.
"""
