"""Observability of durable workflows: Prometheus metrics, spans per pass and step, log fields."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import stoic
from stoic.observability import logs, prometheus
from stoic.observability import otel as stoic_otel
from stoic.testing import VirtualClock, virtual_time
from stoic.workflow import MemoryStore, SQLiteStore, Store, WorkflowFailed, Workflows
from stoic.workflow.store import CountsDue
from workflow.wfhelpers import Crash, crash_and_expire


class Declined(Exception):
    """A PERMANENT failure (an unknown exception type is not retried)."""


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    registry = CollectorRegistry()
    prometheus.instrument(registry)
    yield registry
    prometheus.uninstrument()


@pytest.fixture
def spans() -> Iterator[Any]:
    """stoic's OpenTelemetry instrumentation on an SDK tracer with an in-memory exporter."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    assert stoic_otel.instrument(provider)
    exporter.provider = provider
    yield exporter
    stoic_otel.uninstrument()
    provider.shutdown()


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def order_flows(store: Store | None = None) -> Workflows:
    """An order workflow: reserve (compensated by release), then charge, which may decline."""
    flows = Workflows(store or MemoryStore(), lease=5.0)

    def reserve(order: str) -> str:
        stoic.clock.sleep(0.25)
        return f"hold-{order}"

    def charge(order: str) -> str:
        stoic.clock.sleep(0.5)
        if order.startswith("bad"):
            raise Declined(order)
        return f"charge-{order}"

    @flows.workflow("order")
    def order(ctx: Any, order_id: str) -> list[str]:
        hold = ctx.step("reserve", reserve, order_id, compensate=lambda o: None)
        return [hold, ctx.step("charge", charge, order_id)]

    return flows


# --- Prometheus ------------------------------------------------------------------------------


def test_prometheus_counts_started_completed_failed_and_compensated_runs(
    registry: CollectorRegistry,
) -> None:
    with virtual_time():
        flows = order_flows()
        flows.start("order", "o1")
        flows.start("order", "o2")
        flows.start("order", "bad3")
        flows.drain()
    assert value(registry, "stoic_workflows_started_total", workflow="order") == 3
    assert value(registry, "stoic_workflows_completed_total", workflow="order") == 2
    assert value(registry, "stoic_workflows_failed_total", workflow="order",
                 outcome="failed") == 1
    assert value(registry, "stoic_workflow_compensations_total", workflow="order",
                 outcome="completed") == 1


def test_prometheus_step_duration_histogram_is_by_workflow_step_and_outcome(
    registry: CollectorRegistry,
) -> None:
    with virtual_time():  # steps take exactly their virtual sleeps
        flows = order_flows()
        flows.start("order", "o1")
        flows.start("order", "bad2")
        flows.drain()
    name = "stoic_workflow_step_duration_seconds"
    assert value(registry, f"{name}_count", workflow="order", step="reserve",
                 outcome="success") == 2
    assert value(registry, f"{name}_sum", workflow="order", step="reserve",
                 outcome="success") == pytest.approx(0.5)
    assert value(registry, f"{name}_count", workflow="order", step="charge",
                 outcome="success") == 1
    assert value(registry, f"{name}_count", workflow="order", step="charge",
                 outcome="permanent") == 1
    assert value(registry, f"{name}_bucket", workflow="order", step="charge",
                 outcome="permanent", le="0.5") == 1
    assert value(registry, f"{name}_bucket", workflow="order", step="charge",
                 outcome="permanent", le="0.25") == 0


def test_opentelemetry_metrics_count_runs_and_time_step_attempts() -> None:
    """The OpenTelemetry meter gets the same workflow facts as Prometheus, from the events."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    assert stoic_otel.instrument(meter_provider=meter_provider)
    try:
        with virtual_time():
            flows = order_flows()
            for order in ("o1", "o2", "bad3"):
                flows.start("order", order)
            flows.drain()
        points: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        for resource in reader.get_metrics_data().resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    points[metric.name] = [(dict(p.attributes), p) for p in metric.data.data_points]
    finally:
        stoic_otel.uninstrument()
        meter_provider.shutdown()

    def count(name: str, **attributes: str) -> float:
        return sum(p.value for attrs, p in points.get(name, ()) if attrs == attributes)

    order = {"stoic.workflow": "order"}
    assert count("stoic.workflow.started", **order) == 3
    assert count("stoic.workflow.completed", **order) == 2
    assert count("stoic.workflow.failed", **order, **{"stoic.outcome": "failed"}) == 1
    assert count("stoic.workflow.compensated", **order, **{"stoic.outcome": "completed"}) == 1
    steps = {(a["stoic.step"], a["stoic.outcome"]): p for a, p in
             points["stoic.workflow.step.duration"]}
    assert steps[("reserve", "success")].count == 3
    assert steps[("reserve", "success")].sum == pytest.approx(0.75)
    assert steps[("charge", "success")].count == 2
    assert steps[("charge", "permanent")].count == 1


def test_prometheus_counts_recovered_and_parked_runs(registry: CollectorRegistry) -> None:
    crash = [True]

    def charge() -> str:
        if crash[0]:
            crash[0] = False
            raise Crash
        return "ch"

    with virtual_time() as clock:
        flows = Workflows(MemoryStore(), lease=5.0)

        @flows.workflow("pay")
        def pay(ctx: Any) -> str:
            return str(ctx.step("charge", charge, once=True))

        flows.start("pay", id="p1")
        with pytest.raises(Crash):
            flows.drain()
        crash_and_expire(flows, clock)
        flows.drain()  # taken over, then parked: a once step was in flight
    assert value(registry, "stoic_workflows_recovered_total", workflow="pay") == 1
    assert value(registry, "stoic_workflows_parked_total", workflow="pay",
                 outcome="needs_attention") == 1
    assert value(registry, "stoic_workflows_completed_total", workflow="pay") is None


def test_due_backlog_gauge_counts_due_unclaimed_runs_at_scrape_time(
    registry: CollectorRegistry, flows: Workflows, clock: VirtualClock,
) -> None:
    """On every store: started runs are due at once; a sleeping run only at its wake time."""

    @flows.workflow("nap")
    def nap(ctx: Any) -> str:
        ctx.sleep(60.0)
        return "rested"

    unwatch = prometheus.watch_backlog(flows)
    try:
        prometheus.watch_backlog(flows.store)  # the same store twice counts once
        assert value(registry, "stoic_workflows_due", workflow="nap") is None
        for n in range(3):
            flows.start("nap", id=f"nap-{n}")
        assert value(registry, "stoic_workflows_due", workflow="nap") == 3
        claimed = flows.claim(1)  # a claimed run is no longer backlog
        assert value(registry, "stoic_workflows_due", workflow="nap") == 2
        flows.execute(claimed[0])  # now sleeping until +60 s
        assert value(registry, "stoic_workflows_due", workflow="nap") == 2
        while claimed := flows.claim(1):
            flows.execute(claimed[0])
        assert value(registry, "stoic_workflows_due", workflow="nap") == 0  # kept, at 0
        clock.advance(61.0)
        assert value(registry, "stoic_workflows_due", workflow="nap") == 3
        flows.drain()
        assert value(registry, "stoic_workflows_due", workflow="nap") == 0
    finally:
        unwatch()
    assert value(registry, "stoic_workflows_due", workflow="nap") == 0  # remembered name


def test_a_run_whose_worker_was_lost_is_backlog_again_after_its_lease(
    registry: CollectorRegistry,
) -> None:
    with virtual_time() as clock:
        flows = Workflows(MemoryStore(), lease=5.0)

        @flows.workflow("w")
        def w(ctx: Any) -> None:
            ctx.step("boom", lambda: (_ for _ in ()).throw(Crash()))

        unwatch = prometheus.watch_backlog(flows)
        try:
            flows.start("w", id="w1")
            assert value(registry, "stoic_workflows_due", workflow="w") == 1
            with pytest.raises(Crash):
                flows.drain()
            assert value(registry, "stoic_workflows_due", workflow="w") == 0  # leased
            crash_and_expire(flows, clock)
            assert value(registry, "stoic_workflows_due", workflow="w") == 1
        finally:
            unwatch()


def test_watch_backlog_refuses_what_cannot_count_and_every_store_can() -> None:
    with pytest.raises(ValueError, match="source must be"):
        prometheus.watch_backlog(object())  # type: ignore[arg-type]
    assert isinstance(MemoryStore(), CountsDue)


def test_a_store_that_fails_to_count_is_left_out_of_the_scrape(
    registry: CollectorRegistry, tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "closed.db")
    flows = order_flows(store)
    flows.start("order", "o1")
    unwatch = prometheus.watch_backlog(flows)
    try:
        assert value(registry, "stoic_workflows_due", workflow="order") == 1
        store.close()
        assert value(registry, "stoic_workflows_due", workflow="order") == 0
        assert value(registry, "stoic_workflows_started_total", workflow="order") == 1
    finally:
        unwatch()


# --- OpenTelemetry ---------------------------------------------------------------------------


def test_a_pass_is_a_span_and_each_step_attempt_its_child(spans: Any) -> None:
    tracer = spans.provider.get_tracer("test")
    with virtual_time():
        flows = order_flows()
        with tracer.start_as_current_span("checkout") as starter:
            handle = flows.start("order", "o1", id="run-1")
        flows.drain()
    assert handle.result() == ["hold-o1", "charge-o1"]
    finished = spans.get_finished_spans()
    (run_span,) = [s for s in finished if s.name == "workflow order"]
    steps = [s for s in finished if s.name.startswith("step ")]
    assert [s.name for s in steps] == ["step reserve", "step charge"]
    starter_context = starter.get_span_context()
    assert run_span.parent.span_id == starter_context.span_id  # joins the starter's trace
    assert run_span.context.trace_id == starter_context.trace_id
    assert dict(run_span.attributes) == {
        "stoic.workflow.id": "run-1", "stoic.workflow.name": "order",
        "stoic.workflow.version": 1, "stoic.workflow.token": 1,
        "stoic.workflow.recovered": False, "stoic.outcome": "completed",
    }
    for span in steps:
        assert span.parent.span_id == run_span.context.span_id
        assert span.attributes["stoic.workflow.id"] == "run-1"
        assert span.attributes["stoic.workflow.version"] == 1
        assert span.attributes["stoic.attempt"] == 1
        assert span.attributes["stoic.outcome"] == "success"
    assert steps[1].attributes["stoic.workflow.step"] == "charge"
    assert steps[1].attributes["stoic.idempotency_key"] == "run-1/charge/0"


def test_async_workflow_steps_and_their_policy_attempts_nest_under_the_pass(spans: Any) -> None:
    calls = {"n": 0}

    async def flaky() -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionRefusedError("down")
        return "ok"

    with virtual_time():
        flows = Workflows(MemoryStore(), lease=5.0)

        @flows.workflow("aw")
        async def aw(ctx: Any) -> str:
            return str(await ctx.step("call", flaky, policy=stoic.Retry(max_attempts=3,
                                                                        name="inner")))

        assert flows.run("aw") == "ok"
    finished = spans.get_finished_spans()
    (run_span,) = [s for s in finished if s.name == "workflow aw"]
    (step,) = [s for s in finished if s.name == "step call"]
    inner = [s for s in finished if s.attributes.get("stoic.name") == "inner"]
    assert step.parent.span_id == run_span.context.span_id
    assert len(inner) == 2
    assert {s.parent.span_id for s in inner} == {step.context.span_id}


def test_the_starters_traceparent_is_stored_with_the_run(spans: Any) -> None:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    tracer = spans.provider.get_tracer("test")
    flows = order_flows()
    headers: dict[str, str] = {}
    with tracer.start_as_current_span("checkout") as starter:
        flows.start("order", "o1", id="traced")
        TraceContextTextMapPropagator().inject(headers)
    flows.start("order", "o2", id="untraced")
    ctx = starter.get_span_context()
    assert flows.store.get("traced").trace == headers["traceparent"]
    assert headers["traceparent"].startswith(f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-")
    assert flows.store.get("untraced").trace is None


def test_failed_step_attempts_and_compensations_are_spans_with_their_outcome(
    spans: Any,
) -> None:
    from opentelemetry.trace import StatusCode

    with virtual_time():
        flows = order_flows()
        handle = flows.start("order", "bad1")
        flows.drain()
    with pytest.raises(WorkflowFailed):
        handle.result()
    finished = spans.get_finished_spans()
    by_name = {s.name: s for s in finished}
    charge = by_name["step charge"]
    assert charge.attributes["stoic.outcome"] == "permanent"
    assert charge.attributes["error.type"].endswith("Declined")
    assert charge.status.status_code is StatusCode.ERROR
    compensation = by_name["compensate compensate:reserve"]
    assert compensation.attributes["stoic.workflow.step.kind"] == "compensate"
    assert compensation.parent.span_id == by_name["workflow order"].context.span_id
    assert by_name["workflow order"].attributes["stoic.outcome"] == "failed"
    assert by_name["workflow order"].status.status_code is StatusCode.ERROR


def test_retried_step_attempts_are_spans_of_separate_passes_in_one_trace(spans: Any) -> None:
    tracer = spans.provider.get_tracer("test")
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionRefusedError("down")
        return "ok"

    with virtual_time():
        flows = Workflows(MemoryStore(), lease=5.0)

        @flows.workflow("w")
        def w(ctx: Any) -> str:
            return str(ctx.step("call", flaky))

        with tracer.start_as_current_span("starter") as starter:
            flows.start("w", id="w1")
        flows.drain()
    finished = spans.get_finished_spans()
    passes = [s for s in finished if s.name == "workflow w"]
    attempts = [s for s in finished if s.name == "step call"]
    assert [s.attributes["stoic.outcome"] for s in passes] == ["pending", "completed"]
    assert [(s.attributes["stoic.attempt"], s.attributes["stoic.outcome"]) for s in attempts] \
        == [(1, "transient"), (2, "success")]
    for span in passes:
        assert span.parent.span_id == starter.get_span_context().span_id
    assert {s.context.trace_id for s in finished} == {starter.get_span_context().trace_id}
    assert [a.parent.span_id for a in attempts] == [p.context.span_id for p in passes]


def test_a_recovery_by_another_process_continues_the_starters_trace(
    spans: Any, tmp_path: Path,
) -> None:
    """The run starts here inside a span and its worker dies in a step; a worker in a new
    process recovers it, and its pass span is a child of (and linked to) the starter's span."""
    db = tmp_path / "flows.db"
    worker = tmp_path / "worker.py"
    worker.write_text(textwrap.dedent("""
        import json, sys, time
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from stoic.observability import otel
        from stoic.workflow import Workflows

        flows = Workflows("sqlite:///" + sys.argv[1], lease=0.2)

        @flows.workflow("ship")
        def ship(ctx):
            ctx.step("pack", lambda: "packed")
            return ctx.step("send", lambda: "sent")

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        otel.instrument(provider)
        time.sleep(0.3)  # the dead worker's lease runs out
        flows.drain()
        print(json.dumps([{
            "name": s.name, "trace": format(s.context.trace_id, "032x"),
            "parent": format(s.parent.span_id, "016x") if s.parent else None,
            "links": [format(link.context.span_id, "016x") for link in s.links],
            "recovered": s.attributes.get("stoic.workflow.recovered"),
            "outcome": s.attributes.get("stoic.outcome"),
        } for s in exporter.get_finished_spans()]))
    """))

    def send() -> str:
        raise Crash  # the process dies inside the step

    flows = Workflows(SQLiteStore(db), lease=0.2)

    @flows.workflow("ship")
    def ship(ctx: Any) -> Any:
        ctx.step("pack", lambda: "packed")
        return ctx.step("send", send)

    tracer = spans.provider.get_tracer("test")
    with tracer.start_as_current_span("checkout") as starter:
        flows.start("ship", id="s1")
    with pytest.raises(Crash):
        flows.drain()
    flows.close()
    out = subprocess.run([sys.executable, str(worker), str(db)], capture_output=True,
                         text=True, timeout=120, check=True)
    recovered = json.loads(out.stdout)
    starter_ctx = starter.get_span_context()
    (run_span,) = [s for s in recovered if s["name"] == "workflow ship"]
    assert run_span["trace"] == f"{starter_ctx.trace_id:032x}"
    assert run_span["parent"] == f"{starter_ctx.span_id:016x}"
    assert run_span["links"] == [f"{starter_ctx.span_id:016x}"]
    assert run_span["recovered"] is True
    assert run_span["outcome"] == "completed"
    assert [s["name"] for s in recovered if s["name"].startswith("step")] == ["step send"]


def test_without_tracing_nothing_is_stored_or_traced() -> None:
    assert not stoic_otel.is_instrumented()
    with virtual_time():
        flows = order_flows()
        handle = flows.start("order", "o1")
        flows.drain()
    assert handle.info().trace is None
    assert handle.result() == ["hold-o1", "charge-o1"]


# --- logs ------------------------------------------------------------------------------------


def test_json_logs_inside_a_step_carry_the_workflow_id_and_step() -> None:
    stream = io.StringIO()
    logs.configure("shop", "1.0", stream=stream)
    app_log = logging.getLogger("shop.orders")
    try:
        with virtual_time():
            flows = Workflows(MemoryStore(), lease=5.0)

            def charge(order: str) -> str:
                app_log.info("charging %s", order)
                return "ok"

            @flows.workflow("order")
            def order(ctx: Any, order_id: str) -> str:
                app_log.info("between steps")
                return str(ctx.step("charge", charge, order_id))

            flows.start("order", "o1", id="run-7")
            flows.drain()
        app_log.info("after the run")
    finally:
        logs.unconfigure()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    by_event = {line["event"]: line for line in lines}
    assert by_event["charging o1"]["workflow_id"] == "run-7"
    assert by_event["charging o1"]["step"] == "charge"
    assert by_event["charging o1"]["workflow"] == "order"
    assert by_event["between steps"]["workflow_id"] == "run-7"
    assert "step" not in by_event["between steps"]
    assert "workflow_id" not in by_event["after the run"]
