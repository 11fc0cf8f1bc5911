"""gRPC client interceptors (``stoic.integrations.grpc``): retries, breakers and deadlines out."""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import grpc  # type: ignore[import-untyped, import-not-found, unused-ignore]
import grpc.aio  # type: ignore[import-untyped, import-not-found, unused-ignore]

from ..context import note_retried, using_idempotency_key
from ..policies.base import Policy
from ._http import RETRIED_HEADER, ClientOptions, Core, Plan, raise_timeout, retried

if TYPE_CHECKING:  # Python 3.10 has no typing.Unpack; only annotations use it
    from typing_extensions import Unpack

__all__ = ["IDEMPOTENCY_KEY", "ResilientAioInterceptor", "ResilientInterceptor", "method_name"]

#: The metadata entry that makes a call idempotent (gRPC metadata names are lower case).
IDEMPOTENCY_KEY = "idempotency-key"
# The hop guard's trailer that says a failure was retried below (metadata is lower case).
_RETRIED = RETRIED_HEADER.lower()


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


def method_name(method: str | bytes) -> str:
    """A full method name (``/pkg.Service/Method``) as text; grpcio may hand it over as bytes."""
    return method.decode("ascii", "replace") if isinstance(method, bytes) else method


class _Client(Core):
    """What both client interceptors share: configuration, per-call plan, per-attempt details."""

    def __init__(
        self, target: str, policy: Policy | None = None, idempotent_methods: Iterable[str] = (),
        *flags: bool, **options: Unpack[ClientOptions],
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
        super().__init__(policy, *flags, **options)
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
        method = method_name(details.method)
        verb = "PUT" if method in self.idempotent_methods else "POST"
        return self._plan(verb, metadata, replayable, method, details.timeout)

    def _timeout(self, metadata: _Metadata, plan: Plan) -> float | None:
        """Per attempt: refuse after the deadline, set the metadata; the gRPC timeout."""
        left = self._begin_attempt(metadata, plan)
        timeout: float | None = plan.timeouts
        if left is not None and (timeout is None or timeout > left):
            timeout = left
        return timeout

    def _details(self, details: Any, metadata: _Metadata, plan: Plan) -> Any:
        """The call details of one attempt, in the sync or the aio form."""
        raise NotImplementedError

    def _propagated(self, details: Any) -> Any:
        """A streaming call's details (sent once, not retried): deadline and metadata set."""
        metadata = _Metadata(details.metadata)
        return self._details(details, metadata, self._plan_call(details, metadata, False))


def _deadline_failure(exc: Any, plan: Plan) -> None:
    """An attempt failed with ``exc``: a deadline running out raises ``DeadlineExceeded``; a
    failure the server marks as retried below already (``x-stoic-retried: 1``, with a
    ``grpc-retry-pushback-ms`` of -1 that keeps any client from retrying it) is noted, so
    the call being served passes it up marked in turn."""
    if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
        raise_timeout(exc, plan)
    try:
        trailers = exc.trailing_metadata() or ()
    except Exception:  # a call object that cannot say
        return
    if any(k == _RETRIED and v == "1" for k, v in trailers):
        note_retried()


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
        try:
            if plan.key is None:
                return policy.call(self._attempt, continuation, details, request, plan, metadata)
            with using_idempotency_key(plan.key):
                return policy.call(self._attempt, continuation, details, request, plan, metadata)
        except grpc.RpcError:
            retried(plan)  # failed for good after retries: the hop above must not retry it
            raise

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

    def _details(self, details: Any, metadata: _Metadata, plan: Plan) -> _Details:
        return _Details(
            details.method, self._timeout(metadata, plan), metadata.out(), details.credentials,
            details.wait_for_ready, getattr(details, "compression", None),
        )

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
        try:
            if plan.key is None:
                return await policy.acall(self._attempt, continuation, details, request, plan,
                                          metadata)
            with using_idempotency_key(plan.key):
                return await policy.acall(self._attempt, continuation, details, request, plan,
                                          metadata)
        except grpc.RpcError:
            retried(plan)
            raise

    async def _attempt(
        self, continuation: Any, details: Any, request: Any, plan: Plan, metadata: _Metadata
    ) -> Any:
        attempt = self._details(details, metadata, plan)
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

    def _details(self, details: Any, metadata: _Metadata, plan: Plan) -> Any:
        return grpc.aio.ClientCallDetails(
            details.method, self._timeout(metadata, plan),
            grpc.aio.Metadata(*metadata.out()), details.credentials, details.wait_for_ready,
        )

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._propagated(details), request)

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._propagated(details), requests)

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._propagated(details), requests)
