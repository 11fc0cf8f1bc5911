"""Retry: retries only what is safe, never sleeps past its limits, and gives up honestly."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import stoic
from stoic import Outcome, Retry, RetryBudget
from stoic.backoff import constant, exponential, linear
from stoic.events import RetryGaveUp, RetryScheduled
from stoic.testing import virtual_time


def failing(*errors: BaseException, result: Any = "ok") -> Callable[[], Any]:
    """A function raising ``errors`` in turn, then returning ``result``; counts its calls."""
    queue = list(errors)

    def fn() -> Any:
        fn.calls += 1  # type: ignore[attr-defined]
        if queue:
            raise queue.pop(0)
        return result

    fn.calls = 0  # type: ignore[attr-defined]
    return fn


def afailing(*errors: BaseException, result: Any = "ok") -> Any:
    sync = failing(*errors, result=result)

    async def fn() -> Any:
        fn.calls += 1  # type: ignore[attr-defined]
        sync()
        return result

    fn.calls = 0  # type: ignore[attr-defined]
    return fn


@pytest.fixture(params=["sync", "async"])
def run(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """Run ``policy`` over a failing function, the same way in sync and async code."""

    def runner(policy: stoic.Retry, *errors: BaseException, result: Any = "ok") -> tuple[Any, Any]:
        if request.param == "sync":
            fn = failing(*errors, result=result)
            return policy.call(fn), fn
        afn = afailing(*errors, result=result)

        async def main() -> Any:
            return await policy.acall(afn)

        return asyncio.run(main()), afn

    return runner


class TestWhatIsRetried:
    def test_transient_failures_are_retried(self, run: Any) -> None:
        with virtual_time():
            result, fn = run(Retry(max_attempts=3), ConnectionRefusedError(), ConnectionRefusedError())
        assert (result, fn.calls) == ("ok", 3)

    def test_permanent_errors_are_never_retried(self, run: Any) -> None:
        with virtual_time() as clock, pytest.raises(ValueError, match="bad") as info:
            run(Retry(max_attempts=5), ValueError("bad"))
        assert clock.sleeps == []
        assert "not retryable" in info.value.__notes__[-1]

    def test_unknown_outcome_is_retried_only_when_idempotent(self, run: Any) -> None:
        with virtual_time(), pytest.raises(ConnectionResetError) as info:
            run(Retry(max_attempts=3), ConnectionResetError())
        assert "not idempotent" in info.value.__notes__[-1]
        with virtual_time():
            result, fn = run(Retry(max_attempts=3, idempotent=True), ConnectionResetError())
        assert (result, fn.calls) == ("ok", 2)

    def test_unknown_outcome_is_retried_under_an_idempotency_key(self) -> None:
        fn = failing(TimeoutError())
        with virtual_time(), stoic.context.using_idempotency_key("order-7"):
            assert Retry(max_attempts=2).call(fn) == "ok"
        assert fn.calls == 2

    def test_on_types_override_classification(self, run: Any) -> None:
        with virtual_time():
            result, fn = run(Retry(max_attempts=2, on=KeyError), KeyError("x"))
        assert (result, fn.calls) == ("ok", 2)
        with virtual_time(), pytest.raises(ConnectionRefusedError):
            run(Retry(max_attempts=2, on=KeyError), ConnectionRefusedError())

    def test_on_predicate_overrides_classification(self) -> None:
        fn = failing(ValueError("retry me"), ValueError("retry me"))
        with virtual_time():
            assert Retry(max_attempts=3, on=lambda e: "retry" in str(e)).call(fn) == "ok"
        assert fn.calls == 3

    def test_on_matches_reports_what_on_decides(self) -> None:
        assert Retry().on_matches(KeyError()) is None  # classification decides
        assert Retry(on=KeyError).on_matches(KeyError()) is True
        assert Retry(on=KeyError).on_matches(ConnectionRefusedError()) is False
        assert Retry(on=lambda e: "retry" in str(e)).on_matches(ValueError("retry me")) is True

    def test_bad_results_are_retried_and_the_last_one_returned(self) -> None:
        values = iter([None, None, None, None])

        def fn() -> Any:
            return next(values)

        with virtual_time() as clock:
            assert Retry(max_attempts=3, on_result=lambda r: r is None).call(fn) is None
        assert len(clock.sleeps) == 2

    def test_a_good_result_after_bad_ones_is_returned(self) -> None:
        values = iter([0, 0, 5])
        with virtual_time():
            assert Retry(max_attempts=3, on_result=lambda r: r == 0).call(lambda: next(values)) == 5


class TestCancellation:
    @pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(3)])
    def test_cancellation_is_never_retried_nor_delayed(self, exc: BaseException) -> None:
        fn = failing(exc)
        with virtual_time() as clock, pytest.raises(type(exc)):
            Retry(max_attempts=5, on=BaseException).call(fn)
        assert (fn.calls, clock.sleeps) == (1, [])

    async def test_async_cancellation_passes_untouched(self) -> None:
        calls = 0

        async def fn() -> None:
            nonlocal calls
            calls += 1
            raise asyncio.CancelledError

        async with virtual_time() as clock:
            with pytest.raises(asyncio.CancelledError):
                await Retry(max_attempts=5, idempotent=True).acall(fn)
        assert (calls, clock.sleeps) == (1, [])

    async def test_cancelling_a_task_while_it_waits_to_retry_cancels_at_once(self) -> None:
        started = asyncio.Event()

        async def fn() -> None:
            started.set()
            raise ConnectionRefusedError

        task = asyncio.create_task(Retry(max_attempts=5, backoff=constant(30.0)).acall(fn))
        await started.wait()
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=2)


class TestGivingUp:
    def test_original_exception_is_reraised_with_a_note(self, run: Any) -> None:
        errors = [ConnectionRefusedError(f"try {i}") for i in range(3)]
        with virtual_time(), pytest.raises(ConnectionRefusedError) as info:
            run(Retry(max_attempts=3, name="payments"), *errors)
        assert info.value is errors[-1]
        note = info.value.__notes__[-1]
        assert "'payments'" in note and "3 attempts" in note and "all 3 attempts used" in note

    def test_exhaustion_note_says_elapsed_time(self) -> None:
        with virtual_time(), pytest.raises(ConnectionRefusedError) as info:
            Retry(max_attempts=2, backoff=constant(1.5)).call(failing(*[ConnectionRefusedError()] * 2))
        assert "in 1.500s" in info.value.__notes__[-1]

    def test_no_sleep_past_max_time(self) -> None:
        fn = failing(*[ConnectionRefusedError()] * 10)
        with virtual_time() as clock, pytest.raises(ConnectionRefusedError) as info:
            Retry(max_attempts=10, backoff=constant(1.0), max_time=2.5).call(fn)
        assert clock.sleeps == [1.0, 1.0]
        assert clock.elapsed <= 2.5
        assert "max_time" in info.value.__notes__[-1]

    def test_no_sleep_past_the_deadline(self, run: Any) -> None:
        with virtual_time() as clock, stoic.deadline(2.5), pytest.raises(ConnectionRefusedError) as info:
            run(Retry(max_attempts=10, backoff=constant(1.0)), *[ConnectionRefusedError()] * 10)
        assert clock.elapsed <= 2.5
        assert "deadline" in info.value.__notes__[-1]

    def test_call_after_the_deadline_is_not_started(self, run: Any) -> None:
        with virtual_time() as clock, stoic.deadline(1.0):
            clock.advance(1.0)
            with pytest.raises(stoic.DeadlineExceeded):
                run(Retry())
        assert isinstance(stoic.DeadlineExceeded(), TimeoutError)

    def test_zero_wait_never_calls_sleep(self) -> None:
        with virtual_time() as clock:
            Retry(max_attempts=3, backoff=constant(0.0)).call(failing(ConnectionRefusedError()))
        assert clock.sleeps == []

    async def test_zero_wait_never_calls_sleep_async(self) -> None:
        async with virtual_time() as clock:
            await Retry(max_attempts=3, backoff=constant(0.0)).acall(afailing(ConnectionRefusedError()))
        assert clock.sleeps == []


class TestThrottled:
    def test_throttled_waits_at_least_retry_after(self) -> None:
        fn = failing(stoic.RateLimitedError("slow down", retry_after=2.0))
        with virtual_time() as clock:
            Retry(max_attempts=2, backoff=constant(0.5)).call(fn)
        assert clock.sleeps == [2.0]

    def test_backoff_longer_than_retry_after_wins(self) -> None:
        fn = failing(stoic.RateLimitedError("slow down", retry_after=0.1))
        with virtual_time() as clock:
            Retry(max_attempts=2, backoff=constant(0.5)).call(fn)
        assert clock.sleeps == [0.5]

    def test_retry_after_beyond_the_backoff_max_gives_up_at_once(self) -> None:
        fn = failing(stoic.RateLimitedError("come back tomorrow", retry_after=86400.0))
        with virtual_time() as clock, pytest.raises(stoic.RateLimitedError) as info:
            Retry(max_attempts=3, backoff=exponential(max=5.0)).call(fn)
        assert clock.sleeps == []
        assert "retry_after" in info.value.__notes__[-1]

    def test_retry_after_can_be_ignored(self) -> None:
        fn = failing(stoic.RateLimitedError("x", retry_after=3.0))
        with virtual_time() as clock:
            Retry(max_attempts=2, backoff=constant(0.5), respect_retry_after=False).call(fn)
        assert clock.sleeps == [0.5]


class TestBackoff:
    def test_exponential_without_jitter_doubles_up_to_max(self) -> None:
        fn = failing(*[ConnectionRefusedError()] * 5)
        with virtual_time() as clock:
            Retry(max_attempts=6, backoff=exponential(0.1, 2.0, 1.0, jitter=None)).call(fn)
        assert clock.sleeps == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0])

    def test_linear_steps(self) -> None:
        fn = failing(*[ConnectionRefusedError()] * 3)
        with virtual_time() as clock:
            Retry(max_attempts=4, backoff=linear(0.5, 0.25, 10, jitter=None)).call(fn)
        assert clock.sleeps == pytest.approx([0.5, 0.75, 1.0])

    @given(retry=st.integers(1, 30), jitter=st.sampled_from(["full", "equal", "decorrelated"]))
    def test_jittered_waits_stay_within_bounds(self, retry: int, jitter: Any) -> None:
        schedule = exponential(0.1, 2.0, 5.0, jitter=jitter)
        d = schedule.delay(retry, previous=schedule.base(retry))
        assert 0.0 <= d <= 5.0
        if jitter == "equal":
            assert d >= schedule.base(retry) / 2
        if jitter == "decorrelated":
            assert d >= min(0.1, 5.0)


class TestBudget:
    def test_empty_budget_gives_up_with_a_note(self) -> None:
        budget = RetryBudget(ratio=0.0, min_per_second=0.0)
        with virtual_time(), pytest.raises(ConnectionRefusedError) as info:
            Retry(max_attempts=3, budget=budget).call(failing(ConnectionRefusedError()))
        assert "retry budget" in info.value.__notes__[-1]

    def test_one_budget_is_shared_by_many_retry_objects(self) -> None:
        budget = RetryBudget(ratio=0.0, min_per_second=0.1, window=10)  # one retry per window
        first, second = Retry(budget=budget), Retry(budget=budget)
        with virtual_time():
            assert first.call(failing(ConnectionRefusedError())) == "ok"
            with pytest.raises(ConnectionRefusedError):
                second.call(failing(ConnectionRefusedError()))

    @settings(max_examples=40, deadline=None)
    @given(
        ratio=st.floats(0.0, 0.5),
        floor=st.floats(0.0, 2.0),
        calls_per_second=st.integers(5, 60),
        seconds=st.integers(10, 40),
        failure_pattern=st.lists(st.booleans(), min_size=1, max_size=20),
    )
    def test_budget_caps_retries_near_ratio_of_traffic_under_an_outage(
        self, ratio: float, floor: float, calls_per_second: int, seconds: int,
        failure_pattern: list[bool],
    ) -> None:
        """Under a sustained outage (every attempt failing, or a mix), retries over any window
        never exceed ratio * calls + floor * window."""
        budget = RetryBudget(ratio=ratio, min_per_second=floor, window=10)
        retries = 0
        calls = 0
        pattern = iter(failure_pattern * 10_000)

        def sink(event: Any) -> None:
            nonlocal retries
            if isinstance(event, RetryScheduled):
                retries += 1

        unsubscribe = stoic.events.subscribe(sink)
        policy = Retry(max_attempts=4, backoff=constant(0.0), budget=budget)

        def dependency() -> str:
            if next(pattern) or True:
                raise ConnectionRefusedError
            return "unreachable"

        try:
            with virtual_time() as clock:
                for _ in range(seconds):
                    for _ in range(calls_per_second):
                        calls += 1
                        with pytest.raises(ConnectionRefusedError):
                            policy.call(dependency)
                    clock.advance(1.0)
        finally:
            unsubscribe()
        windows = seconds / 10 + 1
        assert retries <= ratio * calls + floor * 10 * windows + 1
        # and the budget does allow retries when it has tokens: it is not simply "off"
        if floor * 10 >= 1 or ratio * calls_per_second * 10 >= 1:
            assert retries > 0


class TestEventsAndConcurrency:
    def test_events_describe_each_retry_and_the_give_up(self) -> None:
        seen: list[Any] = []
        stoic.events.subscribe(seen.append)
        with virtual_time(), pytest.raises(ConnectionRefusedError):
            Retry(max_attempts=2, backoff=constant(0.25), name="inventory").call(
                failing(ConnectionRefusedError(), ConnectionRefusedError())
            )
        kinds = [type(e).__name__ for e in seen]
        assert kinds == ["RetryScheduled", "RetryGaveUp", "CallFinished"]
        scheduled, gave_up = seen[0], seen[1]
        assert (scheduled.name, scheduled.wait, scheduled.outcome) == ("inventory", 0.25, "transient")
        assert isinstance(gave_up, RetryGaveUp) and gave_up.reason == "attempts"

    def test_a_failing_subscriber_never_breaks_the_call(self) -> None:
        stoic.events.subscribe(lambda e: 1 / 0)
        with virtual_time():
            assert Retry(max_attempts=2).call(failing(ConnectionRefusedError())) == "ok"

    def test_one_retry_object_from_eight_threads_behaves_per_call(self) -> None:
        policy = Retry(max_attempts=3, backoff=constant(0.0))
        results: list[tuple[str, int]] = []
        lock = threading.Lock()

        def worker(i: int) -> None:
            for _ in range(200):
                fn = failing(*[ConnectionRefusedError()] * (i % 3))
                value = policy.call(fn)
                with lock:
                    results.append((value, fn.calls))  # type: ignore[attr-defined]

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(results) == 1600
        assert all(value == "ok" and 1 <= calls <= 3 for value, calls in results)
        assert {calls for _, calls in results} == {1, 2, 3}

    async def test_one_retry_object_from_many_tasks_behaves_per_call(self) -> None:
        policy = Retry(max_attempts=3, backoff=constant(0.01))

        async def one(i: int) -> int:
            fn = afailing(*[ConnectionRefusedError()] * (i % 3))
            await policy.acall(fn)
            return fn.calls  # type: ignore[no-any-return]

        async with virtual_time():
            calls = await asyncio.gather(*(one(i) for i in range(300)))
        assert calls == [i % 3 + 1 for i in range(300)]


class TestConfiguration:
    @pytest.mark.parametrize(
        ("make", "parameter"),
        [
            (lambda: Retry(max_attempts=0), "attempts"),
            (lambda: Retry(max_attempts=1.5), "attempts"),  # type: ignore[arg-type]
            (lambda: Retry(max_time=0), "max_time"),
            (lambda: Retry(max_time=-1), "max_time"),
            (lambda: exponential(initial=-0.1), "initial"),
            (lambda: exponential(factor=0.5), "factor"),
            (lambda: exponential(max=-1), "max"),
            (lambda: exponential(jitter="wild"), "jitter"),  # type: ignore[arg-type]
            (lambda: linear(step=-1), "step"),
            (lambda: constant(-1), "initial"),
            (lambda: RetryBudget(ratio=1.5), "ratio"),
            (lambda: RetryBudget(ratio=-0.1), "ratio"),
            (lambda: RetryBudget(min_per_second=-1), "min_per_second"),
            (lambda: Retry(on="ValueError"), "on"),  # type: ignore[arg-type]
            (lambda: Retry(backoff=1.0), "backoff"),  # type: ignore[arg-type]
        ],
    )
    def test_bad_configuration_names_the_parameter(self, make: Any, parameter: str) -> None:
        with pytest.raises(ValueError, match=parameter):
            make()


class TestReplace:
    def test_replace_changes_only_what_is_named(self) -> None:
        budget = RetryBudget()
        original = Retry(max_attempts=4, backoff=constant(0.3), budget=budget, name="db")
        twin = original.replace(idempotent=True)
        assert (twin.idempotent, original.idempotent) == (True, False)
        assert (twin.attempts, twin.backoff, twin.budget, twin.name) == (4, constant(0.3), budget, "db")
        fn = failing(ConnectionResetError())
        with virtual_time():
            assert twin.call(fn) == "ok"  # UNKNOWN now retried

    def test_replace_validates_and_refuses_unknown_names(self) -> None:
        with pytest.raises(ValueError, match="attempts"):
            Retry().replace(attempts=0)
        with pytest.raises(TypeError, match="retries"):
            Retry().replace(retries=3)


class TestDecorator:
    def test_decorated_function_keeps_name_doc_and_signature(self) -> None:
        import inspect

        @Retry()
        def charge(order_id: str, amount: int = 1) -> str:
            """Charge an order."""
            return order_id

        assert charge.__name__ == "charge"
        assert charge.__doc__ == "Charge an order."
        assert list(inspect.signature(charge).parameters) == ["order_id", "amount"]
        assert charge("o1", amount=2) == "o1"

    def test_decorated_coroutine_function_stays_a_coroutine_function(self) -> None:
        import inspect

        @Retry()
        async def fetch() -> int:
            return 1

        assert inspect.iscoroutinefunction(fetch)
        assert asyncio.run(fetch()) == 1


def test_outcome_values_are_stable_strings() -> None:
    assert [o.value for o in Outcome] == ["success", "transient", "throttled", "unknown", "permanent"]


class TestNextDelay:
    """``Retry.next_delay``: the decision a queue worker or workflow engine asks for."""

    def test_transient_failure_gets_the_backoff_wait(self) -> None:
        retry = Retry(max_attempts=3, backoff=constant(0.5))
        assert retry.next_delay(1, ConnectionRefusedError()) == 0.5

    def test_unknown_failure_is_retried_only_when_idempotent(self) -> None:
        error = TimeoutError()
        assert Retry(max_attempts=3, backoff=constant(0.5)).next_delay(1, error) is None
        assert Retry(max_attempts=3, backoff=constant(0.5), idempotent=True).next_delay(1, error) == 0.5

    def test_gives_up_after_the_attempts_cap_with_a_note(self) -> None:
        error = ConnectionRefusedError()
        assert Retry(max_attempts=2, backoff=constant(0.5)).next_delay(2, error) is None
        assert any("gave up after 2 attempts" in note for note in error.__notes__)

    def test_max_time_is_measured_by_elapsed(self) -> None:
        retry = Retry(max_attempts=10, backoff=constant(1.0), max_time=5.0)
        assert retry.next_delay(3, ConnectionRefusedError(), elapsed=3.0) == 1.0
        assert retry.next_delay(3, ConnectionRefusedError(), elapsed=4.5) is None

    def test_a_spent_budget_stops_retries(self) -> None:
        budget = RetryBudget(ratio=0.1, min_per_second=0.0)  # no calls deposited: nothing to spend
        retry = Retry(max_attempts=5, backoff=constant(0.1), budget=budget)
        assert retry.next_delay(1, ConnectionRefusedError()) is None

    def test_permanent_failure_is_never_retried(self) -> None:
        assert Retry(max_attempts=5, backoff=constant(0.1)).next_delay(1, ValueError("bad")) is None

    def test_attempt_must_be_positive(self) -> None:
        with pytest.raises(ValueError, match="attempt must be"):
            Retry().next_delay(0, ConnectionRefusedError())


class TestFrozenConfiguration:
    def test_settings_cannot_be_changed_on_a_live_retry(self) -> None:
        retry = Retry(max_attempts=2, budget=RetryBudget())
        with pytest.raises(AttributeError):
            retry.budget = RetryBudget()  # type: ignore[misc]
        with pytest.raises(AttributeError):
            retry.config.max_attempts = 5  # type: ignore[misc]

    def test_replace_builds_a_new_retry_whose_calls_use_its_own_budget(self) -> None:
        spent = RetryBudget(ratio=0.0, min_per_second=0.0)
        plenty = RetryBudget()
        original = Retry(max_attempts=3, backoff=constant(0.0), budget=spent)
        twin = original.replace(budget=plenty)
        assert twin.call(failing(ConnectionRefusedError())) == "ok"
        with pytest.raises(ConnectionRefusedError):
            original.call(failing(ConnectionRefusedError()))

    def test_max_attempts_is_the_cap_and_attempts_its_deprecated_alias(self) -> None:
        assert Retry(max_attempts=4).attempts == 4
        with pytest.warns(DeprecationWarning, match="max_attempts"):
            old = Retry(attempts=2, backoff=constant(0.0))
        assert old.max_attempts == 2
        fn = failing(ConnectionRefusedError(), ConnectionRefusedError())
        with pytest.raises(ConnectionRefusedError):
            old.call(fn)
        assert fn.calls == 2  # type: ignore[attr-defined]
        with pytest.raises(TypeError, match="max_attempts"):
            Retry(max_attempts=4, attempts=2)
