"""The Worker asks Retry's own decision: Retry-After, UNKNOWN outcomes, ``on=``, the retry
budget and ``max_time`` decide each redelivery as they decide a call's retries."""

from __future__ import annotations

from typing import Any

import pytest

import stoic
from stoic import backoff
from stoic.events import Event
from stoic.messaging import Message, MessageRetried, Worker, WorkerCounts

FAST = stoic.Retry(attempts=3, backoff=backoff.constant(0.01, jitter=None))


class Busy(Exception):
    """Stands for a dependency answering 429 with Retry-After."""


class Lost(Exception):
    """Stands for a reply lost after the request was sent: it may have taken effect."""


def attempts_failing_first(broker: Any, topic: str, error: type[Exception]) -> list[int]:
    """Publish one message and drain the topic with a handler that raises ``error`` on the
    first attempt; the attempt numbers the handler saw."""
    attempts: list[int] = []

    def handler(m: Message) -> None:
        attempts.append(m.attempts)
        if m.attempts == 1:
            raise error()

    broker.publish(topic, 1)
    Worker(broker, topic, handler, retry=FAST, poll_interval=0.01).run(stop_when_empty=True)
    return attempts


def test_throttled_failure_waits_at_least_its_retry_after(local_broker: Any, topic: str) -> None:
    stoic.register_classifier(Busy, stoic.Verdict(stoic.Outcome.THROTTLED, 0.25, "busy"))
    events: list[Event] = []
    stoic.events.subscribe(events.append)
    attempts = attempts_failing_first(local_broker, topic, Busy)
    assert attempts == [1, 2]
    [retried] = [e for e in events if isinstance(e, MessageRetried)]
    assert retried.delay == 0.25  # not the 0.01 s backoff
    assert retried.outcome == "throttled"


def test_unknown_failure_is_redelivered_because_delivery_is_at_least_once_anyway(
    local_broker: Any, topic: str
) -> None:
    stoic.register_classifier(Lost, stoic.Outcome.UNKNOWN)
    attempts = attempts_failing_first(local_broker, topic, Lost)
    assert attempts == [1, 2]


def always_failing(
    broker: Any, topic: str, error: Exception, attempts: int
) -> tuple[list[int], WorkerCounts]:
    """Publish one message and drain the topic with a handler that always raises ``error``,
    under ``Retry(attempts=..., on=ValueError)``: the calls made and the worker's counts."""
    calls: list[int] = []

    def handler(m: Message) -> None:
        calls.append(1)
        raise error

    broker.publish(topic, 1)
    retry = stoic.Retry(attempts=attempts, backoff=backoff.constant(0.0, jitter=None),
                        on=ValueError)
    counts = Worker(broker, topic, handler, retry=retry, poll_interval=0.01).run(
        stop_when_empty=True
    )
    return calls, counts


def test_on_overrides_classification(local_broker: Any, topic: str) -> None:
    calls, _ = always_failing(local_broker, topic, ValueError("flaky parser"), attempts=2)
    assert len(calls) == 2


def test_on_that_excludes_an_error_dead_letters_it_at_once(local_broker: Any, topic: str) -> None:
    """``on=`` decides for the worker too: a transient error it does not name is not retried."""
    calls, counts = always_failing(local_broker, topic, ConnectionRefusedError("down"), 3)
    assert len(calls) == 1
    assert counts.dead_lettered == 1


def test_a_spent_retry_budget_dead_letters_like_a_call_would_give_up(
    local_broker: Any, topic: str
) -> None:
    """The worker asks Retry's own decision (``next_delay``): its budget counts too."""
    spent = stoic.RetryBudget(ratio=0.0, min_per_second=0.0)
    retry = stoic.Retry(attempts=5, backoff=backoff.constant(0.0, jitter=None), budget=spent)

    def handler(m: Message) -> None:
        raise ConnectionRefusedError("down")

    with pytest.raises(ConnectionRefusedError):  # a call through the same Retry gives up at once
        retry.call(handler, None)  # type: ignore[arg-type]
    local_broker.publish(topic, 1)
    counts = Worker(local_broker, topic, handler, retry=retry, poll_interval=0.01).run(
        stop_when_empty=True
    )
    assert counts.retried == 0
    [dead] = local_broker.dead_letters(topic)
    assert dead.message.attempts == 1
    assert dead.reason.startswith("retry gave up")


def test_max_time_counts_from_the_first_publish(local_broker: Any, topic: str) -> None:
    """A message older than ``max_time`` is not retried again: the wait would pass it."""
    retry = stoic.Retry(attempts=10, backoff=backoff.constant(0.2, jitter=None), max_time=0.3)
    calls: list[int] = []

    def handler(m: Message) -> None:
        calls.append(m.attempts)
        raise ConnectionRefusedError("down")

    local_broker.publish(topic, 1)
    Worker(local_broker, topic, handler, retry=retry, poll_interval=0.01).run(
        stop_when_empty=True
    )
    assert calls in ([1], [1, 2])  # 0.2 s fits once in 0.3 s, never twice
    [dead] = local_broker.dead_letters(topic)
    assert dead.reason.startswith("retry gave up")


def test_a_dedupe_store_that_is_not_a_store_is_refused() -> None:
    with pytest.raises(ValueError, match="dedupe"):
        Worker(stoic.messaging.MemoryBroker(), "t", print, dedupe="redis://x")  # type: ignore[arg-type]
