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

The client side lives in ``grpc_client``, the server side in ``grpc_server``.
"""

from __future__ import annotations

from .grpc_client import IDEMPOTENCY_KEY, ResilientAioInterceptor, ResilientInterceptor
from .grpc_server import PUSHBACK_KEY, StoicAioServerInterceptor, StoicServerInterceptor

__all__ = [
    "IDEMPOTENCY_KEY",
    "PUSHBACK_KEY",
    "ResilientAioInterceptor",
    "ResilientInterceptor",
    "StoicAioServerInterceptor",
    "StoicServerInterceptor",
]
