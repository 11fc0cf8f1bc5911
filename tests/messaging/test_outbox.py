"""Outbox: messages commit with the business write, the relay publishes them in order with
their ids, and a relay killed between publishing and marking delivers nothing twice."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

import stoic
from stoic.idempotency import MemoryStore
from stoic.messaging import Inbox, Message, Outbox, OutboxRelay, SQLiteBroker, Worker


def sqlite_db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    Outbox().create(db)
    db.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, item TEXT)")
    db.commit()
    return db


def drain(broker: Any, topic: str) -> list[Message]:
    got: list[Message] = broker.claim(topic, max_messages=100, lease=30.0)
    broker.ack_many(got)
    return got


def test_rolled_back_transaction_publishes_nothing_and_committed_one_publishes_in_order(
    tmp_path: Path,
) -> None:
    db = sqlite_db(tmp_path / "app.db")
    outbox = Outbox()
    db.execute("INSERT INTO orders (item) VALUES ('lost')")
    outbox.add(db, "orders", {"item": "lost"})
    db.rollback()
    ids = []
    for item in ("a", "b", "c"):
        db.execute("INSERT INTO orders (item) VALUES (?)", (item,))
        ids.append(outbox.add(db, "orders", {"item": item}, headers={"k": item}))
    db.commit()
    broker = SQLiteBroker(tmp_path / "q.db")
    relay = OutboxRelay(sqlite3.connect(tmp_path / "app.db"), broker)
    assert relay.run(stop_when_empty=True) == 3
    got = drain(broker, "orders")
    assert [m.id for m in got] == ids
    assert [m.payload["item"] for m in got] == ["a", "b", "c"]
    assert [m.headers["k"] for m in got] == ["a", "b", "c"]
    assert relay.relay_once() == 0  # marked sent


def test_unencodable_payload_raises_before_anything_is_written(tmp_path: Path) -> None:
    db = sqlite_db(tmp_path / "app.db")
    with pytest.raises(stoic.CodecError):
        Outbox().add(db, "orders", {"bad": object()})
    assert db.execute("SELECT COUNT(*) FROM stoic_outbox").fetchone() == (0,)


def test_outbox_with_psycopg_commits_with_the_business_write(
    postgres_dsn: str, tmp_path: Path
) -> None:
    import psycopg

    table = f"outbox_{uuid.uuid4().hex[:8]}"
    outbox = Outbox(table)
    with psycopg.connect(postgres_dsn) as conn:
        outbox.create(conn)
        conn.commit()
        try:
            outbox.add(conn, "orders", {"n": 0})
            conn.rollback()
            first = outbox.add(conn, "orders", {"n": 1})
            second = outbox.add(conn, "orders", {"n": 2}, delay=0.0)
            conn.commit()
            broker = SQLiteBroker(tmp_path / "q.db")
            with psycopg.connect(postgres_dsn) as relay_conn:
                assert OutboxRelay(relay_conn, broker, outbox=outbox).run(
                    stop_when_empty=True
                ) == 2
            assert [m.id for m in drain(broker, "orders")] == [first, second]
        finally:
            conn.rollback()
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.commit()


def test_inbox_with_psycopg_marks_once_per_message(postgres_dsn: str) -> None:
    import psycopg

    table = f"inbox_{uuid.uuid4().hex[:8]}"
    inbox = Inbox(table)
    m = Message(id="m1", topic="t", body="1")
    with psycopg.connect(postgres_dsn) as conn:
        try:
            inbox.create(conn)
            assert inbox.mark(conn, m) is True
            conn.commit()
            assert inbox.mark(conn, m) is False
            assert inbox.seen(conn, m) is True
        finally:
            conn.rollback()
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.commit()


_RELAY = """
import os, signal, sqlite3, sys
from stoic.messaging import OutboxRelay, SQLiteBroker
relay = OutboxRelay(sqlite3.connect(sys.argv[1]), SQLiteBroker(sys.argv[2],
                    dedupe_window=float(sys.argv[3])))
relay.after_publish = lambda ids: os.kill(os.getpid(), signal.SIGKILL)
relay.relay_once()
"""


@pytest.mark.parametrize(
    "dedupe_window", [86400.0, 0.0], ids=["broker-dedupe", "no-broker-dedupe"]
)
def test_relay_killed_between_publish_and_mark_delivers_once_to_a_deduping_consumer(
    tmp_path: Path, dedupe_window: float
) -> None:
    app, queue = tmp_path / "app.db", tmp_path / "q.db"
    db = sqlite_db(app)
    outbox = Outbox()
    ids = [outbox.add(db, "orders", {"n": n}) for n in range(5)]
    db.commit()
    script = tmp_path / "relay.py"
    script.write_text(textwrap.dedent(_RELAY))
    env = {**os.environ, "PYTHONPATH": str(Path(stoic.__file__).parent.parent)}
    done = subprocess.run(
        [sys.executable, str(script), str(app), str(queue), str(dedupe_window)],
        env=env, timeout=60,
    )
    assert done.returncode == -9  # killed after publishing, before marking
    pending = db.execute("SELECT COUNT(*) FROM stoic_outbox WHERE sent_at IS NULL").fetchone()
    assert pending == (5,)

    broker = SQLiteBroker(queue, dedupe_window=dedupe_window)
    store = MemoryStore()
    handled: list[str] = []

    def consume() -> None:
        Worker(broker, "orders", lambda m: handled.append(m.id), dedupe=store).run(
            stop_when_empty=True
        )

    consume()  # the consumer already handled what the dead relay published
    assert OutboxRelay(sqlite3.connect(app), broker).run(stop_when_empty=True) == 5  # again
    # Within its window the broker drops the copies; without one they are queued again...
    assert broker.stats("orders").ready == (0 if dedupe_window else 5)
    consume()
    assert handled == ids  # ...and the deduping consumer runs each message once, in order


# Bodies no codec would write: cut off JSON, raw control characters (RedisBroker frames a
# batch with \x1e and \x1f, and a claim's reply with \x1d as well), NUL.
DAMAGED_BODIES = ['{"n": ', '"a\x1eb"', '{"n": "\x1f"}', '\x1d\x1e\x1f', '"x\x00y"']


def test_a_row_the_relay_cannot_decode_is_passed_on_and_dead_lettered_by_the_consumer(
    tmp_path: Path, broker: Any, topic: str
) -> None:
    """The relay forwards stored bodies unread: a damaged row, or a payload type only the
    producer registered, never stops the rows behind it on any broker; the consumer
    dead-letters it alone, and the dead letter keeps the stored text."""
    db = sqlite_db(tmp_path / "app.db")
    outbox = Outbox()
    first = outbox.add(db, topic, {"n": 1})
    damaged = {outbox.add(db, topic, {"n": 2}): body for body in DAMAGED_BODIES}
    foreign = outbox.add(db, topic, {"n": 3})
    last = outbox.add(db, topic, {"n": 4})
    for row_id, body in damaged.items():
        db.execute("UPDATE stoic_outbox SET body = ? WHERE id = ?", (body, row_id))
    db.execute(  # a codec tag this process has no type registered for
        "UPDATE stoic_outbox SET body = ? WHERE id = ?",
        ('{"__stoic__": "shop.Money", "v": "12.50"}', foreign),
    )
    db.commit()
    relay = OutboxRelay(sqlite3.connect(tmp_path / "app.db"), broker, batch=3)
    relayed = 0
    while n := relay.relay_once():  # relay_once raises where run() would retry forever
        relayed += n
    assert relayed == len(damaged) + 3
    handled: list[Any] = []
    counts = Worker(broker, topic, lambda m: handled.append((m.id, m.payload))).run(
        stop_when_empty=True
    )
    assert handled == [(first, {"n": 1}), (last, {"n": 4})]
    assert counts.dead_lettered == len(damaged) + 1
    dead = {d.message.id: d for d in broker.dead_letters(topic)}
    assert set(dead) == {*damaged, foreign}
    assert all(d.reason == "malformed" for d in dead.values())
    for row_id, body in damaged.items():  # nothing lost: the operator sees what was stored
        assert dead[row_id].message.body == body
