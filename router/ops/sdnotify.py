"""systemd's notification protocol (``Type=notify``) on a plain datagram socket.

``sd_notify(3)``: the service manager passes a Unix datagram socket in
``NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract namespace); the service sends
newline-separated ``KEY=value`` assignments. We send:

* ``READY=1`` once the listeners are up (systemd orders dependants after it, and
  ``systemctl start`` returns only then);
* ``RELOADING=1`` with ``MONOTONIC_USEC`` when a reload starts and ``READY=1`` when it is
  done, so ``systemctl reload`` waits for the outcome;
* ``STOPPING=1`` when a drain starts;
* ``STATUS=...``: one line ``systemctl status`` shows;
* ``WATCHDOG=1`` every half ``WATCHDOG_USEC`` (``WatchdogSec=``), from a timer on the
  event loop: a loop that hangs stops the pings, and systemd restarts the service.

No dependency: a few lines of ``socket``. Outside systemd (no ``NOTIFY_SOCKET``)
:meth:`SystemdNotifier.from_environ` returns None and nothing is sent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping

__all__ = ["SystemdNotifier"]

log = logging.getLogger("router.systemd")


class SystemdNotifier:
    """Sends notifications to the service manager's socket ``address``."""

    def __init__(self, address: str, watchdog_usec: int | None = None) -> None:
        self.address = address
        #: Seconds between watchdog pings (half of WatchdogSec), None without a watchdog.
        self.watchdog_interval = watchdog_usec / 2e6 if watchdog_usec else None
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._watchdog: asyncio.TimerHandle | None = None
        self.sent = 0
        self.errors = 0

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier | None:
        """A notifier for ``NOTIFY_SOCKET`` (None when not run by systemd). The watchdog
        is on when ``WATCHDOG_USEC`` is set and ``WATCHDOG_PID``, if set, is ours."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if not address or not (address.startswith("/") or address.startswith("@")):
            return None
        usec: int | None = None
        pid = env.get("WATCHDOG_PID")
        if env.get("WATCHDOG_USEC") and (not pid or pid == str(os.getpid())):
            try:
                usec = int(env["WATCHDOG_USEC"])
            except ValueError:
                log.warning("ignoring WATCHDOG_USEC=%r: not a number", env["WATCHDOG_USEC"])
        return cls(address, usec if usec and usec > 0 else None)

    def send(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines; False (logged, counted) when the socket refuses."""
        text = "\n".join(f"{key}={value}" for key, value in fields.items())
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            self._sock.sendto(text.encode("utf-8", "replace"), target)
        except OSError as exc:
            self.errors += 1
            log.warning("cannot notify systemd at %s: %s", self.address, exc)
            return False
        self.sent += 1
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY=1, STATUS=status, MAINPID=os.getpid())

    def reloading(self) -> bool:
        return self.send(RELOADING=1, STATUS="reloading the configuration",
                         MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def stopping(self) -> bool:
        return self.send(STOPPING=1, STATUS="draining queues and closing sessions")

    def status(self, text: str) -> bool:
        return self.send(STATUS=text)

    # -- watchdog

    def start_watchdog(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Ping ``WATCHDOG=1`` from ``loop`` every :attr:`watchdog_interval`; False when
        systemd asked for no watchdog."""
        if self.watchdog_interval is None:
            return False
        self._ping(loop)
        return True

    def _ping(self, loop: asyncio.AbstractEventLoop) -> None:
        self.send(WATCHDOG=1)
        assert self.watchdog_interval is not None
        self._watchdog = loop.call_later(self.watchdog_interval, self._ping, loop)

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._sock.close()
