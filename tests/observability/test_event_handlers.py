"""The metrics adapters map every event class of the catalogue, by class, never by name."""

from __future__ import annotations

from typing import Any

import pytest

from stoic.events import Event, catalogue
from stoic.observability._events import HANDLERS, make_sink


class Recorded:
    """A Recorder that remembers each update it was asked to make."""

    def __init__(self) -> None:
        self.updates: list[tuple[str, tuple[Any, ...]]] = []

    def call(self, *args: Any) -> None:
        self.updates.append(("call", args))

    def retry(self, name: str) -> None:
        self.updates.append(("retry", (name,)))

    def rejection(self, name: str, reason: str) -> None:
        self.updates.append(("rejection", (name, reason)))

    def breaker(self, name: str, state: str) -> None:
        self.updates.append(("breaker", (name, state)))

    def message(self, topic: str, result: str) -> None:
        self.updates.append(("message", (topic, result)))

    def replay(self, name: str) -> None:
        self.updates.append(("replay", (name,)))

    def workflow_count(self, metric: str, workflow: str, label: str = "") -> None:
        self.updates.append(("workflow", (metric, workflow, label)))

    def step(self, workflow: str, step: str, outcome: str, duration: float) -> None:
        self.updates.append(("step", (workflow, step, outcome, duration)))

    def limit(self, name: str, limit: int) -> None:
        self.updates.append(("limit", (name, limit)))


@pytest.mark.parametrize("cls", catalogue(), ids=lambda cls: cls.__name__)
def test_every_catalogued_event_has_an_entry_in_the_metrics_adapter(cls: type[Event]) -> None:
    """An entry is a handler or an explicit None ("not a metric"), for the class or a base."""
    assert any(base in HANDLERS for base in cls.__mro__ if base is not Event), (
        f"{cls.__name__} has no entry in stoic.observability._events.HANDLERS"
    )


def test_breaker_transitions_update_the_state_gauge_from_the_event_field() -> None:
    from stoic.policies.breaker import BreakerHalfOpened, BreakerOpened

    recorder = Recorded()
    sink = make_sink(recorder)
    sink(BreakerOpened(name="db", previous="closed", state="open", failure_rate=1.0,
                       slow_call_rate=0.0, calls=5, open_for=30.0))
    sink(BreakerHalfOpened(name="db", previous="open", state="half_open", trial_calls=2))
    assert recorder.updates == [("breaker", ("db", "open")), ("breaker", ("db", "half_open"))]


def test_message_and_idempotency_events_name_their_result() -> None:
    from stoic.idempotency.events import IdempotencyKeyRejected, IdempotentReplayed
    from stoic.messaging.model import MessageDeadLettered, MessageHandled

    recorder = Recorded()
    sink = make_sink(recorder)
    sink(MessageHandled(name="w", topic="orders", message_id="1", attempts=1, duration=0.1,
                        duplicate=True))
    sink(MessageDeadLettered(name="w", topic="orders", message_id="2", attempts=5,
                             reason="attempts", error_type=None))
    sink(IdempotentReplayed(name="pay", key="k"))
    sink(IdempotencyKeyRejected(name="pay", key="k", reason="in_flight"))
    assert recorder.updates == [
        ("message", ("orders", "duplicate")),
        ("message", ("orders", "dead_lettered")),
        ("replay", ("pay",)),
        ("rejection", ("pay", "idempotency_key_in_flight")),
    ]


def test_workflow_events_count_runs_and_time_steps_from_their_fields() -> None:
    from stoic.workflow import events as flow

    recorder = Recorded()
    sink = make_sink(recorder)
    sink(flow.WorkflowStarted(name="order", workflow_id="o-1", version=1))
    sink(flow.StepCompleted(name="order", workflow_id="o-1", step="charge", attempt=1,
                            duration=0.5))
    sink(flow.StepFailed(name="order", workflow_id="o-1", step="ship", attempt=1,
                         outcome="permanent", error_type="Declined", duration=0.25))
    sink(flow.CompensationRan(name="order", workflow_id="o-1", step="charge",
                              outcome="completed"))
    sink(flow.WorkflowFinished(name="order", workflow_id="o-1", status="failed"))
    sink(flow.WorkflowFinished(name="order", workflow_id="o-2", status="completed"))
    assert recorder.updates == [
        ("workflow", ("started", "order", "")),
        ("step", ("order", "charge", "success", 0.5)),
        ("step", ("order", "ship", "permanent", 0.25)),
        ("workflow", ("compensated", "order", "completed")),
        ("workflow", ("failed", "order", "failed")),
        ("workflow", ("completed", "order", "")),
    ]


def test_load_control_events_set_the_limit_and_count_a_shed_request_as_a_rejection() -> None:
    from stoic.integrations.shedding import RequestShed
    from stoic.policies.limit import LimitChanged

    recorder = Recorded()
    sink = make_sink(recorder)
    sink(LimitChanged(name="api", limit=12, previous=20, rtt=0.05, inflight=20, dropped=False))
    sink(RequestShed(name="api", priority="sheddable", status=503, reason="over_limit"))
    assert recorder.updates == [
        ("limit", ("api", 12)),
        ("rejection", ("api", "shed_sheddable")),
    ]
