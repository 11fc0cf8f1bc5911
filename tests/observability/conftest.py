"""Fixtures for the telemetry tests: OpenTelemetry SDK providers with in-memory exporters."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest


def flaky(failures: int, exc: type[Exception] = ConnectionRefusedError) -> Any:
    """A function failing ``failures`` times (TRANSIENT by default) and then returning "ok"."""
    calls = {"n": 0}

    def fn() -> str:
        calls["n"] += 1
        if calls["n"] <= failures:
            raise exc("refused")
        return "ok"

    return fn


@dataclass
class Otel:
    tracer_provider: Any
    meter_provider: Any
    spans: Any  # InMemorySpanExporter
    reader: Any  # InMemoryMetricReader

    def finished(self) -> list[Any]:
        return list(self.spans.get_finished_spans())

    def metrics(self) -> dict[str, list[tuple[dict[str, Any], Any]]]:
        """metric name -> [(attributes, value or histogram point)]."""
        out: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    points = out.setdefault(metric.name, [])
                    for point in metric.data.data_points:
                        value = getattr(point, "value", point)
                        points.append((dict(point.attributes), value))
        return out


@pytest.fixture
def sdk() -> Iterator[Otel]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Otel(tracer_provider, meter_provider, spans, reader)
    meter_provider.shutdown()
    tracer_provider.shutdown()


@pytest.fixture
def otel(sdk: Otel) -> Iterator[Otel]:
    """stoic instrumented with the in-memory SDK providers."""
    from stoic.observability import otel as stoic_otel

    assert stoic_otel.instrument(sdk.tracer_provider, sdk.meter_provider)
    yield sdk
    stoic_otel.uninstrument()
