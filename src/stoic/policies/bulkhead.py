"""Bulkhead: cap how many calls to one dependency run at once.

Without a cap, a slow dependency soaks up every thread or connection of the caller and the
slowness spreads to everything else it does (the ship without bulkheads sinks whole). With
``Bulkhead(10)`` at most ten calls run; the eleventh waits in a room of ``max_waiting``
places for at most ``wait_timeout`` seconds (and never past the context deadline), and a
call that finds the room full is rejected at once with ``BulkheadFullError``.

One bulkhead may be used from threads and from asyncio at the same time: slots are counted
under one small lock, never held across a call. A freed slot is handed straight to the
longest waiter (first come, first served), whether it waits in a thread or in a task. Async
waiters never block the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from dataclasses import dataclass
from typing import Any

from .. import clock
from .._validate import count, seconds
from ..context import deadline_at
from ..errors import BulkheadFullError, DeadlineExceeded
from ..events import CallRejected, dispatcher
from .base import AsyncStep, Policy, Step, ainvoke, invoke
from .settings import Configured, PolicyConfig, setting

__all__ = ["Bulkhead", "BulkheadConfig"]


class _ThreadWaiter:
    """A thread waiting for a slot: blocks on a lock that the releaser unlocks."""

    __slots__ = ("granted", "lock")

    def __init__(self) -> None:
        self.granted = False
        self.lock = threading.Lock()
        self.lock.acquire()

    def wake(self) -> None:
        self.lock.release()


class _TaskWaiter:
    """A task waiting for a slot: a future, resolved on its own loop's thread."""

    __slots__ = ("future", "granted", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.granted = False
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()

    def wake(self) -> None:
        try:
            self.loop.call_soon_threadsafe(_resolve, self.future)
        except RuntimeError:  # its loop is closed; the waiter is gone with it
            pass


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


@dataclass(frozen=True, slots=True, kw_only=True)
class BulkheadConfig(PolicyConfig):
    """What a ``Bulkhead`` was told, validated and frozen; see ``Bulkhead`` for each setting."""

    default_name = "bulkhead"
    max_concurrent: int
    max_waiting: int = 0
    wait_timeout: float | None = None

    def _check(self) -> None:
        count("max_concurrent", self.max_concurrent)
        count("max_waiting", self.max_waiting, minimum=0)
        if self.wait_timeout is not None:
            self._normalise("wait_timeout", seconds("wait_timeout", self.wait_timeout, optional=True))


class Bulkhead(Configured, Policy):
    """Run at most ``max_concurrent`` calls at once; queue up to ``max_waiting`` more.

    Args:
        max_concurrent: calls allowed to run at the same time (>= 1).
        max_waiting: calls allowed to wait for a slot (>= 0); 0 rejects as soon as all
            slots are busy, which is usually right for request handlers.
        wait_timeout: seconds a call may wait for a slot (> 0), or None to wait as long as
            the context deadline allows.
        name: names the bulkhead in events and metrics.

    Raises ``BulkheadFullError`` when the waiting room is full or the wait timed out, and
    ``DeadlineExceeded`` when the context deadline passed while waiting.

    The settings are read-only (``bulkhead.config`` holds them); ``replace`` builds a
    changed bulkhead, with slots of its own.
    """

    config: BulkheadConfig

    def __init__(
        self,
        max_concurrent: int,
        max_waiting: int = 0,
        wait_timeout: float | None = None,
        *,
        name: str | None = None,
    ) -> None:
        self._build(BulkheadConfig(
            max_concurrent=max_concurrent, max_waiting=max_waiting, wait_timeout=wait_timeout,
            name=name or "",
        ))

    def _build(self, config: BulkheadConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._active = 0
        self._waiters: collections.deque[_ThreadWaiter | _TaskWaiter] = collections.deque()
        self._compose()

    max_concurrent = setting[int]()
    max_waiting = setting[int]()
    wait_timeout = setting["float | None"]()
    name = setting[str]()

    def __repr__(self) -> str:
        return (
            f"Bulkhead(max_concurrent={self.max_concurrent}, max_waiting={self.max_waiting}, "
            f"wait_timeout={self.wait_timeout})"
        )

    @property
    def active(self) -> int:
        """Calls running now."""
        return self._active

    @property
    def waiting(self) -> int:
        """Calls waiting for a slot now."""
        return len(self._waiters)

    # --- slots ----------------------------------------------------------------------------

    def _release(self) -> None:
        """Free a slot, or hand it straight to the longest waiter."""
        with self._lock:
            if self._waiters:
                waiter = self._waiters.popleft()
                waiter.granted = True
                waiter.wake()
                return
            self._active -= 1

    def _full(self) -> BulkheadFullError:
        if dispatcher.sinks:
            dispatcher.emit(CallRejected(name=self.name, policy="bulkhead", reason="bulkhead_full"))
        return BulkheadFullError(f"bulkhead {self.name!r} is full", name=self.name)

    def _wait_limit(self) -> tuple[float | None, bool]:
        """Seconds a waiter may wait, and whether the context deadline is what bounds it."""
        limit = self.config.wait_timeout
        at = deadline_at()
        if at is None:
            return limit, False
        left = at - clock.monotonic()
        if limit is None or left < limit:
            return max(0.0, left), True
        return limit, False

    def _enqueue(self, waiter: _ThreadWaiter | _TaskWaiter) -> bool:
        """Take a slot (False) or a place in the waiting room (True); raise when full."""
        with self._lock:
            if self._active < self.config.max_concurrent:
                self._active += 1
                return False
            if len(self._waiters) < self.config.max_waiting:
                self._waiters.append(waiter)
                return True
        raise self._full()

    def _gave_up(self, waiter: _ThreadWaiter | _TaskWaiter) -> bool:
        """A waiter stopped waiting; True if it was granted a slot meanwhile (it owns it)."""
        with self._lock:
            if waiter.granted:
                return True
            try:
                self._waiters.remove(waiter)
            except ValueError:
                pass
            return False

    def _acquire(self) -> None:
        if self.config.max_waiting == 0:
            self._enqueue(_NO_WAITER)
            return
        waiter = _ThreadWaiter()
        if not self._enqueue(waiter):
            return
        limit, by_deadline = self._wait_limit()
        got = waiter.lock.acquire() if limit is None else waiter.lock.acquire(timeout=limit)
        if got or self._gave_up(waiter):
            return
        if by_deadline:
            raise DeadlineExceeded(f"deadline passed while waiting for bulkhead {self.name!r}")
        raise self._full()

    async def _aacquire(self) -> None:
        if self.config.max_waiting == 0:
            self._enqueue(_NO_WAITER)
            return
        waiter = _TaskWaiter(asyncio.get_running_loop())
        if not self._enqueue(waiter):
            return
        limit, by_deadline = self._wait_limit()
        try:
            if limit is None:
                await asyncio.shield(waiter.future)
            else:
                await asyncio.wait_for(asyncio.shield(waiter.future), limit)
        except asyncio.TimeoutError:
            if self._gave_up(waiter):
                return
            if by_deadline:
                raise DeadlineExceeded(
                    f"deadline passed while waiting for bulkhead {self.name!r}"
                ) from None
            raise self._full() from None
        except BaseException:
            if self._gave_up(waiter):
                self._release()  # granted as we were cancelled: pass the slot on
            raise

    # --- the call paths -------------------------------------------------------------------

    def wrap(self, inner: Step) -> Step:
        lock, release, acquire = self._lock, self._release, self._acquire
        bulkhead, limit = self, self.config.max_concurrent
        direct = inner is invoke

        def call(fn: Any, args: Any, kwargs: Any) -> Any:
            with lock:
                free = bulkhead._active < limit
                if free:
                    bulkhead._active += 1
            if not free:
                acquire()
            try:
                if direct:
                    return fn(*args, **kwargs)
                return inner(fn, args, kwargs)
            finally:
                release()

        return call

    def awrap(self, inner: AsyncStep) -> AsyncStep:
        lock, release, acquire = self._lock, self._release, self._aacquire
        bulkhead, limit = self, self.config.max_concurrent
        direct = inner is ainvoke

        async def acall(fn: Any, args: Any, kwargs: Any) -> Any:
            with lock:
                free = bulkhead._active < limit
                if free:
                    bulkhead._active += 1
            if not free:
                await acquire()
            try:
                if direct:
                    return await fn(*args, **kwargs)
                return await inner(fn, args, kwargs)
            finally:
                release()

        return acall


_NO_WAITER: Any = None
