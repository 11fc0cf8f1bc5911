"""ResilientMiddleware on a real aiohttp ClientSession against a real uvicorn server on loopback."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

import stoic
from integrations.servers import Action, Running
from stoic import backoff
from stoic.integrations.aiohttp import ResilientMiddleware
from stoic.outcome import Outcome, classify
from stoic.policies.breaker import CircuitBreaker, CountWindow

FAST = stoic.Retry(max_attempts=3, backoff=backoff.constant(0.01, max=5.0))


def session(**kwargs: object) -> aiohttp.ClientSession:
    kwargs.setdefault("policy", FAST)
    return aiohttp.ClientSession(
        middlewares=(ResilientMiddleware(**kwargs),),  # type: ignore[arg-type]
        timeout=aiohttp.ClientTimeout(total=5.0),
    )


class TestWhatIsRetried:
    async def test_transient_503_is_retried_until_it_succeeds(self, service: Running) -> None:
        service.backend.answer("/t", Action(503), Action(503), Action(200, body=b"done"))
        async with session() as s, s.get(f"{service.url}/t") as response:
            assert response.status == 200
            assert await response.read() == b"done"
        assert len(service.backend.seen("/t")) == 3

    async def test_404_is_not_retried_and_its_response_is_returned(
        self, service: Running
    ) -> None:
        service.backend.answer("/missing", Action(404, body=b"no such thing"))
        async with session() as s, s.get(f"{service.url}/missing") as response:
            assert response.status == 404
            assert await response.read() == b"no such thing"
        assert len(service.backend.seen("/missing")) == 1

    async def test_exhausted_retries_return_the_last_failing_response(
        self, service: Running
    ) -> None:
        service.backend.answer("/f", Action(500, body=b"a"), Action(502, body=b"b"),
                               Action(503, body=b"last"))
        async with session() as s, s.get(f"{service.url}/f") as response:
            assert response.status == 503
            assert await response.text() == "last"
        assert len(service.backend.seen("/f")) == 3

    async def test_retry_after_is_waited_out(self, service: Running) -> None:
        service.backend.answer("/r", Action(429, {"Retry-After": "1"}), Action(200))
        async with session() as s, s.get(f"{service.url}/r") as response:
            assert response.status == 200
        hits = service.backend.seen("/r")
        assert hits[1].at - hits[0].at >= 0.95

    async def test_get_read_timeout_is_retried(self, service: Running) -> None:
        service.backend.answer("/slow", Action(delay=1.0), Action(200, body=b"fast"))
        async with aiohttp.ClientSession(
            middlewares=(ResilientMiddleware(policy=FAST),),
            timeout=aiohttp.ClientTimeout(sock_read=0.25),
        ) as s, s.get(f"{service.url}/slow") as response:
            assert await response.read() == b"fast"
        assert len(service.backend.seen("/slow")) == 2


class TestLostReply:
    async def test_post_without_a_key_is_not_retried(self, service: Running) -> None:
        service.backend.answer("/pay", Action(drop=True), Action(200))
        async with session(idempotency_keys=False) as s:
            with pytest.raises(aiohttp.ServerDisconnectedError) as info:
                await s.post(f"{service.url}/pay", json={"amount": 10})
        assert classify(info.value).outcome is Outcome.UNKNOWN
        hits = service.backend.seen("/pay")
        assert len(hits) == 1
        assert "idempotency-key" not in hits[0].headers

    async def test_post_with_a_generated_key_is_retried_with_the_same_key(
        self, service: Running
    ) -> None:
        service.backend.answer("/pay", Action(drop=True), Action(drop=True), Action(201))
        async with session() as s, s.post(f"{service.url}/pay", json={"amount": 10}) as response:
            assert response.status == 201
        hits = service.backend.seen("/pay")
        assert len(hits) == 3
        keys = {h.headers.get("idempotency-key") for h in hits}
        assert len(keys) == 1 and None not in keys
        assert all(h.body == b'{"amount": 10}' for h in hits)

    async def test_a_callers_own_key_is_kept_on_every_attempt(self, service: Running) -> None:
        service.backend.answer("/pay", Action(drop=True), Action(201))
        async with session(idempotency_keys=False) as s, s.post(
            f"{service.url}/pay", data=b"x", headers={"Idempotency-Key": "order-7"}
        ) as response:
            assert response.status == 201
        assert [h.headers["idempotency-key"] for h in service.backend.seen("/pay")] == [
            "order-7", "order-7"
        ]

    async def test_a_streaming_body_is_sent_once(self, service: Running) -> None:
        service.backend.answer("/up", Action(503), Action(200))

        async def chunks():  # type: ignore[no-untyped-def]
            yield b"part1"
            yield b"part2"

        async with session() as s, s.post(f"{service.url}/up", data=chunks()) as response:
            assert response.status == 503
        hits = service.backend.seen("/up")
        assert len(hits) == 1 and hits[0].body == b"part1part2"


class TestDeadlines:
    async def test_deadline_is_sent_and_an_attempt_ends_with_it(self, service: Running) -> None:
        service.backend.answer("/slow", Action(delay=3.0))
        started = time.monotonic()
        async with session() as s, stoic.deadline(0.3):
            with pytest.raises(stoic.DeadlineExceeded):
                await s.get(f"{service.url}/slow")
        assert time.monotonic() - started < 1.5
        hits = service.backend.seen("/slow")
        assert len(hits) == 1
        assert 0 < int(hits[0].headers["x-request-timeout-ms"]) <= 300

    async def test_no_attempt_starts_after_the_deadline(self, service: Running) -> None:
        async with session() as s, stoic.deadline(0.0):
            with pytest.raises(stoic.DeadlineExceeded):
                await s.get(f"{service.url}/late")
        assert service.backend.seen("/late") == []

    async def test_request_id_is_propagated(self, service: Running) -> None:
        async with session() as s, stoic.context.bind(request_id="req-9"), s.get(f"{service.url}/x"):
            pass
        assert service.backend.seen("/x")[0].headers["x-request-id"] == "req-9"


class TestBreakers:
    async def test_open_breaker_makes_no_connection(self, service: Running) -> None:
        def small(name: str) -> CircuitBreaker:
            return CircuitBreaker(name, window=CountWindow(4), minimum_calls=4, open_for=600)

        service.backend.answer("/down", Action(503))
        policy = stoic.Retry(max_attempts=2, backoff=backoff.constant(0, max=5.0))
        async with session(policy=policy, breaker=small) as s:
            for _ in range(2):
                async with s.get(f"{service.url}/down") as response:
                    assert response.status == 503
        assert stoic.breakers[f"http:127.0.0.1:{service.server.port}"].state.value == "open"
        hits, connections = len(service.backend.hits), service.backend.connections
        async with session(policy=policy, breaker=small) as fresh:
            with pytest.raises(stoic.CircuitOpenError):
                await fresh.get(f"{service.url}/down")
        assert len(service.backend.hits) == hits
        assert service.backend.connections == connections

    async def test_the_breaker_is_shared_with_the_httpx_transport(self, service: Running) -> None:
        import httpx

        from stoic.integrations.httpx import ResilientAsyncTransport

        transport = ResilientAsyncTransport(policy=FAST)
        async with httpx.AsyncClient(transport=transport) as c:
            await c.get(f"{service.url}/x")
        middleware = ResilientMiddleware(policy=FAST)
        assert middleware.host_policy(service.url) is transport.host_policy(service.url)

    async def test_bulkhead_rejects_beyond_its_limit(self, service: Running) -> None:
        service.backend.answer("/slow", Action(delay=0.5))
        async with session(bulkhead=lambda name: stoic.Bulkhead(1)) as s:
            first = asyncio.create_task(s.get(f"{service.url}/slow"))
            await asyncio.sleep(0.2)
            with pytest.raises(stoic.BulkheadFullError):
                await s.get(f"{service.url}/slow")
            (await first).release()
        assert len(service.backend.seen("/slow")) == 1


class TestConfiguration:
    @pytest.mark.parametrize(
        ("kwargs", "name"),
        [({"policy": "retry"}, "policy"), ({"breaker": 3}, "breaker"),
         ({"request_id_header": ""}, "request_id_header")],
    )
    def test_bad_configuration_names_the_parameter(self, kwargs: dict, name: str) -> None:
        with pytest.raises(ValueError, match=name):
            ResilientMiddleware(**kwargs)


class TestDownstream:
    async def test_the_deadline_is_honoured_by_a_stoic_service_downstream(self) -> None:
        from integrations.servers import Server
        from stoic.integrations.asgi import StoicMiddleware

        seen: list[float | None] = []

        async def app(scope: dict, receive: object, send: object) -> None:
            seen.append(stoic.remaining())
            await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
            await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]

        server = Server(StoicMiddleware(app, service="down", version="1")).start()
        try:
            async with session() as s, stoic.deadline(1.5), s.get(f"{server.url}/x") as response:
                assert response.status == 200
        finally:
            server.stop()
        assert seen and seen[0] is not None and 0 < seen[0] <= 1.5
