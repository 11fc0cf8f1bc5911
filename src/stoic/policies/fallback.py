"""Fallback: answer with a substitute when the call fails.

``value_or_fn`` is either the value to return, or a function of the exception (sync, or
async for async calls) that returns it. ``on`` limits which failures fall back: exception
types, or a predicate on the exception; by default every ``Exception``. Cancellation is never
caught. To return a callable as the value itself, wrap it: ``Fallback(lambda exc: my_fn)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..events import dispatcher
from .base import AsyncStep, Policy, Step
from .retry import OnException, compile_on
from .settings import Configured, PolicyConfig, setting

__all__ = ["Fallback", "FallbackConfig"]


@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackConfig(PolicyConfig):
    """What a ``Fallback`` was told, frozen (``on`` validated)."""

    default_name = "fallback"
    value_or_fn: Any
    on: OnException | None = None

    def _check(self) -> None:
        compile_on(self.on)  # validates ``on``


class Fallback(Configured, Policy):
    """Return ``value_or_fn`` (or its result) instead of raising.

    The settings are read-only (``fallback.config``); ``replace`` builds a changed Fallback.
    """

    config: FallbackConfig
    value_or_fn = setting[Any]()
    on = setting["OnException | None"]()
    name = setting[str]()

    def __init__(
        self, value_or_fn: Any, on: OnException | None = None, *, name: str | None = None
    ) -> None:
        self._build(FallbackConfig(value_or_fn=value_or_fn, on=on, name=name or ""))

    def _build(self, config: FallbackConfig) -> None:
        self.config = config
        self._matches: Callable[[BaseException], bool] = compile_on(config.on) or _any
        self._compose()

    def _note(self, exc: BaseException) -> None:
        record = dispatcher.record
        if record is not None:
            record(
                "fallback", self.config.name, "fallback", 0.0, 1, type(exc).__name__
            )

    def wrap(self, inner: Step) -> Step:
        matches, note, value = self._matches, self._note, self.config.value_or_fn
        is_fn = callable(value)

        def call(fn: Any, args: Any, kwargs: Any) -> Any:
            try:
                return inner(fn, args, kwargs)
            except Exception as exc:
                if not matches(exc):
                    raise
                note(exc)
                return value(exc) if is_fn else value

        return call

    def awrap(self, inner: AsyncStep) -> AsyncStep:
        matches, note, value = self._matches, self._note, self.config.value_or_fn
        is_fn = callable(value)

        async def acall(fn: Any, args: Any, kwargs: Any) -> Any:
            try:
                return await inner(fn, args, kwargs)
            except Exception as exc:
                if not matches(exc):
                    raise
                note(exc)
                if not is_fn:
                    return value
                result = value(exc)
                if inspect.isawaitable(result):
                    return await result
                return result

        return acall


def _any(exc: BaseException) -> bool:
    return True
