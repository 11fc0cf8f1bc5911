"""``Monkey``: strike a random member of a group at random, seeded intervals."""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Literal

from .supervisor import Supervisor

__all__ = ["Monkey", "MonkeyStruck"]


# the monkey


@dataclass(frozen=True, slots=True)
class MonkeyStruck:
    """One strike: ``delay`` seconds after the previous one, ``action`` on ``target``."""

    delay: float
    target: str
    action: str


@dataclass(eq=False, repr=False)
class Monkey:
    """Kill (or pause, or terminate) a random member of ``group`` at random intervals.

    Intervals are uniform in ``[min_interval, max_interval]`` seconds and targets uniform over
    ``group``, both from ``random.Random(seed)``: the same seed gives the same ``plan``. With
    ``restart_after`` a struck process is restarted (or resumed, after a pause) that many
    seconds later. ``start()`` runs the schedule on a thread until ``stop()`` or ``rounds``.
    """

    supervisor: Supervisor
    group: Sequence[str]
    _: KW_ONLY
    min_interval: float
    max_interval: float
    seed: int | None = None
    action: Literal["kill", "terminate", "pause"] = "kill"
    restart_after: float | None = None
    rounds: int | None = None
    history: list[MonkeyStruck] = field(default_factory=list, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        min_interval, max_interval = self.min_interval, self.max_interval
        if not self.group:
            raise ValueError("group must name at least one process")
        if min_interval < 0:
            raise ValueError(f"min_interval must be >= 0 seconds, got {min_interval!r}")
        if max_interval < min_interval:
            raise ValueError(
                f"max_interval must be >= min_interval ({min_interval!r}), got {max_interval!r}"
            )
        if self.action not in ("kill", "terminate", "pause"):
            raise ValueError(f"action must be kill, terminate or pause, got {self.action!r}")
        if self.restart_after is not None and self.restart_after < 0:
            raise ValueError(f"restart_after must be >= 0 seconds, got {self.restart_after!r}")
        if self.rounds is not None and self.rounds < 0:
            raise ValueError(f"rounds must be >= 0, got {self.rounds!r}")
        self.group = tuple(self.group)

    def plan(self, rounds: int) -> list[MonkeyStruck]:
        """The first ``rounds`` strikes this monkey will make (the same for the same seed)."""
        rng = random.Random(self.seed)
        return [self._next(rng) for _ in range(rounds)]

    def _next(self, rng: random.Random) -> MonkeyStruck:
        delay = rng.uniform(self.min_interval, self.max_interval)
        return MonkeyStruck(delay=delay, target=rng.choice(self.group), action=self.action)

    def start(self) -> Monkey:
        if self._thread is not None:
            raise RuntimeError("monkey already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="stoic-monkey", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=30)

    def __enter__(self) -> Monkey:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        rng = random.Random(self.seed)
        done = 0
        while self.rounds is None or done < self.rounds:
            strike = self._next(rng)
            if self._stop.wait(strike.delay):
                return
            self._strike(strike)
            self.history.append(strike)
            done += 1
            if self.restart_after is not None:
                if self._stop.wait(self.restart_after):
                    return
                self._recover(strike.target)

    def _strike(self, strike: MonkeyStruck) -> None:
        with contextlib.suppress(KeyError):
            getattr(self.supervisor, strike.action)(strike.target)

    def _recover(self, target: str) -> None:
        with contextlib.suppress(KeyError, ValueError):
            if self.action == "pause":
                self.supervisor.resume(target)
            else:
                self.supervisor.restart(target)
