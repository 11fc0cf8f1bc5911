"""Durable workflows: multi-step work that finishes through outages and crashes.

See ``docs/workflows.md``. ``Workflows`` is the entry point; the stores are
``SQLiteStore`` (embedded default), ``PostgresStore`` (the ``postgres`` extra) and
``MemoryStore`` (tests).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .context import AsyncWorkflowContext, WorkflowContext
from .engine import Worker, WorkflowHandle, Workflows, default_retry
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
from .events import (
    CompensationRan,
    StepCompleted,
    StepFailed,
    WorkflowFinished,
    WorkflowLeaseLost,
    WorkflowParked,
    WorkflowRecovered,
    WorkflowStarted,
)
from .memory import MemoryStore
from .store import RunRecord, Status, StepRecord, Store

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


def __getattr__(name: str) -> Any:
    try:
        module_name = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'stoic.workflow' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
