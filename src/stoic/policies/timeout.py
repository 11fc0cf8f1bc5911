"""Timeout: bound one call's time, and make the bound visible to everything inside it.

Async calls are cancelled when the time is up and ``DeadlineExceeded`` (a ``TimeoutError``)
is raised. Synchronous code cannot be interrupted safely from outside, so for sync calls
``Timeout`` sets the deadline in context for the duration of the call: stoic's integrations
(httpx, requests, database helpers) turn it into socket timeouts, and your code can read
``stoic.remaining()``. If the call returns after the deadline, its result is discarded and
``DeadlineExceeded`` is raised. A call whose deadline already passed is not started.

The effective limit is the earlier of ``seconds`` and any deadline already in context.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from typing import Any

from .. import clock
from .._validate import seconds as check_seconds
from ..context import deadline_at, reset_deadline, set_deadline
from ..errors import DeadlineExceeded
from ..events import CallRejected, DeadlineExpired, dispatcher
from .base import AsyncStep, Policy, Step
from .settings import Configured, PolicyConfig, setting

__all__ = ["Timeout", "TimeoutConfig"]



@dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutConfig(PolicyConfig):
    """What a ``Timeout`` was told, validated and frozen."""

    default_name = "timeout"
    seconds: float

    def _check(self) -> None:
        if self.seconds == float("inf"):
            raise ValueError("seconds must be finite; leave the Timeout out for no limit")
        self._normalise("seconds", check_seconds("seconds", self.seconds))


class Timeout(Configured, Policy):
    """Limit each call to ``seconds`` (float seconds, > 0).

    The settings are read-only (``timeout.config``); ``replace(seconds=...)`` builds a new one.
    """

    config: TimeoutConfig
    seconds = setting[float]()
    name = setting[str]()

    def __init__(self, seconds: float, *, name: str | None = None) -> None:
        self._build(TimeoutConfig(seconds=seconds, name=name or ""))

    def _build(self, config: TimeoutConfig) -> None:
        self.config = config
        self._seconds, self._name = config.seconds, config.name  # read on every call
        self._compose()

    def __repr__(self) -> str:
        return f"Timeout({self.seconds})"

    def _start(self) -> tuple[float, Any]:
        """The deadline for this call, set in context; raises if it has already passed."""
        now = clock.monotonic()
        at = now + self._seconds
        outer = deadline_at()
        if outer is not None and outer < at:
            at = outer
        if at <= now:
            if dispatcher.sinks:
                dispatcher.emit(
                    CallRejected(name=self._name, policy="timeout", reason="deadline_exceeded")
                )
            raise DeadlineExceeded(f"deadline passed before {self._name!r} started")
        return at, set_deadline(at)

    def _expired(self, at: float, started: bool = True) -> DeadlineExceeded:
        overrun = clock.monotonic() - at
        if dispatcher.sinks:
            dispatcher.emit(
                DeadlineExpired(
                    name=self._name, timeout=self._seconds, overrun=overrun, started=started
                )
            )
        return DeadlineExceeded(
            f"{self._name!r} took longer than its deadline ({self._seconds}s limit)"
        )

    def wrap(self, inner: Step) -> Step:
        start, expired = self._start, self._expired

        def call(fn: Any, args: Any, kwargs: Any) -> Any:
            at, token = start()
            try:
                result = inner(fn, args, kwargs)
            finally:
                reset_deadline(token)
            if clock.monotonic() > at:
                raise expired(at)
            return result

        return call

    def awrap(self, inner: AsyncStep) -> AsyncStep:
        start, expired = self._start, self._expired

        async def acall(fn: Any, args: Any, kwargs: Any) -> Any:
            at, token = start()
            try:
                return await _run_until(inner(fn, args, kwargs), at, expired)
            finally:
                reset_deadline(token)

        return acall


if sys.version_info >= (3, 11):

    async def _run_until(aw: Any, at: float, expired: Any) -> Any:
        loop = asyncio.get_running_loop()
        # the loop's own clock, so a virtual clock that drives the loop drives this too
        when = loop.time() + (at - clock.monotonic())
        cm = asyncio.timeout_at(when)
        try:
            async with cm:
                return await aw
        except TimeoutError as exc:
            if cm.expired():
                raise expired(at) from exc
            raise

else:  # pragma: no cover - Python 3.10

    async def _run_until(aw: Any, at: float, expired: Any) -> Any:
        try:
            return await asyncio.wait_for(aw, max(0.0, at - clock.monotonic()))
        except asyncio.TimeoutError as exc:
            if clock.monotonic() >= at:
                raise expired(at) from exc
            raise
