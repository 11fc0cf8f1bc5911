"""Durable workflows: multi-step work that finishes through outages and crashes.

See ``docs/workflows.md``. ``Workflows`` is the entry point; the stores are
``SQLiteStore`` (embedded default), ``PostgresStore`` (the ``postgres`` extra) and
``MemoryStore`` (tests).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports
from .context import AsyncWorkflowContext, WorkflowContext
from .engine import Workflows, default_retry
from .errors import (
    CompensationOutcome,
    StaleLease,
    StepError,
    UnknownWorkflow,
    WorkflowConflict,
    WorkflowDiverged,
    WorkflowError,
    WorkflowFailed,
    WorkflowNeedsAttention,
    WorkflowNotFound,
)

# Explicit re-exports, one per line.
from .events import CompensationRan as CompensationRan
from .events import StepCompleted as StepCompleted
from .events import StepFailed as StepFailed
from .events import WorkflowEvent as WorkflowEvent
from .events import WorkflowFinished as WorkflowFinished
from .events import WorkflowLeaseLost as WorkflowLeaseLost
from .events import WorkflowParked as WorkflowParked
from .events import WorkflowRecovered as WorkflowRecovered
from .events import WorkflowStarted as WorkflowStarted
from .handle import WorkflowHandle
from .memory import MemoryStore
from .store import RunRecord, Status, StepRecord, Store
from .worker import Worker

if TYPE_CHECKING:
    from .postgres import PostgresStore
    from .sqlite import SQLiteStore

__all__ = [
    "AsyncWorkflowContext",
    "CompensationOutcome",
    "CompensationRan",
    "MemoryStore",
    "PostgresStore",
    "RunRecord",
    "SQLiteStore",
    "StaleLease",
    "Status",
    "StepCompleted",
    "StepError",
    "StepFailed",
    "StepRecord",
    "Store",
    "UnknownWorkflow",
    "Worker",
    "WorkflowConflict",
    "WorkflowContext",
    "WorkflowDiverged",
    "WorkflowError",
    "WorkflowEvent",
    "WorkflowFailed",
    "WorkflowFinished",
    "WorkflowHandle",
    "WorkflowLeaseLost",
    "WorkflowNeedsAttention",
    "WorkflowNotFound",
    "WorkflowParked",
    "WorkflowRecovered",
    "WorkflowStarted",
    "Workflows",
    "default_retry",
]

_LAZY = {"SQLiteStore": "stoic.workflow.sqlite", "PostgresStore": "stoic.workflow.postgres"}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__, globals())
