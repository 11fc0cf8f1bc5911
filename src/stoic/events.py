"""Typed events that policies emit, and the dispatcher that hands them to sinks.

Every event is a frozen, slotted dataclass named in the past tense, carrying the ``name`` of
the policy instance that emitted it and ``at``, the wall-clock time. Sinks are plain
callables taking one event. Policies write ``if dispatcher.sinks: dispatcher.emit(Event(...))``
so that, with nobody listening, an event costs one attribute check and is never built.

``dispatcher`` is a named registry (the set of sinks) and the only global state here.
``dispatcher.attempt_scope`` is an optional hook that tracing (OpenTelemetry) installs: a
callable ``(policy, name, attempt) -> context manager`` wrapped around every attempt.

Per-call measurements are the one hot path: metrics need one per call, and building a frozen
event object for each costs more than the call overhead itself. So a finished call goes out
through ``dispatcher.record`` with plain arguments: to *recorders* (``add_recorder``: a
function of ``(policy, name, outcome, duration, attempts, error_type)``, which is how the
metrics adapters listen) and, only if some sink asked for them (``subscribe(sink,
calls=True)``, the default), as a ``CallFinished`` event. ``dispatcher.record`` is None when
nobody measures calls; otherwise it is the one function to call, chosen when listeners
change: the lone recorder itself when there is only one and no sink wants ``CallFinished``,
so a measured call costs one call into the backend and nothing in between.

The catalogue: every event class stoic emits is listed here, once, though each is defined
beside the code that emits it (``RetryScheduled`` here, ``BreakerOpened`` in
``stoic.policies.breaker.events``, ``MessageHandled`` in ``stoic.messaging.model``, ...).
``catalogue()`` returns them all and ``stoic.events.BreakerOpened`` (any catalogued name)
works as an attribute. Those defined elsewhere are imported on first use, not at
``import stoic``: their modules import this one for ``Event`` and ``dispatcher``.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

from . import clock

if TYPE_CHECKING:  # the catalogue's other members, for type checkers (see ``catalogue``)
    from .chaos.faults import FaultInjected as FaultInjected
    from .chaos.process import NetworkHealed as NetworkHealed
    from .chaos.process import NetworkPartitioned as NetworkPartitioned
    from .chaos.process import ProcessFaulted as ProcessFaulted
    from .idempotency.events import IdempotencyKeyRejected as IdempotencyKeyRejected
    from .idempotency.events import IdempotencyLeaseLost as IdempotencyLeaseLost
    from .idempotency.events import IdempotencyLeaseTakenOver as IdempotencyLeaseTakenOver
    from .idempotency.events import IdempotencyRecordCorrupted as IdempotencyRecordCorrupted
    from .idempotency.events import IdempotentReplayed as IdempotentReplayed
    from .integrations.shedding import RequestShed as RequestShed
    from .messaging.model import DeadLettersRequeued as DeadLettersRequeued
    from .messaging.model import MessageDeadLettered as MessageDeadLettered
    from .messaging.model import MessageHandled as MessageHandled
    from .messaging.model import MessageRetried as MessageRetried
    from .policies.breaker.events import BreakerClosed as BreakerClosed
    from .policies.breaker.events import BreakerDisabled as BreakerDisabled
    from .policies.breaker.events import BreakerForcedOpen as BreakerForcedOpen
    from .policies.breaker.events import BreakerHalfOpened as BreakerHalfOpened
    from .policies.breaker.events import BreakerOpened as BreakerOpened
    from .policies.breaker.events import BreakerTransitioned as BreakerTransitioned
    from .policies.hedge import HedgeStarted as HedgeStarted
    from .policies.limit import LimitChanged as LimitChanged
    from .state.base import StateStoreDegraded as StateStoreDegraded
    from .state.base import StateStoreRecovered as StateStoreRecovered
    from .workflow.events import CompensationRan as CompensationRan
    from .workflow.events import StepCompleted as StepCompleted
    from .workflow.events import StepFailed as StepFailed
    from .workflow.events import WorkflowFinished as WorkflowFinished
    from .workflow.events import WorkflowLeaseLost as WorkflowLeaseLost
    from .workflow.events import WorkflowParked as WorkflowParked
    from .workflow.events import WorkflowRecovered as WorkflowRecovered
    from .workflow.events import WorkflowStarted as WorkflowStarted

#: The names this module defines; ``__all__`` adds those of every catalogued event (see
#: ``__getattr__``), which are defined beside the code that emits them.
_OWN_NAMES = (
    "AttemptScope", "CallFinished", "CallRecorder", "CallRejected", "DeadlineExpired",
    "Dispatcher", "Event", "RetryGaveUp", "RetryScheduled", "Sink", "catalogue", "dispatcher",
    "subscribe",
)

_log = logging.getLogger("stoic")


def _wall() -> float:
    return clock.wall()


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of all events: which policy instance (``name``) and when (``at``, epoch seconds)."""

    name: str
    at: float = field(default_factory=_wall)

    @property
    def kind(self) -> str:
        """The event's type name, e.g. ``"RetryScheduled"``."""
        return type(self).__name__


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryScheduled(Event):
    """An attempt failed with a retryable outcome; the next one starts after ``wait`` seconds."""

    attempt: int
    wait: float
    outcome: str
    error_type: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryGaveUp(Event):
    """Retry stopped; the caller gets the last exception. ``reason`` says why."""

    attempts: int
    elapsed: float
    reason: str
    outcome: str
    error_type: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRejected(Event):
    """A policy refused to start a call (open breaker, full bulkhead, rate limit, deadline)."""

    policy: str
    reason: str
    retry_after: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadlineExpired(Event):
    """A call ran past its deadline (``overrun`` seconds late) or was not started."""

    timeout: float | None
    overrun: float
    started: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class CallFinished(Event):
    """A call through a named policy ended: how (``outcome``), in how long, after how many tries.

    One per logical call, not per attempt; metrics count calls and durations from it.
    """

    policy: str
    outcome: str
    duration: float
    attempts: int = 1
    error_type: str | None = None


Sink: TypeAlias = Callable[[Event], Any]
AttemptScope: TypeAlias = Callable[[str, str, int], AbstractContextManager[Any]]
CallRecorder: TypeAlias = Callable[[str, str, str, float, int, "str | None"], Any]


class Dispatcher:
    """Hands events to sinks and call measurements to recorders.

    The tuples are replaced on change, never mutated in place, so emitting needs no lock and
    a list read mid-change is still a consistent one. ``active`` is True when anything at all
    listens (a sink, a recorder or an attempt scope): the one flag a hot path checks.
    """

    __slots__ = (
        "_lock", "active", "attempt_scope", "call_sinks", "record", "recorders", "sinks",
    )

    def __init__(self) -> None:
        self.sinks: tuple[Sink, ...] = ()
        self.call_sinks: tuple[Sink, ...] = ()
        self.recorders: tuple[CallRecorder, ...] = ()
        self.attempt_scope: AttemptScope | None = None
        self.active = False
        #: What a policy calls for each finished call; None when nobody measures calls.
        self.record: CallRecorder | None = None
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        self.active = bool(self.sinks or self.recorders or self.attempt_scope is not None)
        if len(self.recorders) == 1 and not self.call_sinks:
            self.record = self.recorders[0]
        else:
            self.record = self._fan_out if self.recorders or self.call_sinks else None

    def emit(self, event: Event) -> None:
        """Give ``event`` to every sink. A sink that raises is logged, never propagated."""
        for sink in self.sinks:
            try:
                sink(event)
            except Exception:
                _log.exception("stoic event sink %r failed on %s", sink, type(event).__name__)

    def record_call(
        self, policy: str, name: str, outcome: str, duration: float, attempts: int = 1,
        error_type: str | None = None,
    ) -> None:
        """Report one finished call to the recorders, and as ``CallFinished`` to call sinks.

        The same as calling ``dispatcher.record`` when it is not None (policies do that,
        which spares this frame on the hot path).
        """
        record = self.record
        if record is not None:
            record(policy, name, outcome, duration, attempts, error_type)

    def _fan_out(
        self, policy: str, name: str, outcome: str, duration: float, attempts: int,
        error_type: str | None,
    ) -> None:
        for recorder in self.recorders:
            recorder(policy, name, outcome, duration, attempts, error_type)
        if self.call_sinks:
            event = CallFinished(
                name=name, policy=policy, outcome=outcome, duration=duration,
                attempts=attempts, error_type=error_type,
            )
            for sink in self.call_sinks:
                try:
                    sink(event)
                except Exception:
                    _log.exception("stoic event sink %r failed on CallFinished", sink)

    def subscribe(self, sink: Sink, *, calls: bool = True) -> Callable[[], None]:
        """Add ``sink``; return a function that removes it again (safe to call twice).

        With ``calls=False`` the sink gets every event except ``CallFinished``: use it
        together with ``add_recorder`` when you measure calls more cheaply that way.
        """
        if not callable(sink):
            raise TypeError(f"sink must be callable, got {sink!r}")
        with self._lock:
            self.sinks = (*self.sinks, sink)
            if calls:
                self.call_sinks = (*self.call_sinks, sink)
            self._refresh()

        def unsubscribe() -> None:
            with self._lock:
                self.sinks = _without(self.sinks, sink)
                self.call_sinks = _without(self.call_sinks, sink)
                self._refresh()

        return unsubscribe

    def add_recorder(self, recorder: CallRecorder, *, trusted: bool = False) -> Callable[[], None]:
        """Add a per-call recorder; return a function that removes it.

        A recorder that raises is logged, never propagated into the caller's call. With
        ``trusted=True`` the recorder promises never to raise and is called directly, without
        that guard: stoic's own metrics backends register this way (the speed trick of this
        module, for benchmarks/telemetry_overhead.py: a guard costs a frame on every call).
        """
        if not callable(recorder):
            raise TypeError(f"recorder must be callable, got {recorder!r}")
        entry = recorder if trusted else _guarded(recorder)
        with self._lock:
            self.recorders = (*self.recorders, entry)
            self._refresh()

        def remove() -> None:
            with self._lock:
                self.recorders = _without(self.recorders, entry)
                self._refresh()

        return remove

    def set_attempt_scope(self, scope: AttemptScope | None) -> None:
        """Install (or with None, remove) the hook wrapped around every attempt."""
        with self._lock:
            self.attempt_scope = scope
            self._refresh()

    def reset(self) -> None:
        """Remove every sink, recorder and hook (for tests)."""
        with self._lock:
            self.sinks = ()
            self.call_sinks = ()
            self.recorders = ()
            self.attempt_scope = None
            self._refresh()


def _guarded(recorder: CallRecorder) -> CallRecorder:
    """``recorder``, with whatever it raises logged instead of reaching the measured call."""

    def guarded(
        policy: str, name: str, outcome: str, duration: float, attempts: int,
        error_type: str | None,
    ) -> None:
        try:
            recorder(policy, name, outcome, duration, attempts, error_type)
        except Exception:
            _log.exception("stoic call recorder %r failed", recorder)

    return guarded


def _without(items: tuple[Any, ...], item: Any) -> tuple[Any, ...]:
    listed = list(items)
    if item in listed:
        listed.remove(item)
    return tuple(listed)


dispatcher = Dispatcher()


def subscribe(sink: Sink) -> Callable[[], None]:
    """Send every stoic event to ``sink`` until the returned function is called."""
    return dispatcher.subscribe(sink)


# --- the catalogue ------------------------------------------------------------------------


@functools.cache
def catalogue() -> tuple[type[Event], ...]:
    """Every event class stoic emits, from every area, in one tuple (imports those areas).

    The events of this module come first, then every ``Event`` subclass each area's events
    module lists in its ``__all__``. Adapters check against it that they handle every kind
    (``tests/test_events.py``, which also fails on an event class defined in a module not
    named here).
    """
    from .chaos import faults, process
    from .idempotency import events as idempotency
    from .integrations import shedding
    from .messaging import model as messaging
    from .policies import hedge, limit
    from .policies.breaker import events as breaker
    from .state import base as state
    from .workflow import events as workflow

    found: list[type[Event]] = [
        CallFinished, CallRejected, DeadlineExpired, RetryGaveUp, RetryScheduled,
    ]
    for area in (
        breaker, hedge, state, idempotency, messaging, limit, shedding, workflow, faults, process,
    ):
        for name in area.__all__:
            value = getattr(area, name)
            if isinstance(value, type) and issubclass(value, Event) and value not in found:
                found.append(value)
    return tuple(found)


def __getattr__(name: str) -> Any:
    """``stoic.events.BreakerOpened`` and the like: a catalogued class defined elsewhere.

    ``__all__`` too: this module's own names and every catalogued event's, sorted.
    """
    if name == "__all__":
        names = sorted({*_OWN_NAMES, *(cls.__name__ for cls in catalogue())})
        globals()["__all__"] = names
        return names
    if name.startswith("__"):  # the import system asks for __path__ and such: never ours
        raise AttributeError(name)
    for cls in catalogue():
        if cls.__name__ == name:
            globals()[name] = cls
            return cls
    raise AttributeError(f"module 'stoic.events' has no attribute {name!r}")
