"""A save run every few seconds on the event loop, and once more at close.

The node's small stores on disk (learned host ownership, runtime objects) each write their
file when something changed, at most once per interval, from a task of their own; a
failure is logged and tried again at the next interval, never raised into the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

__all__ = ["PeriodicSave"]

log = logging.getLogger("router.node")


class PeriodicSave:
    """``save()`` every ``interval`` s and at ``close()``; ``errors`` are logged as
    "cannot save ``what``: ..."."""

    def __init__(self, save: Callable[[], Awaitable[None]], interval: float, what: str,
                 errors: tuple[type[BaseException], ...] = (OSError,)) -> None:
        self._save = save
        self.interval = interval
        self.what = what
        self.errors = errors
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.save_logged()

    async def save_logged(self) -> None:
        try:
            await self._save()
        except self.errors as exc:
            log.error("cannot save %s: %s", self.what, exc)

    async def close(self) -> None:
        """Stop the timer and save one last time."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.save_logged()
