"""What the httpx transports and the requests adapter share: the HTTP rules of safe retrying.

None of this imports an HTTP library. ``Core``, the base of the httpx transports and the
requests adapter, answers three questions per logical request (may it be retried, with which
policy, under which key) and two per attempt (how much time is left, which headers go out);
the subclasses only translate their library's request and do the I/O. Whether and when to
retry is never decided here: that stays ``stoic.Retry``'s decision. This module only tells
Retry what it needs to know, by picking an idempotent or non-idempotent variant of the
caller's policy, or by running the attempts under the request's idempotency key.

Per-host policies (a circuit breaker named ``http:<host>``, an optional bulkhead) are built
on first use of a host and kept by the transport; breakers are also found through
``stoic.breakers``, so two clients talking to one host share its breaker.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, NoReturn, TypedDict, TypeVar

from .. import context
from .._validate import header_name
from ..context import remaining
from ..errors import DeadlineExceeded
from ..events import dispatcher
from ..outcome import classify_status
from ..policies.backoff import exponential
from ..policies.base import Policy
from ..policies.budget import RetryBudget
from ..policies.pipeline import Pipeline
from ..policies.retry import Retry

__all__ = [
    "ATTEMPT_HEADER",
    "CLIENT_OPTIONS",
    "DEADLINE_HEADER",
    "IDEMPOTENCY_HEADER",
    "IDEMPOTENT_METHODS",
    "KEYED_METHODS",
    "REQUEST_ID_HEADER",
    "RETRIED_HEADER",
    "RETRY_BELOW_HEADER",
    "ClientOptions",
    "Core",
    "HostPolicies",
    "Plan",
    "default_policy",
    "ended",
    "expired",
    "failure_message",
    "host_name",
    "idempotent_variant",
    "new_idempotency_key",
    "passed_up",
    "raise_timeout",
    "retried",
    "retries",
    "single_attempt_variant",
    "split_options",
]

_log = logging.getLogger("stoic.http")
F = TypeVar("F", bound=Exception)

#: Methods RFC 9110 defines as idempotent: sending one twice has the effect of sending it once.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
#: Methods that get a generated ``Idempotency-Key`` when ``idempotency_keys=True``.
KEYED_METHODS = frozenset({"POST", "PATCH"})
IDEMPOTENCY_HEADER = "Idempotency-Key"
DEADLINE_HEADER = "X-Request-Timeout-Ms"
REQUEST_ID_HEADER = "X-Request-ID"
#: The hop guard's headers: which attempt of the sender this request is (1 = first), and
#: whether hops below may retry it ("1") or must not because the sender retries ("0"), or
#: must retry only at the hop nearest a failure ("deepest"); on an answer, "1" in
#: ``RETRIED_HEADER`` says the failure it carries was retried below already.
ATTEMPT_HEADER = "X-Stoic-Attempt"
RETRY_BELOW_HEADER = "X-Stoic-Retry-Below"
RETRIED_HEADER = "X-Stoic-Retried"

# A timeout that fires with less than this left of the deadline was the deadline firing.
_DEADLINE_SLACK = 0.005

BreakerFactory = Callable[[str], Policy]
BulkheadFactory = Callable[[str], Policy]


class ClientOptions(TypedDict, total=False):
    """The keyword arguments every stoic client takes besides ``policy`` (see ``Core``).

    The httpx transports, the requests adapter, the aiohttp middleware, the gRPC
    interceptors and ``stoic.http.Client`` all accept these, with ``Core``'s defaults.
    """

    per_host: bool
    idempotency_keys: bool
    propagate: bool
    breaker: BreakerFactory | None
    bulkhead: BulkheadFactory | None
    deadline_header: str
    request_id_header: str


#: The names of ``ClientOptions``, with ``policy``: how a client with more arguments of its
#: own (``stoic.http.Client``, the requests adapter) tells them apart.
CLIENT_OPTIONS = frozenset(("policy", *ClientOptions.__annotations__))


def default_policy() -> Retry:
    """The retry policy a transport uses when given none.

    Three attempts, exponential backoff from 100 ms capped at 10 s with full jitter (so a
    fleet does not retry in step), and a retry budget of 10% of requests (so an outage
    cannot triple the load on the service that is already failing). A ``Retry-After``
    longer than 10 s is not waited for: the caller gets the response back at once.
    """
    return Retry(
        max_attempts=3, backoff=exponential(0.1, 2.0, 10.0), budget=RetryBudget(), name="http"
    )


def idempotent_variant(policy: Policy) -> Policy:
    """``policy`` with every ``Retry`` in it marked idempotent (a copy; the original is kept).

    Used for requests whose method is idempotent, so Retry itself decides that an UNKNOWN
    failure (a read timeout, a reset) is safe to retry for them and not for a POST.
    """
    return _each_retry(
        policy, lambda retry: retry if retry.idempotent else retry.replace(idempotent=True)
    )


def _each_retry(policy: Policy, change: Callable[[Retry], Retry]) -> Policy:
    """``policy`` with ``change`` applied to every ``Retry`` in it; itself when none changed."""
    if isinstance(policy, Retry):
        return change(policy)
    if isinstance(policy, Pipeline):
        inner = tuple(_each_retry(p, change) for p in policy.policies)
        if all(a is b for a, b in zip(inner, policy.policies, strict=True)):
            return policy
        return Pipeline(*inner)
    return policy


def single_attempt_variant(policy: Policy) -> Policy:
    """``policy`` with every ``Retry`` in it cut to one attempt (a copy; the original is kept).

    The hop guard uses it for requests made while serving a request that its caller retries:
    the breaker and the rest still apply, the retries happen above.
    """
    return _each_retry(
        policy, lambda retry: retry if retry.max_attempts == 1 else retry.replace(max_attempts=1)
    )


def retries(policy: Policy | None) -> bool:
    """Whether ``policy`` may make more than one attempt (holds a ``Retry`` of attempts > 1)."""
    if isinstance(policy, Retry):
        return policy.max_attempts > 1
    if isinstance(policy, Pipeline):
        return any(retries(p) for p in policy.policies)
    return False


def new_idempotency_key() -> str:
    """A fresh key for one logical request (random, so two requests never share one).

    128 random bits as hex: ``str(uuid.uuid4())`` costs several times more per request and
    adds nothing a key needs (``benchmarks/http_overhead.py``, the keyed gRPC and POST cases).
    """
    return os.urandom(16).hex()


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


@dataclass(slots=True, eq=False)
class Plan:
    """What one logical request needs, decided once before its first attempt.

    ``timeouts`` is in the library's own form (httpx's dict, requests' pair). ``what``
    names the request in error messages; it is built only when one is raised. ``attempt``
    counts the attempts begun (for the hop guard's header); ``retry_below`` is that header's
    value. Mutable on purpose: one plan follows one request through its attempts.
    """

    policy: Policy | None
    host: Policy | None
    key: str | None
    timeouts: Any
    method: str
    url: Any
    attempt: int = 0
    retry_below: str = "1"

    @property
    def what(self) -> str:
        return f"{self.method} {self.url}"


class Core:
    """Configuration and per-request rules shared by every stoic client.

    Validated once here. The library's class does the I/O: it calls ``_plan`` once per
    logical request and ``_begin_attempt`` before each attempt. These are the arguments of
    every client, with their defaults; a client with arguments of its own takes these
    through ``policy``, ``*flags`` (``per_host``, ``idempotency_keys``, ``propagate``, in
    that order) and ``**options`` (``ClientOptions``) and hands them on.
    """

    def __init__(
        self,
        policy: Policy | None = None,
        per_host: bool = True,
        idempotency_keys: bool = True,
        propagate: bool = True,
        *,
        breaker: BreakerFactory | None = None,
        bulkhead: BulkheadFactory | None = None,
        deadline_header: str = DEADLINE_HEADER,
        request_id_header: str = REQUEST_ID_HEADER,
    ) -> None:
        if policy is None:
            policy = default_policy()
        elif not isinstance(policy, Policy):
            raise ValueError(f"policy must be a stoic policy (a Retry, a Pipeline), got {policy!r}")
        header_name("deadline_header", deadline_header)
        header_name("request_id_header", request_id_header)
        self.policy = policy
        self._hosts = HostPolicies(breaker, bulkhead) if per_host else None
        self._idempotent_policy = idempotent_variant(policy)
        # the hop guard: the variants used while the caller of the request served retries it
        self._single_policy = single_attempt_variant(policy)
        self._single_idempotent = single_attempt_variant(self._idempotent_policy)
        self._retries = retries(policy)
        self._idempotency_keys = bool(idempotency_keys)
        self._propagate = bool(propagate)
        self._deadline_header = deadline_header
        self._request_id_header = request_id_header
        from ..observability.otel import annotate_http, inject  # stdlib-only until tracing is on

        self._annotate = annotate_http
        self._inject = inject

    @property
    def per_host(self) -> bool:
        """Whether each host gets its own breaker (and bulkhead)."""
        return self._hosts is not None

    @staticmethod
    def _address(url: Any) -> tuple[str, str, int | None]:
        """``(scheme, host, port)`` of a URL in the library's own form."""
        raise NotImplementedError

    def _host_policy(self, url: Any) -> Policy | None:
        hosts = self._hosts
        return None if hosts is None else hosts.get(host_name(*self._address(url)))

    def _plan(
        self, method: str, headers: MutableMapping[str, str], replayable: bool, url: Any,
        timeouts: Any,
    ) -> Plan:
        """Decide once per logical request: its key (the bound ``stoic.context`` key, else
        generated, into ``headers`` for a POST or PATCH), its policy (the idempotent variant
        for an idempotent method, none for a body that cannot be sent twice) and its host's
        breaker and bulkhead."""
        key = headers.get(IDEMPOTENCY_HEADER)
        if key is None and method in KEYED_METHODS:
            # a key bound by the caller (a workflow step's, an @idempotent call's) goes out
            # as is, so the downstream applies a re-run of the step once; else a fresh one
            key = context.idempotency_key()
            if key is None and self._idempotency_keys:
                key = new_idempotency_key()
            if key is not None:
                headers[IDEMPOTENCY_HEADER] = key
        policy: Policy | None
        guarded = not context.retries_allowed()  # the caller retries: no retries here
        if not replayable:
            policy = None
        elif method in IDEMPOTENT_METHODS:
            policy = self._single_idempotent if guarded else self._idempotent_policy
        else:
            policy = self._single_policy if guarded else self.policy
        plan = Plan(policy, self._host_policy(url), key, timeouts, method, url)
        if not guarded and context.retry_deepest():
            plan.retry_below = "deepest"  # retries below first; a failure they retried is final
        elif guarded or (policy is not None and self._retries):
            plan.retry_below = "0"
        return plan

    def _begin_attempt(self, headers: MutableMapping[str, str], plan: Plan) -> float | None:
        """Per attempt: refuse after the deadline, set the outgoing headers; the time left.

        ``headers`` must be case-insensitive (httpx and requests headers both are). A request
        id the caller set explicitly is kept. The time left and the trace context are per
        attempt: each attempt is its own span, so a resend names its own span as parent.
        """
        left = remaining()
        if left is not None and left <= 0:
            raise expired(plan.what)
        plan.attempt += 1
        if not self._propagate:
            return left
        headers[ATTEMPT_HEADER] = str(plan.attempt)
        headers[RETRY_BELOW_HEADER] = plan.retry_below
        if left is not None:
            headers[self._deadline_header] = str(int(left * 1000))
        request_id = context.get("request_id")
        if request_id is not None and self._request_id_header not in headers:
            headers[self._request_id_header] = str(request_id)
        if dispatcher.attempt_scope is not None:  # tracing is on: this attempt is a span
            self._trace(headers, plan)
        return left

    def _trace(self, headers: MutableMapping[str, str], plan: Plan) -> None:
        try:
            self._annotate(plan.method, str(plan.url))
        except Exception:  # telemetry must never fail the request
            _log.debug("stoic: span annotation failed", exc_info=True)
        try:
            carrier: dict[str, str] = self._inject({})
        except Exception:
            _log.debug("stoic: trace context injection failed", exc_info=True)
            return
        for name, value in carrier.items():
            headers[name] = value


def passed_up(headers: Any) -> bool:
    """Whether a failing answer says it was retried below (``X-Stoic-Retried: 1``): then it
    is final, not retried here, and the request being served passes it up marked in turn."""
    if headers.get(RETRIED_HEADER) != "1":
        return False
    context.note_retried()
    return True


def failure_message(status: int, headers: Any, plan: Plan) -> str | None:
    """The message a response with ``status`` is retried with, or None when it goes back to
    the caller as it is: a success, a final answer, or a failure retried below already."""
    verdict = classify_status(status, headers)
    if not verdict.outcome.is_failure or passed_up(headers):
        return None
    return f"{plan.what}: {verdict.reason}"


def ended(plan: Plan, exc: Exception, status_failure: type[F]) -> F:
    """A request failed for good with ``exc`` (``retried`` reports it): ``exc`` when it is
    the client's ``status_failure``, whose response goes back to the caller; raised again
    otherwise. Called in the client's ``except`` clause, off the hot path."""
    retried(plan)
    if isinstance(exc, status_failure):
        return exc
    raise exc


def retried(plan: Plan) -> None:
    """The request failed for good: after several attempts, the request being served passes
    up a failure that was retried (the hop guard's deepest mode marks its answer)."""
    if plan.attempt > 1:
        context.note_retried()


def raise_timeout(exc: Exception, plan: Plan) -> NoReturn:
    """Raise an attempt's timeout ``exc`` again, as ``DeadlineExceeded`` (from ``exc``) when
    it was, in effect, the deadline running out; as itself when the library's own timeout
    fired first. Called in the ``except`` clause that caught ``exc``."""
    left = remaining()
    if left is not None and left <= _DEADLINE_SLACK:
        raise DeadlineExceeded(
            f"deadline ran out during {plan.what} ({type(exc).__name__})"
        ) from exc
    raise exc


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
        self._by_host: dict[str, Policy] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Policy:
        """The policy for host ``name`` (``http:<host>``)."""
        try:
            return self._by_host[name]
        except KeyError:
            pass
        with self._lock:
            policy = self._by_host.get(name)
            if policy is None:
                policy = self._by_host[name] = self._build(name)
            return policy

    def _build(self, name: str) -> Policy:
        from ..policies.breaker import CircuitBreaker, breakers

        breaker: Policy | None = breakers.get(name)
        if breaker is None:
            breaker = (self._breaker or CircuitBreaker)(name)
        if self._bulkhead is None:
            return breaker
        return Pipeline(breaker, self._bulkhead(name))


def split_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Take the ``CLIENT_OPTIONS`` out of ``kwargs`` (changed in place) and return them."""
    return {name: kwargs.pop(name) for name in CLIENT_OPTIONS.intersection(kwargs)}
