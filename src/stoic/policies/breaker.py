"""CircuitBreaker: stop calling a dependency that is failing, and find out when it is back.

A breaker watches the outcomes of recent calls in a sliding window (``CountWindow``: the last
N calls, or ``TimeWindow``: the last N seconds in one-second buckets). Once the window holds at
least ``minimum_calls`` calls and the failure rate (or the slow-call rate) reaches its
threshold, the breaker opens: for ``open_for`` seconds every call is rejected at once with
``CircuitOpenError`` carrying ``retry_after``, which spares the dependency and the caller the
wait. Then it goes half-open and lets at most ``half_open_calls`` trial calls through; their
failure and slow-call rates decide whether it closes again or re-opens (optionally for longer
each time, up to ``max_open_for``).

What counts as a failure is decided by ``stoic.classify``: TRANSIENT, THROTTLED and UNKNOWN
are the dependency failing; PERMANENT is not (a 404 or a bad argument says nothing about the
dependency's health). Calls the breaker rejects itself are never recorded. Cancellation is
not an outcome: a cancelled trial call gives its slot back without counting.

Calls through a closed breaker run concurrently: the lock is held only for the O(1) update of
the window after a call returns, never around the call. The closed path allocates nothing
and reads the clock only when something needs a duration (a ``slow_call_duration``, a
``TimeWindow`` or a subscribed event sink). A rejection builds a fresh, small exception each
time, so no traceback accumulates and rejecting costs constant time.

Breakers are named and registered in ``breakers`` (name -> breaker, read-only), the one
piece of global state here, for the CLI, health probes and metrics. With
``state=stoic.state.RedisState(...)`` every process of a fleet shares opens and half-open
trials for breakers of the same name; see ``stoic.state``.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import functools
import inspect
import itertools
import logging
import threading
import types
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from .. import clock
from .._validate import count, is_number, non_empty, number, rate, seconds
from ..errors import CircuitOpenError, Rejected
from ..events import CallRejected, Event, dispatcher
from ..outcome import Outcome, classify
from .base import AsyncStep, Policy, Step, ainvoke, invoke

if TYPE_CHECKING:
    from ..state import SharedState

__all__ = [
    "BreakerClosed",
    "BreakerDisabled",
    "BreakerForcedOpen",
    "BreakerHalfOpened",
    "BreakerMetrics",
    "BreakerOpened",
    "BreakerState",
    "BreakerTransitioned",
    "CircuitBreaker",
    "CountWindow",
    "TimeWindow",
    "breakers",
]

_log = logging.getLogger("stoic")

P = ParamSpec("P")
T = TypeVar("T")

# --- states -------------------------------------------------------------------------------


class BreakerState(str, enum.Enum):
    """Where a breaker is. ``forced_open`` and ``disabled`` are set only by hand."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"


# Small ints on the hot path: comparing them is cheaper than comparing enum members.
_CLOSED, _OPEN, _HALF_OPEN, _FORCED_OPEN, _DISABLED = 0, 1, 2, 3, 4
_STATES = (
    BreakerState.CLOSED,
    BreakerState.OPEN,
    BreakerState.HALF_OPEN,
    BreakerState.FORCED_OPEN,
    BreakerState.DISABLED,
)

# Outcome codes recorded in a window: bit 1 = failure, bit 2 = slow; _SKIP: record nothing;
# _JUDGE: record nothing, but judge what the window holds.
_FAILURE, _SLOW, _SKIP, _JUDGE = 1, 2, -1, -2

# --- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerTransitioned(Event):
    """Base of the breaker's transition events: it moved from ``previous`` to ``state``.

    ``source`` is ``"local"`` when this process decided, ``"remote"`` when it followed shared
    state (another process of the fleet opened or closed the breaker), ``"manual"`` for
    ``force_open()``, ``disable()`` and ``reset()``.
    """

    previous: str
    state: str
    source: str = "local"


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerOpened(BreakerTransitioned):
    """The breaker opened: calls are rejected for ``open_for`` seconds.

    The rates and ``calls`` are those of the window (or the half-open trials) that tripped it.
    """

    failure_rate: float
    slow_call_rate: float
    calls: int
    open_for: float


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerHalfOpened(BreakerTransitioned):
    """The open period ended; up to ``trial_calls`` trial calls will decide what comes next."""

    trial_calls: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerClosed(BreakerTransitioned):
    """The breaker closed (trials succeeded, or it was reset): calls flow normally."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerForcedOpen(BreakerTransitioned):
    """``force_open()`` was called: every call is rejected until ``reset()``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerDisabled(BreakerTransitioned):
    """``disable()`` was called: every call passes and nothing is recorded until ``reset()``."""


@dataclass(frozen=True, slots=True)
class BreakerMetrics:
    """What the window holds now (for probes, the CLI and tests)."""

    calls: int
    failures: int
    slow_calls: int

    @property
    def failure_rate(self) -> float:
        return self.failures / self.calls if self.calls else 0.0

    @property
    def slow_call_rate(self) -> float:
        return self.slow_calls / self.calls if self.calls else 0.0


# --- windows ------------------------------------------------------------------------------


class CountWindow:
    """Judge the last ``size`` calls (Resilience4j's count-based sliding window)."""

    __slots__ = ("size",)

    def __init__(self, size: int = 100) -> None:
        count("size", size)
        self.size = size

    def __repr__(self) -> str:
        return f"CountWindow({self.size})"

    def _ring(self) -> _CountRing:
        return _CountRing(self.size)


class TimeWindow:
    """Judge the calls of the last ``seconds`` seconds, kept in one-second buckets.

    Better than a count window when traffic varies a lot: a quiet hour does not keep a
    failure from an hour ago in the window.
    """

    __slots__ = ("seconds",)

    def __init__(self, seconds: int = 60) -> None:
        count("seconds", seconds, maximum=3600)
        self.seconds = seconds

    def __repr__(self) -> str:
        return f"TimeWindow(seconds={self.seconds})"

    def _ring(self) -> _TimeRing:
        return _TimeRing(self.seconds)


class _CountRing:
    """The last ``size`` calls, kept as a call counter plus the positions of bad calls.

    A success only advances ``seq``, an ``itertools.count`` (atomic under the GIL, no lock,
    no allocation); failures and slow calls are remembered by position in two deques, and a
    position older than ``size`` calls drops out. So the healthy path costs one ``next()``,
    and a failure is O(1) amortised under the breaker's lock.
    """

    __slots__ = ("_failures", "_size", "_slow", "seq")

    def __init__(self, size: int) -> None:
        self._size = size
        self._failures: collections.deque[int] = collections.deque()
        self._slow: collections.deque[int] = collections.deque()
        self.seq = itertools.count()

    def clear(self) -> None:
        self.seq = itertools.count()
        self._failures.clear()
        self._slow.clear()

    def _counts(self, position: int) -> tuple[int, int, int]:
        """(calls, failures, slow) with ``position`` the index of the latest call."""
        floor = position - self._size
        failures, slow = self._failures, self._slow
        while failures and failures[0] <= floor:
            failures.popleft()
        while slow and slow[0] <= floor:
            slow.popleft()
        calls = position + 1
        return (calls if calls < self._size else self._size), len(failures), len(slow)

    def add(self, code: int, now: float) -> tuple[int, int, int]:
        position = next(self.seq)
        if code:
            if code & _FAILURE:
                self._failures.append(position)
            if code & _SLOW:
                self._slow.append(position)
        return self._counts(position)

    def counts(self, now: float) -> tuple[int, int, int]:
        # the next position, read without taking it: count's repr is "count(N)"
        return self._counts(int(repr(self.seq)[6:-1]) - 1)


class _TimeRing:
    """Per-second buckets over the last ``seconds`` seconds, with running totals.

    Moving to a new second clears the buckets that fell out of the window, at most one pass
    over the ring, so the cost per record is O(1) amortised and bounded by the ring size.
    """

    __slots__ = (
        "_calls", "_fail", "_head", "_size", "_slow", "calls", "failures", "seq", "slow"
    )

    def __init__(self, seconds: int) -> None:
        self.seq = itertools.count()  # unused: a time window always records under the lock
        self._size = seconds
        self._calls = [0] * seconds
        self._fail = [0] * seconds
        self._slow = [0] * seconds
        self._head: int | None = None
        self.calls = self.failures = self.slow = 0

    def expire(self, now: float) -> None:
        second = int(now)
        head = self._head
        if head is None:
            self._head = second
            return
        if second <= head:
            return
        size = self._size
        steps = second - head
        if steps > size:
            steps = size
        for s in range(head + 1, head + 1 + steps):
            i = s % size
            if self._calls[i]:
                self.calls -= self._calls[i]
                self.failures -= self._fail[i]
                self.slow -= self._slow[i]
                self._calls[i] = self._fail[i] = self._slow[i] = 0
        self._head = second

    def clear(self) -> None:
        for i in range(self._size):
            self._calls[i] = self._fail[i] = self._slow[i] = 0
        self._head = None
        self.calls = self.failures = self.slow = 0

    def counts(self, now: float) -> tuple[int, int, int]:
        self.expire(now)
        return self.calls, self.failures, self.slow

    def add(self, code: int, now: float) -> tuple[int, int, int]:
        self.expire(now)
        head = self._head
        assert head is not None  # set by expire
        i = head % self._size
        self._calls[i] += 1
        self.calls += 1
        if code:
            if code & _FAILURE:
                self._fail[i] += 1
                self.failures += 1
            if code & _SLOW:
                self._slow[i] += 1
                self.slow += 1
        return self.calls, self.failures, self.slow


# --- the registry -------------------------------------------------------------------------

_registry: dict[str, CircuitBreaker] = {}
_registry_lock = threading.Lock()

#: Every breaker by name (read-only; the latest breaker made with a name wins).
breakers: Mapping[str, CircuitBreaker] = types.MappingProxyType(_registry)


def _reset_registry() -> None:
    """Forget every breaker and detach them from shared state (for tests)."""
    with _registry_lock:
        old = list(_registry.values())
        _registry.clear()
    for breaker in old:
        if breaker._shared is not None:
            breaker._shared.detach(breaker)


# --- the breaker --------------------------------------------------------------------------

_Pending = list[Callable[[], None]]

# What _admit returns besides a trial generation (an int >= 0).
_PASS = -1  # closed (a race) or disabled: run the call as the fast path would
_UNRECORDED = -2  # disabled: run the call, record nothing
_NEED_LEASE = -3  # open period over, but the fleet must grant the trial first


def _code_of(exc: Exception) -> int:
    if isinstance(exc, Rejected):
        return _SKIP  # another policy refused the call: the dependency was never asked
    return _FAILURE if classify(exc).outcome.is_failure else 0


def _outcome_name(exc: BaseException | None) -> str:
    if exc is None:
        return Outcome.SUCCESS.value
    return classify(exc).outcome.value


class _CircuitOpen(CircuitOpenError):
    """The ``CircuitOpenError`` a breaker raises: one C-level construction per rejection.

    Rejecting must be cheap, and every rejection needs a fresh exception (a shared one would
    keep growing its traceback). So ``args`` is ``(retry_after, name)``, ``__init__`` is
    ``BaseException``'s (no Python frame, no ``__dict__`` to fill), and the message is
    formatted only when someone reads it. Everywhere else it is a ``CircuitOpenError``: it
    carries that name in tracebacks, logs and metrics, and pickles as one.
    """

    if TYPE_CHECKING:

        def __init__(self, retry_after: float | None, name: str, /) -> None: ...

    else:
        __init__ = BaseException.__init__  # sets args only; CPython calls it without a frame

    @property  # type: ignore[override]
    def retry_after(self) -> float | None:
        return self.args[0]  # type: ignore[no-any-return]

    @retry_after.setter
    def retry_after(self, value: float | None) -> None:
        self.args = (value, *self.args[1:])

    @property  # type: ignore[override]
    def name(self) -> str:
        return self.args[1]  # type: ignore[no-any-return]

    @name.setter
    def name(self, value: str) -> None:
        self.args = (self.args[0], value)

    def __str__(self) -> str:
        return f"circuit {self.name!r} is open"

    def __repr__(self) -> str:
        return f"CircuitOpenError({str(self)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return CircuitOpenError, (str(self),), {"retry_after": self.retry_after, "name": self.name}


_CircuitOpen.__name__ = _CircuitOpen.__qualname__ = CircuitOpenError.__name__
_CircuitOpen.__module__ = CircuitOpenError.__module__


class CircuitBreaker(Policy):
    """Reject calls to a failing dependency for a while, then test it with a few trial calls.

    Args:
        name: identifies the breaker in ``stoic.breakers``, events, metrics and shared state.
        failure_rate: open when failures / calls in the window reach this, in (0, 1].
        slow_call_rate: open when slow calls / calls reach this, in (0, 1]; 1.0 means only
            a window of nothing but slow calls opens it.
        slow_call_duration: seconds after which a call counts as slow; None: never slow.
        window: ``CountWindow(100)`` (default) or ``TimeWindow(seconds)``.
        minimum_calls: judge no rate before the window holds this many calls (>= 1), so
            two failures out of three calls at startup do not open the breaker.
        open_for: seconds to reject before trying again (> 0).
        half_open_calls: trial calls admitted after ``open_for`` (>= 1); more concurrent
            calls are rejected, so a recovering dependency is not hit by a stampede.
        state: ``stoic.state.RedisState`` to share opens and trials with every process
            using a breaker of this name; None (or ``MemoryState``) keeps it local.
        open_for_growth: multiply ``open_for`` by this each time trials fail and the breaker
            re-opens (>= 1; 1 means no growth); a close resets it.
        max_open_for: cap on the grown open period, in seconds (>= ``open_for``).
    """

    __slots__ = (
        "_consecutive_opens",
        "_generation",
        "_leasing",
        "_lock",
        "_mode",
        "_open_until",
        "_opened_for",
        "_ring",
        "_seq",
        "_shared",
        "_timed",
        "_trial_admitted",
        "_trial_done",
        "_trial_failures",
        "_trial_slow",
        "failure_rate",
        "half_open_calls",
        "max_open_for",
        "minimum_calls",
        "name",
        "open_for",
        "open_for_growth",
        "slow_call_duration",
        "slow_call_rate",
        "window",
    )

    def __init__(
        self,
        name: str,
        failure_rate: float = 0.5,
        slow_call_rate: float = 1.0,
        slow_call_duration: float | None = None,
        window: CountWindow | TimeWindow | None = None,
        minimum_calls: int = 20,
        open_for: float = 30.0,
        half_open_calls: int = 5,
        state: SharedState | None = None,
        *,
        open_for_growth: float = 1.0,
        max_open_for: float | None = None,
    ) -> None:
        non_empty("name", name)
        rate("failure_rate", failure_rate)
        rate("slow_call_rate", slow_call_rate)
        if slow_call_duration is not None:
            seconds("slow_call_duration", slow_call_duration, optional=True)
        if window is None:
            window = CountWindow(100)
        elif not isinstance(window, (CountWindow, TimeWindow)):
            raise ValueError(f"window must be a CountWindow or a TimeWindow, got {window!r}")
        count("minimum_calls", minimum_calls)
        seconds("open_for", open_for, finite=True)
        count("half_open_calls", half_open_calls)
        number("open_for_growth", open_for_growth, at_least=1)
        if max_open_for is not None and not (
            is_number(max_open_for) and open_for <= max_open_for < float("inf")
        ):
            raise ValueError(
                f"max_open_for must be >= open_for ({open_for!r}) or None, got {max_open_for!r}"
            )
        if state is not None and not hasattr(state, "attach"):
            raise ValueError(f"state must be a stoic.state backend or None, got {state!r}")
        self.name = name
        self.failure_rate = float(failure_rate)
        self.slow_call_rate = float(slow_call_rate)
        self.slow_call_duration = None if slow_call_duration is None else float(
            slow_call_duration
        )
        self.window = window
        self.minimum_calls = minimum_calls
        self.open_for = float(open_for)
        self.half_open_calls = half_open_calls
        self.open_for_growth = float(open_for_growth)
        if max_open_for is None:
            max_open_for = self.open_for if open_for_growth == 1.0 else self.open_for * 10
        self.max_open_for = float(max_open_for)
        self._lock = threading.Lock()
        self._mode = _CLOSED
        self._ring: _CountRing | _TimeRing = window._ring()
        self._seq = self._ring.seq
        self._timed = self.slow_call_duration is not None or isinstance(window, TimeWindow)
        self._open_until = 0.0
        self._opened_for = self.open_for
        self._consecutive_opens = 0
        self._generation = 0
        self._trial_admitted = self._trial_done = 0
        self._trial_failures = self._trial_slow = 0
        self._leasing = False
        self._shared = None if state is None or not state.shared else state
        self._compose()
        with _registry_lock:
            _registry[name] = self
        if self._shared is not None:
            self._shared.attach(self)

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker({self.name!r}, state={self.state.value}, "
            f"failure_rate={self.failure_rate}, window={self.window!r}, "
            f"minimum_calls={self.minimum_calls}, open_for={self.open_for})"
        )

    # --- public state ---------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The current state. An open breaker whose time is up reads as half-open."""
        mode = self._mode
        if mode == _OPEN and not self._leasing and clock._monotonic() >= self._open_until and (
            self._shared is None
        ):
            return BreakerState.HALF_OPEN
        return _STATES[mode]

    @property
    def retry_after(self) -> float | None:
        """Seconds until an open breaker admits a trial; None when not open."""
        if self._mode != _OPEN:
            return None
        return max(0.0, self._open_until - clock._monotonic())

    @property
    def metrics(self) -> BreakerMetrics:
        """Counts in the window right now."""
        with self._lock:
            return BreakerMetrics(*self._ring.counts(clock._monotonic()))

    def force_open(self) -> None:
        """Reject every call until ``reset()``: for maintenance, or to shed a dependency."""
        self._manual(_FORCED_OPEN, BreakerForcedOpen)

    def disable(self) -> None:
        """Let every call through and record nothing until ``reset()``."""
        self._manual(_DISABLED, BreakerDisabled)

    def reset(self) -> None:
        """Close the breaker and forget the window and any grown open period."""
        self._manual(_CLOSED, BreakerClosed)

    def _manual(self, mode: int, kind: type[BreakerTransitioned]) -> None:
        pending: _Pending = []
        with self._lock:
            previous = self._mode
            self._enter(mode)
            self._consecutive_opens = 0
            self._clear_window()
            self._later_event(pending, kind, previous, mode, "manual")
        _run(pending)

    # --- transitions (called with the lock held; side effects go to ``pending``) -----------

    def _enter(self, mode: int) -> None:
        self._mode = mode
        self._generation += 1
        self._trial_admitted = self._trial_done = 0
        self._trial_failures = self._trial_slow = 0
        self._leasing = False

    def _later_event(
        self, pending: _Pending, kind: type[BreakerTransitioned], previous: int, mode: int,
        source: str, **extra: Any,
    ) -> None:
        old, new, name = _STATES[previous].value, _STATES[mode].value, self.name
        pending.append(
            lambda: _log.warning("stoic breaker %s: %s -> %s (%s)", name, old, new, source)
        )
        if dispatcher.sinks:
            event = kind(name=name, previous=old, state=new, source=source, **extra)
            pending.append(lambda: dispatcher.emit(event))

    def _open(
        self, pending: _Pending, calls: int, failures: int, slow: int, reopen: bool
    ) -> None:
        previous = self._mode
        now = clock._monotonic()
        if reopen:
            self._consecutive_opens += 1
        else:
            self._consecutive_opens = 0
        duration = self.open_for * self.open_for_growth ** self._consecutive_opens
        if duration > self.max_open_for:
            duration = self.max_open_for
        self._enter(_OPEN)
        self._opened_for = duration
        self._open_until = now + duration
        shared = self._shared
        if shared is not None:
            pending.append(lambda: shared.opened(self, duration))
        self._later_event(
            pending, BreakerOpened, previous, _OPEN, "local",
            failure_rate=failures / calls if calls else 0.0,
            slow_call_rate=slow / calls if calls else 0.0, calls=calls, open_for=duration,
        )

    def _close(self, pending: _Pending) -> None:
        previous = self._mode
        self._enter(_CLOSED)
        self._consecutive_opens = 0
        self._clear_window()
        shared = self._shared
        if shared is not None:
            pending.append(lambda: shared.closed(self))
        self._later_event(pending, BreakerClosed, previous, _CLOSED, "local")

    def _half_open(self, pending: _Pending) -> None:
        previous = self._mode
        self._enter(_HALF_OPEN)
        self._later_event(
            pending, BreakerHalfOpened, previous, _HALF_OPEN, "local",
            trial_calls=self.half_open_calls,
        )

    # --- recording ------------------------------------------------------------------------

    def _clear_window(self) -> None:
        self._ring.clear()
        self._seq = self._ring.seq

    def _record(self, code: int, now: float) -> None:
        """Record a closed-state call. Opens the breaker when a threshold is reached."""
        if code == _SKIP:
            return
        pending: _Pending | None = None
        with self._lock:
            if self._mode != _CLOSED:
                return
            ring = self._ring
            calls, failures, slow = ring.counts(now) if code == _JUDGE else ring.add(code, now)
            if calls >= self.minimum_calls and (
                failures >= self.failure_rate * calls or slow >= self.slow_call_rate * calls
            ):
                pending = []
                self._open(pending, calls, failures, slow, reopen=False)
        if pending:
            _run(pending)

    def _check(self) -> None:
        """The window just reached ``minimum_calls`` on a success: judge what it holds."""
        self._record(_JUDGE, 0.0)

    def _record_trial(self, generation: int, code: int, now: float) -> None:
        """Record a half-open trial; the last of them closes or re-opens the breaker."""
        if code < 0:
            self._release_trial(generation)
            return
        pending: _Pending = []
        with self._lock:
            if generation != self._generation or self._mode != _HALF_OPEN:
                return  # a trial of an earlier half-open period, or a manual transition
            self._trial_done += 1
            if code & _FAILURE:
                self._trial_failures += 1
            if code & _SLOW:
                self._trial_slow += 1
            n = self._trial_done
            if n < self.half_open_calls:
                return
            failures, slow = self._trial_failures, self._trial_slow
            if failures >= self.failure_rate * n or slow >= self.slow_call_rate * n:
                self._open(pending, n, failures, slow, reopen=True)
            else:
                self._close(pending)
        _run(pending)

    def _release_trial(self, generation: int) -> None:
        """A trial was cancelled: give its slot back without counting it."""
        with self._lock:
            if generation == self._generation and self._mode == _HALF_OPEN:
                self._trial_admitted -= 1

    # --- admission (the slow path: open, half-open, forced, disabled) ---------------------

    def _admit(self) -> int:
        """Decide whether a call may start when the breaker is not plainly closed.

        Returns a trial generation (>= 0), ``_PASS``, ``_UNRECORDED`` or ``_NEED_LEASE``;
        raises ``CircuitOpenError`` to reject.
        """
        pending: _Pending = []
        retry_after: float | None = None
        admitted = -4
        with self._lock:
            mode = self._mode
            if mode == _CLOSED:
                return _PASS
            if mode == _DISABLED:
                return _UNRECORDED
            if mode == _OPEN:
                left = self._open_until - clock._monotonic()
                if left > 0 or self._leasing:
                    retry_after = left if left > 0 else 0.0
                elif self._shared is not None:
                    self._leasing = True  # one call per process asks the fleet for the trial
                    return _NEED_LEASE
                else:
                    self._half_open(pending)
                    mode = _HALF_OPEN
            if mode == _HALF_OPEN and self._trial_admitted < self.half_open_calls:
                self._trial_admitted += 1
                admitted = self._generation
        _run(pending)
        if admitted >= 0:
            return admitted
        raise self._rejected(retry_after)

    def _after_lease(self, granted: bool) -> int:
        """Act on the fleet's answer to a trial-lease request made by ``_admit``."""
        pending: _Pending = []
        generation = -4
        retry_after: float | None = None
        with self._lock:
            mode = self._mode
            if mode != _OPEN or not self._leasing:
                # something else moved the breaker meanwhile (a remote close, a reset, ...)
                self._leasing = False
                if mode in (_CLOSED, _DISABLED):
                    return _PASS if mode == _CLOSED else _UNRECORDED
                if mode == _OPEN:
                    retry_after = max(0.0, self._open_until - clock._monotonic())
            elif granted:
                self._half_open(pending)
                self._trial_admitted = 1
                generation = self._generation
            else:
                # another process runs the trial; its outcome reaches us through shared state
                self._leasing = False
                wait = min(self.open_for, 1.0)
                self._open_until = clock._monotonic() + wait
                retry_after = wait
        _run(pending)
        if generation >= 0:
            return generation
        raise self._rejected(retry_after)

    def _rejected(self, retry_after: float | None) -> CircuitOpenError:
        """The rejection of the slow path (and of every rejection while a sink listens)."""
        if dispatcher.sinks:
            dispatcher.emit(
                CallRejected(
                    name=self.name, policy="circuit_breaker", reason="circuit_open",
                    retry_after=retry_after,
                )
            )
        return _CircuitOpen(retry_after, self.name)

    # --- following the fleet (called by shared state, from its own thread) ------------------

    def follow_open(self, ttl: float) -> None:
        """Another process opened this breaker for ``ttl`` more seconds: follow it.

        For shared-state backends (``stoic.state.SharedState``); thread-safe. A forced-open
        or disabled breaker ignores it, and so does a ``ttl`` <= 0.
        """
        pending: _Pending = []
        with self._lock:
            mode = self._mode
            if mode in (_FORCED_OPEN, _DISABLED) or ttl <= 0:
                return
            now = clock._monotonic()
            if mode == _OPEN:
                self._open_until = now + ttl
                self._leasing = False
                return
            self._enter(_OPEN)
            self._opened_for = ttl
            self._open_until = now + ttl
            self._later_event(
                pending, BreakerOpened, mode, _OPEN, "remote",
                failure_rate=0.0, slow_call_rate=0.0, calls=0, open_for=ttl,
            )
        _run(pending)

    def follow_close(self) -> None:
        """Another process's trial calls succeeded: close too (if open or half-open).

        For shared-state backends, like ``follow_open``; thread-safe.
        """
        pending: _Pending = []
        with self._lock:
            mode = self._mode
            if mode not in (_OPEN, _HALF_OPEN):
                return
            self._enter(_CLOSED)
            self._consecutive_opens = 0
            self._clear_window()
            self._later_event(pending, BreakerClosed, mode, _CLOSED, "remote")
        _run(pending)

    # --- the call paths -------------------------------------------------------------------
    #
    # Four entry points run a call: the steps ``wrap`` and ``awrap`` build for pipelines and
    # ``call``/``acall``, and the two decorator wrappers of ``__call__``. Each one inlines the
    # same two fast paths, because a helper would cost a frame on every call:
    #   open, time left, no sink:  raise _CircuitOpen(left, name), nothing else;
    #   closed, nothing measured:  run the call, count it with one next(), take the lock only
    #                              on a failure.
    # Everything else (half-open, forced open, disabled, a sink or recorder listening, a
    # slow_call_duration or TimeWindow to measure) goes through ``_admit`` and ``_settle``,
    # written once. ``timed`` and ``slow_path`` have async twins that differ only by
    # ``await`` (and, for the trial lease, by running the round trip off the event loop).

    def _settle(self, generation: int, exc: Exception | None, start: float, end: float) -> None:
        """Record a measured call, in the window (``_PASS``) or as a half-open trial."""
        code = 0 if exc is None else _code_of(exc)
        if code >= 0:
            slow = self.slow_call_duration
            if slow is not None and end - start >= slow:
                code |= _SLOW
        if generation != _PASS:
            self._record_trial(generation, code, end)
        elif code == 0 and not self._timed:  # a plain success: the lock-free step
            self._measured_success(end - start)
            return
        else:
            self._record(code, end)
        record = dispatcher.record
        if record is not None:
            record(
                "circuit_breaker", self.name, _outcome_name(exc), end - start, 1,
                None if exc is None else type(exc).__name__,
            )

    def _measured_success(self, duration: float) -> None:
        """A plain success through a closed breaker while calls are measured (metrics on)."""
        if next(self._seq) == self.minimum_calls - 1:
            self._check()
        record = dispatcher.record
        if record is not None:
            record("circuit_breaker", self.name, "success", duration, 1, None)

    def _lease(self) -> int:
        """Ask the fleet for the half-open trial (one short round trip), then act on it."""
        shared = self._shared
        assert shared is not None
        try:
            granted = shared.acquire_trial(self)
        except BaseException:
            self._after_lease_abandoned()
            raise
        return self._after_lease(granted)

    async def _alease(self) -> int:
        """``_lease`` for async callers: the round trip runs off the event loop thread."""
        shared = self._shared
        assert shared is not None
        loop = asyncio.get_running_loop()
        try:
            granted = await loop.run_in_executor(None, shared.acquire_trial, self)
        except BaseException:
            self._after_lease_abandoned()
            raise
        return self._after_lease(granted)

    def _after_lease_abandoned(self) -> None:
        with self._lock:
            self._leasing = False

    def wrap(self, inner: Step) -> Step:
        breaker, name = self, self.name
        record, settle, release = self._record, self._settle, self._release_trial
        measured_success = self._measured_success
        check_at = self.minimum_calls - 1
        timed_mode = self._timed
        direct = inner is invoke  # innermost: call fn here, one frame less

        def timed(fn: Any, args: Any, kwargs: Any, generation: int) -> Any:
            start = clock._monotonic()
            try:
                result = inner(fn, args, kwargs)
            except Exception as exc:
                settle(generation, exc, start, clock._monotonic())
                raise
            except BaseException:  # cancelled or interrupted: not an outcome
                if generation >= 0:
                    release(generation)
                raise
            settle(generation, None, start, clock._monotonic())
            return result

        def slow_path(fn: Any, args: Any, kwargs: Any) -> Any:
            generation = breaker._admit()
            if generation == _NEED_LEASE:
                generation = breaker._lease()
            if generation == _UNRECORDED:
                return inner(fn, args, kwargs)
            return timed(fn, args, kwargs, generation)

        def call(fn: Any, args: Any, kwargs: Any) -> Any:
            mode = breaker._mode
            if mode or timed_mode or dispatcher.active:
                if mode == _OPEN:
                    left = breaker._open_until - clock._monotonic()
                    if left > 0.0 and not dispatcher.sinks:
                        raise _CircuitOpen(left, name)
                if mode:
                    return slow_path(fn, args, kwargs)
                if timed_mode or dispatcher.record is None:
                    return timed(fn, args, kwargs, _PASS)
                # closed and measured (metrics on): the plain path, timed, in this frame
                start = clock._monotonic()
                try:
                    result = fn(*args, **kwargs) if direct else inner(fn, args, kwargs)
                except Exception as exc:
                    settle(_PASS, exc, start, clock._monotonic())
                    raise
                measured_success(clock._monotonic() - start)
                return result
            try:
                result = fn(*args, **kwargs) if direct else inner(fn, args, kwargs)
            except Exception as exc:
                record(_code_of(exc), 0.0)
                raise
            if next(breaker._seq) == check_at:
                breaker._check()
            return result

        return call

    def awrap(self, inner: AsyncStep) -> AsyncStep:
        breaker, name = self, self.name
        record, settle, release = self._record, self._settle, self._release_trial
        measured_success = self._measured_success
        check_at = self.minimum_calls - 1
        timed_mode = self._timed
        direct = inner is ainvoke

        async def timed(fn: Any, args: Any, kwargs: Any, generation: int) -> Any:
            start = clock._monotonic()
            try:
                result = await inner(fn, args, kwargs)
            except Exception as exc:
                settle(generation, exc, start, clock._monotonic())
                raise
            except BaseException:
                if generation >= 0:
                    release(generation)
                raise
            settle(generation, None, start, clock._monotonic())
            return result

        async def slow_path(fn: Any, args: Any, kwargs: Any) -> Any:
            generation = breaker._admit()
            if generation == _NEED_LEASE:
                generation = await breaker._alease()
            if generation == _UNRECORDED:
                return await inner(fn, args, kwargs)
            return await timed(fn, args, kwargs, generation)

        async def acall(fn: Any, args: Any, kwargs: Any) -> Any:
            mode = breaker._mode
            if mode or timed_mode or dispatcher.active:
                if mode == _OPEN:
                    left = breaker._open_until - clock._monotonic()
                    if left > 0.0 and not dispatcher.sinks:
                        raise _CircuitOpen(left, name)
                if mode:
                    return await slow_path(fn, args, kwargs)
                if timed_mode or dispatcher.record is None:
                    return await timed(fn, args, kwargs, _PASS)
                start = clock._monotonic()  # closed and measured: as in ``wrap``
                try:
                    result = await (fn(*args, **kwargs) if direct else inner(fn, args, kwargs))
                except Exception as exc:
                    settle(_PASS, exc, start, clock._monotonic())
                    raise
                measured_success(clock._monotonic() - start)
                return result
            try:
                result = await (fn(*args, **kwargs) if direct else inner(fn, args, kwargs))
            except Exception as exc:
                record(_code_of(exc), 0.0)
                raise
            if next(breaker._seq) == check_at:
                breaker._check()
            return result

        return acall

    @overload
    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]: ...
    @overload
    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]: ...

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate ``fn``, with the closed path and the open rejection inlined.

        Same behaviour as ``Policy.__call__``; one frame less per call (and per rejection's
        traceback), since the decorator is where most breakers are used. A rejection costs
        a clock reading (``clock._monotonic``, the cheapest that follows virtual time), a
        float-to-float compare (``0.0``, not ``0``: CPython specialises only like with like)
        and a fresh exception built in C.
        """
        if not callable(fn) or self._timed:
            return super().__call__(fn)
        breaker, name, record = self, self.name, self._record
        check_at = self.minimum_calls - 1
        if inspect.iscoroutinefunction(fn):
            acall = self._acall

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                mode = breaker._mode
                if mode or dispatcher.active:
                    if mode == _OPEN:
                        left = breaker._open_until - clock._monotonic()
                        if left > 0.0 and not dispatcher.sinks:
                            raise _CircuitOpen(left, name)
                    return await acall(fn, args, kwargs)
                try:
                    result = await fn(*args, **kwargs)
                except Exception as exc:
                    record(_code_of(exc), 0.0)
                    raise
                if next(breaker._seq) == check_at:
                    breaker._check()
                return result

            return async_wrapper
        call = self._call

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            mode = breaker._mode
            if mode or dispatcher.active:
                if mode == _OPEN:
                    left = breaker._open_until - clock._monotonic()
                    if left > 0.0 and not dispatcher.sinks:
                        raise _CircuitOpen(left, name)
                return call(fn, args, kwargs)
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                record(_code_of(exc), 0.0)
                raise
            if next(breaker._seq) == check_at:
                breaker._check()
            return result

        return wrapper


def _run(pending: _Pending) -> None:
    for action in pending:
        action()

