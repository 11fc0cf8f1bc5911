"""Helpers shared by the workflow tests (``from wfhelpers import ...``)."""

from __future__ import annotations

from stoic.testing import VirtualClock
from stoic.workflow import Workflows

__all__ = ["Crash", "crash_and_expire"]


class Crash(BaseException):
    """Stands for the process dying inside a step: nothing after it runs or commits."""


def crash_and_expire(flows: Workflows, clock: VirtualClock) -> None:
    """After a simulated crash: let the dead worker's lease run out."""
    clock.advance(flows.lease + 1.0)
