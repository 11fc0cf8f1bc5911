"""AdaptiveLimit: a concurrency limit that finds the dependency's capacity by measuring it.

A fixed limit (``Bulkhead(10)``, uvicorn's ``--limit-concurrency``) is wrong as soon as the
capacity behind it changes: too low and it wastes capacity, too high and requests queue in
front of the dependency until each one misses its deadline. ``AdaptiveLimit`` treats the
limit the way TCP treats its congestion window: it watches the latency of the calls it lets
through (and the calls that were dropped: timeouts, THROTTLED answers) and moves the limit.
Latency that grows while concurrency stays the same means a queue is forming, so the limit
goes down; latency at its floor means there is room, so it goes up. The algorithms (Vegas,
Gradient2, AIMD) live in ``limit_algorithms``.

Samples are gathered in windows (``window`` seconds and at least ``window_samples`` calls):
the algorithm sees each window's mean latency, its peak concurrency and whether anything was
dropped, so one slow call does not move the limit. A call over the limit is rejected at once
with ``LimitExceededError`` (a ``stoic.Rejected`` with ``retry_after``), or waits up to
``max_wait`` seconds for a slot, never past the context deadline. Waiters are served by
priority (lower number first), then in arrival order; that is what ``LoadShedder`` builds on.

How the happy path stays lock-free: the free slots are tokens in a list. A call takes one
with ``list.pop()`` and gives it back with ``list.append()``, each one atomic under the GIL,
so the limit is never exceeded and no lock is taken while slots are free. The lock guards
the rest: closing a window (once per window), the waiters, and retiring tokens after the
limit fell (``_debt``: tokens to take out of circulation as calls give them back). A release
appends its token first and reads ``_slow`` (waiters or debt) after, and whoever sets
``_slow`` does so before looking for free tokens, so a token freed meanwhile is never missed.
The window's latency sum and count are plain attribute updates: a thread switch in the middle
of one could lose a sample; the mean is an estimate either way.
"""

from __future__ import annotations

import asyncio
import math
import threading
from dataclasses import dataclass
from typing import Any

from .. import clock
from .._validate import count, seconds
from ..context import deadline_at
from ..errors import DeadlineExceeded, Rejected
from ..events import CallRejected, Event, dispatcher
from ..outcome import Outcome, classify
from .base import AsyncStep, Policy, Step, ainvoke, invoke
from .limit_algorithms import (
    ALGORITHMS,
    Aimd,
    Estimator,
    Gradient2,
    LimitAlgorithm,
    Vegas,
    resolve_algorithm,
)
from .limit_queue import GRANTED, REFUSED, WAITING, Waiter, WaitingRoom

__all__ = [
    "ALGORITHMS",
    "AdaptiveLimit",
    "Aimd",
    "Estimator",
    "Gradient2",
    "LimitAlgorithm",
    "LimitChanged",
    "LimitExceededError",
    "Vegas",
]


class LimitExceededError(Rejected):
    """Raised when an ``AdaptiveLimit`` is full and the call could not wait for a slot.

    ``retry_after`` is the recent mean latency of admitted calls: about when a slot frees.
    """

    reason = "limit_exceeded"


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitChanged(Event):
    """An adaptive limit moved from ``previous`` to ``limit`` after a window of samples.

    ``rtt`` is the window's mean latency in seconds, ``inflight`` its peak concurrency and
    ``dropped`` whether a call in it was dropped (timeout, THROTTLED answer).
    """

    limit: int
    previous: int
    rtt: float
    inflight: int
    dropped: bool


class AdaptiveLimit(Policy):
    """Admit at most ``limit`` concurrent calls, the limit following measured latency.

    Args:
        algorithm: ``"vegas"``, ``"gradient2"``, ``"aimd"`` (each with its defaults) or a
            configured ``Vegas(...)``, ``Gradient2(...)``, ``Aimd(...)``.
        initial_limit: the limit before any measurement.
        min_limit, max_limit: the limit always stays in ``[min_limit, max_limit]``.
        window: the shortest sampling window, in seconds (> 0).
        window_samples: the fewest calls a window needs before the limit may move (>= 1).
        max_wait: seconds a call over the limit may wait for a slot (0: reject at once);
            never past the context deadline.
        max_waiting: calls allowed to wait at once; beyond it the lowest priority gives way.
        name: names the limit in events and metrics.

    A call that raises a THROTTLED or UNKNOWN failure (a 429/503, a timeout) counts as
    dropped; other failures are not latency samples at all. Raises ``LimitExceededError``
    when there is no slot, ``DeadlineExceeded`` when the deadline passed while waiting.
    """

    def __init__(
        self,
        algorithm: str | LimitAlgorithm = "vegas",
        *,
        initial_limit: int = 20,
        min_limit: int = 1,
        max_limit: int = 1000,
        window: float = 0.1,
        window_samples: int = 10,
        max_wait: float = 0.0,
        max_waiting: int = 1000,
        name: str | None = None,
    ) -> None:
        algorithm = resolve_algorithm(algorithm)
        count("min_limit", min_limit)
        count("max_limit", max_limit)
        count("initial_limit", initial_limit)
        count("window_samples", window_samples)
        count("max_waiting", max_waiting, minimum=0)
        if min_limit > max_limit:
            raise ValueError(f"min_limit must be <= max_limit ({max_limit}), got {min_limit!r}")
        if not min_limit <= initial_limit <= max_limit:
            raise ValueError(
                f"initial_limit must be in [min_limit, max_limit] = [{min_limit}, {max_limit}], "
                f"got {initial_limit!r}"
            )
        self.algorithm = algorithm
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.window = seconds("window", window, finite=True)
        self.window_samples = window_samples
        self.max_wait = seconds("max_wait", max_wait, zero=True, finite=True)
        self.max_waiting = max_waiting
        self.name = name or "adaptive_limit"
        self._estimator = algorithm.start()
        self._lock = threading.Lock()
        self._value = float(initial_limit)
        self._cap = initial_limit
        self._free: list[None] = [None] * initial_limit  # one token per free slot; never rebound
        self._debt = 0  # tokens to retire as calls give them back, after the limit fell
        self._slow = False  # waiters or debt: releases must go through the lock
        self._room = WaitingRoom()
        self._waiting = 0
        self._rtt = 0.0
        self._measured_at = -math.inf
        # the window being gathered
        self._window_end = clock.monotonic() + self.window
        self._sum = 0.0
        self._count = 0
        self._low = initial_limit  # fewest free tokens seen after an admission
        self._dropped = False
        self._compose()

    @property
    def limit(self) -> int:
        """The current limit."""
        return self._cap

    @property
    def inflight(self) -> int:
        """Calls admitted and not finished."""
        return max(0, self._cap + self._debt - len(self._free))

    @property
    def waiting(self) -> int:
        """Calls waiting for a slot."""
        return self._waiting

    # --- admission ------------------------------------------------------------------------

    def _take(self) -> bool:
        """Take a free token if there is one (lock held or not); note the window's peak."""
        free = self._free
        try:
            free.pop()
        except IndexError:
            return False
        if len(free) < self._low:
            self._low = len(free)
        return True

    def try_acquire(self, headroom: int = 0) -> float | None:
        """Take a slot without waiting: the start time to give to ``release``, or None.

        With ``headroom`` the call is admitted only if that many slots stay free after it
        (never below one slot in all): how a shedder keeps room for more important work.
        """
        with self._lock:
            if self._waiting or self.inflight >= max(1, self._cap - headroom):
                return None
            if not self._take():
                return None
        return clock.monotonic()

    def acquire(self, priority: int = 0, timeout: float | None = None) -> float:
        """Take a slot, waiting up to ``timeout`` seconds (``max_wait`` when None).

        Returns the start time to give to ``release``. Raises ``LimitExceededError`` when
        no slot came in time, ``DeadlineExceeded`` when the context deadline passed first.
        """
        start = self.try_acquire()
        if start is not None:
            return start
        limit, by_deadline = self._wait_limit(timeout)
        waiter = Waiter(None)
        if self._enqueue(waiter, priority):
            return clock.monotonic()
        if waiter.lock is not None:
            waiter.lock.acquire(timeout=limit)
        return self._after_wait(waiter, by_deadline)

    async def aacquire(
        self, priority: int = 0, timeout: float | None = None, headroom: int = 0
    ) -> float:
        """``acquire`` for coroutines; the wait never blocks the event loop.

        ``headroom`` applies to taking a free slot at once, as in ``try_acquire``; a slot
        handed over while waiting is handed over whatever the headroom.
        """
        start = self.try_acquire(headroom)
        if start is not None:
            return start
        limit, by_deadline = self._wait_limit(timeout)
        waiter = Waiter(asyncio.get_running_loop())
        if self._enqueue(waiter, priority):
            return clock.monotonic()
        try:
            if waiter.future is not None:
                await asyncio.wait_for(asyncio.shield(waiter.future), limit)
        except asyncio.TimeoutError:
            pass
        except BaseException:
            if self._withdraw(waiter):  # granted as we were cancelled: pass the slot on
                self.release(clock.monotonic(), ignore=True)
            raise
        return self._after_wait(waiter, by_deadline)

    def release(self, start: float, *, dropped: bool = False, ignore: bool = False) -> None:
        """Give back a slot taken at ``start``; record the call's latency unless ``ignore``.

        ``dropped`` marks a call that failed for overload (a timeout, a 503): the algorithm
        treats it as a sign to shrink.
        """
        end = clock.monotonic()
        self._free.append(None)
        if not ignore:
            self._sum += end - start
            self._count += 1
            if dropped:
                self._dropped = True
        if self._slow or end >= self._window_end:
            self._settle(end)

    def _failed(self, start: float, exc: BaseException) -> None:
        """Give back the slot of a call that raised ``exc``: a sample only if it tells of
        overload (a 404 says nothing of load; a cancellation says nothing at all)."""
        dropped = isinstance(exc, Exception) and _overloaded(exc)
        self.release(start, dropped=dropped, ignore=not dropped)

    def _settle(self, end: float) -> None:
        """Retire tokens owed, close the window if it is complete, serve the waiters."""
        changed: LimitChanged | None = None
        with self._lock:
            if end >= self._window_end and self._count >= self.window_samples:
                changed = self._update(end)
            self._retire()
            if self._waiting:
                self._grant()
            self._slow = bool(self._waiting or self._debt)
        if changed is not None and dispatcher.sinks:
            dispatcher.emit(changed)

    def _update(self, end: float) -> LimitChanged | None:
        """Close the window (lock held): ask the algorithm, clamp, and start a new window."""
        rtt = self._sum / self._count
        previous, dropped = self._cap, self._dropped
        peak = max(0, previous + self._debt - self._low)
        value = self._estimator.update(self._value, rtt, peak, dropped)
        if not value >= self.min_limit:  # also NaN
            value = float(self.min_limit)
        elif value > self.max_limit:
            value = float(self.max_limit)
        self._value = value
        self._cap = cap = max(self.min_limit, min(self.max_limit, int(value)))
        if cap > previous:  # new tokens, less what is still owed
            paid = min(self._debt, cap - previous)
            self._debt -= paid
            self._free.extend([None] * (cap - previous - paid))
        elif cap < previous:
            self._debt += previous - cap
            self._slow = True  # before _retire looks at the free tokens
        self._rtt, self._measured_at = rtt, end
        self._sum, self._count, self._dropped = 0.0, 0, False
        self._low = len(self._free)
        self._window_end = end + self.window
        if cap == previous or not dispatcher.sinks:
            return None
        return LimitChanged(
            name=self.name, limit=cap, previous=previous, rtt=rtt, inflight=peak,
            dropped=dropped,
        )

    def _retire(self) -> None:
        """Take owed tokens out of circulation (lock held)."""
        free = self._free
        while self._debt:
            try:
                free.pop()
            except IndexError:
                return
            self._debt -= 1

    def _grant(self) -> None:
        """Hand free tokens to the best waiters (lock held)."""
        room = self._room
        while (waiter := room.best()) is not None and self._take():
            room.remove_best()
            waiter.state = GRANTED
            self._waiting -= 1
            waiter.wake()

    def _wait_limit(self, timeout: float | None) -> tuple[float, bool]:
        """Seconds a waiter may wait and whether the deadline bounds it; raise when none."""
        limit = self.max_wait if timeout is None else timeout
        at = deadline_at()
        by_deadline = False
        if at is not None:
            left = at - clock.monotonic()
            if left <= 0:
                raise DeadlineExceeded(
                    f"deadline passed before a slot of {self.name!r} was free; not started"
                )
            if left < limit:
                limit, by_deadline = left, True
        if limit <= 0:
            raise self._rejected()
        return limit, by_deadline

    def _enqueue(self, waiter: Waiter, priority: int) -> bool:
        """Queue ``waiter`` (False), or grant it a slot freed meanwhile (True); when the
        queue is full, the worst waiter, or this one, is refused."""
        evicted: Waiter | None = None
        with self._lock:
            if not self._waiting and self._take():  # freed meanwhile
                waiter.state = GRANTED
                return True
            if self._waiting >= self.max_waiting:
                worst = self._room.worst()
                if worst is None or worst[0] <= priority:
                    raise self._rejected()
                evicted = worst[1]
                evicted.state = REFUSED
                self._waiting -= 1
            self._room.add(waiter, priority)
            self._waiting += 1
            self._slow = True  # before _grant looks for a token given back meanwhile
            self._grant()
        if evicted is not None:
            evicted.wake()
        return waiter.state == GRANTED

    def _withdraw(self, waiter: Waiter) -> bool:
        """Stop waiting; True if a slot was granted meanwhile (the caller owns it)."""
        with self._lock:
            if waiter.state == GRANTED:
                return True
            if waiter.state == WAITING:
                waiter.state = REFUSED
                self._waiting -= 1
                if not self._waiting:
                    self._room.clear()
                    self._slow = bool(self._debt)
            return False

    def _after_wait(self, waiter: Waiter, by_deadline: bool) -> float:
        if waiter.state == GRANTED or self._withdraw(waiter):
            return clock.monotonic()
        if by_deadline and waiter.state == REFUSED and self._deadline_passed():
            raise DeadlineExceeded(
                f"deadline passed while waiting for a slot of {self.name!r}; not started"
            )
        raise self._rejected()

    @staticmethod
    def _deadline_passed() -> bool:
        at = deadline_at()
        return at is not None and at <= clock.monotonic()

    @property
    def rtt(self) -> float:
        """The mean latency of the last complete window, in seconds (0 before the first)."""
        return self._rtt

    @property
    def rtt_age(self) -> float:
        """Seconds since the last window closed (``rtt`` was measured); inf before the first.

        A limit that admits nothing closes no window: its ``rtt`` is then old news."""
        return clock.monotonic() - self._measured_at

    def _rejected(self) -> LimitExceededError:
        retry_after = self._rtt if self._rtt > 0 else None
        if dispatcher.sinks:
            dispatcher.emit(
                CallRejected(
                    name=self.name, policy="adaptive_limit", reason="limit_exceeded",
                    retry_after=retry_after,
                )
            )
        return LimitExceededError(
            f"adaptive limit {self.name!r} is full ({self._cap} in flight)",
            retry_after=retry_after, name=self.name,
        )

    # --- the call paths -------------------------------------------------------------------

    # The sync path inlines ``_take`` and ``release`` (benchmarks/overhead.py, "AdaptiveLimit,
    # free slot"); an await costs more than their frames, so the async path calls them.

    def wrap(self, inner: Step) -> Step:
        me, failed, acquire, settle = self, self._failed, self.acquire, self._settle
        free = self._free
        take, give = free.pop, free.append
        direct = inner is invoke

        def call(fn: Any, args: Any, kwargs: Any) -> Any:
            if me._waiting:
                start = acquire()
            else:
                try:
                    take()
                except IndexError:
                    start = acquire()
                else:
                    if len(free) < me._low:
                        me._low = len(free)
                    start = clock.monotonic()
            try:
                result = fn(*args, **kwargs) if direct else inner(fn, args, kwargs)
            except BaseException as exc:
                failed(start, exc)
                raise
            end = clock.monotonic()
            give(None)
            me._sum += end - start
            me._count += 1
            if me._slow or end >= me._window_end:
                settle(end)
            return result

        return call

    def awrap(self, inner: AsyncStep) -> AsyncStep:
        me, failed, acquire, take = self, self._failed, self.aacquire, self._take
        release = self.release
        direct = inner is ainvoke

        async def acall(fn: Any, args: Any, kwargs: Any) -> Any:
            if me._waiting or not take():
                start = await acquire()
            else:
                start = clock.monotonic()
            try:
                result = await (fn(*args, **kwargs) if direct else inner(fn, args, kwargs))
            except BaseException as exc:
                failed(start, exc)
                raise
            release(start)
            return result

        return acall

    def __repr__(self) -> str:
        return (
            f"AdaptiveLimit(algorithm={self.algorithm!r}, limit={self._cap}, "
            f"min_limit={self.min_limit}, max_limit={self.max_limit}, name={self.name!r})"
        )


def _overloaded(exc: BaseException) -> bool:
    """A failure that says the dependency is overloaded: THROTTLED, UNKNOWN, a timeout."""
    if isinstance(exc, TimeoutError):
        return True
    outcome = classify(exc).outcome
    return outcome is Outcome.THROTTLED or outcome is Outcome.UNKNOWN
