"""AdaptiveLimit: the limit follows latency within [min, max]; rejected calls never run."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import stoic
from stoic.events import CallRejected, Event
from stoic.policies.limit import (
    AdaptiveLimit,
    Aimd,
    Gradient2,
    LimitChanged,
    LimitExceededError,
    Vegas,
)
from stoic.testing import VirtualClock, virtual_time

ALGORITHMS: dict[str, Any] = {
    "vegas": lambda base=0.05: Vegas(),
    "gradient2": lambda base=0.05: Gradient2(),
    # AIMD sees latency only past its threshold: twice the healthy latency here
    "aimd": lambda base=0.05: Aimd(latency=2 * base),
}


def window(limit: AdaptiveLimit, clock: VirtualClock, rtt: float, busy: int | None = None) -> None:
    """One sampling window: ``busy`` calls (the whole limit by default) each taking ``rtt``."""
    count = limit.limit if busy is None else busy
    starts = [limit.try_acquire() for _ in range(count)]
    clock.advance(max(rtt, limit.window))
    for start in starts:
        assert start is not None
        # the window's latency is ``rtt`` whatever the window length
        limit.release(start + max(rtt, limit.window) - rtt)


def run(limit: AdaptiveLimit, clock: VirtualClock, rtts: list[float]) -> list[int]:
    seen = []
    for rtt in rtts:
        window(limit, clock, rtt)
        seen.append(limit.limit)
    return seen


bounds = st.tuples(st.integers(1, 50), st.integers(0, 200)).map(lambda t: (t[0], t[0] + t[1]))


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
class TestProperties:
    @settings(max_examples=60, deadline=None)
    @given(
        bounds=bounds,
        rtts=st.lists(st.floats(0.001, 5.0), min_size=1, max_size=60),
        start=st.floats(0, 1),
    )
    def test_the_limit_stays_within_min_and_max_whatever_the_latencies(
        self, algorithm: str, bounds: tuple[int, int], rtts: list[float], start: float
    ) -> None:
        low, high = bounds
        initial = low + round(start * (high - low))
        with virtual_time() as clock:
            limit = AdaptiveLimit(
                ALGORITHMS[algorithm](), initial_limit=initial, min_limit=low, max_limit=high,
                window_samples=1,
            )
            for value in run(limit, clock, rtts):
                assert low <= value <= high

    @settings(max_examples=40, deadline=None)
    @given(
        base=st.floats(0.005, 0.1),
        rise=st.floats(4.0, 20.0),
        initial=st.integers(40, 200),
    )
    def test_the_limit_decreases_under_rising_latency_and_recovers_when_it_falls(
        self, algorithm: str, base: float, rise: float, initial: int
    ) -> None:
        with virtual_time() as clock:
            limit = AdaptiveLimit(
                ALGORITHMS[algorithm](base), initial_limit=initial, min_limit=1, max_limit=400,
                window_samples=1,
            )
            run(limit, clock, [base] * 5)
            before = limit.limit
            slow = run(limit, clock, [base * rise] * 30)
            assert slow[-1] < before
            recovered = run(limit, clock, [base] * 60)
            assert recovered[-1] > slow[-1]

    def test_a_rejected_call_never_runs(self, algorithm: str) -> None:
        limit = AdaptiveLimit(ALGORITHMS[algorithm](), initial_limit=2, min_limit=2, max_limit=2)
        held = [limit.try_acquire(), limit.try_acquire()]
        ran = []
        with pytest.raises(LimitExceededError) as info:
            limit.call(ran.append, 1)
        assert ran == []
        assert isinstance(info.value, stoic.Rejected)
        for start in held:
            assert start is not None
            limit.release(start)
        limit.call(ran.append, 1)
        assert ran == [1]


@settings(max_examples=50, deadline=None)
@given(
    algorithm=st.sampled_from(sorted(ALGORITHMS)),
    plan=st.lists(st.tuples(st.booleans(), st.floats(0.001, 1.0)), min_size=1, max_size=80),
)
def test_calls_run_only_when_admitted_and_inflight_never_exceeds_the_limit(
    algorithm: str, plan: list[tuple[bool, float]]
) -> None:
    """A model run: acquire (True) or finish the oldest call (False); rejected never run."""
    with virtual_time() as clock:
        limit = AdaptiveLimit(ALGORITHMS[algorithm](), initial_limit=3, max_limit=6,
                              window_samples=1, window=0.01)
        running: list[float] = []
        for start_call, step in plan:
            clock.advance(step)
            if start_call:
                ran = []
                try:
                    limit.call(ran.append, 1)  # a quick call: runs only if admitted
                except LimitExceededError:
                    assert ran == []
                    assert len(running) >= limit.limit
                else:
                    assert ran == [1]
                slot = limit.try_acquire()
                if slot is not None:
                    running.append(slot)
            elif running:
                limit.release(running.pop(0))
            assert limit.inflight == len(running) <= max(limit.limit, len(running))


def test_from_many_threads_concurrency_never_exceeds_the_limit_and_every_slot_comes_back() -> None:
    """The happy path takes no lock: admission is a token popped from a list, atomic."""
    limit = AdaptiveLimit(initial_limit=4, min_limit=4, max_limit=4)
    guard = threading.Lock()
    running, peak = [0], [0]

    def work() -> None:
        with guard:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        with guard:
            running[0] -= 1

    def caller() -> None:
        for _ in range(300):
            try:
                limit.call(work)
            except LimitExceededError:
                pass

    threads = [threading.Thread(target=caller) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 1 <= peak[0] <= 4
    assert limit.inflight == 0
    held = [limit.try_acquire() for _ in range(5)]
    assert [start is not None for start in held] == [True] * 4 + [False]


def test_when_the_limit_falls_below_the_calls_in_flight_their_slots_are_retired() -> None:
    with virtual_time() as clock:
        limit = AdaptiveLimit(Aimd(backoff=0.5), initial_limit=10, window_samples=1)
        held = [limit.try_acquire() for _ in range(10)]
        clock.advance(limit.window)
        first = held.pop()
        assert first is not None
        limit.release(first, dropped=True)
        assert limit.limit == 5
        assert limit.inflight == 9
        assert limit.try_acquire() is None
        for start in held:
            assert start is not None
            limit.release(start)
        assert limit.inflight == 0
        again = [limit.try_acquire() for _ in range(6)]
        assert [start is not None for start in again] == [True] * 5 + [False]


class TestAdmission:
    def test_over_the_limit_a_call_waits_up_to_max_wait_for_a_slot(self) -> None:
        limit = AdaptiveLimit(initial_limit=1, max_limit=1, max_wait=5.0)
        held = limit.try_acquire()
        assert held is not None
        result: list[Any] = []
        thread = threading.Thread(target=lambda: result.append(limit.call(lambda: "ran")))
        thread.start()
        while limit.waiting == 0:
            pass
        limit.release(held)
        thread.join(5)
        assert result == ["ran"]

    def test_a_wait_never_outlasts_the_deadline(self) -> None:
        limit = AdaptiveLimit(initial_limit=1, max_limit=1, max_wait=30.0)
        held = limit.try_acquire()
        with stoic.deadline(0.05), pytest.raises(stoic.DeadlineExceeded):
            limit.call(lambda: None)
        assert held is not None
        limit.release(held)
        assert limit.waiting == 0 and limit.inflight == 0

    def test_an_async_waiter_gets_the_freed_slot_without_blocking_the_loop(self) -> None:
        async def main() -> None:
            limit = AdaptiveLimit(initial_limit=1, max_limit=1, max_wait=5.0)

            async def hold() -> str:
                await asyncio.sleep(0.02)
                return "first"

            async def second() -> str:
                return "second"

            results = await asyncio.gather(limit.acall(hold), limit.acall(second))
            assert results == ["first", "second"]

        asyncio.run(main())

    def test_a_full_queue_refuses_the_lowest_priority_waiter_first(self) -> None:
        async def main() -> None:
            limit = AdaptiveLimit(initial_limit=1, max_limit=1, max_waiting=1)
            held = limit.try_acquire()
            low = asyncio.create_task(limit.aacquire(priority=2, timeout=5.0))
            await asyncio.sleep(0.01)
            high = asyncio.create_task(limit.aacquire(priority=0, timeout=5.0))
            with pytest.raises(LimitExceededError):
                await low
            assert held is not None
            limit.release(held)
            limit.release(await high)
            assert limit.inflight == 0

        asyncio.run(main())

    def test_rejection_carries_retry_after_from_the_measured_latency(self) -> None:
        with virtual_time() as clock:
            limit = AdaptiveLimit(initial_limit=1, min_limit=1, max_limit=1, window_samples=1)
            window(limit, clock, 0.2)
            held = limit.try_acquire()
            with pytest.raises(LimitExceededError) as info:
                limit.call(lambda: None)
            assert info.value.retry_after == pytest.approx(0.2)
            assert held is not None

    def test_throttled_failures_count_as_drops_and_shrink_the_limit(self) -> None:
        with virtual_time() as clock:
            limit = AdaptiveLimit("aimd", initial_limit=10, window_samples=1)

            def refused() -> None:
                clock.advance(0.2)
                raise stoic.RateLimitedError("busy")

            with pytest.raises(stoic.RateLimitedError):
                limit.call(refused)
            assert limit.limit == 9


def test_limit_changes_are_events() -> None:
    events: list[Event] = []
    stoic.events.subscribe(events.append)
    with virtual_time() as clock:
        limit = AdaptiveLimit("aimd", initial_limit=10, window_samples=1, name="orders")
        run(limit, clock, [2.0])
    changed = [e for e in events if isinstance(e, LimitChanged)]
    assert [(e.name, e.previous, e.limit) for e in changed] == [("orders", 10, 9)]
    while limit.try_acquire() is not None:
        pass
    with pytest.raises(LimitExceededError):
        limit.call(lambda: None)
    assert any(isinstance(e, CallRejected) and e.policy == "adaptive_limit" for e in events)


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"min_limit": 10, "max_limit": 5, "initial_limit": 5}, "min_limit"),
        ({"window": -1.0}, "window"),
        ({"window": 0}, "window"),
        ({"algorithm": "reno"}, "algorithm"),
        ({"initial_limit": 0}, "initial_limit"),
        ({"max_wait": -0.5}, "max_wait"),
        ({"window_samples": 0}, "window_samples"),
    ],
)
def test_bad_configuration_raises_value_error_naming_the_parameter(
    kwargs: dict[str, Any], parameter: str
) -> None:
    with pytest.raises(ValueError, match=parameter):
        AdaptiveLimit(**kwargs)


@pytest.mark.parametrize(
    ("build", "parameter"),
    [
        (lambda: Vegas(alpha=2, beta=1), "beta"),
        (lambda: Vegas(alpha=-1), "alpha"),
        (lambda: Gradient2(smoothing=2.0), "smoothing"),
        (lambda: Gradient2(tolerance=0.5), "tolerance"),
        (lambda: Gradient2(long_window=0), "long_window"),
        (lambda: Aimd(backoff=1.5), "backoff"),
        (lambda: Aimd(latency=-1.0), "latency"),
    ],
)
def test_bad_algorithm_configuration_names_the_parameter(build: Any, parameter: str) -> None:
    with pytest.raises(ValueError, match=parameter):
        build()


def test_adaptive_limit_composes_in_a_pipeline_and_decorates_async_functions() -> None:
    limit = stoic.AdaptiveLimit("gradient2")
    pipeline = stoic.Pipeline(stoic.Retry(max_attempts=2), limit)

    @pipeline
    async def work() -> int:
        return 7

    assert asyncio.run(work()) == 7
    assert limit.inflight == 0


def test_limit_changes_show_in_the_prometheus_gauge() -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from stoic.observability import prometheus

    registry = prometheus_client.CollectorRegistry()
    prometheus.instrument(registry)
    try:
        with virtual_time() as clock:
            limit = AdaptiveLimit("aimd", initial_limit=10, window_samples=1, name="orders")
            run(limit, clock, [2.0])
        text = prometheus_client.generate_latest(registry).decode()
        assert 'stoic_concurrency_limit{name="orders"} 9.0' in text
    finally:
        prometheus.uninstrument()


def test_load_events_are_in_the_event_catalogue() -> None:
    from stoic.integrations.shedding import RequestShed

    assert stoic.events.LimitChanged is LimitChanged
    assert stoic.events.RequestShed is RequestShed
