"""``WorkflowHandle``: a started run, as ``Workflows.start`` returns it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import WorkflowNotFound
from .store import PARKED, TERMINAL, RunRecord, Status, StepRecord

if TYPE_CHECKING:
    from .engine import Workflows

__all__ = ["WorkflowHandle"]


@dataclass(frozen=True, slots=True, repr=False)
class WorkflowHandle:
    """A started run: ask for its status or wait for its result."""

    _flows: Workflows
    id: str

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.id!r})"

    def info(self) -> RunRecord:
        run = self._flows.store.get(self.id)
        if run is None:
            raise WorkflowNotFound(f"no workflow run {self.id!r}")
        return run

    def status(self) -> Status:
        return Status(self.info().status)

    def steps(self) -> list[StepRecord]:
        return self._flows.store.steps(self.id)

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the run to end and return its result.

        Raises ``WorkflowFailed`` (failed or cancelled), ``WorkflowDiverged`` or
        ``WorkflowNeedsAttention`` (parked), ``TimeoutError`` after ``timeout`` real seconds.
        Some worker must be running the run (this process's or another's).
        """
        flows = self._flows
        # Real time on purpose: this waits for other threads or processes, whose progress a
        # virtual clock in this thread would not follow.
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            generation = flows.generation
            run = self.info()
            if run.status in TERMINAL or run.status in PARKED:
                return flows.outcome(run)
            left = 0.1 if end is None else min(0.1, end - time.monotonic())
            if left <= 0:
                raise TimeoutError(f"workflow {self.id!r} is still {run.status} after "
                                   f"{timeout} s")
            flows.wait_change(generation, left)

    def cancel(self) -> Status | None:
        return self._flows.cancel(self.id)

    def signal(self, name: str, payload: Any = None) -> None:
        self._flows.signal(self.id, name, payload)
