"""Idempotency stores: new keys (claim + complete) and replays per second, against the ceiling.

Measured in one run, on this machine's local servers:

* each stoic store through its contract (``claim`` then ``complete``; ``claim`` of a done key),
  and end to end through ``@idempotent`` (fingerprint, codec, events included);
* the raw database operation as the ceiling: one SQLite INSERT (WAL, synchronous=NORMAL)
  and one SELECT; one Redis SET NX and one GET; one PostgreSQL INSERT and one SELECT;
* Powertools for AWS Lambda's ``idempotent_function`` with its Redis persistence layer on the
  same Redis.

Redis round trips per operation are counted on the client connection, not assumed.

    .venv/bin/python benchmarks/idempotency.py [--seconds 1.0] [--skip-postgres]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

import redis

import stoic
from stoic.idempotency import MemoryStore, PostgresStore, RedisStore, SQLiteStore

REDIS_URL = os.environ.get("STOIC_BENCH_REDIS", "redis://127.0.0.1:6379/0")
POSTGRES_DSN = os.environ.get("STOIC_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
RUN = uuid.uuid4().hex[:8]
REPLAY: Any = None  # the running Bench: replays cycle over the keys its last phase created


class CountingConnection(redis.Connection):
    """Counts requests written to Redis: each one is a round trip (no pipelining here)."""

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        super().send_packed_command(command, check_health)


def counting_client() -> redis.Redis:
    pool = redis.ConnectionPool.from_url(REDIS_URL, connection_class=CountingConnection)
    return redis.Redis(connection_pool=pool)


def rate(op: Callable[[int], Any], seconds: float) -> tuple[float, int]:
    """Operations per second running ``op(i)`` for about ``seconds`` (after a short warm-up)."""
    for i in range(50):
        op(-1 - i)
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(50):
            op(n)
            n += 1
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start), n


class Bench:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.created = 1000  # how many keys the last "new" phase made (replays cycle over them)
        self.rows: list[tuple[str, str, float, float | None, float | None]] = []

    def measure(self, name: str, kind: str, new: Callable[[int], Any],
                replay: Callable[[int], Any], setup_replay: Callable[[], Any] | None = None,
                count: bool = False) -> None:
        CountingConnection.sent = 0
        new_rate, n_new = rate(new, self.seconds)
        self.created = max(1, min(1000, n_new))
        trips_new = CountingConnection.sent / (n_new + 50) if count else None
        if setup_replay is not None:
            setup_replay()
        CountingConnection.sent = 0
        replay_rate, n_rep = rate(replay, self.seconds)
        trips_rep = CountingConnection.sent / (n_rep + 50) if count else None
        self.rows.append((name, kind, new_rate, replay_rate, trips_new, trips_rep))  # type: ignore[arg-type]
        print(f"  {name:<34} {new_rate:>10,.0f} {replay_rate:>10,.0f}", flush=True)


def store_ops(store: Any, prefix: str) -> tuple[Callable[[int], Any], Callable[[int], Any]]:
    def new(i: int) -> None:
        key = f"{prefix}n{i}"
        claim = store.claim(key, "fp", lease=60.0, ttl=3600.0)
        store.complete(key, claim.token, '{"result":{"ok":true}}', ttl=3600.0)

    def replay(i: int) -> None:
        claim = store.claim(f"{prefix}n{i % REPLAY.created}", "fp", lease=60.0, ttl=3600.0)
        assert claim.status.value == "completed", claim

    return new, replay


def decorator_ops(store: Any, prefix: str) -> tuple[Callable[[int], Any], Callable[[int], Any]]:
    @stoic.idempotent(store=store, key=prefix + "d{order_id}", namespace="")
    def charge(order_id: int) -> dict[str, Any]:
        return {"order": order_id, "ok": True}

    return (lambda i: charge(i)), (lambda i: charge(i % REPLAY.created))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    bench = Bench(args.seconds)
    global REPLAY
    REPLAY = bench
    tmp = tempfile.mkdtemp(prefix="stoic-bench-")
    print(f"{'':<36} {'new keys/s':>10} {'replays/s':>10}")

    # -- SQLite --------------------------------------------------------------------------
    raw = sqlite3.connect(os.path.join(tmp, "raw.db"), isolation_level=None)
    raw.execute("PRAGMA journal_mode=WAL")
    raw.execute("PRAGMA synchronous=NORMAL")
    raw.execute("CREATE TABLE t (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID")
    bench.measure(
        "raw SQLite INSERT / SELECT", "ceiling",
        lambda i: raw.execute("INSERT INTO t VALUES (?, ?)", (f"n{i}", '{"ok":true}')),
        lambda i: raw.execute("SELECT value FROM t WHERE key = ?", (f"n{i % REPLAY.created}",)).fetchone(),
    )
    sqlite_store = SQLiteStore(os.path.join(tmp, "stoic.db"))
    bench.measure("stoic SQLiteStore", "store", *store_ops(sqlite_store, "s"))
    bench.measure("stoic @idempotent on SQLiteStore", "decorator",
                  *decorator_ops(sqlite_store, "s"))
    memory = MemoryStore()
    bench.measure("stoic MemoryStore", "store", *store_ops(memory, "m"))
    bench.measure("stoic @idempotent on MemoryStore", "decorator", *decorator_ops(memory, "m"))

    # -- Redis ---------------------------------------------------------------------------
    client = counting_client()
    prefix = f"stoic-bench:{RUN}:"
    bench.measure(
        "raw Redis SET NX / GET", "ceiling",
        lambda i: client.set(f"{prefix}raw{i}", b"1", nx=True, ex=3600),
        lambda i: client.get(f"{prefix}raw{i % REPLAY.created}"), count=True,
    )
    redis_store = RedisStore(REDIS_URL, prefix=prefix, client=client)
    bench.measure("stoic RedisStore", "store", *store_ops(redis_store, ""), count=True)
    bench.measure("stoic @idempotent on RedisStore", "decorator",
                  *decorator_ops(redis_store, ""), count=True)
    powertools_new, powertools_replay = powertools_ops(prefix)
    bench.measure("Powertools idempotent_function+Redis", "peer",
                  powertools_new, powertools_replay, count=True)

    # -- PostgreSQL ----------------------------------------------------------------------
    table = f"stoic_bench_{RUN}"
    if not args.skip_postgres:
        import psycopg

        pg = psycopg.connect(POSTGRES_DSN, autocommit=True)
        pg.execute(f"CREATE TABLE {table}_raw (key TEXT PRIMARY KEY, value TEXT)")
        bench.measure(
            "raw PostgreSQL INSERT / SELECT", "ceiling",
            lambda i: pg.execute(f"INSERT INTO {table}_raw VALUES (%s, %s)", (f"n{i}", "1")),
            lambda i: pg.execute(f"SELECT value FROM {table}_raw WHERE key = %s",
                                 (f"n{i % REPLAY.created}",)).fetchone(),
        )
        pg_store = PostgresStore(POSTGRES_DSN, table=table, max_size=2)
        bench.measure("stoic PostgresStore", "store", *store_ops(pg_store, ""))
        bench.measure("stoic @idempotent on PostgresStore", "decorator",
                      *decorator_ops(pg_store, ""))
        pg_store.drop()
        pg_store.close()
        pg.execute(f"DROP TABLE {table}_raw")
        pg.close()

    keys = list(client.scan_iter(match=prefix + "*", count=5000))
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start:start + 1000])
    report(bench)


def powertools_ops(prefix: str) -> tuple[Callable[[int], Any], Callable[[int], Any]]:
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    import warnings

    from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig
    from aws_lambda_powertools.utilities.idempotency.idempotency import idempotent_function
    from aws_lambda_powertools.utilities.idempotency.persistence.redis import (
        RedisCachePersistenceLayer,
    )

    warnings.simplefilter("ignore")  # its own deprecation and "no Lambda context" warnings
    layer = RedisCachePersistenceLayer(client=counting_client())
    config = IdempotencyConfig(event_key_jmespath="order_id", use_local_cache=False,
                               expires_after_seconds=3600)

    @idempotent_function(data_keyword_argument="order", persistence_store=layer, config=config,
                         key_prefix=prefix + "pt")
    def charge(order: dict[str, Any]) -> dict[str, Any]:
        return {"order": order["order_id"], "ok": True}

    return (lambda i: charge(order={"order_id": i})), (
        lambda i: charge(order={"order_id": i % REPLAY.created}))


def report(bench: Bench) -> None:
    rows = {name: row for name, *row in bench.rows}
    print()
    print("| operation | new keys/s | replays/s | Redis round trips (new / replay) |")
    print("|---|---:|---:|---|")
    for name, _kind, new, rep, trips_new, trips_rep in bench.rows:
        trips = "" if trips_new is None else f"{trips_new:.2f} / {trips_rep:.2f}"
        print(f"| {name} | {new:,.0f} | {rep:,.0f} | {trips} |")
    print()

    def ratio(a: str, b: str) -> str:
        if a not in rows or b not in rows:
            return ""
        return (f"{a} vs {b}: new keys x{rows[a][1] / rows[b][1]:.2f}, "
                f"replays x{rows[a][2] / rows[b][2]:.2f}")

    for a, b in [
        ("stoic SQLiteStore", "raw SQLite INSERT / SELECT"),
        ("stoic RedisStore", "Powertools idempotent_function+Redis"),
        ("stoic @idempotent on RedisStore", "Powertools idempotent_function+Redis"),
        ("stoic RedisStore", "raw Redis SET NX / GET"),
        ("stoic PostgresStore", "raw PostgreSQL INSERT / SELECT"),
    ]:
        line = ratio(a, b)
        if line:
            print(line)


if __name__ == "__main__":
    main()
