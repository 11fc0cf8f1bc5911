"""Exceptions stoic raises. Catch `Rejected` to handle every refusal to start a call.

StoicError
    Rejected                     refused before the call ran; has ``retry_after`` (float | None)
        CircuitOpenError         the breaker is open (or forced open)
        BulkheadFullError        no free slot and no room to wait
        RateLimitedError         over the rate; ``retry_after`` says when a slot frees
    DeadlineExceeded             also a ``TimeoutError``, so ``except TimeoutError`` keeps working
    IdempotencyError
        IdempotencyKeyInUseError     the same key is running elsewhere right now
        IdempotencyKeyMismatchError  the same key came with different arguments
        IdempotencyStoredError       a stored failure, replayed
    CodecError                   a value could not be turned into JSON or back

There is no "retries exhausted" class: giving up re-raises the caller's own exception with a
note (``add_note``) that says what was tried and why it stopped.
"""

from __future__ import annotations

__all__ = [
    "BulkheadFullError",
    "CircuitOpenError",
    "CodecError",
    "DeadlineExceeded",
    "IdempotencyError",
    "IdempotencyKeyInUseError",
    "IdempotencyKeyMismatchError",
    "IdempotencyStoredError",
    "RateLimitedError",
    "Rejected",
    "StoicError",
]


class StoicError(Exception):
    """Base of every exception stoic raises itself."""


class Rejected(StoicError):
    """A policy refused to start the call, so it had no effect and is safe to retry later.

    ``retry_after`` is the number of seconds after which trying again may succeed, or None
    when the policy cannot tell. ``name`` is the policy instance's name, when it has one.
    """

    reason: str = "rejected"

    def __init__(self, message: str, *, retry_after: float | None = None, name: str | None = None):
        super().__init__(message)
        self.retry_after = retry_after
        self.name = name


class CircuitOpenError(Rejected):
    """Raised instead of calling a dependency whose circuit breaker is open."""

    reason = "circuit_open"


class BulkheadFullError(Rejected):
    """Raised when every slot of a bulkhead is busy and its waiting room is full or timed out."""

    reason = "bulkhead_full"


class RateLimitedError(Rejected):
    """Raised when a call would exceed a rate limit; ``retry_after`` says when it would not."""

    reason = "rate_limited"


class DeadlineExceeded(StoicError, TimeoutError):
    """The time allowed for the work ran out, before the call started or while it ran."""


class IdempotencyError(StoicError):
    """Base of the idempotency errors."""


class IdempotencyKeyInUseError(IdempotencyError):
    """Another call with the same key is in flight; retry later (HTTP 409 in the draft)."""

    def __init__(self, message: str, *, key: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.key = key
        self.retry_after = retry_after


class IdempotencyKeyMismatchError(IdempotencyError):
    """The key was used before with different arguments (HTTP 422 in the draft)."""

    def __init__(self, message: str, *, key: str | None = None):
        super().__init__(message)
        self.key = key


class IdempotencyStoredError(IdempotencyError):
    """A failure stored by an earlier run of the same key, replayed instead of running again.

    ``type_name`` and ``message`` are those of the original exception. The original type is
    not re-created: stored records are data, never code.
    """

    def __init__(self, type_name: str, message: str, *, key: str | None = None):
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.key = key


class CodecError(StoicError, ValueError):
    """A value could not be encoded to JSON, or stored JSON could not be decoded."""
