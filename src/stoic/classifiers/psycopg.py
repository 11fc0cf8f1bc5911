"""psycopg 3: by SQLSTATE. Serialization failures and deadlocks roll back: TRANSIENT."""

from __future__ import annotations

import psycopg

from ..outcome import Outcome, Verdict, register_default

__all__ = ["by_sqlstate", "install"]

_EXACT = {
    "40001": Outcome.TRANSIENT,  # serialization_failure
    "40P01": Outcome.TRANSIENT,  # deadlock_detected
    "55P03": Outcome.TRANSIENT,  # lock_not_available
    "57014": Outcome.TRANSIENT,  # query_canceled (statement timeout rolls the statement back)
    "53300": Outcome.THROTTLED,  # too_many_connections
    "57P03": Outcome.TRANSIENT,  # cannot_connect_now
}
# What the SQLSTATEs that look alike mean, for the verdict's reason: a statement timeout
# (the query was too slow; with stoic.integrations.psycopg under a deadline it is raised as
# DeadlineExceeded instead) is not a lock timeout (another transaction held the row).
_REASONS = {
    "57014": "statement timeout or cancel (SQLSTATE 57014, rolled back)",
    "55P03": "lock timeout (SQLSTATE 55P03, rolled back)",
}
_CLASSES = {
    "08": Outcome.UNKNOWN,  # connection exception: the commit may or may not have happened
    "53": Outcome.THROTTLED,  # insufficient resources
    "57": Outcome.UNKNOWN,  # operator intervention (admin shutdown, crash)
    "58": Outcome.UNKNOWN,  # system error
}


def by_sqlstate(sqlstate: str | None) -> Outcome | None:
    """The outcome a SQLSTATE implies, or None when it says nothing about retrying."""
    if not sqlstate:
        return None
    return _EXACT.get(sqlstate) or _CLASSES.get(sqlstate[:2])


def _error(exc: BaseException) -> Verdict:
    sqlstate = getattr(exc, "sqlstate", None)
    outcome = by_sqlstate(sqlstate)
    if outcome is not None:
        return Verdict(outcome, None, _REASONS.get(str(sqlstate), f"SQLSTATE {sqlstate}"))
    if isinstance(exc, psycopg.OperationalError):
        text = str(exc).lower()
        if "connection refused" in text or "connection failed" in text or "could not connect" in text:
            return Verdict(Outcome.TRANSIENT, None, "connect failed")
        return Verdict(Outcome.UNKNOWN, None, "connection lost")
    return Verdict(Outcome.PERMANENT, None, type(exc).__name__)


def install() -> None:
    """Register psycopg's classifiers (called by stoic.outcome on first use)."""
    register_default(psycopg.Error, _error)
    try:
        import psycopg_pool
    except ImportError:  # pragma: no cover - the pool is a separate distribution
        return
    register_default(psycopg_pool.PoolTimeout, Verdict(Outcome.TRANSIENT, None, "pool timed out"))
