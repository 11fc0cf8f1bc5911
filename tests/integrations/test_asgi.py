"""StoicMiddleware in front of Starlette and FastAPI apps, served by uvicorn, called by httpx."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import stoic
import stoic.http
from integrations.servers import Server
from stoic.integrations.asgi import StoicMiddleware

HEADER = "X-Request-Timeout-Ms"


class Calls:
    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()

    def hit(self) -> None:
        with self.lock:
            self.count += 1


def build(calls: Calls, **options: Any) -> Starlette:
    async def info(request: Request) -> JSONResponse:
        calls.hit()
        return JSONResponse({
            "remaining": stoic.remaining(),
            "request_id": stoic.context.get("request_id"),
            "user_id": stoic.context.get("user_id"),
            "service": stoic.context.get("service"),
        })

    def sync_info(request: Request) -> JSONResponse:  # runs in a worker thread
        calls.hit()
        return JSONResponse({"remaining": stoic.remaining()})

    async def slow(request: Request) -> JSONResponse:
        calls.hit()
        await asyncio.sleep(float(request.query_params.get("for", "0.5")))
        return JSONResponse({"ok": True})

    async def trace(request: Request) -> JSONResponse:
        from opentelemetry import trace as otel_trace

        context = otel_trace.get_current_span().get_span_context()
        return JSONResponse({
            "trace_id": format(context.trace_id, "032x"),
            "traceparent": request.headers.get("traceparent"),
        })

    async def expires(request: Request) -> JSONResponse:
        raise stoic.DeadlineExceeded("downstream ran out of time")

    app = Starlette(routes=[
        Route("/info", info), Route("/sync", sync_info), Route("/slow", slow),
        Route("/expires", expires), Route("/trace", trace),
    ])
    app.add_middleware(StoicMiddleware, service="svc", version="1.0", **options)
    return app


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, Calls]]:
    calls = Calls()
    server = Server(build(calls)).start()
    yield server.url, calls
    server.stop()


@pytest.fixture(scope="module")
def capped() -> Iterator[tuple[str, Calls]]:
    calls = Calls()
    server = Server(build(calls, max_deadline=5.0)).start()
    yield server.url, calls
    server.stop()


class TestDeadlines:
    def test_deadline_header_becomes_the_request_deadline(self, served: Any) -> None:
        url, _ = served
        body = httpx.get(f"{url}/info", headers={HEADER: "2000"}).json()
        assert 1.5 < body["remaining"] <= 2.0

    def test_deadline_reaches_sync_endpoints_in_threads(self, served: Any) -> None:
        url, _ = served
        body = httpx.get(f"{url}/sync", headers={HEADER: "2000"}).json()
        assert 1.5 < body["remaining"] <= 2.0

    def test_no_header_and_no_max_means_no_deadline(self, served: Any) -> None:
        url, _ = served
        assert httpx.get(f"{url}/info").json()["remaining"] is None

    def test_request_with_no_time_left_is_answered_504_without_running_the_handler(
        self, served: Any
    ) -> None:
        url, calls = served
        before = calls.count
        response = httpx.get(f"{url}/info", headers={HEADER: "0", "X-Request-ID": "late-1"})
        assert response.status_code == 504
        assert response.headers["x-request-id"] == "late-1"
        assert calls.count == before

    def test_malformed_deadline_header_is_ignored_with_a_warning(
        self, served: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        url, _ = served
        with caplog.at_level(logging.WARNING, logger="stoic.asgi"):
            response = httpx.get(f"{url}/info", headers={HEADER: "soon"})
        assert response.status_code == 200
        assert response.json()["remaining"] is None
        assert any("malformed" in r.getMessage() for r in caplog.records)

    @pytest.mark.parametrize("value", ["-100", "99999999999999", "1e300"])
    def test_negative_and_absurd_values_are_clamped_to_max_deadline(
        self, capped: Any, value: str
    ) -> None:
        url, _ = capped
        response = httpx.get(f"{url}/info", headers={HEADER: value})
        assert response.status_code == 200
        assert 4.0 < response.json()["remaining"] <= 5.0

    def test_max_deadline_bounds_requests_without_a_header(self, capped: Any) -> None:
        url, _ = capped
        assert 4.0 < httpx.get(f"{url}/info").json()["remaining"] <= 5.0

    def test_a_shorter_header_wins_over_max_deadline(self, capped: Any) -> None:
        url, _ = capped
        assert httpx.get(f"{url}/info", headers={HEADER: "800"}).json()["remaining"] <= 0.8

    def test_deadline_exceeded_escaping_the_handler_is_a_504(self, served: Any) -> None:
        url, _ = served
        assert httpx.get(f"{url}/expires").status_code == 504


class TestRequestContext:
    def test_incoming_request_id_is_bound_and_echoed(self, served: Any) -> None:
        url, _ = served
        response = httpx.get(f"{url}/info", headers={"X-Request-ID": "abc-123"})
        assert response.json()["request_id"] == "abc-123"
        assert response.headers["x-request-id"] == "abc-123"
        assert response.json()["service"] == "svc"

    def test_missing_or_unsafe_request_id_is_replaced_by_a_new_one(self, served: Any) -> None:
        url, _ = served
        for headers in ({}, {"X-Request-ID": "x" * 500}):
            response = httpx.get(f"{url}/info", headers=headers)
            bound = response.json()["request_id"]
            assert bound and len(bound) == 32
            assert response.headers["x-request-id"] == bound

    async def test_user_id_hook_binds_the_user(self) -> None:
        calls = Calls()

        def user(scope: Any) -> str | None:
            return dict(scope["headers"]).get(b"x-user", b"").decode() or None

        server = Server(build(calls, user_id=user)).start()
        try:
            async with httpx.AsyncClient() as client:
                response = await client.get(f"{server.url}/info", headers={"X-User": "u7"})
            assert response.json()["user_id"] == "u7"
        finally:
            server.stop()


class TestTraceContext:
    def test_w3c_trace_context_goes_out_and_is_continued_by_the_middleware(
        self, served: Any
    ) -> None:
        sdk = pytest.importorskip("opentelemetry.sdk.trace")
        from stoic.observability import otel

        provider = sdk.TracerProvider()
        assert otel.instrument(tracer_provider=provider)
        try:
            url, _ = served
            with stoic.http.Client() as client, provider.get_tracer("test").start_as_current_span(
                "caller"
            ) as span:
                body = client.get(f"{url}/trace").json()
            caller_trace = format(span.get_span_context().trace_id, "032x")
        finally:
            otel.uninstrument()
        assert body["traceparent"].split("-")[1] == caller_trace
        assert body["trace_id"] == caller_trace


class TestLoadShedding:
    async def test_full_bulkhead_answers_503_with_retry_after(self) -> None:
        bulkhead_module = pytest.importorskip("stoic.policies.bulkhead")
        calls = Calls()
        server = Server(build(calls, bulkhead=bulkhead_module.Bulkhead(1))).start()
        try:
            async with httpx.AsyncClient() as client:
                slow = asyncio.create_task(client.get(f"{server.url}/slow?for=0.5"))
                await asyncio.sleep(0.2)
                shed = await client.get(f"{server.url}/info")
                assert (await slow).status_code == 200
            assert shed.status_code == 503
            assert int(shed.headers["retry-after"]) >= 1
            assert calls.count == 1
        finally:
            server.stop()


class TestReexports:
    def test_idempotency_middleware_is_reexported_lazily(self) -> None:
        from stoic.idempotency.asgi import IdempotencyMiddleware
        from stoic.integrations import asgi

        assert asgi.IdempotencyMiddleware is IdempotencyMiddleware
        with pytest.raises(AttributeError):
            _ = asgi.NoSuchMiddleware  # type: ignore[attr-defined]


class TestPlainAsgi:
    async def test_non_http_scopes_pass_straight_through(self) -> None:
        seen: list[str] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            seen.append(scope["type"])

        async def nothing() -> dict[str, Any]:
            return {}

        async def ignore(message: Any) -> None:
            return None

        await StoicMiddleware(app, "svc", "1")({"type": "lifespan"}, nothing, ignore)
        assert seen == ["lifespan"]

    @pytest.mark.parametrize(
        ("kwargs", "name"),
        [
            ({"max_deadline": -1}, "max_deadline"),
            ({"max_deadline": float("inf")}, "max_deadline"),
            ({"bulkhead": 3}, "bulkhead"),
            ({"deadline_header": ""}, "deadline_header"),
            ({"user_id": "alice"}, "user_id"),
        ],
    )
    def test_bad_configuration_names_the_parameter(self, kwargs: dict, name: str) -> None:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            return None

        with pytest.raises(ValueError, match=name):
            StoicMiddleware(app, "svc", "1", **kwargs)


class TestDeadlineHeaderParsing:
    @given(raw=st.binary(max_size=40) | st.integers().map(lambda n: str(n).encode()))
    @settings(max_examples=300, deadline=None)
    def test_any_header_value_gives_no_deadline_or_one_within_max_deadline(
        self, raw: bytes
    ) -> None:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            return None

        logging.getLogger("stoic.asgi").disabled = True
        try:
            seconds = StoicMiddleware(app, "svc", "1", max_deadline=30.0)._seconds(raw)
        finally:
            logging.getLogger("stoic.asgi").disabled = False
        assert seconds is not None and 0.0 <= seconds <= 30.0
