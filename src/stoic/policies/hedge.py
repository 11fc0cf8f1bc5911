"""Hedge: when a call is slow, start another copy and take whichever answers first.

Tail latency usually comes from one slow replica, a GC pause, a lost packet; a second
attempt started after ``delay`` (say the p95 latency) usually lands elsewhere and returns
quickly, so the p99 drops to about ``delay`` plus a normal call, for a few percent more load.
Up to ``max_hedges`` extra attempts are started, one every ``delay`` seconds while none has
succeeded; a failed attempt (other than a PERMANENT one) starts the next hedge at once. The
first success wins and every other attempt is cancelled. A PERMANENT failure is the answer:
the others are cancelled and it is raised. When all attempts fail, the last failure is
raised as it is.

Only hedge idempotent operations: two copies of the call may both take effect. A shared
``budget`` (a ``RetryBudget``) caps hedges to a fraction of calls, so a slow dependency is
not sent twice its load exactly when it is struggling.

Hedging needs cancellable concurrent attempts, so it is asynchronous only: using it on a
synchronous function raises ``TypeError``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from .. import clock
from .._validate import count, seconds
from ..events import Event, dispatcher
from ..outcome import Outcome, classify
from .base import AsyncStep, Policy, Step
from .budget import RetryBudget
from .settings import Configured, PolicyConfig, setting

__all__ = ["Hedge", "HedgeConfig", "HedgeStarted"]


@dataclass(frozen=True, slots=True, kw_only=True)
class HedgeStarted(Event):
    """Attempt number ``attempt`` (2 for the first hedge) was started, because of ``reason``:
    ``"delay"`` (no answer yet) or ``"failure"`` (an earlier attempt failed)."""

    attempt: int
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HedgeConfig(PolicyConfig):
    """What a ``Hedge`` was told, validated and frozen; see ``Hedge`` for each setting."""

    default_name = "hedge"
    delay: float
    max_hedges: int = 1
    budget: RetryBudget | None = None

    def _check(self) -> None:
        self._normalise("delay", float(seconds("delay", self.delay, finite=True)))
        count("max_hedges", self.max_hedges)
        if self.budget is not None and not isinstance(self.budget, RetryBudget):
            raise ValueError(f"budget must be a RetryBudget or None, got {self.budget!r}")


class Hedge(Configured, Policy):
    """Start up to ``max_hedges`` extra attempts, ``delay`` seconds apart; first success wins.

    Args:
        delay: seconds without an answer before the next attempt starts (> 0).
        max_hedges: extra attempts allowed (>= 1).
        budget: a ``RetryBudget``; every call deposits, every hedge withdraws, and a hedge
            that finds the budget empty is not started.
        name: names the policy in events and metrics.

    The settings are read-only (``hedge.config``); ``replace`` builds a changed Hedge.
    """

    config: HedgeConfig
    delay = setting[float]()
    max_hedges = setting[int]()
    budget = setting["RetryBudget | None"]()
    name = setting[str]()

    def __init__(
        self,
        delay: float,
        max_hedges: int = 1,
        budget: RetryBudget | None = None,
        *,
        name: str | None = None,
    ) -> None:
        self._build(HedgeConfig(
            delay=delay, max_hedges=max_hedges, budget=budget, name=name or ""
        ))

    def _build(self, config: HedgeConfig) -> None:
        self.config = config
        self._compose()

    def __repr__(self) -> str:
        return f"Hedge(delay={self.delay}, max_hedges={self.max_hedges})"

    def wrap(self, inner: Step) -> Step:
        name = self.config.name

        def call(fn: Any, args: Any, kwargs: Any) -> Any:
            raise TypeError(
                f"stoic.Hedge({name!r}) works only with async functions: hedging starts "
                f"concurrent attempts and cancels the losers, which synchronous code cannot do. "
                f"Use it on a coroutine function, or use Retry/Timeout for {fn!r}."
            )

        return call

    def awrap(self, inner: AsyncStep) -> AsyncStep:
        config = self.config
        delay, max_hedges, budget, name = config.delay, config.max_hedges, config.budget, config.name

        def started(attempt: int, reason: str) -> None:
            if dispatcher.sinks:
                dispatcher.emit(HedgeStarted(name=name, attempt=attempt, reason=reason))

        def finished(start: float, attempts: int, exc: BaseException | None) -> None:
            record = dispatcher.record
            if record is not None:
                record(
                    "hedge", name,
                    Outcome.SUCCESS.value if exc is None else classify(exc).outcome.value,
                    clock.monotonic() - start, attempts,
                    None if exc is None else type(exc).__name__,
                )

        async def acall(fn: Any, args: Any, kwargs: Any) -> Any:
            if budget is not None:
                budget.deposit()
            start = clock.monotonic()
            tasks: list[asyncio.Future[Any]] = [asyncio.ensure_future(inner(fn, args, kwargs))]
            hedges = 0
            last: BaseException | None = None
            try:
                while True:
                    can_hedge = hedges < max_hedges
                    running = [task for task in tasks if not task.done()]
                    failed_now = False
                    if running:
                        done, _ = await asyncio.wait(
                            running, timeout=delay if can_hedge else None,
                            return_when=asyncio.FIRST_COMPLETED,
                        )
                        for task in done:
                            if task.cancelled():
                                last = asyncio.CancelledError()
                                failed_now = True
                                continue
                            exc = task.exception()
                            if exc is None:
                                finished(start, len(tasks), None)
                                return task.result()
                            last = exc
                            failed_now = True
                            if not classify(exc).outcome.is_failure:
                                finished(start, len(tasks), exc)
                                raise exc  # PERMANENT: the answer, not bad luck
                    elif not can_hedge:
                        assert last is not None
                        finished(start, len(tasks), last)
                        raise last
                    still_running = any(not task.done() for task in tasks)
                    if not can_hedge:
                        continue
                    if failed_now and still_running:
                        continue  # others are still going; hedge on the timer as usual
                    if budget is not None and not budget.try_withdraw():
                        hedges = max_hedges  # budget spent: no more hedges for this call
                        continue
                    hedges += 1
                    started(hedges + 1, "failure" if failed_now else "delay")
                    tasks.append(asyncio.ensure_future(inner(fn, args, kwargs)))
            finally:
                losers = [task for task in tasks if not task.done()]
                for task in losers:
                    task.cancel()
                if losers:
                    await asyncio.gather(*losers, return_exceptions=True)

        return acall
