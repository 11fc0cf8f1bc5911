"""The Prometheus metric families ``stoic.observability.prometheus`` builds on each scrape.

Each helper takes plain numbers (a label tuple, or one label value, to a count) and returns
one ``prometheus_client`` family, labels sorted. Histograms arrive as stoic keeps them:
counts per bucket of ``DURATION_BUCKETS`` (not cumulative, the last for +Inf), then the sum.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ._events import BREAKER_STATES
from .otel_metrics import DURATION_BUCKETS

__all__ = [
    "breaker_gauge",
    "counter",
    "cumulative",
    "gauge",
    "histogram",
]

_BUCKET_LABELS = (*(repr(float(b)) for b in DURATION_BUCKETS), "+Inf")

def _labels(key: Any) -> list[str]:
    return list(key) if isinstance(key, tuple) else [key]


def counter(name: str, documentation: str, labels: list[str], values: Mapping[Any, int]) -> Any:
    """A counter family with one sample per key of ``values``."""
    from prometheus_client.core import CounterMetricFamily

    family = CounterMetricFamily(name, documentation, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(_labels(key), value)
    return family


def gauge(name: str, documentation: str, labels: list[str], values: Mapping[Any, float]) -> Any:
    """A gauge family with one sample per key of ``values``."""
    return _gauge(name, documentation, labels, sorted(values.items()))


def _gauge(
    name: str, documentation: str, labels: list[str], samples: Iterable[tuple[Any, float]]
) -> Any:
    from prometheus_client.core import GaugeMetricFamily

    family = GaugeMetricFamily(name, documentation, labels=labels)
    for key, value in samples:
        family.add_metric(_labels(key), float(value))
    return family


def histogram(
    name: str, documentation: str, labels: list[str], values: Mapping[Any, list[float]]
) -> Any:
    """A histogram family (unit seconds) with one histogram per key of ``values``."""
    from prometheus_client.core import HistogramMetricFamily

    family = HistogramMetricFamily(name, documentation, labels=labels, unit="seconds")
    for key, counts in sorted(values.items()):
        family.add_metric(_labels(key), cumulative(counts), counts[-1])
    return family


def breaker_gauge(states: Mapping[str, str]) -> Any:
    """``stoic_circuit_breaker_state``: 1 for each breaker's current state, 0 for the others."""
    return _gauge(
        "stoic_circuit_breaker_state",
        "Circuit breaker state: 1 for the current state, 0 for the others.",
        ["name", "state"],
        (
            ((name, candidate), 1.0 if candidate == state else 0.0)
            for name, state in sorted(states.items())
            for candidate in (*BREAKER_STATES, *(() if state in BREAKER_STATES else (state,)))
        ),
    )


def cumulative(counts: list[float]) -> list[tuple[str, float]]:
    """Prometheus buckets (cumulative) of a histogram kept as counts per bucket, then the sum."""
    total = 0.0
    buckets = []
    for label, count in zip(_BUCKET_LABELS, counts[:-1], strict=True):
        total += count
        buckets.append((label, total))
    return buckets
