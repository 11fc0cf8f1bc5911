"""RateLimiter: GCRA, rejection with retry_after, waiting, sync and async, virtual time."""

from __future__ import annotations

import asyncio
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

import stoic
from stoic.events import CallRejected, Event
from stoic.state import MemoryState
from stoic.testing import virtual_time


def ok() -> str:
    return "ok"


def admitted(limiter: stoic.RateLimiter, n: int) -> int:
    count = 0
    for _ in range(n):
        try:
            limiter.call(ok)
            count += 1
        except stoic.RateLimitedError:
            pass
    return count


class TestReject:
    def test_burst_then_one_per_interval(self) -> None:
        with virtual_time() as clock:
            limiter = stoic.RateLimiter(10, per=1.0, burst=5)
            assert admitted(limiter, 20) == 5
            clock.advance(0.1)
            assert admitted(limiter, 20) == 1
            clock.advance(1.0)
            assert admitted(limiter, 20) == 5  # refilled, but never beyond burst

    def test_rejection_says_when_to_retry(self) -> None:
        with virtual_time() as clock:
            limiter = stoic.RateLimiter(2, per=1.0, burst=1)
            limiter.call(ok)
            with pytest.raises(stoic.RateLimitedError) as info:
                limiter.call(ok)
            assert isinstance(info.value, stoic.Rejected)
            assert info.value.retry_after == pytest.approx(0.5)
            clock.advance(info.value.retry_after or 0)
            assert limiter.call(ok) == "ok"

    def test_default_burst_is_one_period_worth(self) -> None:
        with virtual_time():
            assert admitted(stoic.RateLimiter(7), 50) == 7

    def test_long_run_rate_is_enforced(self) -> None:
        with virtual_time() as clock:
            limiter = stoic.RateLimiter(100, per=1.0, burst=10)
            count = 0
            for _ in range(10_000):
                clock.advance(0.001)
                count += admitted(limiter, 1)
            assert count == pytest.approx(10 + 100 * 10, abs=2)

    def test_rejected_calls_do_not_consume_the_rate(self) -> None:
        with virtual_time() as clock:
            limiter = stoic.RateLimiter(1, burst=1)
            limiter.call(ok)
            assert admitted(limiter, 100) == 0
            clock.advance(1.0)
            assert admitted(limiter, 1) == 1


class TestWait:
    def test_waits_for_the_next_slot(self) -> None:
        with virtual_time() as clock:
            limiter = stoic.RateLimiter(4, per=1.0, burst=1, wait=True)
            for _ in range(4):
                limiter.call(ok)
            assert clock.sleeps == pytest.approx([0.25, 0.25, 0.25])
            assert clock.elapsed == pytest.approx(0.75)

    async def test_rejects_instead_of_waiting_longer_than_max_wait(self) -> None:
        async with virtual_time() as clock:
            limiter = stoic.RateLimiter(1, burst=1, wait=True, max_wait=1.5)

            async def work() -> str:
                return "ok"

            results = await asyncio.gather(
                *(limiter.acall(work) for _ in range(3)), return_exceptions=True
            )
            assert results[:2] == ["ok", "ok"]  # the second waited 1 s
            assert isinstance(results[2], stoic.RateLimitedError)  # would have waited 2 s
            assert results[2].retry_after == pytest.approx(2.0)
            assert clock.elapsed == pytest.approx(1.0)

    def test_never_waits_past_the_deadline(self) -> None:
        with virtual_time() as clock:
            limiter = stoic.RateLimiter(1, burst=1, wait=True)
            limiter.call(ok)
            with stoic.deadline(0.5), pytest.raises(stoic.RateLimitedError):
                limiter.call(ok)
            assert clock.sleeps == []

    async def test_async_waits_on_the_loop_without_blocking(self) -> None:
        async with virtual_time() as clock:
            limiter = stoic.RateLimiter(2, per=1.0, burst=1, wait=True)

            async def work() -> str:
                return "done"

            results = [await limiter.acall(work) for _ in range(3)]
            assert results == ["done"] * 3
            assert clock.elapsed == pytest.approx(1.0)


class TestShared:
    def test_limiters_sharing_memory_state_and_name_share_one_rate(self) -> None:
        with virtual_time():
            state = MemoryState()
            a = stoic.RateLimiter(5, backend=state, name="api")
            b = stoic.RateLimiter(5, backend=state, name="api")
            other = stoic.RateLimiter(5, backend=state, name="other")
            assert admitted(a, 4) + admitted(b, 4) == 5
            assert admitted(other, 10) == 5


def test_rejection_emits_call_rejected() -> None:
    seen: list[Event] = []
    stoic.events.subscribe(seen.append)
    limiter = stoic.RateLimiter(1, per=60, name="signup")
    limiter.call(ok)
    with pytest.raises(stoic.RateLimitedError):
        limiter.call(ok)
    rejected = [e for e in seen if isinstance(e, CallRejected)]
    assert [(e.name, e.policy, e.reason) for e in rejected] == [
        ("signup", "rate_limiter", "rate_limited")
    ]
    assert rejected[0].retry_after == pytest.approx(60, abs=1)


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"rate": 0}, "rate"),
        ({"rate": -1}, "rate"),
        ({"rate": 1, "per": 0}, "per"),
        ({"rate": 1, "burst": 0}, "burst"),
        ({"rate": 1, "wait": True, "max_wait": 0}, "max_wait"),
        ({"rate": 1, "max_wait": 1.0}, "max_wait"),
        ({"rate": 1, "backend": MemoryState()}, "name"),  # unnamed limiters would share a rate
    ],
)
def test_bad_configuration_names_the_parameter(kwargs: dict[str, Any], parameter: str) -> None:
    with pytest.raises(ValueError, match=parameter):
        stoic.RateLimiter(**kwargs)


@settings(max_examples=60, deadline=None)
@given(
    rate=st.integers(1, 50),
    burst=st.integers(1, 20),
    gaps=st.lists(st.floats(0.0, 0.3, allow_nan=False), min_size=1, max_size=300),
)
def test_no_window_ever_admits_more_than_burst_plus_rate(
    rate: int, burst: int, gaps: list[float]
) -> None:
    """Over any span of t seconds, at most burst + rate * t calls get through."""
    with virtual_time() as clock:
        limiter = stoic.RateLimiter(rate, per=1.0, burst=burst)
        times = []
        for gap in gaps:
            clock.advance(gap)
            if admitted(limiter, 1):
                times.append(clock.monotonic())
        for i, start in enumerate(times):
            for j in range(i, len(times)):
                span = times[j] - start
                assert j - i + 1 <= burst + rate * span + 1e-6


def test_state_is_the_deprecated_name_of_backend() -> None:
    memory = MemoryState()
    with pytest.warns(DeprecationWarning, match="backend"):
        limiter = stoic.RateLimiter(5, state=memory, name="old-name")
    assert limiter.backend is memory
    assert limiter.state is memory
