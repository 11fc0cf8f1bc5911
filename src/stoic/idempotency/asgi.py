"""ASGI middleware for the ``Idempotency-Key`` request header (IETF httpapi draft).

A client that retries a POST after a lost reply sends the same ``Idempotency-Key``; the
middleware makes sure the application handles it once and the retry gets the first reply:

* no key on a POST/PATCH when ``required=True``: 400;
* a key reused for a different request (method, path, query or body differ): 422;
* the first request with the key is still being handled: 409, with ``Retry-After``;
* the key completed before: the stored status, headers and body, plus
  ``Idempotent-Replayed: true``.

Errors are ``application/problem+json`` (RFC 9457). Which responses are stored is
``store_status`` (2xx and 4xx by default: a 5xx is not stored, so the client's retry runs
again). A response body larger than ``max_body`` is passed to the client but not stored,
and the key is released: a retry then runs again. The request body is read in full before
the application sees it, to fingerprint it; ``max_request_body`` bounds that (413 above).

The response streams to the client as the application sends it, except its last body
message, which is held until the record is stored: a client that has received a whole reply
and sends the key again always gets the replay, never a 409. The application can keep a long
request's key with ``await stoic.idempotency.aextend()``.

The middleware is plain ASGI with no framework import: it works under Starlette, FastAPI or
any ASGI server. One instance holds only configuration; per-request state lives in
``_Exchange``.
"""

from __future__ import annotations

import base64
import json
import logging
import math
from collections.abc import Callable, Iterable

from ..codec import default_codec
from ..context import using_idempotency_key
from ..events import dispatcher
from ..integrations.asgi import ASGIApp, Message, Receive, Scope, Send
from .decorator import _CLAIM_TURNS, _current, _Lease
from .events import IdempotencyKeyRejected, IdempotencyRecordCorrupted, IdempotentReplayed
from .fingerprint import fingerprint_request
from .store import MAX_KEY_LENGTH, SEPARATOR, ClaimStatus, Store, check_seconds, check_store, store_key

__all__ = ["IdempotencyMiddleware", "default_store_status"]

_log = logging.getLogger("stoic.idempotency")

_STORE_METHODS = ("aclaim", "acomplete", "arelease", "adelete")
_PROBLEM = "urn:stoic:problem:idempotency-key-"
_REPLAYED = (b"idempotent-replayed", b"true")


def default_store_status(status: int) -> bool:
    """Store 2xx and 4xx replies; never 5xx, so a retry after a server error runs again."""
    return 200 <= status < 300 or 400 <= status < 500


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
        store_status: which response statuses are stored (default: 2xx and 4xx).
        max_body: largest response body stored, in bytes; larger ones are not stored.
        max_request_body: largest request body accepted with a key, in bytes (413 above).
        header: the request header carrying the key.
        namespace: separates this application's keys from others sharing the store, and
            names the middleware in its events.
    """

    def __init__(
        self,
        app: ASGIApp,
        store: Store,
        *,
        methods: Iterable[str] = ("POST", "PATCH"),
        required: bool = False,
        ttl: float = 86400.0,
        lease: float = 60.0,
        scope: Callable[[Scope], str | None] | None = None,
        store_status: Callable[[int], bool] = default_store_status,
        max_body: int = 1024 * 1024,
        max_request_body: int = 10 * 1024 * 1024,
        header: str = "Idempotency-Key",
        namespace: str = "http",
    ) -> None:
        if isinstance(methods, (str, bytes)):
            raise TypeError(f"methods must be a collection of method names, got {methods!r}")
        self.methods = frozenset(m.upper() for m in methods)
        if not self.methods:
            raise ValueError("methods must name at least one HTTP method, got none")
        check_store(store, _STORE_METHODS)
        self.ttl = check_seconds("ttl", ttl)
        self.lease = check_seconds("lease", lease)
        if max_body < 0:
            raise ValueError(f"max_body must be >= 0 bytes, got {max_body!r}")
        if max_request_body < 0:
            raise ValueError(f"max_request_body must be >= 0 bytes, got {max_request_body!r}")
        if not header or not header.isascii():
            raise ValueError(f"header must be an ASCII header name, got {header!r}")
        if scope is not None and not callable(scope):
            raise TypeError(f"scope must be callable, got {scope!r}")
        if not callable(store_status):
            raise TypeError(f"store_status must be callable, got {store_status!r}")
        if SEPARATOR in namespace:
            raise ValueError(f"namespace must not contain \\x1f, got {namespace!r}")
        self.app = app
        self.store = store
        self.required = bool(required)
        self.scope = scope
        self.store_status = store_status
        self.max_body = int(max_body)
        self.max_request_body = int(max_request_body)
        self.header = header.lower().encode("ascii")
        self.namespace = namespace

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method", "").upper() not in self.methods:
            await self.app(scope, receive, send)
            return
        raw = None
        for name, value in scope.get("headers", ()):
            if name.lower() == self.header:
                raw = value
                break
        if raw is None:
            if self.required:
                await _problem(send, 400, "missing", "Idempotency-Key is required",
                               f"{self.method_list} requests must carry an Idempotency-Key "
                               "header so that retrying them is safe.")
                return
            await self.app(scope, receive, send)
            return
        await _Exchange(self, scope, raw).run(receive, send)

    @property
    def method_list(self) -> str:
        return "/".join(sorted(self.methods))


def _parse_key(raw: bytes) -> str | None:
    """The key from the header value: a structured-field string (quoted) or a bare token."""
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        text = text[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if not text or len(text) > MAX_KEY_LENGTH or not text.isprintable():
        return None
    return text


class _TooLarge(Exception):
    """The request body is over ``max_request_body``."""


class _Exchange:
    """One keyed request: read it, claim its key, run or replay, store the reply."""

    def __init__(self, owner: IdempotencyMiddleware, scope: Scope, raw: bytes) -> None:
        self.owner = owner
        self.scope = scope
        self.raw = raw

    async def run(self, receive: Receive, send: Send) -> None:
        owner = self.owner
        key = _parse_key(self.raw)
        if key is None:
            await _problem(send, 400, "invalid", "Invalid Idempotency-Key",
                           f"The key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters, "
                           'optionally in double quotes.')
            return
        try:
            body = await self._read_body(receive)
        except _TooLarge:
            await _problem(send, 413, "body-too-large", "Request body too large",
                           f"Requests with an Idempotency-Key may carry at most "
                           f"{owner.max_request_body} bytes.")
            return
        if body is None:
            return  # the client went away
        scope = self.scope
        fingerprint = fingerprint_request(
            scope.get("method", ""), scope.get("path", ""),
            scope.get("query_string", b"").decode("latin-1"), body,
        )
        principal = ""
        if owner.scope is not None:
            principal = str(owner.scope(scope) or "").replace(SEPARATOR, "")
        stored_as = store_key(owner.namespace, principal, key)
        label = owner.namespace or "http"

        for _ in range(_CLAIM_TURNS):  # a corrupted record is deleted and claimed again
            claim = await owner.store.aclaim(stored_as, fingerprint, lease=owner.lease,
                                             ttl=owner.ttl)
            if claim.status is ClaimStatus.CLAIMED:
                break
            if claim.status is ClaimStatus.MISMATCH:
                _rejected(label, key, "mismatch", None)
                await _problem(send, 422, "mismatch", "Idempotency-Key reused",
                               "This key was already used with a different request "
                               "(method, path or body).")
                return
            if claim.status is ClaimStatus.IN_FLIGHT:
                _rejected(label, key, "in_flight", claim.retry_after)
                retry_after = max(1, math.ceil(claim.retry_after or 1))
                await _problem(send, 409, "in-flight", "Request in progress",
                               "A request with this key is still being processed; "
                               "retry later.", [(b"retry-after", str(retry_after).encode())])
                return
            response = claim.record.response if claim.record is not None else None
            replay = _decode_response(response)
            if replay is not None:
                if dispatcher.sinks:
                    dispatcher.emit(IdempotentReplayed(name=label, key=key))
                await _send_replay(send, *replay)
                return
            _log.warning("idempotency http: stored response for key %r is unreadable; "
                         "treating it as absent", key)
            if dispatcher.sinks:
                dispatcher.emit(IdempotencyRecordCorrupted(
                    name=label, key=key, problem="unreadable response"))
            await owner.store.adelete(stored_as)
        else:
            await _problem(send, 500, "unreadable", "Stored response unreadable",
                           "The stored response for this key cannot be read.")
            return
        await self._handle(key, stored_as, claim.token or "", body, receive, send)

    async def _read_body(self, receive: Receive) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.owner.max_request_body:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _handle(self, key: str, store_key: str, token: str, body: bytes,
                      receive: Receive, send: Send) -> None:
        owner = self.owner
        delivered = False

        async def replay_receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        status = 0
        headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []
        size = 0
        too_big = False
        held: Message | None = None  # the last body message, sent once the record is stored

        async def capture(message: Message) -> None:
            nonlocal status, headers, size, too_big, held
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [(bytes(n), bytes(v)) for n, v in message.get("headers", ())]
            elif message["type"] == "http.response.body":
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > owner.max_body:
                    too_big = True
                    chunks.clear()
                elif not too_big:
                    chunks.append(chunk)
                if (not message.get("more_body", False) and not too_big
                        and owner.store_status(status)):
                    # Store before the client sees the end of the response: a client that
                    # has the whole reply and sends the key again must get the replay.
                    held = message
                    return
            await send(message)

        lease = _current.set(_Lease(owner.store, store_key, token, owner.lease))
        try:
            async with using_idempotency_key(key):
                await owner.app(self.scope, replay_receive, capture)
        except BaseException:
            await self._finish(key, store_key, token, None)
            if held is not None:
                await send(held)
            raise
        finally:
            _current.reset(lease)
        if held is None:
            if too_big:
                _log.info("idempotency http: response for key %r is %d bytes, over max_body=%d;"
                          " not stored", key, size, owner.max_body)
            await self._finish(key, store_key, token, None)
            return
        text = default_codec.encode({
            "status": status,
            "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in headers],
            "body": base64.b64encode(b"".join(chunks)).decode("ascii"),
        })
        await self._finish(key, store_key, token, text)
        await send(held)

    async def _finish(self, key: str, store_key: str, token: str, text: str | None) -> None:
        """Store the response (``text``) or release the key (None), never raising: the
        response has been sent, and a store failure must not turn into a server error."""
        store = self.owner.store
        try:
            if text is None:
                await store.arelease(store_key, token)
            elif not await store.acomplete(store_key, token, text, ttl=self.owner.ttl):
                _log.warning("idempotency http: lease on key %r was lost before the response "
                             "was stored", key)
        except Exception:
            _log.warning("idempotency http: could not %s key %r; it stays in flight until its "
                         "lease runs out", "release" if text is None else "store the response of",
                         key, exc_info=True)


def _decode_response(text: str | None) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
    if text is None:
        return None
    try:
        data = json.loads(text)
        status = int(data["status"])
        headers = [(str(n).encode("latin-1"), str(v).encode("latin-1"))
                   for n, v in data["headers"]]
        body = base64.b64decode(data["body"], validate=True)
    except (ValueError, TypeError, KeyError, UnicodeEncodeError):
        return None
    if not 100 <= status <= 599:
        return None
    return status, headers, body


def _rejected(name: str, key: str, reason: str, retry_after: float | None) -> None:
    if dispatcher.sinks:
        dispatcher.emit(IdempotencyKeyRejected(name=name, key=key, reason=reason,
                                               retry_after=retry_after))


async def _send_replay(send: Send, status: int, headers: list[tuple[bytes, bytes]],
                       body: bytes) -> None:
    headers = [h for h in headers if h[0].lower() != _REPLAYED[0]]
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, _REPLAYED]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _problem(send: Send, status: int, kind: str, title: str, detail: str,
                   extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"type": _PROBLEM + kind, "title": title, "status": status,
                       "detail": detail}).encode()
    headers = [(b"content-type", b"application/problem+json"),
               (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
