"""A deadline travels client -> service A (FastAPI + StoicMiddleware) -> service B, for real."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI

import stoic
import stoic.http
from integrations.servers import Action, Running, Server
from stoic.integrations.asgi import StoicMiddleware


class ServiceA:
    """Spends ``spend`` seconds, then calls B with stoic's client; records what happened."""

    def __init__(self, b_url: str) -> None:
        self.b_url = b_url
        self.done = threading.Event()
        self.outcome = ""
        self.entry_remaining: float | None = None
        app = FastAPI()
        app.add_middleware(StoicMiddleware, service="a", version="1")

        @app.get("/work")
        async def work(spend: float = 0.0) -> Any:
            self.done.clear()
            self.entry_remaining = stoic.remaining()
            try:
                await asyncio.sleep(spend)
                async with stoic.http.AsyncClient() as client:
                    response = await client.get(f"{self.b_url}/b")
                self.outcome = f"B answered {response.status_code}"
                return {"b": response.status_code}
            except Exception as exc:
                self.outcome = type(exc).__name__
                raise
            finally:
                self.done.set()

        self.app = app


@pytest.fixture(scope="module")
def chain(_service_b: Running) -> Iterator[tuple[ServiceA, str, Running]]:
    a = ServiceA(_service_b.url)
    server = Server(a.app).start()
    yield a, server.url, _service_b
    server.stop()


def test_b_sees_less_than_the_client_deadline_in_its_header(chain: Any) -> None:
    a, a_url, b = chain
    b.backend.reset()
    with stoic.http.Client() as client, stoic.deadline(0.3):
        response = client.get(f"{a_url}/work")
    assert response.json() == {"b": 200}
    (hit,) = b.backend.seen("/b")
    assert a.entry_remaining is not None and 0 < a.entry_remaining < 0.3
    assert 0 < int(hit.headers["x-request-timeout-ms"]) < 300


def test_when_a_spends_the_deadline_b_is_never_called_and_the_client_fails_in_time(
    chain: Any,
) -> None:
    a, a_url, b = chain
    b.backend.reset()
    b.backend.answer("/b", Action(delay=5.0))  # B's own slowness must not matter
    started = time.monotonic()
    with stoic.http.Client() as client, stoic.deadline(0.3), pytest.raises(stoic.DeadlineExceeded):
        client.get(f"{a_url}/work", params={"spend": 1.0})
    elapsed = time.monotonic() - started
    assert elapsed < 0.9  # ~0.3 s: the client's own timeout shrank to its deadline
    assert a.done.wait(5.0)
    assert a.outcome == "DeadlineExceeded"
    assert b.backend.seen("/b") == []
    assert b.backend.connections == 0
