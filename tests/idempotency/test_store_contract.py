"""The store contract, proven once for every store (memory, SQLite, Redis, PostgreSQL).

Lease and expiry tests run on virtual time: every store reads ``stoic.clock.wall()`` on the
client side, so moving the virtual clock moves the stores' idea of "now" too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from idempotency.backends import Backend
from stoic.idempotency import ClaimStatus, PostgresStore, RecordState, RedisStore, SQLiteStore, Store
from stoic.testing import virtual_time

LEASE, TTL = 10.0, 100.0


def test_first_claim_wins_and_repeats_see_it_in_flight(store: Store) -> None:
    first = store.claim("k", "fp", lease=LEASE, ttl=TTL)
    again = store.claim("k", "fp", lease=LEASE, ttl=TTL)
    assert first.status is ClaimStatus.CLAIMED and first.token
    assert again.status is ClaimStatus.IN_FLIGHT and again.token is None
    assert again.retry_after is not None and 0 < again.retry_after <= LEASE
    assert again.record is not None and again.record.state is RecordState.IN_FLIGHT


def test_same_key_with_another_fingerprint_is_a_mismatch(store: Store) -> None:
    claim = store.claim("k", "fp", lease=LEASE, ttl=TTL)
    assert store.claim("k", "other", lease=LEASE, ttl=TTL).status is ClaimStatus.MISMATCH
    store.complete("k", claim.token or "", "done", ttl=TTL)
    assert store.claim("k", "other", lease=LEASE, ttl=TTL).status is ClaimStatus.MISMATCH


def test_completed_record_is_replayed_with_its_response(store: Store) -> None:
    claim = store.claim("k", "fp", lease=LEASE, ttl=TTL)
    response = '{"result": "ünïcode ✓", "n": 1}' * 100
    assert store.complete("k", claim.token or "", response, ttl=TTL)
    replay = store.claim("k", "fp", lease=LEASE, ttl=TTL)
    assert replay.status is ClaimStatus.COMPLETED
    assert replay.record is not None and replay.record.response == response
    record = store.get("k")
    assert record is not None and record.completed and record.response == response


def test_a_response_of_none_is_stored_as_none(store: Store) -> None:
    claim = store.claim("k", "fp", lease=LEASE, ttl=TTL)
    assert store.complete("k", claim.token or "", None, ttl=TTL)
    replay = store.claim("k", "fp", lease=LEASE, ttl=TTL)
    assert replay.status is ClaimStatus.COMPLETED and replay.record is not None
    assert replay.record.response is None


def test_only_the_token_holder_can_complete_release_or_extend(store: Store) -> None:
    claim = store.claim("k", "fp", lease=LEASE, ttl=TTL)
    assert not store.complete("k", "not-the-token", "x", ttl=TTL)
    assert not store.release("k", "not-the-token")
    assert not store.extend("k", "not-the-token", LEASE)
    assert store.claim("k", "fp", lease=LEASE, ttl=TTL).status is ClaimStatus.IN_FLIGHT
    assert store.complete("k", claim.token or "", "x", ttl=TTL)
    assert not store.release("k", claim.token or ""), "a completed record cannot be released"
    assert store.claim("k", "fp", lease=LEASE, ttl=TTL).status is ClaimStatus.COMPLETED


def test_release_lets_the_next_claim_run_again(store: Store) -> None:
    claim = store.claim("k", "fp", lease=LEASE, ttl=TTL)
    assert store.release("k", claim.token or "")
    assert store.get("k") is None
    again = store.claim("k", "fp", lease=LEASE, ttl=TTL)
    assert again.status is ClaimStatus.CLAIMED and again.token != claim.token


def test_expired_lease_is_taken_over_and_the_old_owner_cannot_complete(store: Store) -> None:
    with virtual_time() as vc:
        old = store.claim("k", "fp", lease=LEASE, ttl=TTL)
        vc.advance(LEASE - 1)
        assert store.claim("k", "fp", lease=LEASE, ttl=TTL).status is ClaimStatus.IN_FLIGHT
        vc.advance(2)
        new = store.claim("k", "fp", lease=LEASE, ttl=TTL)
        assert new.status is ClaimStatus.CLAIMED and new.replaced == "lease_expired"
        assert not store.complete("k", old.token or "", "late", ttl=TTL)
        assert store.complete("k", new.token or "", "fresh", ttl=TTL)
        record = store.get("k")
        assert record is not None and record.response == "fresh"


def test_extend_keeps_the_lease_alive(store: Store) -> None:
    with virtual_time() as vc:
        claim = store.claim("k", "fp", lease=LEASE, ttl=TTL)
        vc.advance(LEASE * 0.8)
        assert store.extend("k", claim.token or "", LEASE)
        vc.advance(LEASE * 0.8)
        assert store.claim("k", "fp", lease=LEASE, ttl=TTL).status is ClaimStatus.IN_FLIGHT
        vc.advance(LEASE * 0.3)
        assert store.claim("k", "fp", lease=LEASE, ttl=TTL).status is ClaimStatus.CLAIMED


def test_expired_records_are_ignored_on_read_and_purged(backend: Backend, store: Store) -> None:
    with virtual_time() as vc:
        claim = store.claim("old", "fp", lease=LEASE, ttl=TTL)
        store.complete("old", claim.token or "", "r", ttl=TTL)
        live = store.claim("live", "fp", lease=LEASE, ttl=TTL * 10)
        store.complete("live", live.token or "", "r", ttl=TTL * 10)
        vc.advance(TTL + 1)
        assert store.get("old") is None
        purged = store.purge_expired()
        if backend.kind != "redis":  # Redis expires keys itself; purge has nothing to do
            assert purged == 1
        assert store.get("live") is not None
        again = store.claim("old", "fp", lease=LEASE, ttl=TTL)
        assert again.status is ClaimStatus.CLAIMED


def test_keys_longer_than_255_characters_are_refused(store: Store) -> None:
    assert store.claim("k" * 255, "fp", lease=LEASE, ttl=TTL).claimed
    with pytest.raises(ValueError, match="256 characters"):
        store.claim("k" * 256, "fp", lease=LEASE, ttl=TTL)
    with pytest.raises(ValueError, match="empty"):
        store.claim("", "fp", lease=LEASE, ttl=TTL)


@pytest.mark.parametrize(("lease", "ttl"), [(0, TTL), (-1, TTL), (LEASE, 0), (LEASE, float("nan"))])
def test_bad_lease_or_ttl_is_refused_naming_it(store: Store, lease: float, ttl: float) -> None:
    with pytest.raises(ValueError, match="lease" if lease <= 0 else "ttl"):
        store.claim("k", "fp", lease=lease, ttl=ttl)


_NOWHERE = "postgresql://nowhere/db"  # the constructors check before they connect


@pytest.mark.parametrize(
    ("make", "parameter"),
    [
        (lambda tmp: SQLiteStore(":memory:"), "path"),
        (lambda tmp: SQLiteStore(tmp / "s.db", table="1st"), "table"),
        (lambda tmp: SQLiteStore(tmp / "s.db", table="t; DROP TABLE x"), "table"),
        (lambda tmp: SQLiteStore(tmp / "s.db", busy_timeout=0), "busy_timeout"),
        (lambda tmp: SQLiteStore(tmp / "s.db", synchronous="fast"), "synchronous"),
        (lambda tmp: PostgresStore(_NOWHERE, table="t" * 64), "table"),
        (lambda tmp: PostgresStore(_NOWHERE, min_size=-1), "min_size"),
        (lambda tmp: PostgresStore(_NOWHERE, max_size=0), "max_size"),
        (lambda tmp: RedisStore("http://127.0.0.1:6379"), "url"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bad_store_configuration_is_refused_naming_the_parameter(
    make: Callable[[Path], Any], parameter: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=parameter):
        make(tmp_path)


def test_corrupted_record_is_reported_and_treated_as_absent(
    shared_backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    # (memory records are Python objects the store made itself: nothing to corrupt)
    backend = shared_backend
    store = backend.make()
    claim = store.claim("k", "fp", lease=LEASE, ttl=TTL)
    store.complete("k", claim.token or "", "r", ttl=TTL)
    backend.corrupt(store, "k")
    with caplog.at_level(logging.WARNING, logger="stoic.idempotency"):
        assert store.get("k") is None
        again = store.claim("k", "fp", lease=LEASE, ttl=TTL)
    assert again.status is ClaimStatus.CLAIMED
    assert again.replaced == "corrupted"
    assert "unreadable" in caplog.text
    assert store.complete("k", again.token or "", "new", ttl=TTL)
    replay = store.claim("k", "fp", lease=LEASE, ttl=TTL)
    assert replay.record is not None and replay.record.response == "new"


def test_a_store_made_separately_on_the_same_backend_sees_the_same_records(
    backend: Backend,
) -> None:
    one, two = backend.make(), backend.make()
    claim = one.claim("k", "fp", lease=LEASE, ttl=TTL)
    assert two.claim("k", "fp", lease=LEASE, ttl=TTL).status is ClaimStatus.IN_FLIGHT
    one.complete("k", claim.token or "", "r", ttl=TTL)
    assert two.claim("k", "fp", lease=LEASE, ttl=TTL).status is ClaimStatus.COMPLETED


async def test_async_twins_keep_the_same_contract(store: Store) -> None:
    first = await store.aclaim("k", "fp", lease=LEASE, ttl=TTL)
    assert first.status is ClaimStatus.CLAIMED
    assert (await store.aclaim("k", "fp", lease=LEASE, ttl=TTL)).status is ClaimStatus.IN_FLIGHT
    assert (await store.aclaim("k", "x", lease=LEASE, ttl=TTL)).status is ClaimStatus.MISMATCH
    assert await store.aextend("k", first.token or "", LEASE)
    assert not await store.acomplete("k", "wrong", "r", ttl=TTL)
    assert await store.acomplete("k", first.token or "", "r", ttl=TTL)
    replay = await store.aclaim("k", "fp", lease=LEASE, ttl=TTL)
    assert replay.status is ClaimStatus.COMPLETED and replay.record is not None
    assert replay.record.response == "r"
    record = await store.aget("k")
    assert record is not None and record.completed
    other = await store.aclaim("k2", "fp", lease=LEASE, ttl=TTL)
    assert await store.arelease("k2", other.token or "")
    assert await store.aget("k2") is None
    assert await store.adelete("k")
    assert await store.aget("k") is None
    assert await store.apurge_expired() >= 0
    await store.aclose()


def test_redis_claim_complete_and_replay_take_one_round_trip_each(redis_url: str) -> None:
    import uuid

    import redis

    sent: list[object] = []

    class Counting(redis.Connection):
        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            sent.append(command)
            super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]

    client = redis.Redis(connection_pool=redis.ConnectionPool.from_url(
        redis_url, connection_class=Counting))
    store = RedisStore(redis_url, prefix=f"stoic-test:{uuid.uuid4().hex}:", client=client)
    try:
        warm = store.claim("warm", "fp", lease=LEASE, ttl=TTL)  # loads the scripts
        store.complete("warm", warm.token or "", "r", ttl=TTL)

        def trips(operation: Callable[[], Any]) -> tuple[int, Any]:
            sent.clear()
            result = operation()
            return len(sent), result

        claimed, claim = trips(lambda: store.claim("k", "fp", lease=LEASE, ttl=TTL))
        completed, _ = trips(lambda: store.complete("k", claim.token or "", "r", ttl=TTL))
        replayed, replay = trips(lambda: store.claim("k", "fp", lease=LEASE, ttl=TTL))
        assert replay.status is ClaimStatus.COMPLETED
        assert (claimed, completed, replayed) == (1, 1, 1), "one command each: no extra reads"
    finally:
        client.delete(store.prefix + "k", store.prefix + "warm")
        store.close()


def test_redis_key_holding_another_type_is_treated_as_absent(redis_url: str) -> None:
    import uuid

    store = RedisStore(redis_url, prefix=f"stoic-test:{uuid.uuid4().hex}:")
    client = store._sync_client()
    client.hset(store.prefix + "k", "not", "a record")
    try:
        assert store.get("k") is None
        claim = store.claim("k", "fp", lease=LEASE, ttl=TTL)
        assert claim.status is ClaimStatus.CLAIMED
        assert claim.replaced == "corrupted"
        assert store.complete("k", claim.token or "", "r", ttl=TTL)
    finally:
        client.delete(store.prefix + "k")
        store.close()
