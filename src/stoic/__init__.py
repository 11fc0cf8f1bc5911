"""stoic: failures in distributed systems, made survivable.

The public API is this module's ``__all__``. Core names are imported here; names that pull
in optional extras or larger subsystems load on first access, so ``import stoic`` does no work
beyond the standard library.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import backoff, clock, context, events, testing
from .classifiers import stdlib as stdlib_classifiers
from .context import deadline, remaining
from .errors import (
    BulkheadFullError,
    CircuitOpenError,
    CodecError,
    DeadlineExceeded,
    IdempotencyError,
    IdempotencyKeyInUseError,
    IdempotencyKeyMismatchError,
    IdempotencyStoredError,
    RateLimitedError,
    Rejected,
    StoicError,
)
from .outcome import Outcome, Verdict, classify, classify_status, register_classifier
from .policies.budget import RetryBudget
from .policies.fallback import Fallback
from .policies.pipeline import Pipeline
from .policies.retry import Retry
from .policies.timeout import Timeout

if TYPE_CHECKING:
    from . import idempotency, messaging, state
    from .idempotency import idempotent
    from .policies.breaker import CircuitBreaker, CountWindow, TimeWindow, breakers
    from .policies.bulkhead import Bulkhead
    from .policies.hedge import Hedge
    from .policies.limit import AdaptiveLimit
    from .policies.ratelimit import RateLimiter
    from .policies.throttle import AdaptiveThrottle

__all__ = [
    "AdaptiveLimit",
    "AdaptiveThrottle",
    "Bulkhead",
    "BulkheadFullError",
    "CircuitBreaker",
    "CircuitOpenError",
    "CodecError",
    "CountWindow",
    "DeadlineExceeded",
    "Fallback",
    "Hedge",
    "IdempotencyError",
    "IdempotencyKeyInUseError",
    "IdempotencyKeyMismatchError",
    "IdempotencyStoredError",
    "Outcome",
    "Pipeline",
    "RateLimitedError",
    "RateLimiter",
    "Rejected",
    "Retry",
    "RetryBudget",
    "StoicError",
    "TimeWindow",
    "Timeout",
    "Verdict",
    "backoff",
    "breakers",
    "chaos",
    "classify",
    "classify_status",
    "clock",
    "context",
    "deadline",
    "discover",
    "events",
    "idempotency",
    "idempotent",
    "messaging",
    "observability",
    "register_classifier",
    "remaining",
    "state",
    "testing",
]

__version__ = "0.1.0"

stdlib_classifiers.install()  # the base classifiers: the registry never imports its plugins
del stdlib_classifiers

_LAZY: dict[str, tuple[str, str | None]] = {
    "CircuitBreaker": ("stoic.policies.breaker", "CircuitBreaker"),
    "CountWindow": ("stoic.policies.breaker", "CountWindow"),
    "TimeWindow": ("stoic.policies.breaker", "TimeWindow"),
    "breakers": ("stoic.policies.breaker", "breakers"),
    "Bulkhead": ("stoic.policies.bulkhead", "Bulkhead"),
    "RateLimiter": ("stoic.policies.ratelimit", "RateLimiter"),
    "Hedge": ("stoic.policies.hedge", "Hedge"),
    "AdaptiveLimit": ("stoic.policies.limit", "AdaptiveLimit"),
    "AdaptiveThrottle": ("stoic.policies.throttle", "AdaptiveThrottle"),
    "idempotent": ("stoic.idempotency", "idempotent"),
    "idempotency": ("stoic.idempotency", None),
    "messaging": ("stoic.messaging", None),
    "state": ("stoic.state", None),
    "http": ("stoic.http", None),
    "chaos": ("stoic.chaos", None),
    "observability": ("stoic.observability", None),
}


def discover(discover_system: bool = True) -> dict[str, Any]:
    """Chaos Toolkit's discovery hook (``chaos discover --no-install stoic``); needs stoic[chaos].

    Chaos Toolkit looks for ``discover`` on the top-level package of an extension, so it lives
    here and hands over to ``stoic.chaostoolkit``.
    """
    from .chaostoolkit import discover as _discover

    return _discover(discover_system=discover_system)


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'stoic' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
