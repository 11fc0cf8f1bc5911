"""In-process fault injection: named fault points that fail or slow down on purpose.

Mark the places where a dependency is called::

    @stoic.chaos.fault("payments.charge", error=ConnectionResetError, rate=0.2)
    def charge(order): ...

    async with stoic.chaos.fault("inventory.reserve", latency=(0.05, 0.3), rate=1.0):
        ...

Nothing happens until faults are enabled, with ``stoic.chaos.enable()`` or by pointing the
``STOIC_CHAOS`` environment variable at a JSON or YAML plan (read once, when the first fault
point is created). While disabled, a fault point costs one flag check, so the marks can stay
in production code. ``rate`` is the probability of injecting per call; the default 0 keeps a
point dormant until a plan (or an explicit rate) turns it on.

A plan names fault points and says what they do; a plan entry replaces the point's own
arguments::

    {"seed": 7,
     "faults": {"payments.charge": {"error": 503, "rate": 0.5, "first": 10},
                "inventory.reserve": {"latency": {"uniform": [0.05, 0.3]}, "rate": 1.0,
                                      "window": [5, 20]}}}

``error`` is an exception class, an instance, an exception name (``"TimeoutError"``,
``"mypkg.errors:Busy"``) or an HTTP-like status (``503``: raises ``InjectedStatusError``,
classified like that status). ``latency`` is seconds: a number, ``(low, high)`` for uniform, or
``Normal(mean, stddev)``. ``when`` is ``first(n)`` calls, ``window(start, end)`` seconds after
``enable()``, or any callable returning a bool. When ``STOIC_CHAOS`` names a file, the file is
watched: rewriting it switches plans in the running process, and ``{"enabled": false}`` (or
deleting it) turns faults off. Latency sleeps through ``stoic.clock``, so it
runs on virtual time in tests. Every injection emits a ``FaultInjected`` event.

The state (on or off, the plan, the seeded generator, call counts) is one named registry in
this module, ``_state``; ``disable()`` turns it off and ``enable()`` starts it afresh. What a point
does (errors, latencies, windows, plans) is built and validated in ``fault_plans``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import random
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, cast

from .. import clock
from ..events import Event, dispatcher
from .fault_plans import (
    ErrorSpec,
    FaultSpec,
    Fixed,
    InjectedFault,
    InjectedStatusError,
    LatencySpec,
    Normal,
    Plan,
    Uniform,
    WhenSpec,
    first,
    load_plan,
    read_document,
    window,
)

__all__ = [
    "ENV_VAR",
    "Fault",
    "FaultInjected",
    "FaultSpec",
    "Fixed",
    "InjectedFault",
    "InjectedStatusError",
    "Normal",
    "Plan",
    "Uniform",
    "disable",
    "enable",
    "fault",
    "first",
    "is_enabled",
    "load_plan",
    "read_document",
    "seed",
    "window",
]

ENV_VAR = "STOIC_CHAOS"

F = TypeVar("F", bound=Callable[..., Any])


def _classify_status_error(exc: BaseException) -> Any:
    from ..outcome import classify_status

    return classify_status(exc.status) if isinstance(exc, InjectedStatusError) else None


# ---------------------------------------------------------------------------------------------
# the registry


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultInjected(Event):
    """Fault point ``name`` injected: ``latency`` seconds of delay and/or ``error_type``."""

    latency: float | None
    error_type: str | None


class _State:
    """The chaos switch, plan, generator and call counts (the module's one registry)."""

    __slots__ = ("calls", "enabled", "env_checked", "lock", "plan", "rng", "started")

    def __init__(self) -> None:
        self.enabled = False
        self.env_checked = False
        self.plan: Plan | None = None
        self.rng = random.Random()
        self.calls: dict[str, int] = {}
        self.started = 0.0
        self.lock = threading.Lock()


_state = _State()
# what ``Fault._decide`` answers when the fault does nothing this time: no delay, no error
_NOTHING: tuple[float, BaseException | None] = (0.0, None)


class _Enabled:
    """Returned by ``enable()``: use it as a context manager to disable on exit."""

    def __enter__(self) -> _Enabled:
        return self

    def __exit__(self, *exc_info: object) -> None:
        disable()


def enable(
    plan: Plan | Mapping[str, Any] | str | os.PathLike[str] | None = None, *,
    seed: int | None = None,
) -> _Enabled:
    """Turn fault injection on (with ``plan``, if given) and restart counts and windows.

    ``seed`` (or the plan's seed) makes every random choice repeatable. Returns an object
    that, used as ``with enable(...):``, disables again at the end of the block.
    """
    loaded = plan if isinstance(plan, Plan) or plan is None else load_plan(plan)
    with _state.lock:
        _state.env_checked = True
        _state.plan = loaded
        chosen = seed if seed is not None else (loaded.seed if loaded is not None else None)
        _state.rng = random.Random(chosen)
        _state.calls = {}
        _state.started = clock.now()
        _state.enabled = True
    return _Enabled()


def disable() -> None:
    """Turn fault injection off: every fault point passes straight through again."""
    with _state.lock:
        _state.enabled = False
        _state.plan = None


def is_enabled() -> bool:
    return _state.enabled


def seed(value: int | None) -> None:
    """Reseed the generator behind rates and latencies (for a repeatable run)."""
    with _state.lock:
        _state.rng = random.Random(value)


def _check_env() -> None:
    _state.env_checked = True
    source = os.environ.get(ENV_VAR)
    if not source:
        return
    if source.lstrip().startswith("{"):
        enable(load_plan(source))
        return
    _apply_plan_file(Path(source))
    watcher = threading.Thread(
        target=_watch_plan_file, args=(Path(source),), name="stoic-chaos-plan", daemon=True
    )
    watcher.start()


def _apply_plan_file(path: Path) -> None:
    """Enable the plan in ``path``; disable when the file is gone or says ``enabled: false``."""
    try:
        data = read_document(path)
        plan = load_plan(data)
    except FileNotFoundError:
        disable()
        return
    except ValueError:
        import logging

        logging.getLogger("stoic").exception("stoic chaos: ignoring a bad fault plan in %s", path)
        return
    if data.get("enabled") is False:  # load_plan accepted it, so it is a mapping
        disable()
    else:
        enable(plan)


def _watch_plan_file(path: Path, interval: float = 0.2) -> None:
    """Re-read the ``STOIC_CHAOS`` file when it changes, so a running service can be driven
    from outside (the Chaos Toolkit ``enable_fault_plan`` action writes this file). Runs only
    when the variable names a file; a service without it pays nothing."""
    last: tuple[float, int] | None = None
    with contextlib.suppress(OSError):
        found = path.stat()
        last = (found.st_mtime, found.st_size)
    stop = threading.Event()
    while not stop.wait(interval):
        try:
            found = path.stat()
            current: tuple[float, int] | None = (found.st_mtime, found.st_size)
        except OSError:
            current = None
        if current != last:
            last = current
            _apply_plan_file(path)


# ---------------------------------------------------------------------------------------------
# fault points


class Fault:
    """A named fault point: a decorator (sync or async) and a context manager (both kinds)."""

    __slots__ = ("name", "spec")

    def __init__(self, name: str, spec: FaultSpec) -> None:
        self.name = name
        self.spec = spec

    def __repr__(self) -> str:
        return f"Fault({self.name!r})"

    # the decision, written once for sync and async
    def _decide(self) -> tuple[float, BaseException | None]:
        """The delay to sleep and the error to raise this time (``_NOTHING``: neither)."""
        state = _state
        if not state.enabled:
            return _NOTHING
        plan = state.plan
        spec = plan.faults.get(self.name, self.spec) if plan is not None else self.spec
        if spec.rate <= 0.0 or (spec.error is None and spec.latency is None):
            return _NOTHING
        with state.lock:
            call = state.calls.get(self.name, 0) + 1
            state.calls[self.name] = call
            if spec.when is not None and not spec.when(call, clock.now() - state.started):
                return _NOTHING
            if spec.rate < 1.0 and not state.rng.random() < spec.rate:
                return _NOTHING
            delay = spec.latency.sample(state.rng) if spec.latency is not None else 0.0
        error = self._exception(spec.error)
        if dispatcher.sinks:
            dispatcher.emit(FaultInjected(
                name=self.name, latency=delay if spec.latency is not None else None,
                error_type=type(error).__name__ if error is not None else None,
            ))
        return delay, error

    def _exception(self, error: BaseException | type[BaseException] | int | None) -> (
        BaseException | None
    ):
        if error is None:
            return None
        if isinstance(error, int):
            from ..outcome import register_default

            register_default(InjectedStatusError, _classify_status_error)
            return InjectedStatusError(error, self.name)
        if isinstance(error, BaseException):
            return error
        try:
            return error(f"injected fault at {self.name!r}")
        except TypeError:
            return error()

    def inject(self) -> None:
        """Run the fault point once (sync): maybe sleep, maybe raise."""
        delay, error = self._decide()
        if delay > 0:
            clock.sleep(delay)
        if error is not None:
            raise error

    async def ainject(self) -> None:
        """Run the fault point once (async): maybe sleep without blocking the loop, maybe raise."""
        delay, error = self._decide()
        if delay > 0:
            await clock.asleep(delay)
        if error is not None:
            raise error

    def __call__(self, fn: F) -> F:
        if inspect.iscoroutinefunction(fn):
            afn = cast(Callable[..., Awaitable[Any]], fn)

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                if _state.enabled:
                    await self.ainject()
                return await afn(*args, **kwargs)

            return cast(F, async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if _state.enabled:
                self.inject()
            return fn(*args, **kwargs)

        return cast(F, wrapper)

    def __enter__(self) -> Fault:
        if _state.enabled:
            self.inject()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def __aenter__(self) -> Fault:
        if _state.enabled:
            await self.ainject()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


def fault(
    name: str, error: ErrorSpec = None, rate: float = 0.0, latency: LatencySpec = None,
    when: WhenSpec = None,
) -> Fault:
    """A fault point named ``name`` (see the module docstring). Arguments are validated here.

    The first call also reads the ``STOIC_CHAOS`` plan, if that variable is set.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    spec = FaultSpec.build(error, rate, latency, when)
    if not _state.env_checked:
        _check_env()
    return Fault(name, spec)
