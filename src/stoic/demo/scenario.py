"""The scripted chaos timeline: which fault starts and ends when, scaled to a run's duration.

A scenario is data (a tuple of ``Phase``), so the runner, the scorecard and the report all read
the same timeline. Phases are fractions of the run; the seed fixes every random choice (load
arrival times, which replies are lost, when inside its phase a process is killed), so a run
can be repeated.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["PHASES", "Fault", "Phase", "Scenario", "build_scenario"]

# (name, fraction of the run, faults active during it)
PHASES: tuple[tuple[str, float, tuple[str, ...]], ...] = (
    ("steady", 0.14, ()),
    ("payments slow", 0.12, ("payments_latency",)),
    ("payments losing replies", 0.13, ("payments_lose_replies",)),
    ("payments down", 0.12, ("payments_killed",)),
    ("payments back", 0.12, ()),
    ("inventory partitioned", 0.12, ("inventory_partition",)),
    ("worker killed", 0.12, ("worker_killed",)),
    ("recovery", 0.13, ()),
)

#: The phases that make up "the payments outage" in the scorecard.
OUTAGE_PHASES = ("payments slow", "payments losing replies", "payments down")


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault action at ``at`` seconds after the start: ``action`` is start or stop."""

    at: float
    kind: str
    action: str


@dataclass(frozen=True, slots=True)
class Phase:
    """A named window ``[start, end)`` in seconds after the start of the load."""

    name: str
    start: float
    end: float
    faults: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Scenario:
    """The timeline of one run: phases, the fault actions in time order, and fault settings."""

    duration: float
    seed: int
    phases: tuple[Phase, ...]
    actions: tuple[Fault, ...]
    payments_latency: float  # seconds added to each payments reply while slow
    payments_jitter: float
    lose_reply_rate: float  # share of charges whose reply is lost after the charge is made

    def phase_at(self, t: float) -> str:
        """The name of the phase running ``t`` seconds after the start ("drain" after it)."""
        for phase in self.phases:
            if phase.start <= t < phase.end:
                return phase.name
        return "drain" if t >= self.duration else self.phases[0].name

    def window(self, names: tuple[str, ...]) -> tuple[float, float]:
        """The span from the first to the last of the named phases, in seconds."""
        chosen = [p for p in self.phases if p.name in names]
        return min(p.start for p in chosen), max(p.end for p in chosen)

    def phase(self, name: str) -> Phase:
        """The phase called ``name``."""
        for phase in self.phases:
            if phase.name == name:
                return phase
        raise KeyError(name)


def build_scenario(duration: float, seed: int) -> Scenario:
    """Scale the standard timeline to ``duration`` seconds; ``seed`` fixes the random choices.

    The worker is killed at a seeded moment early in its phase and restarted after about a
    third of it; payments is killed at the start of its phase and restarted at its end.
    """
    if not duration >= 6.0:
        raise ValueError(f"duration must be >= 6 seconds, got {duration!r}")
    rng = random.Random(seed)
    phases: list[Phase] = []
    t = 0.0
    for name, share, faults in PHASES:
        end = t + share * duration
        phases.append(Phase(name, round(t, 3), round(end, 3), faults))
        t = end
    phases[-1] = Phase(phases[-1].name, phases[-1].start, float(duration), phases[-1].faults)
    actions: list[Fault] = []
    for phase in phases:
        for kind in phase.faults:
            start, end = phase.start, phase.end
            if kind == "worker_killed":
                length = end - start
                start = start + length * rng.uniform(0.1, 0.3)
                end = start + max(0.8, length * 0.35)
            actions.append(Fault(round(start, 3), kind, "start"))
            actions.append(Fault(round(end, 3), kind, "stop"))
    actions.sort(key=lambda a: (a.at, a.action != "stop"))
    return Scenario(
        duration=float(duration), seed=seed, phases=tuple(phases), actions=tuple(actions),
        payments_latency=0.35, payments_jitter=0.1, lose_reply_rate=0.3,
    )
