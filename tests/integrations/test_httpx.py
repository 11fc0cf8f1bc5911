"""ResilientTransport / ResilientAsyncTransport against a real uvicorn server on loopback."""

from __future__ import annotations

import email.utils
import time

import httpx
import pytest

import stoic
import stoic.http
from integrations.servers import Action, Running
from stoic import backoff
from stoic.integrations.httpx import ResilientAsyncTransport, ResilientTransport
from stoic.outcome import Outcome, classify
from stoic.policies.breaker import CircuitBreaker, CountWindow

FAST = stoic.Retry(attempts=3, backoff=backoff.constant(0.01, max=5.0))


def client(**kwargs: object) -> httpx.Client:
    kwargs.setdefault("policy", FAST)
    return httpx.Client(transport=ResilientTransport(**kwargs), timeout=5.0)  # type: ignore[arg-type]


def aclient(**kwargs: object) -> httpx.AsyncClient:
    kwargs.setdefault("policy", FAST)
    return httpx.AsyncClient(
        transport=ResilientAsyncTransport(**kwargs), timeout=5.0  # type: ignore[arg-type]
    )


class TestRetryAfter:
    def test_503_with_retry_after_is_waited_out_then_succeeds(self, service: Running) -> None:
        busy = Action(503, {"Retry-After": "1"})
        service.backend.answer("/r", busy, busy, Action(200))
        with client() as c:
            response = c.get(f"{service.url}/r")
        assert response.status_code == 200
        hits = service.backend.seen("/r")
        assert len(hits) == 3
        assert hits[1].at - hits[0].at >= 0.95
        assert hits[2].at - hits[1].at >= 0.95

    def test_retry_after_as_an_http_date_is_honoured(self, service: Running) -> None:
        with stoic.testing.virtual_time() as vc:
            when = email.utils.formatdate(vc.time() + 4, usegmt=True)
            service.backend.answer("/d", Action(429, {"Retry-After": when}), Action(200))
            with client() as c:
                response = c.get(f"{service.url}/d")
        assert response.status_code == 200
        assert len(service.backend.seen("/d")) == 2
        assert 3.0 <= max(vc.sleeps) <= 4.0

    async def test_async_503_with_retry_after_is_waited_out(self, service: Running) -> None:
        service.backend.answer("/a", Action(503, {"Retry-After": "1"}), Action(200))
        async with aclient() as c:
            response = await c.get(f"{service.url}/a")
        assert response.status_code == 200
        hits = service.backend.seen("/a")
        assert hits[1].at - hits[0].at >= 0.95

    def test_retry_after_beyond_the_backoff_max_returns_the_response_at_once(
        self, service: Running
    ) -> None:
        service.backend.answer("/long", Action(503, {"Retry-After": "3600"}), Action(200))
        with client() as c:
            response = c.get(f"{service.url}/long")
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "3600"
        assert len(service.backend.seen("/long")) == 1


class TestLostReply:
    def test_post_without_a_key_is_not_retried_and_raises_the_unknown_failure(
        self, service: Running
    ) -> None:
        service.backend.answer("/pay", Action(drop=True), Action(200))
        with client(idempotency_keys=False) as c, pytest.raises(httpx.RemoteProtocolError) as info:
            c.post(f"{service.url}/pay", json={"amount": 10})
        assert classify(info.value).outcome is Outcome.UNKNOWN
        hits = service.backend.seen("/pay")
        assert len(hits) == 1
        assert "idempotency-key" not in hits[0].headers

    def test_post_with_a_generated_key_is_retried_with_the_same_key(
        self, service: Running
    ) -> None:
        service.backend.answer("/pay", Action(drop=True), Action(drop=True), Action(201))
        with client() as c:
            response = c.post(f"{service.url}/pay", json={"amount": 10})
        assert response.status_code == 201
        hits = service.backend.seen("/pay")
        assert len(hits) == 3
        keys = {h.headers.get("idempotency-key") for h in hits}
        assert len(keys) == 1 and None not in keys
        assert all(h.body == b'{"amount":10}' for h in hits)

    def test_two_logical_posts_get_two_keys(self, service: Running) -> None:
        with client() as c:
            c.post(f"{service.url}/k")
            c.post(f"{service.url}/k")
        keys = [h.headers["idempotency-key"] for h in service.backend.seen("/k")]
        assert len(keys) == 2 and keys[0] != keys[1]

    async def test_async_post_with_a_generated_key_is_retried_with_the_same_key(
        self, service: Running
    ) -> None:
        service.backend.answer("/pay", Action(drop=True), Action(201))
        async with aclient() as c:
            response = await c.post(f"{service.url}/pay", content=b"x")
        assert response.status_code == 201
        hits = service.backend.seen("/pay")
        assert len(hits) == 2
        assert hits[0].headers["idempotency-key"] == hits[1].headers["idempotency-key"]

    def test_a_streaming_body_is_sent_once_even_with_a_key(self, service: Running) -> None:
        service.backend.answer("/up", Action(503), Action(200))

        def chunks() -> object:
            yield b"part1"
            yield b"part2"

        with client() as c:
            response = c.post(f"{service.url}/up", content=chunks())  # type: ignore[arg-type]
        assert response.status_code == 503
        hits = service.backend.seen("/up")
        assert len(hits) == 1 and hits[0].body == b"part1part2"


class TestWhatIsRetried:
    def test_get_read_timeout_is_retried(self, service: Running) -> None:
        service.backend.answer("/slow", Action(delay=1.0), Action(200, body=b"fast"))
        with httpx.Client(transport=ResilientTransport(policy=FAST), timeout=0.25) as c:
            response = c.get(f"{service.url}/slow")
        assert response.content == b"fast"
        assert len(service.backend.seen("/slow")) == 2

    async def test_async_get_read_timeout_is_retried(self, service: Running) -> None:
        service.backend.answer("/slow", Action(delay=1.0), Action(200, body=b"fast"))
        transport = ResilientAsyncTransport(policy=FAST)
        async with httpx.AsyncClient(transport=transport, timeout=0.25) as c:
            response = await c.get(f"{service.url}/slow")
        assert response.content == b"fast"
        assert len(service.backend.seen("/slow")) == 2

    def test_404_is_not_retried(self, service: Running) -> None:
        service.backend.answer("/missing", Action(404, body=b"no such thing"))
        with client() as c:
            response = c.get(f"{service.url}/missing")
        assert response.status_code == 404
        assert response.content == b"no such thing"
        assert len(service.backend.seen("/missing")) == 1

    def test_500_on_post_is_not_retried(self, service: Running) -> None:
        service.backend.answer("/order", Action(500, body=b"boom"), Action(201))
        with client(idempotency_keys=False) as c:
            response = c.post(f"{service.url}/order", json={})
        assert response.status_code == 500
        assert response.content == b"boom"
        assert len(service.backend.seen("/order")) == 1

    def test_500_on_get_is_retried_and_the_last_response_is_returned(
        self, service: Running
    ) -> None:
        service.backend.answer(
            "/flaky", Action(500, body=b"first"), Action(500, body=b"second"),
            Action(502, body=b"last"),
        )
        with client() as c:
            response = c.get(f"{service.url}/flaky")
        assert response.status_code == 502
        assert response.content == b"last"
        assert response.request.url == f"{service.url}/flaky"
        assert len(service.backend.seen("/flaky")) == 3

    def test_connect_refused_is_retried_then_raised_as_httpx_raised_it(self) -> None:
        from support import free_port

        url = f"http://127.0.0.1:{free_port()}/"
        with client(per_host=False) as c, pytest.raises(httpx.ConnectError) as info:
            c.post(url, json={})
        assert "3 attempts" in "".join(getattr(info.value, "__notes__", []))

    def test_compressed_failure_response_is_still_decoded(self, service: Running) -> None:
        import gzip

        body = gzip.compress(b"overloaded")
        service.backend.answer("/gz", Action(503, {"Content-Encoding": "gzip"}, body))
        with client(policy=stoic.Retry(attempts=2, backoff=backoff.constant(0))) as c:
            response = c.get(f"{service.url}/gz")
        assert response.status_code == 503
        assert response.text == "overloaded"


class TestDeadlines:
    def test_timeout_shrinks_to_the_deadline_and_raises_deadline_exceeded(
        self, service: Running
    ) -> None:
        service.backend.answer("/slow", Action(delay=3.0))
        started = time.monotonic()
        with client() as c, stoic.deadline(0.3), pytest.raises(stoic.DeadlineExceeded) as info:
            c.get(f"{service.url}/slow")
        assert time.monotonic() - started < 1.5
        assert isinstance(info.value.__cause__, httpx.ReadTimeout)
        hits = service.backend.seen("/slow")
        assert len(hits) == 1
        assert 0 < int(hits[0].headers["x-request-timeout-ms"]) <= 300

    def test_no_attempt_starts_after_the_deadline(self, service: Running) -> None:
        with client() as c, stoic.deadline(0.0), pytest.raises(stoic.DeadlineExceeded):
            c.get(f"{service.url}/late")
        assert service.backend.seen("/late") == []

    async def test_async_timeout_shrinks_to_the_deadline(self, service: Running) -> None:
        service.backend.answer("/slow", Action(delay=3.0))
        started = time.monotonic()
        async with aclient() as c, stoic.deadline(0.3):
            with pytest.raises(stoic.DeadlineExceeded):
                await c.get(f"{service.url}/slow")
        assert time.monotonic() - started < 1.5

    def test_no_deadline_sends_no_deadline_header(self, service: Running) -> None:
        with client() as c:
            c.get(f"{service.url}/x")
        assert "x-request-timeout-ms" not in service.backend.seen("/x")[0].headers

    def test_deadline_header_name_is_configurable(self, service: Running) -> None:
        with client(deadline_header="Grpc-Timeout-Ms") as c, stoic.deadline(5):
            c.get(f"{service.url}/x")
        assert 4000 < int(service.backend.seen("/x")[0].headers["grpc-timeout-ms"]) <= 5000


class TestPropagation:
    def test_bound_request_id_goes_out_as_x_request_id(self, service: Running) -> None:
        with client() as c, stoic.context.bind(request_id="req-42"):
            c.get(f"{service.url}/x")
        assert service.backend.seen("/x")[0].headers["x-request-id"] == "req-42"

    def test_an_explicit_request_id_header_is_kept(self, service: Running) -> None:
        with client() as c, stoic.context.bind(request_id="bound"):
            c.get(f"{service.url}/x", headers={"X-Request-ID": "explicit"})
        assert service.backend.seen("/x")[0].headers["x-request-id"] == "explicit"

    def test_nothing_is_propagated_when_propagate_is_off(self, service: Running) -> None:
        with client(propagate=False) as c, stoic.context.bind(request_id="r"), stoic.deadline(5):
            c.get(f"{service.url}/x")
        headers = service.backend.seen("/x")[0].headers
        assert "x-request-id" not in headers and "x-request-timeout-ms" not in headers


class TestBreakers:
    def test_open_breaker_fails_fast_without_connecting_and_other_host_is_unaffected(
        self, service: Running, other_service: Running
    ) -> None:
        def small(name: str) -> CircuitBreaker:
            return CircuitBreaker(name, window=CountWindow(4), minimum_calls=4, open_for=600)

        service.backend.answer("/down", Action(503))
        policy = stoic.Retry(attempts=2, backoff=backoff.constant(0, max=5.0))
        with client(policy=policy, breaker=small) as c:
            for _ in range(2):
                assert c.get(f"{service.url}/down").status_code == 503
        name = f"http:127.0.0.1:{service.server.port}"
        assert stoic.breakers[name].state.value == "open"
        hits, connections = len(service.backend.hits), service.backend.connections

        with client(policy=policy, breaker=small) as fresh:  # new pool, same host breaker
            started = time.monotonic()
            with pytest.raises(stoic.CircuitOpenError):
                fresh.get(f"{service.url}/down")
            assert time.monotonic() - started < 0.5
            assert fresh.get(f"{other_service.url}/up").status_code == 200
        assert len(service.backend.hits) == hits
        assert service.backend.connections == connections
        assert len(other_service.backend.seen("/up")) == 1

    def test_404s_do_not_open_the_breaker(self, service: Running) -> None:
        def small(name: str) -> CircuitBreaker:
            return CircuitBreaker(name, window=CountWindow(2), minimum_calls=2, open_for=600)

        service.backend.answer("/gone", Action(404))
        with client(breaker=small) as c:
            for _ in range(4):
                assert c.get(f"{service.url}/gone").status_code == 404
            breaker = c._transport.host_policy(service.url)  # type: ignore[attr-defined]
        assert isinstance(breaker, CircuitBreaker)
        assert breaker.state.value == "closed"

    async def test_async_open_breaker_rejects_without_a_request(self, service: Running) -> None:
        async with aclient() as c:
            await c.get(f"{service.url}/x")
            breaker = c._transport.host_policy(service.url)  # type: ignore[attr-defined]
            breaker.force_open()
            with pytest.raises(stoic.CircuitOpenError):
                await c.get(f"{service.url}/x")
        assert len(service.backend.seen("/x")) == 1


class TestBulkheads:
    async def test_per_host_bulkhead_rejects_beyond_its_limit_without_a_request(
        self, service: Running, other_service: Running
    ) -> None:
        import asyncio

        service.backend.answer("/slow", Action(delay=0.5))
        async with aclient(bulkhead=lambda name: stoic.Bulkhead(1)) as c:
            first = asyncio.create_task(c.get(f"{service.url}/slow"))
            await asyncio.sleep(0.2)
            with pytest.raises(stoic.BulkheadFullError):
                await c.get(f"{service.url}/slow")
            other = await c.get(f"{other_service.url}/free")  # another host, another bulkhead
            assert (await first).status_code == 200
        assert other.status_code == 200
        assert len(service.backend.seen("/slow")) == 1


class TestConvenienceClient:
    def test_client_has_stoic_defaults_and_retries(self, service: Running) -> None:
        service.backend.answer("/c", Action(503, {"Retry-After": "0"}), Action(200))
        with stoic.http.Client(base_url=service.url) as c:
            response = c.get("/c")
            assert c.timeout.connect == 3.05 and c.timeout.read == 10.0
        assert response.status_code == 200
        assert len(service.backend.seen("/c")) == 2

    async def test_async_client_posts_with_a_generated_key(self, service: Running) -> None:
        async with stoic.http.AsyncClient(base_url=service.url) as c:
            response = await c.post("/c", json={"a": 1})
        assert response.status_code == 200
        assert service.backend.seen("/c")[0].headers["idempotency-key"]


class TestConfiguration:
    @pytest.mark.parametrize(
        ("kwargs", "name"),
        [
            ({"policy": "retry"}, "policy"),
            ({"inner": object()}, "inner"),
            ({"breaker": 3}, "breaker"),
            ({"deadline_header": "bad header"}, "deadline_header"),
        ],
    )
    def test_bad_configuration_names_the_parameter(self, kwargs: dict, name: str) -> None:
        with pytest.raises(ValueError, match=name):
            ResilientTransport(**kwargs)
