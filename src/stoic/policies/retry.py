"""Retry: try again only when it is safe, and never in a way that makes an outage worse.

A failed attempt is classified (``stoic.classify``). TRANSIENT and THROTTLED failures are
retried; UNKNOWN failures (the work may have happened) only when the call is idempotent, or
runs under an idempotency key; PERMANENT failures never. ``on=`` replaces classification
with the caller's own rule. Cancellation (``CancelledError``, ``KeyboardInterrupt``,
``SystemExit``) is never caught, so it is never retried or delayed.

Giving up re-raises the caller's own exception with a note (``add_note``) saying how many
attempts were made, in how long, and why it stopped: attempts, max_time, deadline, budget,
retry_after beyond the backoff's max, not retryable, or not idempotent. A wait that would
cross ``max_time`` or the context deadline is not slept: Retry gives up at once.

The decision (``_decide``) is plain code without I/O; ``call`` and ``acall`` are thin loops
around it that do the calling and the sleeping.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, cast

from .. import clock
from .._validate import count, seconds
from ..context import _deadline, _idempotency_key
from ..errors import DeadlineExceeded
from ..events import DeadlineExpired, RetryGaveUp, RetryScheduled, dispatcher
from ..outcome import Outcome, Verdict, classify
from .backoff import Backoff, exponential
from .base import AsyncStep, Policy, Step, ainvoke, invoke
from .budget import RetryBudget

__all__ = ["Retry", "add_note"]

_log = logging.getLogger("stoic")
_EXHAUSTED = frozenset({"attempts", "max_time", "deadline", "budget", "retry_after"})

OnException = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]


class _State:
    """Per-call bookkeeping, created only once a call has failed (or when observed)."""

    __slots__ = ("attempts", "previous", "start")

    def __init__(self, start: float, attempts: int) -> None:
        self.start = start
        self.attempts = attempts
        self.previous = 0.0


def _not_started(name: str) -> DeadlineExceeded:
    if dispatcher.sinks:
        dispatcher.emit(DeadlineExpired(name=name, timeout=None, overrun=0.0, started=False))
    return DeadlineExceeded(f"deadline passed before {name!r} started; the call was not made")


class Retry(Policy):
    """Retry failed calls when, and only when, retrying is safe.

    Args:
        attempts: total attempts including the first (>= 1).
        backoff: wait schedule; by default exponential from 0.1 s, doubling, capped at 5 s,
            with full jitter.
        max_time: give up rather than start a wait that would end more than this many
            seconds after the first attempt began.
        idempotent: the operation may safely run twice, so UNKNOWN failures are retried.
        on: exception types, or a predicate on the exception, that decide retrying instead
            of classification. Cancellation still never retries.
        on_result: a predicate on a returned value; True means "bad result, retry". When
            attempts run out the last result is returned.
        budget: a shared ``RetryBudget``; when it is spent, Retry gives up.
        respect_retry_after: THROTTLED failures wait at least their ``retry_after``.
        name: names this policy in events, logs and metrics.
    """

    def __init__(
        self,
        attempts: int = 3,
        backoff: Backoff | None = None,
        max_time: float | None = None,
        idempotent: bool = False,
        on: OnException | None = None,
        budget: RetryBudget | None = None,
        respect_retry_after: bool = True,
        name: str | None = None,
        *,
        on_result: Callable[[Any], bool] | None = None,
    ) -> None:
        count("attempts", attempts)
        if backoff is None:
            backoff = exponential()
        elif not isinstance(backoff, Backoff):
            raise ValueError(f"backoff must be a stoic.backoff schedule, got {backoff!r}")
        if max_time is not None:
            max_time = seconds("max_time", max_time, optional=True)
        if budget is not None and not isinstance(budget, RetryBudget):
            raise ValueError(f"budget must be a RetryBudget or None, got {budget!r}")
        if on_result is not None and not callable(on_result):
            raise ValueError(f"on_result must be callable or None, got {on_result!r}")
        self.attempts = attempts
        self.backoff = backoff
        self.max_time = max_time
        self.idempotent = bool(idempotent)
        self.on = on
        self.on_result = on_result
        self.budget = budget
        self.respect_retry_after = bool(respect_retry_after)
        self.name = name or "retry"
        self._override = _compile_on(on)
        # a fixed wait needs no arithmetic per retry; -1 means "ask the backoff"
        fixed = backoff.jitter is None and backoff.factor == 1 and backoff.step == 0
        self._constant = backoff.initial if fixed else -1.0
        self._compose()

    def on_matches(self, exc: BaseException) -> bool | None:
        """What ``on=`` says of ``exc``: True (retry it), False (do not), or None without ``on``.

        For code that runs retries itself (a queue worker redelivering a message) and must
        honour the same choice; with None, classification decides.
        """
        override = self._override
        return None if override is None else bool(override(exc))

    def next_delay(
        self, attempt: int, error: BaseException | None, *, elapsed: float = 0.0,
        previous: float = 0.0,
    ) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None to give up: Retry's decision.

        For code that runs its attempts itself (a queue worker redelivering a message, a
        workflow engine re-running a step later) and must retry exactly when a call through
        this Retry would: classification, ``on=``, idempotency (``idempotent=`` or a bound
        idempotency key), ``attempts``, ``max_time`` (measured by ``elapsed``, the seconds
        since the first attempt began), the context deadline, ``Retry-After`` and the budget
        (a granted retry withdraws from it). ``attempt`` is how many attempts have been made
        (>= 1); ``previous`` is the last wait, for decorrelated jitter; ``error`` None means
        a result rejected by ``on_result``. Giving up adds the same note to ``error`` as a
        call would, and emits the same events.
        """
        count("attempt", attempt)
        seconds("elapsed", elapsed, zero=True)
        state = _State(clock._monotonic() - elapsed, attempt)
        state.previous = float(previous)
        return self._decide(state, error)

    def replace(self, **changes: Any) -> Retry:
        """A new Retry with this one's configuration and ``changes`` (same names as ``__init__``).

        For example ``retry.replace(idempotent=True)`` for the calls that may safely repeat.
        Unknown names raise ``TypeError``; values are validated as at construction.
        """
        config: dict[str, Any] = {
            "attempts": self.attempts, "backoff": self.backoff, "max_time": self.max_time,
            "idempotent": self.idempotent, "on": self.on, "budget": self.budget,
            "respect_retry_after": self.respect_retry_after, "name": self.name,
            "on_result": self.on_result,
        }
        unknown = set(changes) - set(config)
        if unknown:
            raise TypeError(f"Retry.replace() got unknown parameters: {sorted(unknown)}")
        config.update(changes)
        return Retry(**config)

    def __repr__(self) -> str:
        return (
            f"Retry(name={self.name!r}, attempts={self.attempts}, backoff={self.backoff!r}, "
            f"max_time={self.max_time}, idempotent={self.idempotent})"
        )

    # --- the decision, written once -------------------------------------------------------

    def _decide(self, state: _State, exc: BaseException | None) -> float | None:
        """Seconds to wait before the next attempt, or None to give up (noted on ``exc``)."""
        stop = ""
        if exc is None:  # a bad result (on_result)
            verdict = _BAD_RESULT
        else:
            verdict = classify(exc)
            override = self._override
            outcome = verdict.outcome
            if override is not None:
                if not override(exc):
                    stop = "not retryable (on= did not match)"
            elif outcome is Outcome.UNKNOWN:
                if not self.idempotent and _idempotency_key.get() is None:
                    stop = "not idempotent (the failed attempt may have taken effect)"
            elif outcome is not Outcome.TRANSIENT and outcome is not Outcome.THROTTLED:
                stop = "not retryable"
        now = clock._monotonic()
        wait = 0.0
        if stop:
            pass
        elif state.attempts >= self.attempts:
            stop = "attempts"
        else:
            wait = self._constant
            if wait < 0:
                wait = self.backoff.delay(state.attempts, state.previous)
            retry_after = verdict.retry_after
            if retry_after is not None and self.respect_retry_after:
                if retry_after > self.backoff.max:
                    stop = "retry_after"
                elif retry_after > wait:
                    wait = retry_after
            if not stop:
                if self.max_time is not None and now - state.start + wait > self.max_time:
                    stop = "max_time"
                else:
                    at = _deadline.get()
                    if at is not None and now + wait >= at:
                        stop = "deadline"
                    elif self.budget is not None and not self.budget.try_withdraw():
                        stop = "budget"
        if stop:
            self._give_up(state, exc, verdict, stop, now)
            return None
        state.previous = wait
        if dispatcher.sinks:
            dispatcher.emit(
                RetryScheduled(
                    name=self.name, attempt=state.attempts, wait=wait,
                    outcome=verdict.outcome.value, error_type=_type_name(exc),
                )
            )
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug(
                "stoic retry %s: attempt %d failed (%s, %s); retrying in %.3fs",
                self.name, state.attempts, verdict.outcome.name, _type_name(exc), wait,
            )
        return wait

    def _give_up(
        self, state: _State, exc: BaseException | None, verdict: Verdict, stop: str,
        now: float,
    ) -> None:
        elapsed = now - state.start
        detail = {
            "attempts": f"all {self.attempts} attempts used",
            "max_time": f"the next wait would pass max_time={self.max_time}s",
            "deadline": "the next wait would pass the deadline",
            "budget": "the retry budget is spent",
            "retry_after": (
                f"retry_after={verdict.retry_after}s exceeds the backoff max={self.backoff.max}s"
            ),
        }.get(stop, stop)
        if exc is not None:
            what = f"{verdict.outcome.name}"
            if verdict.reason:
                what += f": {verdict.reason}"
            add_note(
                exc,
                f"stoic.Retry({self.name!r}) gave up after {state.attempts} "
                f"attempt{'s' if state.attempts != 1 else ''} in {elapsed:.3f}s: {detail} "
                f"(last failure {what})",
            )
        if stop in _EXHAUSTED:
            _log.warning(
                "stoic retry %s gave up after %d attempts in %.3fs: %s (%s)",
                self.name, state.attempts, elapsed, detail, _type_name(exc),
            )
        if dispatcher.sinks:
            dispatcher.emit(
                RetryGaveUp(
                    name=self.name, attempts=state.attempts, elapsed=elapsed,
                    reason=stop.split(" (")[0], outcome=verdict.outcome.value,
                    error_type=_type_name(exc),
                )
            )
        record = dispatcher.record
        if record is not None:
            record(
                "retry", self.name, verdict.outcome.value, elapsed, state.attempts,
                _type_name(exc),
            )

    def _succeeded(self, state: _State) -> None:
        record = dispatcher.record
        if record is not None:
            record(
                "retry", self.name, "success", clock._monotonic() - state.start,
                state.attempts, None,
            )

    # --- the thin loops ---------------------------------------------------------------------
    # One function per mode: the first attempt runs inline (the happy path allocates nothing),
    # and only a failure, a bad result or a listener leads into the loop below it.

    def wrap(self, inner: Step) -> Step:
        decide, succeeded, name = self._decide, self._succeeded, self.name
        budget, on_result = self.budget, self.on_result
        observed = on_result is not None
        direct = inner is invoke

        def call(fn: Any, args: Any, kwargs: Any) -> Any:
            if budget is not None:
                budget.deposit()
            at = _deadline.get()
            start = clock._monotonic()
            if at is not None and start >= at:
                raise _not_started(name)
            if observed or dispatcher.attempt_scope is not None:
                state = _State(start, 0)
                wait = 0.0
            else:
                try:
                    if direct:
                        result = fn(*args, **kwargs)
                    else:
                        result = inner(fn, args, kwargs)
                except Exception as exc:
                    state = _State(start, 1)
                    first_wait = decide(state, exc)
                    if first_wait is None:
                        raise
                else:
                    record = dispatcher.record
                    if record is not None:
                        record("retry", name, "success", clock._monotonic() - start, 1, None)
                    return result
                wait = first_wait
            while True:
                if wait > 0:
                    clock.sleep(wait)
                state.attempts += 1
                scope = dispatcher.attempt_scope
                try:
                    if scope is None:
                        result = inner(fn, args, kwargs)
                    else:
                        with scope("retry", name, state.attempts):
                            result = inner(fn, args, kwargs)
                except Exception as exc:
                    next_wait = decide(state, exc)
                    if next_wait is None:
                        raise
                    wait = next_wait
                    continue
                if on_result is not None and on_result(result):
                    next_wait = decide(state, None)
                    if next_wait is not None:
                        wait = next_wait
                        continue
                succeeded(state)
                return result

        return call

    def awrap(self, inner: AsyncStep) -> AsyncStep:
        decide, succeeded, name = self._decide, self._succeeded, self.name
        budget, on_result = self.budget, self.on_result
        observed = on_result is not None
        direct = inner is ainvoke

        async def acall(fn: Any, args: Any, kwargs: Any) -> Any:
            if budget is not None:
                budget.deposit()
            at = _deadline.get()
            start = clock._monotonic()
            if at is not None and start >= at:
                raise _not_started(name)
            if observed or dispatcher.attempt_scope is not None:
                state = _State(start, 0)
                wait = 0.0
            else:
                try:
                    result = await (fn(*args, **kwargs) if direct else inner(fn, args, kwargs))
                except Exception as exc:
                    state = _State(start, 1)
                    first_wait = decide(state, exc)
                    if first_wait is None:
                        raise
                else:
                    record = dispatcher.record
                    if record is not None:
                        record("retry", name, "success", clock._monotonic() - start, 1, None)
                    return result
                wait = first_wait
            while True:
                if wait > 0:
                    await clock.asleep(wait)
                state.attempts += 1
                scope = dispatcher.attempt_scope
                try:
                    if scope is None:
                        result = await inner(fn, args, kwargs)
                    else:
                        with scope("retry", name, state.attempts):
                            result = await inner(fn, args, kwargs)
                except Exception as exc:
                    next_wait = decide(state, exc)
                    if next_wait is None:
                        raise
                    wait = next_wait
                    continue
                if on_result is not None and on_result(result):
                    next_wait = decide(state, None)
                    if next_wait is not None:
                        wait = next_wait
                        continue
                succeeded(state)
                return result

        return acall


_BAD_RESULT = Verdict(Outcome.TRANSIENT, None, "result rejected by on_result")


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)``, also on Python 3.10 (where tracebacks do not print notes)."""
    adder = getattr(exc, "add_note", None)
    if adder is not None:
        adder(note)
        return
    notes = getattr(exc, "__notes__", None)
    if not isinstance(notes, list):
        notes = []
        exc.__notes__ = notes  # type: ignore[attr-defined]
    notes.append(note)


def _type_name(exc: BaseException | None) -> str:
    return "BadResult" if exc is None else type(exc).__name__


def _compile_on(on: OnException | None) -> Callable[[BaseException], bool] | None:
    if on is None:
        return None
    if isinstance(on, type) and issubclass(on, BaseException):
        types: tuple[type[BaseException], ...] = (on,)
    elif isinstance(on, tuple) and on and all(
        isinstance(t, type) and issubclass(t, BaseException) for t in on
    ):
        types = on
    elif callable(on):
        return cast("Callable[[BaseException], bool]", on)
    else:
        raise ValueError(
            f"on must be an exception type, a tuple of them, or a predicate, got {on!r}"
        )
    return lambda exc: isinstance(exc, types)
