"""Queue throughput: stoic's brokers against embedded peers and raw statements, in one run.

    .venv/bin/python benchmarks/queues.py [--n 10000] [--no-redis] [--only redis]
    .venv/bin/python benchmarks/queues.py --only postgres|nats [--server-n 2000]

Every figure is messages per second with ~200-byte JSON payloads, one producer or one
consumer (unless the row says "N workers"), and states its durability: SQLite's
``synchronous`` mode (NORMAL: survives a process crash; FULL: survives power loss too).
"consume+ack" means each message is received and then acknowledged so that a crash before
the ack redelivers it; huey's dequeue has no ack (a crash loses the task), which the row says.

Rows:
- raw SQLite: the ceiling, hand-written statements on one table with no de-duplication and
  no leases: one INSERT per commit; 100 INSERTs per commit; claim (UPDATE ... RETURNING one
  row) + DELETE, one commit each.
- stoic SQLiteBroker: publish (one commit each), publish_many (100 per commit), claim of 32
  + ack_many (one commit per batch); the Worker end to end; several worker processes; a
  100k-message backlog against a 1k one.
- persist-queue SQLiteAckQueue (json serializer, its defaults: WAL, synchronous FULL),
  litequeue (WAL, NORMAL), huey SqliteStorage (WAL, FULL by default: fsync=None).
- Redis: RedisBroker against raw pipelined XADD and XREADGROUP COUNT 100 + XACK on the same
  server, alternating in five rounds, each row its best round.
- RabbitMQ: RabbitBroker alone (quorum queues, publisher confirms), for scale.
- PostgreSQL (one schema of its own, dropped after): PostgresBroker against Procrastinate
  (defer; fetch_job + finish_job) and pgqueuer (enqueue; dequeue + log_jobs) on the same
  server, and raw statements as the floor (INSERT; UPDATE ... FOR UPDATE SKIP LOCKED
  RETURNING + DELETE). Every commit waits for the WAL flush (``synchronous_commit=on``)
  except a stoic claim's (``off``: a claim lost in a server crash is a redelivery; publish
  and ack stay durable). stoic one at a time three ways: claim(1) then ack (two calls, two
  round trips); ack_and_claim (the previous message's ack and the next claim in one
  statement, committed durably: one round trip); a Worker(prefetch=1) with a no-op handler
  draining the queue (it uses ack_and_claim by itself). Rounds alternate; each row keeps its
  best round.
- NATS JetStream (file storage; a publish returns after the stream's ack): NatsBroker
  against raw nats-py on the same server, one at a time and in batches.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sqlite3
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from queues_common import BODY, PAYLOAD, rate, record, rows
from queues_servers import nats_rows, postgres_rows

from stoic.messaging import SQLiteBroker, Worker


def tmpdir() -> str:
    return tempfile.mkdtemp(prefix="stoic-bench-")


# --- raw SQLite ---------------------------------------------------------------------------

def raw_sqlite(n: int, sync: str) -> None:
    db = sqlite3.connect(os.path.join(tmpdir(), "raw.db"), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={sync}")
    db.execute("CREATE TABLE q (id INTEGER PRIMARY KEY, body TEXT, lease REAL NOT NULL)")
    db.execute("CREATE INDEX q_lease ON q (lease)")

    def publish() -> None:
        for _ in range(n):
            db.execute("INSERT INTO q (body, lease) VALUES (?, 0)", (BODY,))

    def publish_batched() -> None:
        for _ in range(n // 100):
            db.execute("BEGIN")
            db.executemany("INSERT INTO q (body, lease) VALUES (?, 0)", [(BODY,)] * 100)
            db.execute("COMMIT")

    def consume() -> None:
        for _ in range(n):
            now = time.time()
            row = db.execute(
                "UPDATE q SET lease = ? WHERE id = (SELECT id FROM q WHERE lease < ?"
                " ORDER BY lease LIMIT 1) RETURNING id, body", (now + 30, now)
            ).fetchone()
            json.loads(row[1])
            db.execute("DELETE FROM q WHERE id = ?", (row[0],))

    record("sqlite", "raw SQLite: INSERT, one commit each", sync, rate(n, publish))
    record("sqlite", "raw SQLite: INSERT x100 per commit", sync, rate(n, publish_batched))
    record("sqlite", "raw SQLite: claim + DELETE, one commit each", sync, rate(n, consume))


# --- stoic SQLiteBroker -------------------------------------------------------------------

def stoic_sqlite(n: int, sync: str) -> None:
    broker = SQLiteBroker(os.path.join(tmpdir(), "stoic.db"), synchronous=sync)  # type: ignore[arg-type]

    def publish() -> None:
        for _ in range(n):
            broker.publish("bench", PAYLOAD)

    def publish_many() -> None:
        for _ in range(n // 100):
            broker.publish_many("bench", [PAYLOAD] * 100)

    def consume() -> None:  # drains what the two publish rows queued
        while True:
            batch = broker.claim("bench", max_messages=32)
            if not batch:
                return
            for m in batch:
                m.payload  # noqa: B018 - decode, as a consumer would
            broker.ack_many(batch)

    record("sqlite", "stoic SQLiteBroker.publish", sync, rate(n, publish))
    record("sqlite", "stoic SQLiteBroker.publish_many (100)", sync, rate(n, publish_many))
    total = n + (n // 100) * 100
    record("sqlite", "stoic SQLiteBroker claim(32) + ack_many", sync, rate(total, consume))
    broker.publish_many("bench", [PAYLOAD] * n)
    worker = Worker(broker, "bench", lambda m: m.payload, prefetch=32)
    record("sqlite", "stoic Worker end to end (1 worker, prefetch 32)", sync,
           rate(n, lambda: worker.run(stop_when_empty=True, handle_signals=False)))
    broker.close()


def _drain(path: str, sync: str, ready: Any, go: Any) -> None:
    broker = SQLiteBroker(path, synchronous=sync)  # type: ignore[arg-type]
    ready.release()
    go.wait()
    while True:
        batch = broker.claim("bench", max_messages=32)
        if not batch:
            return
        for m in batch:
            m.payload  # noqa: B018
        broker.ack_many(batch)


def stoic_sqlite_workers(n: int, sync: str, workers: int) -> None:
    path = os.path.join(tmpdir(), "multi.db")
    broker = SQLiteBroker(path, synchronous=sync)  # type: ignore[arg-type]
    for _ in range(n // 1000):
        broker.publish_many("bench", [PAYLOAD] * 1000)
    ctx = multiprocessing.get_context("spawn")
    ready, go = ctx.Semaphore(0), ctx.Event()
    procs = [ctx.Process(target=_drain, args=(path, sync, ready, go)) for _ in range(workers)]
    for p in procs:
        p.start()
    for _ in procs:  # start-up (imports) is not part of the measurement
        ready.acquire()

    def run() -> None:
        go.set()
        for p in procs:
            p.join()

    record("sqlite", f"stoic SQLiteBroker claim(32) + ack_many, {workers} worker processes",
           sync, rate((n // 1000) * 1000, run))
    assert broker.stats("bench").ready == 0


def stoic_backlog(n: int, sync: str) -> tuple[float, float]:
    out = []
    for backlog in (1_000, 100_000):
        broker = SQLiteBroker(os.path.join(tmpdir(), f"b{backlog}.db"), synchronous=sync)  # type: ignore[arg-type]
        for _ in range(backlog // 1000):
            broker.publish_many("bench", [PAYLOAD] * 1000)
        k = min(n, backlog) // 3

        def publish(broker: SQLiteBroker = broker, k: int = k) -> None:
            for _ in range(k):
                broker.publish("bench", PAYLOAD)

        def consume(broker: SQLiteBroker = broker, k: int = k) -> None:
            got = 0
            while got < k:
                batch = broker.claim("bench", max_messages=32)
                broker.ack_many(batch)
                got += len(batch)

        # best of three rounds: the comparison is between backlogs, not against machine noise
        p = max(rate(k, publish) for _ in range(3))
        c = max(rate(k, consume) for _ in range(3))
        record("backlog", f"stoic publish, {backlog:,} queued", sync, p)
        record("backlog", f"stoic claim(32) + ack_many, {backlog:,} queued", sync, c)
        out.append(c)
        broker.close()
    return out[0], out[1]


# --- embedded peers -----------------------------------------------------------------------

def peers(n: int) -> None:
    try:
        import persistqueue
        import persistqueue.serializers.json as pq_json
    except ImportError:
        print("  persist-queue not installed; skipped")
    else:
        q = persistqueue.SQLiteAckQueue(tmpdir(), serializer=pq_json, multithreading=True)

        def pq_put() -> None:
            for _ in range(n):
                q.put(PAYLOAD)

        def pq_get() -> None:
            for _ in range(n):
                item = q.get(block=False)
                q.ack(item)

        record("peer", "persist-queue SQLiteAckQueue.put", "FULL", rate(n, pq_put))
        record("peer", "persist-queue get + ack", "FULL", rate(n, pq_get))

    try:
        from litequeue import LiteQueue
    except ImportError:
        print("  litequeue not installed; skipped")
    else:
        lq = LiteQueue(os.path.join(tmpdir(), "lq.db"))

        def lq_put() -> None:
            for _ in range(n):
                lq.put(BODY)

        def lq_pop() -> None:
            for _ in range(n):
                m = lq.pop()
                json.loads(m.data)
                lq.done(m.message_id)

        record("peer", "litequeue put", "NORMAL", rate(n, lq_put))
        record("peer", "litequeue pop + done", "NORMAL", rate(n, lq_pop))

    try:
        from huey.storage import SqliteStorage
    except ImportError:
        print("  huey not installed; skipped")
    else:
        hs = SqliteStorage(filename=os.path.join(tmpdir(), "huey.db"))
        data = BODY.encode()

        def h_put() -> None:
            for _ in range(n):
                hs.enqueue(data)

        def h_get() -> None:
            for _ in range(n):
                json.loads(hs.dequeue())

        record("peer", "huey SqliteStorage.enqueue", "FULL", rate(n, h_put))
        record("peer", "huey dequeue (no ack: a crash loses the task)", "FULL", rate(n, h_get))


# --- Redis --------------------------------------------------------------------------------

def redis_rows(n: int, url: str, rounds: int = 5) -> None:
    """Raw commands and RedisBroker alternate, round after round, and each row keeps its best
    round: the ratio then compares the two on the same server at its least disturbed, not
    whichever of them another process on the machine happened to slow down."""
    import uuid

    import redis

    from stoic.messaging.redis import RedisBroker

    r = redis.Redis.from_url(url, decode_responses=True)
    r.ping()
    fields = {"b": BODY}

    def raw_publish(stream: str) -> None:
        for _ in range(n // 100):
            pipe = r.pipeline(transaction=False)
            for _ in range(100):
                pipe.xadd(stream, fields)
            pipe.execute()

    def raw_consume(stream: str) -> None:
        got = 0
        while got < n:
            res = r.xreadgroup("g", "c", {stream: ">"}, count=100)
            if not res:
                break
            entries = res[0][1]
            for _, f in entries:
                json.loads(f["b"])
            r.xack(stream, "g", *[eid for eid, _ in entries])
            got += len(entries)

    broker = RedisBroker(url)
    marks: list[str] = []  # the de-duplication keys the run leaves, deleted at its end

    def publish(topic: str) -> None:
        seen = broker._k(topic, "seen:")
        for _ in range(n // 10):
            marks.append(seen + broker.publish(topic, PAYLOAD))

    def publish_many(topic: str) -> None:
        seen = broker._k(topic, "seen:")
        for _ in range(n // 100):
            marks.extend([seen + i for i in broker.publish_many(topic, [PAYLOAD] * 100)])

    def consume(topic: str) -> None:
        while True:
            batch = broker.claim(topic, max_messages=100)
            if not batch:
                return
            for m in batch:
                m.payload  # noqa: B018
            broker.ack_many(batch)

    topic = f"bench-{uuid.uuid4().hex[:8]}"
    one = rate(n // 10, partial(publish, topic))
    consume(topic)
    broker.delete_topic(topic)
    best = [0.0] * 4
    for _ in range(rounds):
        stream = f"bench-raw-{uuid.uuid4().hex[:8]}"
        r.xgroup_create(stream, "g", id="0", mkstream=True)
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        got = (rate(n, partial(raw_publish, stream)), rate(n, partial(raw_consume, stream)),
               rate(n, partial(publish_many, topic)), rate(n, partial(consume, topic)))
        best = [max(x, y) for x, y in zip(best, got, strict=True)]
        r.delete(stream)
        broker.delete_topic(topic)
    record("redis", f"raw pipelined XADD (100 per round trip), best of {rounds}", "redis",
           best[0])
    record("redis", f"raw XREADGROUP COUNT 100 + XACK, best of {rounds}", "redis", best[1])
    record("redis", "stoic RedisBroker.publish (one round trip each)", "redis", one)
    record("redis", f"stoic RedisBroker.publish_many (100), best of {rounds}", "redis", best[2])
    record("redis", f"stoic RedisBroker claim(100) + ack_many, best of {rounds}", "redis", best[3])
    # Marks live for the dedupe window (a day), and millions of keys slow every command on the
    # server (each looks its key up), so a run must not leave its own behind for the next one.
    for i in range(0, len(marks), 1000):
        r.unlink(*marks[i:i + 1000])
    broker.close()


def rabbit_rows(n: int, url: str) -> None:
    import uuid

    from stoic.messaging.rabbitmq import RabbitBroker

    broker = RabbitBroker(url)
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    k = min(n, 5000)

    def publish_many() -> None:
        for _ in range(k // 100):
            broker.publish_many(topic, [PAYLOAD] * 100)

    def consume() -> None:
        got = 0
        while got < k:
            batch = broker.claim(topic, max_messages=32)
            if not batch:
                time.sleep(0.001)
                continue
            for m in batch:
                m.payload  # noqa: B018
            broker.ack_many(batch)
            got += len(batch)

    record("rabbitmq", "stoic RabbitBroker.publish_many (100, confirms)", "quorum",
           rate(k, publish_many))
    record("rabbitmq", "stoic RabbitBroker claim(32) + ack_many", "quorum", rate(k, consume))
    broker.delete_topic(topic)
    broker.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="messages per measurement")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--redis", default=os.environ.get("STOIC_TEST_REDIS",
                                                          "redis://127.0.0.1:6379/0"))
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument("--amqp", default=os.environ.get(
        "STOIC_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/"))
    parser.add_argument("--no-rabbitmq", action="store_true")
    parser.add_argument("--postgres", default=os.environ.get(
        "STOIC_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--nats", default=os.environ.get("STOIC_TEST_NATS",
                                                         "nats://127.0.0.1:4222"))
    parser.add_argument("--server-n", type=int, default=2000,
                        help="messages per measurement for the PostgreSQL and NATS rows")
    parser.add_argument("--only", choices=["sqlite", "redis", "rabbitmq", "postgres", "nats"],
                        help="run only this group of rows (and the ratios it has)")
    args = parser.parse_args()
    n = max(1000, args.n // 1000 * 1000)
    print(f"queues benchmark: {n:,} messages of {len(BODY)} bytes; Python {sys.version.split()[0]}, "
          f"SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs")
    one_k = hundred_k = 0.0
    if args.only in (None, "sqlite"):
        for sync in ("NORMAL", "FULL"):
            raw_sqlite(n, sync)
            stoic_sqlite(n, sync)
        stoic_sqlite_workers(n, "NORMAL", args.workers)
        one_k, hundred_k = stoic_backlog(n, "NORMAL")
        peers(n)
    if args.only in (None, "redis") and not args.no_redis:
        try:
            redis_rows(n, args.redis)
        except Exception as exc:  # no server: say so, keep the SQLite figures
            print(f"  redis skipped: {exc}")
    if args.only in (None, "rabbitmq") and not args.no_rabbitmq:
        try:
            rabbit_rows(n, args.amqp)
        except Exception as exc:
            print(f"  rabbitmq skipped: {exc}")

    server_n = max(100, args.server_n // 100 * 100)
    if args.only in (None, "postgres"):
        try:
            postgres_rows(server_n, args.postgres)
        except Exception as exc:
            print(f"  postgres skipped: {exc!r}")
    if args.only in (None, "nats"):
        try:
            nats_rows(server_n, args.nats)
        except Exception as exc:
            print(f"  nats skipped: {exc!r}")

    by_name = {(g, name, d): v for g, name, d, v in rows}

    def get(name: str, d: str) -> float:
        return next((v for (_, nm, dd), v in by_name.items() if nm == name and dd == d), 0.0)

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if a and b else "n/a"

    print("\nratios (higher is better for stoic):")
    best_pub_normal = get("litequeue put", "NORMAL")
    best_con_normal = get("litequeue pop + done", "NORMAL")
    best_pub_full = max(get("persist-queue SQLiteAckQueue.put", "FULL"),
                        get("huey SqliteStorage.enqueue", "FULL"))
    best_con_full = get("persist-queue get + ack", "FULL")
    pg_peer_consume = max(get("procrastinate fetch_job + finish_job, best of 3", "sync_commit"),
                          get("pgqueuer dequeue(1) + log_jobs, best of 3", "sync_commit"))
    for label, a, b in [
        ("NORMAL publish: stoic publish vs litequeue put",
         get("stoic SQLiteBroker.publish", "NORMAL"), best_pub_normal),
        ("NORMAL publish: stoic publish_many vs litequeue put",
         get("stoic SQLiteBroker.publish_many (100)", "NORMAL"), best_pub_normal),
        ("NORMAL consume+ack: stoic claim+ack vs litequeue pop+done",
         get("stoic SQLiteBroker claim(32) + ack_many", "NORMAL"), best_con_normal),
        ("FULL publish: stoic publish vs best FULL peer put",
         get("stoic SQLiteBroker.publish", "FULL"), best_pub_full),
        ("FULL publish: stoic publish_many vs best FULL peer put",
         get("stoic SQLiteBroker.publish_many (100)", "FULL"), best_pub_full),
        ("FULL consume+ack: stoic claim+ack vs persist-queue get+ack",
         get("stoic SQLiteBroker claim(32) + ack_many", "FULL"), best_con_full),
        ("NORMAL publish: stoic publish / raw INSERT (ceiling)",
         get("stoic SQLiteBroker.publish", "NORMAL"),
         get("raw SQLite: INSERT, one commit each", "NORMAL")),
        ("backlog: claim+ack at 100k queued / at 1k queued", hundred_k, one_k),
        ("redis publish: stoic publish_many / raw pipelined XADD",
         get("stoic RedisBroker.publish_many (100), best of 5", "redis"),
         get("raw pipelined XADD (100 per round trip), best of 5", "redis")),
        ("redis consume: stoic claim+ack / raw XREADGROUP+XACK",
         get("stoic RedisBroker claim(100) + ack_many, best of 5", "redis"),
         get("raw XREADGROUP COUNT 100 + XACK, best of 5", "redis")),
        ("postgres claim+ack: stoic / faster of procrastinate, pgqueuer",
         get("stoic PostgresBroker claim(1) + ack, best of 3", "claim_async"), pg_peer_consume),
        ("postgres claim+ack: stoic ack_and_claim (Worker loop) / faster peer",
         get("stoic PostgresBroker ack_and_claim(1), best of 3", "claim_async"), pg_peer_consume),
        ("postgres claim+ack: stoic Worker(prefetch=1) / faster peer",
         get("stoic Worker(prefetch=1), no-op handler, best of 3", "claim_async"),
         pg_peer_consume),
        ("postgres claim+ack: stoic / raw SKIP LOCKED floor",
         get("stoic PostgresBroker claim(1) + ack, best of 3", "claim_async"),
         get("raw SKIP LOCKED claim + DELETE (floor), best of 3", "sync_commit")),
        ("postgres claim 32+ack: stoic / pgqueuer dequeue(32)+log_jobs",
         get("stoic PostgresBroker claim(32) + ack_many, best of 3", "claim_async"),
         get("pgqueuer dequeue(32) + log_jobs(32), best of 3", "sync_commit")),
        ("postgres claim 32+ack: stoic / raw SKIP LOCKED 32 floor",
         get("stoic PostgresBroker claim(32) + ack_many, best of 3", "claim_async"),
         get("raw SKIP LOCKED claim 32 + DELETE 32 (floor), best of 3", "sync_commit")),
        ("postgres publish: stoic / faster of procrastinate, pgqueuer",
         get("stoic PostgresBroker.publish, best of 3", "sync_commit"),
         max(get("procrastinate defer_async, best of 3", "sync_commit"),
             get("pgqueuer enqueue, best of 3", "sync_commit"))),
        ("postgres publish: stoic / raw INSERT floor",
         get("stoic PostgresBroker.publish, best of 3", "sync_commit"),
         get("raw INSERT, one commit each (floor), best of 3", "sync_commit")),
        ("nats publish: stoic / raw js.publish, one at a time",
         get("stoic NatsBroker.publish, one at a time, best of 3", "file"),
         get("raw js.publish, one at a time, best of 3", "file")),
        ("nats publish: stoic publish_many(100) / raw 100 in flight",
         get("stoic NatsBroker.publish_many (100), best of 3", "file"),
         get("raw js.publish, 100 in flight, best of 3", "file")),
        ("nats pull+ack: stoic claim(1)+ack / raw fetch(1)+ack",
         get("stoic NatsBroker claim(1) + ack, best of 3", "file"),
         get("raw fetch(1) + ack, best of 3", "file")),
        ("nats pull+ack: stoic claim(32)+ack_many / raw fetch(32)+ack",
         get("stoic NatsBroker claim(32) + ack_many, best of 3", "file"),
         get("raw fetch(32) + ack each + flush, best of 3", "file")),
    ]:
        if a and b:
            print(f"  {label:62} {ratio(a, b):>8}")


if __name__ == "__main__":
    main()
