"""IdempotencyMiddleware against the draft's cases, with a real uvicorn server and httpx client."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn

import stoic
from idempotency.backends import Backend
from stoic.idempotency import IdempotencyMiddleware, MemoryStore, Store
from stoic.idempotency.events import IdempotencyRecordCorrupted
from stoic.idempotency.fingerprint import fingerprint_request
from stoic.idempotency.store import store_key
from support import free_port, read_body, wait_for_port


@dataclass
class Shop:
    """A tiny ASGI app that counts what it really did."""

    runs: dict[str, int] = field(default_factory=dict)
    loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.loop = asyncio.get_running_loop()
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope["path"]
        body = await read_body(receive)
        self.runs[path] = self.runs.get(path, 0) + 1
        n = self.runs[path]
        status, headers, payload = 201, [(b"x-order", str(n).encode())], {"n": n}
        if path == "/slow":
            await asyncio.sleep(0.5)
        elif path == "/fail":
            status = 503
        elif path == "/missing":
            status = 404
        elif path == "/declined":
            status = 402
        elif path == "/big":
            payload = {"blob": "x" * 4096}
        elif path == "/boom":
            if n == 1:
                raise RuntimeError("the app crashed")
        elif path == "/key":
            payload = {"key": stoic.context.idempotency_key(),
                       "extended": await stoic.idempotency.aextend()}
        payload["echo"] = body.decode()
        data = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), *headers]})
        await send({"type": "http.response.body", "body": data})


@dataclass
class Server:
    url: str
    shop: Shop
    middleware: IdempotencyMiddleware

    def use(self, store: Store) -> None:
        self.middleware.store = store
        self.shop.runs.clear()

    def close_store(self, store: Store) -> None:
        if self.shop.loop is not None:
            asyncio.run_coroutine_threadsafe(store.aclose(), self.shop.loop).result(10)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    shop = Shop()
    middleware = IdempotencyMiddleware(
        shop, MemoryStore(), scope=lambda s: dict(s["headers"]).get(b"x-user", b"").decode(),
        max_body=1024,
    )
    port = free_port()
    config = uvicorn.Config(middleware, host="127.0.0.1", port=port, log_level="error",
                            lifespan="on")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    wait_for_port(port)
    yield Server(f"http://127.0.0.1:{port}", shop, middleware)
    uv.should_exit = True
    thread.join(10)


@pytest.fixture
def shop(server: Server) -> Server:
    server.use(MemoryStore())
    return server


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status
    assert problem["title"]
    return problem  # type: ignore[no-any-return]


def test_completed_request_is_replayed_with_status_headers_body_and_replayed_header(
    shop: Server,
) -> None:
    with httpx.Client(base_url=shop.url) as client:
        first = client.post("/orders", content=b'{"sku": 1}', headers={"Idempotency-Key": "a1"})
        again = client.post("/orders", content=b'{"sku": 1}',
                            headers={"Idempotency-Key": '"a1"'})
    assert first.status_code == 201
    assert "idempotent-replayed" not in first.headers
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["x-order"] == first.headers["x-order"] == "1"
    assert again.json() == first.json() == {"n": 1, "echo": '{"sku": 1}'}
    assert shop.shop.runs["/orders"] == 1


def test_same_key_with_a_different_request_is_422(shop: Server) -> None:
    with httpx.Client(base_url=shop.url) as client:
        client.post("/orders", content=b"one", headers={"Idempotency-Key": "k"})
        other_body = client.post("/orders", content=b"two", headers={"Idempotency-Key": "k"})
        other_path = client.post("/key", content=b"one", headers={"Idempotency-Key": "k"})
    _problem(other_body, 422)
    _problem(other_path, 422)
    assert shop.shop.runs == {"/orders": 1}


async def test_concurrent_duplicates_get_409_then_the_replay(shop: Server) -> None:
    async with httpx.AsyncClient(base_url=shop.url, timeout=10) as client:
        responses = await asyncio.gather(*(
            client.post("/slow", content=b"x", headers={"Idempotency-Key": "dup"})
            for _ in range(6)
        ))
        after = await client.post("/slow", content=b"x", headers={"Idempotency-Key": "dup"})
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201, 409, 409, 409, 409, 409]
    for conflict in (r for r in responses if r.status_code == 409):
        _problem(conflict, 409)
        assert int(conflict.headers["retry-after"]) >= 1
    assert after.status_code == 201
    assert after.headers["idempotent-replayed"] == "true"
    assert shop.shop.runs["/slow"] == 1


def test_missing_key_is_400_when_required_and_passes_otherwise(shop: Server) -> None:
    with httpx.Client(base_url=shop.url) as client:
        optional = [client.post("/orders", content=b"x") for _ in range(2)]
        shop.middleware.required = True
        try:
            missing = client.post("/orders", content=b"x")
            get = client.get("/orders")
        finally:
            shop.middleware.required = False
    assert [r.status_code for r in optional] == [201, 201]
    assert "Idempotency-Key" in _problem(missing, 400)["detail"]
    assert get.status_code == 201, "GET is not in methods: never needs a key"
    assert shop.shop.runs["/orders"] == 3


def test_invalid_keys_are_400(shop: Server) -> None:
    with httpx.Client(base_url=shop.url) as client:
        too_long = client.post("/orders", headers={"Idempotency-Key": "k" * 256})
        empty = client.post("/orders", headers={"Idempotency-Key": '""'})
        fits = client.post("/orders", headers={"Idempotency-Key": "k" * 255})
    _problem(too_long, 400)
    _problem(empty, 400)
    assert fits.status_code == 201


def test_5xx_and_never_executed_statuses_are_not_stored_but_other_4xx_are(shop: Server) -> None:
    with httpx.Client(base_url=shop.url) as client:
        failed = [client.post("/fail", headers={"Idempotency-Key": "f"}) for _ in range(2)]
        missing = [client.post("/missing", headers={"Idempotency-Key": "m"}) for _ in range(2)]
        declined = [client.post("/declined", headers={"Idempotency-Key": "d"}) for _ in range(2)]
    assert [r.status_code for r in failed] == [503, 503]
    assert "idempotent-replayed" not in failed[1].headers
    assert shop.shop.runs["/fail"] == 2
    assert [r.status_code for r in missing] == [404, 404]
    assert "idempotent-replayed" not in missing[1].headers, "no route matched: never ran"
    assert shop.shop.runs["/missing"] == 2
    assert [r.status_code for r in declined] == [402, 402]
    assert declined[1].headers["idempotent-replayed"] == "true", "it ran: stored"
    assert shop.shop.runs["/declined"] == 1


def test_response_over_the_size_limit_is_sent_but_not_stored(shop: Server) -> None:
    with httpx.Client(base_url=shop.url) as client:
        big = [client.post("/big", headers={"Idempotency-Key": "b"}) for _ in range(2)]
    assert [len(r.json()["blob"]) for r in big] == [4096, 4096]
    assert "idempotent-replayed" not in big[1].headers
    assert shop.shop.runs["/big"] == 2


def test_scope_keeps_principals_apart(shop: Server) -> None:
    with httpx.Client(base_url=shop.url) as client:
        alice = client.post("/orders", headers={"Idempotency-Key": "k", "x-user": "alice"})
        bob = client.post("/orders", headers={"Idempotency-Key": "k", "x-user": "bob"})
        alice_again = client.post("/orders", headers={"Idempotency-Key": "k", "x-user": "alice"})
    assert alice.json()["n"] == 1
    assert bob.json()["n"] == 2, "bob's request ran; he never sees alice's reply"
    assert alice_again.json()["n"] == 1
    assert alice_again.headers["idempotent-replayed"] == "true"


def test_unreadable_stored_response_is_reported_and_the_request_runs_again(shop: Server) -> None:
    store = MemoryStore()
    shop.use(store)
    stored_as = store_key("http", "", "bad")
    claim = store.claim(stored_as, fingerprint_request("POST", "/orders", "", b"x"), lease=5, ttl=60)
    store.complete(stored_as, claim.token or "", "{not json", ttl=60)
    seen: list[stoic.events.Event] = []
    stoic.events.subscribe(seen.append)
    with httpx.Client(base_url=shop.url) as client:
        first = client.post("/orders", content=b"x", headers={"Idempotency-Key": "bad"})
        again = client.post("/orders", content=b"x", headers={"Idempotency-Key": "bad"})
    assert first.status_code == 201
    assert "idempotent-replayed" not in first.headers, "ran again, not replayed garbage"
    assert again.headers["idempotent-replayed"] == "true", "its new response is stored"
    assert shop.shop.runs["/orders"] == 1
    assert [e.key for e in seen if isinstance(e, IdempotencyRecordCorrupted)] == ["bad"]


def test_app_exception_releases_the_key(shop: Server) -> None:
    with httpx.Client(base_url=shop.url) as client:
        crashed = client.post("/boom", headers={"Idempotency-Key": "x"})
        retried = client.post("/boom", headers={"Idempotency-Key": "x"})
    assert crashed.status_code == 500
    assert retried.status_code == 201
    assert shop.shop.runs["/boom"] == 2


def test_key_is_in_context_and_the_app_can_extend_its_lease(shop: Server) -> None:
    with httpx.Client(base_url=shop.url) as client:
        response = client.post("/key", headers={"Idempotency-Key": "ctx-1"})
    assert response.json()["key"] == "ctx-1"
    assert response.json()["extended"] is True, "a long handler can keep its lease"


async def test_concurrent_duplicates_on_every_store(server: Server, backend: Backend) -> None:
    store = backend.make()
    server.use(store)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            responses = await asyncio.gather(*(
                client.post("/slow", content=b"x", headers={"Idempotency-Key": "dup"})
                for _ in range(4)
            ))
            after = await client.post("/slow", content=b"x", headers={"Idempotency-Key": "dup"})
        assert sorted(r.status_code for r in responses) == [201, 409, 409, 409]
        assert after.headers["idempotent-replayed"] == "true"
        assert server.shop.runs["/slow"] == 1
    finally:
        server.close_store(store)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"ttl": 0}, "ttl"), ({"max_body": -1}, "max_body"), ({"methods": ()}, "methods"),
     ({"lease": float("inf")}, "lease"), ({"header": "Idem Key"}, "header")],
)
def test_bad_configuration_is_refused_naming_the_parameter(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        IdempotencyMiddleware(Shop(), MemoryStore(), **kwargs)


def test_methods_given_as_one_string_is_refused() -> None:
    with pytest.raises(TypeError, match="methods"):
        IdempotencyMiddleware(Shop(), MemoryStore(), methods="POST")


async def test_events_are_named_by_the_middlewares_namespace() -> None:
    seen: list[stoic.events.Event] = []
    stoic.events.subscribe(seen.append)
    middleware = IdempotencyMiddleware(Shop(), MemoryStore(), namespace="shop")

    async def post(body: bytes) -> int:
        sent: list[dict[str, Any]] = []
        pending = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            return pending.pop() if pending else {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/orders", "query_string": b"",
                 "headers": [(b"idempotency-key", b"k")]}
        await middleware(scope, receive, send)
        return int(sent[0]["status"])

    assert [await post(b"one"), await post(b"two"), await post(b"one")] == [201, 422, 201]
    assert [(type(e).__name__, e.name) for e in seen] == [
        ("IdempotencyKeyRejected", "shop"), ("IdempotentReplayed", "shop")]
