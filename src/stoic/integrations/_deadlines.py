"""What the database and queue deadline hooks share: refusing late work, naming the cause.

No driver is imported here. Each hook (psycopg, SQLAlchemy, sqlite3, redis) turns the time
left before ``stoic.deadline`` into its library's own timeout, and turns the timeout that
fires *because the deadline ran out* into ``stoic.DeadlineExceeded``, chained to the
driver's error; a timeout of the driver's own that fires earlier is left as it is.
"""

from __future__ import annotations

from ..context import remaining
from ..errors import DeadlineExceeded

__all__ = ["RESET_TIMEOUT", "SET_TIMEOUT", "check_started", "deadline_ran_out", "timeout_ms"]

#: PostgreSQL: bound the session's statements (a whole number of milliseconds, >= 1).
SET_TIMEOUT = "SET statement_timeout = {}"
#: PostgreSQL: back to the server's configured default.
RESET_TIMEOUT = "SET statement_timeout = DEFAULT"

# A timeout that fires with less than this left of the deadline was the deadline firing.
_SLACK = 0.005


def check_started(what: str) -> float | None:
    """The time left, or ``DeadlineExceeded`` when it has run out: ``what`` is not started."""
    left = remaining()
    if left is not None and left <= 0:
        raise DeadlineExceeded(f"deadline passed before {what} was sent; it was not run")
    return left


def timeout_ms(left: float) -> int:
    """``left`` seconds as PostgreSQL's statement_timeout: whole milliseconds, at least 1."""
    return max(1, int(left * 1000))


def deadline_ran_out(exc: BaseException, what: str) -> DeadlineExceeded | None:
    """The ``DeadlineExceeded`` to raise from ``exc`` when the deadline has (all but) run out."""
    left = remaining()
    if left is None or left > _SLACK:
        return None
    error = DeadlineExceeded(f"deadline ran out during {what} ({type(exc).__name__})")
    error.__cause__ = exc
    return error
