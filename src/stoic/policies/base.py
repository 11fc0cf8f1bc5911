"""The policy contract: how a policy composes, decorates and calls.

A policy turns the next step of a call into a new step, once, at construction:
``wrap(inner) -> call`` for synchronous code and ``awrap(ainner) -> acall`` for coroutines.
A step has the signature ``step(fn, args, kwargs)``; the innermost one just runs ``fn``.
``Pipeline`` folds the wraps of its policies from the inside out, so a call only walks
closures that were built before it started. A policy written this way decorates sync and
async functions alike, and offers ``call`` and ``acall``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeAlias, TypeVar, overload

__all__ = ["AsyncStep", "Policy", "Step", "ainvoke", "invoke"]

P = ParamSpec("P")
T = TypeVar("T")

Step: TypeAlias = Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any]
AsyncStep: TypeAlias = Callable[
    [Callable[..., Awaitable[Any]], tuple[Any, ...], dict[str, Any]], Awaitable[Any]
]


def invoke(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The innermost synchronous step: run the user's function."""
    return fn(*args, **kwargs)


async def ainvoke(
    fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """The innermost asynchronous step: await the user's coroutine function."""
    return await fn(*args, **kwargs)


class Policy:
    """Base of every policy and of ``Pipeline``.

    Subclasses implement ``wrap`` and ``awrap`` and call ``self._compose()`` at the end of
    ``__init__``. Instances are safe to share between threads and tasks: per-call state lives
    in the closures' locals, shared state behind the subclass's own small lock.
    """

    _call: Step
    _acall: AsyncStep

    def wrap(self, inner: Step) -> Step:
        """Return the synchronous step that applies this policy around ``inner``."""
        raise NotImplementedError

    def awrap(self, inner: AsyncStep) -> AsyncStep:
        """Return the asynchronous step that applies this policy around ``inner``."""
        raise NotImplementedError

    def _compose(self) -> None:
        self._call = self.wrap(invoke)
        self._acall = self.awrap(ainvoke)

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` under this policy."""
        return self._call(fn, args, kwargs)  # type: ignore[no-any-return]

    async def acall(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Await ``fn(*args, **kwargs)`` under this policy."""
        return await self._acall(fn, args, kwargs)  # type: ignore[no-any-return]

    @overload
    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]: ...
    @overload
    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]: ...

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate ``fn``. A coroutine function stays a coroutine function."""
        if not callable(fn):
            raise TypeError(f"{type(self).__name__} decorates a callable, got {fn!r}")
        if inspect.iscoroutinefunction(fn):
            acall = self._acall

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await acall(fn, args, kwargs)

            return async_wrapper
        call = self._call

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            return call(fn, args, kwargs)

        return wrapper
