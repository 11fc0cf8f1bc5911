"""The ``Idempotency-Key`` HTTP semantics (IETF httpapi draft), written once and sans-IO.

``HttpIdempotency`` decides everything the header means and does no I/O of its own except
through the store; an adapter (``stoic.idempotency.asgi`` for ASGI, a WSGI one alike) only
moves bytes between its server and these calls:

1. ``applies(method)``: is the header meaningful for this method? If not, pass through.
2. ``key(raw)``: the header's value (``None`` when absent) becomes the key, a ``Reply`` to
   send at once (400: missing when ``required``, or malformed), or None (pass through).
3. The adapter reads the request body, at most ``max_request_body`` bytes (over it, send
   ``too_large()``), then ``call(key, method, path, query, body, principal)``.
4. ``settle(call)`` / ``await asettle(call)``: the claim loop of ``stoic.idempotency.claims``.
   ``answer(settled)`` is the ``Reply`` for a request that must not run (the stored response
   replayed with ``Idempotent-Replayed: true``, 409 in flight, 422 key reused for a different
   request), or None: run the application under ``settled.lease`` (``claims.holding``) with
   the body it read.
5. Feed the response to a ``ResponseRecorder`` (``recorder()``): ``start(status, headers)``,
   then ``body(chunk, more)`` per chunk; when ``body`` returns True that chunk ends the
   response: finish the lease with ``stored(routed)`` (the text to store, or None to release
   the key) *before* sending that chunk, then send it at once. Anything the application does
   after its response (background tasks) must not delay the reply. If the application fails
   before the response ended, finish the lease with None.

Which responses are stored (Stripe's rule): a response that says the request was never
executed is not stored and gives the key back, so the corrected retry runs: 400, 401, 403,
404 from routing, 405, 415, 422, 429 (``NOT_EXECUTED``) and every 5xx. Everything else is
stored: the request ran, and a retry must not run it twice. A 404 counts as the handler's own
answer ("no such order": it ran) when the adapter says a route matched (``routed``).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypedDict

from .._validate import header_name
from ..codec import default_codec
from ..events import dispatcher
from .claims import KeyedCall, Settled, asettle, settle
from .events import IdempotentReplayed
from .fingerprint import fingerprint_request
from .store import (
    MAX_KEY_LENGTH,
    SEPARATOR,
    ClaimStatus,
    Store,
    check_seconds,
    check_store,
    store_key,
)

__all__ = [
    "NOT_EXECUTED",
    "HttpIdempotency",
    "HttpIdempotencyOptions",
    "Reply",
    "ResponseRecorder",
    "default_store_status",
    "problem",
]

NOT_EXECUTED = frozenset({400, 401, 403, 404, 405, 415, 422, 429})
"""Statuses saying the request was never executed (bad input, no access, no such route,
wrong method or media type, throttled). Not stored; the key is given back. So is every 5xx."""

_PROBLEM = "urn:stoic:problem:idempotency-key-"
_REPLAYED = (b"idempotent-replayed", b"true")
_STORE_METHODS = ("aclaim", "acomplete", "arelease", "adelete")

Headers = tuple[tuple[bytes, bytes], ...]


def default_store_status(status: int) -> bool:
    """Stripe's rule by status alone: store unless 5xx or a status in ``NOT_EXECUTED``."""
    return status < 500 and status not in NOT_EXECUTED


@dataclass(frozen=True, slots=True)
class Reply:
    """A whole response to send: status, header pairs (lower-case names, bytes), body."""

    status: int
    headers: Headers
    body: bytes


def problem(status: int, kind: str, title: str, detail: str,
            extra: Iterable[tuple[bytes, bytes]] = ()) -> Reply:
    """An ``application/problem+json`` reply (RFC 9457)."""
    body = json.dumps({"type": _PROBLEM + kind, "title": title, "status": status,
                       "detail": detail}).encode()
    return Reply(status, ((b"content-type", b"application/problem+json"),
                          (b"content-length", str(len(body)).encode()), *extra), body)


def _replay(text: str | None) -> Reply:
    """The stored response as a replay; ``ValueError`` (and kin) when it is unreadable."""
    if text is None:
        raise ValueError("the record has no stored response")
    data = json.loads(text)
    status = int(data["status"])
    if not 100 <= status <= 599:
        raise ValueError(f"stored status {status} is not an HTTP status")
    headers = tuple((str(n).encode("latin-1"), str(v).encode("latin-1"))
                    for n, v in data["headers"] if str(n).lower() != "idempotent-replayed")
    return Reply(status, (*headers, _REPLAYED), base64.b64decode(data["body"], validate=True))


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


class HttpIdempotencyOptions(TypedDict, total=False):
    """The optional arguments of ``HttpIdempotency``, and so of both ``IdempotencyMiddleware``
    classes (ASGI and WSGI), which hand them on."""

    methods: Iterable[str]
    required: bool
    ttl: float
    lease: float
    store_status: Callable[[int], bool] | None
    not_executed: Iterable[int]
    max_body: int
    max_request_body: int
    header: str
    namespace: str


@dataclass(frozen=True, slots=True)
class HttpIdempotency:
    """What ``Idempotency-Key`` means for one application: configuration and decisions.

    The arguments are those of ``IdempotencyMiddleware`` (see there), checked here once.
    ``store_status`` None means Stripe's rule (``NOT_EXECUTED``, 5xx, and a 404 with a
    matched route stored); a function of the status replaces the whole rule.
    """

    store: Store
    methods: Iterable[str] = frozenset({"POST", "PATCH"})  # kept as a frozenset
    required: bool = False
    ttl: float = 86400.0
    lease: float = 60.0
    store_status: Callable[[int], bool] | None = None
    not_executed: Iterable[int] = NOT_EXECUTED  # kept as a frozenset
    max_body: int = 1024 * 1024
    max_request_body: int = 10 * 1024 * 1024
    header: str = "Idempotency-Key"
    namespace: str = "http"
    header_key: bytes = field(init=False, repr=False)  # ``header`` as it arrives: lower case

    def __post_init__(self) -> None:
        methods: object = self.methods
        if isinstance(methods, (str, bytes)) or not isinstance(methods, Iterable):
            raise TypeError(f"methods must be a collection of method names, got {methods!r}")
        object.__setattr__(self, "methods", frozenset(str(m).upper() for m in methods))
        if not self.methods:
            raise ValueError("methods must name at least one HTTP method, got none")
        check_store(self.store, _STORE_METHODS)
        object.__setattr__(self, "ttl", check_seconds("ttl", self.ttl))
        object.__setattr__(self, "lease", check_seconds("lease", self.lease))
        for name in ("max_body", "max_request_body"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a whole number of bytes >= 0, got {value!r}")
        if self.store_status is not None and not callable(self.store_status):
            raise TypeError(f"store_status must be callable, got {self.store_status!r}")
        statuses: object = self.not_executed
        if isinstance(statuses, (str, bytes)) or not isinstance(statuses, Iterable):
            raise TypeError(f"not_executed must be a collection of statuses, got {statuses!r}")
        statuses = frozenset(statuses)
        for status in statuses:
            if isinstance(status, bool) or not isinstance(status, int) or not (
                    100 <= status <= 599):
                raise ValueError(f"not_executed must hold HTTP statuses, got {status!r}")
        object.__setattr__(self, "not_executed", statuses)
        if not isinstance(self.namespace, str) or SEPARATOR in self.namespace:
            raise ValueError(f"namespace must be a str without \\x1f, got {self.namespace!r}")
        object.__setattr__(self, "required", bool(self.required))
        header_name("header", self.header)
        object.__setattr__(self, "header_key", self.header.lower().encode("ascii"))

    # -- the request -----------------------------------------------------------------------

    def applies(self, method: str) -> bool:
        """Whether a request with ``method`` is handled here (else it passes straight through)."""
        return method.upper() in self.methods

    def key(self, raw: bytes | None) -> str | Reply | None:
        """The key in the header value ``raw`` (None: no header). A ``Reply`` (400) when it is
        malformed, or missing while ``required``; None: no key, pass the request through."""
        if raw is None:
            if not self.required:
                return None
            return problem(400, "missing", "Idempotency-Key is required",
                           f"{'/'.join(sorted(self.methods))} requests must carry an "
                           f"{self.header} header so that retrying them is safe.")
        key = _parse_key(raw)
        if key is None:
            return problem(400, "invalid", "Invalid Idempotency-Key",
                           f"The key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters, "
                           "optionally in double quotes.")
        return key

    def too_large(self) -> Reply:
        """The reply to a keyed request whose body is over ``max_request_body`` (413)."""
        return problem(413, "body-too-large", "Request body too large",
                       f"Requests with an Idempotency-Key may carry at most "
                       f"{self.max_request_body} bytes.")

    def call(self, key: str, method: str, path: str, query: str, body: bytes,
             principal: str = "") -> KeyedCall:
        """What the request claims: keys are separate per ``principal`` (user, tenant), and
        the fingerprint covers method, path, query and body."""
        stored_as = store_key(self.namespace, principal.replace(SEPARATOR, ""), key)
        return KeyedCall(self.namespace or "http", key, stored_as,
                         fingerprint_request(method, path, query, body))

    def settle(self, call: KeyedCall) -> Settled[Reply]:
        """Claim ``call`` (sync stores). ``CodecError`` when the stored response stays
        unreadable: answer ``unreadable()``."""
        return settle(self.store, call, lease=self.lease, ttl=self.ttl, read=_replay)

    async def asettle(self, call: KeyedCall) -> Settled[Reply]:
        """``settle`` for async code."""
        return await asettle(self.store, call, lease=self.lease, ttl=self.ttl, read=_replay)

    def answer(self, settled: Settled[Reply]) -> Reply | None:
        """The reply for a request that must not run, or None: run it under the lease."""
        claim = settled.claim
        if claim.status is ClaimStatus.CLAIMED:
            return None
        if claim.status is ClaimStatus.COMPLETED and settled.replay is not None:
            if dispatcher.sinks:
                dispatcher.emit(IdempotentReplayed(name=self.namespace or "http",
                                                   key=claim.key))
            return settled.replay
        if claim.status is ClaimStatus.MISMATCH:
            return problem(422, "mismatch", "Idempotency-Key reused",
                           "This key was already used with a different request "
                           "(method, path or body).")
        retry_after = max(1, math.ceil(claim.retry_after or 1))
        return problem(409, "in-flight", "Request in progress",
                       "A request with this key is still being processed; retry later.",
                       [(b"retry-after", str(retry_after).encode())])

    @staticmethod
    def unreadable() -> Reply:
        """The reply when the stored response stays unreadable after deleting it (500)."""
        return problem(500, "unreadable", "Stored response unreadable",
                       "The stored response for this key cannot be read.")

    # -- the response ----------------------------------------------------------------------

    def stores(self, status: int, *, routed: bool = False) -> bool:
        """Whether a complete response with ``status`` is stored (else the key is released).
        ``routed``: the application says a route matched, so a 404 is the handler's own."""
        if self.store_status is not None:
            return bool(self.store_status(status))
        if status >= 500:
            return False
        if status == 404 and routed:
            return True
        return status not in self.not_executed

    def recorder(self) -> ResponseRecorder:
        """A fresh recorder for one response."""
        return ResponseRecorder(self)


class ResponseRecorder:
    """Collects one response as the application sends it, to store it when it ends."""

    __slots__ = ("chunks", "headers", "rules", "size", "status", "too_big")

    def __init__(self, rules: HttpIdempotency) -> None:
        self.rules = rules
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.too_big = False

    def start(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> None:
        """The response's status line and headers."""
        self.status = int(status)
        self.headers = [(bytes(n), bytes(v)) for n, v in headers]

    def body(self, chunk: bytes, more: bool) -> bool:
        """One body chunk; True when it is the last (finish the lease, then send it)."""
        self.size += len(chunk)
        if self.size > self.rules.max_body:
            self.too_big = True
            self.chunks.clear()
        elif not self.too_big:
            self.chunks.append(bytes(chunk))
        return not more

    def stored(self, *, routed: bool = False) -> str | None:
        """The text to store for the finished response, or None to release the key (its
        status says it never ran or failed, or it is over ``max_body``)."""
        if self.too_big or not self.rules.stores(self.status, routed=routed):
            return None
        return default_codec.encode({
            "status": self.status,
            "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in self.headers],
            "body": base64.b64encode(b"".join(self.chunks)).decode("ascii"),
        })
