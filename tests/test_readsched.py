"""ReadScheduler: per-turn admission of parked readers, in order, within a byte budget."""

from __future__ import annotations

import asyncio

from router.transport.readsched import ReadScheduler


class FakeReader:
    """Parks itself after each 'read' of ``size`` bytes while it has reads left."""

    def __init__(self, name: str, sched: ReadScheduler, log: list[tuple[int, str]],
                 turn: list[int], size: int = 1000, reads: int = 3,
                 paused: bool = False) -> None:
        self.name, self.sched, self.log, self.turn = name, sched, log, turn
        self.size, self.reads, self.paused = size, reads, paused

    def unpark(self) -> int:
        if self.paused:
            return 0
        # "reads" in the next loop iteration, then parks again
        asyncio.get_running_loop().call_soon(self._read)
        return self.size

    def _read(self) -> None:
        self.log.append((self.turn[0], self.name))
        self.reads -= 1
        if self.reads > 0:
            self.sched.park(self)


async def _turn_counter(turn: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        turn[0] += 1
        await asyncio.sleep(0)


async def _drive(sched: ReadScheduler, readers: list[FakeReader]) -> None:
    for r in readers:
        sched.park(r)
    for _ in range(200):
        await asyncio.sleep(0)
        if sched.waiting == 0 and all(r.reads == 0 or r.paused for r in readers):
            break


def test_under_budget_everyone_reads_every_turn(run) -> None:
    async def main():
        sched = ReadScheduler(asyncio.get_running_loop(), budget=10_000)
        log: list[tuple[int, str]] = []
        turn = [0]
        readers = [FakeReader(n, sched, log, turn) for n in "abc"]
        await _drive(sched, readers)
        assert sorted(n for _, n in log) == sorted("abc" * 3)
        assert sched.deferred_turns == 0
        assert sched.admitted == 9
    run(main())


def test_over_budget_readers_take_turns_in_order(run) -> None:
    async def main():
        # 2 000 bytes per turn, 1 000 per read: two readers a turn, round-robin.
        sched = ReadScheduler(asyncio.get_running_loop(), budget=2000)
        log: list[tuple[int, str]] = []
        turn = [0]
        stop = asyncio.Event()
        counter = asyncio.ensure_future(_turn_counter(turn, stop))
        readers = [FakeReader(n, sched, log, turn, reads=2) for n in "abcd"]
        await _drive(sched, readers)
        stop.set()
        await counter
        assert [n for _, n in log] == list("abcdabcd")      # FIFO, nobody overtakes
        per_turn: dict[int, int] = {}
        for t, _ in log:
            per_turn[t] = per_turn.get(t, 0) + 1
        assert max(per_turn.values()) <= 2                   # the budget holds
        assert sched.deferred_turns >= 3
        assert sched.waiting == 0
    run(main())


def test_a_reader_that_will_not_read_costs_no_budget(run) -> None:
    async def main():
        sched = ReadScheduler(asyncio.get_running_loop(), budget=1000)
        log: list[tuple[int, str]] = []
        turn = [0]
        held = [FakeReader(f"p{i}", sched, log, turn, paused=True) for i in range(50)]
        busy = FakeReader("x", sched, log, turn, reads=1)
        await _drive(sched, [*held, busy])
        # the 50 paused readers were dropped from the queue in one admission pass
        assert log == [(0, "x")] and sched.deferred_turns == 0
    run(main())


def test_idle_readers_that_start_sending_big_are_admitted_by_the_typical_read(run) -> None:
    """Readers whose own last read was small (idle agents' heartbeats) are expected to
    bring at least the typical read of the node: once reads are big, a turn admits
    budget / typical of them, not budget / 2 KiB (issue 22: thousands of idle agents
    starting flat out at once)."""
    async def main():
        sched = ReadScheduler(asyncio.get_running_loop(), budget=1024 * 1024)
        for _ in range(200):
            sched.note_read(65536)
        assert sched.typical_read > 60_000
        log: list[tuple[int, str]] = []
        turn = [0]
        readers = [FakeReader(f"r{i}", sched, log, turn, size=2048, reads=1)
                   for i in range(100)]
        for r in readers:
            sched.park(r)
        await asyncio.sleep(0)                   # the first admission
        assert sched.admitted <= 17              # 1 MiB / ~64 KiB, not 512 / 2 KiB
        assert sched.waiting == 100 - sched.admitted
        for _ in range(20):
            sched.note_read(1000)                # small reads again: more per turn
        for _ in range(100):
            if len(log) == len(readers):
                break
            await asyncio.sleep(0)
        assert sorted(n for _, n in log) == sorted(r.name for r in readers)
    run(main())


def test_a_turn_past_its_budget_cuts_further_reads_short(run) -> None:
    """The budget bounds readers coming back from their turn; readers that were idle
    read whenever their socket is ready. Once a turn has read its budget, every further
    read is cut to OVER_BUDGET_READ bytes, until the next admission: 10 000 idle agents
    that start sending at once no longer bring 64 KiB each, ~400 000 results, in one
    poll (issue 22, the chain's max)."""
    async def main():
        sched = ReadScheduler(asyncio.get_running_loop(), budget=100_000)
        sched.note_read(60_000)
        assert not sched.over_budget
        sched.note_read(50_000)
        assert sched.over_budget
        log: list[tuple[int, str]] = []
        sched.park(FakeReader("r", sched, log, [0], reads=1))
        await asyncio.sleep(0)                  # the admission starts a new turn
        assert not sched.over_budget and sched.turn_bytes == 0
    run(main())


def test_the_hold_can_keep_a_reader_back_before_its_turn(run) -> None:
    """The node's hold runs before each reader's turn and may pause it (its last
    messages went to a queue that is congested now): it does not read, and costs the
    turn no budget."""
    async def main():
        held: list[str] = []

        def hold(reader: FakeReader) -> None:
            if reader.name == "r1":
                reader.paused = True
                held.append(reader.name)
        sched = ReadScheduler(asyncio.get_running_loop(), budget=2500, hold=hold)
        log: list[tuple[int, str]] = []
        turn = [0]
        readers = [FakeReader(f"r{i}", sched, log, turn, size=1000, reads=1)
                   for i in range(3)]
        await _drive(sched, readers)
        assert held == ["r1"]
        assert sorted(n for _, n in log) == ["r0", "r2"]
        assert sched.admitted == 3
    run(main())


def test_an_open_session_reads_short_once_the_turn_is_over_budget(run) -> None:
    """``PeerConnection.get_buffer`` hands out the node's whole read buffer, or only
    OVER_BUDGET_READ bytes of it once this turn has read its budget; a handshake keeps
    the whole buffer (its reads are small, and a client waits on them)."""
    from types import SimpleNamespace

    from router.transport.connection import OPEN, READ_BUFFER_SIZE, PeerConnection
    from router.transport.readsched import OVER_BUDGET_READ

    async def main():
        loop = asyncio.get_running_loop()
        owner = SimpleNamespace(loop=loop, read_buffer=memoryview(bytearray(READ_BUFFER_SIZE)),
                                reads=ReadScheduler(loop, budget=100_000))
        conn = PeerConnection(owner, tls_library=None)  # type: ignore[arg-type]
        assert len(conn.get_buffer(-1)) == READ_BUFFER_SIZE
        owner.reads.note_read(100_000)
        assert len(conn.get_buffer(-1)) == READ_BUFFER_SIZE      # still handshaking
        conn.state = OPEN
        assert len(conn.get_buffer(-1)) == OVER_BUDGET_READ
        owner.reads.turn_bytes = 0
        assert len(conn.get_buffer(-1)) == READ_BUFFER_SIZE
    run(main())


def test_readers_park_only_while_others_wait_or_the_turn_is_spent(run) -> None:
    """``busy`` tells a connection that just read whether to park: under normal load
    (nobody waits, the turn is under budget) it reads on, without the pause and resume
    of its transport that parking costs per read."""
    async def main():
        sched = ReadScheduler(asyncio.get_running_loop(), budget=100_000)
        assert not sched.busy
        log: list[tuple[int, str]] = []
        reader = FakeReader("r", sched, log, [0], reads=1)
        sched.park(reader)
        assert sched.busy                       # someone waits for a turn
        await asyncio.sleep(0)                  # admitted
        assert not sched.busy
        sched.note_read(100_000)
        assert sched.busy                       # the turn has read its budget
    run(main())
