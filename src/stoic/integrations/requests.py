"""A requests transport adapter with stoic's rules: safe retries, per-host breakers, deadlines.

    session = requests.Session()
    adapter = ResilientAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)

The semantics are those of ``stoic.integrations.httpx.ResilientTransport``: attempts run
under ``stoic.Retry``; a failing status (503, 429, 502, ...) is a failure inside the loop and,
when Retry gives up, the last response is returned; UNKNOWN failures (a read timeout, a
dropped connection) are retried only for idempotent methods or requests with an
``Idempotency-Key`` (generated once per POST/PATCH with ``idempotency_keys=True``); a body
that is a file or generator is sent once; each attempt's timeouts shrink to the time left
before ``stoic.deadline``, and no attempt starts after it.

requests waits forever when no timeout is given. The adapter gives such a request
``default_timeout`` (connect, read) = (3.05, 10) seconds. A requests read timeout bounds each
socket read, not the whole response, so a server trickling bytes can outlast a deadline.
urllib3's own retries are switched off: stoic makes the decision, once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

from ..context import using_idempotency_key
from ..policies.base import Policy
from ._http import (
    Core,
    Plan,
    ended,
    failure_message,
    raise_timeout,
    split_options,
)

__all__ = ["ResilientAdapter"]

Timeouts = tuple["float | None", "float | None"]


class _StatusFailure(requests.HTTPError):
    """A failing response, raised only inside the retry loop; the caller gets the response."""


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _timeouts(value: Any, label: str) -> Timeouts:
    """``(connect, read)`` seconds from whatever requests accepts as a timeout."""
    if isinstance(value, urllib3.Timeout):
        return _number(value.connect_timeout), _number(value.read_timeout)
    if isinstance(value, tuple):
        if len(value) != 2:
            raise ValueError(f"{label} must be seconds or a (connect, read) pair, got {value!r}")
        connect, read = value
    else:
        connect = read = value
    for part in (connect, read):
        if part is not None and not (_number(part) is not None and part > 0):
            raise ValueError(f"{label} must be > 0 seconds or None, got {value!r}")
    return _number(connect), _number(read)


class ResilientAdapter(Core, HTTPAdapter):
    """Mount on a ``requests.Session`` for stoic's retries, breakers and deadlines.

    Args:
        policy: the policy around each logical request (a ``stoic.Retry`` or a Pipeline
            with one); default 3 attempts, exponential backoff capped at 10 s, retry budget.
        default_timeout: (connect, read) seconds for requests that give no timeout.
        per_host, idempotency_keys, propagate, breaker, bulkhead, deadline_header,
        request_id_header: as for ``stoic.integrations.httpx.ResilientTransport``.
        **adapter_kwargs: passed to ``HTTPAdapter`` (``pool_connections``, ...), except
            ``max_retries``, which stoic owns.
    """

    def __init__(
        self, policy: Policy | None = None,
        default_timeout: float | tuple[float, float] = (3.05, 10.0), *flags: bool,
        **kwargs: Any,
    ) -> None:
        options = split_options(kwargs)  # what is left goes to HTTPAdapter
        if "max_retries" in kwargs:
            raise ValueError("max_retries is not supported: stoic's policy decides retries")
        if default_timeout is None:
            raise ValueError("default_timeout must be seconds or a (connect, read) pair, got None")
        self.default_timeout = _timeouts(default_timeout, "default_timeout")
        Core.__init__(self, policy, *flags, **options)
        HTTPAdapter.__init__(self, max_retries=0, **kwargs)

    def host_policy(self, url: str) -> Policy | None:
        """The breaker (and bulkhead) this adapter applies to requests to ``url``'s host."""
        return self._host_policy(url)

    @staticmethod
    def _address(url: str) -> tuple[str, str, int | None]:
        parts = urlsplit(url)
        return parts.scheme, parts.hostname or "", parts.port

    def send(  # type: ignore[override]
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: bool | str = True,
        cert: Any = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Send ``request`` with retries; returns the last response, raises the last error."""
        body = request.body
        plan = self._plan(
            (request.method or "GET").upper(), request.headers,
            body is None or isinstance(body, (bytes, str)),  # a file or generator: sent once
            request.url or "",
            self.default_timeout if timeout is None else _timeouts(timeout, "timeout"),
        )
        io = (stream, verify, cert, proxies)
        policy = plan.policy
        try:
            if policy is None:
                return self._attempt(request, plan, io)
            if plan.key is None:
                return policy.call(self._attempt, request, plan, io)
            with using_idempotency_key(plan.key):
                return policy.call(self._attempt, request, plan, io)
        except Exception as exc:
            response = ended(plan, exc, _StatusFailure).response
            assert response is not None  # we always attach it
            return response

    def _attempt(
        self, request: requests.PreparedRequest, plan: Plan, io: tuple[Any, ...]
    ) -> requests.Response:
        left = self._begin_attempt(request.headers, plan)
        connect, read = plan.timeouts
        if left is not None:
            connect = left if connect is None or connect > left else connect
            read = left if read is None or read > left else read
        if plan.host is None:
            return self._send(request, plan, (connect, read), io)
        return plan.host.call(self._send, request, plan, (connect, read), io)

    def _send(
        self, request: requests.PreparedRequest, plan: Plan, timeouts: Timeouts,
        io: tuple[Any, ...],
    ) -> requests.Response:
        stream, verify, cert, proxies = io
        try:
            response = super().send(
                request, stream=stream, timeout=timeouts,  # type: ignore[arg-type]
                verify=verify, cert=cert, proxies=proxies,
            )
        except requests.Timeout as exc:
            raise_timeout(exc, plan)
        message = failure_message(response.status_code, response.headers, plan)
        if message is None:
            return response
        response.content  # noqa: B018 - read it now, so the connection goes back to the pool
        raise _StatusFailure(message, response=response)
