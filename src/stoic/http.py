"""``stoic.http.Client`` and ``AsyncClient``: httpx clients with stoic's transport and defaults.

    with stoic.http.Client(base_url="http://orders.internal") as client:
        with stoic.deadline(2.0):
            order = client.get("/orders/42").json()

They are ``httpx.Client`` / ``httpx.AsyncClient`` (every httpx argument works) whose
transport is ``ResilientTransport`` / ``ResilientAsyncTransport``, with a default timeout of
3.05 s to connect and 10 s for everything else instead of httpx's 5 s for all: a connect
that takes more than 3 s has usually lost a SYN (TCP retransmits at 1 s, then 3 s), while
a slow read is often a slow but working server. Needs the ``stoic[http]`` extra.
"""

from __future__ import annotations

from typing import Any

import httpx

from .integrations._http import DEADLINE_HEADER, REQUEST_ID_HEADER, BreakerFactory, BulkheadFactory
from .integrations.httpx import ResilientAsyncTransport, ResilientTransport
from .policies.base import Policy

__all__ = ["DEFAULT_TIMEOUT", "AsyncClient", "Client"]

#: 3.05 s to connect, 10 s to read, write or wait for a pooled connection.
DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=3.05)

_TRANSPORT_ARGS = ("verify", "cert", "http1", "http2", "limits", "trust_env")


def _split(kwargs: dict[str, Any]) -> dict[str, Any]:
    # Arguments httpx would give its own default transport; ours needs them on the inner one.
    return {name: kwargs[name] for name in _TRANSPORT_ARGS if name in kwargs}


class Client(httpx.Client):
    """An ``httpx.Client`` whose requests retry safely, break per host and carry deadlines.

    ``policy``, ``per_host``, ``idempotency_keys``, ``propagate``, ``breaker``, ``bulkhead``
    and ``deadline_header`` are ``ResilientTransport``'s; ``transport`` becomes its inner
    transport; everything else goes to ``httpx.Client``.
    """

    def __init__(
        self,
        *,
        policy: Policy | None = None,
        per_host: bool = True,
        idempotency_keys: bool = True,
        propagate: bool = True,
        breaker: BreakerFactory | None = None,
        bulkhead: BulkheadFactory | None = None,
        deadline_header: str = DEADLINE_HEADER,
        request_id_header: str = REQUEST_ID_HEADER,
        transport: httpx.BaseTransport | None = None,
        timeout: Any = DEFAULT_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        inner = transport if transport is not None else httpx.HTTPTransport(**_split(kwargs))
        resilient = ResilientTransport(
            inner, policy, per_host, idempotency_keys, propagate, breaker=breaker,
            bulkhead=bulkhead, deadline_header=deadline_header,
            request_id_header=request_id_header,
        )
        super().__init__(transport=resilient, timeout=timeout, **kwargs)
        self.resilient_transport = resilient


class AsyncClient(httpx.AsyncClient):
    """The ``httpx.AsyncClient`` twin of ``Client``; same arguments."""

    def __init__(
        self,
        *,
        policy: Policy | None = None,
        per_host: bool = True,
        idempotency_keys: bool = True,
        propagate: bool = True,
        breaker: BreakerFactory | None = None,
        bulkhead: BulkheadFactory | None = None,
        deadline_header: str = DEADLINE_HEADER,
        request_id_header: str = REQUEST_ID_HEADER,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: Any = DEFAULT_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        inner = transport if transport is not None else httpx.AsyncHTTPTransport(**_split(kwargs))
        resilient = ResilientAsyncTransport(
            inner, policy, per_host, idempotency_keys, propagate, breaker=breaker,
            bulkhead=bulkhead, deadline_header=deadline_header,
            request_id_header=request_id_header,
        )
        super().__init__(transport=resilient, timeout=timeout, **kwargs)
        self.resilient_transport = resilient
