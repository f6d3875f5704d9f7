"""TurnBudget: admission work past a turn's budget waits for later turns, in order."""

from __future__ import annotations

import asyncio

from router.transport.turnbudget import TurnBudget


class FakeClock:
    """A clock that moves only when a piece of work says how long it took."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _work(budget: TurnBudget, clock: FakeClock, log: list[tuple[int, str]],
          turn: list[int], name: str, cost: float):
    def resume() -> None:
        clock.now += cost
        log.append((turn[0], name))
    return resume


async def _count_turns(turn: list[int], turns: int) -> None:
    for _ in range(turns):
        turn[0] += 1
        await asyncio.sleep(0)


def test_work_past_the_budget_runs_in_later_turns_in_order(run) -> None:
    async def main():
        clock = FakeClock()
        budget = TurnBudget(asyncio.get_running_loop(), budget=0.001, clock=clock)
        log: list[tuple[int, str]] = []
        turn = [0]
        counter = asyncio.ensure_future(_count_turns(turn, 20))
        await asyncio.sleep(0)
        budget.charge(0.002)            # this turn already spent twice its budget
        assert budget.exhausted
        for name in "abcde":
            budget.defer(_work(budget, clock, log, turn, name, 0.0004))
        await counter
        assert [name for _, name in log] == list("abcde")
        # 0.4 ms each against a 1 ms budget: three a turn (the third crosses it)
        turns = [t for t, _ in log]
        assert turns[0] == turns[1] == turns[2] and turns[3] == turns[4] > turns[0]
        assert budget.waiting == 0 and budget.deferred == 5
        assert budget.deferred_turns == 1
    run(main())


def test_a_new_turn_forgets_what_the_last_one_spent(run) -> None:
    async def main():
        budget = TurnBudget(asyncio.get_running_loop(), budget=0.001, clock=FakeClock())
        budget.charge(0.005)
        assert budget.exhausted
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not budget.exhausted and budget.spent == 0
    run(main())


def test_budget_zero_is_never_exhausted(run) -> None:
    async def main():
        budget = TurnBudget(asyncio.get_running_loop(), budget=0, clock=FakeClock())
        budget.charge(10.0)
        assert not budget.exhausted
        ran: list[str] = []
        budget.defer(lambda: ran.append("x"))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert ran == ["x"]
    run(main())
