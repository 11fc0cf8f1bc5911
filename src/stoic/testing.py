"""Test helpers. ``virtual_time()`` makes every stoic sleep instant and every reading virtual.

    with stoic.testing.virtual_time() as clock:
        flaky_call_with_retries()
        assert clock.sleeps == [0.1, 0.2]

Sync sleeps advance the virtual clock at once. In async code the running event loop is put on
the same virtual clock: ``loop.time()`` reads it, and when every task is waiting on a timer the
loop jumps straight to the next one instead of waiting, so ``asyncio.sleep``, ``asyncio.timeout``
and stoic's ``Timeout`` all run on virtual time (I/O that is ready is still handled first).
"""

from __future__ import annotations

import asyncio
import threading
import time
from types import TracebackType
from typing import Any

from . import clock as _clock

__all__ = ["VirtualClock", "virtual_time"]


class VirtualClock:
    """A clock that only moves when something sleeps or ``advance`` is called.

    ``sleeps`` lists every sleep requested through stoic, in order (sync and async).
    """

    def __init__(self, start: float | None = None, epoch: float = 1_800_000_000.0) -> None:
        # whole seconds near the real reading: loop timers stay near, and sums stay exact
        self._now = float(int(time.monotonic())) if start is None else float(start)
        self._origin = self._now
        self._epoch = epoch
        self._lock = threading.Lock()
        self.sleeps: list[float] = []
        self._patched: list[tuple[Any, Any]] = []

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._epoch + (self._now - self._origin)

    @property
    def elapsed(self) -> float:
        """Virtual seconds since the clock was made."""
        return self._now - self._origin

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (>= 0)."""
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            if seconds > 0:
                self._now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.drive(asyncio.get_running_loop())
        await asyncio.sleep(seconds)

    def drive(self, loop: asyncio.AbstractEventLoop) -> None:
        """Put ``loop`` on this clock (done automatically on the first async sleep)."""
        if any(patched is loop for patched, _ in self._patched):
            return
        selector = getattr(loop, "_selector", None)
        if selector is None:
            raise RuntimeError("virtual_time needs a selector event loop (the asyncio default)")
        original = selector.select

        def select(timeout: float | None = None) -> Any:
            if timeout is None or timeout <= 0:
                return original(timeout)
            ready = original(0)
            if ready:
                return ready
            self.advance(timeout)
            return ready

        selector.select = select
        loop.time = self.monotonic  # type: ignore[method-assign]
        self._patched.append((loop, original))

    def release(self) -> None:
        """Give every driven loop back its real clock."""
        for loop, original in self._patched:
            selector = getattr(loop, "_selector", None)
            if selector is not None:  # None once the loop was closed
                selector.select = original
            try:
                del loop.time
            except AttributeError:
                pass
        self._patched.clear()


class virtual_time:
    """Run the block on a ``VirtualClock``; works with ``with`` and ``async with``."""

    def __init__(self, start: float | None = None) -> None:
        self.clock = VirtualClock(start)
        self._previous: Any = None

    def __enter__(self) -> VirtualClock:
        self._previous = _clock.set_clock(self.clock)
        return self.clock

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.clock.release()
        _clock.set_clock(self._previous)

    async def __aenter__(self) -> VirtualClock:
        clock = self.__enter__()
        clock.drive(asyncio.get_running_loop())
        return clock

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)
