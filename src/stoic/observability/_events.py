"""Turn stoic events into metric updates, once, for every telemetry backend.

Each backend (Prometheus, OpenTelemetry) implements the small ``Recorder`` interface and gets
a sink from ``make_sink``. The sink looks the event's class up in a dict of handlers built on
first sight of that class, so a call pays one dict lookup and the backend's own update.

``HANDLERS`` maps every event class of ``stoic.events.catalogue()`` to the update it makes,
or to None when the event is not a metric (a test fails when a catalogued class is missing).
A subclass not listed uses its nearest listed base (every ``BreakerTransitioned``, say).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, Protocol

from ..chaos.faults import FaultInjected
from ..chaos.process import NetworkHealed, NetworkPartitioned, ProcessFaulted
from ..events import (
    CallFinished,
    CallRejected,
    DeadlineExpired,
    Event,
    RetryGaveUp,
    RetryScheduled,
    dispatcher,
)
from ..idempotency.events import (
    IdempotencyEvent,
    IdempotencyKeyRejected,
    IdempotencyLeaseLost,
    IdempotencyLeaseTakenOver,
    IdempotencyRecordCorrupted,
    IdempotentReplayed,
)
from ..integrations.shedding import RequestShed
from ..messaging.model import DeadLettersRequeued, MessageDeadLettered, MessageHandled, MessageRetried
from ..policies.breaker import BreakerTransitioned, breakers
from ..policies.hedge import HedgeStarted
from ..policies.limit import LimitChanged
from ..state.base import StateStoreDegraded, StateStoreRecovered
from ..workflow import events as flow

__all__ = [
    "BREAKER_STATES", "HANDLERS", "WORKFLOW_METRICS", "Recorder", "WorkflowMetric",
    "breaker_states", "connect", "make_sink",
]

#: States every breaker reports in the state gauge (1 for the current one, 0 for the others).
BREAKER_STATES: tuple[str, ...] = ("closed", "open", "half_open")


class WorkflowMetric(NamedTuple):
    """One workflow counter, as ``Recorder.workflow_count`` names it, for every backend."""

    key: str  # the ``metric`` argument of ``Recorder.workflow_count``
    family: str  # the Prometheus family (``_total`` is added)
    help: str
    by_outcome: bool  # carries the outcome/status label
    unit: str  # the OpenTelemetry unit


#: The workflow counters every metrics backend keeps (by workflow name, never by run id).
WORKFLOW_METRICS: tuple[WorkflowMetric, ...] = (
    WorkflowMetric("started", "stoic_workflows_started", "Workflow runs started.", False,
                   "{run}"),
    WorkflowMetric("completed", "stoic_workflows_completed", "Workflow runs that completed.",
                   False, "{run}"),
    WorkflowMetric("failed", "stoic_workflows_failed",
                   "Workflow runs that failed or were cancelled.", True, "{run}"),
    WorkflowMetric("compensated", "stoic_workflow_compensations",
                   "Compensations of failed or cancelled runs, by outcome.", True,
                   "{compensation}"),
    WorkflowMetric("recovered", "stoic_workflows_recovered",
                   "Workflow runs taken over from a worker whose lease ran out.", False, "{run}"),
    WorkflowMetric("parked", "stoic_workflows_parked", "Workflow runs parked until someone acts.",
                   True, "{run}"),
    WorkflowMetric("lease_lost", "stoic_workflow_leases_lost",
                   "Workflow passes whose commit was refused: another worker held the run.",
                   False, "{pass}"),
)


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
    def workflow_count(self, metric: str, workflow: str, label: str = "") -> None:
        """One more of ``metric`` (``started``, ``completed``, ``failed``, ``compensated``,
        ``recovered``, ``parked``, ``lease_lost``) for the workflow named ``workflow``;
        ``label`` is the outcome or status where the metric has one."""
    def step(self, workflow: str, step: str, outcome: str, duration: float) -> None:
        """One finished attempt of a workflow step."""
    def limit(self, name: str, limit: int) -> None:
        """An adaptive concurrency limit is now ``limit``."""


def _retry(recorder: Recorder, event: RetryScheduled) -> None:
    recorder.retry(event.name)


def _rejected(recorder: Recorder, event: CallRejected) -> None:
    recorder.rejection(event.name, event.reason)


def _breaker(recorder: Recorder, event: BreakerTransitioned) -> None:
    recorder.breaker(event.name, event.state)


def _handled(recorder: Recorder, event: MessageHandled) -> None:
    recorder.message(event.topic, "duplicate" if event.duplicate else "handled")


def _retried(recorder: Recorder, event: MessageRetried) -> None:
    recorder.message(event.topic, "retried")


def _dead_lettered(recorder: Recorder, event: MessageDeadLettered) -> None:
    recorder.message(event.topic, "dead_lettered")


def _replayed(recorder: Recorder, event: IdempotentReplayed) -> None:
    recorder.replay(event.name)


def _key_rejected(recorder: Recorder, event: IdempotencyKeyRejected) -> None:
    recorder.rejection(event.name, f"idempotency_key_{event.reason}")


def _workflow_finished(recorder: Recorder, event: flow.WorkflowFinished) -> None:
    if event.status == "completed":
        recorder.workflow_count("completed", event.name)
    else:
        recorder.workflow_count("failed", event.name, event.status)


def _step_completed(recorder: Recorder, event: flow.StepCompleted) -> None:
    recorder.step(event.name, event.step, "success", event.duration)


def _step_failed(recorder: Recorder, event: flow.StepFailed) -> None:
    recorder.step(event.name, event.step, event.outcome, event.duration)


Handler = Callable[[Recorder, Any], None]

#: Event class -> the metric update it makes, or None: not a metric (said, not forgotten).
HANDLERS: dict[type[Event], Handler | None] = {
    CallFinished: None,  # calls arrive through the cheaper recorder channel (see ``connect``)
    RetryScheduled: _retry,
    RetryGaveUp: None,  # counted by its CallFinished (outcome and attempts)
    CallRejected: _rejected,
    DeadlineExpired: None,
    BreakerTransitioned: _breaker,
    HedgeStarted: None,
    StateStoreDegraded: None,
    StateStoreRecovered: None,
    IdempotentReplayed: _replayed,
    IdempotencyKeyRejected: _key_rejected,
    IdempotencyEvent: None,  # the base: each subclass has its own entry
    IdempotencyLeaseTakenOver: None,
    IdempotencyLeaseLost: None,
    IdempotencyRecordCorrupted: None,
    MessageHandled: _handled,
    MessageRetried: _retried,
    MessageDeadLettered: _dead_lettered,
    DeadLettersRequeued: None,
    FaultInjected: None,
    ProcessFaulted: None,
    NetworkPartitioned: None,
    NetworkHealed: None,
    # load control: the limit gauge, and a shed request as a rejection by its priority
    LimitChanged: lambda r, e: r.limit(e.name, e.limit),
    RequestShed: lambda r, e: r.rejection(e.name, f"shed_{e.priority}"),
    # durable workflows: runs by what became of them, step attempts by outcome (the due
    # backlog is read from the stores at scrape time, not from events)
    flow.WorkflowStarted: lambda r, e: r.workflow_count("started", e.name),
    flow.WorkflowRecovered: lambda r, e: r.workflow_count("recovered", e.name),
    flow.WorkflowFinished: _workflow_finished,
    flow.WorkflowParked: lambda r, e: r.workflow_count("parked", e.name, e.status),
    flow.WorkflowLeaseLost: lambda r, e: r.workflow_count("lease_lost", e.name),
    flow.StepCompleted: _step_completed,
    flow.StepFailed: _step_failed,
    flow.CompensationRan: lambda r, e: r.workflow_count("compensated", e.name, e.outcome),
    flow.WorkflowEvent: None,  # the base: each subclass has its own entry
}


def handler_for(cls: type[Event]) -> Handler | None:
    """The handler of ``cls`` or of its nearest listed base; None when it is not a metric."""
    for base in cls.__mro__:
        if base in HANDLERS:
            return HANDLERS[base]
    return None


def make_sink(recorder: Recorder) -> Callable[[Event], None]:
    """A dispatcher sink feeding ``recorder``; handlers are chosen once per event class."""
    handlers: dict[type, Handler | None] = {}

    def sink(event: Event) -> None:
        cls = type(event)
        try:
            handler = handlers[cls]
        except KeyError:
            handler = handlers[cls] = handler_for(cls)
        if handler is not None:
            handler(recorder, event)

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
    """(name, state) of every breaker in ``stoic.breakers``.

    Read at scrape time so the gauge is right even for breakers that never changed state.
    """
    for name, breaker in list(breakers.items()):
        yield name, breaker.state.value
