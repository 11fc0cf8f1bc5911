"""sqlite3 queries that stop at ``stoic.deadline``.

    db = stoic.integrations.sqlite.connect("app.db")
    with stoic.deadline(0.5):
        db.execute("SELECT ...")          # interrupted when the half second is up

SQLite runs inside your process, so nothing times a slow query out on its own. ``connect``
returns a ``sqlite3.Connection`` whose progress handler interrupts a statement once the
deadline of the thread (or task) running it has passed, checked every ``every`` virtual
machine instructions; the statement fails with ``stoic.DeadlineExceeded`` chained to
sqlite3's ``OperationalError("interrupted")``, and the open transaction, if any, is still
yours to roll back. A statement is not started at all once the deadline has passed. Without
a deadline nothing changes, apart from a cheap check every ``every`` instructions.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from ..context import remaining
from ._deadlines import check_started, raise_if_ran_out

__all__ = ["DeadlineConnection", "DeadlineCursor", "bound", "connect"]

#: Instructions between two deadline checks: about a few microseconds of work each.
EVERY = 1000


def _expired() -> int:
    left = remaining()
    return 1 if left is not None and left <= 0 else 0


class DeadlineCursor(sqlite3.Cursor):
    """A cursor whose statements are refused after the deadline and end at it."""

    def execute(self, sql: str, parameters: Any = (), /) -> DeadlineCursor:
        return self._bounded(super().execute, sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> DeadlineCursor:
        return self._bounded(super().executemany, sql, seq_of_parameters)

    def _bounded(self, run: Any, sql: str, parameters: Any) -> DeadlineCursor:
        check_started("the SQLite statement")
        try:
            run(sql, parameters)
        except sqlite3.OperationalError as exc:
            raise_if_ran_out(exc, "interrupted", "an SQLite statement")
            raise
        return self


class DeadlineConnection(sqlite3.Connection):
    """``sqlite3.Connection`` with the deadline's progress handler and ``DeadlineCursor``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.set_progress_handler(_expired, EVERY)

    def cursor(self, factory: Any = None) -> Any:  # type: ignore[override]
        return super().cursor(factory or DeadlineCursor)

    def execute(self, sql: str, parameters: Any = (), /) -> Any:  # type: ignore[override]
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> Any:  # type: ignore[override]
        return self.cursor().executemany(sql, parameters)


def connect(database: str | Any, **kwargs: Any) -> DeadlineConnection:
    """``sqlite3.connect`` returning a ``DeadlineConnection`` (same arguments)."""
    if "factory" in kwargs:
        raise ValueError("factory is not supported: connect() uses DeadlineConnection")
    return sqlite3.connect(database, factory=DeadlineConnection, **kwargs)  # type: ignore[return-value]


def bound(connection: sqlite3.Connection, every: int = EVERY) -> sqlite3.Connection:
    """Install the deadline's progress handler on a connection you opened yourself.

    Its statements then stop at the deadline too, raising sqlite3's
    ``OperationalError("interrupted")`` (``DeadlineConnection`` raises ``DeadlineExceeded``).
    Replaces any progress handler already installed.
    """
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an int >= 1 (instructions), got {every!r}")
    connection.set_progress_handler(_expired, every)
    return connection
