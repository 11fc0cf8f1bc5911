"""The SQL of ``PostgresBroker``: its tables (``schema_sql``), the statements it runs, and
its rows turned back into messages.

No driver is imported here; ``PostgresBroker`` (``messaging/postgres.py``) runs these.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .model import Message, message_from_row, split_receipt

__all__ = [
    "Statements",
    "check_identifier",
    "encodable",
    "receipt_key",
    "row_message",
    "schema_sql",
    "storable",
]

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,40}\Z")

# what the queued and the dead-lettered rows both hold
_MESSAGE_COLUMNS = """    seq BIGSERIAL PRIMARY KEY,
    topic TEXT NOT NULL,
    id TEXT NOT NULL,
    body TEXT,
    raw BYTEA,
    headers TEXT,"""

# A claim needs no flush of the WAL before it returns: this makes its commit asynchronous
# (``synchronous_commit = off`` for that one transaction). A claim lost in a server crash
# leaves the message as it was before it, queued: delivered again, as at-least-once allows.
# The WAL is one sequence, so a later durable commit (the ack) flushes the claim with it.
_ASYNC_COMMIT = "SELECT set_config('synchronous_commit', 'off', true) AS sc"


def check_identifier(name: str, value: str, *, empty: bool = False) -> str:
    """``value`` when it is a safe SQL identifier part (``ValueError`` otherwise)."""
    if not isinstance(value, str) or not (
        _IDENTIFIER.match(value) or (empty and value == "")
    ):
        raise ValueError(
            f"{name} must be lower-case letters, digits and underscores (at most 41, not"
            f" starting with a digit), got {value!r}"
        )
    return value


def schema_sql(schema: str = "public", table_prefix: str = "stoic_") -> str:
    """The DDL of the broker's tables (what ``stoic queue migrate`` runs; safe to run again).

    state: 0 queued (ready, delayed or leased), 1 acked, 2 dead-lettered. Finished rows keep
    only their id, for de-duplication, until they leave the window. ``raw`` holds, as UTF-8
    bytes, a body that a text column cannot (a NUL character, a lone surrogate: never made
    by stoic's codec, but a damaged outbox row may carry one); ``body`` is then NULL.
    """
    check_identifier("schema", schema)
    check_identifier("table_prefix", table_prefix, empty=True)
    s, p = schema, table_prefix
    return f"""
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.{p}messages (
{_MESSAGE_COLUMNS}
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL,
    available_at DOUBLE PRECISION NOT NULL,
    receipt TEXT,
    state SMALLINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS {p}messages_topic_id ON {s}.{p}messages (topic, id);
CREATE INDEX IF NOT EXISTS {p}messages_ready
    ON {s}.{p}messages (topic, available_at, seq) WHERE state = 0;
CREATE INDEX IF NOT EXISTS {p}messages_finished
    ON {s}.{p}messages (created_at) WHERE state <> 0;
CREATE TABLE IF NOT EXISTS {s}.{p}dead (
{_MESSAGE_COLUMNS}
    attempts INTEGER NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    reason TEXT NOT NULL,
    error TEXT,
    dead_at DOUBLE PRECISION NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS {p}dead_topic_id ON {s}.{p}dead (topic, id);
CREATE TABLE IF NOT EXISTS {s}.{p}counters (
    topic TEXT PRIMARY KEY,
    recovered BIGINT NOT NULL DEFAULT 0
);
"""


@dataclass(frozen=True, slots=True)
class Statements:
    """The statements of one broker's tables (``m`` messages, ``d`` dead, ``c`` counters)."""

    m: str
    d: str
    c: str
    insert: str
    insert_raw: str
    claim: str
    ack_claim_one: str
    ack_claim_many: str
    ack: str
    ack_one: str
    move: str
    dead: str
    requeue: str
    stats: str
    purge_finished: str

    @classmethod
    def of(cls, schema: str, table_prefix: str) -> Statements:
        m, d, c = (f"{schema}.{table_prefix}{t}" for t in ("messages", "dead", "counters"))
        insert = (
            f"INSERT INTO {m} AS q (topic, id, body, headers, attempts, created_at,"
            " available_at) SELECT %(topic)s, i, b, %(headers)s, 0, %(now)s, %(at)s"
            " FROM unnest(%(ids)s::text[], %(bodies)s::text[]) WITH ORDINALITY AS u(i, b, n)"
            " ORDER BY n"
            " ON CONFLICT (topic, id) DO UPDATE SET body = excluded.body, raw = NULL,"
            " headers = excluded.headers, attempts = 0, created_at = excluded.created_at,"
            " available_at = excluded.available_at, receipt = NULL, state = 0"
            " WHERE q.state <> 0 AND q.created_at < %(horizon)s"
        )
        insert_raw = insert.replace(
            "(topic, id, body, headers,", "(topic, id, body, raw, headers,"
        ).replace("i, b, %(headers)s", "i, b, r, %(headers)s").replace(
            "%(bodies)s::text[]) WITH ORDINALITY AS u(i, b, n)",
            "%(bodies)s::text[], %(raws)s::bytea[]) WITH ORDINALITY AS u(i, b, r, n)",
        ).replace("raw = NULL,", "raw = excluded.raw,")
        def pick(skip: str) -> str:  # the claimed rows, the count of recovered ones
            return (
                f" c AS (SELECT seq, receipt IS NOT NULL AS stalled FROM {m}"
                f" WHERE topic = %(topic)s AND state = 0 AND available_at <= %(now)s{skip}"
                " ORDER BY available_at, seq LIMIT %(n)s FOR UPDATE SKIP LOCKED),"
                f" r AS (INSERT INTO {c} AS k (topic, recovered)"
                " SELECT %(topic)s, count(*) FROM c WHERE stalled HAVING count(*) > 0"
                " ON CONFLICT (topic) DO UPDATE SET recovered = k.recovered + excluded.recovered)"
            )

        def take(also: str) -> str:  # lease the picked rows
            return (
                f"UPDATE {m} AS q SET attempts = q.attempts + 1, receipt = %(token)s,"
                f" available_at = %(until)s FROM c{also} WHERE q.seq = c.seq"
                " RETURNING q.seq, q.id, q.body, q.headers, q.attempts, q.created_at, q.raw"
            )

        finished = "state = 1, body = NULL, raw = NULL, headers = NULL, receipt = NULL"
        claim = f"WITH sc AS ({_ASYNC_COMMIT})," + pick("") + " " + take(", sc")
        # ack what a worker finished and claim its next messages in one statement (one round
        # trip), committed durably for the ack's sake: the first column counts the acked
        # rows, one row of NULLs stands for "nothing claimed"; the acked rows are left out of
        # the claim (one statement must not update a row twice)
        then_take = f", u AS ({take('')}) SELECT (SELECT count(*) FROM a), u.*" \
            " FROM (SELECT 1) AS one LEFT JOIN u ON true"
        ack_claim_one = (
            f"WITH a AS (UPDATE {m} SET {finished} WHERE seq = %(seq)s"
            " AND receipt = %(receipt)s AND state = 0 RETURNING seq),"
            + pick(" AND seq <> %(seq)s") + then_take
        )
        ack_claim_many = (
            f"WITH a AS (UPDATE {m} AS q SET {finished}"
            " FROM unnest(%(seqs)s::bigint[], %(receipts)s::text[]) AS k(seq, receipt)"
            " WHERE q.seq = k.seq AND q.receipt = k.receipt AND q.state = 0 RETURNING q.seq),"
            + pick(" AND seq <> ALL(%(seqs)s)") + then_take
        )
        ack = (
            f"UPDATE {m} AS q SET {finished}"
            " FROM unnest(%s::bigint[], %s::text[]) AS k(seq, receipt)"
            " WHERE q.seq = k.seq AND q.receipt = k.receipt AND q.state = 0"
        )
        ack_one = f"UPDATE {m} SET {finished} WHERE seq = %s AND receipt = %s AND state = 0"
        move = (  # nack (give back) and extend: a new available_at, same holder
            f"UPDATE {m} SET available_at = %s, receipt = CASE WHEN %s THEN NULL ELSE receipt"
            " END WHERE seq = %s AND receipt = %s AND state = 0"
        )
        dead = (
            f"WITH src AS (SELECT seq, topic, id, body, raw, headers, attempts, created_at"
            f" FROM {m}"
            " WHERE seq = %(seq)s AND receipt = %(receipt)s AND state = 0 FOR UPDATE),"
            f" gone AS (UPDATE {m} AS q SET state = 2, body = NULL, raw = NULL, headers = NULL,"
            " receipt = NULL FROM src WHERE q.seq = src.seq)"
            f" INSERT INTO {d} AS x (topic, id, body, raw, headers, attempts, created_at,"
            " reason, error, dead_at) SELECT topic, id, body, raw, headers, attempts,"
            " created_at,"
            " %(reason)s, %(error)s, %(now)s FROM src"
            " ON CONFLICT (topic, id) DO UPDATE SET body = excluded.body, raw = excluded.raw,"
            " headers = excluded.headers, attempts = excluded.attempts,"
            " created_at = excluded.created_at, reason = excluded.reason,"
            " error = excluded.error, dead_at = excluded.dead_at"
        )
        requeue = (
            f"WITH back AS (DELETE FROM {d} WHERE topic = %(topic)s"
            " AND (%(all)s OR id = ANY(%(ids)s))"
            " RETURNING id, body, raw, headers, created_at)"
            f" INSERT INTO {m} AS q (topic, id, body, raw, headers, attempts, created_at,"
            " available_at) SELECT %(topic)s, id, body, raw, headers, 0, created_at, %(now)s"
            " FROM back ON CONFLICT (topic, id) DO UPDATE SET body = excluded.body,"
            " raw = excluded.raw,"
            " headers = excluded.headers, attempts = 0, available_at = excluded.available_at,"
            " receipt = NULL, state = 0"
        )
        stats = (
            "SELECT count(*) FILTER (WHERE available_at <= %(now)s),"
            " count(*) FILTER (WHERE available_at > %(now)s AND receipt IS NULL),"
            " count(*) FILTER (WHERE available_at > %(now)s AND receipt IS NOT NULL),"
            f" (SELECT count(*) FROM {d} WHERE topic = %(topic)s),"
            f" (SELECT COALESCE(sum(recovered), 0) FROM {c} WHERE topic = %(topic)s)"
            f" FROM {m} WHERE topic = %(topic)s AND state = 0"
        )
        purge_finished = (
            f"DELETE FROM {m} WHERE seq IN (SELECT seq FROM {m}"
            " WHERE state <> 0 AND created_at < %s LIMIT 1000)"
        )
        return cls(m, d, c, insert, insert_raw, claim, ack_claim_one, ack_claim_many, ack, ack_one,
                   move, dead, requeue, stats, purge_finished)


def storable(body: str) -> bool:
    """A text column takes it: no NUL, and encodable as UTF-8."""
    return "\x00" not in body and encodable([body])


def encodable(bodies: list[str]) -> bool:
    try:
        for b in bodies:
            if not b.isascii():  # isascii is a flag read: the common case costs nothing
                b.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def receipt_key(message: Message) -> tuple[int, str]:
    """The row (seq) and receipt a ``PostgresBroker`` message was claimed with."""
    return split_receipt(message, "PostgresBroker")


def row_message(topic: str, row: Sequence[Any], token: str, available_at: float) -> Message:
    """``message_from_row`` after putting a body kept as bytes (``raw``) back as text."""
    if row[2] is None and row[6] is not None:
        row = (*row[:2], bytes(row[6]).decode("utf-8", "surrogatepass"), *row[3:6])
    return message_from_row(topic, row[:6], token, available_at)
