"""Pipeline and Fallback: composition once, outermost first; substitutes on failure."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import stoic
from stoic import Fallback, Pipeline, Retry, Timeout
from stoic.backoff import constant
from stoic.policies.base import AsyncStep, Policy, Step
from stoic.testing import virtual_time


class Recorder(Policy):
    """A policy that records when it runs, to observe composition order."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log
        self.wraps = 0
        self._compose()

    def wrap(self, inner: Step) -> Step:
        self.wraps += 1

        def call(fn: Any, args: Any, kwargs: Any) -> Any:
            self.log.append(f"{self.name}>")
            try:
                return inner(fn, args, kwargs)
            finally:
                self.log.append(f"<{self.name}")

        return call

    def awrap(self, inner: AsyncStep) -> AsyncStep:
        async def acall(fn: Any, args: Any, kwargs: Any) -> Any:
            self.log.append(f"{self.name}>")
            try:
                return await inner(fn, args, kwargs)
            finally:
                self.log.append(f"<{self.name}")

        return acall


class TestPipeline:
    def test_first_policy_is_outermost(self) -> None:
        log: list[str] = []
        pipeline = Pipeline(Recorder("a", log), Recorder("b", log))
        assert pipeline.call(lambda: log.append("fn")) is None
        assert log == ["a>", "b>", "fn", "<b", "<a"]

    def test_composition_happens_once_not_per_call(self) -> None:
        log: list[str] = []
        inner = Recorder("a", log)
        pipeline = Pipeline(inner)
        wraps_after_build = inner.wraps
        for _ in range(5):
            pipeline.call(lambda: None)
        assert inner.wraps == wraps_after_build

    def test_retry_around_a_per_attempt_timeout(self) -> None:
        attempts = 0

        async def slow_then_fast() -> str:
            nonlocal attempts
            attempts += 1
            await asyncio.sleep(5 if attempts == 1 else 0.1)
            return "done"

        async def main() -> str:
            async with virtual_time():
                policy = Pipeline(Retry(max_attempts=2, idempotent=True, backoff=constant(0)), Timeout(1))
                return await policy.acall(slow_then_fast)

        assert asyncio.run(main()) == "done"
        assert attempts == 2

    def test_pipelines_nest(self) -> None:
        log: list[str] = []
        outer = Pipeline(Recorder("a", log), Pipeline(Recorder("b", log), Recorder("c", log)))
        outer.call(lambda: None)
        assert log == ["a>", "b>", "c>", "<c", "<b", "<a"]

    def test_decorates_sync_and_async(self) -> None:
        policy = Pipeline(Retry(max_attempts=2, backoff=constant(0)))

        @policy
        def f(x: int) -> int:
            return x + 1

        @policy
        async def g(x: int) -> int:
            return x + 2

        assert f(1) == 2
        assert asyncio.run(g(1)) == 3

    def test_needs_policies(self) -> None:
        with pytest.raises(ValueError, match="policies"):
            Pipeline()
        with pytest.raises(ValueError, match=r"policies\[1\]"):
            Pipeline(Retry(), "retry")  # type: ignore[arg-type]


class TestFallback:
    def test_returns_the_value_on_failure(self) -> None:
        def boom() -> str:
            raise ConnectionRefusedError

        assert Fallback("cached").call(boom) == "cached"

    def test_calls_the_function_with_the_exception(self) -> None:
        def boom() -> str:
            raise KeyError("missing")

        assert Fallback(lambda exc: f"fallback for {exc!r}").call(boom) == "fallback for KeyError('missing')"

    def test_only_matching_failures_fall_back(self) -> None:
        def boom() -> str:
            raise ValueError("bug")

        with pytest.raises(ValueError, match="bug"):
            Fallback("x", on=ConnectionError).call(boom)

    async def test_async_fallback_function_is_awaited(self) -> None:
        async def boom() -> str:
            raise ConnectionRefusedError

        async def substitute(exc: BaseException) -> str:
            return "async substitute"

        assert await Fallback(substitute).acall(boom) == "async substitute"

    async def test_cancellation_is_not_a_fallback_case(self) -> None:
        async def cancelled() -> str:
            raise asyncio.CancelledError

        with pytest.raises(asyncio.CancelledError):
            await Fallback("x").acall(cancelled)

    def test_fallback_outside_retry_catches_the_exhausted_error(self) -> None:
        def down() -> str:
            raise ConnectionRefusedError

        with virtual_time():
            policy = Pipeline(Fallback("degraded"), Retry(max_attempts=3, backoff=constant(0.1)))
            assert policy.call(down) == "degraded"


def test_policies_compose_with_the_public_names() -> None:
    assert isinstance(stoic.Pipeline(stoic.Retry(), stoic.Timeout(1)), Policy)
