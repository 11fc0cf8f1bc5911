"""An aiohttp client middleware with stoic's rules: safe retries, per-host breakers, deadlines.

    async with aiohttp.ClientSession(middlewares=(ResilientMiddleware(),)) as session:
        async with stoic.deadline(2.0):
            async with session.get("https://api.example.com/orders/42") as response:
                ...

The semantics are exactly those of ``stoic.integrations.httpx.ResilientAsyncTransport``, and
the rules come from the same place (``stoic.integrations._http.Core``): each logical request
runs its attempts under ``stoic.Retry``; an attempt goes through the host's circuit breaker
(``http:<host>``, shared with every other stoic client in the process) and optional
bulkhead. A failing status (503, 429, 502, ...) is a failure inside the loop, raised as an
``aiohttp.ClientResponseError`` so ``Retry-After`` is honoured; when Retry gives up the caller
gets the last *response* back (its body already read), as plain aiohttp would have returned
it. UNKNOWN failures (a dropped connection, a read timeout) are retried only for idempotent
methods or requests carrying an ``Idempotency-Key`` (generated once per POST/PATCH with
``idempotency_keys=True``). A body that is a stream (an async generator, a file) is sent once.

Each attempt is bounded by the time left before ``stoic.deadline``; no attempt starts after
it (``stoic.DeadlineExceeded``), and a timeout caused by the deadline running out is raised as
``DeadlineExceeded`` chained to the original. Needs aiohttp >= 3.12 (client middlewares).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp  # type: ignore[import-untyped, import-not-found, unused-ignore]
from aiohttp import payload as _payload  # type: ignore[import-untyped, import-not-found, unused-ignore]

from ..context import using_idempotency_key
from ..policies.base import Policy
from ._http import (
    Core,
    Plan,
    ended,
    failure_message,
    raise_timeout,
)

__all__ = ["ResilientMiddleware"]

Handler = Any  # aiohttp.ClientHandlerType: ClientRequest -> Awaitable[ClientResponse]


class _StatusFailure(aiohttp.ClientResponseError):  # type: ignore[misc]
    """A failing response, raised only inside the retry loop; the caller gets the response."""

    def __init__(self, response: Any, reason: str) -> None:
        super().__init__(
            response.request_info, response.history, status=response.status,
            message=reason, headers=response.headers,
        )
        self.response = response


def _replayable(body: Any) -> bool:
    return body == b"" or isinstance(body, _payload.BytesPayload)


class ResilientMiddleware(Core):
    """Pass to ``aiohttp.ClientSession(middlewares=...)`` for stoic's retries, breakers, deadlines.

    One instance may serve many sessions; it holds configuration and the per-host policies.

    Args (``Core``'s):
        policy, per_host, idempotency_keys, propagate, breaker, bulkhead, deadline_header,
        request_id_header: as for ``stoic.integrations.httpx.ResilientTransport``.
    """

    def host_policy(self, url: Any) -> Policy | None:
        """The breaker (and bulkhead) this middleware applies to requests to ``url``'s host."""
        from yarl import URL

        return self._host_policy(URL(str(url)))

    @staticmethod
    def _address(url: Any) -> tuple[str, str, int | None]:
        return url.scheme, url.host or "", url.port

    async def __call__(self, request: Any, handler: Handler) -> Any:
        """Send ``request`` with retries; returns the last response, raises the last error."""
        plan = self._plan(
            request.method, request.headers, _replayable(request.body), request.url, None
        )
        policy = plan.policy
        try:
            if policy is None:
                return await self._attempt(request, handler, plan)
            if plan.key is None:
                return await policy.acall(self._attempt, request, handler, plan)
            with using_idempotency_key(plan.key):
                return await policy.acall(self._attempt, request, handler, plan)
        except Exception as exc:
            return ended(plan, exc, _StatusFailure).response

    async def _attempt(self, request: Any, handler: Handler, plan: Plan) -> Any:
        left = self._begin_attempt(request.headers, plan)
        if plan.host is None:
            return await self._send(request, handler, plan, left)
        return await plan.host.acall(self._send, request, handler, plan, left)

    async def _send(self, request: Any, handler: Handler, plan: Plan, left: float | None) -> Any:
        try:
            if left is None:
                response = await handler(request)
            else:  # the attempt may not outlive the deadline
                response = await asyncio.wait_for(handler(request), left)
        except asyncio.TimeoutError as exc:  # aiohttp's own timeouts subclass it too
            raise_timeout(exc, plan)
        message = failure_message(response.status, response.headers, plan)
        if message is None:
            return response
        try:  # read now, so the connection goes back to the pool before any backoff
            await response.read()
        finally:
            response.release()
        raise _StatusFailure(response, message)
