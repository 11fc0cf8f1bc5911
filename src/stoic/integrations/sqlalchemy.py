"""SQLAlchemy engines whose statements stop at ``stoic.deadline`` (PostgreSQL and SQLite).

    engine = sqlalchemy.create_engine("postgresql+psycopg://...")
    stoic.integrations.sqlalchemy.install(engine)
    with stoic.deadline(0.5), engine.connect() as conn:
        conn.execute(text("SELECT ..."))     # cancelled when the half second is up

``install`` adds engine event hooks. On PostgreSQL, a statement run under a deadline is
preceded by ``SET statement_timeout`` to the time left (the server's default is put back
before the next statement without one), exactly as ``stoic.integrations.psycopg`` does. On
SQLite, each pooled connection gets the progress handler of ``stoic.integrations.sqlite``,
which interrupts a statement once the deadline has passed. Either way the failure reaches
you as ``stoic.DeadlineExceeded`` chained to the driver's error (SQLAlchemy's
``OperationalError`` wrapping it), and a statement is not sent once the deadline has
passed. Other dialects are refused with ``ValueError``.
"""

from __future__ import annotations

from typing import Any

from ..context import remaining
from ..errors import DeadlineExceeded
from ._deadlines import RESET_TIMEOUT, SET_TIMEOUT, check_started, deadline_ran_out, timeout_ms

__all__ = ["install"]

_MARK = "stoic_bounded"  # in a DBAPI connection's .info: stoic set its statement_timeout


def _postgres_before(conn: Any, cursor: Any, statement: Any, parameters: Any, context: Any,
                     executemany: bool) -> None:
    info = conn.connection.info
    left = check_started("the statement")
    if left is not None:
        info[_MARK] = True
        cursor.execute(SET_TIMEOUT.format(timeout_ms(left)))
    elif info.get(_MARK):
        info[_MARK] = False
        cursor.execute(RESET_TIMEOUT)


def _sqlite_before(conn: Any, cursor: Any, statement: Any, parameters: Any, context: Any,
                   executemany: bool) -> None:
    check_started("the statement")
    info = conn.connection.info
    if not info.get(_MARK):
        from .sqlite import bound

        bound(conn.connection.dbapi_connection)
        info[_MARK] = True


def _deadline_error(context: Any) -> DeadlineExceeded | None:
    original = context.original_exception
    text = str(original)
    if "statement timeout" not in text and "interrupted" not in text:
        return None
    left = remaining()
    if left is None:
        return None
    return deadline_ran_out(original, "a database statement")


def install(engine: Any) -> Any:
    """Bound ``engine``'s statements by the deadline; returns ``engine``.

    ``engine`` is a ``sqlalchemy.Engine`` (for an ``AsyncEngine`` pass ``.sync_engine``).
    """
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if not isinstance(engine, Engine):
        raise ValueError(f"engine must be a sqlalchemy.Engine (AsyncEngine: pass .sync_engine), "
                         f"got {engine!r}")
    dialect = engine.dialect.name
    if dialect == "postgresql":
        before = _postgres_before
    elif dialect == "sqlite":
        before = _sqlite_before
    else:
        raise ValueError(f"engine must be a PostgreSQL or SQLite engine, got dialect {dialect!r}")
    event.listen(engine, "before_cursor_execute", before)

    def handle_error(context: Any) -> Any:
        error = _deadline_error(context)
        if error is not None:
            error.__cause__ = context.sqlalchemy_exception or context.original_exception
            raise error

    event.listen(engine, "handle_error", handle_error)
    return engine
