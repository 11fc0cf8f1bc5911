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
    "WorkflowEvent",
    "WorkflowFinished",
    "WorkflowLeaseLost",
    "WorkflowParked",
    "WorkflowRecovered",
    "WorkflowStarted",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowEvent(Event):
    """What every workflow event carries: ``name`` (the workflow) and ``workflow_id`` (the run).
    Subscribe to this class to see them all."""

    workflow_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowStarted(WorkflowEvent):
    """A new run was recorded by ``start()``."""

    version: int


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowRecovered(WorkflowEvent):
    """A worker took over a run whose previous worker's lease ran out (it crashed or hung)."""

    token: int
    worker: str


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowFinished(WorkflowEvent):
    """A run ended: ``status`` is ``completed``, ``failed`` or ``cancelled``."""

    status: str
    error_type: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowParked(WorkflowEvent):
    """A run stopped until someone acts: ``status`` is ``needs_attention`` or
    ``unknown_workflow``; ``reason`` says why."""

    status: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowLeaseLost(WorkflowEvent):
    """A worker's commit was refused: another worker holds the run with a newer token."""

    token: int
    worker: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StepCompleted(WorkflowEvent):
    """A step ran and returned (its checkpoint commits with the next boundary)."""

    step: str
    attempt: int
    duration: float


@dataclass(frozen=True, slots=True, kw_only=True)
class StepFailed(WorkflowEvent):
    """A step raised. ``retry_in`` is the durable backoff before the engine runs it again,
    or None when the step failed for good. ``duration``: seconds the attempt ran."""

    step: str
    attempt: int
    outcome: str
    error_type: str
    retry_in: float | None = None
    duration: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CompensationRan(WorkflowEvent):
    """A compensation of a failed or cancelled run ended: ``outcome`` is ``completed`` or
    ``failed``."""

    step: str
    outcome: str
