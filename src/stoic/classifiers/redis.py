"""redis-py: refused connects and loading/failover replies TRANSIENT, lost connections UNKNOWN."""

from __future__ import annotations

import redis.exceptions as rx

from ..outcome import Classifier, Outcome, Verdict, register_default

__all__ = ["install"]


def _connection_error(exc: BaseException) -> Verdict:
    text = str(exc).lower()
    if "connecting to" in text or "connection refused" in text or "error 111" in text:
        return Verdict(Outcome.TRANSIENT, None, "connect failed")
    return Verdict(Outcome.UNKNOWN, None, "connection lost")


_TABLE: tuple[tuple[type[BaseException], Classifier], ...] = (
    (rx.ConnectionError, _connection_error),
    (rx.TimeoutError, Verdict(Outcome.UNKNOWN, None, "timed out")),
    (rx.BusyLoadingError, Verdict(Outcome.TRANSIENT, None, "server loading")),
    (rx.ReadOnlyError, Verdict(Outcome.TRANSIENT, None, "replica is read-only (failover)")),
    (rx.TryAgainError, Verdict(Outcome.TRANSIENT, None, "try again")),
    (rx.ClusterDownError, Verdict(Outcome.TRANSIENT, None, "cluster down")),
    (rx.AuthenticationError, Outcome.PERMANENT),
    (rx.ResponseError, Outcome.PERMANENT),
    (rx.DataError, Outcome.PERMANENT),
)


def install() -> None:
    """Register this library's classifiers (called by stoic.outcome on first use)."""
    for exc_type, what in _TABLE:
        register_default(exc_type, what)
