"""The cluster listener (router.transport.listener) on loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket

import pytest

from router.transport import listener as listener_mod
from router.node.texts import RateLimitedLog
from router.transport.listener import Listener as _Listener
from router.transport.turnbudget import TurnBudget


def Listener(loop, factory, **kwargs) -> _Listener:  # noqa: N802 - reads as the class
    """The listener with a rate-limited log as the node gives it."""
    ratelog = RateLimitedLog(logging.getLogger("router.transport"))
    return _Listener(loop, factory, ratelog=ratelog, **kwargs)


class Counting(asyncio.Protocol):
    made: list[Counting] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        Counting.made.append(self)


def _connect(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        socks.append(s)
    return socks


async def _until(predicate, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.fixture(autouse=True)
def _reset() -> None:
    Counting.made = []


@contextlib.asynccontextmanager
async def _driven_by_hand(**kwargs):
    """A listener on 127.0.0.1 whose accepts the test drives (``_on_readable``); yields
    it, its socket and its port; closes it after."""
    loop = asyncio.get_running_loop()
    lst = Listener(loop, Counting, **kwargs)
    await lst.start("127.0.0.1", 0)
    sock = lst.sockets[0]
    loop.remove_reader(sock.fileno())
    try:
        yield lst, sock, sock.getsockname()[1]
    finally:
        lst.close()
        await lst.wait_closed()


def test_accepts_at_most_per_turn_then_the_rest_on_later_turns(run) -> None:
    async def body() -> None:
        async with _driven_by_hand(per_turn=4) as (lst, sock, port):
            clients = await asyncio.to_thread(_connect, port, 10)
            try:
                lst._on_readable(sock)              # one readiness: four, not ten
                assert len(lst._tasks) == 4
                await _until(lambda: len(Counting.made) == 4)
                lst.serve([sock])                   # back under the loop: the rest come
                await _until(lambda: len(Counting.made) == 10)
                assert lst.errors == {}
            finally:
                for c in clients:
                    c.close()

    run(body())


def test_a_turn_whose_admission_budget_is_spent_accepts_one_connection(run) -> None:
    async def body() -> None:
        budget = TurnBudget(asyncio.get_running_loop(), budget=0.001)
        async with _driven_by_hand(per_turn=16, budget=budget) as (lst, sock, port):
            clients = await asyncio.to_thread(_connect, port, 6)
            try:
                budget.charge(0.002)                # this turn already spent its budget
                lst._on_readable(sock)
                assert len(lst._tasks) == 1         # one, so accepting never starves
                await asyncio.sleep(0)              # the next turn: the budget is back
                await asyncio.sleep(0)
                assert not budget.exhausted
                lst._on_readable(sock)              # the other five in one turn
                await _until(lambda: len(Counting.made) == 6)
            finally:
                for c in clients:
                    c.close()

    run(body())


def test_a_peer_gone_before_sending_is_closed_at_accept_and_counted(run, caplog) -> None:
    async def body() -> None:
        async with _driven_by_hand() as (lst, sock, port):
            gone = await asyncio.to_thread(_connect, port, 3)
            for c in gone:
                c.close()                           # connect and close: a churn flood's
            waiting = await asyncio.to_thread(_connect, port, 1)
            talking = await asyncio.to_thread(_connect, port, 1)
            talking[0].sendall(b"\x16\x03\x01")
            await asyncio.sleep(0.1)                # (the FINs and bytes have arrived)
            try:
                with caplog.at_level(logging.WARNING, logger="router.transport"):
                    lst._on_readable(sock)
                assert lst.rejected == {"closed_before_data": 3}
                await _until(lambda: len(Counting.made) == 2)   # the silent one, the talker
                assert len([r for r in caplog.records
                            if "closed without sending a byte" in r.getMessage()]) == 1
            finally:
                for c in waiting + talking:
                    c.close()

    run(body())


class FailingSocket(socket.socket):
    """A real listening socket whose next ``failures`` accepts fail with ``err``."""

    failures = 0
    err = errno.EMFILE

    def accept(self):  # type: ignore[override]
        if self.failures:
            self.failures -= 1
            raise OSError(self.err, os.strerror(self.err))
        return super().accept()


async def _failing_once(err: int, clients: int, check) -> None:
    """A listener on a FailingSocket whose first accept fails with ``err``; ``clients``
    connect; ``check(listener, sock)`` runs (awaited) while they are connected."""
    loop = asyncio.get_running_loop()
    sock = FailingSocket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    sock.err, sock.failures = err, 1
    lst = Listener(loop, Counting)
    lst.serve([sock])
    conns = await asyncio.to_thread(_connect, sock.getsockname()[1], clients)
    try:
        await check(lst, sock)
    finally:
        for c in conns:
            c.close()
        lst.close()
        await lst.wait_closed()


def test_out_of_descriptors_pauses_accepting_counts_and_comes_back(
        run, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(listener_mod, "ERROR_PAUSE", 0.2)

    async def check(lst: Listener, sock: socket.socket) -> None:
        await _until(lambda: lst.errors.get("emfile") == 1)
        assert sock in lst._paused               # not polled: no busy loop on it
        assert "cannot accept connections" in caplog.text
        assert "Too many open files" in caplog.text
        await _until(lambda: len(Counting.made) == 3)   # after the pause, all of them
        assert sock not in lst._paused
        assert lst.errors == {"emfile": 1}

    run(_failing_once(errno.EMFILE, 3, check))


def test_a_connection_reset_in_the_backlog_is_counted_and_skipped(run) -> None:
    async def check(lst: Listener, sock: socket.socket) -> None:
        await _until(lambda: len(Counting.made) == 2)
        assert lst.errors == {"econnaborted": 1}
        assert not lst._paused

    run(_failing_once(errno.ECONNABORTED, 2, check))


def test_a_failing_protocol_factory_closes_that_connection_only(run) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        calls = 0

        def factory() -> asyncio.Protocol:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("no protocol for you")
            return Counting()

        lst = Listener(loop, factory)
        await lst.start("127.0.0.1", 0)
        port = lst.sockets[0].getsockname()[1]
        first = await asyncio.to_thread(_connect, port, 1)
        try:
            await _until(lambda: lst.attach_failures == 1)
            first[0].settimeout(5)
            assert await asyncio.to_thread(first[0].recv, 1) == b""   # closed by the node
            second = await asyncio.to_thread(_connect, port, 1)
            await _until(lambda: len(Counting.made) == 1)
            second[0].close()
        finally:
            first[0].close()
            lst.close()
            await lst.wait_closed()

    run(body())


def test_close_stops_accepting_and_keeps_established_connections(run) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        lst = Listener(loop, Counting)
        await lst.start("127.0.0.1", 0)
        port = lst.sockets[0].getsockname()[1]
        clients = await asyncio.to_thread(_connect, port, 1)
        await _until(lambda: len(Counting.made) == 1)
        lst.close()
        await lst.wait_closed()
        assert lst.sockets == []                 # as asyncio.Server: none after close
        with pytest.raises(ConnectionRefusedError):
            await asyncio.to_thread(_connect, port, 1)
        transport = Counting.made[0].transport
        assert not transport.is_closing()
        clients[0].sendall(b"still here")
        transport.close()
        clients[0].close()

    run(body())
