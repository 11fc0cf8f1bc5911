"""StoicTask with a real Celery worker (a subprocess, solo pool) on the local Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import stoic
from support import require_service

TESTS = Path(__file__).resolve().parent.parent
WORKER_LIFETIME = 300.0  # seconds: the worker is killed after this whatever happens


@pytest.fixture(scope="module")
def worker() -> Iterator[ModuleType]:
    require_service("Redis", "127.0.0.1", 6379)
    suffix = uuid.uuid4().hex[:10]
    env_names = {"STOIC_CELERY_QUEUE": f"stoic-test-{suffix}",
                 "STOIC_CELERY_PREFIX": f"stoic-test:celery:{suffix}"}
    saved = {k: os.environ.get(k) for k in env_names}
    os.environ.update(env_names)
    import importlib

    import integrations.celery_app as celery_app

    celery_app = importlib.reload(celery_app)  # pick up this module's queue and prefix
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(TESTS.parent / "src"), str(TESTS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "integrations.celery_app", "worker",
         "-Q", env_names["STOIC_CELERY_QUEUE"], "--pool=solo", "--concurrency=1",
         "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel=WARNING",
         f"--hostname=stoic-test-{suffix}@%h"],
        cwd=TESTS, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    killer = threading.Timer(WORKER_LIFETIME, proc.kill)
    killer.daemon = True
    killer.start()
    try:
        assert celery_app.ping.delay().get(timeout=60) == "pong"
        yield celery_app
    finally:
        killer.cancel()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        queue = env_names["STOIC_CELERY_QUEUE"]
        keys = celery_app.counts.keys(f"{env_names['STOIC_CELERY_PREFIX']}:*")
        celery_app.counts.delete(*keys, queue, f"_kombu.binding.{queue}",  # ours only
                                 f"_kombu.binding_permanent.{queue}")
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def runs(app: Any, name: str) -> int:
    value = app.counts.get(f"{app.PREFIX}:{name}")
    return int(value) if value is not None else 0


def fresh() -> str:
    return uuid.uuid4().hex[:8]


def test_a_transient_failure_is_retried_until_it_succeeds(worker: Any) -> None:
    name = fresh()
    assert worker.flaky.delay(name, 2).get(timeout=60) == 3
    assert runs(worker, name) == 3


def test_a_permanent_failure_is_not_retried(worker: Any) -> None:
    name = fresh()
    with pytest.raises(ValueError, match="bad input"):
        worker.permanent.delay(name).get(timeout=60)
    assert runs(worker, name) == 1


def test_a_lost_reply_is_not_retried_without_a_key(worker: Any) -> None:
    name = fresh()
    with pytest.raises(ConnectionResetError):
        worker.lost_reply.delay(name).get(timeout=60)
    assert runs(worker, name) == 1


def test_a_lost_reply_is_retried_with_a_key(worker: Any) -> None:
    name = fresh()
    result = worker.lost_reply.apply_async((name,), idempotency_key=f"k-{name}")
    assert result.get(timeout=60) == 2
    assert runs(worker, name) == 2


def test_a_keyed_task_with_a_store_runs_once_per_key(worker: Any) -> None:
    name = fresh()
    first = worker.charge.apply_async((name, 10), idempotency_key=f"charge-{name}")
    assert first.get(timeout=60) == {"run": 1, "amount": 10}
    again = worker.charge.apply_async((name, 10), idempotency_key=f"charge-{name}")
    assert again.get(timeout=60) == {"run": 1, "amount": 10}
    assert runs(worker, name) == 1


def test_the_deadline_travels_with_the_task_and_is_bound_in_the_worker(worker: Any) -> None:
    name = fresh()
    with stoic.deadline(30):
        result = worker.time_left.delay(name)
    left = result.get(timeout=60)
    assert left is not None and 0 < left <= 30


def test_a_task_arriving_after_its_deadline_is_not_run(worker: Any) -> None:
    name = fresh()
    with stoic.deadline(0.5):
        result = worker.time_left.apply_async((name,), countdown=2)
    with pytest.raises(Exception) as info:
        result.get(timeout=60)
    assert type(info.value).__name__ in ("TaskRevokedError", "DeadlineExceeded")
    assert runs(worker, name) == 0


def test_no_task_is_sent_after_the_deadline(worker: Any) -> None:
    with stoic.deadline(0), pytest.raises(stoic.DeadlineExceeded):
        worker.time_left.delay(fresh())


def test_an_open_breaker_keeps_the_task_from_calling_the_dependency(worker: Any) -> None:
    name = fresh()
    for _ in range(2):  # two failures open the worker's breaker (window 2, minimum 2)
        with pytest.raises(ConnectionRefusedError):
            worker.guarded.delay(name).get(timeout=60)
    with pytest.raises(Exception) as info:  # Celery rebuilds it as a bare Exception
        worker.guarded.delay(name).get(timeout=60)
    assert "CircuitOpenError" in f"{type(info.value).__name__} {info.value}"
    assert runs(worker, name) == 2


def test_the_outbox_relay_publishes_rows_as_tasks(worker: Any, tmp_path: Path) -> None:
    import sqlite3

    from stoic.integrations.celery import CeleryPublisher
    from stoic.messaging import Outbox, OutboxRelay

    name = fresh()
    db = sqlite3.connect(tmp_path / "outbox.db")
    outbox = Outbox()
    outbox.create(db)
    outbox.add(db, "integrations.celery_app.time_left", name)
    db.commit()
    relay = OutboxRelay(db, CeleryPublisher(worker.app))  # type: ignore[arg-type]
    assert relay.relay_once() == 1
    end = time.monotonic() + 60
    while runs(worker, name) == 0 and time.monotonic() < end:
        time.sleep(0.05)
    assert runs(worker, name) == 1
