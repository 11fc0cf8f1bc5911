"""AdaptiveThrottle: a client stops sending to a backend that refuses most of its traffic."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import stoic
from stoic.policies.throttle import AdaptiveThrottle, ThrottleBudget, ThrottledError
from stoic.testing import virtual_time


class Backend:
    """Accepts a call unless ``refusing``; counts what reached it."""

    def __init__(self) -> None:
        self.refusing = False
        self.received = 0

    def __call__(self) -> str:
        self.received += 1
        if self.refusing:
            raise stoic.RateLimitedError("backend is shedding")
        return "ok"


def send(throttle: AdaptiveThrottle, backend: Backend, n: int) -> int:
    """Make ``n`` calls; return how many the throttle refused locally."""
    local = 0
    for _ in range(n):
        try:
            throttle.call(backend)
        except ThrottledError:
            local += 1
        except stoic.RateLimitedError:
            pass
    return local


def test_while_the_backend_accepts_nothing_is_refused_locally() -> None:
    with virtual_time():
        throttle = AdaptiveThrottle(rng=random.Random(1))
        assert send(throttle, Backend(), 1000) == 0
        assert throttle.probability == 0.0


def test_when_the_backend_refuses_everything_the_client_stops_sending_most_of_it() -> None:
    with virtual_time():
        throttle = AdaptiveThrottle(k=2.0, rng=random.Random(1))
        backend = Backend()
        send(throttle, backend, 100)  # healthy: 100 accepted
        backend.refusing = True
        backend.received = 0
        local = send(throttle, backend, 2000)
        # (requests - 2 * 100) / (requests + 1): all until 200 requests, then less and less;
        # about 100 + 201 * ln(2101 / 201) = 570 of the 2000 reach the backend
        assert backend.received < 700
        assert local == 2000 - backend.received
        assert throttle.probability > 0.8


def test_the_client_sends_again_once_the_backend_recovers_and_the_window_slides() -> None:
    with virtual_time() as clock:
        throttle = AdaptiveThrottle(window=10.0, buckets=10, rng=random.Random(2))
        backend = Backend()
        backend.refusing = True
        send(throttle, backend, 500)
        assert throttle.probability > 0.9
        backend.refusing = False
        clock.advance(11.0)  # the refusals have left the window
        backend.received = 0
        assert send(throttle, backend, 100) == 0
        assert backend.received == 100


@settings(max_examples=50, deadline=None)
@given(
    k=st.floats(1.0, 4.0),
    answers=st.lists(st.booleans(), min_size=1, max_size=300),
    seed=st.integers(0, 2**16),
)
def test_the_probability_follows_the_sre_formula_and_refused_calls_never_run(
    k: float, answers: list[bool], seed: int
) -> None:
    with virtual_time():
        throttle = AdaptiveThrottle(k=k, rng=random.Random(seed))
        requests = accepts = 0
        for accept in answers:
            expected = max(0.0, (requests - k * accepts) / (requests + 1))
            assert throttle.probability == pytest.approx(expected)
            ran: list[int] = []

            def call(accept: bool = accept, ran: list[int] = ran) -> None:
                ran.append(1)
                if not accept:
                    raise stoic.RateLimitedError("no")

            requests += 1
            try:
                throttle.call(call)
            except ThrottledError:
                assert ran == []
                continue
            except stoic.RateLimitedError:
                pass
            assert ran == [1]
            accepts += accept


def test_errors_other_than_refusals_still_count_as_accepted() -> None:
    with virtual_time():
        throttle = AdaptiveThrottle(rng=random.Random(3))

        def not_found() -> None:
            raise ValueError("a bug, not overload")

        for _ in range(100):
            with pytest.raises(ValueError):
                throttle.call(not_found)
        assert throttle.probability == 0.0


def test_as_retry_budget_retries_stop_when_the_backend_refuses_most_requests() -> None:
    with virtual_time():
        throttle = AdaptiveThrottle(rng=random.Random(4))
        retry = stoic.Retry(
            max_attempts=3, budget=ThrottleBudget(throttle, ratio=1.0),
            backoff=stoic.backoff.constant(0.01),
        )
        backend = Backend()
        backend.refusing = True
        pipeline = stoic.Pipeline(retry, throttle)
        for _ in range(200):
            with pytest.raises((stoic.RateLimitedError, ThrottledError)):
                pipeline.call(backend)
        # without the throttle: 600 attempts reach the backend
        assert backend.received < 200


def test_async_calls_are_throttled_too() -> None:
    async def main() -> None:
        throttle = AdaptiveThrottle(rng=random.Random(5))

        async def refuse() -> None:
            raise stoic.RateLimitedError("no")

        local = 0
        for _ in range(300):
            try:
                await throttle.acall(refuse)
            except ThrottledError:
                local += 1
            except stoic.RateLimitedError:
                pass
        assert local > 150

    with virtual_time():
        asyncio.run(main())


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [({"k": 0.5}, "k"), ({"window": -1}, "window"), ({"window": 0}, "window"),
     ({"buckets": 0}, "buckets")],
)
def test_bad_configuration_raises_value_error_naming_the_parameter(
    kwargs: dict[str, Any], parameter: str
) -> None:
    with pytest.raises(ValueError, match=parameter):
        AdaptiveThrottle(**kwargs)


def test_exported_as_stoic_adaptive_throttle() -> None:
    assert stoic.AdaptiveThrottle is AdaptiveThrottle
    assert issubclass(ThrottledError, stoic.Rejected)
