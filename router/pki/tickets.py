"""Checking enrollment tickets, with the expected tickets of recent CNs kept.

A ticket is PBKDF2-HMAC-SHA1 over the CN with 50 000 rounds (:func:`router.pki.ticket`),
about 11 ms of CPU: a node that asks again on every reconnect should not cost that each
time. The comparison is constant time (Icinga 2.13.3+).
"""

from __future__ import annotations

import hmac
from typing import Final

from router.pki.certs import ticket

__all__ = ["TICKET_CACHE_SIZE", "TicketChecker"]

TICKET_CACHE_SIZE: Final = 4096


class TicketChecker:
    """``check(cn, salt, given)``; remembers the last ``size`` expected tickets."""

    def __init__(self, size: int = TICKET_CACHE_SIZE) -> None:
        self.size = size
        self._expected: dict[tuple[str, str], str] = {}
        #: PBKDF2 computations done (the cache's misses)
        self.computed = 0

    def check(self, cn: str, salt: str, given: str) -> bool:
        key = (salt, cn)
        expected = self._expected.get(key)
        if expected is None:
            expected = ticket(cn, salt)
            self.computed += 1
            if len(self._expected) >= self.size:
                self._expected.pop(next(iter(self._expected)))     # oldest first
            self._expected[key] = expected
        return hmac.compare_digest(expected.encode(), given.encode())
