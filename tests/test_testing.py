"""Virtual time: sleeps are instant, readings are virtual, the real clock comes back after."""

from __future__ import annotations

import asyncio
import time

import pytest

from stoic import clock
from stoic.testing import virtual_time


def test_sync_sleep_advances_without_waiting() -> None:
    start = time.monotonic()
    with virtual_time() as vc:
        before = clock.now()
        clock.sleep(3600)
        assert clock.now() - before == pytest.approx(3600)
    assert time.monotonic() - start < 5
    assert vc.sleeps == [3600]


async def test_async_sleeps_jump_to_the_next_timer() -> None:
    start = time.monotonic()
    async with virtual_time() as vc:
        await asyncio.gather(clock.asleep(100), clock.asleep(50))
        assert vc.elapsed == pytest.approx(100)
        await asyncio.sleep(10)  # plain asyncio sleeps are virtual too
        assert vc.elapsed == pytest.approx(110)
    assert time.monotonic() - start < 5


def test_the_real_clock_is_restored() -> None:
    with virtual_time():
        pass
    a = clock.now()
    time.sleep(0.01)
    assert clock.now() > a


def test_the_hot_path_reading_follows_the_active_clock() -> None:
    """Policies read ``clock._monotonic()``; it must follow virtual time in and back out."""
    with virtual_time() as vclock:
        start = clock._monotonic()
        assert start == vclock.monotonic()
        vclock.advance(30.0)
        assert clock._monotonic() == start + 30.0
    assert clock._monotonic is time.monotonic


def test_wall_clock_moves_with_virtual_time() -> None:
    with virtual_time() as vc:
        wall = clock.wall()
        vc.advance(10)
        assert clock.wall() - wall == pytest.approx(10)


def test_advance_rejects_going_back() -> None:
    with virtual_time() as vc, pytest.raises(ValueError, match="seconds"):
        vc.advance(-1)
