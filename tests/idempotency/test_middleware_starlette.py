"""IdempotencyMiddleware around a real Starlette app on a real uvicorn server.

What a framework adds that a bare ASGI app does not: background tasks that run after the
response inside the same ASGI call, and routing (404 and 405 answered before any handler).
"""

from __future__ import annotations

import asyncio
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

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/orders", self.orders, methods=["POST"])])


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
