"""What the httpx transports and the requests adapter share: the HTTP rules of safe retrying.

None of this imports an HTTP library. The transports ask it three questions per logical
request (may it be retried, with which policy, under which key) and two per attempt (how
much time is left, which headers go out). Whether and when to retry is never decided here:
that stays ``stoic.Retry``'s decision. This module only tells Retry what it needs to know,
by picking an idempotent or non-idempotent variant of the caller's policy, or by running the
attempts under the request's idempotency key.

Per-host policies (a circuit breaker named ``http:<host>``, an optional bulkhead) are built
on first use of a host and kept by the transport; breakers are also found through
``stoic.breakers``, so two clients talking to one host share its breaker.
"""

from __future__ import annotations

import copy
import logging
import threading
import uuid
from collections.abc import Callable, MutableMapping
from typing import Any

from .. import context
from ..context import remaining
from ..errors import DeadlineExceeded
from ..policies.backoff import exponential
from ..policies.base import Policy
from ..policies.budget import RetryBudget
from ..policies.pipeline import Pipeline
from ..policies.retry import Retry

__all__ = [
    "DEADLINE_HEADER",
    "IDEMPOTENCY_HEADER",
    "IDEMPOTENT_METHODS",
    "KEYED_METHODS",
    "REQUEST_ID_HEADER",
    "HostPolicies",
    "Settings",
    "deadline_fired",
    "default_policy",
    "expired",
    "host_name",
    "idempotent_variant",
    "new_idempotency_key",
    "trace_injector",
]

_log = logging.getLogger("stoic.http")

#: Methods RFC 9110 defines as idempotent: sending one twice has the effect of sending it once.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
#: Methods that get a generated ``Idempotency-Key`` when ``idempotency_keys=True``.
KEYED_METHODS = frozenset({"POST", "PATCH"})
IDEMPOTENCY_HEADER = "Idempotency-Key"
DEADLINE_HEADER = "X-Request-Timeout-Ms"
REQUEST_ID_HEADER = "X-Request-ID"

# A timeout that fires with less than this left of the deadline was the deadline firing.
_DEADLINE_SLACK = 0.005

BreakerFactory = Callable[[str], Policy]
BulkheadFactory = Callable[[str], Policy]


def default_policy() -> Retry:
    """The retry policy a transport uses when given none.

    Three attempts, exponential backoff from 100 ms capped at 10 s with full jitter (so a
    fleet does not retry in step), and a retry budget of 10% of requests (so an outage
    cannot triple the load on the service that is already failing). A ``Retry-After``
    longer than 10 s is not waited for: the caller gets the response back at once.
    """
    return Retry(
        attempts=3, backoff=exponential(0.1, 2.0, 10.0), budget=RetryBudget(), name="http"
    )


def idempotent_variant(policy: Policy) -> Policy:
    """``policy`` with every ``Retry`` in it marked idempotent (a copy; the original is kept).

    Used for requests whose method is idempotent, so Retry itself decides that an UNKNOWN
    failure (a read timeout, a reset) is safe to retry for them and not for a POST.
    """
    if isinstance(policy, Retry):
        if policy.idempotent:
            return policy
        twin = copy.copy(policy)
        twin.idempotent = True
        twin._compose()
        return twin
    if isinstance(policy, Pipeline):
        inner = tuple(idempotent_variant(p) for p in policy.policies)
        if all(a is b for a, b in zip(inner, policy.policies, strict=True)):
            return policy
        return Pipeline(*inner)
    return policy


def new_idempotency_key() -> str:
    """A fresh key for one logical request (random, so two requests never share one)."""
    return str(uuid.uuid4())


def host_name(scheme: str, host: str, port: int | None) -> str:
    """The breaker name for a host: ``http:<host>``, with the port when it is not the default.

    The port is part of the name because two services on one machine fail independently.
    """
    default = 443 if scheme == "https" else 80
    if port is None or port == default:
        return f"http:{host}"
    return f"http:{host}:{port}"


def expired(what: str) -> DeadlineExceeded:
    """The error for an attempt that would start after the deadline."""
    return DeadlineExceeded(f"deadline passed before {what} was sent; the request was not made")


def _otel_function(name: str) -> Any:
    """``stoic.observability.otel.<name>`` when that module is available, else None.

    Looked up once per transport: with telemetry absent the per-request cost is a None check.
    """
    try:
        from ..observability import otel  # type: ignore[attr-defined]
    except Exception:  # absent, or OpenTelemetry not installed
        return None
    function = getattr(otel, name, None)
    return function if callable(function) else None


def trace_injector() -> Callable[[dict[str, str]], None] | None:
    """``stoic.observability.otel.inject`` when available, else None."""
    return _otel_function("inject")  # type: ignore[no-any-return]


class Settings:
    """Validated configuration shared by the sync and async transports and the adapter."""

    __slots__ = (
        "annotate",
        "deadline_header",
        "idempotency_keys",
        "idempotent_policy",
        "inject",
        "policy",
        "propagate",
        "request_id_header",
    )

    def __init__(
        self,
        policy: Policy | None,
        idempotency_keys: bool,
        propagate: bool,
        deadline_header: str,
        request_id_header: str,
    ) -> None:
        if policy is None:
            policy = default_policy()
        elif not isinstance(policy, Policy):
            raise ValueError(f"policy must be a stoic policy (a Retry, a Pipeline), got {policy!r}")
        for label, value in (
            ("deadline_header", deadline_header), ("request_id_header", request_id_header)
        ):
            if not isinstance(value, str) or not value or not value.isascii() or " " in value:
                raise ValueError(f"{label} must be a non-empty ASCII header name, got {value!r}")
        self.policy = policy
        self.idempotent_policy = idempotent_variant(policy)
        self.idempotency_keys = bool(idempotency_keys)
        self.propagate = bool(propagate)
        self.deadline_header = deadline_header
        self.request_id_header = request_id_header
        self.inject = trace_injector() if propagate else None
        self.annotate: Callable[[str, str], None] | None = (
            _otel_function("annotate_http") if propagate else None
        )

    def propagate_into(
        self, headers: MutableMapping[str, str], seconds_left: float | None,
        method: str = "", url: str = "",
    ) -> None:
        """Set the outgoing headers of one attempt: time left, request id, trace context.

        ``headers`` must be case-insensitive (httpx and requests headers both are). A request
        id the caller set explicitly is kept. The time left and the trace context are per
        attempt: each attempt is its own span, so a resend names its own span as parent.
        """
        annotate = self.annotate
        if annotate is not None and method:
            try:
                annotate(method, url)
            except Exception:  # telemetry must never fail the request
                _log.debug("stoic: span annotation failed", exc_info=True)
        if seconds_left is not None:
            headers[self.deadline_header] = str(int(seconds_left * 1000))
        request_id = context.get("request_id")
        if request_id is not None and self.request_id_header not in headers:
            headers[self.request_id_header] = str(request_id)
        inject = self.inject
        if inject is not None:
            carrier: dict[str, str] = {}
            try:
                inject(carrier)
            except Exception:  # telemetry must never fail the request
                _log.debug("stoic: trace context injection failed", exc_info=True)
                return
            for name, value in carrier.items():
                headers[name] = value


def deadline_fired() -> bool:
    """True when a timeout that just fired was (in effect) the deadline running out."""
    left = remaining()
    return left is not None and left <= _DEADLINE_SLACK


def _default_breaker(name: str) -> Policy:
    from ..policies.breaker import CircuitBreaker  # type: ignore[import-not-found,unused-ignore]

    return CircuitBreaker(name)  # type: ignore[no-any-return,unused-ignore]


class HostPolicies:
    """The per-host part of a transport: breaker then bulkhead, built on first use of a host.

    A breaker already registered under the host's name in ``stoic.breakers`` is reused, so
    every client in the process agrees on whether a host is down.
    """

    __slots__ = ("_breaker", "_bulkhead", "_by_host", "_lock")

    def __init__(
        self, breaker: BreakerFactory | None, bulkhead: BulkheadFactory | None
    ) -> None:
        if breaker is not None and not callable(breaker):
            raise ValueError(f"breaker must be a callable taking the breaker name, got {breaker!r}")
        if bulkhead is not None and not callable(bulkhead):
            raise ValueError(f"bulkhead must be a callable taking the host name, got {bulkhead!r}")
        self._breaker = breaker
        self._bulkhead = bulkhead
        self._by_host: dict[str, Policy | None] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Policy | None:
        """The policy for host ``name`` (``http:<host>``), or None when there is none."""
        try:
            return self._by_host[name]
        except KeyError:
            pass
        with self._lock:
            if name in self._by_host:
                return self._by_host[name]
            parts: list[Policy] = []
            breaker = self._find_breaker(name)
            if breaker is not None:
                parts.append(breaker)
            if self._bulkhead is not None:
                parts.append(self._bulkhead(name))
            policy: Policy | None
            if not parts:
                policy = None
            elif len(parts) == 1:
                policy = parts[0]
            else:
                policy = Pipeline(*parts)
            self._by_host[name] = policy
            return policy

    def _find_breaker(self, name: str) -> Policy | None:
        factory = self._breaker
        module: Any
        try:
            from ..policies import breaker as module  # type: ignore[attr-defined,unused-ignore]
        except ImportError:
            module = None
        if module is not None:
            registry: Any = getattr(module, "breakers", None)
            existing = registry.get(name) if registry is not None else None
            if isinstance(existing, Policy):
                return existing
        if factory is None:
            if module is None:
                return None
            factory = _default_breaker
        return factory(name)
