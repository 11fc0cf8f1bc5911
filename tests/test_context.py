"""Deadlines and bound fields travel with the work and never leak between tasks or threads."""

from __future__ import annotations

import asyncio
import threading

import pytest

import stoic
from stoic import context
from stoic.testing import virtual_time


class TestDeadline:
    def test_remaining_is_none_without_a_deadline(self) -> None:
        assert stoic.remaining() is None

    def test_remaining_counts_down_on_the_clock(self) -> None:
        with virtual_time() as clock, stoic.deadline(2.0):
            clock.advance(0.5)
            assert stoic.remaining() == pytest.approx(1.5)
        assert stoic.remaining() is None

    def test_nested_deadlines_keep_the_earliest(self) -> None:
        with virtual_time(), stoic.deadline(1.0):
            with stoic.deadline(10.0):
                assert stoic.remaining() == pytest.approx(1.0)
            with stoic.deadline(0.25):
                assert stoic.remaining() == pytest.approx(0.25)
            assert stoic.remaining() == pytest.approx(1.0)

    def test_exit_restores_the_outer_deadline_even_on_error(self) -> None:
        with virtual_time(), stoic.deadline(5.0):
            with pytest.raises(RuntimeError), stoic.deadline(1.0):
                raise RuntimeError
            assert stoic.remaining() == pytest.approx(5.0)

    async def test_concurrent_tasks_have_their_own_deadlines(self) -> None:
        async def task(seconds: float) -> float | None:
            async with stoic.deadline(seconds):
                await asyncio.sleep(0)
                return stoic.remaining()

        async with virtual_time():
            results = await asyncio.gather(task(1.0), task(2.0), task(3.0))
        assert results == [pytest.approx(1.0), pytest.approx(2.0), pytest.approx(3.0)]

    def test_threads_do_not_see_each_others_deadline(self) -> None:
        seen: list[float | None] = []
        with stoic.deadline(5.0):
            thread = threading.Thread(target=lambda: seen.append(stoic.remaining()))
            thread.start()
            thread.join()
        assert seen == [None]

    def test_nan_is_refused(self) -> None:
        with pytest.raises(ValueError, match="seconds"):
            stoic.deadline(float("nan"))


class TestBind:
    def test_bound_fields_are_visible_inside_and_restored_after(self) -> None:
        with context.bind(request_id="r1", user_id="u1"):
            assert context.get("request_id") == "r1"
            with context.bind(request_id="r2"):
                assert dict(context.current()) == {"request_id": "r2", "user_id": "u1"}
            assert context.get("request_id") == "r1"
        assert context.current() == {}

    def test_none_values_are_not_bound(self) -> None:
        with context.bind(request_id="r1"), context.bind(request_id=None):
            assert context.get("request_id") == "r1"

    async def test_tasks_do_not_leak_fields(self) -> None:
        async def task(name: str) -> str:
            async with context.bind(request_id=name):
                await asyncio.sleep(0)
                return str(context.get("request_id"))

        assert await asyncio.gather(task("a"), task("b")) == ["a", "b"]
        assert context.get("request_id") is None


def test_set_deadline_and_reset_deadline_restore_exactly() -> None:
    """The public pair policies use to bound a call: the token restores what was there."""
    from stoic.context import deadline_at, reset_deadline, set_deadline

    assert deadline_at() is None
    token = set_deadline(123.0)
    assert deadline_at() == 123.0
    reset_deadline(token)
    assert deadline_at() is None
