"""Hedge: a second attempt after a delay; first success wins, the rest are cancelled."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import stoic
from stoic.events import Event
from stoic.policies.hedge import HedgeStarted
from stoic.testing import virtual_time


class Replica:
    """Attempt i sleeps latencies[i] (virtual seconds) then returns or raises outcomes[i]."""

    def __init__(self, latencies: list[float], outcomes: list[Any] | None = None) -> None:
        self.latencies = latencies
        self.outcomes = outcomes or [f"r{i}" for i in range(len(latencies))]
        self.started = 0
        self.cancelled: list[int] = []

    async def __call__(self) -> Any:
        i = self.started
        self.started += 1
        try:
            await asyncio.sleep(self.latencies[i])
        except asyncio.CancelledError:
            self.cancelled.append(i)
            raise
        outcome = self.outcomes[i]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


async def test_slow_first_attempt_is_hedged_and_the_faster_wins() -> None:
    async with virtual_time() as clock:
        replica = Replica([10.0, 0.5])
        result = await stoic.Hedge(delay=1.0).acall(replica)
        assert result == "r1"
        assert clock.elapsed == pytest.approx(1.5)
        assert replica.cancelled == [0]


async def test_fast_call_is_not_hedged() -> None:
    async with virtual_time():
        replica = Replica([0.2, 0.2])
        assert await stoic.Hedge(delay=1.0).acall(replica) == "r0"
        assert replica.started == 1


async def test_at_most_max_hedges_extra_attempts() -> None:
    async with virtual_time() as clock:
        replica = Replica([10.0, 10.0, 10.0, 0.1])
        seen: list[Event] = []
        stoic.events.subscribe(seen.append)
        assert await stoic.Hedge(delay=1.0, max_hedges=2).acall(replica) == "r0"
        assert replica.started == 3
        assert clock.elapsed == pytest.approx(10.0)
        assert [(e.attempt, e.reason) for e in seen if isinstance(e, HedgeStarted)] == [
            (2, "delay"), (3, "delay"),
        ]


async def test_failure_starts_the_next_hedge_at_once() -> None:
    async with virtual_time() as clock:
        replica = Replica([0.1, 0.1], [ConnectionRefusedError("down"), "r1"])
        assert await stoic.Hedge(delay=5.0).acall(replica) == "r1"
        assert clock.elapsed == pytest.approx(0.2)


async def test_all_attempts_failing_raises_the_last_original_error() -> None:
    async with virtual_time():
        error = ConnectionRefusedError("second")
        replica = Replica([0.1, 0.1], [ConnectionRefusedError("first"), error])
        with pytest.raises(ConnectionRefusedError) as info:
            await stoic.Hedge(delay=5.0).acall(replica)
        assert info.value is error


async def test_permanent_failure_is_the_answer_and_cancels_the_others() -> None:
    async with virtual_time():
        replica = Replica([5.0, 0.1], ["r0", ValueError("bad request")])
        with pytest.raises(ValueError, match="bad request"):
            await stoic.Hedge(delay=1.0).acall(replica)
        assert replica.cancelled == [0]


async def test_empty_budget_stops_hedging() -> None:
    async with virtual_time():
        budget = stoic.RetryBudget(ratio=0.0, min_per_second=0.0)
        replica = Replica([3.0, 0.1])
        assert await stoic.Hedge(delay=1.0, budget=budget).acall(replica) == "r0"
        assert replica.started == 1


async def test_cancelling_the_call_cancels_every_attempt() -> None:
    async with virtual_time():
        replica = Replica([100.0, 100.0])
        task = asyncio.create_task(stoic.Hedge(delay=1.0).acall(replica))
        await asyncio.sleep(2.0)
        assert replica.started == 2
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert sorted(replica.cancelled) == [0, 1]


def test_sync_use_raises_a_clear_type_error() -> None:
    hedge = stoic.Hedge(delay=0.1)
    with pytest.raises(TypeError, match="async"):
        hedge.call(lambda: 1)

    @hedge
    def sync_fn() -> int:
        return 1

    with pytest.raises(TypeError, match="async"):
        sync_fn()


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"delay": 0}, "delay"),
        ({"delay": 1, "max_hedges": 0}, "max_hedges"),
        ({"delay": 1, "budget": 0.1}, "budget"),
    ],
)
def test_bad_configuration_names_the_parameter(kwargs: dict[str, Any], parameter: str) -> None:
    with pytest.raises(ValueError, match=parameter):
        stoic.Hedge(**kwargs)
