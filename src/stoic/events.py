"""Typed events that policies emit, and the dispatcher that hands them to sinks.

Every event is a frozen, slotted dataclass named in the past tense, carrying the ``name`` of
the policy instance that emitted it and ``at``, the wall-clock time. Sinks are plain
callables taking one event. Policies write ``if dispatcher.sinks: dispatcher.emit(Event(...))``
so that, with nobody listening, an event costs one attribute check and is never built.

``dispatcher`` is a named registry (the set of sinks) and the only global state here.
``dispatcher.attempt_scope`` is an optional hook that tracing (OpenTelemetry) installs: a
callable ``(policy, name, attempt) -> context manager`` wrapped around every attempt.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from . import clock

__all__ = [
    "AttemptScope",
    "CallFinished",
    "CallRejected",
    "DeadlineExpired",
    "Dispatcher",
    "Event",
    "RetryGaveUp",
    "RetryScheduled",
    "Sink",
    "dispatcher",
    "subscribe",
]

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


class Dispatcher:
    """Hands events to sinks. ``sinks`` is a tuple replaced on change, never mutated in place,
    so emitting needs no lock and a sink list read mid-change is still a consistent one."""

    __slots__ = ("_lock", "attempt_scope", "sinks")

    def __init__(self) -> None:
        self.sinks: tuple[Sink, ...] = ()
        self.attempt_scope: AttemptScope | None = None
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:
        """Give ``event`` to every sink. A sink that raises is logged, never propagated."""
        for sink in self.sinks:
            try:
                sink(event)
            except Exception:
                _log.exception("stoic event sink %r failed on %s", sink, type(event).__name__)

    def subscribe(self, sink: Sink) -> Callable[[], None]:
        """Add ``sink``; return a function that removes it again (safe to call twice)."""
        if not callable(sink):
            raise TypeError(f"sink must be callable, got {sink!r}")
        with self._lock:
            self.sinks = (*self.sinks, sink)

        def unsubscribe() -> None:
            with self._lock:
                sinks = list(self.sinks)
                if sink in sinks:
                    sinks.remove(sink)
                self.sinks = tuple(sinks)

        return unsubscribe

    def reset(self) -> None:
        """Remove every sink and hook (for tests)."""
        with self._lock:
            self.sinks = ()
            self.attempt_scope = None


dispatcher = Dispatcher()


def subscribe(sink: Sink) -> Callable[[], None]:
    """Send every stoic event to ``sink`` until the returned function is called."""
    return dispatcher.subscribe(sink)
