"""WSGI middleware: a request arrives with its deadline, its ids and its trace, or is shed.

    application = StoicMiddleware(application, service="orders", version="1.4.2",
                                  max_deadline=10.0, bulkhead=stoic.Bulkhead(32))

The WSGI twin of ``stoic.integrations.asgi.StoicMiddleware``, for Flask, Django (see
``stoic.integrations.flask`` and ``stoic.integrations.django``) and any WSGI app. For every
request it:

- reads the caller's time left from the deadline header (``X-Request-Timeout-Ms``, as
  stoic's clients send it) and runs the app inside ``stoic.deadline``, so retries stop in
  time and outgoing stoic calls (HTTP, gRPC, database) carry what is left. A request that
  arrives with no time left is answered 504 without running the app. A malformed or
  negative value is ignored with a warning; ``max_deadline`` caps the value and bounds
  requests that come without one.
- binds ``request_id`` (from ``X-Request-ID`` when it is sane, or a new one), ``user_id``
  (from the ``user_id`` hook), ``service`` and ``version``, and echoes the request id in
  the response.
- continues the caller's W3C trace when ``stoic.observability.otel`` tracing is on.
- answers 503 with ``Retry-After`` when a ``stoic.Rejected`` escapes before the response
  started: the ``bulkhead`` is full (load shedding), or the app's own call to a dependency
  was refused by its open breaker or rate limit; the caller's stoic client retries later.
- answers 504 when ``stoic.DeadlineExceeded`` escapes before the response started.

The context stays bound while the server iterates the response body. The bulkhead covers
the app call; a streamed body is produced after the app returned, outside it.

``IdempotencyMiddleware`` is the WSGI adapter of the ``Idempotency-Key`` semantics that
``stoic.idempotency.http`` defines once (the ASGI middleware is the other adapter): a retry
of a keyed POST gets the first reply instead of running twice.
"""

from __future__ import annotations

import contextvars
import io
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from .._validate import header_name
from ..context import bind, deadline
from ..errors import CodecError, DeadlineExceeded, Rejected
from ..idempotency.claims import Lease, holding
from ..idempotency.http import (
    HttpIdempotency,
    HttpIdempotencyOptions,
    Reply,
    ResponseRecorder,
)
from ..idempotency.store import Store
from ._serving import Serving, ServingOptions, budget_seconds, request_id, user_of

if TYPE_CHECKING:  # Python 3.10 has no typing.Unpack; only annotations use it
    from typing_extensions import Unpack

__all__ = [
    "Arrival",
    "Edge",
    "IdempotencyMiddleware",
    "StoicMiddleware",
    "environ_key",
    "refusal",
]

_log = logging.getLogger("stoic.wsgi")

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]
UserIdHook = Callable[[Environ], "str | None"]


def environ_key(header: str) -> str:
    """Where WSGI puts request header ``header``: ``X-Request-ID`` -> ``HTTP_X_REQUEST_ID``."""
    return "HTTP_" + header.upper().replace("-", "_")


def refusal(exc: BaseException) -> tuple[int, str, int | None] | None:
    """How a stoic error escaping the app is answered: (status, text, Retry-After) or None.

    A ``stoic.Rejected`` (nothing was done; try again later) is 503 with ``Retry-After``
    (its ``retry_after`` rounded up, 1 s when unknown); a ``DeadlineExceeded`` is 504.
    """
    if isinstance(exc, Rejected):
        wait = exc.retry_after if exc.retry_after is not None else 1.0
        return 503, "overloaded, try again later", max(1, math.ceil(wait))
    if isinstance(exc, DeadlineExceeded):
        return 504, "deadline exceeded while handling the request", None
    return None


class Arrival:
    """What one request brought: its time budget, its request id, its user.

    Built from the WSGI environ (Django's ``request.META`` is one), so every WSGI
    integration reads a request the same way.
    """

    __slots__ = ("expired", "request_id", "seconds", "user_id")

    def __init__(self, middleware: Edge, environ: Environ) -> None:
        self.request_id = request_id(environ.get(middleware._request_id_key))
        self.seconds = budget_seconds(environ.get(middleware._deadline_key),
                                      middleware.max_deadline, middleware.deadline_header)
        self.expired = (self.seconds is not None and self.seconds <= 0
                        and middleware.shed_when_expired)
        self.user_id = user_of(middleware.user_id, environ)


class Edge(Serving):
    """The validated configuration of a request edge, and what it does to each request.

    Framework-free: ``StoicMiddleware`` (WSGI) and the Django middleware both use it. See
    ``StoicMiddleware`` for the arguments.
    """

    hook_takes = "the environ"
    header_key = staticmethod(environ_key)

    def enter(self, environ: Environ, arrival: Arrival) -> None:
        """Bind the request's deadline, ids and trace in the *current* context, for good.

        Call it inside a context made for the request (``contextvars.copy_context().run``):
        nothing is restored, the context is dropped with the request.
        """
        bind(request_id=arrival.request_id, user_id=arrival.user_id, service=self.service,
             version=self.version).__enter__()
        if arrival.seconds is not None:
            deadline(max(arrival.seconds, 0.0)).__enter__()
        try:
            carrier = [(k[5:].replace("_", "-").lower(), v) for k, v in environ.items()
                       if k.startswith("HTTP_")]
            ctx = self._extract(carrier)
            if ctx is not None:
                from opentelemetry import context as otel_context

                otel_context.attach(ctx)
        except Exception:  # a bad traceparent must not fail the request
            _log.debug("stoic: trace context extraction failed", exc_info=True)


class StoicMiddleware(Edge):
    """Deadlines, request context, trace context and load shedding for a WSGI app.

    The arguments are those of ``stoic.integrations.asgi.StoicMiddleware`` (without
    ``hop_guard``), for a WSGI application: ``user_id`` is ``environ -> str | None``, and
    ``bulkhead`` may be any policy; a ``stoic.Rejected`` escaping the app (a full bulkhead, a
    shed request) is answered 503 with ``Retry-After``.
    """

    def __init__(
        self, app: WSGIApp, service: str, version: str, *args: Any,
        **options: Unpack[ServingOptions],
    ) -> None:
        if not callable(app):
            raise ValueError(f"app must be a WSGI application, got {app!r}")
        super().__init__(service, version, *args, **options)
        self.app = app

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        arrival = Arrival(self, environ)
        echo = (self.request_id_header, arrival.request_id)
        if arrival.expired:
            return _answer(start_response, 504, b"deadline exceeded before the request was "
                           b"handled", echo)
        # The request's context lives in its own copy, entered again while the server reads
        # the body, so a streamed response still sees the deadline and the ids.
        scope = contextvars.copy_context()
        return scope.run(self._handle, environ, start_response, arrival, echo, scope)

    def _handle(self, environ: Environ, start_response: StartResponse, arrival: Arrival,
                echo: tuple[str, str], scope: contextvars.Context) -> Iterable[bytes]:
        self.enter(environ, arrival)
        started = False
        lower = echo[0].lower()

        def start_with_id(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            nonlocal started
            started = True
            headers = [h for h in headers if h[0].lower() != lower]
            headers.append(echo)
            return start_response(status, headers, *exc_info)

        try:
            if self.bulkhead is None:
                body = self.app(environ, start_with_id)
            else:
                body = self.bulkhead.call(self.app, environ, start_with_id)
        except (Rejected, DeadlineExceeded) as exc:
            answer = refusal(exc)
            if started or answer is None:
                raise
            status, text, retry_after = answer
            return _answer(start_response, status, text.encode(), echo, retry_after)
        return _Body(body, scope)


class _Body:
    """The app's response iterable, read inside the request's context; closed as WSGI says."""

    __slots__ = ("_body", "_scope")

    def __init__(self, body: Iterable[bytes], scope: contextvars.Context) -> None:
        self._body = body
        self._scope = scope

    def __iter__(self) -> Iterator[bytes]:
        iterator = iter(self._body)
        run = self._scope.run
        while True:
            try:
                chunk = run(next, iterator)
            except StopIteration:
                return
            yield chunk

    def close(self) -> None:
        close = getattr(self._body, "close", None)
        if close is not None:
            self._scope.run(close)


def _answer(start_response: StartResponse, status: int, body: bytes, echo: tuple[str, str],
            retry_after: int | None = None) -> list[bytes]:
    reason = {503: "Service Unavailable", 504: "Gateway Timeout"}[status]
    headers = [("Content-Type", "text/plain; charset=utf-8"),
               ("Content-Length", str(len(body))), echo]
    if retry_after is not None:
        headers.append(("Retry-After", str(retry_after)))
    start_response(f"{status} {reason}", headers)
    return [body]


# --- Idempotency-Key ---------------------------------------------------------------------------


class IdempotencyMiddleware:
    """Run each ``Idempotency-Key`` once and replay its response to retries (WSGI).

    The same arguments and rules as ``stoic.idempotency.asgi.IdempotencyMiddleware``, from the
    same code (``stoic.idempotency.http.HttpIdempotency``): 400 for a missing (``required``)
    or malformed key, 422 for a key reused with a different request, 409 with
    ``Retry-After`` while the first request runs, the stored response with
    ``Idempotent-Replayed: true`` after it completed; a response saying the request never ran
    (``not_executed``, any 5xx) gives the key back. ``scope`` is a callable on the WSGI
    environ returning the principal (user, tenant) keys are separate for.

    WSGI cannot tell a routing 404 from a handler's own, so every 404 releases the key (the
    ASGI twin stores a 404 after a matched route); use ``store_status`` to decide otherwise.
    The request body is read in full (at most ``max_request_body`` bytes, 413 above) to
    fingerprint it, and handed to the app again. The last body chunk is sent after the record
    is stored, so a client that has the whole reply always gets the replay.
    """

    def __init__(
        self, app: WSGIApp, store: Store, *, scope: Callable[[Environ], str | None] | None = None,
        **options: Unpack[HttpIdempotencyOptions],
    ) -> None:
        if not callable(app):
            raise ValueError(f"app must be a WSGI application, got {app!r}")
        if scope is not None and not callable(scope):
            raise TypeError(f"scope must be callable, got {scope!r}")
        header_name("header", options.get("header", "Idempotency-Key"))
        self.app = app
        self.scope = scope
        self.rules = HttpIdempotency(store, **options)
        self._header_key = environ_key(self.rules.header)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        rules = self.rules
        method = environ.get("REQUEST_METHOD", "")
        if not rules.applies(method):
            return self.app(environ, start_response)
        raw = environ.get(self._header_key)
        key = rules.key(raw.encode("latin-1") if raw is not None else None)
        if key is None:
            return self.app(environ, start_response)
        if isinstance(key, Reply):
            return _reply(start_response, key)
        body = self._read(environ)
        if isinstance(body, Reply):
            return _reply(start_response, body)
        principal = str(self.scope(environ) or "") if self.scope is not None else ""
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        call = rules.call(key, method, path, environ.get("QUERY_STRING", ""), body, principal)
        try:
            settled = rules.settle(call)
        except CodecError:
            return _reply(start_response, rules.unreadable())
        if settled.lease is None:
            return _reply(start_response, rules.answer(settled) or rules.unreadable())
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        work = contextvars.copy_context()  # the lease is held in it while the body is read
        return work.run(self._run, settled.lease, environ, start_response, work)

    def _read(self, environ: Environ) -> bytes | Reply:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > self.rules.max_request_body:
            return self.rules.too_large()
        stream = environ.get("wsgi.input")
        if stream is None:
            return b""
        if length <= 0:
            if not environ.get("wsgi.input_terminated"):
                return b""
            body: bytes = stream.read(self.rules.max_request_body + 1)
            return self.rules.too_large() if len(body) > self.rules.max_request_body else body
        return bytes(stream.read(length))

    def _run(self, lease: Lease, environ: Environ, start_response: StartResponse,
             work: contextvars.Context) -> Iterable[bytes]:
        holding(lease).__enter__()  # left with the context copy, never restored
        recorder = self.rules.recorder()

        def start(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            recorder.start(int(status.split(" ", 1)[0]), [
                (n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in headers])
            write = start_response(status, headers, *exc_info)

            def recording_write(chunk: bytes) -> None:  # PEP 3333's legacy write()
                recorder.body(chunk, True)
                write(chunk)

            return recording_write

        try:
            result = self.app(environ, start)
        except BaseException:
            lease.finish(None)
            raise
        return _Recorded(result, lease, recorder, work)


class _Recorded:
    """The app's body, recorded; the record is stored before its last chunk is sent."""

    __slots__ = ("_done", "_lease", "_recorder", "_result", "_work")

    def __init__(self, result: Iterable[bytes], lease: Lease, recorder: ResponseRecorder,
                 work: contextvars.Context) -> None:
        self._result, self._lease, self._recorder, self._work = result, lease, recorder, work
        self._done = False

    def __iter__(self) -> Iterator[bytes]:
        run = self._work.run
        chunks = run(iter, self._result)
        held: bytes | None = None  # one chunk behind: the last must wait for the record
        try:
            while True:
                try:
                    chunk = run(next, chunks)
                except StopIteration:
                    break
                if held is not None:
                    self._recorder.body(held, True)
                    yield held
                held = chunk
            last = held if held is not None else b""
            self._recorder.body(last, False)
            self._finish(self._recorder.stored())
            yield last
        finally:
            self._finish(None)  # failed, or the server stopped reading: give the key back

    def _finish(self, response: str | None) -> None:
        if not self._done:
            self._done = True
            self._lease.finish(response)

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                self._work.run(close)
        finally:
            self._finish(None)


def _reply(start_response: StartResponse, reply: Reply) -> list[bytes]:
    try:
        phrase = HTTPStatus(reply.status).phrase
    except ValueError:
        phrase = "Unknown"
    start_response(f"{reply.status} {phrase}",
                   [(n.decode("latin-1"), v.decode("latin-1")) for n, v in reply.headers])
    return [reply.body]
