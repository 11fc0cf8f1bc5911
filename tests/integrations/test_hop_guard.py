"""The hop guard: retries do not multiply down a chain of stoic services.

Four real uvicorn services in a chain, client -> 1 -> 2 -> 3 -> 4, each hop calling the next
with stoic's HTTP client configured for 3 attempts. The bottom one fails (503). Without the
guard every hop retries what the hop above already retries: 3^4 = 81 requests reach the
bottom. With it, only the edge retries: one hop's budget of 3. With ``hop_guard="deepest"``
only the hop next to the bottom retries (3) and every hop above passes its answer up: each
receives one request.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import stoic
import stoic.http
from integrations.servers import Server
from stoic.integrations.asgi import StoicMiddleware
from support import read_body


def _retry() -> stoic.Retry:
    return stoic.Retry(max_attempts=3, backoff=stoic.backoff.constant(0.001))


class Bottom:
    """Always overloaded; counts what reaches it and the headers it came with."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: list[dict[str, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await read_body(receive)
        with self.lock:
            self.received.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await send({"type": "http.response.start", "status": 503, "headers": []})
        await send({"type": "http.response.body", "body": b"overloaded"})


class Hop:
    """A middle service: calls ``below`` with stoic's client (3 attempts), answers its status."""

    def __init__(self, below: str) -> None:
        self.below = below
        self.client = stoic.http.AsyncClient(policy=_retry(), per_host=False)
        self.received = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await read_body(receive)
        self.received += 1
        response = await self.client.get(f"{self.below}/work")
        await send({"type": "http.response.start", "status": response.status_code, "headers": []})
        await send({"type": "http.response.body", "body": response.content})


def _chain(hop_guard: bool | str, hops: list[Hop] | None = None) -> Iterator[tuple[str, Bottom]]:
    bottom = Bottom()
    servers = [Server(bottom).start()]
    for index in range(3):
        middle = Hop(servers[-1].url)
        if hops is not None:
            hops.insert(0, middle)  # top first
        app = StoicMiddleware(middle, service=f"hop{3 - index}", version="1", hop_guard=hop_guard)
        servers.append(Server(app).start())
    try:
        yield servers[-1].url, bottom
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def guarded_chain() -> Iterator[tuple[str, Bottom]]:
    yield from _chain(hop_guard=True)


@pytest.fixture
def unguarded_chain() -> Iterator[tuple[str, Bottom]]:
    yield from _chain(hop_guard=False)


def _call_edge(url: str) -> int:
    with stoic.http.Client(policy=_retry(), per_host=False) as client:
        return client.get(f"{url}/work").status_code


def test_with_the_guard_the_bottom_of_a_4_hop_chain_sees_one_hops_budget(
    guarded_chain: tuple[str, Bottom],
) -> None:
    url, bottom = guarded_chain
    assert _call_edge(url) == 503
    budget = 3  # one hop's attempts
    assert len(bottom.received) <= 1.2 * budget
    assert len(bottom.received) == budget  # the edge's three attempts, each passed down once
    assert [h["x-stoic-retry-below"] for h in bottom.received] == ["0"] * budget
    assert [h["x-stoic-attempt"] for h in bottom.received] == ["1"] * budget


def test_without_the_guard_retries_multiply_at_every_hop(
    unguarded_chain: tuple[str, Bottom],
) -> None:
    url, bottom = unguarded_chain
    assert _call_edge(url) == 503
    assert len(bottom.received) == 3**4


def test_a_client_not_serving_a_retried_request_retries_and_says_so_below(
    guarded_chain: tuple[str, Bottom],
) -> None:
    url, bottom = guarded_chain
    with stoic.http.Client(policy=stoic.Retry(max_attempts=1), per_host=False) as client:
        assert client.get(f"{url}/work").status_code == 503
    # the edge did not retry, so the first hop below it did (3), and told the rest not to
    assert len(bottom.received) == 3


def test_retrying_at_the_deepest_hop_only_the_hop_next_to_the_failure_retries() -> None:
    """Every service ``hop_guard="deepest"``; the edge is a plain client sending no header."""
    hops: list[Hop] = []
    for url, bottom in _chain("deepest", hops):
        with httpx.Client() as plain:
            response = plain.get(f"{url}/work")
        assert response.status_code == 503
        assert response.headers["x-stoic-retried"] == "1"  # the answer says: retried below
        assert [h.received for h in hops] == [1, 1, 1]  # no hop above the deepest retried
        assert len(bottom.received) == 3  # the deepest hop's own three attempts
        assert [h["x-stoic-attempt"] for h in bottom.received] == ["1", "2", "3"]
        assert [h["x-stoic-retry-below"] for h in bottom.received] == ["deepest"] * 3


def test_an_edge_client_can_ask_for_retries_at_the_deepest_hop_only() -> None:
    """Services with the default guard follow the mode their caller's request carries."""
    hops: list[Hop] = []
    for url, bottom in _chain(True, hops):
        with stoic.context.hop(deepest=True):
            assert _call_edge(url) == 503  # the edge client, 3 attempts, makes one
        assert [h.received for h in hops] == [1, 1, 1]
        assert len(bottom.received) == 3


class Marked(Bottom):
    """Overloaded, and says the failure was already retried below it."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await read_body(receive)
        with self.lock:
            self.received.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"x-stoic-retried", b"1")]})
        await send({"type": "http.response.body", "body": b"overloaded"})


def _get_with(library: str, url: str) -> int:
    if library == "httpx":
        with stoic.http.Client(policy=_retry(), per_host=False) as client:
            return client.get(url).status_code
    if library == "requests":
        requests = pytest.importorskip("requests")
        from stoic.integrations.requests import ResilientAdapter

        with requests.Session() as session:
            session.mount("http://", ResilientAdapter(policy=_retry(), per_host=False))
            return int(session.get(url, timeout=5).status_code)
    aiohttp = pytest.importorskip("aiohttp")
    from stoic.integrations.aiohttp import ResilientMiddleware

    async def get() -> int:
        middleware = ResilientMiddleware(policy=_retry(), per_host=False)
        async with (
            aiohttp.ClientSession(middlewares=(middleware,)) as session,
            session.get(url) as response,
        ):
            return int(response.status)

    return asyncio.run(get())


@pytest.mark.parametrize("library", ["httpx", "requests", "aiohttp"])
def test_every_stoic_client_passes_up_a_failure_retried_below_without_retrying(
    library: str,
) -> None:
    marked = Marked()
    server = Server(marked).start()
    try:
        with stoic.context.hop(deepest=True) as serving:
            assert _get_with(library, f"{server.url}/work") == 503
        assert len(marked.received) == 1  # 3 attempts configured; the answer said: final
        assert serving.retried  # and the request being served would say so in turn
        assert marked.received[0]["x-stoic-retry-below"] == "deepest"
    finally:
        server.stop()


def test_bad_hop_guard_raises_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match="hop_guard"):
        StoicMiddleware(Bottom(), service="s", version="1", hop_guard="bottom")


def test_context_reports_the_callers_retry_signal() -> None:
    assert stoic.context.retries_allowed() is True
    assert stoic.context.hop_attempt() is None
    with stoic.context.hop(attempt=2, retry_below=False):
        assert stoic.context.retries_allowed() is False
        assert stoic.context.hop_attempt() == 2
    assert stoic.context.retries_allowed() is True
