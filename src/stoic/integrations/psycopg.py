"""psycopg 3 statements bounded by ``stoic.deadline``: the server cancels them in time.

    conn = stoic.integrations.psycopg.connect("postgresql://...")
    with stoic.deadline(0.5):
        conn.execute("SELECT ...")       # cancelled by PostgreSQL when the time is up

Before each statement run under a deadline, the connection sets PostgreSQL's
``statement_timeout`` to the time left (``SET statement_timeout``, one extra round trip);
the first statement after one without a deadline puts the server's default back. When the
server cancels a statement for that timeout, the error is ``stoic.DeadlineExceeded`` chained
to psycopg's ``QueryCanceled``; a lock timeout (``LockNotAvailable``, SQLSTATE 55P03) stays
what it is, a TRANSIENT failure worth retrying. A statement is not sent at all once the
deadline has passed. As with any failed statement, an open transaction must be rolled back.

Under a deadline the statement timeout is the time left, whatever the session had before.
Works for ``psycopg.Connection`` and ``psycopg.AsyncConnection`` (``aconnect``).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import errors

from ._deadlines import RESET_TIMEOUT, SET_TIMEOUT, check_started, raise_if_ran_out, timeout_ms

__all__ = [
    "AsyncDeadlineConnection",
    "AsyncDeadlineCursor",
    "DeadlineConnection",
    "DeadlineCursor",
    "aconnect",
    "connect",
]


def _setting(connection: Any) -> str | None:
    """The SET to send before the next statement (or None), noting it on the connection."""
    left = check_started("the statement")
    if left is not None:
        connection.stoic_bounded = True
        return SET_TIMEOUT.format(timeout_ms(left))
    if connection.stoic_bounded:
        connection.stoic_bounded = False
        return RESET_TIMEOUT
    return None


class DeadlineCursor(psycopg.Cursor[Any]):
    """A cursor that bounds each statement by the deadline (see the module docstring)."""

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> DeadlineCursor:
        setting = _setting(self.connection)
        if setting is not None:
            super().execute(setting, prepare=False)  # a new text each time: never prepared
        try:
            super().execute(query, params, **kwargs)
        except errors.QueryCanceled as exc:
            raise_if_ran_out(exc, "statement timeout", "a PostgreSQL statement")
            raise
        return self


class AsyncDeadlineCursor(psycopg.AsyncCursor[Any]):
    """The ``psycopg.AsyncCursor`` twin of ``DeadlineCursor``."""

    async def execute(self, query: Any, params: Any = None, **kwargs: Any) -> AsyncDeadlineCursor:
        setting = _setting(self.connection)
        if setting is not None:
            await super().execute(setting, prepare=False)
        try:
            await super().execute(query, params, **kwargs)
        except errors.QueryCanceled as exc:
            raise_if_ran_out(exc, "statement timeout", "a PostgreSQL statement")
            raise
        return self


class DeadlineConnection(psycopg.Connection[Any]):
    """A ``psycopg.Connection`` whose cursors are ``DeadlineCursor``."""

    stoic_bounded = False  # whether the session's statement_timeout is one stoic set

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cursor_factory = DeadlineCursor


class AsyncDeadlineConnection(psycopg.AsyncConnection[Any]):
    """A ``psycopg.AsyncConnection`` whose cursors are ``AsyncDeadlineCursor``."""

    stoic_bounded = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cursor_factory = AsyncDeadlineCursor


def connect(conninfo: str = "", **kwargs: Any) -> DeadlineConnection:
    """``psycopg.connect`` returning a ``DeadlineConnection`` (same arguments)."""
    return DeadlineConnection.connect(conninfo, **kwargs)


async def aconnect(conninfo: str = "", **kwargs: Any) -> AsyncDeadlineConnection:
    """``psycopg.AsyncConnection.connect`` returning an ``AsyncDeadlineConnection``."""
    return await AsyncDeadlineConnection.connect(conninfo, **kwargs)
