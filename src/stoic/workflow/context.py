"""The workflow context: ``ctx.step``, ``ctx.sleep``, ``ctx.wait_for``, ``ctx.publish``.

A workflow function is replayed from its start every time a worker picks its run up. Each
``ctx`` operation takes the next position in the run's history: when the history already
holds that position, the recorded outcome is returned (a step's result, a signal's payload)
without running anything; otherwise the operation runs and is recorded. So the function must
make the same ``ctx`` calls in the same order given the same recorded outcomes: keep
randomness, clocks and I/O inside steps.

A step is crash-exact: its intent (name, stable key ``<run id>/<step>/<occurrence>``) commits
before it runs, in the same commit as the previous step's result, and it runs with that key
bound (``stoic.context.using_idempotency_key``), so stoic's HTTP clients send it as
``Idempotency-Key`` and an inner ``Retry`` treats UNKNOWN failures as safe. A step found in
flight after a crash runs again with the same key; a ``once=True`` step found in flight
parks the run as ``needs_attention`` instead.

Waiting (``sleep``, ``wait_for``, a step's durable backoff) ends the current pass: the run is
stored with the time it is due and the worker moves on; nothing sleeps in a worker thread.

A recorded step failure replays as the same exception class when that class is defined in a
module the process has already imported (it is looked up, never imported; it is built with
the recorded arguments), and as ``StepError`` otherwise.

The per-pass state (``Execution``) lives in ``stoic.workflow.execution``; the two contexts
here only differ in how they call functions.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from ..policies.base import Policy
from .execution import Execution, StepCall

__all__ = ["AsyncWorkflowContext", "WorkflowContext"]


def _sync_invoke(call: StepCall) -> Any:
    fn, policy, args, kwargs = call.fn, call.policy, call.args, call.kwargs
    if inspect.iscoroutinefunction(fn):
        if policy is not None:
            return asyncio.run(policy.acall(fn, *args, **kwargs))
        return asyncio.run(fn(*args, **kwargs))
    if policy is not None:
        return policy.call(fn, *args, **kwargs)
    return fn(*args, **kwargs)


async def _async_invoke(call: StepCall) -> Any:
    fn, policy, args, kwargs = call.fn, call.policy, call.args, call.kwargs
    if inspect.iscoroutinefunction(fn):
        if policy is not None:
            return await policy.acall(fn, *args, **kwargs)
        return await fn(*args, **kwargs)
    value = policy.call(fn, *args, **kwargs) if policy is not None else fn(*args, **kwargs)
    if inspect.isawaitable(value):
        value = await value
    return value


def _check_step(name: str, fn: Any) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if not callable(fn):
        raise ValueError(f"fn must be callable, got {fn!r}")


class _Base:
    __slots__ = ("_ex",)

    def __init__(self, execution: Execution) -> None:
        self._ex = execution

    @property
    def workflow_id(self) -> str:
        """The id of the run."""
        return self._ex.run.id

    @property
    def key(self) -> str | None:
        """The idempotency key of the step running now (None between steps).

        Stable across retries and recoveries: ``<run id>/<step name>/<occurrence>``.
        """
        return self._ex.key


class WorkflowContext(_Base):
    """What a synchronous workflow function receives as ``ctx``."""

    __slots__ = ()

    def step(
        self, name: str, fn: Callable[..., Any], /, *args: Any,
        compensate: Callable[..., Any] | None = None, policy: Policy | None = None,
        once: bool = False, **kwargs: Any,
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` as step ``name`` once per run, and return its result.

        ``policy``: a stoic policy or Pipeline the call goes through (a TRANSIENT or THROTTLED
        failure it gives up on is retried later by the engine, durably). ``compensate``: run
        with the same arguments, in reverse step order, if the workflow fails afterwards.
        ``once``: the step's downstream cannot de-duplicate, so it is never run again after
        an unknown outcome; the run parks as ``needs_attention`` instead.
        """
        _check_step(name, fn)
        return self._call(StepCall(name, "step", fn, args, kwargs, policy, once, compensate))

    def _call(self, call: StepCall) -> Any:
        attempt = self._ex.attempt(call)
        if not attempt.done:
            with attempt:
                attempt.value = _sync_invoke(call)
        return attempt.value

    def sleep(self, seconds: float, *, name: str = "sleep") -> None:
        """Sleep durably: the run is due again at the stored wake time, across restarts."""
        self._ex.sleep(seconds, name)

    def wait_for(self, event: str, timeout: float | None = None) -> Any:
        """The payload of the next signal ``event`` sent to this run (signals sent before the
        wait are kept). Raises ``TimeoutError`` after ``timeout`` seconds (durable)."""
        return self._ex.wait_for(event, timeout)

    def publish(self, target: Any, topic: str, payload: Any) -> str:
        """Publish ``payload`` once per run; returns the message id (the step's key).

        With a ``stoic.messaging.Outbox`` the message is written in the same commit as the
        run's next checkpoint (the store must be the outbox's database); with a broker it is
        published at once with a stable id, which the broker's de-duplication absorbs if a
        crash makes the run publish it again.
        """
        return self._ex.publish(target, topic, payload)

    def run(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """The engine's driver for one pass of a synchronous workflow function."""
        ex = self._ex
        with ex.ending():
            try:
                value = fn(self, *args, **kwargs)
            except BaseException as exc:
                ex.check_failure(exc)
                ex.fail(exc, [ex.compensated(c, self._compensate(c))
                              for c in ex.begin_compensation()])
            else:
                ex.complete(value)

    def _compensate(self, call: StepCall) -> Exception | None:
        try:
            self._call(call)
        except Exception as failure:  # recorded as the compensation's outcome
            return failure
        return None


class AsyncWorkflowContext(_Base):
    """What an ``async def`` workflow function receives as ``ctx``: the same operations,
    awaited."""

    __slots__ = ()

    async def step(
        self, name: str, fn: Callable[..., Any], /, *args: Any,
        compensate: Callable[..., Any] | None = None, policy: Policy | None = None,
        once: bool = False, **kwargs: Any,
    ) -> Any:
        """As ``WorkflowContext.step``; ``fn`` may be sync or async."""
        _check_step(name, fn)
        return await self._call(StepCall(name, "step", fn, args, kwargs, policy, once,
                                         compensate))

    async def _call(self, call: StepCall) -> Any:
        attempt = self._ex.attempt(call)
        if attempt.done:
            return attempt.value
        with attempt:
            attempt.value = await _async_invoke(call)
        return attempt.value

    async def sleep(self, seconds: float, *, name: str = "sleep") -> None:
        """As ``WorkflowContext.sleep``."""
        self._ex.sleep(seconds, name)

    async def wait_for(self, event: str, timeout: float | None = None) -> Any:
        """As ``WorkflowContext.wait_for``."""
        return self._ex.wait_for(event, timeout)

    async def publish(self, target: Any, topic: str, payload: Any) -> str:
        """As ``WorkflowContext.publish``."""
        return self._ex.publish(target, topic, payload)

    async def run(self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> None:
        """The engine's driver for one pass of an async workflow function."""
        ex = self._ex
        with ex.ending():
            try:
                value = await fn(self, *args, **kwargs)
            except BaseException as exc:
                ex.check_failure(exc)
                ex.fail(exc, [ex.compensated(c, await self._compensate(c))
                              for c in ex.begin_compensation()])
            else:
                ex.complete(value)

    async def _compensate(self, call: StepCall) -> Exception | None:
        try:
            await self._call(call)
        except Exception as failure:  # recorded as the compensation's outcome
            return failure
        return None
