"""CircuitBreaker behaviour: what it counts, how it rejects, concurrency, events, registry."""

from __future__ import annotations

import asyncio
import gc
import pickle
import threading
import traceback
import tracemalloc
from typing import Any

import pytest

import stoic
from stoic.events import CallFinished, CallRejected, Event
from stoic.policies.breaker import (
    BreakerClosed,
    BreakerDisabled,
    BreakerForcedOpen,
    BreakerHalfOpened,
    BreakerOpened,
    BreakerState,
)
from stoic.testing import virtual_time


def ok() -> str:
    return "ok"


def reset() -> None:
    raise ConnectionResetError("reset by peer")  # UNKNOWN: a dependency failure


def not_found() -> None:
    raise ValueError("no such order")  # unclassified: PERMANENT


def fail_n(breaker: stoic.CircuitBreaker, n: int, fn: Any = reset) -> None:
    for _ in range(n):
        with pytest.raises(Exception):
            breaker.call(fn)


def record_events() -> list[Event]:
    seen: list[Event] = []
    stoic.events.subscribe(seen.append)
    return seen


class TestCounting:
    def test_opens_when_failure_rate_reaches_threshold_after_minimum_calls(self) -> None:
        breaker = stoic.CircuitBreaker("a", failure_rate=0.5, minimum_calls=4)
        fail_n(breaker, 3)
        assert breaker.state is BreakerState.CLOSED  # 3 calls: below minimum_calls
        breaker.call(ok)  # 4 calls, 3 failures: 75% >= 50%
        assert breaker.state is BreakerState.OPEN

    def test_stays_closed_below_threshold(self) -> None:
        breaker = stoic.CircuitBreaker("a", failure_rate=0.5, minimum_calls=4)
        for _ in range(10):
            breaker.call(ok)
            breaker.call(ok)
            fail_n(breaker, 1)
        assert breaker.state is BreakerState.CLOSED
        assert breaker.metrics.failure_rate == pytest.approx(34 / 100, abs=0.05)

    def test_permanent_failures_do_not_count(self) -> None:
        breaker = stoic.CircuitBreaker("a", minimum_calls=2)
        fail_n(breaker, 20, not_found)
        assert breaker.state is BreakerState.CLOSED
        assert breaker.metrics.failures == 0
        assert breaker.metrics.calls == 20

    @pytest.mark.parametrize("status", [429, 503, 500])
    def test_throttled_transient_and_unknown_count_as_failures(self, status: int) -> None:
        class HttpError(Exception):
            pass

        stoic.register_classifier(HttpError, lambda exc: stoic.classify_status(status))
        breaker = stoic.CircuitBreaker("a", minimum_calls=2)

        def fail() -> None:
            raise HttpError(status)

        fail_n(breaker, 2, fail)
        assert breaker.state is BreakerState.OPEN

    def test_rejected_calls_are_not_recorded(self) -> None:
        with virtual_time():
            breaker = stoic.CircuitBreaker("a", minimum_calls=2, window=stoic.CountWindow(4))
            fail_n(breaker, 2)
            before = breaker.metrics
            for _ in range(50):
                with pytest.raises(stoic.CircuitOpenError):
                    breaker.call(ok)
            assert breaker.metrics == before

    def test_rejections_by_inner_policies_are_not_recorded(self) -> None:
        breaker = stoic.CircuitBreaker("a", minimum_calls=2)
        bulkhead = stoic.Bulkhead(1)
        guarded = stoic.Pipeline(breaker, bulkhead)

        def nested() -> None:
            guarded.call(ok)  # the bulkhead's only slot is taken by the outer call

        for _ in range(5):
            with pytest.raises(stoic.BulkheadFullError):
                bulkhead.call(nested)
        assert breaker.state is BreakerState.CLOSED
        assert breaker.metrics.calls == 0

    def test_count_window_forgets_calls_older_than_its_size(self) -> None:
        breaker = stoic.CircuitBreaker(
            "a", minimum_calls=10, failure_rate=0.5, window=stoic.CountWindow(10)
        )
        fail_n(breaker, 4)
        for _ in range(10):
            breaker.call(ok)
        assert breaker.metrics.failures == 0
        fail_n(breaker, 4)
        assert breaker.state is BreakerState.CLOSED  # 4/10, the first four are gone

    def test_time_window_forgets_failures_older_than_its_seconds(self) -> None:
        with virtual_time() as clock:
            breaker = stoic.CircuitBreaker(
                "a", minimum_calls=4, window=stoic.TimeWindow(seconds=10)
            )
            fail_n(breaker, 3)
            clock.advance(11)
            assert breaker.metrics.calls == 0
            breaker.call(ok)
            fail_n(breaker, 1)
            breaker.call(ok)
            breaker.call(ok)
            assert breaker.state is BreakerState.CLOSED

    def test_slow_calls_open_the_breaker(self) -> None:
        with virtual_time() as clock:
            breaker = stoic.CircuitBreaker(
                "a", minimum_calls=3, slow_call_rate=0.5, slow_call_duration=1.0
            )

            def slow() -> str:
                clock.advance(2.0)
                return "late"

            breaker.call(ok)
            breaker.call(slow)
            assert breaker.state is BreakerState.CLOSED
            breaker.call(slow)
            assert breaker.state is BreakerState.OPEN


class TestOpenAndHalfOpen:
    def test_open_rejects_at_once_with_retry_after_time_left(self) -> None:
        with virtual_time() as clock:
            breaker = stoic.CircuitBreaker("a", minimum_calls=2, open_for=30.0)
            fail_n(breaker, 2)
            clock.advance(12.0)
            calls = []
            with pytest.raises(stoic.CircuitOpenError) as info:
                breaker.call(lambda: calls.append(1))
            assert calls == []
            assert isinstance(info.value, stoic.Rejected)
            assert info.value.retry_after == pytest.approx(18.0)
            assert info.value.name == "a"
            assert "'a'" in str(info.value)

    def test_after_open_for_trials_close_the_breaker(self) -> None:
        with virtual_time() as clock:
            breaker = stoic.CircuitBreaker("a", minimum_calls=2, open_for=5, half_open_calls=3)
            fail_n(breaker, 2)
            clock.advance(5)
            assert breaker.state is BreakerState.HALF_OPEN
            for _ in range(3):
                assert breaker.call(ok) == "ok"
            assert breaker.state is BreakerState.CLOSED
            assert breaker.metrics.calls == 0  # a fresh window after closing

    def test_failed_trials_reopen_with_growing_capped_open_for(self) -> None:
        with virtual_time() as clock:
            breaker = stoic.CircuitBreaker(
                "a", minimum_calls=1, open_for=10, half_open_calls=1,
                open_for_growth=2.0, max_open_for=25.0,
            )
            fail_n(breaker, 1)
            waits = []
            for _ in range(3):
                waits.append(breaker.retry_after)
                clock.advance(breaker.retry_after or 0)
                fail_n(breaker, 1)  # the single trial fails
            waits.append(breaker.retry_after)
            assert waits == pytest.approx([10, 20, 25, 25])
            clock.advance(25)
            breaker.call(ok)
            fail_n(breaker, 1)
            assert breaker.retry_after == pytest.approx(10)  # closing reset the growth

    def test_half_open_admits_at_most_half_open_calls_at_once(self) -> None:
        async def scenario() -> None:
            async with virtual_time() as clock:
                breaker = stoic.CircuitBreaker("a", minimum_calls=1, open_for=1, half_open_calls=2)
                with pytest.raises(ConnectionResetError):
                    await breaker.acall(_areset)
                clock.advance(1)
                gate = asyncio.Event()
                started = 0

                async def trial() -> str:
                    nonlocal started
                    started += 1
                    await gate.wait()
                    return "ok"

                tasks = [asyncio.create_task(breaker.acall(trial)) for _ in range(10)]
                await asyncio.sleep(0)
                await asyncio.sleep(0)
                assert started == 2
                gate.set()
                results = await asyncio.gather(*tasks, return_exceptions=True)
                assert results.count("ok") == 2
                assert sum(isinstance(r, stoic.CircuitOpenError) for r in results) == 8
                assert breaker.state is BreakerState.CLOSED

        asyncio.run(scenario())

    def test_cancelled_trial_gives_its_slot_back(self) -> None:
        async def scenario() -> None:
            async with virtual_time() as clock:
                breaker = stoic.CircuitBreaker("a", minimum_calls=1, open_for=1, half_open_calls=1)
                with pytest.raises(ConnectionResetError):
                    await breaker.acall(_areset)
                clock.advance(1)
                task = asyncio.create_task(breaker.acall(asyncio.sleep, 100))
                await asyncio.sleep(0)
                with pytest.raises(stoic.CircuitOpenError):
                    await breaker.acall(_aok)  # the one slot is taken
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert await breaker.acall(_aok) == "ok"
                assert breaker.state is BreakerState.CLOSED

        asyncio.run(scenario())


async def _areset() -> None:
    raise ConnectionResetError("reset by peer")


async def _aok() -> str:
    return "ok"


class TestManual:
    def test_force_open_rejects_until_reset(self) -> None:
        breaker = stoic.CircuitBreaker("a")
        breaker.force_open()
        with pytest.raises(stoic.CircuitOpenError) as info:
            breaker.call(ok)
        assert info.value.retry_after is None
        assert breaker.state is BreakerState.FORCED_OPEN
        breaker.reset()
        assert breaker.call(ok) == "ok"

    def test_disable_lets_everything_through_and_records_nothing(self) -> None:
        breaker = stoic.CircuitBreaker("a", minimum_calls=1)
        breaker.disable()
        fail_n(breaker, 30)
        assert breaker.state is BreakerState.DISABLED
        assert breaker.metrics.calls == 0
        assert breaker.call(ok) == "ok"


class TestRejectionCost:
    def test_each_rejection_is_a_fresh_exception_with_a_short_traceback(self) -> None:
        breaker = stoic.CircuitBreaker("a")
        breaker.force_open()
        errors = []
        for _ in range(3):
            try:
                breaker.call(ok)
            except stoic.CircuitOpenError as exc:
                errors.append(exc)
        assert len({id(e) for e in errors}) == 3
        depths = []
        for exc in errors:
            tb, depth = exc.__traceback__, 0
            while tb is not None:
                tb, depth = tb.tb_next, depth + 1
            depths.append(depth)
        assert depths[0] == depths[1] == depths[2] <= 6

    @pytest.mark.parametrize("path", ["decorator", "call", "pipeline", "async"])
    def test_a_rejection_reads_and_pickles_as_a_circuit_open_error(self, path: str) -> None:
        """The cheap rejection is a CircuitOpenError to every reader: name, text, pickle."""
        with virtual_time() as clock:
            breaker = stoic.CircuitBreaker("pay", minimum_calls=1, open_for=30.0)
            fail_n(breaker, 1)
            clock.advance(10.0)
            run = {
                "decorator": breaker(ok),
                "call": lambda: breaker.call(ok),
                "pipeline": lambda: stoic.Pipeline(stoic.Retry(max_attempts=1), breaker).call(ok),
                "async": lambda: asyncio.run(breaker(_aok)()),
            }[path]
            with pytest.raises(stoic.CircuitOpenError) as info:
                run()
        exc = info.value
        assert (exc.retry_after, exc.name) == (pytest.approx(20.0), "pay")
        assert str(exc) == "circuit 'pay' is open"
        assert type(exc).__name__ == "CircuitOpenError"  # what metrics and logs show
        assert "stoic.errors.CircuitOpenError: circuit 'pay' is open" in "".join(
            traceback.format_exception_only(exc)
        )
        copy = pickle.loads(pickle.dumps(exc))
        assert type(copy) is stoic.CircuitOpenError
        assert (copy.retry_after, copy.name, str(copy)) == (exc.retry_after, "pay", str(exc))
        exc.retry_after = 1.0  # still a plain, writable attribute to its readers
        assert (exc.retry_after, exc.name) == (1.0, "pay")

    @pytest.mark.parametrize("how", ["open", "forced_open"])
    def test_rejections_do_not_grow_memory(self, how: str) -> None:
        breaker = stoic.CircuitBreaker("a", minimum_calls=1, open_for=1e6)
        if how == "open":
            fail_n(breaker, 1)
        else:
            breaker.force_open()
        guarded = breaker(ok)

        def reject(n: int) -> None:
            for _ in range(n):
                try:
                    guarded()
                except stoic.CircuitOpenError:
                    pass

        reject(2000)
        gc.collect()
        tracemalloc.start()
        try:
            reject(1000)
            gc.collect()
            first, _ = tracemalloc.get_traced_memory()
            reject(20000)
            gc.collect()
            second, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert second - first < 4096


class TestConcurrency:
    def test_closed_breaker_runs_sixteen_thread_calls_at_the_same_time(self) -> None:
        breaker = stoic.CircuitBreaker("a")
        barrier = threading.Barrier(16, timeout=10)  # breaks unless all 16 are inside at once
        results: list[Any] = []

        @breaker
        def call() -> int:
            return barrier.wait()

        def run() -> None:
            try:
                results.append(call())
            except Exception as exc:
                results.append(exc)

        threads = [threading.Thread(target=run) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(15)
        assert sorted(results) == list(range(16))
        assert breaker.metrics.calls == 16

    async def test_closed_breaker_runs_async_calls_concurrently(self) -> None:
        breaker = stoic.CircuitBreaker("a")
        inside = 0
        peak = 0

        @breaker
        async def call() -> None:
            nonlocal inside, peak
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.01)
            inside -= 1

        await asyncio.gather(*(call() for _ in range(16)))
        assert peak == 16

    def test_failures_from_many_threads_are_all_counted(self) -> None:
        breaker = stoic.CircuitBreaker("a", window=stoic.CountWindow(10_000), minimum_calls=10_000)

        def run() -> None:
            for i in range(500):
                try:
                    breaker.call(reset if i % 2 else ok)
                except ConnectionResetError:
                    pass

        threads = [threading.Thread(target=run) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        metrics = breaker.metrics
        assert (metrics.calls, metrics.failures) == (4000, 2000)


class TestEvents:
    def test_every_transition_emits_its_event(self) -> None:
        with virtual_time() as clock:
            seen = record_events()
            breaker = stoic.CircuitBreaker("pay", minimum_calls=2, open_for=5, half_open_calls=1)
            fail_n(breaker, 2)
            clock.advance(5)
            breaker.call(ok)
            breaker.force_open()
            breaker.disable()
            breaker.reset()
            transitions = [e for e in seen if isinstance(e, stoic.policies.breaker.BreakerTransitioned)]
            assert [type(e) for e in transitions] == [
                BreakerOpened, BreakerHalfOpened, BreakerClosed, BreakerForcedOpen,
                BreakerDisabled, BreakerClosed,
            ]
            opened = transitions[0]
            assert isinstance(opened, BreakerOpened)
            assert (opened.name, opened.previous, opened.state) == ("pay", "closed", "open")
            assert opened.failure_rate == 1.0 and opened.calls == 2 and opened.open_for == 5

    def test_rejection_emits_call_rejected_and_calls_emit_call_finished(self) -> None:
        seen = record_events()
        breaker = stoic.CircuitBreaker("pay", minimum_calls=1)
        breaker.call(ok)
        fail_n(breaker, 1)
        with pytest.raises(stoic.CircuitOpenError):
            breaker.call(ok)
        finished = [e for e in seen if isinstance(e, CallFinished)]
        assert [(e.policy, e.outcome, e.error_type) for e in finished] == [
            ("circuit_breaker", "success", None),
            ("circuit_breaker", "unknown", "ConnectionResetError"),
        ]
        rejected = [e for e in seen if isinstance(e, CallRejected)]
        assert len(rejected) == 1
        assert (rejected[0].policy, rejected[0].reason) == ("circuit_breaker", "circuit_open")
        assert rejected[0].retry_after == pytest.approx(30.0, abs=1.0)


class TestRegistry:
    def test_breakers_maps_names_to_breakers_read_only(self) -> None:
        a = stoic.CircuitBreaker("orders")
        b = stoic.CircuitBreaker("payments")
        assert stoic.breakers["orders"] is a
        assert stoic.breakers["payments"] is b
        with pytest.raises(TypeError):
            stoic.breakers["x"] = a  # type: ignore[index]

    def test_a_new_breaker_with_the_same_name_replaces_the_old(self) -> None:
        stoic.CircuitBreaker("orders")
        newer = stoic.CircuitBreaker("orders")
        assert stoic.breakers["orders"] is newer
        assert len(stoic.breakers) == 1


class TestComposition:
    def test_breaker_inside_retry_stops_retries_once_open(self) -> None:
        with virtual_time():
            breaker = stoic.CircuitBreaker("a", minimum_calls=2)
            calls = []

            def flaky() -> None:
                calls.append(1)
                raise ConnectionRefusedError("refused")  # TRANSIENT: Retry retries it

            pipeline = stoic.Pipeline(stoic.Retry(max_attempts=5), breaker)
            with pytest.raises(stoic.CircuitOpenError):
                pipeline.call(flaky)
            assert len(calls) == 2  # the third attempt was rejected, not made

    def test_decorator_keeps_sync_and_async_functions(self) -> None:
        breaker = stoic.CircuitBreaker("a")

        @breaker
        async def aget() -> int:
            return 2

        @breaker
        def get() -> int:
            return 1

        assert get() == 1
        assert asyncio.run(aget()) == 2


class TestConfiguration:
    @pytest.mark.parametrize(
        ("kwargs", "parameter"),
        [
            ({"failure_rate": 0}, "failure_rate"),
            ({"failure_rate": 1.5}, "failure_rate"),
            ({"slow_call_rate": -0.1}, "slow_call_rate"),
            ({"slow_call_duration": 0}, "slow_call_duration"),
            ({"minimum_calls": 0}, "minimum_calls"),
            ({"open_for": 0}, "open_for"),
            ({"open_for": -1}, "open_for"),
            ({"half_open_calls": 0}, "half_open_calls"),
            ({"open_for_growth": 0.5}, "open_for_growth"),
            ({"max_open_for": 1.0}, "max_open_for"),
            ({"window": 100}, "window"),
        ],
    )
    def test_bad_configuration_names_the_parameter(
        self, kwargs: dict[str, Any], parameter: str
    ) -> None:
        with pytest.raises(ValueError, match=parameter):
            stoic.CircuitBreaker("a", **kwargs)

    @pytest.mark.parametrize("size", [0, -1, 1.5])
    def test_window_size_below_one_is_rejected(self, size: Any) -> None:
        with pytest.raises(ValueError, match="size"):
            stoic.CountWindow(size)
        with pytest.raises(ValueError, match="seconds"):
            stoic.TimeWindow(seconds=size)

    def test_empty_name_is_rejected(self) -> None:
        with pytest.raises(ValueError, match="name"):
            stoic.CircuitBreaker("")


class TestTransitionLogsAndMeasurements:
    def test_transitions_are_logged_at_warning_without_any_sink(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        breaker = stoic.CircuitBreaker("logged", minimum_calls=1, window=stoic.CountWindow(1))
        with caplog.at_level("WARNING", logger="stoic"):
            breaker.force_open()
            breaker.reset()
        lines = [r.getMessage() for r in caplog.records if r.name == "stoic"]
        assert any("logged" in line and "forced_open" in line for line in lines)
        assert any("logged" in line and "-> closed" in line for line in lines)

    def test_calls_reach_call_recorders_without_building_events(self) -> None:
        seen: list[tuple[object, ...]] = []
        remove = stoic.events.dispatcher.add_recorder(lambda *args: seen.append(args))
        try:
            breaker = stoic.CircuitBreaker("measured")
            breaker.call(lambda: 1)
        finally:
            remove()
        assert [(p, n, o) for p, n, o, *_ in seen] == [("circuit_breaker", "measured", "success")]


class TestBackendName:
    def test_backend_shares_state_and_state_is_its_deprecated_alias(self) -> None:
        memory = stoic.state.MemoryState()
        breaker = stoic.CircuitBreaker("named-backend", backend=memory)
        assert breaker.config.backend is memory
        with pytest.warns(DeprecationWarning, match="backend"):
            old = stoic.CircuitBreaker("named-state", state=memory)
        assert old.config.backend is memory
        assert old.state is BreakerState.CLOSED

    def test_settings_are_read_only(self) -> None:
        breaker = stoic.CircuitBreaker("frozen", open_for=5.0)
        with pytest.raises(AttributeError):
            breaker.open_for = 1.0  # type: ignore[misc]
        assert breaker.open_for == 5.0
