"""What a fault point does: the injected errors, latency distributions, timing windows and
plans (``stoic.chaos.faults``). Everything here is validated once, when a point or plan is built."""

from __future__ import annotations

import builtins
import importlib
import inspect
import json
import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias, cast

__all__ = [
    "ErrorSpec",
    "FaultSpec",
    "Fixed",
    "InjectedFault",
    "InjectedStatusError",
    "Latency",
    "LatencySpec",
    "Normal",
    "Plan",
    "Uniform",
    "WhenSpec",
    "first",
    "load_plan",
    "read_document",
    "window",
]


class InjectedFault(Exception):
    """Raised by a fault point when ``error`` was given as a name that is not an exception."""


class InjectedStatusError(InjectedFault):
    """An injected HTTP-like failure; ``classify`` treats it like ``classify_status(status)``."""

    def __init__(self, status: int, fault: str) -> None:
        super().__init__(f"injected HTTP {status} at fault point {fault!r}")
        self.status = status
        self.fault = fault


@dataclass(frozen=True, slots=True)
class Fixed:
    """Always ``seconds`` of latency."""

    seconds: float

    def __post_init__(self) -> None:
        if self.seconds < 0:
            raise ValueError(f"latency seconds must be >= 0, got {self.seconds!r}")

    def sample(self, rng: random.Random) -> float:
        return self.seconds


@dataclass(frozen=True, slots=True)
class Uniform:
    """Latency uniform in ``[low, high]`` seconds."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not 0 <= self.low <= self.high:
            raise ValueError(
                f"latency must satisfy 0 <= low <= high, got {self.low!r}, {self.high!r}"
            )

    def sample(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)


@dataclass(frozen=True, slots=True)
class Normal:
    """Latency normal around ``mean`` seconds (``stddev``), never below zero."""

    mean: float
    stddev: float

    def __post_init__(self) -> None:
        if self.mean < 0 or self.stddev < 0:
            raise ValueError(f"mean and stddev must be >= 0, got {self.mean!r}, {self.stddev!r}")

    def sample(self, rng: random.Random) -> float:
        return max(0.0, rng.gauss(self.mean, self.stddev))


Latency: TypeAlias = "Fixed | Uniform | Normal"


@dataclass(frozen=True, slots=True)
class _First:
    calls: int

    def __call__(self, call: int, elapsed: float) -> bool:
        return call <= self.calls


@dataclass(frozen=True, slots=True)
class _Window:
    start: float
    end: float

    def __call__(self, call: int, elapsed: float) -> bool:
        return self.start <= elapsed < self.end


def first(calls: int) -> Callable[[int, float], bool]:
    """Inject only into the first ``calls`` calls after ``enable()``."""
    if isinstance(calls, bool) or not isinstance(calls, int) or calls < 0:
        raise ValueError(f"first(calls) must be an integer >= 0, got {calls!r}")
    return _First(calls)


def window(start: float, end: float) -> Callable[[int, float], bool]:
    """Inject only from ``start`` to ``end`` seconds after ``enable()``."""
    if not 0 <= start <= end:
        raise ValueError(f"window must satisfy 0 <= start <= end, got {start!r}, {end!r}")
    return _Window(float(start), float(end))


ErrorSpec: TypeAlias = "BaseException | type[BaseException] | int | str | None"
LatencySpec: TypeAlias = "Latency | float | tuple[float, float] | Mapping[str, Any] | None"
WhenSpec: TypeAlias = (
    "Callable[[int, float], bool] | Callable[[], bool] | int | tuple[float, float] | None"
)


def _error(value: ErrorSpec) -> BaseException | type[BaseException] | int | None:
    if value is None or isinstance(value, BaseException):
        return value
    if isinstance(value, bool):
        raise ValueError(f"error must be an exception, a name or a status, got {value!r}")
    if isinstance(value, int):
        if not 100 <= value <= 599:
            raise ValueError(f"error status must be in 100..599, got {value!r}")
        return value
    if isinstance(value, type) and issubclass(value, BaseException):
        return value
    if isinstance(value, str):
        if value.isdigit():
            return _error(int(value))
        found = _exception_by_name(value)
        if found is None:
            raise ValueError(f"error names no exception class: {value!r}")
        return found
    raise ValueError(f"error must be an exception, a name or a status, got {value!r}")


def _exception_by_name(name: str) -> type[BaseException] | None:
    module_name, sep, attr = name.rpartition(":") if ":" in name else name.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), attr) if sep else getattr(
            builtins, name, None
        )
    except (ImportError, AttributeError):
        return None
    return found if isinstance(found, type) and issubclass(found, BaseException) else None


def _latency(value: LatencySpec) -> Latency | None:
    if value is None or isinstance(value, (Fixed, Uniform, Normal)):
        return value
    if isinstance(value, bool):
        raise ValueError(f"latency must be seconds, (low, high) or a distribution, got {value!r}")
    if isinstance(value, (int, float)):
        return Fixed(float(value))
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return Uniform(float(value[0]), float(value[1]))
    if isinstance(value, Mapping) and len(value) == 1:
        ((kind, args),) = value.items()
        if kind == "fixed":
            return Fixed(float(args))
        if kind in ("uniform", "normal") and isinstance(args, (list, tuple)) and len(args) == 2:
            cls = Uniform if kind == "uniform" else Normal
            return cls(float(args[0]), float(args[1]))
    raise ValueError(f"latency must be seconds, (low, high) or a distribution, got {value!r}")


def _when(value: WhenSpec) -> Callable[[int, float], bool] | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"when must be first(n), window(a, b) or a callable, got {value!r}")
    if isinstance(value, int):
        return first(value)
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return window(float(value[0]), float(value[1]))
    if callable(value):
        try:
            parameters = len(inspect.signature(value).parameters)
        except (TypeError, ValueError):
            parameters = 2
        if parameters == 0:
            no_args = cast(Callable[[], bool], value)
            return lambda call, elapsed: bool(no_args())
        return cast(Callable[[int, float], bool], value)
    raise ValueError(f"when must be first(n), window(a, b) or a callable, got {value!r}")


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """What one fault point does when enabled: validated once, shared by every call."""

    error: BaseException | type[BaseException] | int | None = None
    rate: float = 0.0
    latency: Latency | None = None
    when: Callable[[int, float], bool] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.rate, bool) or not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"rate must be between 0 and 1, got {self.rate!r}")

    @classmethod
    def build(
        cls, error: ErrorSpec = None, rate: float = 0.0, latency: LatencySpec = None,
        when: WhenSpec = None,
    ) -> FaultSpec:
        return cls(_error(error), float(rate), _latency(latency), _when(when))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FaultSpec:
        """A plan entry: ``error``, ``rate``, ``latency``, and ``first`` or ``window``."""
        unknown = set(data) - {"error", "rate", "latency", "first", "window"}
        if unknown:
            raise ValueError(f"unknown fault plan keys: {sorted(unknown)}")
        if "first" in data and "window" in data:
            raise ValueError("a fault plan entry takes first or window, not both")
        when: WhenSpec = None
        if "first" in data:
            when = first(data["first"])
        elif "window" in data:
            start, end = data["window"]
            when = window(start, end)
        return cls.build(data.get("error"), data.get("rate", 0.0), data.get("latency"), when)


@dataclass(frozen=True, slots=True)
class Plan:
    """Fault points by name, and an optional seed for repeatable runs."""

    faults: Mapping[str, FaultSpec]
    seed: int | None = None


def read_document(path: Path) -> Any:
    """A JSON file, or YAML by its ``.yaml``/``.yml`` suffix; ValueError if it does not parse.

    Shared by fault plans and the proxy's config file. OSError (a missing file) passes by.
    """
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() not in (".yaml", ".yml"):
        return json.loads(text)  # JSONDecodeError is a ValueError
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ValueError(f"{path}: reading YAML needs PyYAML: pip install pyyaml") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None


def load_plan(source: str | os.PathLike[str] | Mapping[str, Any]) -> Plan:
    """A plan from a mapping, a JSON/YAML file path, or JSON text. ValueError if malformed."""
    data: Any
    if isinstance(source, Mapping):
        data = source
    else:
        text = str(source)
        if text.lstrip().startswith("{"):
            data = json.loads(text)
        else:
            data = read_document(Path(source))
    if not isinstance(data, Mapping):
        raise ValueError(f"a fault plan must be an object, got {type(data).__name__}")
    faults = data.get("faults", {})
    if not isinstance(faults, Mapping):
        raise ValueError("plan 'faults' must map fault names to settings")
    seed_value = data.get("seed")
    if seed_value is not None and (isinstance(seed_value, bool) or not isinstance(seed_value, int)):
        raise ValueError(f"plan seed must be an integer, got {seed_value!r}")
    specs = {}
    for name, entry in faults.items():
        if not isinstance(entry, Mapping):
            raise ValueError(f"fault {name!r}: settings must be an object, got {entry!r}")
        try:
            specs[str(name)] = FaultSpec.from_json(entry)
        except ValueError as exc:
            raise ValueError(f"fault {name!r}: {exc}") from None
    return Plan(specs, seed_value)


