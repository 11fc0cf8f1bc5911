"""httpx transports that retry only what is safe, break circuits per host, and carry deadlines.

    client = httpx.Client(transport=ResilientTransport())          # or stoic.http.Client()
    with stoic.deadline(2.0):
        client.get("https://api.example.com/orders/42")

Each logical request runs its attempts under ``stoic.Retry`` (the ``policy``). An attempt
goes through the host's circuit breaker (named ``http:<host>``) and optional bulkhead, then
the inner transport. A response is classified with ``stoic.classify_status``: a failing one
(503, 502, 429, ...) is raised inside the loop as an ``httpx.HTTPStatusError``, so Retry and
the breaker see a failure; when Retry gives up the caller gets the last *response* back, as
plain httpx would have returned it. Transport errors are re-raised as httpx raised them.

What is retried is Retry's decision, told two facts: an idempotent method (GET, HEAD,
OPTIONS, PUT, DELETE, TRACE) runs under an idempotent copy of the policy, and a request
carrying an ``Idempotency-Key`` runs under that key. So a read timeout on a GET is retried,
on a bare POST it is not. With ``idempotency_keys=True`` a POST or PATCH without a key gets
one generated once, and every attempt of it carries the same key.

A request whose body is a stream (a generator, a file upload) cannot be sent twice and is
attempted once. Each attempt's timeouts shrink to the time left before ``stoic.deadline``;
no attempt starts after it (``stoic.DeadlineExceeded``), and a timeout that fires because the
deadline ran out is raised as ``DeadlineExceeded`` (a ``TimeoutError``) chained to httpx's.

A failure while *reading the body* happens after the transport returned, in your
``response.read()``; stoic cannot retry that part.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

import httpx

from ..context import using_idempotency_key
from ..policies.base import Policy
from ._http import (
    ClientOptions,
    Core,
    Plan,
    ended,
    failure_message,
    raise_timeout,
)

if TYPE_CHECKING:  # Python 3.10 has no typing.Unpack; only annotations use it
    from typing_extensions import Unpack

__all__ = ["ResilientAsyncTransport", "ResilientTransport"]

_PHASES = ("connect", "read", "write", "pool")

Inner = TypeVar("Inner", httpx.BaseTransport, httpx.AsyncBaseTransport)


class _StatusFailure(httpx.HTTPStatusError):
    """A failing response, raised only inside the retry loop; the caller gets the response.

    ``read`` (``aread``) reads a streamed response at once, so its connection goes back to
    the pool before any backoff, and rebuilds it around the raw body (``_rebuilt``)."""

    def read(self) -> _StatusFailure:
        response = self.response
        if not isinstance(response.stream, httpx.ByteStream):  # in memory already: keep it
            try:
                body = b"".join(response.iter_raw())
            finally:
                response.close()
            self.response = _rebuilt(response, body, self.request)
        return self

    async def aread(self) -> _StatusFailure:
        response = self.response
        if not isinstance(response.stream, httpx.ByteStream):  # in memory already: keep it
            try:
                body = b"".join([chunk async for chunk in response.aiter_raw()])
            finally:
                await response.aclose()
            self.response = _rebuilt(response, body, self.request)
        return self


def _shrink(timeouts: dict[str, float | None], left: float) -> dict[str, float | None]:
    if not timeouts:
        return dict.fromkeys(_PHASES, left)
    return {k: left if v is None or v > left else v for k, v in timeouts.items()}


def _rebuilt(response: httpx.Response, body: bytes, request: httpx.Request) -> httpx.Response:
    # A failing response is read at once (its connection goes back to the pool before any
    # backoff) and rebuilt around the raw, still encoded, body, so the client decodes it as
    # usual if it turns out to be the last one.
    return httpx.Response(
        response.status_code, headers=response.headers, stream=httpx.ByteStream(body),
        extensions=response.extensions, request=request,
    )


class _Transport(Core, Generic[Inner]):
    """The constructor and per-request planning of both transports; they differ in I/O only."""

    _inner_type: ClassVar[type[httpx.BaseTransport] | type[httpx.AsyncBaseTransport]]

    def __init__(
        self, inner: Inner | None = None, policy: Policy | None = None, *flags: bool,
        **options: Unpack[ClientOptions],
    ) -> None:
        kind = self._inner_type
        if inner is not None and not isinstance(inner, kind):
            raise ValueError(f"inner must be an httpx.{kind.__name__}, got {inner!r}")
        super().__init__(policy, *flags, **options)
        self.inner: Inner = inner if inner is not None else self._default_inner()

    def _default_inner(self) -> Inner:
        raise NotImplementedError

    def host_policy(self, url: httpx.URL | str) -> Policy | None:
        """The breaker (and bulkhead) this transport applies to requests to ``url``'s host."""
        return self._host_policy(httpx.URL(url))

    @staticmethod
    def _address(url: httpx.URL) -> tuple[str, str, int | None]:
        return url.scheme, url.host, url.port

    def _plan_request(self, request: httpx.Request) -> Plan:
        return self._plan(
            request.method, request.headers, isinstance(request.stream, httpx.ByteStream),
            request.url, request.extensions.get("timeout"),
        )

    def _prepare(self, request: httpx.Request, plan: Plan) -> None:
        left = self._begin_attempt(request.headers, plan)
        if left is not None:
            request.extensions = {
                **request.extensions, "timeout": _shrink(plan.timeouts or {}, left)
            }


class ResilientTransport(_Transport[httpx.BaseTransport], httpx.BaseTransport):
    """A transport for ``httpx.Client`` that retries safely, per-host breakers, deadlines.

    Args:
        inner: the transport that does the I/O; ``httpx.HTTPTransport()`` by default.
        policy: the policy around each logical request, normally a ``stoic.Retry`` or a
            ``Pipeline`` containing one. Default: 3 attempts, exponential backoff capped at
            10 s, a 10% retry budget.
        per_host: give each host a circuit breaker ``http:<host>`` (and a bulkhead, if
            ``bulkhead`` is given). Breakers already in ``stoic.breakers`` are reused.
        idempotency_keys: give POST and PATCH requests without an ``Idempotency-Key`` a
            generated one, the same for all their attempts, which makes them retryable.
            Only useful when the server honours the header (``stoic.idempotency`` does).
        propagate: send the time left (``deadline_header``, in milliseconds), the request id
            bound with ``stoic.context.bind`` and W3C trace context when configured.
        breaker: ``name -> policy`` building a host's breaker; ``stoic.CircuitBreaker(name)``
            with its defaults when None.
        bulkhead: ``name -> policy`` building a host's bulkhead; no bulkhead when None.
    """

    _inner_type = httpx.BaseTransport

    def _default_inner(self) -> httpx.BaseTransport:
        return httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` with retries; returns the last response, raises the last error."""
        plan = self._plan_request(request)
        policy = plan.policy
        try:
            if policy is None:
                return self._attempt(request, plan)
            if plan.key is None:
                return policy.call(self._attempt, request, plan)
            with using_idempotency_key(plan.key):
                return policy.call(self._attempt, request, plan)
        except Exception as exc:
            return ended(plan, exc, _StatusFailure).response

    def _attempt(self, request: httpx.Request, plan: Plan) -> httpx.Response:
        self._prepare(request, plan)
        if plan.host is None:
            return self._send(request, plan)
        return plan.host.call(self._send, request, plan)

    def _send(self, request: httpx.Request, plan: Plan) -> httpx.Response:
        try:
            response = self.inner.handle_request(request)
        except httpx.TimeoutException as exc:
            raise_timeout(exc, plan)
        message = failure_message(response.status_code, response.headers, plan)
        if message is None:
            return response
        raise _StatusFailure(message, request=request, response=response).read()

    def close(self) -> None:
        self.inner.close()


class ResilientAsyncTransport(_Transport[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport):
    """The ``httpx.AsyncClient`` twin of ``ResilientTransport``; same arguments and rules.

    Backoff waits use ``stoic.clock.asleep``: they never block the event loop. The I/O
    methods repeat the sync ones with ``await``: one shared body would cost a frame per
    attempt on the hot path.
    """

    _inner_type = httpx.AsyncBaseTransport

    def _default_inner(self) -> httpx.AsyncBaseTransport:
        return httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` with retries; returns the last response, raises the last error."""
        plan = self._plan_request(request)
        policy = plan.policy
        try:
            if policy is None:
                return await self._attempt(request, plan)
            if plan.key is None:
                return await policy.acall(self._attempt, request, plan)
            with using_idempotency_key(plan.key):
                return await policy.acall(self._attempt, request, plan)
        except Exception as exc:
            return ended(plan, exc, _StatusFailure).response

    async def _attempt(self, request: httpx.Request, plan: Plan) -> httpx.Response:
        self._prepare(request, plan)
        if plan.host is None:
            return await self._send(request, plan)
        return await plan.host.acall(self._send, request, plan)

    async def _send(self, request: httpx.Request, plan: Plan) -> httpx.Response:
        try:
            response = await self.inner.handle_async_request(request)
        except httpx.TimeoutException as exc:
            raise_timeout(exc, plan)
        message = failure_message(response.status_code, response.headers, plan)
        if message is None:
            return response
        raise await _StatusFailure(message, request=request, response=response).aread()

    async def aclose(self) -> None:
        await self.inner.aclose()
