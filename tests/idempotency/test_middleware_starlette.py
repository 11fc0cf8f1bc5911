"""IdempotencyMiddleware around a real Starlette app on a real uvicorn server.

What a framework adds that a bare ASGI app does not: background tasks that run after the
response inside the same ASGI call, and routing (404 and 405 answered before any handler).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from stoic.idempotency import IdempotencyMiddleware, MemoryStore
from stoic.idempotency.asgi import NOT_EXECUTED
from support import free_port, wait_for_port

BACKGROUND_SECONDS = 3.0


@dataclass
class Shop:
    """Counts what the handlers really ran; the background task waits for ``gate``."""

    runs: dict[str, int] = field(default_factory=dict)
    gate: threading.Event = field(default_factory=threading.Event)
    background_done: threading.Event = field(default_factory=threading.Event)

    def ran(self, name: str) -> int:
        self.runs[name] = self.runs.get(name, 0) + 1
        return self.runs[name]

    async def after_response(self) -> None:
        # ~3 s of work after the response, unless the test ends it earlier
        await asyncio.to_thread(self.gate.wait, BACKGROUND_SECONDS)
        self.background_done.set()

    async def orders(self, request: Request) -> JSONResponse:
        n = self.ran("orders")
        return JSONResponse({"n": n}, status_code=201,
                            background=BackgroundTask(self.after_response))

    async def payments(self, request: Request) -> JSONResponse:
        """400 on a body that is not a payment (before doing anything), else it pays."""
        try:
            payment = json.loads(await request.body())
            amount = int(payment["amount"])
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "amount is required"}, status_code=400)
        n = self.ran("payments")
        return JSONResponse({"n": n, "amount": amount}, status_code=201)

    async def refund(self, request: Request) -> JSONResponse:
        """The handler's own 404: it ran, looked the payment up and found none."""
        self.ran("refund")
        return JSONResponse({"error": "no such payment"}, status_code=404)

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/orders", self.orders, methods=["POST"]),
            Route("/payments", self.payments, methods=["POST"]),
            Route("/payments/{id}/refund", self.refund, methods=["POST"]),
            Route("/archive", self.refund, methods=["PUT"]),
        ])


@dataclass
class Running:
    url: str
    shop: Shop


@pytest.fixture(scope="module")
def running() -> Iterator[Running]:
    shop = Shop()
    app = IdempotencyMiddleware(shop.app(), MemoryStore())
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for_port(port)
    yield Running(f"http://127.0.0.1:{port}", shop)
    shop.gate.set()
    server.should_exit = True
    thread.join(10)


def _key() -> dict[str, str]:
    return {"Idempotency-Key": uuid.uuid4().hex}


def test_response_is_not_held_for_background_tasks_and_a_retry_gets_the_replay(
    running: Running,
) -> None:
    shop = running.shop
    shop.gate.clear()
    shop.background_done.clear()
    key = _key()
    with httpx.Client(base_url=running.url, timeout=30) as client:
        started = time.monotonic()
        first = client.post("/orders", content=b'{"sku": 1}', headers=key)
        took = time.monotonic() - started
        still_running = not shop.background_done.is_set()
        retry = client.post("/orders", content=b'{"sku": 1}', headers=key)
        retry_while_running = not shop.background_done.is_set()
    shop.gate.set()
    assert shop.background_done.wait(10)
    print(f"keyed response with a {BACKGROUND_SECONDS} s background task took {took:.3f} s")
    assert first.status_code == 201
    assert still_running, "the response arrived while the background task was still running"
    assert took < BACKGROUND_SECONDS
    assert retry.status_code == 201, "the retry after the response is replayed, never a 409"
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.json() == first.json() == {"n": shop.runs["orders"]}
    assert retry_while_running, "replayed while the first request's background task ran"


async def test_background_task_failure_after_the_response_keeps_the_stored_reply() -> None:
    async def boom() -> None:
        raise RuntimeError("background work failed")

    runs: list[int] = []

    async def orders(request: Request) -> JSONResponse:
        runs.append(1)
        return JSONResponse({"n": len(runs)}, status_code=201, background=BackgroundTask(boom))

    store = MemoryStore()
    app = IdempotencyMiddleware(Starlette(routes=[Route("/orders", orders, methods=["POST"])]),
                                store)

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
        first = await client.post("/orders", headers={"Idempotency-Key": "bg"})
        second = await client.post("/orders", headers={"Idempotency-Key": "bg"})
    assert (first.status_code, second.status_code) == (201, 201)
    assert second.headers["idempotent-replayed"] == "true"
    assert runs == [1], "a failure after the response does not release the stored key"


def test_invalid_body_is_400_not_stored_and_the_corrected_retry_runs(running: Running) -> None:
    key = _key()
    with httpx.Client(base_url=running.url, timeout=30) as client:
        invalid = client.post("/payments", content=b'{"amount": "lots"}', headers=key)
        corrected = client.post("/payments", content=b'{"amount": 12}', headers=key)
        again = client.post("/payments", content=b'{"amount": 12}', headers=key)
    assert invalid.status_code == 400
    assert corrected.status_code == 201, "the key was given back: not 422 'key reused'"
    assert "idempotent-replayed" not in corrected.headers
    assert corrected.json()["amount"] == 12
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == corrected.json()


def test_routing_404_and_405_release_the_key_but_a_handlers_404_is_stored(
    running: Running,
) -> None:
    shop = running.shop
    before = shop.runs.get("refund", 0)
    no_route, wrong_method, handler = _key(), _key(), _key()
    with httpx.Client(base_url=running.url, timeout=30) as client:
        lost = client.post("/no-such-route", headers=no_route)
        found = client.post("/payments", content=b'{"amount": 1}', headers=no_route)
        refused = client.post("/archive", headers=wrong_method)
        allowed = client.post("/payments", content=b'{"amount": 2}', headers=wrong_method)
        missing = [client.post("/payments/7/refund", headers=handler) for _ in range(2)]
    assert (lost.status_code, found.status_code) == (404, 201)
    assert (refused.status_code, allowed.status_code) == (405, 201)
    assert [r.status_code for r in missing] == [404, 404]
    assert missing[1].headers["idempotent-replayed"] == "true", "the handler ran: stored"
    assert shop.runs["refund"] == before + 1


async def test_which_statuses_mean_never_executed_is_configurable() -> None:
    async def app(scope: object, receive: object, send: object) -> None:
        response = JSONResponse({"said": "no"}, status_code=400)
        await response(scope, receive, send)  # type: ignore[arg-type]

    async def twice(middleware: IdempotencyMiddleware) -> str | None:
        transport = httpx.ASGITransport(app=middleware)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
            await client.post("/", headers={"Idempotency-Key": "c"})
            second = await client.post("/", headers={"Idempotency-Key": "c"})
        return second.headers.get("idempotent-replayed")

    assert 400 in NOT_EXECUTED
    assert await twice(IdempotencyMiddleware(app, MemoryStore())) is None
    stored_400 = NOT_EXECUTED - {400}
    assert await twice(IdempotencyMiddleware(app, MemoryStore(), not_executed=stored_400)) == "true"
    assert await twice(IdempotencyMiddleware(app, MemoryStore(),
                                             store_status=lambda status: True)) == "true"


@pytest.mark.parametrize("bad", [["400"], [99], "400", 400])
def test_not_executed_must_be_statuses(bad: object) -> None:
    with pytest.raises((TypeError, ValueError), match="not_executed"):
        IdempotencyMiddleware(Shop().app(), MemoryStore(), not_executed=bad)  # type: ignore[arg-type]
