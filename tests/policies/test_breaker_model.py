"""The breaker's state machine checked against a plain reference model, on virtual time.

Hypothesis drives random sequences of calls that start and finish independently (so several
are in flight at once, including concurrent half-open trials), with successes, failures,
PERMANENT errors, slow calls, cancellations, time jumps and manual transitions. After every
step the breaker's state, and every admission or rejection, must match the model.
"""

from __future__ import annotations

import asyncio
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import stoic
from stoic.policies import breaker as breaker_module
from stoic.testing import VirtualClock, virtual_time

FAILURE, SLOW = 1, 2


class Model:
    """The specification, written as directly as possible."""

    def __init__(self, *, window: int | None, seconds: int | None, minimum: int, rate: float,
                 slow_rate: float, slow_after: float | None, open_for: float, trials: int,
                 growth: float, max_open: float) -> None:
        self.window, self.seconds, self.minimum = window, seconds, minimum
        self.rate, self.slow_rate, self.slow_after = rate, slow_rate, slow_after
        self.open_for, self.trials, self.growth, self.max_open = open_for, trials, growth, max_open
        self.state = "closed"
        self.records: list[tuple[float, int]] = []
        self.open_until = 0.0
        self.reopens = 0
        self.generation = 0
        self.admitted = self.done = self.failed = self.slowed = 0

    def _enter(self, state: str) -> None:
        self.state = state
        self.generation += 1
        self.admitted = self.done = self.failed = self.slowed = 0

    def _counts(self, now: float) -> tuple[int, int, int]:
        if self.window is not None:
            recent = [code for _, code in self.records[-self.window:]]
        else:
            assert self.seconds is not None
            recent = [code for at, code in self.records if int(at) > int(now) - self.seconds]
        return (len(recent), sum(1 for c in recent if c & FAILURE),
                sum(1 for c in recent if c & SLOW))

    def _trips(self, calls: int, failures: int, slow: int) -> bool:
        return failures >= self.rate * calls or slow >= self.slow_rate * calls

    def _open(self, now: float, reopen: bool) -> None:
        self.reopens = self.reopens + 1 if reopen else 0
        self._enter("open")
        self.open_until = now + min(self.open_for * self.growth ** self.reopens, self.max_open)

    def visible_state(self, now: float) -> str:
        if self.state == "open" and now >= self.open_until:
            return "half_open"
        return self.state

    def admit(self, now: float) -> tuple[str, Any]:
        """('closed'|'unrecorded'|'trial', generation) or ('rejected', retry_after)."""
        if self.state == "disabled":
            return "unrecorded", None
        if self.state == "forced_open":
            return "rejected", None
        if self.state == "closed":
            return "closed", None
        if self.state == "open":
            if now < self.open_until:
                return "rejected", self.open_until - now
            self._enter("half_open")
        if self.admitted < self.trials:
            self.admitted += 1
            return "trial", self.generation
        return "rejected", None

    def finish(self, kind: str, generation: Any, code: int, now: float) -> None:
        if kind == "closed":
            if self.state != "closed":
                return
            self.records.append((now, code))
            calls, failures, slow = self._counts(now)
            if calls >= self.minimum and self._trips(calls, failures, slow):
                self._open(now, reopen=False)
        elif kind == "trial":
            if generation != self.generation or self.state != "half_open":
                return
            self.done += 1
            self.failed += bool(code & FAILURE)
            self.slowed += bool(code & SLOW)
            if self.done == self.trials:
                if self._trips(self.done, self.failed, self.slowed):
                    self._open(now, reopen=True)
                else:
                    self._enter("closed")
                    self.records.clear()
                    self.reopens = 0

    def cancel(self, kind: str, generation: Any) -> None:
        if kind == "trial" and generation == self.generation and self.state == "half_open":
            self.admitted -= 1

    def manual(self, state: str) -> None:
        self._enter(state)
        self.records.clear()
        self.reopens = 0


class Flight:
    """One call in flight: its task, the future it waits on, and what the model admitted."""

    def __init__(self, task: asyncio.Task[Any], gate: asyncio.Future[Any], kind: str,
                 generation: Any, started: float) -> None:
        self.task, self.gate, self.kind = task, gate, kind
        self.generation, self.started = generation, started


class BreakerMachine(RuleBasedStateMachine):
    window: int | None = 5
    seconds: int | None = None
    slow_after: float | None = None

    def __init__(self) -> None:
        super().__init__()
        self.vt = virtual_time(start=1000.0)
        self.clock: VirtualClock = self.vt.__enter__()
        self.loop = asyncio.new_event_loop()
        breaker_module._reset_registry()
        config = dict(minimum=3, rate=0.5, slow_rate=0.6, open_for=10.0, trials=2,
                      growth=2.0, max_open=35.0)
        self.model = Model(window=self.window, seconds=self.seconds, slow_after=self.slow_after,
                           **config)  # type: ignore[arg-type]
        window = (stoic.CountWindow(self.window) if self.window is not None
                  else stoic.TimeWindow(seconds=self.seconds or 1))
        self.breaker = stoic.CircuitBreaker(
            "model", failure_rate=0.5, slow_call_rate=0.6, slow_call_duration=self.slow_after,
            window=window, minimum_calls=3, open_for=10.0, half_open_calls=2,
            open_for_growth=2.0, max_open_for=35.0,
        )
        self.flights: list[Flight] = []

    def teardown(self) -> None:
        for flight in self.flights:
            flight.task.cancel()
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()
        self.vt.__exit__(None, None, None)

    def _spin(self) -> None:
        for _ in range(3):
            self.loop.run_until_complete(asyncio.sleep(0))

    @rule()
    def start_call(self) -> None:
        now = self.clock.monotonic()
        kind, detail = self.model.admit(now)
        gate: asyncio.Future[Any] = self.loop.create_future()

        async def work() -> Any:
            return await gate

        task = self.loop.create_task(self.breaker.acall(work))
        self._spin()
        if kind == "rejected":
            assert task.done(), "the model rejects but the breaker admitted"
            error = task.exception()
            assert isinstance(error, stoic.CircuitOpenError)
            if detail is None:
                assert error.retry_after is None
            else:
                assert error.retry_after == pytest.approx(detail)
            return
        assert not task.done(), f"the model admits ({kind}) but the breaker rejected"
        self.flights.append(Flight(task, gate, kind, detail, now))

    @precondition(lambda self: self.flights)
    @rule(data=st.data(), outcome=st.sampled_from(["success", "failure", "permanent"]))
    def finish_call(self, data: st.DataObject, outcome: str) -> None:
        flight = self.flights.pop(data.draw(st.integers(0, len(self.flights) - 1)))
        now = self.clock.monotonic()
        code = FAILURE if outcome == "failure" else 0
        if self.slow_after is not None and now - flight.started >= self.slow_after:
            code |= SLOW
        if outcome == "success":
            flight.gate.set_result("ok")
        elif outcome == "failure":
            flight.gate.set_exception(ConnectionResetError("reset"))
        else:
            flight.gate.set_exception(ValueError("bad input"))
        self._spin()
        assert flight.task.done()
        if outcome == "success":
            assert flight.task.result() == "ok"
        else:
            assert flight.task.exception() is not None
        if flight.kind != "unrecorded":
            self.model.finish(flight.kind, flight.generation, code, now)

    @rule(outcome=st.sampled_from(["success", "failure", "permanent"]),
          duration=st.sampled_from([0.0, 0.5, 3.0]), decorated=st.booleans())
    def sync_call(self, outcome: str, duration: float, decorated: bool) -> None:
        """A whole call on the synchronous path (``call`` or the decorator) in one step."""
        now = self.clock.monotonic()
        kind, detail = self.model.admit(now)

        def work() -> str:
            self.clock.advance(duration)
            if outcome == "failure":
                raise ConnectionRefusedError("refused")
            if outcome == "permanent":
                raise ValueError("bad input")
            return "ok"

        run = self.breaker(work) if decorated else (lambda: self.breaker.call(work))
        try:
            result: Any = run()
        except Exception as exc:
            result = exc
        if kind == "rejected":
            assert isinstance(result, stoic.CircuitOpenError)
            if detail is None:
                assert result.retry_after is None
            else:
                assert result.retry_after == pytest.approx(detail)
            return
        assert not isinstance(result, stoic.CircuitOpenError)
        end = self.clock.monotonic()
        code = FAILURE if outcome == "failure" else 0
        if self.slow_after is not None and end - now >= self.slow_after:
            code |= SLOW
        if kind != "unrecorded":
            self.model.finish(kind, detail, code, end)

    @precondition(lambda self: self.flights)
    @rule(data=st.data())
    def cancel_call(self, data: st.DataObject) -> None:
        flight = self.flights.pop(data.draw(st.integers(0, len(self.flights) - 1)))
        flight.task.cancel()
        self._spin()
        assert flight.task.cancelled()
        self.model.cancel(flight.kind, flight.generation)

    @rule(seconds=st.sampled_from([0.3, 1.0, 2.5, 10.0, 20.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(action=st.sampled_from(["force_open", "disable", "reset"]))
    def manual(self, action: str) -> None:
        getattr(self.breaker, action)()
        self.model.manual({"force_open": "forced_open", "disable": "disabled",
                           "reset": "closed"}[action])

    @invariant()
    def states_agree(self) -> None:
        expected = self.model.visible_state(self.clock.monotonic())
        assert self.breaker.state.value == expected


class CountWindowMachine(BreakerMachine):
    window = 5


class SlowCallMachine(BreakerMachine):
    window = 4
    slow_after = 2.0


class TimeWindowMachine(BreakerMachine):
    window = None
    seconds = 3
    slow_after = 1.0


_settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestCountWindowStateMachine = CountWindowMachine.TestCase
TestCountWindowStateMachine.settings = _settings
TestSlowCallStateMachine = SlowCallMachine.TestCase
TestSlowCallStateMachine.settings = _settings
TestTimeWindowStateMachine = TimeWindowMachine.TestCase
TestTimeWindowStateMachine.settings = _settings
