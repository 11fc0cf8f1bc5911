"""The breaker's settings: one frozen, validated object shared by every call and thread."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..._validate import count, is_number, non_empty, number, rate, seconds
from .windows import CountWindow, TimeWindow

if TYPE_CHECKING:
    from ...state import SharedState

__all__ = ["BreakerConfig"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerConfig:
    """What a ``CircuitBreaker`` was told; see its docstring for each setting.

    Durations are float seconds. ``max_open_for`` None means: ``open_for`` when the open
    period does not grow, else ten times ``open_for``. ``backend`` None keeps state local.
    """

    name: str
    failure_rate: float = 0.5
    slow_call_rate: float = 1.0
    slow_call_duration: float | None = None
    window: CountWindow | TimeWindow = field(default_factory=CountWindow)
    minimum_calls: int = 20
    open_for: float = 30.0
    half_open_calls: int = 5
    backend: SharedState | None = None
    open_for_growth: float = 1.0
    max_open_for: float | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise once, here
        non_empty("name", self.name)
        set_(self, "failure_rate", rate("failure_rate", self.failure_rate))
        set_(self, "slow_call_rate", rate("slow_call_rate", self.slow_call_rate))
        if self.slow_call_duration is not None:
            set_(self, "slow_call_duration", seconds(
                "slow_call_duration", self.slow_call_duration, optional=True
            ))
        if not isinstance(self.window, (CountWindow, TimeWindow)):
            raise ValueError(f"window must be a CountWindow or a TimeWindow, got {self.window!r}")
        count("minimum_calls", self.minimum_calls)
        open_for = seconds("open_for", self.open_for, finite=True)
        set_(self, "open_for", open_for)
        count("half_open_calls", self.half_open_calls)
        growth = number("open_for_growth", self.open_for_growth, at_least=1)
        set_(self, "open_for_growth", growth)
        longest = self.max_open_for
        if longest is None:
            longest = open_for if growth == 1.0 else open_for * 10
        elif not (is_number(longest) and open_for <= longest < math.inf):
            raise ValueError(
                f"max_open_for must be >= open_for ({open_for!r}) or None, got {longest!r}"
            )
        set_(self, "max_open_for", float(longest))
        backend = self.backend
        if backend is not None and not hasattr(backend, "attach"):
            raise ValueError(f"backend must be a stoic.state backend or None, got {backend!r}")
