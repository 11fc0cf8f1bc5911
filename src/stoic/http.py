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

from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

import httpx

from .integrations._http import split_options
from .integrations.httpx import ResilientAsyncTransport, ResilientTransport

__all__ = ["DEFAULT_TIMEOUT", "AsyncClient", "Client"]

#: 3.05 s to connect, 10 s to read, write or wait for a pooled connection.
DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=3.05)

# Arguments httpx would give its own default transport; ours needs them on the inner one.
_TRANSPORT_ARGS = ("verify", "cert", "http1", "http2", "limits", "trust_env")

Inner = TypeVar("Inner", httpx.BaseTransport, httpx.AsyncBaseTransport)


class _Resilient(Generic[Inner]):
    """The constructor ``Client`` and ``AsyncClient`` share; they name their transports."""

    _inner: ClassVar[Callable[..., Any]]  # the default inner transport
    _resilient: ClassVar[type[ResilientTransport] | type[ResilientAsyncTransport]]

    def __init__(
        self, *, transport: Inner | None = None, timeout: Any = DEFAULT_TIMEOUT, **kwargs: Any
    ) -> None:
        options = split_options(kwargs)  # ``ClientOptions`` and ``policy``; the rest is httpx's
        if transport is None:
            transport = self._inner(**{k: kwargs[k] for k in _TRANSPORT_ARGS if k in kwargs})
        resilient = self._resilient(transport, **options)  # type: ignore[arg-type]
        super().__init__(transport=resilient, timeout=timeout, **kwargs)  # type: ignore[call-arg]
        self.resilient_transport = resilient


class Client(_Resilient[httpx.BaseTransport], httpx.Client):
    """An ``httpx.Client`` whose requests retry safely, break per host and carry deadlines.

    ``policy``, ``per_host``, ``idempotency_keys``, ``propagate``, ``breaker``, ``bulkhead``,
    ``deadline_header`` and ``request_id_header`` (keyword-only) are ``ResilientTransport``'s;
    ``transport`` becomes its inner transport; everything else goes to ``httpx.Client``.
    """

    _inner = httpx.HTTPTransport
    _resilient = ResilientTransport
    resilient_transport: ResilientTransport


class AsyncClient(_Resilient[httpx.AsyncBaseTransport], httpx.AsyncClient):
    """The ``httpx.AsyncClient`` twin of ``Client``; same arguments."""

    _inner = httpx.AsyncHTTPTransport
    _resilient = ResilientAsyncTransport
    resilient_transport: ResilientAsyncTransport
