"""The claims module: the one claim loop, lease and current-call context every adapter uses."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import stoic
from stoic.errors import CodecError
from stoic.events import Event
from stoic.idempotency import ClaimStatus, MemoryStore
from stoic.idempotency.claims import (
    CLAIM_TURNS,
    KeyedCall,
    Reclaim,
    Settled,
    asettle,
    current,
    extend,
    holding,
    settle,
)
from stoic.idempotency.events import IdempotencyKeyRejected, IdempotencyLeaseTakenOver
from stoic.testing import virtual_time

CALL = KeyedCall(name="op", key="k", stored_as="op\x1fk", fingerprint="f1")


def _text(response: str | None) -> str:
    if response is None or not response.startswith("ok:"):
        raise ValueError(f"not ours: {response!r}")
    return response[3:]


def test_won_claim_holds_a_lease_whose_finish_stores_the_replay() -> None:
    store = MemoryStore()
    first = settle(store, CALL, lease=5.0, ttl=60.0, read=_text)
    assert first.claim.status is ClaimStatus.CLAIMED and first.lease is not None
    assert first.lease.finish("ok:done") is True
    again = settle(store, CALL, lease=5.0, ttl=60.0, read=_text)
    assert (again.claim.status, again.lease, again.replay) == (ClaimStatus.COMPLETED, None, "done")


def test_finish_with_none_gives_the_key_back() -> None:
    store = MemoryStore()
    lease = settle(store, CALL, lease=5.0, ttl=60.0, read=_text).lease
    assert lease is not None and lease.finish(None) is True
    assert settle(store, CALL, lease=5.0, ttl=60.0, read=_text).claim.claimed


def test_in_flight_is_refused_at_once_without_wait_and_reported() -> None:
    store = MemoryStore()
    seen: list[Event] = []
    stoic.events.subscribe(seen.append)
    settle(store, CALL, lease=5.0, ttl=60.0, read=_text)
    refused = settle(store, CALL, lease=5.0, ttl=60.0, read=_text)
    assert refused.claim.status is ClaimStatus.IN_FLIGHT and refused.lease is None
    assert [(e.reason, e.key) for e in seen if isinstance(e, IdempotencyKeyRejected)] == [
        ("in_flight", "k")]


def test_waiting_repeat_polls_with_growing_pauses_until_the_wait_runs_out() -> None:
    store = MemoryStore()
    with virtual_time():
        claim = settle(store, CALL, lease=30.0, ttl=60.0, read=_text).claim
        reclaim: Reclaim[str] = Reclaim(store, CALL, lease=30.0, ttl=60.0, read=_text, wait=0.2)
        again = store.claim(CALL.stored_as, CALL.fingerprint, lease=30.0, ttl=60.0)
        pauses: list[float] = []
        for _ in range(100):
            step = reclaim.step(again)
            if isinstance(step, Settled):
                break
            assert isinstance(step, float)
            pauses.append(step)
            stoic.clock.sleep(step)
    assert claim.claimed
    assert isinstance(step, Settled) and step.claim.status is ClaimStatus.IN_FLIGHT
    assert pauses[:3] == [0.005, 0.01, 0.02] and max(pauses) <= 0.1
    assert sum(pauses) == pytest.approx(0.2)


def test_unreadable_record_is_deleted_a_few_times_then_codec_error() -> None:
    store = MemoryStore()
    reclaim: Reclaim[str] = Reclaim(store, CALL, lease=5.0, ttl=60.0, read=_text)
    won = store.claim(CALL.stored_as, CALL.fingerprint, lease=5.0, ttl=60.0)
    store.complete(CALL.stored_as, won.token or "", "garbage", ttl=60.0)
    completed = store.claim(CALL.stored_as, CALL.fingerprint, lease=5.0, ttl=60.0)
    for _ in range(CLAIM_TURNS - 1):
        assert reclaim.step(completed) is None, "delete it and claim again"
    with pytest.raises(CodecError, match="unreadable"):
        reclaim.step(completed)


def test_taking_over_a_dead_lease_is_reported() -> None:
    store = MemoryStore()
    seen: list[Event] = []
    stoic.events.subscribe(seen.append)
    with virtual_time() as clock:
        settle(store, CALL, lease=1.0, ttl=60.0, read=_text)
        clock.advance(2.0)
        taken = settle(store, CALL, lease=1.0, ttl=60.0, read=_text)
    assert taken.claim.replaced == "lease_expired"
    assert [e.key for e in seen if isinstance(e, IdempotencyLeaseTakenOver)] == ["k"]


async def test_holding_puts_the_lease_and_key_in_context_for_extend() -> None:
    store = MemoryStore()
    lease = (await asettle(store, CALL, lease=5.0, ttl=60.0, read=_text)).lease
    assert lease is not None
    with pytest.raises(RuntimeError, match="inside an idempotent call"):
        extend()
    async with holding(lease):
        assert current() is lease
        assert stoic.context.idempotency_key() == "k"
        assert await stoic.idempotency.aextend(10.0) is True

        def in_thread() -> Any:
            return extend()

        assert await asyncio.to_thread(in_thread) is True, "the context follows to_thread"
    assert current() is None and stoic.context.idempotency_key() is None
    assert await lease.afinish("ok:x") is True
    assert lease.extend() is False, "a finished lease cannot be renewed"
