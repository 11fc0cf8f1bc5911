"""Per-request context that travels with the work: the deadline, request fields, an idempotency key.

Each value lives in its own ``ContextVar`` so concurrent tasks and threads never see each
other's values, and setting one takes a token that is reset on exit: leaving a ``with`` block
restores exactly what was there before, even when blocks nest or interleave across tasks.

Deadlines are absolute readings of ``stoic.clock.now()``. Nested deadlines keep the earliest:
an inner ``deadline(10)`` inside an outer ``deadline(1)`` still ends after one second.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from typing import Any, ClassVar, Generic, TypeVar

from . import clock

__all__ = [
    "bind",
    "current",
    "deadline",
    "deadline_at",
    "get",
    "hop",
    "hop_attempt",
    "idempotency_key",
    "note_retried",
    "remaining",
    "reset_deadline",
    "retries_allowed",
    "retry_deepest",
    "set_deadline",
    "using_idempotency_key",
]

_deadline: ContextVar[float | None] = ContextVar("stoic_deadline", default=None)
_fields: ContextVar[Mapping[str, Any]] = ContextVar("stoic_fields", default={})  # noqa: B039
_idempotency_key: ContextVar[str | None] = ContextVar("stoic_idempotency_key", default=None)
# what the caller said about retrying, and whether a failure passed up was retried; see ``hop``
_hop: ContextVar[hop | None] = ContextVar("stoic_hop", default=None)

V = TypeVar("V")
_S = TypeVar("_S", bound="_Scoped[Any]")


def remaining() -> float | None:
    """Seconds left before the current deadline (negative once passed), or None without one."""
    at = _deadline.get()
    if at is None:
        return None
    return at - clock.monotonic()


#: ``deadline_at()``: the current deadline as a ``stoic.clock.now()`` reading, or None.
#: It is the context variable's own ``get``, bound once: a C call with no Python frame, which
#: every policy makes on every call (benchmarks/overhead.py, "Retry, happy path"). This is
#: the one place that knows how the deadline is stored; everything else calls this.
deadline_at: Callable[[], float | None] = _deadline.get

#: ``set_deadline(at) -> token``: make ``at`` (a ``stoic.clock.now()`` reading) the deadline
#: until ``reset_deadline(token)``. For policies that bound a call themselves (``Timeout``):
#: the caller keeps the earliest deadline, as ``deadline`` does. Bound C methods, as above.
set_deadline: Callable[[float | None], Token[float | None]] = _deadline.set
reset_deadline: Callable[[Token[float | None]], None] = _deadline.reset


class _Scoped(Generic[V]):
    """Set one context variable for a ``with`` (or ``async with``) block, then restore it exactly.

    A subclass names its variable (``_var``) and the value to set (``_value``); the token taken
    on entry is reset on exit, so nested and interleaved blocks each put back what they found.
    """

    __slots__ = ("_token",)
    _var: ClassVar[ContextVar[Any]]

    def __init__(self) -> None:
        self._token: Token[V] | None = None

    def _value(self) -> V:
        raise NotImplementedError

    def __enter__(self: _S) -> _S:
        self._token = self._var.set(self._value())
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            self._var.reset(self._token)
            self._token = None

    async def __aenter__(self: _S) -> _S:
        return self.__enter__()

    async def __aexit__(self, *exc_info: object) -> None:
        self.__exit__(*exc_info)


class deadline(_Scoped["float | None"]):
    """Bound the time of everything inside the block to ``seconds`` from now.

    Works with ``with`` and ``async with``. The deadline is only information: stoic's policies
    and integrations read it (no retry sleeps past it, outgoing HTTP calls shrink their
    timeouts and carry it in a header, a call is not started once it has passed). It does not
    interrupt running code; wrap a call in ``stoic.Timeout`` for that.
    """

    __slots__ = ("seconds",)
    _var = _deadline

    def __init__(self, seconds: float) -> None:
        if seconds != seconds:  # NaN
            raise ValueError("seconds must be a number, got nan")
        super().__init__()
        self.seconds = float(seconds)

    def _value(self) -> float | None:
        at = clock.monotonic() + self.seconds
        outer = _deadline.get()
        return outer if outer is not None and outer < at else at


class bind(_Scoped[Mapping[str, Any]]):
    """Bind request fields (``request_id``, ``user_id``, ...) for the block.

    Logs from stoic's log configuration and outgoing HTTP calls and messages carry them.
    Values bound in an outer block stay visible unless overridden; ``None`` values are ignored.
    """

    __slots__ = ("fields",)
    _var = _fields

    def __init__(self, **fields: Any) -> None:
        super().__init__()
        self.fields = {k: v for k, v in fields.items() if v is not None}

    def _value(self) -> Mapping[str, Any]:
        merged = dict(_fields.get())
        merged.update(self.fields)
        return merged


def current() -> Mapping[str, Any]:
    """The fields bound in this context (read-only view; do not mutate)."""
    return _fields.get()


def get(key: str, default: Any = None) -> Any:
    """One bound field, e.g. ``get("request_id")``."""
    return _fields.get().get(key, default)


def idempotency_key() -> str | None:
    """The idempotency key of the operation running in this context, if any."""
    return _idempotency_key.get()


class using_idempotency_key(_Scoped["str | None"]):
    """Mark the block as part of an operation with idempotency key ``key``.

    Inside it, ``Retry`` treats UNKNOWN failures as safe to retry, because the operation
    will not take effect twice.
    """

    __slots__ = ("key",)
    _var = _idempotency_key

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key

    def _value(self) -> str | None:
        return self.key


def retries_allowed() -> bool:
    """False when the request being served is already retried by its caller (the hop guard).

    stoic's HTTP clients then make one attempt per request and tell the next hop the same,
    so retries do not multiply down a chain of services (3 attempts at each of 4 hops would
    be 81 calls at the bottom).
    """
    bound = _hop.get()
    return bound is None or bound.retry_below


def retry_deepest() -> bool:
    """True when only the hop nearest a failure retries (``hop(deepest=True)``): stoic's HTTP
    clients then retry a failure unless its answer says it was retried below already."""
    bound = _hop.get()
    return bound is not None and bound.deepest


def note_retried() -> None:
    """Record that a failure the request being served passes up was retried already (stoic's
    HTTP clients call it); ``StoicMiddleware`` then says so to the caller (``X-Stoic-Retried``)."""
    bound = _hop.get()
    if bound is not None:
        bound.retried = True


def hop_attempt() -> int | None:
    """Which attempt of its caller the request being served is (1 = first), if it said."""
    bound = _hop.get()
    return None if bound is None else bound.attempt


class hop(_Scoped["hop | None"]):
    """Bind what the caller of this request said about retrying (``StoicMiddleware`` does).

    ``attempt`` is the caller's attempt number; ``retry_below`` False means the caller
    retries this request itself, so nothing below should add retries of its own.
    ``deepest`` (with ``retry_below``) asks for retries at the deepest hop only: the hop
    next to the failing service retries, the hops above pass its answer up. An edge process
    opts in with ``with stoic.context.hop(deepest=True):`` around its calls.
    ``retried`` becomes True when a failure passed up was already retried (``note_retried``).
    """

    __slots__ = ("attempt", "deepest", "retried", "retry_below")
    _var = _hop

    def __init__(self, attempt: int = 1, retry_below: bool = True, *, deepest: bool = False) -> None:
        super().__init__()
        self.attempt = attempt
        self.retry_below = retry_below
        self.deepest = bool(deepest) and retry_below
        self.retried = False

    def _value(self) -> hop | None:
        return self
