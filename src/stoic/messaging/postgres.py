"""A durable queue in the PostgreSQL you already run: ``postgresql://`` in ``connect``.

How it keeps the contract:

- **Durability.** Every publish, claim, ack and nack is one committed statement (autocommit).
  Publish, ack, nack, extend and dead-letter commit durably with PostgreSQL's defaults
  (``synchronous_commit = on``, ``fsync = on``): a message that ``publish`` returned for
  survives a crash of the worker, of the publisher and of the database server, and so does
  an ack once it returned. A claim commits with ``synchronous_commit = off`` (for its own
  transaction only): it does not wait for the WAL flush, so a server crash within about
  0.6 s of a claim (three ``wal_writer_delay``) can undo it, which puts the message back
  as it was, queued, to be delivered again: what at-least-once delivery already allows
  (the ack of such a claim fails; ``dedupe=`` or the ``Inbox`` absorb the repeat). The WAL
  is one sequence, so the first durable commit after a claim (its ack) makes the claim
  durable too. Nothing published is lost by this; it halves the WAL flushes of a claim and
  ack, which set their pace.
- **Claims without contention.** A claim is one ``UPDATE ... FROM (SELECT ... ORDER BY
  available_at LIMIT n FOR UPDATE SKIP LOCKED)``: concurrent workers skip each other's rows
  instead of waiting for them, and a claim reads the first entries of a partial index of
  queued rows however long the backlog is.
- **Leases.** A claim sets ``available_at = now + lease`` and a fresh receipt. A worker that
  dies leaves its rows to become claimable when the lease runs out; such a claim counts the
  row as ``recovered`` in ``stats``. Ack, nack and extend match on the receipt, so a stale
  worker cannot ack a delivery that has been handed to someone else.
- **De-duplication.** ``(topic, id)`` is unique; a finished row keeps its id (without its
  body) for ``dedupe_window`` seconds, so publishing that id again is a no-op.
- **Wake-ups.** ``publish`` sends ``NOTIFY`` on the broker's channel in the same
  transaction; ``wait`` (which the ``Worker`` calls when the queue is empty) returns as soon
  as a notification for its topic arrives, so idle workers react at once instead of polling.
- **Your transaction.** ``publish(..., connection=conn)`` writes the message with *your*
  psycopg connection, inside your open transaction: the message exists exactly when your
  business rows commit. On PostgreSQL this makes a transactional outbox unnecessary.
- **Tables.** Created on first use, in one transaction under an advisory lock (concurrent
  first users do not collide), or ahead of time with ``stoic queue migrate URL`` when the
  application's role may not run DDL (then pass ``create_tables=False``). ``schema`` and
  ``table_prefix`` let several applications (or test runs) share one database.

- **Deadlines.** Under ``stoic.deadline`` each statement runs with ``statement_timeout`` set
  to the time left (``stoic.integrations.psycopg``'s connections: one extra ``SET`` per
  statement, none without a deadline), which bounds waits for locks too, and the wait for a
  pooled connection is bounded by the time left. Either ends in ``stoic.DeadlineExceeded``,
  chained to psycopg's error; the cancelled statement wrote nothing. (``publish`` with your
  ``connection`` runs on it as it is.)

Needs the ``stoic[postgres]`` extra (psycopg >= 3.1 and psycopg-pool); imported when a
broker is created.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .. import clock
from ..integrations._deadlines import pooled
from .broker import (
    ThreadedAsync,
    check_claim,
    check_delay,
    check_int,
    prepare,
    prepare_one,
    require,
)
from .model import DeadLetter, Message, QueueStats, dump_headers, report_requeued
from .postgres_listen import Listener
from .postgres_sql import (
    Statements,
    check_identifier,
    encodable,
    receipt_key,
    row_message,
    schema_sql,
    storable,
)

__all__ = ["PostgresBroker", "schema_sql"]

_WHAT = "a PostgresBroker operation"
_PURGE_EVERY = 2000  # acks between two passes of the de-duplication window cleanup


class PostgresBroker(ThreadedAsync):
    """A durable queue in PostgreSQL tables; see the module docstring for the guarantees.

    Args:
        dsn: a libpq connection string or URL (``postgresql://user@host:5432/db``).
        schema: the schema holding the tables (created if missing).
        table_prefix: prefix of the table names (``stoic_messages``, ``stoic_dead``...).
        dedupe_window: seconds during which an id already published is not queued again
            (default a day). Rows of finished messages are kept that long, without bodies.
        min_size, max_size: connection pool bounds.
        create_tables: create the tables on first use (otherwise run ``stoic queue migrate``).
        notify: send ``NOTIFY`` on publish so waiting workers wake at once.

    The async twins run the sync methods in a thread (``ThreadedAsync``), over the same pool.
    """

    def __init__(
        self, dsn: str, *, schema: str = "public", table_prefix: str = "stoic_",
        dedupe_window: float = 86400.0, min_size: int = 1, max_size: int = 10,
        create_tables: bool = True, notify: bool = True,
    ) -> None:
        check_identifier("schema", schema)
        check_identifier("table_prefix", table_prefix, empty=True)
        if not dedupe_window >= 0:
            raise ValueError(f"dedupe_window must be >= 0 seconds, got {dedupe_window!r}")
        check_int("min_size", min_size, 0)
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < max(
            1, min_size
        ):
            raise ValueError(f"max_size must be an int >= max(1, min_size), got {max_size!r}")
        psycopg_pool = require("psycopg_pool", "PostgresBroker", "postgres")
        from ..integrations.psycopg import DeadlineConnection
        self.dsn = dsn
        self.schema, self.table_prefix = schema, table_prefix
        self.dedupe_window = float(dedupe_window)
        self.notify = bool(notify)
        self.channel = f"{schema}_{table_prefix}messages"
        self._pool = psycopg_pool.ConnectionPool(
            dsn, min_size=min_size, max_size=max_size,
            # prepared on first use on each connection (the pool hands them out in turn)
            kwargs={"autocommit": True, "prepare_threshold": 0},
            connection_class=DeadlineConnection,
            open=True, name=f"stoic-{self.channel}",
        )
        self._ready = not create_tables
        self._ready_lock = threading.Lock()
        self._acks_since_purge = 0
        self._listener: Listener | None = None
        self._sql = Statements.of(schema, table_prefix)

    def __repr__(self) -> str:
        return (
            f"PostgresBroker(schema={self.schema!r}, table_prefix={self.table_prefix!r})"
        )

    # --- setup ---------------------------------------------------------------------------

    def migrate(self) -> None:
        """Create the schema and tables now (under an advisory lock; safe to run again)."""
        sql = schema_sql(self.schema, self.table_prefix)
        with pooled(self._pool, _WHAT) as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                         (f"stoic-messaging:{self.channel}",))
            conn.execute(sql, prepare=False)  # several statements, as one simple query
        self._ready = True

    def _setup(self) -> None:
        if self._ready:
            return
        with self._ready_lock:
            if not self._ready:
                self.migrate()

    # --- publishing ----------------------------------------------------------------------

    def publish(
        self, topic: str, payload: Any, *, id: str | None = None,
        headers: Mapping[str, str] | None = None, delay: float = 0.0,
        connection: Any = None,
    ) -> str:
        """``Broker.publish``; with ``connection`` (a psycopg connection) the message is
        written in that connection's current transaction and is queued when it commits."""
        msg_id, body, head, delay = prepare_one(topic, payload, id, headers, delay)
        self._insert(topic, [msg_id], [body], head, delay, connection)
        return msg_id

    def publish_many(
        self, topic: str, payloads: Iterable[Any], *, ids: Sequence[str] | None = None,
        headers: Mapping[str, str] | None = None, delay: float = 0.0,
        connection: Any = None,
    ) -> list[str]:
        """``Broker.publish_many``, in one statement; ``connection`` as for ``publish``."""
        msg_ids, bodies, head, delay = prepare(topic, payloads, ids, headers, delay)
        if msg_ids:
            self._insert(topic, msg_ids, bodies, head, delay, connection)
        return msg_ids

    def _insert(
        self, topic: str, ids: list[str], bodies: list[str], head: dict[str, str],
        delay: float, connection: Any,
    ) -> None:
        if len(set(ids)) != len(ids):  # one statement may not touch a row twice: first wins
            seen: dict[str, str] = {}
            for i, b in zip(ids, bodies, strict=True):
                seen.setdefault(i, b)
            ids, bodies = list(seen), list(seen.values())
        self._setup()
        now = clock.wall()
        params: dict[str, Any] = {
            "topic": topic, "ids": ids, "bodies": bodies,
            "headers": dump_headers(head) if head else None, "now": now, "at": now + delay,
            "horizon": now - self.dedupe_window,
        }
        sql = self._sql.insert
        if any("\x00" in b for b in bodies) or not encodable(bodies):
            sql, params["raws"] = self._sql.insert_raw, [
                None if storable(b) else b.encode("utf-8", "surrogatepass") for b in bodies
            ]
            params["bodies"] = [b if storable(b) else None for b in bodies]
        if self.notify and delay == 0:  # one statement, one round trip: insert and wake
            sql = f"WITH ins AS ({sql}) SELECT pg_notify(%(channel)s, %(topic)s)"
            params["channel"] = self.channel
        if connection is not None:
            connection.execute(sql, params)
            return
        with pooled(self._pool, _WHAT) as conn:
            conn.execute(sql, params)

    # --- consuming -----------------------------------------------------------------------

    def claim(self, topic: str, *, max_messages: int = 1, lease: float = 30.0) -> list[Message]:
        check_claim(max_messages, lease)
        self._setup()
        token = uuid.uuid4().hex
        now = clock.wall()
        until = now + lease
        params = {"topic": topic, "now": now, "n": max_messages, "token": token,
                  "until": until}
        with pooled(self._pool, _WHAT) as conn:
            rows = conn.execute(self._sql.claim, params).fetchall()
        rows.sort(key=lambda r: r[0])
        return [row_message(topic, row, token, until) for row in rows]

    def ack(self, message: Message) -> bool:
        return self.ack_many([message]) == 1

    def ack_many(self, messages: Sequence[Message]) -> int:
        if not messages:
            return 0
        keys = [receipt_key(m) for m in messages]
        self._setup()
        with pooled(self._pool, _WHAT) as conn:
            if len(keys) == 1:  # plain parameters: no arrays to encode and unnest
                done = conn.execute(self._sql.ack_one, keys[0]).rowcount
            else:
                done = conn.execute(
                    self._sql.ack, ([k[0] for k in keys], [k[1] for k in keys])
                ).rowcount
            self._purge_now_and_then(conn, len(keys))
        return int(done)

    def ack_and_claim(
        self, done: Sequence[Message], topic: str, *, max_messages: int = 1,
        lease: float = 30.0,
    ) -> tuple[int, list[Message]]:
        """``AckAndClaim.ack_and_claim``: one statement, one round trip. It commits durably
        (the acks' commit), so the claim in it is durable too."""
        check_claim(max_messages, lease)
        if not done:
            return 0, self.claim(topic, max_messages=max_messages, lease=lease)
        keys = [receipt_key(m) for m in done]
        self._setup()
        token = uuid.uuid4().hex
        now = clock.wall()
        until = now + lease
        params: dict[str, Any] = {"topic": topic, "now": now, "n": max_messages,
                                  "token": token, "until": until}
        if len(keys) == 1:
            params["seq"], params["receipt"] = keys[0]
            sql = self._sql.ack_claim_one
        else:
            params["seqs"], params["receipts"] = [k[0] for k in keys], [k[1] for k in keys]
            sql = self._sql.ack_claim_many
        with pooled(self._pool, _WHAT) as conn:
            rows = conn.execute(sql, params).fetchall()
            self._purge_now_and_then(conn, len(keys))
        acked = int(rows[0][0])
        claimed = sorted((r[1:] for r in rows if r[1] is not None), key=lambda r: r[0])
        return acked, [row_message(topic, row, token, until) for row in claimed]

    def _purge_now_and_then(self, conn: Any, acked: int) -> None:
        """Every ``_PURGE_EVERY`` acks, drop finished rows older than the de-dupe window."""
        self._acks_since_purge += acked
        if self._acks_since_purge >= _PURGE_EVERY:
            self._acks_since_purge = 0
            conn.execute(self._sql.purge_finished, (clock.wall() - self.dedupe_window,))

    def nack(self, message: Message, delay: float = 0.0) -> bool:
        return self._move(message, check_delay(delay), release=True)

    def extend_lease(self, message: Message, lease: float) -> bool:
        check_claim(1, lease)
        return self._move(message, lease, release=False)

    def _move(self, message: Message, seconds: float, *, release: bool) -> bool:
        seq, token = receipt_key(message)
        self._setup()
        with pooled(self._pool, _WHAT) as conn:
            cur = conn.execute(self._sql.move, (clock.wall() + seconds, release, seq, token))
        return bool(cur.rowcount == 1)

    def dead_letter(self, message: Message, reason: str, error: str | None = None) -> None:
        seq, token = receipt_key(message)
        self._setup()
        with pooled(self._pool, _WHAT) as conn:
            conn.execute(self._sql.dead, {"seq": seq, "receipt": token,
                                          "reason": reason, "error": error,
                                          "now": clock.wall()})

    def wait(self, topic: str, timeout: float) -> bool:
        """Block until a message is published on ``topic`` (a ``NOTIFY``) or ``timeout``
        seconds pass; True when woken by a publish. The ``Worker`` calls this when the
        queue is empty instead of sleeping its ``poll_interval``."""
        if not self.notify:
            clock.sleep(timeout)
            return False
        listener = self._listener
        if listener is None:
            with self._ready_lock:
                if self._listener is None:
                    self._listener = Listener(self.dsn, self.channel)
                listener = self._listener
        return listener.wait(topic, timeout)

    # --- inspection and the DLQ ----------------------------------------------------------

    def stats(self, topic: str) -> QueueStats:
        self._setup()
        now = clock.wall()
        with pooled(self._pool, _WHAT) as conn:
            row = conn.execute(
                self._sql.stats, {"now": now, "topic": topic},
            ).fetchone()
        ready, delayed, in_flight, dead, recovered = (int(n) for n in row or (0,) * 5)
        return QueueStats(topic, ready, delayed, in_flight, dead, recovered=recovered)

    def peek(self, topic: str, limit: int = 10) -> list[Message]:
        self._setup()
        with pooled(self._pool, _WHAT) as conn:
            rows = conn.execute(
                "SELECT seq, id, body, headers, attempts, created_at, raw, available_at"
                f" FROM {self._sql.m} WHERE topic = %s AND state = 0"
                " ORDER BY available_at, seq LIMIT %s",
                (topic, limit),
            ).fetchall()
        return [row_message(topic, r[:7], "", r[7]) for r in rows]

    def dead_letters(self, topic: str, limit: int = 100) -> list[DeadLetter]:
        self._setup()
        with pooled(self._pool, _WHAT) as conn:
            rows = conn.execute(
                "SELECT seq, id, body, headers, attempts, created_at, raw, reason, error, dead_at"
                f" FROM {self._sql.d} WHERE topic = %s ORDER BY seq LIMIT %s",
                (topic, limit),
            ).fetchall()
        return [
            DeadLetter(message=row_message(topic, r[:7], "", r[9]), reason=r[7], error=r[8],
                       dead_at=r[9])
            for r in rows
        ]

    def requeue(self, topic: str, ids: Sequence[str] | None = None) -> int:
        self._setup()
        params = {"topic": topic, "all": ids is None, "ids": list(ids or []),
                  "now": clock.wall()}
        with pooled(self._pool, _WHAT) as conn, conn.transaction():
            count = conn.execute(self._sql.requeue, params).rowcount
            if count and self.notify:
                conn.execute("SELECT pg_notify(%s, %s)", (self.channel, topic))
        return report_requeued(self, topic, int(count))

    def purge_dead(self, topic: str) -> int:
        self._setup()
        with pooled(self._pool, _WHAT) as conn:
            return int(conn.execute(f"DELETE FROM {self._sql.d} WHERE topic = %s",
                                    (topic,)).rowcount)

    def delete_topic(self, topic: str) -> None:
        """Remove every row of ``topic`` (queued, finished, dead, counters)."""
        self._setup()
        with pooled(self._pool, _WHAT) as conn, conn.transaction():
            for table in (self._sql.m, self._sql.d, self._sql.c):
                conn.execute(f"DELETE FROM {table} WHERE topic = %s", (topic,))

    def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        self._pool.close()
