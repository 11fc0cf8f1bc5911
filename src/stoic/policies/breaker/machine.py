"""The breaker's state machine: modes, transitions, recording and admission, written once.

``BreakerMachine`` holds a breaker's mutable state and every decision about it; the
``CircuitBreaker`` in ``paths`` adds the call paths that run a call through it. All state
changes happen under ``_lock`` and only for the few lines that mutate; side effects (events,
logs, telling shared state) are collected in a ``pending`` list and run after the lock is
released, so a sink can never deadlock a breaker.

The mode is a small int (``CLOSED`` .. ``DISABLED``), not the ``BreakerState`` enum: the call
paths read it on every call and compare it with ``if mode`` (closed is 0), which is cheaper
than comparing enum members. ``STATES[mode]`` is the public state.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
from collections.abc import Callable
from typing import Any

from ... import clock
from ...errors import CircuitOpenError, Rejected
from ...events import CallRejected, dispatcher
from ...outcome import Outcome, classify
from . import events as transitions
from .config import BreakerConfig
from .rejection import CircuitOpen
from .windows import FAILURE, JUDGE, SKIP, SLOW, BreakerMetrics, CountRing, TimeRing, TimeWindow

__all__ = [
    "CLOSED",
    "DISABLED",
    "FORCED_OPEN",
    "HALF_OPEN",
    "NEED_LEASE",
    "OPEN",
    "PASS",
    "STATES",
    "UNRECORDED",
    "BreakerMachine",
    "BreakerState",
    "code_of",
]

_log = logging.getLogger("stoic")


class BreakerState(str, enum.Enum):
    """Where a breaker is. ``forced_open`` and ``disabled`` are set only by hand."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"


CLOSED, OPEN, HALF_OPEN, FORCED_OPEN, DISABLED = 0, 1, 2, 3, 4
STATES = (
    BreakerState.CLOSED,
    BreakerState.OPEN,
    BreakerState.HALF_OPEN,
    BreakerState.FORCED_OPEN,
    BreakerState.DISABLED,
)

# What ``_admit`` answers. A half-open trial is its generation, an int >= 0; the others are
# negative, so one ``>= 0`` tells them apart on the call path.
PASS = -1  # closed (a race) or disabled: run the call as the fast path would
UNRECORDED = -2  # disabled: run the call, record nothing
NEED_LEASE = -3  # the open period is over, but the fleet must grant the trial first

_Pending = list[Callable[[], None]]


def code_of(exc: Exception) -> int:
    """The window code of a failed call: ``FAILURE``, 0 (not the dependency's fault) or ``SKIP``."""
    if isinstance(exc, Rejected):
        return SKIP  # another policy refused the call: the dependency was never asked
    return FAILURE if classify(exc).outcome.is_failure else 0


def _outcome_name(exc: BaseException | None) -> str:
    if exc is None:
        return Outcome.SUCCESS.value
    return classify(exc).outcome.value


class BreakerMachine:
    """A breaker's state and decisions, without the call paths (see ``CircuitBreaker``).

    The settings are read-only: they come from ``config``, a frozen ``BreakerConfig``.
    """

    __slots__ = (
        "_check_at",
        "_consecutive_opens",
        "_generation",
        "_leasing",
        "_lock",
        "_mode",
        "_name",
        "_open_until",
        "_opened_for",
        "_ring",
        "_seq",
        "_shared",
        "_slow_call_duration",
        "_timed",
        "_trial_admitted",
        "_trial_done",
        "_trial_failures",
        "_trial_slow",
        "config",
    )

    def __init__(self, config: BreakerConfig) -> None:
        self.config = config
        # copies of the settings the call paths read on every call: a slot is the cheapest read
        self._name = config.name
        self._slow_call_duration = config.slow_call_duration
        self._check_at = config.minimum_calls - 1
        self._lock = threading.Lock()
        self._mode = CLOSED
        self._ring: CountRing | TimeRing = config.window.ring()
        self._seq = self._ring.seq
        self._timed = config.slow_call_duration is not None or isinstance(
            config.window, TimeWindow
        )
        self._open_until = 0.0
        self._opened_for = config.open_for
        self._consecutive_opens = 0
        self._generation = 0
        self._trial_admitted = self._trial_done = 0
        self._trial_failures = self._trial_slow = 0
        self._leasing = False
        backend = config.backend
        self._shared = None if backend is None or not backend.shared else backend

    @property
    def name(self) -> str:
        """Identifies the breaker in ``stoic.breakers``, events, metrics and shared state."""
        return self._name

    def detach(self) -> None:
        """Stop following shared state (the registry calls it when it forgets the breaker)."""
        if self._shared is not None:
            self._shared.detach(self)

    # --- public state ---------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The current state. An open breaker whose time is up reads as half-open."""
        mode = self._mode
        if mode == OPEN and not self._leasing and clock.monotonic() >= self._open_until and (
            self._shared is None
        ):
            return BreakerState.HALF_OPEN
        return STATES[mode]

    @property
    def retry_after(self) -> float | None:
        """Seconds until an open breaker admits a trial; None when not open."""
        if self._mode != OPEN:
            return None
        return max(0.0, self._open_until - clock.monotonic())

    @property
    def metrics(self) -> BreakerMetrics:
        """Counts in the window right now."""
        with self._lock:
            return BreakerMetrics(*self._ring.counts(clock.monotonic()))

    def force_open(self) -> None:
        """Reject every call until ``reset()``: for maintenance, or to shed a dependency."""
        self._manual(FORCED_OPEN, transitions.BreakerForcedOpen)

    def disable(self) -> None:
        """Let every call through and record nothing until ``reset()``."""
        self._manual(DISABLED, transitions.BreakerDisabled)

    def reset(self) -> None:
        """Close the breaker and forget the window and any grown open period."""
        self._manual(CLOSED, transitions.BreakerClosed)

    def _manual(self, mode: int, kind: type[transitions.BreakerTransitioned]) -> None:
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
        self, pending: _Pending, kind: type[transitions.BreakerTransitioned], previous: int,
        mode: int, source: str, **extra: Any,
    ) -> None:
        old, new, name = STATES[previous].value, STATES[mode].value, self._name
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
        now = clock.monotonic()
        if reopen:
            self._consecutive_opens += 1
        else:
            self._consecutive_opens = 0
        config = self.config
        duration = config.open_for * config.open_for_growth ** self._consecutive_opens
        longest: float = config.max_open_for  # type: ignore[assignment]  # set by BreakerConfig
        if duration > longest:
            duration = longest
        self._enter(OPEN)
        self._opened_for = duration
        self._open_until = now + duration
        shared = self._shared
        if shared is not None:
            pending.append(lambda: shared.opened(self, duration))
        self._later_event(
            pending, transitions.BreakerOpened, previous, OPEN, "local",
            failure_rate=failures / calls if calls else 0.0,
            slow_call_rate=slow / calls if calls else 0.0, calls=calls, open_for=duration,
        )

    def _close(self, pending: _Pending) -> None:
        previous = self._mode
        self._enter(CLOSED)
        self._consecutive_opens = 0
        self._clear_window()
        shared = self._shared
        if shared is not None:
            pending.append(lambda: shared.closed(self))
        self._later_event(pending, transitions.BreakerClosed, previous, CLOSED, "local")

    def _half_open(self, pending: _Pending) -> None:
        previous = self._mode
        self._enter(HALF_OPEN)
        self._later_event(
            pending, transitions.BreakerHalfOpened, previous, HALF_OPEN, "local",
            trial_calls=self.config.half_open_calls,
        )

    # --- recording ------------------------------------------------------------------------

    def _clear_window(self) -> None:
        self._ring.clear()
        self._seq = self._ring.seq

    def _record(self, code: int, now: float) -> None:
        """Record a closed-state call. Opens the breaker when a threshold is reached."""
        if code == SKIP:
            return
        pending: _Pending | None = None
        with self._lock:
            if self._mode != CLOSED:
                return
            ring = self._ring
            calls, failures, slow = ring.counts(now) if code == JUDGE else ring.add(code, now)
            if calls >= self.config.minimum_calls and (
                failures >= self.config.failure_rate * calls or slow >= self.config.slow_call_rate * calls
            ):
                pending = []
                self._open(pending, calls, failures, slow, reopen=False)
        if pending:
            _run(pending)

    def _check(self) -> None:
        """The window just reached ``minimum_calls`` on a success: judge what it holds."""
        self._record(JUDGE, 0.0)

    def _record_trial(self, generation: int, code: int, now: float) -> None:
        """Record a half-open trial; the last of them closes or re-opens the breaker."""
        if code < 0:
            self._release_trial(generation)
            return
        pending: _Pending = []
        with self._lock:
            if generation != self._generation or self._mode != HALF_OPEN:
                return  # a trial of an earlier half-open period, or a manual transition
            self._trial_done += 1
            if code & FAILURE:
                self._trial_failures += 1
            if code & SLOW:
                self._trial_slow += 1
            n = self._trial_done
            if n < self.config.half_open_calls:
                return
            failures, slow = self._trial_failures, self._trial_slow
            if failures >= self.config.failure_rate * n or slow >= self.config.slow_call_rate * n:
                self._open(pending, n, failures, slow, reopen=True)
            else:
                self._close(pending)
        _run(pending)

    def _release_trial(self, generation: int) -> None:
        """A trial was cancelled: give its slot back without counting it."""
        with self._lock:
            if generation == self._generation and self._mode == HALF_OPEN:
                self._trial_admitted -= 1

    # --- admission (the slow path: open, half-open, forced, disabled) ---------------------

    def _admit(self) -> int:
        """Decide whether a call may start when the breaker is not plainly closed.

        Returns a trial generation (>= 0), ``PASS``, ``UNRECORDED`` or ``NEED_LEASE``;
        raises ``CircuitOpenError`` to reject.
        """
        pending: _Pending = []
        retry_after: float | None = None
        admitted: int | None = None  # the trial generation, once one is handed out
        with self._lock:
            mode = self._mode
            if mode == CLOSED:
                return PASS
            if mode == DISABLED:
                return UNRECORDED
            if mode == OPEN:
                left = self._open_until - clock.monotonic()
                if left > 0 or self._leasing:
                    retry_after = left if left > 0 else 0.0
                elif self._shared is not None:
                    self._leasing = True  # one call per process asks the fleet for the trial
                    return NEED_LEASE
                else:
                    self._half_open(pending)
                    mode = HALF_OPEN
            if mode == HALF_OPEN and self._trial_admitted < self.config.half_open_calls:
                self._trial_admitted += 1
                admitted = self._generation
        _run(pending)
        if admitted is not None:
            return admitted
        raise self._rejected(retry_after)

    def _after_lease(self, granted: bool) -> int:
        """Act on the fleet's answer to a trial-lease request made by ``_admit``."""
        pending: _Pending = []
        generation: int | None = None
        retry_after: float | None = None
        with self._lock:
            mode = self._mode
            if mode != OPEN or not self._leasing:
                # something else moved the breaker meanwhile (a remote close, a reset, ...)
                self._leasing = False
                if mode in (CLOSED, DISABLED):
                    return PASS if mode == CLOSED else UNRECORDED
                if mode == OPEN:
                    retry_after = max(0.0, self._open_until - clock.monotonic())
            elif granted:
                self._half_open(pending)
                self._trial_admitted = 1
                generation = self._generation
            else:
                # another process runs the trial; its outcome reaches us through shared state
                self._leasing = False
                wait = min(self.config.open_for, 1.0)
                self._open_until = clock.monotonic() + wait
                retry_after = wait
        _run(pending)
        if generation is not None:
            return generation
        raise self._rejected(retry_after)

    def _rejected(self, retry_after: float | None) -> CircuitOpenError:
        """The rejection of the slow path (and of every rejection while a sink listens)."""
        if dispatcher.sinks:
            dispatcher.emit(
                CallRejected(
                    name=self._name, policy="circuit_breaker", reason="circuit_open",
                    retry_after=retry_after,
                )
            )
        return CircuitOpen(retry_after, self._name)

    # --- following the fleet (called by shared state, from its own thread) ------------------

    def follow_open(self, ttl: float) -> None:
        """Another process opened this breaker for ``ttl`` more seconds: follow it.

        For shared-state backends (``stoic.state.SharedState``); thread-safe. A forced-open
        or disabled breaker ignores it, and so does a ``ttl`` <= 0.
        """
        pending: _Pending = []
        with self._lock:
            mode = self._mode
            if mode in (FORCED_OPEN, DISABLED) or ttl <= 0:
                return
            now = clock.monotonic()
            if mode == OPEN:
                self._open_until = now + ttl
                self._leasing = False
                return
            self._enter(OPEN)
            self._opened_for = ttl
            self._open_until = now + ttl
            self._later_event(
                pending, transitions.BreakerOpened, mode, OPEN, "remote",
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
            if mode not in (OPEN, HALF_OPEN):
                return
            self._enter(CLOSED)
            self._consecutive_opens = 0
            self._clear_window()
            self._later_event(pending, transitions.BreakerClosed, mode, CLOSED, "remote")
        _run(pending)


    # --- measured calls and the fleet's trial lease ---------------------------------------

    def _settle(self, generation: int, exc: Exception | None, start: float, end: float) -> None:
        """Record a measured call, in the window (``PASS``) or as a half-open trial."""
        code = 0 if exc is None else code_of(exc)
        if code >= 0:
            slow = self._slow_call_duration
            if slow is not None and end - start >= slow:
                code |= SLOW
        if generation != PASS:
            self._record_trial(generation, code, end)
        elif code == 0 and not self._timed:  # a plain success: the lock-free step
            self._measured_success(end - start)
            return
        else:
            self._record(code, end)
        record = dispatcher.record
        if record is not None:
            record(
                "circuit_breaker", self._name, _outcome_name(exc), end - start, 1,
                None if exc is None else type(exc).__name__,
            )

    def _measured_success(self, duration: float) -> None:
        """A plain success through a closed breaker while calls are measured (metrics on)."""
        if next(self._seq) == self._check_at:
            self._check()
        record = dispatcher.record
        if record is not None:
            record("circuit_breaker", self._name, "success", duration, 1, None)

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


def _run(pending: _Pending) -> None:
    for action in pending:
        action()
