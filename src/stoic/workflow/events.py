"""Events of durable workflows (see ``stoic.events`` for sinks and the base class).

``name`` is the workflow's name (``"place-order"``); ``workflow_id`` is the run.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..events import Event

__all__ = [
    "CompensationRan",
    "StepCompleted",
    "StepFailed",
    "WorkflowFinished",
    "WorkflowLeaseLost",
    "WorkflowParked",
    "WorkflowRecovered",
    "WorkflowStarted",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowStarted(Event):
    """A new run was recorded by ``start()``."""

    workflow_id: str
    version: int


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowRecovered(Event):
    """A worker took over a run whose previous worker's lease ran out (it crashed or hung)."""

    workflow_id: str
    token: int
    worker: str


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowFinished(Event):
    """A run ended: ``status`` is ``completed``, ``failed`` or ``cancelled``."""

    workflow_id: str
    status: str
    error_type: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowParked(Event):
    """A run stopped until someone acts: ``status`` is ``needs_attention`` or
    ``unknown_workflow``; ``reason`` says why."""

    workflow_id: str
    status: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowLeaseLost(Event):
    """A worker's commit was refused: another worker holds the run with a newer token."""

    workflow_id: str
    token: int
    worker: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StepCompleted(Event):
    """A step ran and returned (its checkpoint commits with the next boundary)."""

    workflow_id: str
    step: str
    attempt: int
    duration: float


@dataclass(frozen=True, slots=True, kw_only=True)
class StepFailed(Event):
    """A step raised. ``retry_in`` is the durable backoff before the engine runs it again,
    or None when the step failed for good. ``duration``: seconds the attempt ran."""

    workflow_id: str
    step: str
    attempt: int
    outcome: str
    error_type: str
    retry_in: float | None = None
    duration: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CompensationRan(Event):
    """A compensation of a failed or cancelled run ended: ``outcome`` is ``completed`` or
    ``failed``."""

    workflow_id: str
    step: str
    outcome: str
