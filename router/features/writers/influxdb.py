"""InfluxDB 1.x: line protocol over the HTTP API, with aiohttp's client.

Points as Icinga's InfluxdbWriter makes them (``formats.influx_lines``), except the
timestamp: nanoseconds of ``execution_end`` (Icinga sends whole seconds), so two results
of one service never merge into one point and a batch sent again after a crash or a
timeout overwrites the same points instead of adding new ones.

Answers: 204 written; 400 means InfluxDB refused some lines (it writes the valid lines of
the same request): counted as ``refused_point`` and the batch is done, because sending it
again cannot succeed; 404 (no database) makes ``open`` create it; 401/403 and 5xx are
retried with backoff.

A batch is posted in requests of at most ``MAX_REQUEST_BYTES`` of lines: ``flush_threshold``
counts results, and a backlog of results with hundreds of perfdata values each made one
request beyond influxd's 25 MB ``max-body-size``, answered 413 on every retry, which
blocked the queue for good (review). A 413 all the same (a smaller limit configured)
halves the request, down to one line; a single line over the limit is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import aiohttp

from router.config import WriterSpec
from router.features.writers.base import Batch, HAView, WriterBackendError
from router.features.writers.formats import influx_lines
from router.features.writers.lines import LineBackendBase

__all__ = ["InfluxdbBackend", "MAX_REQUEST_BYTES", "request_bodies"]

log = logging.getLogger("router.writers")

#: Lines per HTTP request, at most (influxd's default ``max-body-size`` is 25 MB).
MAX_REQUEST_BYTES = 4 << 20


def request_bodies(body: bytes, limit: int) -> list[bytes]:
    """``body`` cut at line ends into parts of at most ``limit`` bytes (a single longer
    line is a part of its own)."""
    parts: list[bytes] = []
    start, n = 0, len(body)
    while start < n:
        end = start + limit
        if end >= n:
            parts.append(body[start:])
            break
        cut = body.rfind(b"\n", start, end)
        if cut < start:                         # one line longer than the limit
            cut = body.find(b"\n", end)
            if cut < 0:
                parts.append(body[start:])
                break
        parts.append(body[start:cut + 1])
        start = cut + 1
    return parts


class InfluxdbBackend(LineBackendBase):
    """``WriterBackend`` for the InfluxDB 1.x HTTP API."""

    def __init__(self, spec: WriterSpec, node_name: str, ha: HAView,
                 count_error: Callable[[str], None]) -> None:
        super().__init__(spec, count_error)
        self._session: aiohttp.ClientSession | None = None
        self._base = spec.url.rstrip("/")
        self._auth = (aiohttp.BasicAuth(spec.username, spec.password or "")
                      if spec.username is not None else None)

    async def open(self) -> None:
        await self.close()
        timeout = aiohttp.ClientTimeout(total=self.spec.timeout)
        self._session = aiohttp.ClientSession(timeout=timeout, auth=self._auth)
        try:
            async with self._session.get(f"{self._base}/ping") as resp:
                if resp.status not in (200, 204):
                    raise WriterBackendError(f"http_{resp.status}",
                                             f"InfluxDB {self._base}/ping: HTTP {resp.status}")
            await self._create_database()
        except aiohttp.ClientError as e:
            raise WriterBackendError("connect", f"InfluxDB {self._base}: {e}") from e

    async def _create_database(self) -> None:
        assert self._session is not None
        query = f'CREATE DATABASE "{self.spec.database.replace(chr(34), "")}"'
        async with self._session.post(f"{self._base}/query", data={"q": query}) as resp:
            if resp.status in (401, 403):
                raise WriterBackendError("auth", f"InfluxDB {self._base}: HTTP {resp.status}")
            if resp.status != 200:
                # Without the right to create databases the database may still exist:
                # the write answers 404 if not.
                log.warning("writer %s: CREATE DATABASE answered HTTP %d", self.name,
                            resp.status)

    def lines(self, batch: Batch) -> bytes:
        template_host, template_service = self.spec.host_template, self.spec.service_template
        out: list[str] = []
        for view in self._views(batch):
            out += influx_lines(view, template_service if view.service else template_host,
                                thresholds=self.spec.enable_send_thresholds,
                                metadata=self.spec.enable_send_metadata,
                                on_invalid=self._invalid_perfdata, names=self._names)
        return "".join(out).encode("utf-8", "replace")

    async def write(self, batch: Batch) -> None:
        if self._session is None:
            raise WriterBackendError("connect", "not connected")
        for body in request_bodies(self.lines(batch), MAX_REQUEST_BYTES):
            await self._post(body)

    async def _post(self, body: bytes) -> None:
        session = self._session
        if session is None:
            raise WriterBackendError("connect", "not connected")
        params = {"db": self.spec.database, "precision": "ns"}
        try:
            async with session.post(f"{self._base}/write", params=params, data=body) as resp:
                if resp.status in (200, 204):
                    return
                text = (await resp.text())[:300]
        except aiohttp.ClientError as e:
            raise WriterBackendError("send", f"InfluxDB {self._base}: {e}") from e
        if resp.status == 413:
            parts = request_bodies(body, max(1, len(body) // 2))
            if len(parts) > 1:
                for part in parts:
                    await self._post(part)
                return
            self._count_error("refused_point")
            log.warning("writer %s: InfluxDB refused a line of %d bytes as too large: %s",
                        self.name, len(body), text)
            return
        if resp.status == 400:
            self._count_error("refused_point")
            log.warning("writer %s: InfluxDB refused points of a batch (the valid ones are "
                        "written): %s", self.name, text)
            return
        if resp.status == 404:
            raise WriterBackendError("database", f"InfluxDB: {text}")
        if resp.status in (401, 403):
            raise WriterBackendError("auth", f"InfluxDB: HTTP {resp.status} {text}")
        raise WriterBackendError(f"http_{resp.status}", f"InfluxDB: HTTP {resp.status} {text}")

    async def committed_position(self) -> int | None:
        return None

    async def holds_role(self, now: float) -> bool:
        return True

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            try:
                await session.close()
            except Exception:       # noqa: BLE001 - close() must not raise
                pass
