"""Time for every policy: monotonic readings and sleeps, replaceable in tests.

Policies never call ``time.monotonic``, ``time.sleep`` or ``asyncio.sleep`` directly; they
call this module (``now()``, or ``clock.monotonic()`` on hot paths, ``sleep()``, ``asleep()``).
``stoic.testing.virtual_time()`` swaps the implementation for a virtual clock, so a test of a
30-second backoff takes no real time.

This module holds the one piece of global state it needs, the active clock, in ``_active``,
and, for the hot paths inside stoic, that clock's ``monotonic`` as the module attribute
``monotonic``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from time import sleep as _sleep
from typing import Protocol

__all__ = ["SYSTEM", "Clock", "SystemClock", "asleep", "monotonic", "now", "set_clock", "sleep", "wall"]


class Clock(Protocol):
    """What a clock must do. ``monotonic`` is in float seconds from an arbitrary origin."""

    def monotonic(self) -> float: ...
    def time(self) -> float: ...
    def sleep(self, seconds: float) -> None: ...
    async def asleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    __slots__ = ()

    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)
    sleep = staticmethod(_sleep)

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM = SystemClock()


class _Active:
    """Holds the active clock and bound shortcuts to it, so a reading is one attribute call."""

    __slots__ = ("asleep", "clock", "sleep", "time")

    def __init__(self) -> None:
        self.set(SYSTEM)

    def set(self, clock: Clock) -> None:
        global monotonic, _monotonic
        self.clock = clock
        monotonic = _monotonic = clock.monotonic
        self.time = clock.time
        self.sleep = clock.sleep
        self.asleep = clock.asleep


#: The active clock's ``monotonic``, rebound by ``set_clock``: the one speed trick of this
#: module, for every policy's per-call path (benchmarks/overhead.py, "Retry, happy path" and
#: the breaker rows read the clock on each call). Call it as ``clock.monotonic()``: a module
#: attribute is the cheapest read CPython 3.11 offers that still follows a clock change (an
#: instance slot cannot be specialised as a method call, ~40 ns more per reading, and
#: ``now()`` adds a Python frame). Never import the name itself; the imported copy would not
#: follow ``set_clock``.
monotonic: Callable[[], float] = time.monotonic
#: The old name of ``monotonic``, rebound with it, for code not yet moved to the public name.
_monotonic: Callable[[], float] = time.monotonic
_active = _Active()


def now() -> float:
    """Monotonic seconds: only differences between two readings mean anything."""
    return monotonic()


def wall() -> float:
    """Wall-clock seconds since the epoch (for stored timestamps and HTTP dates)."""
    return _active.time()


def sleep(seconds: float) -> None:
    """Block for ``seconds``. Callers skip the call entirely for a zero wait."""
    _active.sleep(seconds)


async def asleep(seconds: float) -> None:
    """Suspend the task for ``seconds`` without blocking the event loop."""
    await _active.asleep(seconds)


def set_clock(clock: Clock) -> Clock:
    """Install ``clock`` and return the previous one (used by ``stoic.testing``)."""
    previous = _active.clock
    _active.set(clock)
    return previous
