"""gRPC (grpcio) interceptors: safe retries, breakers and deadlines out; context and once-only in.

Client side, sync and asyncio:

    channel = grpc.intercept_channel(grpc.insecure_channel(target),
                                     ResilientInterceptor(target, idempotent_methods={...}))
    channel = grpc.aio.insecure_channel(target,
                                        interceptors=[ResilientAioInterceptor(target)])

A unary call runs its attempts under ``stoic.Retry`` with the rules of stoic's HTTP clients,
decided by the same code (``stoic.integrations._http.Core``): the status code is classified
(UNAVAILABLE transient, RESOURCE_EXHAUSTED throttled, DEADLINE_EXCEEDED and UNKNOWN may have
taken effect, INVALID_ARGUMENT and the like permanent); the server's
``grpc-retry-pushback-ms`` trailer is waited out (a negative one stops the retries). A call
whose outcome is unknown is retried only when its method is listed in ``idempotent_methods``
or it carries an ``idempotency-key`` entry, which is generated once per call with
``idempotency_keys=True`` and sent on every attempt. Every attempt goes through the
target's circuit breaker (``grpc:<target>``) and optional bulkhead, and runs with the gRPC
deadline set to the time left before ``stoic.deadline`` (or the call's own timeout when it
is shorter); a DEADLINE_EXCEEDED caused by stoic's deadline is raised as
``stoic.DeadlineExceeded``, chained to the ``RpcError``. The request id and W3C trace
context go out as metadata. Streaming calls get the deadline and metadata, never a retry:
a stream cannot be replayed.

Server side, sync and asyncio (``StoicServerInterceptor``, ``StoicAioServerInterceptor``):
each unary-request call runs inside ``stoic.deadline`` (the caller's gRPC deadline, capped
by ``max_deadline``), with ``request_id`` (from ``x-request-id`` or a new one, echoed in
the trailing metadata), ``user_id``, ``service`` and ``version`` bound, and the caller's
trace continued. With a ``bulkhead`` a full server answers RESOURCE_EXHAUSTED with a
``grpc-retry-pushback-ms`` trailer; a call already out of time is answered DEADLINE_EXCEEDED
without running. With a ``store``, a unary call carrying an ``idempotency-key`` runs once per
key (``stoic.idempotent``): a repeat gets the stored reply bytes, a repeat while the first
runs gets ABORTED (retryable), a repeat with a different request INVALID_ARGUMENT.
Response-streaming methods pass through untouched.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc  # type: ignore[import-untyped, import-not-found, unused-ignore]
import grpc.aio  # type: ignore[import-untyped, import-not-found, unused-ignore]

from .._validate import header_name
from ..context import bind, deadline, using_idempotency_key
from ..errors import (
    BulkheadFullError,
    DeadlineExceeded,
    IdempotencyKeyInUseError,
    IdempotencyKeyMismatchError,
)
from ..outcome import Outcome
from ..policies.base import Policy
from ._http import (
    DEADLINE_HEADER,
    REQUEST_ID_HEADER,
    BreakerFactory,
    BulkheadFactory,
    Core,
    Plan,
    raise_if_deadline,
)
from ._serving import check_max_deadline, check_server, request_id, user_of

__all__ = [
    "IDEMPOTENCY_KEY",
    "PUSHBACK_KEY",
    "ResilientAioInterceptor",
    "ResilientInterceptor",
    "StoicAioServerInterceptor",
    "StoicServerInterceptor",
]

_log = logging.getLogger("stoic.grpc")

#: The metadata entry that makes a call idempotent (gRPC metadata names are lower case).
IDEMPOTENCY_KEY = "idempotency-key"
#: The trailer in which a server asks the client to wait (milliseconds) or not retry (< 0).
PUSHBACK_KEY = "grpc-retry-pushback-ms"

# A server reads "no deadline" as a time left this large or larger.
_NO_DEADLINE = 1e8


class _Metadata(dict[str, Any]):
    """A call's metadata as a case-insensitive mapping for ``Core``; repeats kept on output."""

    __slots__ = ("added", "pairs")

    def __init__(self, pairs: Iterable[tuple[str, Any]] | None) -> None:
        super().__init__()
        self.pairs = tuple(pairs) if pairs else ()
        for key, value in self.pairs:
            dict.__setitem__(self, key.lower(), value)
        self.added: dict[str, Any] = {}

    def __setitem__(self, key: str, value: Any) -> None:
        key = key.lower()
        super().__setitem__(key, value)
        self.added[key] = value

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    def out(self) -> tuple[tuple[str, Any], ...]:
        added = self.added
        kept = tuple((k, v) for k, v in self.pairs if k.lower() not in added)
        return kept + tuple(added.items())


class _Details(
    collections.namedtuple(
        "_Details",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,  # type: ignore[misc]
):
    """The sync call details of one attempt (the deadline and metadata are per attempt)."""


def _method_name(method: str | bytes) -> str:
    return method.decode("ascii", "replace") if isinstance(method, bytes) else method


class _Client(Core):
    """What both client interceptors share: configuration, per-call plan, per-attempt details."""

    def __init__(
        self,
        target: str,
        policy: Policy | None = None,
        idempotent_methods: Iterable[str] = (),
        per_host: bool = True,
        idempotency_keys: bool = True,
        propagate: bool = True,
        *,
        breaker: BreakerFactory | None = None,
        bulkhead: BulkheadFactory | None = None,
        deadline_header: str = DEADLINE_HEADER,
        request_id_header: str = REQUEST_ID_HEADER,
    ) -> None:
        if not isinstance(target, str) or not target:
            raise ValueError(f"target must be the channel's target, e.g. 'host:50051', got "
                             f"{target!r}")
        if isinstance(idempotent_methods, str):
            raise ValueError(f"idempotent_methods must be a collection of '/pkg.Service/Method' "
                             f"names, got {idempotent_methods!r}")
        methods = frozenset(idempotent_methods)
        for method in methods:
            if not isinstance(method, str) or not method.startswith("/") or method.count("/") != 2:
                raise ValueError(f"idempotent_methods must hold '/pkg.Service/Method' names, got "
                                 f"{method!r}")
        super().__init__(
            policy, per_host, idempotency_keys, propagate, breaker, bulkhead,
            deadline_header, request_id_header,
        )
        self.target = target
        self.idempotent_methods = methods
        self._breaker_name = f"grpc:{target}"

    def host_policy(self) -> Policy | None:
        """The breaker (and bulkhead) this interceptor applies to calls to its target."""
        return self._host_policy(self.target)

    def _host_policy(self, url: Any) -> Policy | None:
        return None if self._hosts is None else self._hosts.get(self._breaker_name)

    def _plan_call(self, details: Any, metadata: _Metadata, replayable: bool) -> Plan:
        # gRPC runs on HTTP POST; an idempotent method is told to Core as an idempotent verb,
        # which is what gRPC itself does for NO_SIDE_EFFECTS methods over gRPC-Web (GET).
        method = _method_name(details.method)
        verb = "PUT" if method in self.idempotent_methods else "POST"
        return self._plan(verb, metadata, replayable, method, details.timeout)

    def _timeout(self, metadata: _Metadata, plan: Plan) -> float | None:
        """Per attempt: refuse after the deadline, set the metadata; the gRPC timeout."""
        left = self._begin_attempt(metadata, plan)
        timeout: float | None = plan.timeouts
        if left is not None and (timeout is None or timeout > left):
            timeout = left
        return timeout

    def _details(self, details: Any, metadata: _Metadata, plan: Plan) -> _Details:
        return _Details(
            details.method, self._timeout(metadata, plan), metadata.out(), details.credentials,
            details.wait_for_ready, getattr(details, "compression", None),
        )

    def _aio_details(self, details: Any, metadata: _Metadata, plan: Plan) -> Any:
        return grpc.aio.ClientCallDetails(
            details.method, self._timeout(metadata, plan),
            grpc.aio.Metadata(*metadata.out()), details.credentials, details.wait_for_ready,
        )

    def _stream_plan(self, details: Any) -> tuple[_Metadata, Plan]:
        metadata = _Metadata(details.metadata)
        return metadata, self._plan_call(details, metadata, False)


def _deadline_failure(exc: Any, plan: Plan) -> None:
    if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
        raise_if_deadline(exc, plan)


class ResilientInterceptor(
    _Client,
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """For ``grpc.intercept_channel``: stoic's retries, breakers and deadlines on a channel.

    Args:
        target: the channel's target (``"host:port"``); names the breaker ``grpc:<target>``.
        policy: the policy around each unary call (a ``stoic.Retry`` or a Pipeline with one);
            default 3 attempts, exponential backoff capped at 10 s, a 10% retry budget.
        idempotent_methods: full method names (``"/shop.Orders/Get"``) safe to resend after
            an UNKNOWN outcome (a lost reply, DEADLINE_EXCEEDED).
        per_host, idempotency_keys, propagate, breaker, bulkhead, deadline_header,
        request_id_header: as for ``stoic.integrations.httpx.ResilientTransport``; the
            generated key travels as the ``idempotency-key`` metadata entry.
    """

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = _Metadata(details.metadata)
        plan = self._plan_call(details, metadata, True)
        policy = plan.policy
        if policy is None:  # not reached: a unary request can always be sent again
            return self._attempt(continuation, details, request, plan, metadata)
        if plan.key is None:
            return policy.call(self._attempt, continuation, details, request, plan, metadata)
        with using_idempotency_key(plan.key):
            return policy.call(self._attempt, continuation, details, request, plan, metadata)

    def _attempt(
        self, continuation: Any, details: Any, request: Any, plan: Plan, metadata: _Metadata
    ) -> Any:
        attempt = self._details(details, metadata, plan)
        if plan.host is None:
            return self._send(continuation, attempt, request, plan)
        return plan.host.call(self._send, continuation, attempt, request, plan)

    @staticmethod
    def _send(continuation: Any, details: _Details, request: Any, plan: Plan) -> Any:
        outcome = continuation(details, request)
        try:
            outcome.result()
        except grpc.RpcError as exc:
            _deadline_failure(exc, plan)
            raise
        return outcome

    def _propagated(self, details: Any) -> _Details:
        metadata, plan = self._stream_plan(details)
        return self._details(details, metadata, plan)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._propagated(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._propagated(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._propagated(details), requests)


class ResilientAioInterceptor(
    _Client,
    grpc.aio.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.aio.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.aio.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.aio.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """The ``grpc.aio`` twin of ``ResilientInterceptor``; same arguments and rules.

    Backoff waits use ``stoic.clock.asleep``: they never block the event loop.
    """

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = _Metadata(details.metadata)
        plan = self._plan_call(details, metadata, True)
        policy = plan.policy
        if policy is None:  # not reached: a unary request can always be sent again
            return await self._attempt(continuation, details, request, plan, metadata)
        if plan.key is None:
            return await policy.acall(self._attempt, continuation, details, request, plan, metadata)
        with using_idempotency_key(plan.key):
            return await policy.acall(self._attempt, continuation, details, request, plan, metadata)

    async def _attempt(
        self, continuation: Any, details: Any, request: Any, plan: Plan, metadata: _Metadata
    ) -> Any:
        attempt = self._aio_details(details, metadata, plan)
        if plan.host is None:
            return await self._send(continuation, attempt, request, plan)
        return await plan.host.acall(self._send, continuation, attempt, request, plan)

    @staticmethod
    async def _send(continuation: Any, details: Any, request: Any, plan: Plan) -> Any:
        call = await continuation(details, request)
        try:
            await call
        except grpc.aio.AioRpcError as exc:
            _deadline_failure(exc, plan)
            raise
        return call

    def _propagated(self, details: Any) -> Any:
        metadata, plan = self._stream_plan(details)
        return self._aio_details(details, metadata, plan)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._propagated(details), request)

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._propagated(details), requests)

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._propagated(details), requests)


# --- server side ----------------------------------------------------------------------------

UserIdHook = Callable[[dict[str, Any]], "str | None"]


class _Arrival:
    """What one incoming call brought: its time budget, ids, and the trace to continue."""

    __slots__ = ("expired", "metadata", "request_id", "seconds", "user_id")

    def __init__(self, interceptor: _Server, context: Any) -> None:
        metadata = {m.key: m.value for m in context.invocation_metadata() or ()}
        self.metadata = metadata
        self.request_id = request_id(metadata.get(interceptor.request_id_header))
        left = context.time_remaining()
        seconds = None if left is None or left >= _NO_DEADLINE else float(left)
        cap = interceptor.max_deadline
        if cap is not None and (seconds is None or seconds > cap):
            seconds = cap
        self.seconds = seconds
        self.expired = seconds is not None and seconds <= 0 and interceptor.shed_when_expired
        self.user_id = user_of(interceptor.user_id, metadata)


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
    ) -> None:
        check_server(service, version, bulkhead, user_id, "the metadata dict")
        self.service = service
        self.version = version
        self.max_deadline = check_max_deadline(max_deadline)
        self.shed_when_expired = bool(shed_when_expired)
        self.bulkhead = bulkhead
        self.user_id = user_id
        self.request_id_header = header_name("request_id_header", request_id_header).lower()
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
                      service=self.service, version=self.version):
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
    """

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        return self._wrap(continuation(handler_call_details),
                          _method_name(handler_call_details.method))

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
                    refusal = self._refusal(exc)
                    if refusal is None:
                        raise
                    code, text, pushback = refusal
                    context.set_trailing_metadata(self._trailers(arrival, pushback))
                    context.abort(code, text)

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


class StoicAioServerInterceptor(_Server, grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """The ``grpc.aio`` server twin of ``StoicServerInterceptor``; same arguments and rules.

    The wrapped handlers must be coroutine functions (as ``grpc.aio`` servicers are).
    """

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        return self._wrap(await continuation(handler_call_details),
                          _method_name(handler_call_details.method))

    def _behaviour(self, behaviour: Any, keyed: tuple[str, Any, Any] | None) -> Any:
        bulkhead = self.bulkhead

        async def run(request: Any, context: Any) -> Any:
            arrival = _Arrival(self, context)
            if arrival.expired:
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                    "deadline exceeded before the call was handled")
            context.set_trailing_metadata(self._trailers(arrival, None))
            with self._scope(arrival):
                try:
                    if keyed is not None:
                        return await self._once(behaviour, keyed, request, context, arrival)
                    if bulkhead is None:
                        return await behaviour(request, context)
                    return await bulkhead.acall(behaviour, request, context)
                except Exception as exc:
                    refusal = self._refusal(exc)
                    if refusal is None:
                        raise
                    code, text, pushback = refusal
                    context.set_trailing_metadata(self._trailers(arrival, pushback))
                    await context.abort(code, text)

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
