"""Exceptions of durable workflows.

StoicError
    WorkflowError                 base of everything below
        WorkflowFailed            the workflow ended failed or cancelled; carries the cause and
                                  each compensation's outcome
        WorkflowDiverged          the code no longer matches the recorded step sequence
        WorkflowNeedsAttention    the run is parked (a ``once`` step in doubt, a divergence,
                                  a failed compensation) until someone resolves it
        WorkflowConflict          ``start()`` with an existing id and different arguments
                                  (also a ``ValueError``)
        WorkflowNotFound          no run with that id (also a ``LookupError``)
        UnknownWorkflow           no workflow of that name (and version) is registered
                                  (also a ``LookupError``)
        StaleLease                a worker whose lease was taken over tried to commit; the
                                  store refused its fencing token
        StepError                 a recorded step failure replayed in a process that cannot
                                  rebuild the original exception

A step's own exception is never wrapped: on the first run the workflow sees it as raised (with
a note), and on a replay it sees the same class rebuilt from the record when that class is
importable in the running process (see ``stoic.workflow.context``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any

from ..errors import StoicError
from ..policies.retry import add_note

__all__ = [
    "CompensationOutcome",
    "StaleLease",
    "StepError",
    "UnknownWorkflow",
    "WorkflowConflict",
    "WorkflowDiverged",
    "WorkflowError",
    "WorkflowFailed",
    "WorkflowNeedsAttention",
    "WorkflowNotFound",
    "replayed_error",
]


class WorkflowError(StoicError):
    """Base of the exceptions of ``stoic.workflow``."""


@dataclass(frozen=True, slots=True)
class CompensationOutcome:
    """How one compensation ended: ``outcome`` is ``"completed"`` or ``"failed"``."""

    step: str
    outcome: str
    error: str | None = None


@dataclass(eq=False, repr=False)
class WorkflowFailed(WorkflowError):
    """The workflow failed (an error escaped it, its deadline passed, or it was cancelled).

    ``error_type`` and ``message`` describe the cause (the original exception is not kept
    across processes); ``status`` is ``"failed"`` or ``"cancelled"``; ``compensations`` lists
    the compensations that ran, in the order they ran (reverse step order).
    """

    workflow_id: str
    _: KW_ONLY
    status: str
    error_type: str
    message: str
    compensations: Sequence[CompensationOutcome] = ()

    def __post_init__(self) -> None:
        self.compensations = tuple(self.compensations)
        ran = ", ".join(f"{c.step}: {c.outcome}" for c in self.compensations) or "none"
        super().__init__(
            f"workflow {self.workflow_id!r} {self.status}: {self.error_type}: {self.message}"
            f" (compensations: {ran})"
        )


@dataclass(eq=False, repr=False)
class WorkflowDiverged(WorkflowError):
    """A recovered run's code asks for a different step than the one recorded at that point.

    The engine never guesses how to map old history onto new code: the run is parked as
    ``needs_attention``. Register the old version next to the new one so old runs drain on
    the code that recorded them.
    """

    workflow: str
    _: KW_ONLY
    position: int
    recorded: str | None
    requested: str | None
    recorded_version: int
    code_version: int

    def __post_init__(self) -> None:
        def what(step: str | None) -> str:
            return repr(step) if step is not None else "nothing (the run ends here)"

        super().__init__(
            f"workflow {self.workflow!r} diverged at step #{self.position}: recorded by version "
            f"{self.recorded_version}: {what(self.recorded)}; code of version "
            f"{self.code_version} asks for {what(self.requested)}"
        )


@dataclass(eq=False, repr=False)
class WorkflowNeedsAttention(WorkflowError):
    """The run is parked; ``reason`` says why and what resolves it."""

    workflow_id: str
    reason: str

    def __post_init__(self) -> None:
        super().__init__(f"workflow {self.workflow_id!r} needs attention: {self.reason}")


class WorkflowConflict(WorkflowError, ValueError):
    """``start()`` reused an id with different arguments (or another workflow name)."""


class WorkflowNotFound(WorkflowError, LookupError):
    """No run with that id."""


class UnknownWorkflow(WorkflowError, LookupError):
    """No workflow of that name (and version) is registered on this ``Workflows``."""


class StaleLease(WorkflowError):
    """A commit came with a fencing token that is no longer current: another worker took
    the run over after this worker's lease expired. Nothing of the commit was written."""


@dataclass(eq=False, repr=False)
class StepError(WorkflowError):
    """A step failure replayed from the record, when the original exception class cannot be
    rebuilt in this process. ``error_type`` is the original class's qualified name."""

    step: str
    error_type: str
    message: str

    def __post_init__(self) -> None:
        super().__init__(f"step {self.step!r} failed: {self.error_type}: {self.message}")


def replayed_error(step: str, text: str | None) -> Exception:
    """The exception a recorded step failure (JSON ``text``) replays as: the same class when
    it is defined in a module already imported, built with the recorded arguments; else a
    ``StepError``."""
    info = json.loads(text or "{}")
    error_type, message = info.get("type", "Exception"), info.get("message", "")
    module = sys.modules.get(info.get("module", ""))
    found: Any = module
    for part in error_type.split("."):
        found = getattr(found, part, None) if found is not None else None
    if isinstance(found, type) and issubclass(found, Exception) and "args" in info:
        try:
            exc: Exception = found(*info["args"])
        except Exception:  # a class that cannot be rebuilt falls back
            pass
        else:
            add_note(exc, f"stoic.workflow: replayed from the record of step {step!r}")
            return exc
    return StepError(step, error_type, message)
