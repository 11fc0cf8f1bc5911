"""AdaptiveLimit: a concurrency limit that finds the dependency's capacity by measuring it.

A fixed limit (``Bulkhead(10)``, uvicorn's ``--limit-concurrency``) is wrong as soon as the
capacity behind it changes: too low and it wastes capacity, too high and requests queue in
front of the dependency until each one misses its deadline. ``AdaptiveLimit`` treats the
limit the way TCP treats its congestion window: it watches the latency of the calls it lets
through (and the calls that were dropped: timeouts, THROTTLED answers) and moves the limit.
Latency that grows while concurrency stays the same means a queue is forming, so the limit
goes down; latency at its floor means there is room, so it goes up.

Three algorithms, each a small frozen config whose ``start()`` gives the per-limiter state:

- ``Vegas`` (``"vegas"``): estimates the queue as ``limit * (1 - min_rtt / rtt)`` and keeps
  it between ``alpha`` and ``beta`` requests (scaled by ``log10(limit)``). Stable and
  latency-tight when the no-load latency is steady; the default for servers.
- ``Gradient2`` (``"gradient2"``): compares a short-term latency with a slow moving average
  and shrinks the limit by that gradient, with ``sqrt(limit)`` headroom. Copes with a
  baseline latency that drifts (caches warming, payload mix changing).
- ``Aimd`` (``"aimd"``): additive increase, multiplicative decrease on drops and on windows
  slower than ``latency``. Simple and predictable; choose it when only errors and timeouts,
  not latency, tell you about overload.

Samples are gathered in windows (``window`` seconds and at least ``window_samples`` calls):
the algorithm sees each window's mean latency, its peak concurrency and whether anything was
dropped, so one slow call does not move the limit. A call over the limit is rejected at once
with ``LimitExceededError`` (a ``stoic.Rejected`` with ``retry_after``), or waits up to
``max_wait`` seconds for a slot, never past the context deadline. Waiters are served by
priority (lower number first), then in arrival order; that is what ``LoadShedder`` builds on.

State changes take one small lock, never held across the call or a wait.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .. import clock
from .._validate import count, number, rate, seconds
from ..context import deadline_at
from ..errors import DeadlineExceeded, Rejected
from ..events import CallRejected, Event, dispatcher
from ..outcome import Outcome, classify
from .base import AsyncStep, Policy, Step, ainvoke, invoke

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


class Estimator(Protocol):
    """The mutable state of one algorithm for one limiter."""

    def update(self, limit: float, rtt: float, inflight: int, dropped: bool) -> float:
        """The next limit (before clamping to [min, max]) after a window of samples."""
        ...


class LimitAlgorithm(Protocol):
    """An algorithm's configuration: ``start()`` makes the state for one limiter."""

    def start(self) -> Estimator:
        """Fresh state for a new limiter."""
        ...


def _scale(limit: float) -> float:
    """log10 of the limit, at least 1: how Vegas grows its thresholds with the limit."""
    return max(1.0, math.log10(max(limit, 1.0)))


@dataclass(frozen=True, slots=True)
class Vegas:
    """TCP Vegas applied to concurrency: keep between ``alpha`` and ``beta`` calls queued.

    Args:
        alpha: below this estimated queue (times ``log10(limit)``, at least 1), grow.
        beta: above this estimated queue (same scaling), shrink.
        probe_every: windows between resets of the no-load latency to the current one,
            so a dependency that became slower for good is not punished forever.
    """

    alpha: float = 1.0
    beta: float = 2.0
    probe_every: int = 200

    def __post_init__(self) -> None:
        number("alpha", self.alpha, above=0)
        number("beta", self.beta, at_least=self.alpha)
        count("probe_every", self.probe_every)

    def start(self) -> Estimator:
        return _VegasState(self)


class _VegasState:
    __slots__ = ("config", "min_rtt", "windows")

    def __init__(self, config: Vegas) -> None:
        self.config = config
        self.min_rtt = math.inf
        self.windows = 0

    def update(self, limit: float, rtt: float, inflight: int, dropped: bool) -> float:
        config = self.config
        self.windows += 1
        if self.windows >= config.probe_every:
            self.windows = 0
            self.min_rtt = rtt
            return limit
        if rtt < self.min_rtt:
            self.min_rtt = rtt
        step = _scale(limit)
        if dropped:
            return limit - step
        if inflight * 2 < limit:  # the caller is not using the limit: no evidence either way
            return limit
        queue = limit * (1.0 - self.min_rtt / rtt) if rtt > 0 else 0.0
        if queue > config.beta * step:
            return limit - step
        if queue < config.alpha * step:
            return limit + step
        return limit


@dataclass(frozen=True, slots=True)
class Gradient2:
    """Shrink by the gradient between a long-term and a short-term latency.

    Args:
        tolerance: how much slower than the long-term average a window may be before the
            limit shrinks (1.5: half again as slow).
        smoothing: weight of each new estimate, in (0, 1]: lower is steadier and slower.
        long_window: windows averaged into the long-term latency.
    """

    tolerance: float = 1.5
    smoothing: float = 0.2
    long_window: int = 100

    def __post_init__(self) -> None:
        number("tolerance", self.tolerance, at_least=1.0)
        rate("smoothing", self.smoothing)
        count("long_window", self.long_window)

    def start(self) -> Estimator:
        return _GradientState(self)


class _GradientState:
    __slots__ = ("config", "long_rtt", "weight")

    def __init__(self, config: Gradient2) -> None:
        self.config = config
        self.long_rtt = 0.0
        self.weight = 2.0 / (config.long_window + 1)

    def update(self, limit: float, rtt: float, inflight: int, dropped: bool) -> float:
        config = self.config
        if self.long_rtt <= 0:
            self.long_rtt = rtt
        else:
            self.long_rtt += (rtt - self.long_rtt) * self.weight
        if self.long_rtt > 2 * rtt:  # latency fell a lot: let the average catch up fast
            self.long_rtt = max(rtt, self.long_rtt * 0.9)
        if dropped:
            gradient = 0.5
        elif inflight * 2 < limit:
            return limit
        elif rtt <= 0:
            gradient = 1.0
        else:
            gradient = max(0.5, min(1.0, config.tolerance * self.long_rtt / rtt))
        estimate = limit * gradient + math.sqrt(limit)
        return limit * (1.0 - config.smoothing) + estimate * config.smoothing


@dataclass(frozen=True, slots=True)
class Aimd:
    """Additive increase, multiplicative decrease.

    Args:
        increase: added to the limit after a busy window with no drop.
        backoff: the limit is multiplied by this, in (0, 1), after a window with a drop or
            a mean latency above ``latency``.
        latency: seconds; a window slower than this counts as a drop. None: only drops.
    """

    increase: float = 1.0
    backoff: float = 0.9
    latency: float | None = 1.0

    def __post_init__(self) -> None:
        number("increase", self.increase, above=0)
        if rate("backoff", self.backoff) == 1.0:
            raise ValueError(f"backoff must be in (0, 1), got {self.backoff!r}")
        if self.latency is not None:
            seconds("latency", self.latency, optional=True)

    def start(self) -> Estimator:
        return _AimdState(self)


class _AimdState:
    __slots__ = ("config",)

    def __init__(self, config: Aimd) -> None:
        self.config = config

    def update(self, limit: float, rtt: float, inflight: int, dropped: bool) -> float:
        config = self.config
        if dropped or (config.latency is not None and rtt > config.latency):
            return limit * config.backoff
        if inflight * 2 < limit:
            return limit
        return limit + config.increase


#: The algorithms known by name.
ALGORITHMS: dict[str, Callable[[], LimitAlgorithm]] = {
    "aimd": Aimd, "gradient2": Gradient2, "vegas": Vegas,
}

_GRANTED, _WAITING, _REFUSED = 0, 1, 2


class _Waiter:
    """A call waiting for a slot, in a thread (a held lock) or a task (a future)."""

    __slots__ = ("future", "lock", "loop", "state")

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.state = _WAITING
        self.loop = loop
        if loop is None:
            self.future: asyncio.Future[None] | None = None
            self.lock: threading.Lock | None = threading.Lock()
            self.lock.acquire()
        else:
            self.future = loop.create_future()
            self.lock = None

    def wake(self) -> None:
        if self.lock is not None:
            self.lock.release()
        elif self.loop is not None and self.future is not None:
            try:
                self.loop.call_soon_threadsafe(_resolve, self.future)
            except RuntimeError:  # its loop is closed; the waiter went with it
                pass


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


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
        if isinstance(algorithm, str):
            factory = ALGORITHMS.get(algorithm)
            if factory is None:
                raise ValueError(
                    f"algorithm must be one of {sorted(ALGORITHMS)} or an algorithm config, "
                    f"got {algorithm!r}"
                )
            algorithm = factory()
        elif not callable(getattr(algorithm, "start", None)):
            raise ValueError(f"algorithm must be a name or have start(), got {algorithm!r}")
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
        self._inflight = 0
        self._waiters: list[tuple[int, int, _Waiter]] = []
        self._waiting = 0
        self._order = itertools.count()
        self._rtt = 0.0
        # the window being gathered
        self._window_end = clock.monotonic() + self.window
        self._sum = 0.0
        self._count = 0
        self._peak = 0
        self._dropped = False
        self._compose()

    def __repr__(self) -> str:
        return (
            f"AdaptiveLimit(algorithm={self.algorithm!r}, limit={self._cap}, "
            f"min_limit={self.min_limit}, max_limit={self.max_limit}, name={self.name!r})"
        )

    @property
    def limit(self) -> int:
        """The current limit."""
        return self._cap

    @property
    def inflight(self) -> int:
        """Calls admitted and not finished."""
        return self._inflight

    @property
    def waiting(self) -> int:
        """Calls waiting for a slot."""
        return self._waiting

    @property
    def rtt(self) -> float:
        """The mean latency of the last complete window, in seconds (0 before the first)."""
        return self._rtt

    # --- admission ------------------------------------------------------------------------

    def try_acquire(self, headroom: int = 0) -> float | None:
        """Take a slot without waiting: the start time to give to ``release``, or None.

        With ``headroom`` the call is admitted only if that many slots stay free after it
        (never below one slot in all): how a shedder keeps room for more important work.
        """
        with self._lock:
            if self._inflight >= max(1, self._cap - headroom) or self._waiting:
                return None
            self._inflight += 1
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
        waiter = _Waiter(None)
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
        waiter = _Waiter(asyncio.get_running_loop())
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
        with self._lock:
            inflight = self._inflight
            self._inflight = inflight - 1
            if not ignore:
                self._sum += end - start
                self._count += 1
                if inflight > self._peak:
                    self._peak = inflight
                if dropped:
                    self._dropped = True
            settle = self._waiting or end >= self._window_end
        if settle:
            self._settle(end)

    def _settle(self, end: float) -> None:
        """Close the window if it is complete, and hand free slots to waiters."""
        changed: LimitChanged | None = None
        with self._lock:
            if end >= self._window_end and self._count >= self.window_samples:
                changed = self._update(end)
            if self._waiting:
                self._grant()
        if changed is not None and dispatcher.sinks:
            dispatcher.emit(changed)

    def _update(self, end: float) -> LimitChanged | None:
        """Close the window (lock held): ask the algorithm, clamp, and start a new window."""
        rtt = self._sum / self._count
        peak, dropped, previous = self._peak, self._dropped, self._cap
        value = self._estimator.update(self._value, rtt, peak, dropped)
        if not value >= self.min_limit:  # also NaN
            value = float(self.min_limit)
        elif value > self.max_limit:
            value = float(self.max_limit)
        self._value = value
        self._cap = max(self.min_limit, min(self.max_limit, int(value)))
        self._rtt = rtt
        self._sum, self._count, self._peak, self._dropped = 0.0, 0, 0, False
        self._window_end = end + self.window
        if self._cap == previous or not dispatcher.sinks:
            return None
        return LimitChanged(
            name=self.name, limit=self._cap, previous=previous, rtt=rtt, inflight=peak,
            dropped=dropped,
        )

    def _grant(self) -> None:
        """Hand free slots to the best waiters (lock held)."""
        waiters = self._waiters
        while waiters and self._inflight < self._cap:
            _, _, waiter = heapq.heappop(waiters)
            if waiter.state != _WAITING:
                continue
            waiter.state = _GRANTED
            self._waiting -= 1
            self._inflight += 1
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

    def _enqueue(self, waiter: _Waiter, priority: int) -> bool:
        """Queue ``waiter`` (False), or grant it a slot freed meanwhile (True); when the
        queue is full, the worst waiter, or this one, is refused."""
        evicted: _Waiter | None = None
        with self._lock:
            if self._inflight < self._cap and not self._waiting:  # freed meanwhile
                self._inflight += 1
                waiter.state = _GRANTED
                return True
            if self._waiting >= self.max_waiting:
                worst = None
                for entry in self._waiters:
                    if entry[2].state == _WAITING and (worst is None or entry[:2] > worst[:2]):
                        worst = entry
                if worst is None or worst[0] <= priority:
                    raise self._rejected()
                evicted = worst[2]
                evicted.state = _REFUSED
                self._waiting -= 1
            heapq.heappush(self._waiters, (priority, next(self._order), waiter))
            self._waiting += 1
        if evicted is not None:
            evicted.wake()
        return False

    def _withdraw(self, waiter: _Waiter) -> bool:
        """Stop waiting; True if a slot was granted meanwhile (the caller owns it)."""
        with self._lock:
            if waiter.state == _GRANTED:
                return True
            if waiter.state == _WAITING:
                waiter.state = _REFUSED
                self._waiting -= 1
                if not self._waiting:
                    self._waiters.clear()
            return False

    def _after_wait(self, waiter: _Waiter, by_deadline: bool) -> float:
        if waiter.state == _GRANTED or self._withdraw(waiter):
            return clock.monotonic()
        if by_deadline and waiter.state == _REFUSED and self._deadline_passed():
            raise DeadlineExceeded(
                f"deadline passed while waiting for a slot of {self.name!r}; not started"
            )
        raise self._rejected()

    @staticmethod
    def _deadline_passed() -> bool:
        at = deadline_at()
        return at is not None and at <= clock.monotonic()

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

    # The sync happy path inlines ``release`` (benchmarks/overhead.py, "AdaptiveLimit, free
    # slot (sync)"): one lock round per end of call, the window closed only when it is due.
    # An await costs more than that frame, so the async path calls ``release``.

    def wrap(self, inner: Step) -> Step:
        lock, release, acquire, settle = self._lock, self.release, self.acquire, self._settle
        me = self
        direct = inner is invoke

        def call(fn: Any, args: Any, kwargs: Any) -> Any:
            with lock:
                free = me._inflight < me._cap and not me._waiting
                if free:
                    me._inflight += 1
            start = clock.monotonic() if free else acquire()
            try:
                result = fn(*args, **kwargs) if direct else inner(fn, args, kwargs)
            except Exception as exc:
                dropped = _overloaded(exc)
                release(start, dropped=dropped, ignore=not dropped)  # a 404 says nothing of load
                raise
            except BaseException:
                release(start, ignore=True)
                raise
            end = clock.monotonic()
            with lock:
                inflight = me._inflight
                me._inflight = inflight - 1
                me._sum += end - start
                me._count += 1
                if inflight > me._peak:
                    me._peak = inflight
                due = me._waiting or end >= me._window_end
            if due:
                settle(end)
            return result

        return call

    def awrap(self, inner: AsyncStep) -> AsyncStep:
        lock, release, acquire = self._lock, self.release, self.aacquire
        me = self
        direct = inner is ainvoke

        async def acall(fn: Any, args: Any, kwargs: Any) -> Any:
            with lock:
                free = me._inflight < me._cap and not me._waiting
                if free:
                    me._inflight += 1
            start = clock.monotonic() if free else await acquire()
            try:
                result = await (fn(*args, **kwargs) if direct else inner(fn, args, kwargs))
            except Exception as exc:
                dropped = _overloaded(exc)
                release(start, dropped=dropped, ignore=not dropped)  # a 404 says nothing of load
                raise
            except BaseException:
                release(start, ignore=True)
                raise
            release(start)
            return result

        return acall


def _overloaded(exc: BaseException) -> bool:
    """A failure that says the dependency is overloaded: THROTTLED, UNKNOWN, a timeout."""
    if isinstance(exc, TimeoutError):
        return True
    outcome = classify(exc).outcome
    return outcome is Outcome.THROTTLED or outcome is Outcome.UNKNOWN
