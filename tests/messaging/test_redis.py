"""RedisBroker details the conformance suite cannot see: how a lease is stored."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def broker(redis_url: str) -> Iterator[Any]:
    from stoic.messaging.redis import RedisBroker

    b = RedisBroker(redis_url)
    yield b
    b.close()


@pytest.fixture
def topic(broker: Any) -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    broker.delete_topic(name)


def test_a_lease_is_the_receipt_in_the_lease_set_and_goes_with_the_ack(
    broker: Any, topic: str
) -> None:
    broker.publish(topic, {"n": 1})
    [m] = broker.claim(topic, lease=30.0)
    leases = broker._k(topic, "leases")
    assert broker._r.zrange(leases, 0, -1) == [m.receipt]
    assert broker.ack(m)
    assert broker._r.zcard(leases) == 0
    assert not broker.ack(m)  # a second ack of the same receipt does nothing


def test_an_expired_lease_in_the_older_layout_is_still_taken_over(
    broker: Any, topic: str
) -> None:
    """A lease stored as a bare entry id (before receipts were the members) comes back when
    it expires, with the delivery counted by the stream."""
    broker.publish(topic, {"n": 1})
    [first] = broker.claim(topic, lease=30.0)
    leases = broker._k(topic, "leases")
    entry_id = first.receipt.partition("|")[0]
    broker._r.zrem(leases, first.receipt)
    broker._r.zadd(leases, {entry_id: 1.0})  # the old layout, its lease long over
    [again] = broker.claim(topic, lease=30.0)
    assert (again.id, again.attempts, again.payload) == (first.id, 2, {"n": 1})
    assert broker._r.zrange(leases, 0, -1) == [again.receipt]
    assert not broker.ack(first)
    assert broker.ack(again)
