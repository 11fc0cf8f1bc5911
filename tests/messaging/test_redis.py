"""RedisBroker details the conformance suite cannot see: how a lease is stored."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from stoic.messaging import QueueStats


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


def test_ack_many_acks_only_the_receipts_still_held(broker: Any, topic: str) -> None:
    broker.publish_many(topic, [1, 2, 3])
    [stale] = broker.claim(topic, lease=0.2)
    kept = broker.claim(topic, max_messages=2, lease=30.0)
    time.sleep(0.3)
    [fresh] = broker.claim(topic, lease=30.0)  # takes over the first message
    assert fresh.id == stale.id
    assert broker.ack_many([stale, *kept]) == 2
    assert broker.stats(topic).in_flight == 1
    assert broker.ack(fresh)
    assert broker._r.xlen(broker._stream(topic)) == 0
    assert broker._r.zcard(broker._k(topic, "leases")) == 0


def test_a_hand_written_entry_whose_fields_would_confuse_the_reply_is_a_defect(
    broker: Any, topic: str
) -> None:
    stream = broker._stream(topic)
    broker._r.xadd(stream, {"m": "a\x1eb\x1f0\x1f0\x1f", "b": "{}"})  # separator in meta
    broker._r.xadd(stream, {"m": "c\x1f0\x1f0\x1f"})  # no body
    broker._r.xadd(stream, {"b": "{}", "m": "d\x1f0\x1f0\x1f"})  # fields in another order
    broker._r.xadd(stream, {"m": "e\x1f0\x1f0\x1f", "b": "[1,\x1d2]"})  # separator in body
    broker.publish(topic, {"n": 6}, id="f")
    first, second, third, fourth, fifth = broker.claim(topic, max_messages=5)
    assert first.defect and second.defect and fourth.defect
    assert (third.id, third.payload, third.defect) == ("d", {}, None)
    assert (fifth.id, fifth.payload, fifth.defect) == ("f", {"n": 6}, None)
    assert broker.ack_many([first, second, third, fourth, fifth]) == 5


def test_acked_entries_leave_the_stream_whether_deleted_or_trimmed(
    broker: Any, topic: str
) -> None:
    """With something still pending an ack deletes its entries; once nothing is, it trims
    every entry up to the last one delivered. Either way entries not yet delivered stay."""
    broker.publish_many(topic, [1, 2, 3, 4, 5])
    first = broker.claim(topic, max_messages=2)
    second = broker.claim(topic, max_messages=2)
    stream = broker._stream(topic)
    assert broker.ack_many(second) == 2  # the first batch is still pending: deleted
    assert broker._r.xlen(stream) == 3
    assert broker.ack_many(first) == 2  # nothing pending: trimmed
    assert broker._r.xlen(stream) == 1
    assert [m.payload for m in broker.peek(topic)] == [5]
    assert broker.stats(topic).ready == 1
    [last] = broker.claim(topic, max_messages=5)
    assert last.payload == 5 and broker.ack(last)
    assert broker._r.xlen(stream) == 0


def test_an_ack_among_many_leases_checks_its_receipts_one_by_one(
    broker: Any, topic: str
) -> None:
    """A lease set much larger than the ack's batch is not read whole (the ZMSCORE branch)."""
    broker.publish_many(topic, list(range(6)))
    [stale] = broker.claim(topic, lease=0.2)
    time.sleep(0.3)
    held = broker.claim(topic, max_messages=6, lease=30.0)  # takes the first one over
    assert broker._r.zcard(broker._k(topic, "leases")) == 6
    assert not broker.ack(stale)
    assert broker.ack_many([stale, held[0]]) == 1
    assert broker.ack_many([held[1], held[1]]) == 1  # a receipt given twice counts once
    assert broker.ack_many(held) == 4
    assert broker.stats(topic) == QueueStats(topic, 0, 0, 0, 0)


def test_a_claim_and_an_ack_larger_than_lua_can_unpack_at_once(
    redis_url: str, topic: str
) -> None:
    """Lua's unpack() stops near 8,000 values: a claim of 5,000 (10,000 ZADD arguments) must
    still lease every message it delivers, and ack them all."""
    from stoic.messaging.redis import RedisBroker

    broker = RedisBroker(redis_url, dedupe_window=0)  # leaves no 21,500 marks behind
    try:
        for _ in range(50):
            broker.publish_many(topic, [1] * 100)
        got = broker.claim(topic, max_messages=5000)
        assert len(got) == 5000
        assert broker._r.zcard(broker._k(topic, "leases")) == 5000
        assert broker.ack_many(got) == 5000
        assert broker.stats(topic) == QueueStats(topic, 0, 0, 0, 0)
        broker.publish_many(topic, list(range(16500)))
        got = broker.claim(topic, max_messages=16500)
        assert broker.ack_many(got[:8100]) == 8100  # the lease set > 2x the batch: ZMSCORE
        assert broker.ack_many(got) == 16500 - 8100
    finally:
        broker.close()


@pytest.mark.parametrize("delay", [0.0, 0.05])
def test_a_body_holding_the_framing_characters_is_queued_whole_with_its_batch(
    broker: Any, topic: str, delay: float
) -> None:
    """A batch travels to the publish script as one argument split on \\x1e and \\x1f, which
    JSON text never holds raw. An ``Encoded`` text that does (a damaged outbox row) sends its
    batch unframed instead: every message is queued with its body unchanged, in order."""
    from stoic.messaging.model import Encoded

    bodies = ['{"n":1}', '"a\x1eb"', '{"n":"\x1f"}', '\x1d\x1e\x1f', '{"n":2}']
    ids = broker.publish_many(topic, [Encoded(b) for b in bodies], delay=delay)
    broker.publish(topic, Encoded('"x\x1ey"'), id=ids[1], delay=delay)  # de-duplicated
    time.sleep(delay)
    stored = broker.peek(topic, limit=10) if not delay else []
    got = broker.claim(topic, max_messages=10)
    assert [m.id for m in got] == ids
    # A claim's reply separates records with \x1d, so a body holding it comes back as a
    # defect for the worker to dead-letter; the stream entry keeps the body unchanged.
    assert [m.body for m in got if m.defect is None] == bodies[:3] + bodies[4:]
    assert [m.id for m in got if m.defect is not None] == [ids[3]]
    if stored:
        assert [m.body for m in stored] == bodies
    assert broker.ack_many(got) == len(bodies)


def test_publishing_nothing_queues_nothing(broker: Any, topic: str) -> None:
    assert broker.publish_many(topic, []) == []
    assert broker.stats(topic) == QueueStats(topic, 0, 0, 0, 0)
