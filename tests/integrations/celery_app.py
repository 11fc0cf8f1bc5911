"""The Celery application the integration tests run in a real worker (configured by env vars).

Every task counts its runs in Redis under ``STOIC_CELERY_PREFIX``, so the test process can
see what the worker did.
"""

from __future__ import annotations

import os

import redis
from celery import Celery

import stoic
from stoic import backoff
from stoic.idempotency import RedisStore
from stoic.integrations.celery import StoicTask
from stoic.policies.breaker import CircuitBreaker, CountWindow

BROKER = os.environ.get("STOIC_CELERY_BROKER", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("STOIC_CELERY_QUEUE", "stoic-test")
PREFIX = os.environ.get("STOIC_CELERY_PREFIX", "stoic-test:celery")

app = Celery("stoic_celery_test", broker=BROKER, backend=BROKER)
app.conf.update(
    task_default_queue=QUEUE, result_expires=600, broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False, task_acks_late=True,
)
counts = redis.Redis.from_url(BROKER)
FAST = stoic.Retry(max_attempts=4, backoff=backoff.constant(0.1, max=5.0))


def count(name: str) -> int:
    return int(counts.incr(f"{PREFIX}:{name}"))


@app.task(base=StoicTask, bind=True, retry_policy=FAST)
def ping(self: StoicTask) -> str:
    return "pong"


@app.task(base=StoicTask, bind=True, retry_policy=FAST)
def flaky(self: StoicTask, name: str, failures: int) -> int:
    n = count(name)
    if n <= failures:
        raise ConnectionRefusedError("dependency restarting")
    return n


@app.task(base=StoicTask, bind=True, retry_policy=FAST)
def permanent(self: StoicTask, name: str) -> int:
    count(name)
    raise ValueError("bad input")


@app.task(base=StoicTask, bind=True, retry_policy=FAST)
def lost_reply(self: StoicTask, name: str) -> int:
    n = count(name)
    if n == 1:
        raise ConnectionResetError("the charge was sent; its reply was lost")
    return n


@app.task(base=StoicTask, bind=True, retry_policy=FAST, store=RedisStore(BROKER))
def charge(self: StoicTask, name: str, amount: int) -> dict:
    return {"run": count(name), "amount": amount}


@app.task(base=StoicTask, bind=True, retry_policy=FAST)
def time_left(self: StoicTask, name: str) -> float | None:
    count(name)
    return stoic.remaining()


@app.task(base=StoicTask, bind=True, retry_policy=stoic.Retry(max_attempts=1),
          breaker=CircuitBreaker(f"{PREFIX}:dependency", window=CountWindow(2), minimum_calls=2,
                                 open_for=600))
def guarded(self: StoicTask, name: str) -> int:
    count(name)
    raise ConnectionRefusedError("dependency down")
