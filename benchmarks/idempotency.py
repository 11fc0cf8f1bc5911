"""Idempotency stores: new keys (claim + complete) and replays per second, against the ceiling.

Measured in one run, on this machine's local servers:

* each stoic store through its contract (``claim`` then ``complete``; ``claim`` of a done key),
  and end to end through ``@idempotent`` (fingerprint, codec, events included);
* the raw database operation as the ceiling: one SQLite INSERT (WAL, synchronous=NORMAL)
  and one SELECT; one Redis SET NX and one GET; one PostgreSQL INSERT and one SELECT;
* Powertools for AWS Lambda's ``idempotent_function`` with its Redis persistence layer on the
  same Redis.

Redis round trips per operation are counted on the client connection, not assumed.

    .venv/bin/python benchmarks/idempotency.py [--seconds 0.4] [--rounds 5] [--skip-postgres]

Contenders run round-robin in short slices and each reports its median slice, so a loaded
machine slows them all alike; absolute numbers still move with the load.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
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


class CountingConnection(redis.Connection):
    """Counts requests written to Redis: each one is a round trip (no pipelining here)."""

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        super().send_packed_command(command, check_health)


def counting_client() -> redis.Redis:
    pool = redis.ConnectionPool.from_url(REDIS_URL, connection_class=CountingConnection)
    return redis.Redis(connection_pool=pool)


class Case:
    """One contender: a "new key" operation and a "replay" operation, each taking an index."""

    def __init__(self, name: str, new: Callable[[int], Any], replay: Callable[[int], Any],
                 count: bool = False) -> None:
        self.name, self.new, self.replay, self.count = name, new, replay, count
        self.made = 0  # keys created so far; replays cycle over the first 1000 of them
        self.rates: dict[str, list[float]] = {"new": [], "replay": []}
        self.trips: dict[str, float | None] = {"new": None, "replay": None}

    def key_for_replay(self, i: int) -> int:
        return i % max(1, min(1000, self.made))

    def run(self, phase: str, seconds: float) -> None:
        op = self.new if phase == "new" else self.replay
        CountingConnection.sent = 0
        n, start = 0, time.perf_counter()
        base = self.made if phase == "new" else 0
        while True:
            for _ in range(20):
                op(base + n if phase == "new" else self.key_for_replay(n))
                n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
        if phase == "new":
            self.made += n
        self.rates[phase].append(n / elapsed)
        if self.count:
            self.trips[phase] = CountingConnection.sent / n

    def median(self, phase: str) -> float:
        return statistics.median(self.rates[phase])


def run_all(cases: list[Case], rounds: int, seconds: float) -> None:
    """Round-robin the contenders in short slices, so load on a shared machine hits all alike."""
    for phase in ("new", "replay"):
        for case in cases:  # warm-up slice, not recorded
            case.run(phase, seconds / 4)
            case.rates[phase].clear()
        for _ in range(rounds):
            for case in cases:
                case.run(phase, seconds)


def store_ops(store: Any, prefix: str) -> tuple[Callable[[int], Any], Callable[[int], Any]]:
    def new(i: int) -> None:
        key = f"{prefix}n{i}"
        claim = store.claim(key, "fp", lease=60.0, ttl=3600.0)
        store.complete(key, claim.token, '{"result":{"ok":true}}', ttl=3600.0)

    def replay(i: int) -> None:
        claim = store.claim(f"{prefix}n{i}", "fp", lease=60.0, ttl=3600.0)
        assert claim.status.value == "completed", claim

    return new, replay


def decorator_ops(store: Any, prefix: str) -> tuple[Callable[[int], Any], Callable[[int], Any]]:
    @stoic.idempotent(store=store, key=prefix + "d{order_id}", namespace="")
    def charge(order_id: int) -> dict[str, Any]:
        return {"order": order_id, "ok": True}

    return charge, charge  # a new key and a replay are the same call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=0.4, help="length of one slice")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="stoic-bench-")
    cases: list[Case] = []

    # -- SQLite --------------------------------------------------------------------------
    raw = sqlite3.connect(os.path.join(tmp, "raw.db"), isolation_level=None)
    raw.execute("PRAGMA journal_mode=WAL")
    raw.execute("PRAGMA synchronous=NORMAL")
    raw.execute("CREATE TABLE t (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID")
    cases.append(Case(
        "raw SQLite INSERT / SELECT",
        lambda i: raw.execute("INSERT INTO t VALUES (?, ?)", (f"n{i}", '{"ok":true}')),
        lambda i: raw.execute("SELECT value FROM t WHERE key = ?", (f"n{i}",)).fetchone(),
    ))
    sqlite_store = SQLiteStore(os.path.join(tmp, "stoic.db"))
    cases.append(Case("stoic SQLiteStore", *store_ops(sqlite_store, "s")))
    cases.append(Case("stoic @idempotent on SQLiteStore", *decorator_ops(sqlite_store, "s")))
    memory = MemoryStore()
    cases.append(Case("stoic MemoryStore", *store_ops(memory, "m")))
    cases.append(Case("stoic @idempotent on MemoryStore", *decorator_ops(memory, "m")))

    # -- Redis ---------------------------------------------------------------------------
    client = counting_client()
    prefix = f"stoic-bench:{RUN}:"
    cases.append(Case(
        "raw Redis SET NX / GET",
        lambda i: client.set(f"{prefix}raw{i}", b"1", nx=True, ex=3600),
        lambda i: client.get(f"{prefix}raw{i}"), count=True,
    ))
    redis_store = RedisStore(REDIS_URL, prefix=prefix, client=client)
    cases.append(Case("stoic RedisStore", *store_ops(redis_store, ""), count=True))
    cases.append(Case("stoic @idempotent on RedisStore", *decorator_ops(redis_store, ""),
                      count=True))
    cases.append(Case("Powertools idempotent_function + Redis", *powertools_ops(prefix),
                      count=True))

    # -- PostgreSQL ----------------------------------------------------------------------
    table = f"stoic_bench_{RUN}"
    pg: Any = None
    pg_store: Any = None
    if not args.skip_postgres:
        import psycopg

        pg = psycopg.connect(POSTGRES_DSN, autocommit=True)
        pg.execute(f"CREATE TABLE {table}_raw (key TEXT PRIMARY KEY, value TEXT)")
        cases.append(Case(
            "raw PostgreSQL INSERT / SELECT",
            lambda i: pg.execute(f"INSERT INTO {table}_raw VALUES (%s, %s)", (f"n{i}", "1")),
            lambda i: pg.execute(f"SELECT value FROM {table}_raw WHERE key = %s",
                                 (f"n{i}",)).fetchone(),
        ))
        pg_store = PostgresStore(POSTGRES_DSN, table=table, max_size=2)
        cases.append(Case("stoic PostgresStore", *store_ops(pg_store, "")))
        cases.append(Case("stoic @idempotent on PostgresStore", *decorator_ops(pg_store, "")))

    try:
        run_all(cases, args.rounds, args.seconds)
    finally:
        if pg_store is not None:
            pg_store.drop()
            pg_store.close()
        if pg is not None:
            pg.execute(f"DROP TABLE IF EXISTS {table}_raw")
            pg.close()
        keys = list(client.scan_iter(match=prefix + "*", count=5000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start:start + 1000])
    report(cases, args)


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
        lambda i: charge(order={"order_id": i}))


def report(cases: list[Case], args: argparse.Namespace) -> None:
    print(f"median of {args.rounds} interleaved slices of {args.seconds}s per contender; "
          f"load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print()
    print("| operation | new keys/s | replays/s | Redis round trips (new / replay) |")
    print("|---|---:|---:|---|")
    by_name = {case.name: case for case in cases}
    for case in cases:
        trips = ""
        if case.count:
            trips = f"{case.trips['new']:.2f} / {case.trips['replay']:.2f}"
        print(f"| {case.name} | {case.median('new'):,.0f} | {case.median('replay'):,.0f} "
              f"| {trips} |")
    print()
    for a, b in [
        ("stoic SQLiteStore", "raw SQLite INSERT / SELECT"),
        ("stoic RedisStore", "Powertools idempotent_function + Redis"),
        ("stoic @idempotent on RedisStore", "Powertools idempotent_function + Redis"),
        ("stoic RedisStore", "raw Redis SET NX / GET"),
        ("stoic PostgresStore", "raw PostgreSQL INSERT / SELECT"),
    ]:
        if a in by_name and b in by_name:
            x, y = by_name[a], by_name[b]
            print(f"- {a} / {b}: new keys x{x.median('new') / y.median('new'):.2f}, "
                  f"replays x{x.median('replay') / y.median('replay'):.2f}")


if __name__ == "__main__":
    main()
