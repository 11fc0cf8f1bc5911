"""The transactional outbox, and its mirror on the consumer side, the inbox.

The problem: a service writes an order to its database and must publish "order placed".
Publish first and crash before the commit, and consumers hear of an order that does not
exist; commit first and crash before publishing, and the event is lost. ``Outbox.add``
writes the message into an outbox table *in the caller's own transaction*, so the message
exists exactly when the order does. ``OutboxRelay`` then publishes pending rows in order,
each with its own id, and marks them sent. A relay that dies after publishing and before
marking publishes the same ids again when it restarts; the broker's de-duplication (SQLite,
Redis, memory) drops them, and a de-duplicating consumer absorbs them on any broker.

``Inbox`` is the consumer's half: ``inbox.mark(conn, message)`` records the message id in
the handler's own transaction, next to the handler's writes. If the id is already there the
work was done and committed before, and the handler skips it. Because the mark and the
effect commit together, a crash at any point leaves both or neither: the effect happens
exactly once, even under SIGKILL, which no separate dedupe record can promise.

Both work with ``sqlite3`` and ``psycopg`` (3) connections. The caller owns transactions:
``add`` and ``mark`` never commit.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

from .. import clock
from .broker import SyncBroker, check_int, prepare_one
from .model import Encoded, Message, decode_headers, dump_headers

__all__ = ["Inbox", "Outbox", "OutboxRelay"]

_log = logging.getLogger("stoic.messaging")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def _check_table(table: str) -> str:
    if not isinstance(table, str) or not _NAME.match(table):
        raise ValueError(f"table must be a plain SQL identifier, got {table!r}")
    return table


def _is_sqlite(conn: Any) -> bool:
    return type(conn).__module__.startswith(("sqlite3", "_sqlite3"))


def _sql(conn: Any, statement: str) -> str:
    """Statements are written with ``?``; psycopg wants ``%s``."""
    return statement if _is_sqlite(conn) else statement.replace("?", "%s")


class _Table:
    """One table of the caller's database, named ``table`` (checked: a plain identifier)."""

    default_table: str

    def __init__(self, table: str | None = None) -> None:
        self.table = _check_table(self.default_table if table is None else table)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(table={self.table!r})"


class Outbox(_Table):
    """Messages written in the caller's transaction, for ``OutboxRelay`` to publish.

    Args:
        table: the outbox table's name (created by ``create``; default ``stoic_outbox``).
    """

    default_table = "stoic_outbox"

    def create(self, conn: Any) -> None:
        """Create the outbox table if it is missing (in the caller's transaction)."""
        key = "INTEGER PRIMARY KEY" if _is_sqlite(conn) else "BIGSERIAL PRIMARY KEY"
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} (seq {key}, topic TEXT NOT NULL,"
            " id TEXT NOT NULL, body TEXT NOT NULL, headers TEXT, available_at DOUBLE PRECISION"
            " NOT NULL, created_at DOUBLE PRECISION NOT NULL, sent_at DOUBLE PRECISION)"
        )
        conn.execute(
            f"CREATE INDEX IF NOT EXISTS {self.table}_pending ON {self.table} (seq)"
            " WHERE sent_at IS NULL"
        )

    def add(
        self, conn: Any, topic: str, payload: Any, *, id: str | None = None,
        headers: Mapping[str, str] | None = None, delay: float = 0.0,
    ) -> str:
        """Queue ``payload`` for ``topic`` inside the caller's open transaction; return its id.

        The payload is encoded now, so an unencodable payload raises ``CodecError`` before
        anything is written and the caller's transaction can roll back cleanly. Headers get
        the current request id and trace context, as a direct publish would.
        """
        msg_id, body, head, delay = prepare_one(topic, payload, id, headers, delay)
        now = clock.wall()
        conn.execute(
            _sql(conn, f"INSERT INTO {self.table} (topic, id, body, headers, available_at,"
                 " created_at) VALUES (?, ?, ?, ?, ?, ?)"),
            (topic, msg_id, body, dump_headers(head) if head else None, now + delay, now),
        )
        return msg_id


class OutboxRelay:
    """Publishes an outbox's pending rows to a broker, in order, and marks them sent.

    Args:
        db: a connection (sqlite3 or psycopg) the relay owns and commits on; not shared
            with other threads.
        broker: where to publish (any stoic broker).
        outbox: the ``Outbox`` whose table to read (default table ``stoic_outbox``).
        batch: rows read, published and marked per round.
        poll_interval: seconds ``run`` waits when nothing is pending.

    Rows are published in ``seq`` order with their ids and their remaining delay. If the
    relay crashes between publishing and marking, the next round publishes the same ids
    again; the broker's de-duplication window (or the consumer's dedupe) absorbs them.
    Sent rows stay (with ``sent_at``) until ``purge_sent`` removes them.
    """

    def __init__(
        self, db: Any, broker: SyncBroker, *, outbox: Outbox | None = None, batch: int = 100,
        poll_interval: float = 0.5,
    ) -> None:
        check_int("batch", batch)
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be > 0 seconds, got {poll_interval!r}")
        self.db = db
        self.broker = broker
        self.outbox = outbox or Outbox()
        self.batch = batch
        self.poll_interval = float(poll_interval)
        self._stop = threading.Event()
        self.after_publish: Callable[[list[str]], None] | None = None  # a seam for crash tests

    def relay_once(self) -> int:
        """Publish and mark one batch of pending rows; return how many were relayed."""
        table, db = self.outbox.table, self.db
        rows = db.execute(
            _sql(db, f"SELECT seq, topic, id, body, headers, available_at FROM {table}"
                 " WHERE sent_at IS NULL ORDER BY seq LIMIT ?"),
            (self.batch,),
        ).fetchall()
        _end(db)
        if not rows:
            return 0
        now = clock.wall()
        published: list[str] = []
        for _seq, topic, msg_id, body, raw_headers, available_at in rows:
            headers, _ = decode_headers(raw_headers)
            delay = max(0.0, float(available_at) - now)
            _republish(self.broker, topic, body, msg_id, headers, delay)
            published.append(msg_id)
        if self.after_publish is not None:
            self.after_publish(published)
        sent_at = clock.wall()
        # Mark exactly the rows published: a range would also catch a row with a lower
        # sequence number that committed after our read (PostgreSQL sequences allow that).
        db.cursor().executemany(
            _sql(db, f"UPDATE {table} SET sent_at = ? WHERE seq = ?"),
            [(sent_at, row[0]) for row in rows],
        )
        db.commit()
        return len(rows)

    def run(self, *, stop_when_empty: bool = False) -> int:
        """Relay until ``stop()`` (or until nothing is pending); returns rows relayed."""
        self._stop.clear()
        total = 0
        while not self._stop.is_set():
            try:
                n = self.relay_once()
            except Exception:
                _log.exception("outbox relay round failed; retrying")
                _rollback(self.db)
                self._stop.wait(self.poll_interval)
                continue
            total += n
            if n == 0:
                if stop_when_empty:
                    return total
                self._stop.wait(self.poll_interval)
        return total

    def stop(self) -> None:
        self._stop.set()

    def purge_sent(self, older_than: float = 86400.0) -> int:
        """Delete rows sent more than ``older_than`` seconds ago; returns how many."""
        db = self.db
        cur = db.execute(
            _sql(db, f"DELETE FROM {self.outbox.table} WHERE sent_at IS NOT NULL AND sent_at < ?"),
            (clock.wall() - older_than,),
        )
        db.commit()
        return int(cur.rowcount)


def _republish(
    broker: SyncBroker, topic: str, body: str, msg_id: str, headers: dict[str, str],
    delay: float,
) -> None:
    """Publish a stored body as it is, never decoded here: a payload type the relay's process
    does not know, or a body damaged in the table, reaches the consumer, whose worker
    dead-letters it as malformed, instead of stopping every row behind it."""
    broker.publish(topic, Encoded(body), id=msg_id, headers=headers, delay=delay)


def _end(db: Any) -> None:
    """End the read transaction psycopg opened implicitly (sqlite3 opened none)."""
    if not _is_sqlite(db):
        db.commit()


def _rollback(db: Any) -> None:
    try:
        db.rollback()
    except Exception:
        _log.exception("outbox relay: rollback failed")


class Inbox(_Table):
    """Handled message ids, recorded in the handler's own transaction.

    Usage, in a handler::

        with conn:                                  # one transaction
            if inbox.mark(conn, message):           # False: done and committed before
                conn.execute("INSERT INTO payments ...")

    Args:
        table: the inbox table's name (created by ``create``; default ``stoic_inbox``).
    """

    default_table = "stoic_inbox"

    def create(self, conn: Any) -> None:
        """Create the inbox table if it is missing (in the caller's transaction)."""
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} (topic TEXT NOT NULL, id TEXT NOT NULL,"
            " handled_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (topic, id))"
        )

    def mark(self, conn: Any, message: Message) -> bool:
        """Record ``message`` as handled in the open transaction; False if it already was.

        Concurrent handlers of the same id serialise on the primary key: one inserts, the
        other waits for its commit and then sees the row (or, if it rolled back, inserts).
        """
        cur = conn.execute(
            _sql(conn, f"INSERT INTO {self.table} (topic, id, handled_at) VALUES (?, ?, ?)"
                 " ON CONFLICT (topic, id) DO NOTHING"),
            (message.topic, message.id, clock.wall()),
        )
        return int(cur.rowcount) == 1

    def seen(self, conn: Any, message: Message) -> bool:
        """Whether ``message`` was marked (and committed, or marked in this transaction)."""
        row = conn.execute(
            _sql(conn, f"SELECT 1 FROM {self.table} WHERE topic = ? AND id = ?"),
            (message.topic, message.id),
        ).fetchone()
        return row is not None
