"""The engine's tracing hook: how a tracer (OpenTelemetry) sees runs, passes and step attempts.

The engine imports nothing beyond the standard library. A tracing backend installs one
``WorkflowTracer`` with ``set_tracer`` (``stoic.observability.otel.instrument`` does); with
none installed (the default) the engine makes one module-attribute check per pass and per
step attempt, and nothing else.

- ``traceparent()`` is asked by ``start()``: the W3C ``traceparent`` of the starter's active
  span, stored with the run (its ``trace`` column), or None.
- ``run_pass(run, recovered)`` wraps one pass of a claimed run. The run's stored
  ``traceparent`` lets the pass's span join the starter's trace in whatever process and
  after however many recoveries. It yields a function the engine calls with the pass's
  outcome (the status the pass left the run in, or ``lease_lost`` / ``error``).
- ``step_attempt(run, step, kind, key, attempt)`` wraps one attempt of a step (or a
  compensation) while it runs, inside its pass.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol

from .store import RunRecord

__all__ = ["WorkflowTracer", "set_tracer", "tracer"]


class WorkflowTracer(Protocol):
    """What a tracing backend gives the workflow engine."""

    def traceparent(self) -> str | None:
        """The W3C ``traceparent`` of the active span, or None when no span is active."""
        ...

    def run_pass(
        self, run: RunRecord, recovered: bool
    ) -> AbstractContextManager[Callable[[str], None]]:
        """A scope around one pass of ``run``; yields ``set_outcome(outcome)``."""
        ...

    def step_attempt(
        self, run: RunRecord, step: str, kind: str, key: str, attempt: int
    ) -> AbstractContextManager[object]:
        """A scope around one attempt of a step (``kind`` ``step`` or ``compensate``)."""
        ...


_tracer: WorkflowTracer | None = None


def set_tracer(installed: WorkflowTracer | None) -> None:
    """Install (or with None, remove) the tracer the engine reports runs and steps to."""
    global _tracer
    _tracer = installed


def tracer() -> WorkflowTracer | None:
    """The installed tracer, or None."""
    return _tracer
