"""Timeout: async calls are cancelled; sync calls carry the deadline and fail late honestly."""

from __future__ import annotations

import asyncio

import pytest

import stoic
from stoic import DeadlineExceeded, Timeout
from stoic.events import DeadlineExpired
from stoic.testing import virtual_time


class TestAsync:
    async def test_a_slow_coroutine_is_cancelled_at_the_timeout(self) -> None:
        cancelled = False

        async def slow() -> None:
            nonlocal cancelled
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancelled = True
                raise

        async with virtual_time() as clock:
            with pytest.raises(DeadlineExceeded):
                await Timeout(1.0).acall(slow)
            assert clock.elapsed == pytest.approx(1.0)
        assert cancelled

    async def test_a_fast_coroutine_returns_its_result(self) -> None:
        async def fast() -> int:
            await asyncio.sleep(0.1)
            return 7

        async with virtual_time():
            assert await Timeout(1.0).acall(fast) == 7

    async def test_the_callee_sees_the_remaining_time(self) -> None:
        async def probe() -> float | None:
            return stoic.remaining()

        async with virtual_time():
            assert await Timeout(0.75).acall(probe) == pytest.approx(0.75)

    async def test_an_outer_deadline_shorter_than_the_timeout_wins(self) -> None:
        async with virtual_time() as clock:
            async with stoic.deadline(0.2):
                with pytest.raises(DeadlineExceeded):
                    await Timeout(5.0).acall(asyncio.sleep, 1)
            assert clock.elapsed == pytest.approx(0.2)

    async def test_the_callees_own_timeout_error_is_not_mistaken_for_ours(self) -> None:
        async def own() -> None:
            raise TimeoutError("the callee's own")

        with pytest.raises(TimeoutError, match="callee's own") as info:
            await Timeout(5.0).acall(own)
        assert not isinstance(info.value, DeadlineExceeded)

    async def test_deadline_exceeded_is_a_timeout_error(self) -> None:
        async with virtual_time():
            with pytest.raises(TimeoutError):
                await Timeout(0.1).acall(asyncio.sleep, 1)


class TestSync:
    def test_the_callee_sees_the_deadline(self) -> None:
        with virtual_time():
            assert Timeout(2.0).call(stoic.remaining) == pytest.approx(2.0)

    def test_a_late_return_raises_after_the_call(self) -> None:
        events: list[object] = []
        stoic.events.subscribe(events.append)
        with virtual_time() as clock:

            def slow() -> str:
                clock.advance(3.0)
                return "too late"

            with pytest.raises(DeadlineExceeded):
                Timeout(1.0).call(slow)
        assert any(isinstance(e, DeadlineExpired) and e.overrun == pytest.approx(2.0) for e in events)

    def test_a_call_whose_deadline_passed_is_not_started(self) -> None:
        calls = 0

        def fn() -> None:
            nonlocal calls
            calls += 1

        with virtual_time() as clock, stoic.deadline(1.0):
            clock.advance(2.0)
            with pytest.raises(DeadlineExceeded):
                Timeout(5.0).call(fn)
        assert calls == 0

    def test_the_callees_exception_passes_through(self) -> None:
        def boom() -> None:
            raise KeyError("k")

        with pytest.raises(KeyError):
            Timeout(1.0).call(boom)

    def test_the_deadline_is_restored_after_the_call(self) -> None:
        with virtual_time():
            Timeout(1.0).call(lambda: None)
            assert stoic.remaining() is None


@pytest.mark.parametrize("seconds", [0, -1, float("inf"), True, "1"])
def test_non_positive_or_bad_timeout_is_refused(seconds: object) -> None:
    with pytest.raises(ValueError, match="seconds"):
        Timeout(seconds)  # type: ignore[arg-type]
