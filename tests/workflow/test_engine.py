"""The engine on the memory and SQLite stores, on virtual time: checkpoints, crash-exact
steps, durable retries, sagas, fencing, limits, time, signals, versions, start()."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

import stoic
from stoic.errors import CodecError
from stoic.testing import VirtualClock
from stoic.workflow import (
    Status,
    StepRecord,
    Store,
    WorkflowConflict,
    WorkflowDiverged,
    WorkflowFailed,
    WorkflowNeedsAttention,
    Workflows,
)
from stoic.workflow.store import Commit, RunUpdate
from workflow.wfhelpers import Crash, crash_and_expire


class Declined(Exception):
    """A PERMANENT failure (classify: an unknown exception type is not retried)."""


def test_completed_steps_replay_and_the_step_in_flight_reruns_with_the_same_key(
    flows: Workflows, clock: VirtualClock,
) -> None:
    calls: list[tuple[str, str | None]] = []
    crash = [True]

    def effect(name: str) -> str:
        calls.append((name, stoic.context.idempotency_key()))
        if name == "b" and crash[0]:
            crash[0] = False
            raise Crash
        return name.upper()

    @flows.workflow("w")
    def w(ctx: Any) -> list[str]:
        return [ctx.step("a", effect, "a"), ctx.step("b", effect, "b"), ctx.step("c", effect, "c")]

    handle = flows.start("w", id="r1")
    with pytest.raises(Crash):
        flows.drain()
    steps = {s.name: s.status for s in handle.steps()}
    assert steps == {"a": "completed", "b": "started"}  # a's result committed with b's intent
    crash_and_expire(flows, clock)
    flows.drain()
    assert handle.result() == ["A", "B", "C"]
    assert calls == [("a", "r1/a/0"), ("b", "r1/b/0"), ("b", "r1/b/0"), ("c", "r1/c/0")]
    assert handle.info().recoveries == 1


def test_repeated_step_names_get_distinct_stable_keys(flows: Workflows) -> None:
    keys: list[str | None] = []

    @flows.workflow("w")
    def w(ctx: Any) -> None:
        for _ in range(3):
            ctx.step("poll", lambda: keys.append(ctx.key))

    flows.start("w", id="r")
    flows.drain()
    assert keys == ["r/poll/0", "r/poll/1", "r/poll/2"]


def test_once_step_in_flight_at_a_crash_parks_the_run_until_resolved(
    flows: Workflows, clock: VirtualClock,
) -> None:
    runs: list[str] = []
    crash = [True]

    def charge() -> str:
        runs.append("charge")
        if crash[0]:
            crash[0] = False
            raise Crash
        return "ch-1"

    @flows.workflow("w")
    def w(ctx: Any) -> Any:
        charged = ctx.step("charge", charge, once=True)
        return [charged, ctx.step("ship", lambda: "shipped")]

    handle = flows.start("w", id="r")
    with pytest.raises(Crash):
        flows.drain()
    crash_and_expire(flows, clock)
    flows.drain()
    assert handle.status() is Status.NEEDS_ATTENTION
    with pytest.raises(WorkflowNeedsAttention, match=r"'charge'.*once=True"):
        handle.result()
    assert runs == ["charge"]  # never run again while in doubt
    flows.store.resolve("r", "charge", True, json.dumps("ch-by-hand"), stoic.clock.wall())
    flows.drain()
    assert handle.result() == ["ch-by-hand", "shipped"]
    assert runs == ["charge"]


def test_once_step_with_unknown_outcome_parks_instead_of_retrying(flows: Workflows) -> None:
    def charge() -> None:
        raise TimeoutError("read timed out")  # UNKNOWN: may have taken effect

    @flows.workflow("w")
    def w(ctx: Any) -> None:
        ctx.step("charge", charge, once=True)

    handle = flows.start("w")
    flows.drain()
    assert handle.status() is Status.NEEDS_ATTENTION


def test_transient_failure_outlasting_the_step_policy_is_retried_durably(
    flows: Workflows, clock: VirtualClock,
) -> None:
    attempts: list[float] = []

    def flaky() -> str:
        attempts.append(stoic.clock.wall())
        if len(attempts) < 4:
            raise ConnectionRefusedError("payments down")
        return "ok"

    @flows.workflow("w")
    def w(ctx: Any) -> str:
        return str(ctx.step("call", flaky, policy=stoic.Retry(max_attempts=2)))

    handle = flows.start("w")
    assert flows.drain(max_passes=1) == 1
    info = handle.info()
    assert info.status == "pending" and info.due_at > stoic.clock.wall()  # due later, no sleep
    assert len(attempts) == 2  # the inner Retry's two attempts
    flows.drain()
    assert handle.result() == "ok"
    assert [s.attempts for s in handle.steps()] == [2]  # two durable passes of the step


def test_durable_retries_stop_when_the_engine_retry_gives_up(
    store: Store, clock: VirtualClock,
) -> None:
    flows = Workflows(store, retry=stoic.Retry(max_attempts=3, backoff=stoic.backoff.constant(10.0)))

    @flows.workflow("w")
    def w(ctx: Any) -> None:
        ctx.step("call", _refused)

    handle = flows.start("w")
    flows.drain()
    with pytest.raises(WorkflowFailed, match="ConnectionRefusedError"):
        handle.result()
    assert clock.elapsed == pytest.approx(20.0)


def _refused() -> None:
    raise ConnectionRefusedError("down")


def _throttled_once(calls: list[float]) -> str:
    calls.append(stoic.clock.wall())
    if len(calls) == 1:
        raise stoic.RateLimitedError("slow down", retry_after=600.0)
    return "ok"


def _throttled_run(store: Store, max_time: float) -> tuple[Workflows, Any, list[float]]:
    """A run whose step is refused once with Retry-After 600 s, beyond the engine retry's
    backoff maximum of 10 s."""
    flows = Workflows(store, retry=stoic.Retry(
        max_attempts=5, backoff=stoic.backoff.exponential(1.0, 2.0, 10.0), max_time=max_time))
    calls: list[float] = []

    @flows.workflow("w")
    def w(ctx: Any) -> str:
        return str(ctx.step("call", _throttled_once, calls))

    return flows, flows.start("w"), calls


def test_a_retry_after_longer_than_the_backoff_maximum_is_waited_out_durably(
    store: Store, clock: VirtualClock,
) -> None:
    """A call's Retry gives up on a Retry-After beyond its backoff's maximum; the engine
    instead makes the run due when the Retry-After ends (no thread sleeps through it)."""
    flows, handle, calls = _throttled_run(store, max_time=3600.0)
    assert flows.drain(max_passes=1) == 1
    info = handle.info()
    assert info.status == "pending" and info.due_at >= calls[0] + 600.0  # due then, no sleep
    flows.drain()
    assert handle.result() == "ok"
    assert len(calls) == 2 and calls[1] - calls[0] >= 600.0


def test_a_retry_after_beyond_the_engine_retry_max_time_fails_the_step(
    store: Store, clock: VirtualClock,
) -> None:
    flows, handle, calls = _throttled_run(store, max_time=300.0)
    flows.drain()
    with pytest.raises(WorkflowFailed, match="RateLimitedError"):
        handle.result()
    assert len(calls) == 1


def test_permanent_failure_compensates_completed_steps_in_reverse_once_each(
    flows: Workflows,
) -> None:
    log: list[str] = []

    @flows.workflow("w")
    def w(ctx: Any, order: str) -> None:
        ctx.step("one", log.append, "do-1", compensate=lambda _: log.append("undo-1"))
        ctx.step("two", log.append, "do-2", compensate=lambda _: log.append("undo-2"))
        ctx.step("three", _decline)

    handle = flows.start("w", "o1")
    flows.drain()
    with pytest.raises(WorkflowFailed) as failed:
        handle.result()
    assert log == ["do-1", "do-2", "undo-2", "undo-1"]
    assert failed.value.error_type == "Declined" and failed.value.status == "failed"
    assert [(c.step, c.outcome) for c in failed.value.compensations] == [
        ("two", "completed"), ("one", "completed")]


def _decline() -> None:
    raise Declined("card declined")


def test_a_crash_during_compensation_resumes_without_repeating_done_ones(
    flows: Workflows, clock: VirtualClock,
) -> None:
    log: list[str] = []
    crash = [True]

    def undo_one(_: str) -> None:
        log.append("undo-1")
        if crash[0]:
            crash[0] = False
            raise Crash

    @flows.workflow("w")
    def w(ctx: Any) -> None:
        ctx.step("one", log.append, "do-1", compensate=undo_one)
        ctx.step("two", log.append, "do-2", compensate=lambda _: log.append("undo-2"))
        ctx.step("three", _decline)

    handle = flows.start("w")
    with pytest.raises(Crash):
        flows.drain()
    crash_and_expire(flows, clock)
    flows.drain()
    with pytest.raises(WorkflowFailed):
        handle.result()
    assert log == ["do-1", "do-2", "undo-2", "undo-1", "undo-1"]  # undo-1 was in flight


def test_a_failed_step_replays_as_its_own_exception_class(flows: Workflows,
                                                          clock: VirtualClock) -> None:
    seen: list[str] = []
    crash = [True]

    def undo(_: Any = None) -> None:
        if crash[0]:
            crash[0] = False
            raise Crash

    @flows.workflow("w")
    def w(ctx: Any) -> None:
        ctx.step("one", lambda: None, compensate=undo)
        try:
            ctx.step("two", _decline)
        except Declined as exc:
            seen.append(type(exc).__name__)
            raise

    flows.start("w")
    with pytest.raises(Crash):
        flows.drain()
    crash_and_expire(flows, clock)
    flows.drain()
    assert seen == ["Declined", "Declined"]


def test_stale_fencing_token_cannot_commit(store: Store, clock: VirtualClock) -> None:
    flows = Workflows(store, lease=5.0)

    @flows.workflow("w")
    def w(ctx: Any) -> None:
        ctx.step("a", lambda: 1)

    flows.start("w", id="r")
    (first,) = flows.claim(1)
    clock.advance(6.0)
    (second,) = Workflows(store, lease=5.0).store.claim("other", ("w@1",), stoic.clock.wall(),
                                                        5.0, 1, {})
    assert second.fence.token == first.fence.token + 1 and second.recovered
    step = StepRecord(0, "a", "step", "r/a/0", "completed", 1, 0.0, result="1")
    with pytest.raises(stoic.workflow.StaleLease):
        store.commit(first.fence, Commit(steps=[step], run=RunUpdate("completed", result="1")),
                     stoic.clock.wall(), 5.0)
    assert store.steps("r") == [] and store.get("r").status == "running"  # type: ignore[union-attr]
    assert store.renew([first.fence], stoic.clock.wall(), 5.0) == ["r"]


def test_concurrency_limit_per_name_and_per_key(store: Store, clock: VirtualClock) -> None:
    flows = Workflows(store)

    @flows.workflow("w", concurrency=3, concurrency_per_key=1)
    def w(ctx: Any) -> None:
        ctx.sleep(10)

    for i in range(3):
        flows.start("w", id=f"alice-{i}", key="alice")
    for i in range(3):
        flows.start("w", id=f"bob-{i}", key="bob")
    flows.start("w", id="carol-0", key="carol")
    flows.start("w", id="dave-0", key="dave")
    claimed = sorted(c.run.id for c in flows.claim(10))
    assert claimed == ["alice-0", "bob-0", "carol-0"]  # one per key, three in all


def test_a_started_run_keeps_its_slot_while_it_sleeps(store: Store, clock: VirtualClock) -> None:
    flows = Workflows(store)
    order: list[str] = []

    @flows.workflow("w", concurrency_per_key=1)
    def w(ctx: Any, name: str) -> None:
        ctx.step("begin", order.append, f"{name}-begin")
        ctx.sleep(10)
        ctx.step("end", order.append, f"{name}-end")

    flows.start("w", "first", key="k")
    clock.advance(0.5)
    flows.start("w", "second", key="k")
    flows.drain()
    assert order == ["first-begin", "first-end", "second-begin", "second-end"]


def test_higher_priority_runs_first(store: Store, clock: VirtualClock) -> None:
    flows = Workflows(store)
    order: list[str] = []

    @flows.workflow("w")
    def w(ctx: Any, name: str) -> None:
        ctx.step("note", order.append, name)

    flows.start("w", "low", priority=0)
    flows.start("w", "high", priority=5)
    flows.start("w", "mid", priority=1)
    flows.drain()
    assert order == ["high", "mid", "low"]


def test_durable_sleep_is_instant_in_virtual_time_and_wakes_on_time(
    flows: Workflows, clock: VirtualClock,
) -> None:
    woke: list[float] = []

    @flows.workflow("w")
    def w(ctx: Any) -> None:
        ctx.sleep(3600)
        ctx.step("after", lambda: woke.append(stoic.clock.wall()))

    started = stoic.clock.wall()
    handle = flows.start("w")
    flows.drain(max_passes=1)
    assert handle.status() is Status.SLEEPING and woke == []
    flows.drain()
    assert woke[0] - started == pytest.approx(3600.0)
    assert handle.status() is Status.COMPLETED


def test_signal_sent_before_the_wait_is_kept(flows: Workflows) -> None:
    @flows.workflow("w")
    def w(ctx: Any) -> Any:
        ctx.sleep(5)
        return ctx.wait_for("shipped", timeout=60)

    handle = flows.start("w")
    flows.signal(handle.id, "shipped", {"carrier": "dhl"})
    flows.drain()
    assert handle.result() == {"carrier": "dhl"}


def test_signal_wakes_a_waiting_run(flows: Workflows) -> None:
    @flows.workflow("w")
    def w(ctx: Any) -> Any:
        return [ctx.wait_for("go"), ctx.wait_for("go")]

    handle = flows.start("w")
    flows.drain()
    assert handle.status() is Status.WAITING
    flows.signal(handle.id, "go", 1)
    flows.signal(handle.id, "go", 2)
    flows.drain()
    assert handle.result() == [1, 2]


def test_wait_for_times_out_durably(flows: Workflows, clock: VirtualClock) -> None:
    @flows.workflow("w")
    def w(ctx: Any) -> str:
        try:
            ctx.wait_for("never", timeout=30)
        except TimeoutError:
            return "timed out"
        return "signalled"

    handle = flows.start("w")
    flows.drain()
    assert handle.result() == "timed out" and clock.elapsed == pytest.approx(30.0)


def test_deadline_fails_the_run_and_compensates(flows: Workflows, clock: VirtualClock) -> None:
    log: list[str] = []

    @flows.workflow("w")
    def w(ctx: Any) -> None:
        ctx.step("hold", log.append, "hold", compensate=lambda _: log.append("release"))
        ctx.sleep(3600)
        ctx.step("late", log.append, "late")

    handle = flows.start("w", deadline=60)
    flows.drain()
    with pytest.raises(WorkflowFailed, match="DeadlineExceeded"):
        handle.result()
    assert log == ["hold", "release"] and clock.elapsed == pytest.approx(60.0)


def test_cancel_stops_a_started_run_and_compensates(flows: Workflows) -> None:
    log: list[str] = []

    @flows.workflow("w")
    def w(ctx: Any) -> None:
        ctx.step("hold", log.append, "hold", compensate=lambda _: log.append("release"))
        ctx.wait_for("paid")
        ctx.step("ship", log.append, "ship")

    handle = flows.start("w")
    flows.drain()
    assert flows.cancel(handle.id) is Status.PENDING
    flows.drain()
    with pytest.raises(WorkflowFailed) as failed:
        handle.result()
    assert failed.value.status == "cancelled" and log == ["hold", "release"]


def test_cancel_before_start_never_runs(flows: Workflows) -> None:
    @flows.workflow("w")
    def w(ctx: Any) -> None:
        raise AssertionError("must not run")

    handle = flows.start("w")
    assert handle.cancel() is Status.CANCELLED
    assert flows.drain() == 0


def test_reordered_steps_diverge_naming_both_steps_and_versions(
    store: Store, clock: VirtualClock,
) -> None:
    old = Workflows(store)

    @old.workflow("w", version=3)
    def w_old(ctx: Any) -> None:
        ctx.step("reserve", lambda: 1)
        ctx.sleep(10)
        ctx.step("charge", lambda: 2)

    handle = old.start("w")
    old.drain(max_passes=1)
    new = Workflows(store)

    @new.workflow("w", version=3)
    def w_new(ctx: Any) -> None:
        ctx.step("charge", lambda: 2)   # reordered
        ctx.sleep(10)
        ctx.step("reserve", lambda: 1)

    new.drain()
    assert handle.status() is Status.NEEDS_ATTENTION
    with pytest.raises(WorkflowDiverged, match=r"'reserve'.*version 3.*'charge'"):
        handle.result()


def test_old_versions_drain_on_old_code(store: Store, clock: VirtualClock) -> None:
    flows = Workflows(store)

    @flows.workflow("w", version=1)
    def w1(ctx: Any) -> str:
        ctx.sleep(10)
        return "v1"

    old = flows.start("w")

    @flows.workflow("w", version=2)
    def w2(ctx: Any) -> str:
        return "v2"

    new = flows.start("w")
    flows.drain()
    assert (old.result(), new.result()) == ("v1", "v2")


def test_unknown_workflow_is_parked_while_the_worker_serves_others(
    store: Store, clock: VirtualClock,
) -> None:
    producer = Workflows(store)
    producer.start("ghost", id="g", version=1)
    flows = Workflows(store)

    @flows.workflow("w")
    def w(ctx: Any) -> str:
        return "served"

    handle = flows.start("w")
    flows.drain()
    assert handle.result() == "served"
    ghost = flows.handle("g")
    assert ghost.status() is Status.UNKNOWN_WORKFLOW
    assert "no workflow of this name and version" in (ghost.info().error or "")
    later = Workflows(store)  # a worker with the code picks it up
    later.workflow("ghost")(lambda ctx: "found")
    later.drain()
    assert ghost.result() == "found"


def test_start_is_idempotent_on_id(flows: Workflows) -> None:
    @flows.workflow("w")
    def w(ctx: Any, n: int) -> int:
        return n * 2

    first = flows.start("w", 21, id="same")
    again = flows.start("w", 21, id="same")
    assert again.id == first.id
    with pytest.raises(WorkflowConflict, match="'same'"):
        flows.start("w", 22, id="same")
    flows.drain()
    assert first.result() == 42
    assert len(flows.store.runs()) == 1


def test_unencodable_argument_fails_start_and_writes_nothing(flows: Workflows) -> None:
    flows.workflow("w")(lambda ctx, x: x)
    with pytest.raises(CodecError, match="object"):
        flows.start("w", object(), id="bad")
    assert flows.store.get("bad") is None and flows.store.runs() == []


def test_async_workflows_run_like_sync_ones(flows: Workflows) -> None:
    async def fetch(n: int) -> int:
        return n + 1

    @flows.workflow("w")
    async def w(ctx: Any, n: int) -> list[int]:
        a = await ctx.step("a", fetch, n)
        await ctx.sleep(5)
        b = await ctx.step("b", lambda: a * 10)
        return [a, b, await ctx.wait_for("x", timeout=1) if False else 0]

    handle = flows.start("w", 1)
    flows.drain()
    assert handle.result() == [2, 20, 0]


def test_step_key_makes_an_inner_retry_treat_unknown_as_safe(flows: Workflows) -> None:
    calls: list[str | None] = []

    def timeout_once() -> str:
        calls.append(stoic.context.idempotency_key())
        if len(calls) == 1:
            raise TimeoutError("read timed out")  # UNKNOWN: retried only with a key
        return "ok"

    @flows.workflow("w")
    def w(ctx: Any) -> str:
        return str(ctx.step("call", timeout_once, policy=stoic.Retry(max_attempts=2)))

    handle = flows.start("w", id="r")
    flows.drain()
    assert handle.result() == "ok" and calls == ["r/call/0", "r/call/0"]


def test_step_results_round_trip_through_the_codec_on_replay(
    flows: Workflows, clock: VirtualClock,
) -> None:
    seen: list[Any] = []

    @flows.workflow("w")
    def w(ctx: Any) -> None:
        value = ctx.step("a", lambda: (1, {"b": b"x"}))
        seen.append(value)
        ctx.sleep(1)

    flows.start("w")
    flows.drain()
    assert seen == [(1, {"b": b"x"}), (1, {"b": b"x"})]


def test_failed_run_can_be_retried_when_nothing_was_compensated(flows: Workflows) -> None:
    fail = [True]

    def step() -> str:
        if fail[0]:
            raise Declined("no")
        return "ok"

    @flows.workflow("w")
    def w(ctx: Any) -> str:
        return str(ctx.step("s", step))

    handle = flows.start("w")
    flows.drain()
    assert handle.status() is Status.FAILED
    fail[0] = False
    flows.store.retry(handle.id, stoic.clock.wall())
    flows.drain()
    assert handle.result() == "ok"


def test_records_are_frozen() -> None:
    record = StepRecord(0, "a", "step", "k", "started", 1, 0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.status = "completed"  # type: ignore[misc]


def test_worker_threads_run_many_workflows_and_emit_events(store: Store) -> None:
    flows = Workflows(store, lease=5.0, poll_interval=0.05)
    seen: list[Any] = []
    unsubscribe = stoic.events.subscribe(seen.append)

    @flows.workflow("w")
    def w(ctx: Any, n: int) -> int:
        return int(ctx.step("double", lambda: n * 2)) + int(ctx.step("one", lambda: 1))

    worker = flows.start_worker(concurrency=4)
    try:
        handles = [flows.start("w", n) for n in range(20)]
        assert [h.result(timeout=60) for h in handles] == [n * 2 + 1 for n in range(20)]
    finally:
        worker.stop()
        unsubscribe()
    kinds = {type(e).__name__ for e in seen}
    assert {"WorkflowStarted", "StepCompleted", "WorkflowFinished"} <= kinds


def test_run_works_the_run_off_in_the_calling_thread(flows: Workflows,
                                                      clock: VirtualClock) -> None:
    @flows.workflow("w")
    def w(ctx: Any, n: int) -> int:
        ctx.sleep(30)
        return int(ctx.step("double", lambda: n * 2))

    assert flows.run("w", 21, id="inline") == 42
    assert clock.elapsed == pytest.approx(30.0)
    assert flows.run("w", 21, id="inline") == 42  # the same id joins the finished run
    flows.workflow("bad")(lambda ctx: ctx.step("s", _decline))
    with pytest.raises(WorkflowFailed):
        flows.run("bad")
