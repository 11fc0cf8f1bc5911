"""Turn stoic events into metric updates, once, for every telemetry backend.

Each backend (Prometheus, OpenTelemetry) implements the small ``Recorder`` interface and gets
a sink from ``make_sink``. The sink looks the event's type up in a dict of handlers built on
first sight of that type, so a call pays one dict lookup and the backend's own update.

Event types owned by other areas (breaker, messaging, idempotency) are recognised by class
name (``kind``) and a few attribute names, never imported, so this keeps working whatever
lands there and in whatever order:

- ``Breaker*`` / ``Circuit*`` events carrying a new state (``state``/``to_state``/``to``/
  ``new_state``), or named for it (``BreakerOpened`` -> ``open``, ``BreakerHalfOpened`` ->
  ``half_open``, ``BreakerClosed`` -> ``closed``).
- ``Message*`` events: the result is the rest of the name in snake case
  (``MessageDeadLettered`` -> ``dead_lettered``); the topic is ``topic``/``destination``/
  ``queue`` or else the event's ``name``.
  ``MessageHandled(duplicate=True)`` counts as ``duplicate``.
- events whose name contains ``Replay`` count an idempotent replay for ``name``.
- other ``*Rejected`` events count a rejection with reason ``<prefix>_<reason>``
  (``IdempotencyKeyRejected(reason="in_flight")`` -> ``idempotency_key_in_flight``).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from ..events import CallFinished, CallRejected, Event, RetryScheduled, dispatcher

__all__ = ["BREAKER_STATES", "Recorder", "breaker_states", "connect", "make_sink", "snake"]

#: States every breaker reports in the state gauge (1 for the current one, 0 for the others).
BREAKER_STATES: tuple[str, ...] = ("closed", "open", "half_open")

_BREAKER_BY_KIND = {
    "opened": "open",
    "closed": "closed",
    "halfopened": "half_open",
    "forcedopen": "forced_open",
    "forcedopened": "forced_open",
    "disabled": "disabled",
    "reset": "closed",
}


class Recorder(Protocol):
    """What a metrics backend must do with the facts stoic reports."""

    def call(
        self, policy: str, name: str, outcome: str, duration: float, attempts: int,
        error_type: str | None,
    ) -> None:
        """One finished call; the signature of ``stoic.events.CallRecorder``."""
    def retry(self, name: str) -> None: ...
    def rejection(self, name: str, reason: str) -> None: ...
    def breaker(self, name: str, state: str) -> None: ...
    def message(self, topic: str, result: str) -> None: ...
    def replay(self, name: str) -> None: ...


_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def snake(text: str) -> str:
    """``DeadLettered`` -> ``dead_lettered``."""
    return _CAMEL.sub("_", text).lower()


def _state_text(value: Any) -> str:
    value = getattr(value, "value", value)
    if not isinstance(value, str):
        value = getattr(value, "name", str(value))
    return snake(str(value).replace("-", "_").replace(" ", "_")).replace("__", "_")


def _breaker_state(event: Event) -> str | None:
    for attr in ("state", "to_state", "to", "new_state"):
        value = getattr(event, attr, None)
        if value is not None:
            return _state_text(value)
    kind = type(event).__name__
    for prefix in ("CircuitBreaker", "Breaker", "Circuit"):
        if kind.startswith(prefix):
            return _BREAKER_BY_KIND.get(kind[len(prefix):].lower())
    return None


def _handler_for(recorder: Recorder, cls: type) -> Callable[[Any], None] | None:
    """The update for events of type ``cls``, or None when it is not a metric."""
    kind = cls.__name__
    if issubclass(cls, CallFinished):
        return None  # calls arrive through the cheaper recorder channel (see ``connect``)
    if issubclass(cls, RetryScheduled):
        def on_retry(ev: RetryScheduled) -> None:
            recorder.retry(ev.name)
        return on_retry
    if issubclass(cls, CallRejected):
        def on_rejected(ev: CallRejected) -> None:
            recorder.rejection(ev.name, ev.reason)
        return on_rejected
    if kind.startswith(("Breaker", "Circuit")):
        def on_breaker(ev: Event) -> None:
            state = _breaker_state(ev)
            if state is not None:
                recorder.breaker(ev.name, state)
        return on_breaker
    if kind.startswith("Message") and len(kind) > len("Message"):
        result = snake(kind[len("Message"):])

        def on_message(ev: Event) -> None:
            topic = None
            for attr in ("topic", "destination", "queue"):
                topic = getattr(ev, attr, None)
                if topic is not None:
                    break
            outcome = "duplicate" if getattr(ev, "duplicate", False) else result
            recorder.message(str(topic if topic is not None else ev.name), outcome)
        return on_message
    if "Replay" in kind:
        def on_replay(ev: Event) -> None:
            recorder.replay(ev.name)
        return on_replay
    if kind.endswith("Rejected"):  # e.g. IdempotencyKeyRejected(reason="in_flight")
        prefix = snake(kind[: -len("Rejected")])

        def on_other_rejection(ev: Event) -> None:
            reason = getattr(ev, "reason", None)
            recorder.rejection(ev.name, f"{prefix}_{reason}" if reason else prefix)
        return on_other_rejection
    return None


def make_sink(recorder: Recorder) -> Callable[[Event], None]:
    """A dispatcher sink feeding ``recorder``; handlers are chosen once per event type."""
    handlers: dict[type, Callable[[Any], None] | None] = {}

    def sink(event: Event) -> None:
        cls = type(event)
        try:
            handler = handlers[cls]
        except KeyError:
            handler = handlers[cls] = _handler_for(recorder, cls)
        if handler is not None:
            handler(event)

    return sink


def connect(recorder: Recorder, *, trusted: bool = False) -> Callable[[], None]:
    """Feed ``recorder`` from the dispatcher: events through a sink, calls through a recorder.

    Finished calls are the hot path, so they come as plain arguments (``add_recorder``), never
    as ``CallFinished`` objects; with ``trusted=True`` (a ``call`` that cannot raise) nothing
    stands between a policy and ``recorder.call``. Returns a function that disconnects both.
    """
    unsubscribe = dispatcher.subscribe(make_sink(recorder), calls=False)
    remove = dispatcher.add_recorder(recorder.call, trusted=trusted)

    def disconnect() -> None:
        unsubscribe()
        remove()

    return disconnect


def breaker_states() -> Iterator[tuple[str, str]]:
    """(name, state) of every breaker in ``stoic.breakers``, if the breaker module is loaded.

    Read at scrape time so the gauge is right even for breakers that never changed state.
    The module is not imported here: a process that never made a breaker has none.
    """
    module = sys.modules.get("stoic.policies.breaker")
    registry = getattr(module, "breakers", None) if module is not None else None
    if registry is None:
        return
    try:
        items = list(registry.items())
    except Exception:  # a registry we do not understand: report nothing rather than fail
        return
    for name, breaker in items:
        state = getattr(breaker, "state", None)
        if state is not None:
            yield str(name), _state_text(state)
