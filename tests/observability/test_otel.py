"""OpenTelemetry: attempt spans under the caller, metrics from events, W3C propagation."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace

import stoic
from stoic.events import dispatcher
from stoic.observability import otel as stoic_otel
from stoic.testing import virtual_time

from .conftest import Otel, flaky


def attempt_spans(otel: Otel) -> list[Any]:
    return sorted(
        (s for s in otel.finished() if "stoic.attempt" in s.attributes),
        key=lambda s: s.attributes["stoic.attempt"],
    )


def test_three_attempts_are_three_child_spans_of_the_caller(otel: Otel) -> None:
    tracer = otel.tracer_provider.get_tracer("test")
    with virtual_time(), tracer.start_as_current_span("checkout") as caller:
        assert stoic.Retry(max_attempts=5, name="payments").call(flaky(2)) == "ok"
    spans = attempt_spans(otel)
    assert [s.attributes["stoic.attempt"] for s in spans] == [1, 2, 3]
    for span in spans:
        assert span.parent is not None
        assert span.parent.span_id == caller.get_span_context().span_id
        assert span.context.trace_id == caller.get_span_context().trace_id
        assert span.attributes["stoic.policy"] == "retry"
        assert span.attributes["stoic.name"] == "payments"
    assert [s.attributes["stoic.outcome"] for s in spans] == ["transient", "transient", "success"]
    assert [s.attributes.get("error.type") for s in spans] == [
        "ConnectionRefusedError", "ConnectionRefusedError", None,
    ]
    assert [s.status.status_code for s in spans] == [
        trace.StatusCode.ERROR, trace.StatusCode.ERROR, trace.StatusCode.UNSET,
    ]


async def test_async_attempts_are_child_spans_too(otel: Otel) -> None:
    tracer = otel.tracer_provider.get_tracer("test")
    calls = {"n": 0}

    async def fn() -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionRefusedError("refused")
        return "ok"

    async with virtual_time():
        with tracer.start_as_current_span("checkout") as caller:
            assert await stoic.Retry(max_attempts=3, name="pay").acall(fn) == "ok"
    spans = attempt_spans(otel)
    assert [s.attributes["stoic.outcome"] for s in spans] == ["transient", "success"]
    assert {s.parent.span_id for s in spans} == {caller.get_span_context().span_id}


def test_http_attempts_carry_resend_count(otel: Otel) -> None:
    """An HTTP integration marks the attempt span with http.* attributes; resends get counted."""
    calls = {"n": 0}

    def get() -> int:
        trace.get_current_span().set_attribute("http.request.method", "GET")
        calls["n"] += 1
        if calls["n"] < 3:
            raise ConnectionRefusedError("refused")
        return 200

    with virtual_time():
        stoic.Retry(max_attempts=3, name="inventory").call(get)
    spans = attempt_spans(otel)
    assert [s.attributes.get("http.request.resend_count") for s in spans] == [None, 1, 2]


def test_non_http_attempts_have_no_http_attributes(otel: Otel) -> None:
    with virtual_time():
        stoic.Retry(max_attempts=3, name="db").call(flaky(2))
    assert all(
        not any(k.startswith("http.") for k in s.attributes) for s in attempt_spans(otel)
    )


def test_metrics_count_three_attempts_two_retries_one_success(otel: Otel) -> None:
    with virtual_time():
        stoic.Retry(max_attempts=5, name="payments").call(flaky(2))
    metrics = otel.metrics()
    assert metrics["stoic.calls"] == [({"stoic.name": "payments", "stoic.outcome": "success"}, 1)]
    assert metrics["stoic.attempts"] == [({"stoic.name": "payments"}, 3)]
    assert metrics["stoic.retries"] == [({"stoic.name": "payments"}, 2)]
    [(attrs, point)] = metrics["stoic.call.duration"]
    assert attrs == {"stoic.name": "payments"}
    assert point.count == 1
    assert list(point.explicit_bounds) == list(stoic_otel.DURATION_BUCKETS)


def test_give_up_counts_as_a_failed_call_with_its_outcome(otel: Otel) -> None:
    with virtual_time(), pytest.raises(ConnectionRefusedError):
        stoic.Retry(max_attempts=2, name="payments").call(flaky(5))
    metrics = otel.metrics()
    assert metrics["stoic.calls"] == [
        ({"stoic.name": "payments", "stoic.outcome": "transient"}, 1)
    ]
    assert metrics["stoic.retries"] == [({"stoic.name": "payments"}, 1)]


def test_breaker_state_is_an_observable_gauge_and_rejections_are_counted(otel: Otel) -> None:
    breaker = stoic.CircuitBreaker("search", minimum_calls=2, failure_rate=0.5, open_for=30.0)
    for _ in range(2):
        with pytest.raises(ConnectionRefusedError):
            breaker.call(flaky(5))
    with pytest.raises(stoic.CircuitOpenError):
        breaker.call(flaky(0))
    metrics = otel.metrics()
    states = {
        a["stoic.state"]: v for a, v in metrics["stoic.circuit_breaker.state"]
        if a["stoic.name"] == "search"
    }
    assert states["open"] == 1
    assert states["closed"] == 0
    assert states["half_open"] == 0
    assert metrics["stoic.rejections"] == [
        ({"stoic.name": "search", "stoic.reason": "circuit_open"}, 1)
    ]


def test_inject_and_extract_round_trip_dicts_and_pairs(otel: Otel) -> None:
    tracer = otel.tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("producer") as span:
        headers: dict[str, str] = stoic_otel.inject({})
        pairs = stoic_otel.inject([("content-type", "json")])
        raw = stoic_otel.inject([(b"host", b"x"), (b"traceparent", b"stale")])
    trace_id = span.get_span_context().trace_id
    assert set(headers) == {"traceparent"}
    assert pairs[0] == ("content-type", "json")
    assert [k for k, _ in raw] == [b"host", b"traceparent"]  # replaced, not duplicated
    for carrier in (headers, pairs, raw, {"TraceParent": headers["traceparent"]}):
        ctx = stoic_otel.extract(carrier)
        assert trace.get_current_span(ctx).get_span_context().trace_id == trace_id


def test_telemetry_off_installs_nothing_and_propagation_is_a_no_op() -> None:
    assert not stoic_otel.is_instrumented()
    headers: dict[str, str] = {}
    assert stoic_otel.inject(headers) is headers
    assert headers == {}
    assert stoic_otel.extract({"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}) is None
    assert stoic_otel.publish_span("orders", headers).__enter__() is None
    assert dispatcher.sinks == ()
    assert dispatcher.attempt_scope is None


def test_instrument_without_an_sdk_is_off() -> None:
    """The API's default providers record nothing: stoic installs no hook and no sink."""
    assert stoic_otel.instrument() is False
    assert not stoic_otel.is_instrumented()
    assert dispatcher.attempt_scope is None
    assert dispatcher.sinks == ()


def test_uninstrument_removes_the_hook_and_the_sink(sdk: Otel) -> None:
    stoic_otel.instrument(sdk.tracer_provider, sdk.meter_provider)
    assert dispatcher.attempt_scope is not None
    assert len(dispatcher.sinks) == 1
    stoic_otel.uninstrument()
    assert dispatcher.attempt_scope is None
    assert dispatcher.sinks == ()


def test_cancellation_leaves_the_attempt_span_ended_and_marked(otel: Otel) -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stoic.Retry(max_attempts=3, name="job").call(interrupted)
    [span] = attempt_spans(otel)
    assert span.attributes["stoic.outcome"] == "cancelled"
    assert span.end_time is not None
    assert trace.get_current_span() is trace.INVALID_SPAN  # context restored


_PRODUCER = textwrap.dedent(
    """
    import json, sys
    from opentelemetry.sdk.trace import TracerProvider
    from stoic.messaging import SQLiteBroker
    from stoic.observability import otel

    provider = TracerProvider()
    otel.instrument(tracer_provider=provider)
    broker = SQLiteBroker(sys.argv[1])
    with provider.get_tracer("producer").start_as_current_span("place order") as span:
        with otel.publish_span("orders", headers := {}):
            broker.publish("orders", {"order": 1}, headers=headers)
    ctx = span.get_span_context()
    print(json.dumps({"trace_id": ctx.trace_id}))
    """
)


def test_message_published_in_one_process_is_handled_in_the_same_trace(
    otel: Otel, tmp_path: Path
) -> None:
    from stoic.messaging import SQLiteBroker, Worker

    db = tmp_path / "queue.db"
    SQLiteBroker(db).close()
    done = subprocess.run(
        [sys.executable, "-c", _PRODUCER, str(db)], capture_output=True, text=True,
        timeout=60, check=True,
    )
    producer_trace = json.loads(done.stdout)["trace_id"]
    seen: list[int] = []

    def handle(message: Any) -> None:
        seen.append(trace.get_current_span().get_span_context().trace_id)

    broker = SQLiteBroker(db)
    try:
        Worker(broker, "orders", handle, poll_interval=0.01).run(
            stop_when_empty=True, handle_signals=False
        )
    finally:
        broker.close()
    assert seen == [producer_trace]
    [process] = [s for s in otel.finished() if s.name == "process orders"]
    assert process.kind is trace.SpanKind.CONSUMER
    assert process.context.trace_id == producer_trace
    assert process.parent is not None and process.parent.is_remote
    assert process.links and process.links[0].context.trace_id == producer_trace



def _http_scenario(otel: Otel) -> tuple[Any, list[Any], list[str]]:
    import httpx

    from stoic.integrations.httpx import ResilientTransport

    seen: list[str] = []

    def server(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["traceparent"])
        return httpx.Response(503 if len(seen) < 3 else 200)

    transport = ResilientTransport(inner=httpx.MockTransport(server), per_host=False)
    tracer = otel.tracer_provider.get_tracer("test")
    with virtual_time(), httpx.Client(transport=transport) as client, \
            tracer.start_as_current_span("checkout") as caller:
        assert client.get("http://inventory.test/items").status_code == 200
    return caller, attempt_spans(otel), seen


def test_http_transport_attempts_are_spans_in_the_callers_trace(otel: Otel) -> None:
    caller, spans, seen = _http_scenario(otel)
    assert len(spans) == 3
    assert {s.parent.span_id for s in spans} == {caller.get_span_context().span_id}
    trace_id = format(caller.get_span_context().trace_id, "032x")
    assert [header.split("-")[1] for header in seen] == [trace_id] * 3


def test_http_transport_resends_name_their_own_attempt_span_as_parent(otel: Otel) -> None:
    _, spans, seen = _http_scenario(otel)
    assert [header.split("-")[2] for header in seen] == [
        format(s.context.span_id, "016x") for s in spans
    ]


def test_importing_the_adapters_imports_no_optional_library() -> None:
    code = (
        "import sys, stoic.observability.otel, stoic.observability.prometheus, "
        "stoic.observability.logs, stoic.observability.alerts\n"
        "loaded = [m for m in ('opentelemetry', 'prometheus_client', 'structlog', 'yaml') "
        "if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_adaptive_limit_gauge_and_shed_requests_reach_opentelemetry(otel: Otel) -> None:
    from stoic.integrations.shedding import RequestShed
    from stoic.policies.limit import LimitChanged

    dispatcher.emit(LimitChanged(name="api", limit=12, previous=20, rtt=0.05, inflight=20,
                                 dropped=False))
    dispatcher.emit(RequestShed(name="api", priority="sheddable", status=503,
                                reason="over_limit"))
    metrics = otel.metrics()
    assert metrics["stoic.adaptive_limit"] == [({"stoic.name": "api"}, 12)]
    assert ({"stoic.name": "api", "stoic.reason": "shed_sheddable"}, 1) in metrics[
        "stoic.rejections"]
