"""gRPC server interceptors (``stoic.integrations.grpc``): deadline, context, shedding, once-only."""

from __future__ import annotations

import base64
import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import grpc  # type: ignore[import-untyped, import-not-found, unused-ignore]
import grpc.aio  # type: ignore[import-untyped, import-not-found, unused-ignore]

from .._validate import header_name
from ..context import bind, deadline, hop
from ..errors import (
    BulkheadFullError,
    DeadlineExceeded,
    IdempotencyKeyInUseError,
    IdempotencyKeyMismatchError,
)
from ..outcome import Outcome
from ..policies.base import Policy
from ._http import ATTEMPT_HEADER, RETRIED_HEADER, RETRY_BELOW_HEADER
from ._serving import budget_seconds, check_max_deadline, check_server, request_id, user_of
from .grpc_client import IDEMPOTENCY_KEY, method_name

__all__ = ["PUSHBACK_KEY", "StoicAioServerInterceptor", "StoicServerInterceptor", "UserIdHook"]

_log = logging.getLogger("stoic.grpc")

#: The trailer in which a server asks the client to wait (milliseconds) or not retry (< 0).
PUSHBACK_KEY = "grpc-retry-pushback-ms"
# The hop guard's entries, as HTTP's headers in gRPC's lower case: the caller's attempt,
# whether retries are allowed below, and (a trailer) that a failure was retried below.
_ATTEMPT = ATTEMPT_HEADER.lower()
_RETRY_BELOW = RETRY_BELOW_HEADER.lower()
_RETRIED = RETRIED_HEADER.lower()

# A server reads "no deadline" as a time left this large or larger.
_NO_DEADLINE = 1e8

UserIdHook = Callable[[dict[str, Any]], "str | None"]


class _Arrival:
    """What one incoming call brought: its time budget, ids, and the trace to continue."""

    __slots__ = ("expired", "hop", "metadata", "request_id", "seconds", "user_id")

    def __init__(self, interceptor: _Server, context: Any) -> None:
        metadata = {m.key: m.value for m in context.invocation_metadata() or ()}
        self.metadata = metadata
        self.request_id = request_id(metadata.get(interceptor.request_id_header))
        left = context.time_remaining()
        seconds = None if left is None or left >= _NO_DEADLINE else float(left)
        # gRPC rounds the timeout it sends (up, to fewer digits); the caller's own statement
        # of its time left, where it sent one, is exact: the smaller of the two holds
        stated = budget_seconds(metadata.get(interceptor.deadline_header), None,
                                interceptor.deadline_header)
        if stated is not None and (seconds is None or stated < seconds):
            seconds = stated
        cap = interceptor.max_deadline
        if cap is not None and (seconds is None or seconds > cap):
            seconds = cap
        self.seconds = seconds
        self.expired = seconds is not None and seconds <= 0 and interceptor.shed_when_expired
        self.user_id = user_of(interceptor.user_id, metadata)
        self.hop = interceptor.hop_of(metadata)


class _Server:
    """Configuration and the per-call scaffolding both server interceptors share."""

    def __init__(
        self,
        service: str,
        version: str,
        *,
        max_deadline: float | None = None,
        shed_when_expired: bool = True,
        bulkhead: Policy | None = None,
        user_id: UserIdHook | None = None,
        store: Any = None,
        ttl: float = 86400.0,
        lease: float = 60.0,
        request_id_header: str = "x-request-id",
        deadline_header: str = "x-request-timeout-ms",
        hop_guard: bool | str = True,
    ) -> None:
        if not (hop_guard is True or hop_guard is False or hop_guard == "deepest"):
            raise ValueError(f"hop_guard must be True, False or 'deepest', got {hop_guard!r}")
        check_server(service, version, bulkhead, user_id, "the metadata dict")
        self.service = service
        self.version = version
        self.max_deadline = check_max_deadline(max_deadline)
        self.shed_when_expired = bool(shed_when_expired)
        self.bulkhead = bulkhead
        self.user_id = user_id
        self.request_id_header = header_name("request_id_header", request_id_header).lower()
        self.deadline_header = header_name("deadline_header", deadline_header).lower()
        self.hop_guard = hop_guard is not False
        self.hop_deepest = hop_guard == "deepest"
        self.store = store
        self._idempotency: dict[str, Any] = {}
        if store is not None:
            from ..idempotency import Idempotent

            self._make_idempotent: Callable[[str], Any] = lambda method: Idempotent(
                store, key=lambda raw, key: key, fingerprint=lambda raw, key: raw,
                ttl=ttl, lease=lease, cache=(Outcome.SUCCESS,), namespace=f"grpc:{method}",
            )
        from ..observability.otel import extract  # None at once unless tracing is on

        self._extract = extract

    def hop_of(self, metadata: dict[str, Any]) -> hop | None:
        """The caller's retry signal for the hop guard, when it sent one (or "deepest")."""
        below = metadata.get(_RETRY_BELOW) if self.hop_guard else None
        if below is None and not self.hop_deepest:
            return None
        below = str(below or "1").strip()
        attempt = str(metadata.get(_ATTEMPT) or "1")
        return hop(int(attempt) if attempt.isdigit() else 1, below != "0",
                   deepest=self.hop_deepest or below == "deepest")

    def _mark_retried(self, arrival: _Arrival, context: Any) -> None:
        """A failure escapes the call: when it was retried below and only the deepest hop
        retries, say so in the trailers (``x-stoic-retried``, and a pushback of -1, which
        gRPC's own retry design reads as "do not retry")."""
        bound = arrival.hop
        if bound is not None and bound.deepest and bound.retried:
            context.set_trailing_metadata(
                (*self._trailers(arrival, None), (PUSHBACK_KEY, "-1"), (_RETRIED, "1")))

    def _wrap(self, handler: Any, method: str) -> Any:
        if handler is None or handler.response_streaming:
            return handler
        if handler.request_streaming:
            return handler._replace(stream_unary=self._behaviour(handler.stream_unary, None))
        if self.store is None:
            return handler._replace(unary_unary=self._behaviour(handler.unary_unary, None))
        codec = (handler.request_deserializer, handler.response_serializer)
        return handler._replace(
            unary_unary=self._behaviour(handler.unary_unary, (method, *codec)),
            request_deserializer=None, response_serializer=None,
        )

    def _behaviour(self, behaviour: Any, keyed: tuple[str, Any, Any] | None) -> Any:
        raise NotImplementedError

    def _idempotent(self, method: str) -> Any:
        policy = self._idempotency.get(method)
        if policy is None:
            policy = self._idempotency[method] = self._make_idempotent(method)
        return policy

    @contextlib.contextmanager
    def _scope(self, arrival: _Arrival) -> Iterator[None]:
        token = None
        try:
            ctx = self._extract(list(arrival.metadata.items()))
            if ctx is not None:
                from opentelemetry import context as otel_context

                token = otel_context.attach(ctx)
        except Exception:  # a bad traceparent must not fail the call
            _log.debug("stoic: trace context extraction failed", exc_info=True)
        try:
            with bind(request_id=arrival.request_id, user_id=arrival.user_id,
                      service=self.service, version=self.version), \
                    arrival.hop if arrival.hop is not None else contextlib.nullcontext():
                if arrival.seconds is None:
                    yield
                else:
                    with deadline(max(arrival.seconds, 0.0)):
                        yield
        finally:
            if token is not None:
                from opentelemetry import context as otel_context

                otel_context.detach(token)

    def _refusal(self, exc: Exception) -> tuple[Any, str, float | None] | None:
        """How a stoic error that escaped the handler is answered: code, details, pushback."""
        if isinstance(exc, BulkheadFullError):
            retry_after = exc.retry_after if exc.retry_after is not None else 1.0
            return grpc.StatusCode.RESOURCE_EXHAUSTED, "overloaded, try again later", retry_after
        if isinstance(exc, DeadlineExceeded):
            return grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded while handling", None
        if isinstance(exc, IdempotencyKeyInUseError):
            return grpc.StatusCode.ABORTED, "a call with this idempotency-key is running", None
        if isinstance(exc, IdempotencyKeyMismatchError):
            return (grpc.StatusCode.INVALID_ARGUMENT,
                    "idempotency-key reused with a different request", None)
        return None

    def _refuse(self, exc: Exception, arrival: _Arrival, context: Any) -> tuple[Any, str] | None:
        """For a stoic error that escaped the handler: set the trailers (with the pushback)
        and return the code and details to abort with; None to let ``exc`` propagate."""
        refusal = self._refusal(exc)
        if refusal is None:
            return None
        code, text, pushback = refusal
        context.set_trailing_metadata(self._trailers(arrival, pushback))
        return code, text

    def _trailers(self, arrival: _Arrival, pushback: float | None) -> tuple[tuple[str, str], ...]:
        echo = ((self.request_id_header, arrival.request_id),)
        if pushback is None:
            return echo
        return (*echo, (PUSHBACK_KEY, str(max(0, math.ceil(pushback * 1000)))))


def _encode(serializer: Any, response: Any) -> str:
    raw = serializer(response) if serializer is not None else response
    return base64.b64encode(raw).decode("ascii")


class StoicServerInterceptor(_Server, grpc.ServerInterceptor):  # type: ignore[misc]
    """For ``grpc.server(..., interceptors=[...])``: deadline, context, shedding, once-only.

    Args:
        service, version: bound into the request context (logs carry them).
        max_deadline: the most time, in seconds, any call may have; calls without a gRPC
            deadline get this one. None: no cap.
        shed_when_expired: answer DEADLINE_EXCEEDED without running a call that arrives
            with no time left.
        bulkhead: a ``stoic.Bulkhead`` (or policy raising ``BulkheadFullError``) limiting
            concurrent calls; a refusal is RESOURCE_EXHAUSTED with ``grpc-retry-pushback-ms``.
        user_id: ``metadata dict -> str | None``, the authenticated user for the context.
        store: an idempotency store (``stoic.idempotency.SQLiteStore``, ``RedisStore``...);
            with one, a unary call with an ``idempotency-key`` entry runs once per key.
        ttl, lease: as for ``stoic.idempotent``.
        request_id_header: the metadata entry the request id comes from and is echoed to.
        deadline_header: the metadata entry with the caller's time left in milliseconds
            (stoic's gRPC client sends it beside the gRPC deadline): a call's budget is the
            smaller of the two, as gRPC rounds the timeout it sends.
        hop_guard: bind the caller's ``x-stoic-attempt`` / ``x-stoic-retry-below`` entries
            (``stoic.context.hop``), so stoic clients in the handler do not retry what the
            caller already retries (True: retry at the edge). ``"deepest"``: retry at the
            hop nearest the failure only, also for callers that sent no entry; a failure
            retried below then ends with the trailers ``x-stoic-retried: 1`` and
            ``grpc-retry-pushback-ms: -1``. False: off. See docs/hop-guard.md.
    """

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        return self._wrap(continuation(handler_call_details),
                          method_name(handler_call_details.method))

    def _behaviour(self, behaviour: Any, keyed: tuple[str, Any, Any] | None) -> Any:
        bulkhead = self.bulkhead

        def run(request: Any, context: Any) -> Any:
            arrival = _Arrival(self, context)
            if arrival.expired:
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                              "deadline exceeded before the call was handled")
            context.set_trailing_metadata(self._trailers(arrival, None))
            with self._scope(arrival):
                try:
                    if keyed is not None:
                        return self._once(behaviour, keyed, request, context, arrival)
                    if bulkhead is None:
                        return behaviour(request, context)
                    return bulkhead.call(behaviour, request, context)
                except Exception as exc:
                    refusal = self._refuse(exc, arrival, context)
                    if refusal is None:
                        self._mark_retried(arrival, context)
                        raise
                    context.abort(*refusal)

        return run

    def _once(
        self, behaviour: Any, keyed: tuple[str, Any, Any], raw: bytes, context: Any,
        arrival: _Arrival,
    ) -> bytes:
        method, deserializer, serializer = keyed

        def handle(raw: bytes, key: str | None) -> str:
            request = deserializer(raw) if deserializer is not None else raw
            if self.bulkhead is None:
                return _encode(serializer, behaviour(request, context))
            return _encode(serializer, self.bulkhead.call(behaviour, request, context))

        key = arrival.metadata.get(IDEMPOTENCY_KEY)
        if key is None:
            text = handle(raw, None)
        else:
            text = self._idempotent(method).call(handle, raw, key)
        return base64.b64decode(text)


class _MarkingContext:
    """A ``grpc.aio`` servicer context whose ``abort`` first marks a failure retried below
    (``grpc.aio`` sends the status, and its trailers, inside ``abort``); all else is the
    context's own."""

    def __init__(self, context: Any, server: _Server, arrival: _Arrival) -> None:
        self._context, self._server, self._arrival = context, server, arrival

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def abort(self, code: Any, details: str = "", trailing_metadata: Any = ()) -> Any:
        self._server._mark_retried(self._arrival, self._context)
        if trailing_metadata:  # the handler's own trailers, and the mark with them
            bound = self._arrival.hop
            if bound is not None and bound.retried:
                trailing_metadata = (*tuple(trailing_metadata), (PUSHBACK_KEY, "-1"),
                                     (_RETRIED, "1"))
        return await self._context.abort(code, details, trailing_metadata)


class StoicAioServerInterceptor(_Server, grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """The ``grpc.aio`` server twin of ``StoicServerInterceptor``; same arguments and rules.

    The wrapped handlers must be coroutine functions (as ``grpc.aio`` servicers are).
    """

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        return self._wrap(await continuation(handler_call_details),
                          method_name(handler_call_details.method))

    def _behaviour(self, behaviour: Any, keyed: tuple[str, Any, Any] | None) -> Any:
        bulkhead = self.bulkhead

        async def run(request: Any, context: Any) -> Any:
            arrival = _Arrival(self, context)
            if arrival.expired:
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                    "deadline exceeded before the call was handled")
            context.set_trailing_metadata(self._trailers(arrival, None))
            if arrival.hop is not None and arrival.hop.deepest:
                context = _MarkingContext(context, self, arrival)
            with self._scope(arrival):
                try:
                    if keyed is not None:
                        return await self._once(behaviour, keyed, request, context, arrival)
                    if bulkhead is None:
                        return await behaviour(request, context)
                    return await bulkhead.acall(behaviour, request, context)
                except Exception as exc:
                    refusal = self._refuse(exc, arrival, context)
                    if refusal is None:
                        self._mark_retried(arrival, context)
                        raise
                    await context.abort(*refusal)

        return run

    async def _once(
        self, behaviour: Any, keyed: tuple[str, Any, Any], raw: bytes, context: Any,
        arrival: _Arrival,
    ) -> bytes:
        method, deserializer, serializer = keyed

        async def handle(raw: bytes, key: str | None) -> str:
            request = deserializer(raw) if deserializer is not None else raw
            if self.bulkhead is None:
                return _encode(serializer, await behaviour(request, context))
            return _encode(serializer, await self.bulkhead.acall(behaviour, request, context))

        key = arrival.metadata.get(IDEMPOTENCY_KEY)
        if key is None:
            text = await handle(raw, None)
        else:
            text = await self._idempotent(method).acall(handle, raw, key)
        return base64.b64decode(text)
