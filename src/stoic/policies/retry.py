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

The decision (``next_delay``, and the closure behind it) is plain code without I/O, written
once; ``call`` and ``acall`` are thin loops around it that do the calling and the sleeping.
The settings are a frozen ``RetryConfig``: a Retry never changes after it is built, so every
call path and the decision read the same budget, backoff and limits (``replace`` builds a
new Retry).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from .. import clock
from .._deprecate import renamed
from .._validate import count, non_empty, seconds
from ..context import deadline_at, idempotency_key
from ..events import RetryGaveUp, RetryScheduled, dispatcher
from ..outcome import Outcome, Verdict, classify
from . import retry_loop
from .backoff import Backoff, exponential
from .base import AsyncStep, Policy, Step, ainvoke, invoke
from .budget import RetryBudget
from .settings import Configured, setting
from .twins import unasync

__all__ = ["OnException", "Retry", "RetryConfig", "add_note", "compile_on"]

_log = logging.getLogger("stoic")
_EXHAUSTED = frozenset({"attempts", "max_time", "deadline", "budget", "retry_after"})

OnException = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]



@dataclass(frozen=True, slots=True, kw_only=True)
class RetryConfig:
    """What a ``Retry`` was told, validated and frozen; see ``Retry`` for each setting."""

    max_attempts: int = 3
    backoff: Backoff = field(default_factory=exponential)
    max_time: float | None = None
    idempotent: bool = False
    on: OnException | None = None
    budget: RetryBudget | None = None
    respect_retry_after: bool = True
    name: str = "retry"
    on_result: Callable[[Any], bool] | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise once, here
        count("max_attempts", self.max_attempts)
        if not isinstance(self.backoff, Backoff):
            raise ValueError(f"backoff must be a stoic.backoff schedule, got {self.backoff!r}")
        if self.max_time is not None:
            set_(self, "max_time", seconds("max_time", self.max_time, optional=True))
        if self.budget is not None and not isinstance(self.budget, RetryBudget):
            raise ValueError(f"budget must be a RetryBudget or None, got {self.budget!r}")
        if self.on_result is not None and not callable(self.on_result):
            raise ValueError(f"on_result must be callable or None, got {self.on_result!r}")
        non_empty("name", self.name)
        set_(self, "idempotent", bool(self.idempotent))
        set_(self, "respect_retry_after", bool(self.respect_retry_after))
        compile_on(self.on)  # validates ``on``


#: A decision: ``(attempts made, start of the first, the last wait, error) -> wait or None``.
Decide = Callable[[int, float, float, "BaseException | None"], "float | None"]


class Retry(Configured, Policy):
    """Retry failed calls when, and only when, retrying is safe.

    Args:
        max_attempts: total attempts including the first (>= 1). ``attempts=`` is its old
            name, still accepted (deprecated: a message's ``attempts`` is a running count).
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

    The settings are read-only (``retry.config`` holds them all); ``replace`` makes a
    changed copy.
    """

    config: RetryConfig

    def __init__(
        self,
        max_attempts: int = 3,
        backoff: Backoff | None = None,
        max_time: float | None = None,
        idempotent: bool = False,
        on: OnException | None = None,
        budget: RetryBudget | None = None,
        respect_retry_after: bool = True,
        name: str | None = None,
        *,
        on_result: Callable[[Any], bool] | None = None,
        attempts: int | None = None,
    ) -> None:
        max_attempts = renamed("Retry", "attempts", "max_attempts", attempts, max_attempts,
                               new_given=max_attempts != 3, note=" (the cap on attempts)")
        self._build(RetryConfig(
            max_attempts=max_attempts, backoff=exponential() if backoff is None else backoff,
            max_time=max_time, idempotent=idempotent, on=on, budget=budget,
            respect_retry_after=respect_retry_after, name=name or "retry", on_result=on_result,
        ))

    def _build(self, config: RetryConfig) -> None:
        self.config = config
        self._override = compile_on(config.on)
        self._decide = _decider(config, self._override)
        self._compose()

    # --- settings (read-only: they read ``config``) -----------------------------------------

    max_attempts = setting[int]()
    attempts = setting[int]("max_attempts")  # its old name, kept readable
    backoff = setting[Backoff]()
    max_time = setting["float | None"]()
    idempotent = setting[bool]()
    on = setting["OnException | None"]()
    on_result = setting["Callable[[Any], bool] | None"]()
    budget = setting["RetryBudget | None"]()
    respect_retry_after = setting[bool]()
    name = setting[str]()

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
        idempotency key), ``max_attempts``, ``max_time`` (measured by ``elapsed``, the
        seconds since the first attempt began), the context deadline, ``Retry-After`` and the
        budget (a granted retry withdraws from it). ``attempt`` is how many attempts have been
        made (>= 1); ``previous`` is the last wait, for decorrelated jitter; ``error`` None
        means a result rejected by ``on_result``. Giving up adds the same note to ``error`` as
        a call would, and emits the same events.
        """
        count("attempt", attempt)
        seconds("elapsed", elapsed, zero=True)
        return self._decide(attempt, clock.monotonic() - elapsed, float(previous), error)

    def replace(self, **changes: Any) -> Retry:
        """A new Retry with this one's configuration and ``changes`` (same names as ``__init__``).

        For example ``retry.replace(idempotent=True)`` for the calls that may safely repeat.
        Unknown names raise ``TypeError``; values are validated as at construction.
        """
        if "attempts" in changes:  # the old name of max_attempts
            changes["max_attempts"] = changes.pop("attempts")
        if "name" in changes:
            changes["name"] = changes["name"] or "retry"
        if "backoff" in changes and changes["backoff"] is None:
            changes["backoff"] = exponential()
        return super().replace(**changes)

    def __repr__(self) -> str:
        return (
            f"Retry(name={self.name!r}, max_attempts={self.max_attempts}, "
            f"backoff={self.backoff!r}, max_time={self.max_time}, idempotent={self.idempotent})"
        )

    # --- the loops: one per mode, written once (``retry_loop``) -------------------------------

    def wrap(self, inner: Step) -> Step:
        config = self.config
        return _SYNC["step"](  # type: ignore[no-any-return]
            self._decide, config.name, config.budget, config.on_result, inner, inner is invoke
        )

    def awrap(self, inner: AsyncStep) -> AsyncStep:
        config = self.config
        return retry_loop.step(
            self._decide, config.name, config.budget, config.on_result, inner, inner is ainvoke
        )


# The loop around the one decision is written once, as async code, in ``retry_loop``; its
# sync twin is derived from it (``twins.unasync``), so the two cannot drift apart.
_SYNC = unasync(retry_loop, renames={"acall": "call", "asleep": "sleep"})


# --- the decision, written once ------------------------------------------------------------


def _decider(config: RetryConfig, override: Callable[[BaseException], bool] | None) -> Decide:
    """Build the decision for ``config``: settings bound as locals, so a retry reads no attribute."""
    max_attempts, backoff, max_time = config.max_attempts, config.backoff, config.max_time
    idempotent, budget, name = config.idempotent, config.budget, config.name
    respect_retry_after, longest = config.respect_retry_after, backoff.max
    # a fixed wait needs no arithmetic per retry; None means "ask the backoff"
    fixed = backoff.jitter is None and backoff.factor == 1 and backoff.step == 0
    constant = backoff.initial if fixed else None
    transient, throttled, unknown = Outcome.TRANSIENT, Outcome.THROTTLED, Outcome.UNKNOWN
    debug_enabled, DEBUG = _log.isEnabledFor, logging.DEBUG
    monotonic = clock.now  # a retry reads the clock only to check a limit or to give up

    def decide(
        attempt: int, start: float, previous: float, exc: BaseException | None
    ) -> float | None:
        """Seconds to wait before the next attempt, or None to give up (noted on ``exc``)."""
        stop = ""
        if exc is None:  # a bad result (on_result)
            verdict = _BAD_RESULT
        else:
            verdict = classify(exc)
            outcome = verdict.outcome
            if override is not None:
                if not override(exc):
                    stop = "not retryable (on= did not match)"
            elif outcome is unknown:
                if not idempotent and idempotency_key() is None:
                    stop = "not idempotent (the failed attempt may have taken effect)"
            elif outcome is not transient and outcome is not throttled:
                stop = "not retryable"
        wait = 0.0
        if stop:
            pass
        elif attempt >= max_attempts:
            stop = "attempts"
        else:
            wait = constant if constant is not None else backoff.delay(attempt, previous)
            retry_after = verdict.retry_after
            if retry_after is not None and respect_retry_after:
                if retry_after > longest:
                    stop = "retry_after"
                elif retry_after > wait:
                    wait = retry_after
            if not stop:
                at = deadline_at()
                if max_time is not None or at is not None:  # the clock is read only if needed
                    now = monotonic()
                    if max_time is not None and now - start + wait > max_time:
                        stop = "max_time"
                    elif at is not None and now + wait >= at:
                        stop = "deadline"
                if not stop and budget is not None and not budget.try_withdraw():
                    stop = "budget"
        if stop:
            _give_up(config, attempt, monotonic() - start, exc, verdict, stop)
            return None
        if dispatcher.sinks:
            dispatcher.emit(
                RetryScheduled(
                    name=name, attempt=attempt, wait=wait,
                    outcome=verdict.outcome.value, error_type=_type_name(exc),
                )
            )
        if debug_enabled(DEBUG):
            _log.debug(
                "stoic retry %s: attempt %d failed (%s, %s); retrying in %.3fs",
                name, attempt, verdict.outcome.name, _type_name(exc), wait,
            )
        return wait

    return decide


def _give_up(
    config: RetryConfig, attempts: int, elapsed: float, exc: BaseException | None,
    verdict: Verdict, stop: str,
) -> None:
    name = config.name
    detail = {
        "attempts": f"all {config.max_attempts} attempts used",
        "max_time": f"the next wait would pass max_time={config.max_time}s",
        "deadline": "the next wait would pass the deadline",
        "budget": "the retry budget is spent",
        "retry_after": (
            f"retry_after={verdict.retry_after}s exceeds the backoff max={config.backoff.max}s"
        ),
    }.get(stop, stop)
    if exc is not None:
        what = f"{verdict.outcome.name}"
        if verdict.reason:
            what += f": {verdict.reason}"
        add_note(
            exc,
            f"stoic.Retry({name!r}) gave up after {attempts} "
            f"attempt{'s' if attempts != 1 else ''} in {elapsed:.3f}s: {detail} "
            f"(last failure {what})",
        )
    if stop in _EXHAUSTED:
        _log.warning(
            "stoic retry %s gave up after %d attempts in %.3fs: %s (%s)",
            name, attempts, elapsed, detail, _type_name(exc),
        )
    if dispatcher.sinks:
        dispatcher.emit(
            RetryGaveUp(
                name=name, attempts=attempts, elapsed=elapsed,
                reason=stop.split(" (")[0], outcome=verdict.outcome.value,
                error_type=_type_name(exc),
            )
        )
    record = dispatcher.record
    if record is not None:
        record("retry", name, verdict.outcome.value, elapsed, attempts, _type_name(exc))


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


def compile_on(on: OnException | None) -> Callable[[BaseException], bool] | None:
    """``on=`` as a predicate on the exception (None for None); ``ValueError`` when malformed.

    Shared by every policy that takes ``on=`` (``Retry``, ``Fallback``), so it means one thing.
    """
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
