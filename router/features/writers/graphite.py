"""Graphite: carbon's plaintext protocol over TCP (``path value timestamp\\n``).

Names and lines as Icinga's GraphiteWriter makes them (``formats.graphite_lines``).
Carbon never answers on this port, so a batch counts as written once the kernel took all
of its bytes (the transport's buffer is empty) and the connection is still open; a
connection carbon closed is noticed (EOF on the read side) before the next batch, and
that batch is sent again on a new connection. Re-sending is harmless: a line with the same path and timestamp lands in the
same whisper slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from router.config import WriterSpec
from router.features.writers.base import Batch, HAView, WriterBackendError
from router.features.writers.formats import graphite_lines
from router.features.writers.lines import LineBackendBase

__all__ = ["GraphiteBackend"]


class GraphiteBackend(LineBackendBase):
    """``WriterBackend`` for carbon-cache / carbon-relay (plaintext line receiver)."""

    def __init__(self, spec: WriterSpec, node_name: str, ha: HAView,
                 count_error: Callable[[str], None]) -> None:
        super().__init__(spec, count_error)
        self.node_name = node_name
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        await self.close()
        try:
            self._reader, self._writer = await asyncio.open_connection(
                self.spec.host, self.spec.port)
        except OSError as e:
            raise WriterBackendError(
                "connect", f"carbon {self.spec.host}:{self.spec.port}: {e}") from e
        # drain() returns once the transport's buffer is at its low-water mark: with the
        # default 16-64 KiB, a batch was confirmed with its last lines still in our
        # buffer, and lost with the process (review: 53 of 3 775 results). With 0 it
        # returns once the kernel took every byte (still bounded by ``timeout``).
        self._writer.transport.set_write_buffer_limits(0)

    def lines(self, batch: Batch) -> bytes:
        out: list[str] = []
        for view in self._views(batch):
            out += graphite_lines(view, self.spec.host_name_template,
                                  self.spec.service_name_template,
                                  thresholds=self.spec.enable_send_thresholds,
                                  metadata=self.spec.enable_send_metadata,
                                  on_invalid=self._invalid_perfdata, names=self._names)
        return "".join(out).encode("utf-8", "replace")

    async def write(self, batch: Batch) -> None:
        reader, writer = self._reader, self._writer
        if reader is None or writer is None:
            raise WriterBackendError("connect", "not connected")
        if reader.at_eof() or writer.is_closing():
            raise WriterBackendError("closed", "carbon closed the connection")
        data = self.lines(batch)
        try:
            writer.write(data)
            await writer.drain()
        except OSError as e:
            raise WriterBackendError("send", f"carbon: {e}") from e
        # Carbon sends nothing: data or EOF here means the connection is gone.
        await asyncio.sleep(0)
        if reader.at_eof():
            raise WriterBackendError("closed", "carbon closed the connection")

    async def committed_position(self) -> int | None:
        return None

    async def holds_role(self, now: float) -> bool:
        return True

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                async with asyncio.timeout(2.0):
                    await writer.wait_closed()
            except (OSError, TimeoutError):
                pass
