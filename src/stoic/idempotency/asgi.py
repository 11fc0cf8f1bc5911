"""ASGI middleware for the ``Idempotency-Key`` request header (IETF httpapi draft).

A client that retries a POST after a lost reply sends the same ``Idempotency-Key``; the
middleware makes sure the application handles it once and the retry gets the first reply:

* no key on a POST/PATCH when ``required=True``: 400;
* a key reused for a different request (method, path, query or body differ): 422;
* the first request with the key is still being handled: 409, with ``Retry-After``;
* the key completed before: the stored status, headers and body, plus
  ``Idempotent-Replayed: true``.

Errors are ``application/problem+json`` (RFC 9457). A response that says the request never
ran (400, 401, 403, 404 from routing, 405, 415, 422, 429, any 5xx) is not stored and gives
the key back, so the corrected retry runs; any other response is stored (``store_status``
and ``not_executed`` change the rule). A response body larger than ``max_body`` is passed
to the client but not stored, and the key is released. The request body is read in full
before the application sees it, to fingerprint it; ``max_request_body`` bounds that (413).

The response streams to the client as the application sends it. Its last body message is
sent as soon as the record is stored, so a client that has the whole reply and sends the key
again always gets the replay, never a 409; work the application does after its response
(Starlette's background tasks) never delays it. The application can keep a long request's
key with ``await stoic.idempotency.aextend()``.

This module only moves ASGI messages: what the header means is ``stoic.idempotency.http``
(sans-IO, shared with other adapters) and the claim loop and lease are
``stoic.idempotency.claims``. No framework is imported; one instance holds only
configuration, and per-request state lives in ``_Exchange``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from .._asgi import ASGIApp, Message, Receive, Scope, Send
from ..errors import CodecError
from .claims import Lease, holding
from .http import (
    NOT_EXECUTED,
    HttpIdempotency,
    HttpIdempotencyOptions,
    Reply,
    default_store_status,
)
from .store import Store

if TYPE_CHECKING:  # Python 3.10 has no typing.Unpack; only annotations use it
    from typing_extensions import Unpack

__all__ = ["NOT_EXECUTED", "IdempotencyMiddleware", "default_store_status"]


V = TypeVar("V")


class _Rule(Generic[V]):
    """An attribute of ``HttpIdempotency`` read through ``obj.rules``; writing it replaces
    the rules (frozen) with a copy holding the new value."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type) -> _Rule[V]: ...
    @overload
    def __get__(self, obj: object, owner: type | None = None) -> V: ...
    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        return self if obj is None else getattr(obj.rules, self.name)

    def __set__(self, obj: Any, value: V) -> None:
        obj.rules = dataclasses.replace(obj.rules, **{self.name: value})


class IdempotencyMiddleware:
    """Run each ``Idempotency-Key`` once and replay its response to retries.

    Args:
        app: the ASGI application.
        store: where records live; use a shared store (Redis, PostgreSQL) behind a load
            balancer, so every instance sees every key.
        methods: the methods the header applies to (the draft: non-idempotent ones).
        required: reject requests with those methods that carry no key (400).
        ttl: seconds a completed response is kept and replayed.
        lease: seconds a request in progress holds its key before another may take over.
        scope: a callable on the ASGI scope returning the principal (user, tenant, API
            key); keys are separate per principal, so nobody can replay another's reply.
        store_status: a function of the status deciding alone which responses are stored;
            by default (None) every response is stored except those saying the request
            never ran: any 5xx and the statuses in ``not_executed``.
        not_executed: the statuses that mean the request never ran (default
            ``NOT_EXECUTED``: 400, 401, 403, 404, 405, 415, 422, 429). A 404 after a route
            matched (Starlette and FastAPI put ``endpoint`` in the scope) is the handler's
            own answer and is stored.
        max_body: largest response body stored, in bytes; larger ones are not stored.
        max_request_body: largest request body accepted with a key, in bytes (413 above).
        header: the request header carrying the key.
        namespace: separates this application's keys from others sharing the store, and
            names the middleware in its events.
    """

    def __init__(
        self, app: ASGIApp, store: Store, *, scope: Callable[[Scope], str | None] | None = None,
        **options: Unpack[HttpIdempotencyOptions],
    ) -> None:
        if scope is not None and not callable(scope):
            raise TypeError(f"scope must be callable, got {scope!r}")
        self.app = app
        self.scope = scope
        self.rules = HttpIdempotency(store, **options)

    # the rules a caller may change after construction; each write copies the frozen rules
    store: _Rule[Store] = _Rule()
    required: _Rule[bool] = _Rule()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rules = self.rules
        if scope["type"] != "http" or not rules.applies(scope.get("method", "")):
            await self.app(scope, receive, send)
            return
        raw = None
        for name, value in scope.get("headers", ()):
            if name.lower() == rules.header_key:
                raw = value
                break
        key = rules.key(raw)
        if key is None:
            await self.app(scope, receive, send)
        elif isinstance(key, Reply):
            await _send_reply(send, key)
        else:
            await _Exchange(self, rules, scope, key).run(receive, send)


class _Exchange:
    """One keyed request: read it, claim its key, run or replay, store the reply."""

    __slots__ = ("key", "owner", "rules", "scope")

    def __init__(self, owner: IdempotencyMiddleware, rules: HttpIdempotency, scope: Scope,
                 key: str) -> None:
        self.owner, self.rules, self.scope, self.key = owner, rules, scope, key

    async def run(self, receive: Receive, send: Send) -> None:
        rules, scope = self.rules, self.scope
        body = await self._read_body(receive)
        if isinstance(body, Reply):
            await _send_reply(send, body)
            return
        if body is None:
            return  # the client went away
        principal = ""
        if self.owner.scope is not None:
            principal = str(self.owner.scope(scope) or "")
        call = rules.call(self.key, scope.get("method", ""), scope.get("path", ""),
                          scope.get("query_string", b"").decode("latin-1"), body, principal)
        try:
            settled = await rules.asettle(call)
        except CodecError:
            await _send_reply(send, rules.unreadable())
            return
        if settled.lease is None:
            reply = rules.answer(settled)
            if reply is not None:
                await _send_reply(send, reply)
            return
        await self._handle(settled.lease, body, receive, send)

    async def _read_body(self, receive: Receive) -> bytes | Reply | None:
        chunks: list[bytes] = []
        size, limit = 0, self.rules.max_request_body
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return self.rules.too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _handle(self, lease: Lease, body: bytes, receive: Receive, send: Send) -> None:
        scope = self.scope
        delivered = False
        finished = False  # the response ended and the lease was finished
        recorder = self.rules.recorder()

        async def replay_receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        async def capture(message: Message) -> None:
            nonlocal finished
            kind = message["type"]
            if finished:
                pass
            elif kind == "http.response.start":
                recorder.start(message["status"], message.get("headers", ()))
            elif kind == "http.response.body" and recorder.body(
                    message.get("body", b""), message.get("more_body", False)):
                # The response ends here: store it (or give the key back) first, so a client
                # that has the whole reply and sends the key again gets the replay; then
                # send at once, whatever the application still does after its response.
                await lease.afinish(recorder.stored(routed="endpoint" in scope))
                finished = True
            await send(message)

        try:
            async with holding(lease):
                await self.owner.app(scope, replay_receive, capture)
        finally:
            if not finished:  # failed, or returned without ending its response
                await lease.afinish(None)


async def _send_reply(send: Send, reply: Reply) -> None:
    await send({"type": "http.response.start", "status": reply.status,
                "headers": list(reply.headers)})
    await send({"type": "http.response.body", "body": reply.body, "more_body": False})
