"""Events the idempotency layer emits (see ``stoic.events`` for sinks and the base class).

``name`` is the idempotent operation's name: by default the function's qualified name, or
for the middleware its ``namespace`` (``"http"`` unless set). ``key`` is the client's key,
never the stored result.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..events import Event

__all__ = [
    "IdempotencyEvent",
    "IdempotencyKeyRejected",
    "IdempotencyLeaseLost",
    "IdempotencyLeaseTakenOver",
    "IdempotencyRecordCorrupted",
    "IdempotentReplayed",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class IdempotencyEvent(Event):
    """What every idempotency event carries: ``name`` (the operation) and ``key`` (the
    client's key). Subscribe to this class to see them all."""

    key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class IdempotentReplayed(IdempotencyEvent):
    """A repeat of a completed key got the stored result without running again.

    ``error_type`` is set when the stored outcome was a failure, replayed as
    ``IdempotencyStoredError``.
    """

    error_type: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class IdempotencyKeyRejected(IdempotencyEvent):
    """A call was refused: ``reason`` is ``"in_flight"`` or ``"mismatch"``."""

    reason: str
    retry_after: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class IdempotencyLeaseTakenOver(IdempotencyEvent):
    """A claim replaced a record whose owner's lease ran out: the work may run twice."""


@dataclass(frozen=True, slots=True, kw_only=True)
class IdempotencyLeaseLost(IdempotencyEvent):
    """The call finished after its lease was taken over; its result was not stored."""


@dataclass(frozen=True, slots=True, kw_only=True)
class IdempotencyRecordCorrupted(IdempotencyEvent):
    """A stored record could not be read; it was treated as absent and the call ran again."""

    problem: str
