"""@idempotent: what runs, what is stored, what is replayed, and what is refused."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import threading
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

import stoic
from stoic import CodecError, IdempotencyKeyInUseError, IdempotencyKeyMismatchError, IdempotencyStoredError
from stoic.events import Event
from stoic.idempotency import MemoryStore, Store, extend
from stoic.idempotency.events import (
    IdempotencyKeyRejected,
    IdempotencyLeaseLost,
    IdempotencyLeaseTakenOver,
    IdempotencyRecordCorrupted,
    IdempotentReplayed,
)
from stoic.idempotency.fingerprint import digest
from stoic.outcome import Outcome
from stoic.testing import virtual_time


@pytest.fixture
def events() -> list[Event]:
    seen: list[Event] = []
    stoic.events.subscribe(seen.append)
    return seen


@dataclass
class Receipt:
    order_id: int
    amount: decimal.Decimal
    at: dt.datetime
    ref: uuid.UUID


# -- on every store ------------------------------------------------------------------------


def test_repeat_after_completion_returns_the_stored_result_without_running(
    store: Store, events: list[Event]
) -> None:
    runs: list[int] = []

    @stoic.idempotent(store=store, key="charge-{order_id}")
    def charge(order_id: int, amount: decimal.Decimal) -> Receipt:
        runs.append(order_id)
        return Receipt(order_id, amount, dt.datetime(2026, 1, 2, 3, 4, 5), uuid.uuid4())

    first = charge(7, decimal.Decimal("9.99"))
    again = charge(7, decimal.Decimal("9.99"))
    assert runs == [7]
    assert again == first
    assert isinstance(again, Receipt)
    replays = [e for e in events if isinstance(e, IdempotentReplayed)]
    assert [(e.key, e.error_type) for e in replays] == [("charge-7", None)]


def test_permanent_failure_is_stored_and_replayed_as_stored_error(store: Store) -> None:
    runs: list[str] = []

    @stoic.idempotent(store=store, key="{sku}")
    def reserve(sku: str) -> None:
        runs.append(sku)
        raise ValueError(f"unknown sku {sku}")

    with pytest.raises(ValueError, match="unknown sku x"):
        reserve("x")
    with pytest.raises(IdempotencyStoredError) as replayed:
        reserve("x")
    assert (replayed.value.type_name, replayed.value.message) == ("ValueError", "unknown sku x")
    assert replayed.value.key == "x"
    assert runs == ["x"]


def test_scope_keeps_one_users_key_from_replaying_another_users_result(store: Store) -> None:
    @stoic.idempotent(store=store, key="{key}", scope=lambda user, key: user,
                      fingerprint=lambda user, key: key)
    def whoami(user: str, key: str) -> str:
        return f"result for {user}"

    assert whoami("alice", "k1") == "result for alice"
    assert whoami("bob", "k1") == "result for bob"
    assert whoami("alice", "k1") == "result for alice"


def test_corrupted_stored_result_is_reported_and_the_call_runs_again(
    store: Store, events: list[Event]
) -> None:
    runs: list[int] = []

    @stoic.idempotent(store=store, key="{n}", namespace="")
    def work(n: int) -> int:
        runs.append(n)
        return n * 2

    assert work(1) == 2
    claim = store.claim("2", _fingerprint_of(work, 2), lease=5, ttl=60)
    store.complete("2", claim.token or "", "{this is not json", ttl=60)
    assert work(2) == 4
    assert work(2) == 4
    assert runs == [1, 2]
    corrupted = [e for e in events if isinstance(e, IdempotencyRecordCorrupted)]
    assert [e.key for e in corrupted] == ["2"]


def _fingerprint_of(fn: Any, n: int) -> str:
    import inspect

    from stoic.idempotency.fingerprint import Binder, fingerprint_arguments

    return fingerprint_arguments(Binder(inspect.signature(fn)).bind((n,), {}), (n,), {})


async def test_async_function_is_claimed_replayed_and_refused_the_same_way(store: Store) -> None:
    runs: list[int] = []
    gate = asyncio.Event()

    @stoic.idempotent(store=store, key="{n}")
    async def work(n: int, extra: int = 0) -> dict[str, int]:
        runs.append(n)
        await gate.wait()
        return {"n": n}

    first = asyncio.create_task(work(1))
    await asyncio.sleep(0.05)
    with pytest.raises(IdempotencyKeyInUseError):
        await work(1)
    gate.set()
    assert await first == {"n": 1}
    assert await work(1) == {"n": 1}
    with pytest.raises(IdempotencyKeyMismatchError):
        await work(1, extra=1)
    assert runs == [1]


# -- semantics (memory store) --------------------------------------------------------------


def test_same_key_with_different_arguments_is_a_mismatch(events: list[Event]) -> None:
    @stoic.idempotent(store=MemoryStore(), key="{key}")
    def pay(key: str, amount: int) -> int:
        return amount

    assert pay("k", 10) == 10
    with pytest.raises(IdempotencyKeyMismatchError):
        pay("k", 11)
    assert pay(key="k", amount=10) == 10, "keyword or positional, the same request"
    assert any(isinstance(e, IdempotencyKeyRejected) and e.reason == "mismatch" for e in events)


def test_repeat_while_in_flight_raises_in_use_with_retry_after(events: list[Event]) -> None:
    store = MemoryStore()
    seen: list[BaseException] = []

    @stoic.idempotent(store=store, key="{key}", lease=30.0)
    def slow(key: str) -> str:
        with pytest.raises(IdempotencyKeyInUseError) as inner:
            slow(key)
        seen.append(inner.value)
        return "done"

    assert slow("k") == "done"
    assert seen[0].retry_after is not None  # type: ignore[attr-defined]
    assert 29 < seen[0].retry_after <= 30  # type: ignore[attr-defined]
    assert any(isinstance(e, IdempotencyKeyRejected) and e.reason == "in_flight" for e in events)


def test_wait_returns_the_first_calls_result_when_it_finishes() -> None:
    store = MemoryStore()
    started, release = threading.Event(), threading.Event()
    runs: list[str] = []

    @stoic.idempotent(store=store, key="{key}", wait=10.0)
    def work(key: str) -> str:
        runs.append(key)
        started.set()
        release.wait(10)
        return "first"

    first: list[str] = []
    t = threading.Thread(target=lambda: first.append(work("k")))
    t.start()
    started.wait(10)
    threading.Timer(0.1, release.set).start()
    assert work("k") == "first"
    t.join(10)
    assert first == ["first"]
    assert runs == ["k"]


def test_wait_gives_up_after_wait_seconds_with_in_use() -> None:
    store = MemoryStore()
    with virtual_time() as vc:
        claim = store.claim("k", digest("whatever"), lease=60, ttl=60)
        assert claim.claimed

        @stoic.idempotent(store=store, key="{key}", namespace="", wait=2.0,
                          fingerprint=lambda key: "whatever")
        def work(key: str) -> str:
            raise AssertionError("must not run")

        with pytest.raises(IdempotencyKeyInUseError):
            work("k")
        assert 1.99 <= sum(vc.sleeps) < 2.2
        assert max(vc.sleeps) <= 0.1, "polls in small steps, not one long sleep"


def test_wait_never_sleeps_past_the_context_deadline() -> None:
    store = MemoryStore()
    with virtual_time() as vc:
        store.claim("k", digest("f"), lease=60, ttl=60)

        @stoic.idempotent(store=store, key="{key}", namespace="", wait=30.0,
                          fingerprint=lambda key: "f")
        def work(key: str) -> None: ...

        with stoic.deadline(1.0), pytest.raises(IdempotencyKeyInUseError):
            work("k")
        assert sum(vc.sleeps) <= 1.0 + 1e-9


@pytest.mark.parametrize("exc", [ConnectionRefusedError("down"), TimeoutError("lost reply")],
                         ids=["transient", "unknown"])
def test_transient_and_unknown_failures_release_the_key(exc: Exception) -> None:
    runs: list[int] = []

    @stoic.idempotent(store=MemoryStore(), key="{n}")
    def flaky(n: int) -> str:
        runs.append(n)
        if len(runs) == 1:
            raise exc
        return "ok"

    with pytest.raises(type(exc)):
        flaky(1)
    assert flaky(1) == "ok"
    assert flaky(1) == "ok"
    assert runs == [1, 1]


def test_cache_decides_which_outcomes_are_stored() -> None:
    runs: list[int] = []

    @stoic.idempotent(store=MemoryStore(), key="{n}", cache={Outcome.SUCCESS})
    def strict(n: int) -> None:
        runs.append(n)
        raise KeyError("nope")

    for _ in range(2):
        with pytest.raises(KeyError):
            strict(1)
    assert runs == [1, 1], "PERMANENT not in cache: nothing stored, runs again"

    @stoic.idempotent(store=MemoryStore(), key="{n}",
                      cache={Outcome.SUCCESS, Outcome.PERMANENT, Outcome.UNKNOWN})
    def remembered(n: int) -> None:
        runs.append(n)
        raise TimeoutError("reply lost")

    with pytest.raises(TimeoutError):
        remembered(2)
    with pytest.raises(IdempotencyStoredError, match="TimeoutError: reply lost"):
        remembered(2)


def test_result_the_codec_cannot_encode_fails_first_call_and_leaves_no_record() -> None:
    store = MemoryStore()
    runs: list[int] = []

    @stoic.idempotent(store=store, key="{n}", namespace="")
    def opaque(n: int) -> object:
        runs.append(n)
        return object()

    with pytest.raises(CodecError, match="cannot encode"):
        opaque(1)
    assert store.get("1") is None, "nothing marked complete"
    with pytest.raises(CodecError):
        opaque(1)
    assert runs == [1, 1]


def test_registered_codec_type_round_trips_through_the_store() -> None:
    class Money:
        def __init__(self, cents: int) -> None:
            self.cents = cents

    codec = stoic.codec.Codec()
    codec.register(Money, "money", lambda m: m.cents, Money)

    @stoic.idempotent(store=MemoryStore(), key="{n}", codec=codec)
    def price(n: int) -> Money:
        return Money(n * 100)

    assert price(3).cents == 300
    replayed = price(3)
    assert isinstance(replayed, Money)
    assert replayed.cents == 300


def test_key_is_in_context_while_the_body_runs_so_retry_treats_unknown_as_safe() -> None:
    attempts: list[str | None] = []

    def body(key: str) -> str:
        attempts.append(stoic.context.idempotency_key())
        if len(attempts) == 1:
            raise TimeoutError("the reply was lost")
        return "charged"

    pipeline = stoic.Pipeline(
        stoic.idempotent(store=MemoryStore(), key="{key}"),
        stoic.Retry(attempts=3),
    )
    with virtual_time():
        assert pipeline.call(body, "pay-1") == "charged"
    assert attempts == ["pay-1", "pay-1"]
    assert stoic.context.idempotency_key() is None
    plain: list[int] = []

    def unkeyed() -> None:
        plain.append(1)
        raise TimeoutError("without a key UNKNOWN is not retried")

    with virtual_time(), pytest.raises(TimeoutError):
        stoic.Retry(attempts=3).call(unkeyed)
    assert plain == [1]


def test_extend_from_inside_keeps_the_lease_past_its_length(events: list[Event]) -> None:
    store = MemoryStore()
    with virtual_time() as vc:

        @stoic.idempotent(store=store, key="{key}", namespace="", lease=10.0,
                          fingerprint=lambda key, keep: "f")
        def long_call(key: str, keep: bool) -> str:
            for _ in range(3):
                vc.advance(8)
                if keep:
                    assert extend()
            return store.claim(key, digest("f"), lease=10, ttl=60).status.value

        assert long_call("a", True) == "in_flight", "extended: still ours after 24 s"
        assert long_call("b", False) == "claimed", "not extended: taken over after 10 s"
    lost = [e for e in events if isinstance(e, IdempotencyLeaseLost)]
    assert [e.key for e in lost] == ["b"]


def test_expired_lease_is_taken_over_with_an_event(events: list[Event]) -> None:
    store = MemoryStore()
    with virtual_time() as vc:
        store.claim("k", digest("f"), lease=5, ttl=60)
        vc.advance(6)

        @stoic.idempotent(store=store, key="{key}", namespace="", fingerprint=lambda key: "f")
        def work(key: str) -> str:
            return "recovered"

        assert work("k") == "recovered"
    assert any(isinstance(e, IdempotencyLeaseTakenOver) for e in events)


def test_keys_over_255_characters_are_refused_and_none_means_no_idempotency() -> None:
    runs: list[str | None] = []

    @stoic.idempotent(store=MemoryStore(), key=lambda k: k)
    def work(k: str | None) -> int:
        runs.append(k)
        return len(runs)

    with pytest.raises(ValueError, match="256 characters"):
        work("x" * 256)
    assert work(None) == 1
    assert work(None) == 2, "no key: runs every time"
    assert work("y" * 255) == 3
    assert work("y" * 255) == 3


def test_long_namespace_and_scope_still_fit_the_store() -> None:
    @stoic.idempotent(store=MemoryStore(), key="{k}", scope=lambda k: "tenant-" * 40,
                      namespace="n" * 200)
    def work(k: str) -> str:
        return k

    assert work("z" * 255) == "z" * 255
    assert work("z" * 255) == "z" * 255


def test_cancellation_releases_the_key() -> None:
    runs: list[int] = []

    @stoic.idempotent(store=MemoryStore(), key="{n}")
    async def work(n: int) -> int:
        runs.append(n)
        if len(runs) == 1:
            await asyncio.sleep(10)
        return n

    async def scenario() -> int:
        task = asyncio.create_task(work(1))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await work(1)

    assert asyncio.run(scenario()) == 1
    assert runs == [1, 1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ttl": 0}, "ttl"),
        ({"lease": -1}, "lease"),
        ({"wait": -1}, "wait"),
        ({"wait": float("inf")}, "wait"),
        ({"cache": ["success"]}, "cache"),
        ({"key": "no-placeholder"}, "key"),
        ({"namespace": "a\x1fb"}, "namespace"),
    ],
)
def test_bad_configuration_is_refused_naming_the_parameter(
    kwargs: dict[str, Any], message: str
) -> None:
    args: dict[str, Any] = {"store": MemoryStore(), "key": "{k}", **kwargs}
    with pytest.raises(ValueError, match=message):
        stoic.idempotent(**args)


def test_one_outcome_for_cache_is_refused_naming_it() -> None:
    with pytest.raises(TypeError, match="cache must be a collection"):
        stoic.idempotent(store=MemoryStore(), key="{k}", cache=Outcome.SUCCESS)  # type: ignore[arg-type]


def test_extend_with_a_lease_of_zero_is_refused_not_taken_as_the_default() -> None:
    @stoic.idempotent(store=MemoryStore(), key="{k}")
    def work(k: str) -> bool:
        return extend(0)

    with pytest.raises(ValueError, match="lease"):
        work("a")


def test_store_must_implement_the_contract() -> None:
    with pytest.raises(TypeError, match="Store"):
        stoic.idempotent(store=object(), key="{k}")  # type: ignore[arg-type]

    class NoDelete(MemoryStore):
        adelete = None  # type: ignore[assignment]

    with pytest.raises(TypeError, match=r"\(no adelete\)"):
        stoic.idempotent(store=NoDelete(), key="{k}")  # type: ignore[arg-type]


def test_namespaces_keep_two_functions_with_the_same_key_apart() -> None:
    store = MemoryStore()

    @stoic.idempotent(store=store, key="{k}")
    def one(k: str) -> str:
        return "one"

    @stoic.idempotent(store=store, key="{k}")
    def two(k: str) -> str:
        return "two"

    assert (one("k"), two("k"), one("k"), two("k")) == ("one", "two", "one", "two")


def test_pydantic_model_result_is_rebuilt_from_the_return_annotation() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Quote(pydantic.BaseModel):  # type: ignore[misc,name-defined]
        sku: str
        price: decimal.Decimal

    def quote(sku: str) -> Quote:
        return Quote(sku=sku, price=decimal.Decimal("2.50"))

    quote.__annotations__["return"] = Quote  # a local class: give get_type_hints the object
    cached = stoic.idempotent(store=MemoryStore(), key="{sku}")(quote)
    first, again = cached("a"), cached("a")
    assert isinstance(again, Quote)
    assert again == first


async def test_async_wait_returns_the_first_calls_result() -> None:
    store = MemoryStore()
    gate = asyncio.Event()
    runs: list[int] = []

    @stoic.idempotent(store=store, key="{n}", wait=5.0)
    async def work(n: int) -> int:
        runs.append(n)
        await gate.wait()
        return n * 10

    first = asyncio.create_task(work(3))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(work(3))
    await asyncio.sleep(0.05)
    gate.set()
    assert await asyncio.gather(first, second) == [30, 30]
    assert runs == [3]


async def test_async_transient_failure_releases_and_permanent_is_stored() -> None:
    runs: list[str] = []

    @stoic.idempotent(store=MemoryStore(), key="{kind}")
    async def work(kind: str) -> str:
        runs.append(kind)
        if kind == "transient" and runs.count(kind) == 1:
            raise ConnectionRefusedError("down")
        if kind == "permanent":
            raise LookupError("no such thing")
        return "ok"

    with pytest.raises(ConnectionRefusedError):
        await work("transient")
    assert await work("transient") == "ok"
    with pytest.raises(LookupError):
        await work("permanent")
    with pytest.raises(IdempotencyStoredError, match="LookupError: no such thing"):
        await work("permanent")
    assert runs == ["transient", "transient", "permanent"]


class _FlakyStore(MemoryStore):
    """A store whose writes after the claim fail, as a store that just went down would."""

    def complete(self, key: str, token: str, response: str | None, *, ttl: float) -> bool:
        raise ConnectionError("store went away")

    def release(self, key: str, token: str) -> bool:
        raise ConnectionError("store went away")


def test_store_failing_after_the_call_never_hides_the_calls_own_outcome(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = _FlakyStore()

    @stoic.idempotent(store=store, key="{n}")
    def work(n: int) -> int:
        if n < 0:
            raise ValueError("negative")
        return n

    assert work(5) == 5, "the charge happened: the caller must not be told otherwise"
    with pytest.raises(ValueError, match="negative"):
        work(-1)
    assert "stays in flight until its lease runs out" in caplog.text
