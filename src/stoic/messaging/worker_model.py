"""What a ``Worker`` decides and counts, and the scope its handler runs in.

``Action`` is the decision about a message after an attempt, ``WorkerCounts`` what a worker
did; ``message_scope`` binds the message's request id and opens a consumer span (when
OpenTelemetry is instrumented) around the handler.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from .. import context
from ..idempotency.store import Store
from .model import REQUEST_ID_HEADER, Message

__all__ = [
    "ACK",
    "Action",
    "DedupeUse",
    "WorkerCounts",
    "as_awaitable",
    "dedupe_key",
    "message_scope",
]


@dataclass(frozen=True, slots=True)
class Action:
    """What to do with a message after an attempt: ``ack``, ``retry`` after ``delay``
    seconds, ``dead`` with a ``reason`` and ``error``, or ``wait`` (another worker is
    handling it right now: give it back after ``delay``)."""

    kind: Literal["ack", "retry", "dead", "wait"]
    delay: float = 0.0
    reason: str = ""
    error: str | None = None
    outcome: str = ""
    error_type: str | None = None


#: the action of a handled message
ACK = Action("ack")


@dataclass(slots=True)
class WorkerCounts:
    """What a worker did since it started (read it after ``run`` returns)."""

    handled: int = 0
    duplicates: int = 0
    retried: int = 0
    dead_lettered: int = 0


class DedupeUse:
    """The worker's side of the idempotency ``Store`` protocol."""

    __slots__ = ("lease", "store", "ttl")

    def __init__(self, store: Store, lease: float, ttl: float) -> None:
        if not isinstance(store, Store):
            raise ValueError(
                f"dedupe must be an idempotency store (stoic.idempotency.Store), got {store!r}"
            )
        self.store, self.lease, self.ttl = store, lease, ttl


def dedupe_key(message: Message) -> str:
    """The idempotency key of a message's handling."""
    return f"stoic-message:{message.topic}:{message.id}"


_NO_SCOPE = contextlib.nullcontext()


def message_scope(message: Message) -> contextlib.AbstractContextManager[Any]:
    """Request id and trace context of the message, around its handler."""
    request_id = message.headers.get(REQUEST_ID_HEADER)
    if request_id is None:  # no context to bind: just the span, or nothing
        span = _process_span(message)
        return _NO_SCOPE if span is None else span
    return _bound_scope(message, request_id)


@contextlib.contextmanager
def _bound_scope(message: Message, request_id: str) -> Iterator[None]:
    with context.bind(request_id=request_id):
        span = _process_span(message)  # created with the request id bound
        if span is None:
            yield
        else:
            with span:
                yield


async def as_awaitable(value: Awaitable[Any] | Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


_process_span_fn: Any = None


def _process_span(message: Message) -> Any:
    """A consumer span from stoic.observability.otel, or None when it is unavailable."""
    global _process_span_fn
    if _process_span_fn is None:
        try:
            from ..observability.otel import process_span
        except ImportError:
            _process_span_fn = False
        else:
            _process_span_fn = process_span
    if _process_span_fn is False:
        return None
    try:
        return _process_span_fn(message.topic, dict(message.headers), message_id=message.id)
    except Exception:
        return None
