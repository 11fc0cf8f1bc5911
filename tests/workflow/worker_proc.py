"""A workflow worker process for the crash, fencing, saga and sleep tests (SIGKILLed at times).

argv: store-url payments-url effects.db log-dir [lease]

Registers the test workflows and runs ``flows.run_worker()``. Step effects go to effects.db:
``effects`` holds one row per key (``INSERT OR IGNORE``: a downstream that honours keys) and
``calls`` one row per time a step function ran. Files in log-dir steer and record the
fault injection:

- ``kill-after-charge-<order>``: the worker that charges that order removes the file and
  SIGKILLs itself right after the charge returned (the charge is made, its checkpoint not yet
  committed), appending the order to ``self-kills``;
- ``hold-<order>``: a ``fenced`` step for that order blocks while the file exists.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

import stoic
from stoic.context import idempotency_key
from stoic.workflow import Workflows

_local = threading.local()


class Declined(Exception):
    """The shop refuses the order at the last step: a PERMANENT failure."""


def _db(path: str) -> sqlite3.Connection:
    conn: sqlite3.Connection | None = getattr(_local, "conn", None)
    if conn is None:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        conn.execute("PRAGMA synchronous=NORMAL")
        _local.conn = conn
    return conn


def create_effects(path: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS effects (kind TEXT NOT NULL, ord TEXT NOT NULL,"
                 " key TEXT NOT NULL UNIQUE, at REAL NOT NULL, pid INTEGER)")
    conn.execute("CREATE TABLE IF NOT EXISTS calls (kind TEXT NOT NULL, ord TEXT NOT NULL,"
                 " key TEXT, at REAL NOT NULL, pid INTEGER)")
    conn.close()


def build(url: str, payments: str, effects: str, logs: str, lease: float = 1.0,
          prefix: str | None = None) -> Workflows:
    log_dir = Path(logs)
    options: dict[str, Any] = {"synchronous": "NORMAL"} if url.startswith("sqlite") else {
        "prefix": prefix or os.environ["WF_PREFIX"], "max_size": 10}
    flows = Workflows(
        url, lease=lease, poll_interval=0.1, **options,
        retry=stoic.Retry(max_attempts=100, backoff=stoic.backoff.exponential(0.1, 2.0, 5.0),
                          max_time=300.0),
    )
    # The per-host breaker opens while payments is down; its Retry-After (open_for) is under
    # the engine retry's backoff max (a longer one would be waited out durably).
    client = stoic.http.Client(
        base_url=payments, timeout=5.0,
        breaker=lambda name: stoic.CircuitBreaker(name, open_for=1.0, minimum_calls=10))
    http_policy = stoic.Retry(max_attempts=3, backoff=stoic.backoff.exponential(0.05, 2.0, 0.2))

    def effect(kind: str, order: str) -> int:
        db = _db(effects)
        key, now, pid = idempotency_key(), time.time(), os.getpid()
        db.execute("INSERT INTO calls VALUES (?, ?, ?, ?, ?)", (kind, order, key, now, pid))
        db.execute("INSERT OR IGNORE INTO effects VALUES (?, ?, ?, ?, ?)",
                   (kind, order, key, now, pid))
        return pid

    def post(path: str, order: str) -> str:
        _db(effects).execute("INSERT INTO calls VALUES (?, ?, ?, ?, ?)",
                             (path, order, idempotency_key(), time.time(), os.getpid()))
        # stoic's transport generates its own key; the step's key is sent explicitly
        response = client.post(f"/{path}", json={"order": order},
                               headers={"Idempotency-Key": str(idempotency_key())})
        response.raise_for_status()
        return str(response.json()["id"])

    def charge(order: str) -> str:
        charged = post("charge", order)
        try:
            (log_dir / f"kill-after-charge-{order}").unlink()
        except FileNotFoundError:
            return charged
        with open(log_dir / "self-kills", "a") as f:  # the charge is made, not checkpointed
            f.write(f"{order}\n")
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")

    def refund(order: str) -> str:
        return post("refund", order)

    def ship(order: str, declined: bool) -> int:
        if declined:
            raise Declined(f"order {order} cannot be shipped")
        return effect("ship", order)

    @flows.workflow("order")
    def order_flow(ctx: Any, order: str, declined: bool) -> str:
        ctx.step("reserve", effect, "reserve", order,
                 compensate=lambda _kind, o: effect("release", o))
        charged = ctx.step("charge", charge, order, policy=http_policy, compensate=refund)
        ctx.step("ship", ship, order, declined)
        ctx.step("notify", effect, "notify", order)
        return str(charged)

    def hold(order: str) -> int:
        pid = effect("fenced", order)
        marker = log_dir / f"hold-{order}"
        (log_dir / f"in-step-{order}-{os.getpid()}").touch()
        while marker.exists():
            time.sleep(0.01)
        return pid

    @flows.workflow("fenced")
    def fenced(ctx: Any, order: str) -> int:
        return int(ctx.step("hold", hold, order))

    def undo(kind: str, order: str) -> int:
        pid = effect(kind, order)
        marker = log_dir / f"kill-in-{kind}"
        if marker.exists():
            marker.unlink()
            os.kill(os.getpid(), signal.SIGKILL)
        return pid

    @flows.workflow("saga")
    def saga(ctx: Any, order: str) -> None:
        ctx.step("one", effect, "do-1", order, compensate=lambda _k, o: undo("undo-1", o))
        ctx.step("two", effect, "do-2", order, compensate=lambda _k, o: undo("undo-2", o))
        ctx.step("three", ship, order, True)

    @flows.workflow("sleeper")
    def sleeper(ctx: Any, order: str, seconds: float) -> int:
        ctx.step("before", effect, "before", order)
        ctx.sleep(seconds)
        return int(ctx.step("after", effect, "after", order))

    return flows


if __name__ == "__main__":
    import faulthandler

    faulthandler.register(signal.SIGUSR1)  # a stack dump of a stuck worker, on demand
    lease = float(sys.argv[5]) if len(sys.argv) > 5 else 1.0
    worker_flows = build(*sys.argv[1:5], lease=lease)
    (Path(sys.argv[4]) / f"ready-{os.getpid()}").touch()  # started up: worth killing now
    worker_flows.run_worker(concurrency=8)
