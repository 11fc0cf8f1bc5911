"""JSON logs: parseable lines carrying trace ids and the bound request context."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace

import stoic
from stoic.observability import logs
from stoic.testing import virtual_time

from .conftest import Otel


class Captured:
    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]


@pytest.fixture
def captured() -> Iterator[Captured]:
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    logs.configure("shop", "1.4.2", env="prod", level="DEBUG", stream=stream)
    yield Captured(stream)
    logs.unconfigure()
    root.setLevel(level)


def test_stdlib_and_structlog_lines_are_json_with_the_standard_fields(captured: Captured) -> None:
    logging.getLogger("app.orders").info("order %s placed", 7, extra={"total": 12.5})
    logs.get_logger("app.payments").warning("card declined", order=7)
    first, second = captured.lines()
    for line in (first, second):
        assert {"timestamp", "level", "event", "logger", "service", "version", "env"} <= set(line)
        assert line["service"] == "shop"
        assert line["version"] == "1.4.2"
        assert line["env"] == "prod"
        assert line["timestamp"].endswith("Z")
    assert (first["event"], first["level"], first["logger"]) == ("order 7 placed", "info",
                                                                  "app.orders")
    assert first["total"] == 12.5
    assert (second["event"], second["level"], second["logger"]) == ("card declined", "warning",
                                                                    "app.payments")
    assert second["order"] == 7
    assert "trace_id" not in first  # no span: left out, not null


def test_trace_and_span_ids_match_the_active_span(captured: Captured, sdk: Otel) -> None:
    tracer = sdk.tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("checkout") as span:
        logging.getLogger("app").info("inside")
        logs.get_logger("app").info("inside too")
    ctx = span.get_span_context()
    for line in captured.lines():
        assert line["trace_id"] == format(ctx.trace_id, "032x")
        assert line["span_id"] == format(ctx.span_id, "016x")


def test_retry_logs_the_retry_at_debug_and_the_give_up_at_warning(captured: Captured) -> None:
    def refused() -> None:
        raise ConnectionRefusedError("refused")

    with virtual_time():
        stoic.Retry(max_attempts=2, name="payments").call(lambda: "ok")
        with stoic.context.bind(request_id="req-9"), pytest.raises(ConnectionRefusedError):
            stoic.Retry(max_attempts=2, name="payments").call(refused)
    lines = captured.lines()
    assert [(line["logger"], line["level"]) for line in lines] == [
        ("stoic", "debug"), ("stoic", "warning"),
    ]  # and nothing for the successful call
    assert all(line["request_id"] == "req-9" for line in lines)
    assert "gave up" in lines[1]["event"]


def test_bad_configuration_is_rejected() -> None:
    with pytest.raises(ValueError, match="level"):
        logs.configure("shop", "1.0", level="LOUD")
    with pytest.raises(ValueError, match="service"):
        logs.configure("", "1.0")


def test_console_output_is_not_json() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    try:
        logs.configure("shop", "1.0", json=False, stream=stream)
        logging.getLogger("app").warning("plain words")
    finally:
        logs.unconfigure()
        root.setLevel(level)
    text = stream.getvalue()
    assert "plain words" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


async def test_asgi_request_lines_carry_request_user_and_trace_ids(
    captured: Captured, otel: Otel
) -> None:
    import httpx

    from stoic.integrations.asgi import StoicMiddleware

    async def app(scope: Any, receive: Any, send: Any) -> None:
        logging.getLogger("app.http").info("handling %s", scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    wrapped = StoicMiddleware(app, service="orders", version="2.0",
                              user_id=lambda scope: "user-42")
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    transport = httpx.ASGITransport(app=wrapped)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        reply = await client.get("/orders", headers={
            "X-Request-ID": "req-123",
            "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01",
        })
    assert reply.status_code == 200
    [line] = [x for x in captured.lines() if x["logger"] == "app.http"]
    assert line["event"] == "handling /orders"
    assert line["request_id"] == "req-123"
    assert line["user_id"] == "user-42"
    assert line["trace_id"] == trace_id


def test_worker_handler_lines_carry_the_publishers_request_id(captured: Captured) -> None:
    from stoic.messaging import MemoryBroker, Worker

    broker = MemoryBroker()
    with stoic.context.bind(request_id="req-77"):
        broker.publish("emails", {"user": "u-5"})

    def handle(message: Any) -> None:
        with stoic.context.bind(user_id=message.payload["user"]):
            logging.getLogger("app.worker").info("sending email")

    Worker(broker, "emails", handle, poll_interval=0.01).run(
        stop_when_empty=True, handle_signals=False
    )
    [line] = [x for x in captured.lines() if x["logger"] == "app.worker"]
    assert line["request_id"] == "req-77"
    assert line["user_id"] == "u-5"


def test_context_does_not_leak_between_requests(captured: Captured) -> None:
    with stoic.context.bind(request_id="a", user_id="u"):
        logging.getLogger("app").info("one")
    logging.getLogger("app").info("two")
    one, two = captured.lines()
    assert (one["request_id"], one["user_id"]) == ("a", "u")
    assert "request_id" not in two
    assert "user_id" not in two
    assert trace.get_current_span() is trace.INVALID_SPAN
