"""sqlite3: a locked or busy database is TRANSIENT; every other database error PERMANENT."""

from __future__ import annotations

import sqlite3

from ..outcome import Outcome, Verdict, register_default

__all__ = ["install"]


def _operational(exc: BaseException) -> Verdict:
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return Verdict(Outcome.TRANSIENT, None, "database is locked")
    if "disk i/o error" in text:
        return Verdict(Outcome.UNKNOWN, None, "disk I/O error")
    return Verdict(Outcome.PERMANENT, None, "sqlite3.OperationalError")


def install() -> None:
    """Register sqlite3's classifiers (called by stoic.outcome on first use)."""
    register_default(sqlite3.OperationalError, _operational)
