"""ASGI middleware: a request arrives with its deadline, its ids and its trace, or is shed.

    app = FastAPI()
    app.add_middleware(StoicMiddleware, service="orders", version="1.4.2", max_deadline=10.0)

For every HTTP request ``StoicMiddleware``:

- reads the caller's time left from the deadline header (``X-Request-Timeout-Ms``, in
  milliseconds, as stoic's HTTP clients send it) and runs the handler inside
  ``stoic.deadline``: retries stop in time and outgoing stoic calls carry what is left. A
  request that arrives with no time left is answered 504 without running the handler (the
  caller has already given up; the work would be wasted). A malformed value is ignored with a
  warning; a negative or absurdly large one is clamped to ``max_deadline``. ``max_deadline``
  also bounds requests that come without the header.
- binds ``request_id`` (from ``X-Request-ID``, or a new one), ``user_id`` (from the
  ``user_id`` hook), ``service`` and ``version`` with ``stoic.context.bind``, for logs and
  outgoing calls, and echoes the request id in the response.
- continues the caller's W3C trace when ``stoic.observability.otel`` tracing is on.
- with a ``bulkhead``, sheds load: when it is full the answer is 503 with ``Retry-After``.
- answers 504 when the handler lets ``stoic.DeadlineExceeded`` escape before responding.

It is plain ASGI (no framework base class), so it works with Starlette, FastAPI and any ASGI
app. Scopes other than ``http`` pass straight through.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._asgi import ASGIApp, Message, Receive, Scope, Send
from ..context import bind, deadline, hop
from ..errors import BulkheadFullError, DeadlineExceeded
from ._serving import Serving, ServingOptions, budget_seconds, request_id, user_of
from .shedding import LoadShedder  # re-exported: the ASGI pieces live in one place

if TYPE_CHECKING:
    from typing_extensions import Unpack  # Python 3.10 has no typing.Unpack

    from ..idempotency.asgi import IdempotencyMiddleware

__all__ = ["IdempotencyMiddleware", "LoadShedder", "StoicMiddleware"]

_log = logging.getLogger("stoic.asgi")

UserIdHook = Callable[[Scope], "str | None"]


class StoicMiddleware(Serving):
    """Deadlines, request context, trace context and load shedding for an ASGI app.

    Args:
        app: the ASGI application to wrap.
        service, version: bound into the request context (logs carry them).
        deadline_header: the header carrying the caller's time left, in milliseconds.
        max_deadline: the most time, in seconds, any request may have; longer, negative
            and missing values become this. None: no cap and no default deadline.
        shed_when_expired: answer 504 without running the handler when the caller's time is
            already up.
        bulkhead: a ``stoic.Bulkhead`` (or any policy raising ``BulkheadFullError``) limiting
            concurrent requests; when it rejects, the answer is 503 with ``Retry-After``.
        user_id: ``scope -> str | None``, the authenticated user for the context.
        request_id_header: where the request id comes from and is echoed to.
        hop_guard: bind the caller's ``X-Stoic-Attempt`` / ``X-Stoic-Retry-Below`` headers
            (``stoic.context.hop``), so stoic clients in the handler do not retry what the
            caller already retries (True: retry at the edge). ``"deepest"``: retry at the
            hop nearest the failure only, also for callers that sent no header; answers
            then carry ``X-Stoic-Retried: 1`` when a failure was retried below. False: off.
            See docs/hop-guard.md.
    """

    hook_takes = "the scope"

    def __init__(
        self, app: ASGIApp, service: str, version: str, *args: Any, hop_guard: bool | str = True,
        **options: Unpack[ServingOptions],
    ) -> None:
        if not callable(app):
            raise ValueError(f"app must be an ASGI application, got {app!r}")
        super().__init__(service, version, *args, **options)
        self.app = app
        if not (hop_guard is True or hop_guard is False or hop_guard == "deepest"):
            raise ValueError(f"hop_guard must be True, False or 'deepest', got {hop_guard!r}")
        self.hop_guard = hop_guard is not False
        self.hop_deepest = hop_guard == "deepest"

    @staticmethod
    def header_key(header: str) -> bytes:
        """ASGI hands request headers over as lower-case bytes."""
        return header.lower().encode("latin-1")

    def _seconds(self, raw: bytes | None) -> float | None:
        """The request's time budget in seconds from the header value, clamped; None: none."""
        text = raw.decode("latin-1") if raw is not None else None
        return budget_seconds(text, self.max_deadline, self.deadline_header, _log)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await _Exchange(self, scope).run(receive, send)


class _Exchange:
    """The per-request state: what came in, and whether the response has started."""

    __slots__ = ("headers", "hop", "middleware", "request_id", "scope", "started")

    def __init__(self, middleware: StoicMiddleware, scope: Scope) -> None:
        self.middleware = middleware
        self.scope = scope
        self.started = False
        self.hop: hop | None = None
        self.headers: list[tuple[bytes, bytes]] = list(scope.get("headers") or ())
        self.request_id = ""

    def _header(self, key: bytes) -> bytes | None:
        for name, value in self.headers:
            if name == key:
                return value
        return None

    async def run(self, receive: Receive, send: Send) -> None:
        mw = self.middleware
        self.request_id = request_id(self._header(mw._request_id_key))
        seconds = mw._seconds(self._header(mw._deadline_key))
        if seconds is not None and seconds <= 0 and mw.shed_when_expired:
            await self._answer(send, 504, b"deadline exceeded before the request was handled")
            return
        user = user_of(mw.user_id, self.scope)
        token = self._attach_trace()
        try:
            with bind(
                request_id=self.request_id, user_id=user, service=mw.service, version=mw.version
            ), self._hop():
                if seconds is None:
                    await self._handle(receive, send)
                else:
                    with deadline(max(seconds, 0.0)):
                        await self._handle(receive, send)
        finally:
            if token is not None:
                from opentelemetry import context as otel_context

                otel_context.detach(token)

    def _hop(self) -> hop | contextlib.nullcontext[None]:
        """The caller's retry signal for the hop guard, when it sent one (or "deepest")."""
        mw = self.middleware
        below = self._header(b"x-stoic-retry-below") if mw.hop_guard else None
        if below is None and not mw.hop_deepest:
            return contextlib.nullcontext()
        below = (below or b"1").strip()
        attempt = self._header(b"x-stoic-attempt") or b"1"
        self.hop = hop(int(attempt) if attempt.isdigit() else 1, below != b"0",
                       deepest=mw.hop_deepest or below == b"deepest")
        return self.hop

    def _attach_trace(self) -> Any:
        try:
            ctx = self.middleware._extract(self.headers)
            if ctx is None:
                return None
            from opentelemetry import context as otel_context

            return otel_context.attach(ctx)
        except Exception:  # a bad traceparent must not fail the request
            _log.debug("stoic: trace context extraction failed", exc_info=True)
            return None

    async def _handle(self, receive: Receive, send: Send) -> None:
        mw = self.middleware
        echo = (mw._request_id_key, self.request_id.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.started = True
                headers = [h for h in message.get("headers", ()) if h[0].lower() != echo[0]]
                headers.append(echo)
                if self.hop is not None and self.hop.deepest and self.hop.retried:
                    headers.append((b"x-stoic-retried", b"1"))  # the hop above must not retry
                message["headers"] = headers
            await send(message)

        try:
            if mw.bulkhead is None:
                await mw.app(self.scope, receive, send_with_id)
            else:
                await mw.bulkhead.acall(mw.app, self.scope, receive, send_with_id)
        except BulkheadFullError as exc:
            if self.started:
                raise
            retry_after = exc.retry_after if exc.retry_after is not None else 1.0
            await self._answer(
                send, 503, b"overloaded, try again later",
                retry_after=max(1, math.ceil(retry_after)),
            )
        except DeadlineExceeded:
            if self.started:
                raise
            await self._answer(send, 504, b"deadline exceeded while handling the request")

    async def _answer(
        self, send: Send, status: int, body: bytes, retry_after: int | None = None
    ) -> None:
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode("ascii")),
            (self.middleware._request_id_key, self.request_id.encode("ascii")),
        ]
        if retry_after is not None:
            headers.append((b"retry-after", str(retry_after).encode("ascii")))
        self.started = True
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def __getattr__(name: str) -> Any:
    # IdempotencyMiddleware lives with the idempotency engine; re-exported here, lazily, so
    # the ASGI pieces are found in one place without importing the engine for every app.
    if name == "IdempotencyMiddleware":
        from ..idempotency.asgi import IdempotencyMiddleware as middleware

        return middleware
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
