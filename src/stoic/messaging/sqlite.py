"""The embedded default broker: one SQLite file, many processes, nothing lost.

How it keeps the contract:

- **Durability.** The database runs in WAL mode; every publish, claim, ack and nack is one
  committed transaction. ``synchronous="NORMAL"`` (the default) survives a process crash
  (SIGKILL) without losing a committed message; a power loss may drop the last few commits.
  ``synchronous="FULL"`` fsyncs every commit and survives power loss too, at a throughput
  cost (see docs/performance.md, which states the mode of every figure).
- **Leases.** A claimed message gets ``available_at = now + lease`` and a fresh receipt in
  the same UPDATE. It is invisible until then; a crashed consumer's messages become visible
  again when their lease runs out. Ack, nack and lease extension match on the receipt, so a
  consumer whose lease expired and whose message was re-leased cannot ack the new delivery.
- **Ordering and speed.** Ready messages are found through a partial index on
  ``(topic, available_at) WHERE state = 0``: a claim reads the first rows of that index
  however long the backlog is, so a 100k-message backlog claims as fast as a 1k one.
- **De-duplication.** ``(topic, id)`` is unique. An acked or dead-lettered message keeps its
  row (without its body) for ``dedupe_window`` seconds, so publishing its id again is a
  no-op; older rows are deleted in small batches as acks go by.
- **Batching without weakening at-least-once.** ``publish_many`` writes many messages in
  one transaction; ``claim(max_messages=n)`` leases several at once; ``ack_many`` marks
  several done in one commit. Delaying or grouping an ack can only cause a redelivery,
  never a loss.
- **Many processes.** Writers serialise on SQLite's lock with a busy timeout; every
  statement that changes state is a single transaction, so there is no read-then-write
  race between processes.
- **Deadlines.** Under ``stoic.deadline`` no operation waits past the time left: not for
  the broker's connection (shared by the threads using this broker), nor for another
  process's lock (the busy timeout is the time left). It raises ``stoic.DeadlineExceeded``
  chained to sqlite3's error, and a transaction it interrupted is rolled back.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from .. import clock
from ..context import remaining
from ..errors import DeadlineExceeded
from ..integrations._deadlines import SQLiteBusy, sqlite_busy_ran_out
from .broker import PreparedPublish, ThreadedAsync, check_claim, check_delay, prepare_one
from .model import (
    DeadLetter,
    Message,
    QueueStats,
    dump_headers,
    message_from_row,
    report_requeued,
    split_receipt,
)

__all__ = ["SQLiteBroker"]

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS stoic_messages (
    seq INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    id TEXT NOT NULL,
    body TEXT,
    headers TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    available_at REAL NOT NULL,
    receipt TEXT,
    state INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS stoic_messages_topic_id ON stoic_messages (topic, id);
CREATE INDEX IF NOT EXISTS stoic_messages_ready
    ON stoic_messages (topic, available_at) WHERE state = 0;
CREATE INDEX IF NOT EXISTS stoic_messages_finished
    ON stoic_messages (created_at) WHERE state <> 0;
CREATE TABLE IF NOT EXISTS stoic_dead (
    seq INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    id TEXT NOT NULL,
    body TEXT,
    headers TEXT,
    attempts INTEGER NOT NULL,
    created_at REAL NOT NULL,
    reason TEXT NOT NULL,
    error TEXT,
    dead_at REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS stoic_dead_topic_id ON stoic_dead (topic, id);
CREATE TABLE IF NOT EXISTS stoic_counters (
    topic TEXT PRIMARY KEY,
    recovered INTEGER NOT NULL DEFAULT 0
);
CREATE TRIGGER IF NOT EXISTS stoic_messages_recovered
AFTER UPDATE OF receipt ON stoic_messages
WHEN OLD.state = 0 AND NEW.state = 0 AND OLD.receipt IS NOT NULL
    AND NEW.receipt IS NOT NULL AND NEW.receipt <> OLD.receipt
BEGIN
    INSERT INTO stoic_counters (topic, recovered) VALUES (NEW.topic, 1)
    ON CONFLICT (topic) DO UPDATE SET recovered = recovered + 1;
END;
"""
# The trigger counts stalled work that came back (stats().recovered): a claim that takes a
# row from a receipt that was neither acked nor given back (nack and ack clear the receipt,
# an extension keeps it), i.e. whose lease ran out. It runs in the claim's own transaction.

# state: 0 queued (ready, delayed or leased), 1 acked, 2 dead-lettered. Rows in state 1 and 2
# keep only their id, for de-duplication, until they leave the window.
_INSERT = (
    "INSERT INTO stoic_messages (topic, id, body, headers, attempts, created_at, available_at)"
    " VALUES (?, ?, ?, ?, 0, ?, ?)"
    " ON CONFLICT (topic, id) DO UPDATE SET body = excluded.body, headers = excluded.headers,"
    " attempts = 0, created_at = excluded.created_at, available_at = excluded.available_at,"
    " receipt = NULL, state = 0"
    " WHERE stoic_messages.state <> 0 AND stoic_messages.created_at < ?"
)
_CLAIM = (
    "UPDATE stoic_messages SET attempts = attempts + 1, receipt = ?, available_at = ?"
    " WHERE seq IN (SELECT seq FROM stoic_messages WHERE topic = ? AND state = 0"
    " AND available_at <= ? ORDER BY available_at LIMIT ?)"
    " RETURNING seq, id, body, headers, attempts, created_at"
)
_ACK = (
    "UPDATE stoic_messages SET state = 1, body = NULL, headers = NULL, receipt = NULL"
    " WHERE seq = ? AND receipt = ? AND state = 0"
)
_NACK = (  # give back: deliverable again from available_at
    "UPDATE stoic_messages SET receipt = NULL, available_at = ?"
    " WHERE seq = ? AND receipt = ? AND state = 0"
)
_EXTEND = (  # keep the lease, and the receipt, until available_at
    "UPDATE stoic_messages SET available_at = ? WHERE seq = ? AND receipt = ? AND state = 0"
)
_PURGE_FINISHED = (
    "DELETE FROM stoic_messages WHERE seq IN (SELECT seq FROM stoic_messages"
    " WHERE state <> 0 AND created_at < ? LIMIT 500)"
)
_PURGE_EVERY = 2000  # acks between two passes of the de-duplication window cleanup


class SQLiteBroker(PreparedPublish, ThreadedAsync):
    """A durable queue in one SQLite file; ``sqlite:///path.db`` in ``connect``.

    Args:
        path: the database file (created with its tables on first use). Many processes and
            brokers may open the same file.
        synchronous: SQLite's fsync mode: ``"NORMAL"`` (default: safe against process
            crashes, the last commits may be lost on power failure) or ``"FULL"``.
        dedupe_window: seconds during which an id already published is not queued again
            (default a day). Rows of finished messages are kept that long, without bodies.
        busy_timeout: seconds a writer waits for another process's lock before failing
            (no longer than the time left under ``stoic.deadline``).
        read_only: open an existing file read-only, for inspection (stats, peek, dead
            letters): nothing is created, a missing file raises ``sqlite3.OperationalError``
            and so does every method that writes.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, synchronous: Synchronous = "NORMAL",
        dedupe_window: float = 86400.0, busy_timeout: float = 30.0, read_only: bool = False,
    ) -> None:
        sync = str(synchronous).upper()
        if sync not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(
                f"synchronous must be 'OFF', 'NORMAL', 'FULL' or 'EXTRA', got {synchronous!r}"
            )
        if not dedupe_window >= 0:
            raise ValueError(f"dedupe_window must be >= 0 seconds, got {dedupe_window!r}")
        if not busy_timeout > 0:
            raise ValueError(f"busy_timeout must be > 0 seconds, got {busy_timeout!r}")
        self.path = os.fspath(path)
        self.synchronous = sync
        self.dedupe_window = float(dedupe_window)
        self._lock = threading.Lock()
        self._acks_since_purge = 0
        self.read_only = bool(read_only)
        self._db = sqlite3.connect(
            _read_only_uri(self.path) if read_only else self.path, timeout=busy_timeout,
            isolation_level=None, check_same_thread=False, uri=self.read_only,
        )
        self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        self._guard = _Guard(self._lock, SQLiteBusy(self._db, busy_timeout))
        if read_only:
            return
        _setup(self._db, busy_timeout)
        self._db.execute(f"PRAGMA synchronous={sync}")
        # Checkpoint the WAL every 10,000 pages instead of 1,000: a checkpoint copies pages
        # back into the database file, and doing it less often raises publish throughput by
        # a quarter; the WAL is reset after each checkpoint, so it does not grow without bound.
        self._db.execute("PRAGMA wal_autocheckpoint=10000")

    def __repr__(self) -> str:
        return f"SQLiteBroker({self.path!r}, synchronous={self.synchronous!r})"

    def _transaction(self) -> _Tx:
        return _Tx(self._db)

    # --- publishing ----------------------------------------------------------------------

    def publish(
        self, topic: str, payload: Any, *, id: str | None = None,
        headers: Mapping[str, str] | None = None, delay: float = 0.0,
    ) -> str:
        msg_id, body, head, delay = prepare_one(topic, payload, id, headers, delay)
        now = clock.wall()
        row = (topic, msg_id, body, dump_headers(head) if head else None, now, now + delay,
               now - self.dedupe_window)
        with self._guard:
            self._db.execute(_INSERT, row)
        return msg_id

    def _write(
        self, topic: str, msg_ids: list[str], bodies: list[str], head: dict[str, str],
        delay: float,
    ) -> None:
        raw_headers = dump_headers(head) if head else None
        now = clock.wall()
        horizon = now - self.dedupe_window
        rows = [
            (topic, i, b, raw_headers, now, now + delay, horizon)
            for i, b in zip(msg_ids, bodies, strict=True)
        ]
        with self._guard, self._transaction():
            self._db.executemany(_INSERT, rows)

    # --- consuming -----------------------------------------------------------------------

    def claim(self, topic: str, *, max_messages: int = 1, lease: float = 30.0) -> list[Message]:
        check_claim(max_messages, lease)
        token = uuid.uuid4().hex
        now = clock.wall()
        until = now + lease
        with self._guard:
            rows = self._db.execute(_CLAIM, (token, until, topic, now, max_messages)).fetchall()
        rows.sort(key=lambda r: r[0])
        return [_message(topic, row, token, until) for row in rows]

    def ack(self, message: Message) -> bool:
        return self.ack_many([message]) == 1

    def ack_many(self, messages: Sequence[Message]) -> int:
        keys = [_key(m) for m in messages]
        if not keys:
            return 0
        with self._guard:
            with self._transaction():  # executemany sums the rows it changed
                done = self._db.executemany(_ACK, keys).rowcount
            self._acks_since_purge += len(keys)
            if self._acks_since_purge >= _PURGE_EVERY:
                self._acks_since_purge = 0
                self._db.execute(_PURGE_FINISHED, (clock.wall() - self.dedupe_window,))
        return done

    def nack(self, message: Message, delay: float = 0.0) -> bool:
        return self._reschedule(_NACK, message, check_delay(delay))

    def extend_lease(self, message: Message, lease: float) -> bool:
        check_claim(1, lease)
        return self._reschedule(_EXTEND, message, lease)

    def _reschedule(self, statement: str, message: Message, seconds: float) -> bool:
        """Run ``_NACK`` or ``_EXTEND`` on a message this receipt still holds."""
        seq, token = _key(message)
        with self._guard:
            cur = self._db.execute(statement, (clock.wall() + seconds, seq, token))
        return cur.rowcount == 1

    def dead_letter(self, message: Message, reason: str, error: str | None = None) -> None:
        seq, token = _key(message)
        with self._guard, self._transaction():
            cur = self._db.execute(
                "INSERT OR REPLACE INTO stoic_dead"
                " (topic, id, body, headers, attempts, created_at, reason, error, dead_at)"
                " SELECT topic, id, body, headers, attempts, created_at, ?, ?, ?"
                " FROM stoic_messages WHERE seq = ? AND receipt = ? AND state = 0",
                (reason, error, clock.wall(), seq, token),
            )
            if cur.rowcount:
                self._db.execute(
                    "UPDATE stoic_messages SET state = 2, body = NULL, headers = NULL,"
                    " receipt = NULL WHERE seq = ?",
                    (seq,),
                )

    # --- inspection and the DLQ ----------------------------------------------------------

    def stats(self, topic: str) -> QueueStats:
        now = clock.wall()
        with self._guard:
            ready, delayed, in_flight = self._db.execute(
                "SELECT COALESCE(SUM(available_at <= ?), 0),"
                " COALESCE(SUM(available_at > ? AND receipt IS NULL), 0),"
                " COALESCE(SUM(available_at > ? AND receipt IS NOT NULL), 0)"
                " FROM stoic_messages WHERE topic = ? AND state = 0",
                (now, now, now, topic),
            ).fetchone()
            (dead,) = self._db.execute(
                "SELECT COUNT(*) FROM stoic_dead WHERE topic = ?", (topic,)
            ).fetchone()
            recovered = self._recovered(topic)
        return QueueStats(topic, int(ready), int(delayed), int(in_flight), int(dead),
                          recovered=recovered)

    def _recovered(self, topic: str) -> int:
        try:
            row = self._db.execute(
                "SELECT recovered FROM stoic_counters WHERE topic = ?", (topic,)
            ).fetchone()
        except sqlite3.OperationalError:  # a file from before the counter, opened read-only
            return 0
        return int(row[0]) if row else 0

    def peek(self, topic: str, limit: int = 10) -> list[Message]:
        with self._guard:
            rows = self._db.execute(
                "SELECT seq, id, body, headers, attempts, created_at, available_at"
                " FROM stoic_messages WHERE topic = ? AND state = 0"
                " ORDER BY available_at LIMIT ?",
                (topic, limit),
            ).fetchall()
        return [_message(topic, r[:6], "", r[6]) for r in rows]

    def dead_letters(self, topic: str, limit: int = 100) -> list[DeadLetter]:
        with self._guard:
            rows = self._db.execute(
                "SELECT seq, id, body, headers, attempts, created_at, reason, error, dead_at"
                " FROM stoic_dead WHERE topic = ? ORDER BY seq LIMIT ?",
                (topic, limit),
            ).fetchall()
        return [
            DeadLetter(
                message=_message(topic, r[:6], "", r[8]), reason=r[6], error=r[7], dead_at=r[8]
            )
            for r in rows
        ]

    def requeue(self, topic: str, ids: Sequence[str] | None = None) -> int:
        now = clock.wall()
        with self._guard, self._transaction():
            if ids is None:
                rows = self._db.execute(
                    "SELECT id, body, headers, created_at FROM stoic_dead WHERE topic = ?",
                    (topic,),
                ).fetchall()
            else:
                rows = []
                for msg_id in ids:
                    rows += self._db.execute(
                        "SELECT id, body, headers, created_at FROM stoic_dead"
                        " WHERE topic = ? AND id = ?",
                        (topic, msg_id),
                    ).fetchall()
            for msg_id, body, headers, created_at in rows:
                self._db.execute(
                    "INSERT INTO stoic_messages"
                    " (topic, id, body, headers, attempts, created_at, available_at)"
                    " VALUES (?, ?, ?, ?, 0, ?, ?) ON CONFLICT (topic, id) DO UPDATE SET"
                    " body = excluded.body, headers = excluded.headers, attempts = 0,"
                    " available_at = excluded.available_at, receipt = NULL, state = 0",
                    (topic, msg_id, body, headers, created_at, now),
                )
                self._db.execute(
                    "DELETE FROM stoic_dead WHERE topic = ? AND id = ?", (topic, msg_id)
                )
        return report_requeued(self, topic, len(rows))

    def purge_dead(self, topic: str) -> int:
        with self._guard:
            cur = self._db.execute("DELETE FROM stoic_dead WHERE topic = ?", (topic,))
        return cur.rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _read_only_uri(path: str) -> str:
    """SQLite's URI for opening ``path`` read-only: it never creates the file or a table."""
    from pathlib import Path
    from urllib.parse import quote

    return f"file:{quote(str(Path(path).absolute()))}?mode=ro"


def _setup(db: sqlite3.Connection, busy_timeout: float) -> None:
    """WAL and the schema. Several processes may race here on a new file: switching to WAL
    needs a moment without other writers, so a lock error is retried until the timeout."""
    deadline = clock.now() + busy_timeout
    while True:
        try:
            # A commit writes every page it touched to the WAL, whole: a publish touches the
            # table and two index pages, so 2 KiB pages instead of 4 KiB make single publishes
            # about a tenth faster, and batched claims and acks no slower. It only applies
            # to a new file (before WAL mode is set); an existing file keeps its page size.
            db.execute("PRAGMA page_size=2048")
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
            return
        except sqlite3.OperationalError as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if "locked" not in str(exc) or clock.now() > deadline:
                raise
            clock.sleep(0.01)


class _Guard:
    """The broker's lock, taken within the caller's deadline, with SQLite's busy wait set to
    the time left; an error because the deadline ran out becomes ``DeadlineExceeded``.

    One per broker, not reentrant (like the lock). Without a deadline: the lock, one read of
    the deadline, and a try-free exit.
    """

    __slots__ = ("_busy", "_lock")

    def __init__(self, lock: threading.Lock, busy: SQLiteBusy) -> None:
        self._lock = lock
        self._busy = busy

    def __enter__(self) -> None:
        left = remaining()
        if left is None:
            self._lock.acquire()
        elif left <= 0 or not self._lock.acquire(timeout=left):
            raise DeadlineExceeded("deadline ran out waiting for the SQLiteBroker's "
                                   "connection; the operation was not started")
        try:
            self._busy.bound(left, "a SQLiteBroker operation")
        except BaseException:
            self._lock.release()
            raise

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self._lock.release()
        if isinstance(exc, sqlite3.OperationalError):
            error = sqlite_busy_ran_out(exc, "a SQLiteBroker operation")
            if error is not None:
                raise error from exc


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error: take the write lock up front, so a
    transaction never fails half-way on a lock upgrade."""

    __slots__ = ("_db",)

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        if not self._db.in_transaction:
            self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self._db.in_transaction:
            return
        if exc_type is None:
            self._db.execute("COMMIT")
        else:
            self._db.execute("ROLLBACK")


def _key(message: Message) -> tuple[int, str]:
    return split_receipt(message, "SQLiteBroker")


_message = message_from_row
