"""Must hold: workers SIGKILLed at random lose nothing, and effects happen exactly once.

5,000 messages, four worker processes, a random worker SIGKILLed every 200-400 handled
messages and restarted. What is asserted, and why it is exactly what we claim:

- none lost: every message was handled (its effect row exists) and the queue ends empty,
  with nothing dead-lettered;
- exactly-once effects: the effect row is written in the same transaction as the inbox mark
  (``Inbox``), so each message's effect exists exactly once;
- what ``dedupe=<store>`` alone buys: a handler *run* (logged outside any transaction) is
  repeated only for a message that was being handled when its worker was killed, so at most
  one repeated message per kill. A redelivery after a completed run never runs again: each
  kill also leaves up to 49 handled-but-unacked messages (prefetch 50, acks per batch),
  which without dedupe would all run again and break "repeated <= kills".
"""

from __future__ import annotations

import collections
import importlib.util
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import stoic
from stoic.messaging import Inbox, connect

N = 5000
WORKERS = 4
SCRIPT = Path(__file__).with_name("crash_worker.py")


def _load_worker_module() -> Any:
    spec = importlib.util.spec_from_file_location("crash_worker", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'queue.db'}"
    if kind == "redis":
        return str(request.getfixturevalue("redis_url"))
    if kind == "postgres":
        return str(request.getfixturevalue("postgres_broker_url"))
    if kind == "nats":  # JetStream's ack wait is the lease a killed worker's messages wait out
        return f"{request.getfixturevalue('nats_url')}?ack_wait=2&prefix=stoictest"
    return str(request.getfixturevalue("amqp_url"))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "redis", "rabbitmq", "postgres", "nats"])
def test_sigkilled_workers_lose_nothing_and_effects_happen_exactly_once(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = _url(kind, tmp_path, request)
    topic = f"crash-{uuid.uuid4().hex[:10]}"
    effects_path, dedupe_path, runs_path = (
        tmp_path / "effects.db", tmp_path / "dedupe.db", tmp_path / "runs.log"
    )
    db = sqlite3.connect(effects_path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE effects (id TEXT NOT NULL, pid INTEGER)")
    Inbox().create(db)

    broker: Any = connect(url)
    ids = [f"m{i:05d}" for i in range(N)]
    for start in range(0, N, 500):
        broker.publish_many(topic, [{"n": i} for i in range(start, start + 500)],
                            ids=ids[start:start + 500])

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(stoic.__file__).parent.parent), str(SCRIPT.parent)])}
    args = [sys.executable, str(SCRIPT), url, topic, str(effects_path), str(dedupe_path),
            str(runs_path)]

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(args, env=env)

    procs = [spawn() for _ in range(WORKERS)]
    rng = random.Random(6)
    kills = 0
    next_kill = rng.randint(200, 400)
    deadline = time.monotonic() + 60
    try:
        while True:
            (done,) = db.execute("SELECT COUNT(*) FROM effects").fetchone()
            if done >= N:
                break
            assert time.monotonic() < deadline, f"only {done} of {N} handled in time"
            assert not broker.dead_letters(topic, 1), broker.dead_letters(topic, 1)
            for i, p in enumerate(procs):
                assert p.poll() is None, f"worker {i} exited with {p.returncode}"
            if done >= next_kill:
                victim = rng.randrange(WORKERS)
                procs[victim].send_signal(signal.SIGKILL)
                procs[victim].wait()
                procs[victim] = spawn()
                kills += 1
                next_kill = done + rng.randint(200, 400)
            time.sleep(0.02)
        for p in procs:  # a graceful stop flushes the last acks
            ready = Path(f"{runs_path}.ready.{p.pid}")
            while not ready.exists():  # a SIGTERM before that would kill it uncleanly
                assert time.monotonic() < deadline + 30, "a restarted worker never started"
                time.sleep(0.01)
            p.send_signal(signal.SIGTERM)
        for p in procs:
            assert p.wait(30) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    # Messages whose worker was killed after the effect and before the ack come back when
    # their lease ends; drain them with the same worker, as a restarted fleet would.
    drain = _load_worker_module().build(*args[2:])
    drain.run(stop_when_empty=True, handle_signals=False)
    drain.broker.close()

    effects = collections.Counter(r[0] for r in db.execute("SELECT id FROM effects"))
    assert set(effects) == set(ids), "a message was lost"
    assert max(effects.values()) == 1, "an effect happened twice"
    runs = collections.Counter(runs_path.read_text().split())
    assert set(runs) == set(ids)
    repeated = sum(1 for n in runs.values() if n > 1)
    assert kills >= 10
    assert repeated <= kills, f"{repeated} messages ran twice with {kills} kills"
    stats = broker.stats(topic)
    assert (stats.ready, stats.delayed, stats.in_flight, stats.dead) == (0, 0, 0, 0)
    if kind in ("sqlite", "redis", "postgres"):  # counted in the store, seen by every process
        # each message that ran twice came back from a killed worker's lease
        assert stats.recovered >= repeated, (stats.recovered, repeated)
    if hasattr(broker, "delete_topic"):
        broker.delete_topic(topic)
    broker.close()
