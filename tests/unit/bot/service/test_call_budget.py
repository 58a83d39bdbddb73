"""The budget of Discord calls: never more than its rate in any window, urgent calls first,
servers in turn, and nothing lost when a caller gives up."""

from __future__ import annotations

import asyncio
import time

import pytest

from bot.service.call_budget import CallBudget, Caller, Priority, calls_as, prepaid

URGENT, BACKGROUND = Priority.URGENT, Priority.BACKGROUND


def most_in_any_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - window:
            start += 1
        best = max(best, end - start + 1)
    return best


async def test_never_more_calls_than_its_rate_in_any_window():
    budget = CallBudget(5, reserve=0, window_s=0.2)
    granted: list[float] = []

    async def call(i: int) -> None:
        await budget.take(Caller(URGENT, i % 3))
        granted.append(time.monotonic())

    started = time.monotonic()
    await asyncio.gather(*(call(i) for i in range(23)))
    assert len(granted) == 23
    assert most_in_any_window(granted, 0.2) <= 5
    # 23 calls at 5 per 0.2 s: at least four full windows had to pass
    assert time.monotonic() - started >= 0.75


async def test_urgent_calls_go_before_background_ones_waiting_longer():
    budget = CallBudget(2, reserve=0, window_s=0.3)
    order: list[str] = []

    async def call(name: str, priority: Priority) -> None:
        await budget.take(Caller(priority, 1))
        order.append(name)

    await budget.take(Caller(URGENT, 1))
    await budget.take(Caller(URGENT, 1))  # the window is full
    waiting = [asyncio.create_task(call(f"edit{i}", BACKGROUND)) for i in range(3)]
    await asyncio.sleep(0.05)
    waiting.append(asyncio.create_task(call("result", URGENT)))
    await asyncio.gather(*waiting)
    assert order[0] == "result"
    assert order[1:] == ["edit0", "edit1", "edit2"]


async def test_background_calls_leave_the_reserve_to_urgent_ones():
    budget = CallBudget(4, reserve=2, window_s=0.5)
    for _ in range(2):
        await budget.take(Caller(BACKGROUND, 1))
    third = asyncio.create_task(budget.take(Caller(BACKGROUND, 1)))
    await asyncio.sleep(0.05)
    assert not third.done()  # two slots are free, but they are the reserve
    started = time.monotonic()
    await budget.take(Caller(URGENT, 2))  # an urgent call finds room at once
    assert time.monotonic() - started < 0.05
    await third
    assert budget.granted == {URGENT: 1, BACKGROUND: 3}


async def test_servers_take_turns_so_a_busy_server_delays_another_by_one_call():
    budget = CallBudget(1, reserve=0, window_s=0.03)
    order: list[int] = []

    async def call(guild: int) -> None:
        await budget.take(Caller(BACKGROUND, guild))
        order.append(guild)

    await budget.take(Caller(URGENT, 0))  # full: everything below waits
    busy = [asyncio.create_task(call(1)) for _ in range(6)]
    await asyncio.sleep(0)
    quiet = asyncio.create_task(call(2))
    await asyncio.gather(*busy, quiet)
    assert order.index(2) == 1, order  # right after the busy server's first call, not after all six


async def test_a_caller_that_gives_up_loses_its_place_and_the_next_one_goes():
    budget = CallBudget(1, reserve=0, window_s=0.1)
    await budget.take(Caller(URGENT, 1))
    gone = asyncio.create_task(budget.take(Caller(URGENT, 1)))
    kept = asyncio.create_task(budget.take(Caller(URGENT, 2)))
    await asyncio.sleep(0.01)
    gone.cancel()
    await asyncio.wait_for(kept, 1.0)
    assert budget.waiting == 0
    assert budget.granted[URGENT] == 2


async def test_the_task_context_says_who_calls_and_a_prepaid_call_does_not_wait_again():
    budget = CallBudget(1, reserve=0, window_s=10.0)
    await budget.take()  # the default caller: urgent, no server
    with calls_as(BACKGROUND, 7), prepaid(1):
        await asyncio.wait_for(budget.take(), 0.1)  # paid before: no second slot needed
        second = asyncio.create_task(budget.take())
        await asyncio.sleep(0.01)
        assert not second.done() and budget.waiting == 1
        second.cancel()
    assert budget.granted == {URGENT: 1, BACKGROUND: 0}


def test_a_budget_needs_at_least_one_call_per_second():
    with pytest.raises(ValueError):
        CallBudget(0)
