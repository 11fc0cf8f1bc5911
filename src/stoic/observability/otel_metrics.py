"""The OpenTelemetry metric instruments ``stoic.observability.otel`` feeds from events."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from ._events import BREAKER_STATES, WORKFLOW_METRICS, breaker_states

__all__ = ["DURATION_BUCKETS", "MetricRecorder"]

#: Histogram bucket boundaries for call duration, in seconds (the HTTP semantic conventions').
DURATION_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)

# --- metrics -------------------------------------------------------------------------------


class MetricRecorder:
    """Metric instruments fed by events; attribute dicts are cached per label set."""

    def __init__(self, meter: Any) -> None:
        self._calls = meter.create_counter(
            "stoic.calls", unit="{call}", description="Calls through stoic policies, by outcome."
        )
        self._attempts = meter.create_counter(
            "stoic.attempts", unit="{attempt}", description="Attempts made by finished calls."
        )
        self._retries = meter.create_counter(
            "stoic.retries", unit="{retry}", description="Retries scheduled."
        )
        self._rejections = meter.create_counter(
            "stoic.rejections", unit="{call}", description="Calls refused before they started."
        )
        self._messages = meter.create_counter(
            "stoic.messages", unit="{message}", description="Messages by result."
        )
        self._replays = meter.create_counter(
            "stoic.idempotent_replays", unit="{call}",
            description="Calls answered from an idempotency store instead of running again.",
        )
        self._duration = _histogram(meter, "stoic.call.duration", "Duration of calls.")
        self._workflows = {
            metric.key: meter.create_counter(f"stoic.workflow.{metric.key}", unit=metric.unit,
                                             description=metric.help)
            for metric in WORKFLOW_METRICS
        }
        self._steps = _histogram(meter, "stoic.workflow.step.duration",
                                 "Duration of workflow step attempts, by outcome.")
        self._states: dict[str, str] = {}
        self._limits: dict[str, int] = {}
        from opentelemetry.metrics import Observation

        self._observation = Observation
        meter.create_observable_gauge(
            "stoic.circuit_breaker.state", callbacks=[self._observe_breakers], unit="1",
            description="1 for the breaker's current state, 0 for the others.",
        )
        meter.create_observable_gauge(
            "stoic.adaptive_limit", callbacks=[self._observe_limits], unit="{call}",
            description="The current limit of each adaptive concurrency limit.",
        )
        self._attrs: dict[tuple[str, ...], dict[str, str]] = {}

    def _a(self, *key: str) -> dict[str, str]:
        attrs = self._attrs.get(key)
        if attrs is None:
            names = _ATTRIBUTE_NAMES[key[0]]
            attrs = self._attrs[key] = dict(zip(names, key[1:], strict=True))
        return attrs

    def call(
        self, policy: str, name: str, outcome: str, duration: float, attempts: int,
        error_type: str | None,
    ) -> None:
        self._calls.add(1, self._a("call", name, outcome))
        by_name = self._a("name", name)
        self._attempts.add(attempts, by_name)
        self._duration.record(duration, by_name)

    def retry(self, name: str) -> None:
        self._retries.add(1, self._a("name", name))

    def rejection(self, name: str, reason: str) -> None:
        self._rejections.add(1, self._a("rejection", name, reason))

    def breaker(self, name: str, state: str) -> None:
        self._states[name] = state

    def message(self, topic: str, result: str) -> None:
        self._messages.add(1, self._a("message", topic, result))

    def replay(self, name: str) -> None:
        self._replays.add(1, self._a("name", name))

    def workflow_count(self, metric: str, workflow: str, label: str = "") -> None:
        key = ("workflow_label", workflow, label) if label else ("workflow", workflow)
        self._workflows[metric].add(1, self._a(*key))

    def step(self, workflow: str, step: str, outcome: str, duration: float) -> None:
        self._steps.record(duration, self._a("step", workflow, step, outcome))

    def limit(self, name: str, limit: int) -> None:
        self._limits[name] = limit

    def _observe_limits(self, options: Any) -> Iterable[Any]:
        return [self._observation(limit, {"stoic.name": name})
                for name, limit in sorted(self._limits.items())]

    def _observe_breakers(self, options: Any) -> Iterable[Any]:
        return list(_breaker_observations(self._states, self._observation))


_ATTRIBUTE_NAMES: dict[str, tuple[str, ...]] = {
    "call": ("stoic.name", "stoic.outcome"),
    "name": ("stoic.name",),
    "rejection": ("stoic.name", "stoic.reason"),
    "message": ("messaging.destination.name", "stoic.result"),
    "workflow": ("stoic.workflow",),
    "workflow_label": ("stoic.workflow", "stoic.outcome"),
    "step": ("stoic.workflow", "stoic.step", "stoic.outcome"),
}

def _histogram(meter: Any, name: str, description: str) -> Any:
    """A duration histogram in seconds with ``DURATION_BUCKETS`` where the API takes advice."""
    try:
        return meter.create_histogram(name, unit="s", description=description,
                                      explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS))
    except TypeError:  # an API older than the bucket advice
        return meter.create_histogram(name, unit="s", description=description)


def _breaker_observations(states: dict[str, str], observation: Any) -> Iterator[Any]:
    current = dict(states)
    current.update(breaker_states())
    for name, state in sorted(current.items()):
        for candidate in (*BREAKER_STATES, *(() if state in BREAKER_STATES else (state,))):
            yield observation(
                1 if candidate == state else 0, {"stoic.name": name, "stoic.state": candidate}
            )


