"""Building a policy file's tables into pipelines, with errors that name the key."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from ..policies.base import Policy
from ..policies.pipeline import Pipeline
from .errors import ConfigError
from .reading import SHORTHAND, apply_environment

__all__ = ["BUILDERS", "ORDER", "Built", "Part", "build_policies"]

#: The default nesting, outermost first (Resilience4j's order).
ORDER = ("retry", "breaker", "rate_limit", "timeout", "bulkhead")


_BACKOFF_FIELDS = {
    "exponential": ("initial", "factor", "max", "jitter"),
    "linear": ("initial", "step", "max", "jitter"),
    "constant": ("delay", "max", "jitter"),
}


class Part:
    """One part of a policy's table, for building with errors that name the key."""

    __slots__ = ("aliases", "key", "origins", "source", "values")

    def __init__(self, source: str, key: str, values: dict[str, Any],
                 origins: Mapping[str, str]) -> None:
        self.source, self.key, self.values, self.origins = source, key, values, origins
        self.aliases: dict[str, str] = {}  # constructor argument -> the key the file used

    def error(self, field: str | None, value: Any, reason: str) -> ConfigError:
        key = self.key if field is None else f"{self.key}.{field}"
        return ConfigError(self.origins.get(key, self.source), key, value, reason)

    def check_fields(self, allowed: tuple[str, ...]) -> None:
        for field, value in self.values.items():
            if field not in allowed:
                raise self.error(field, value, f"unknown field; expected one of {', '.join(allowed)}")

    def build(self, factory: Callable[..., Any], **kwargs: Any) -> Any:
        """``factory(**kwargs)``, with a ``ValueError``/``TypeError`` naming the field."""
        try:
            return factory(**kwargs)
        except (ValueError, TypeError) as exc:
            message = str(exc)
            for field in sorted(kwargs, key=len, reverse=True):
                if message.startswith(field) or f" {field} " in f" {message}":
                    key = self.aliases.get(field, field)
                    raise self.error(key, self.values.get(key, kwargs[field]), message) from exc
            if len(kwargs) == 1:  # a helper with one input (a window size): that input
                field = next(iter(kwargs))
                raise self.error(field, self.values.get(field, kwargs[field]), message) from exc
            raise self.error(None, self.values, message) from exc


def _backoff(part: Part, values: dict[str, Any]) -> Any:
    from ..policies import backoff as schedules

    kind = values.pop("backoff", "exponential")
    if kind not in _BACKOFF_FIELDS:
        raise part.error("backoff", kind, f"expected one of {', '.join(_BACKOFF_FIELDS)}")
    fields = _BACKOFF_FIELDS[kind]
    kwargs = {f: values.pop(f) for f in fields if f in values}
    if kwargs.get("jitter") == "none":
        kwargs["jitter"] = None
    return part.build(getattr(schedules, kind), **kwargs)


def _retry(part: Part, name: str) -> Policy:
    from .._validate import count
    from ..policies.budget import RetryBudget
    from ..policies.retry import Retry

    values = dict(part.values)
    part.check_fields(("attempts", "max_attempts", "backoff", "initial", "factor", "step",
                       "delay", "max", "jitter", "max_time", "idempotent",
                       "respect_retry_after", "budget", "name"))
    if "attempts" in values:  # a file's name for the cap; Retry's keyword is max_attempts
        if "max_attempts" in values:
            raise part.error("attempts", values["attempts"],
                             "give attempts or max_attempts (the same setting), not both")
        try:
            values["max_attempts"] = count("attempts", values.pop("attempts"))
        except ValueError as exc:
            raise part.error("attempts", part.values["attempts"], str(exc)) from exc
        part.aliases["max_attempts"] = "attempts"
    schedule = _backoff(part, values)
    budget = values.pop("budget", None)
    if budget is not None:
        if budget is False:
            budget = None
        elif not isinstance(budget, dict):
            raise part.error("budget", budget, "expected a table {ratio, min_per_second}")
        else:
            sub = Part(part.source, f"{part.key}.budget", budget, part.origins)
            sub.check_fields(("ratio", "min_per_second", "window"))
            budget = sub.build(RetryBudget, **budget)
    values.setdefault("name", name)
    return part.build(Retry, backoff=schedule, budget=budget, **values)  # type: ignore[no-any-return]


def _breaker(part: Part, name: str) -> Policy:
    from ..policies.breaker import CircuitBreaker, CountWindow, TimeWindow

    values = dict(part.values)
    part.check_fields(("name", "failure_rate", "slow_call_rate", "slow_call_duration",
                       "window", "window_seconds", "minimum_calls", "open_for",
                       "half_open_calls", "open_for_growth", "max_open_for"))
    if "window" in values and "window_seconds" in values:
        raise part.error("window_seconds", values["window_seconds"],
                         "give either window (calls) or window_seconds, not both")
    window = None
    if "window" in values:
        window = part.build(lambda window: CountWindow(window), window=values.pop("window"))
    elif "window_seconds" in values:
        window = part.build(lambda window_seconds: TimeWindow(window_seconds),
                            window_seconds=values.pop("window_seconds"))
    values.setdefault("name", name)
    return part.build(CircuitBreaker, window=window, **values)  # type: ignore[no-any-return]


def _simple(cls_path: str, fields: tuple[str, ...]) -> Callable[[Part, str], Policy]:
    def build(part: Part, name: str) -> Policy:
        module, _, cls_name = cls_path.rpartition(".")
        cls = getattr(importlib.import_module(module), cls_name)
        part.check_fields(fields)
        values = dict(part.values)
        values.setdefault("name", name)
        return part.build(cls, **values)  # type: ignore[no-any-return]

    return build


BUILDERS: dict[str, Callable[[Part, str], Policy]] = {
    "retry": _retry,
    "breaker": _breaker,
    "rate_limit": _simple("stoic.policies.ratelimit.RateLimiter",
                          ("rate", "per", "burst", "wait", "max_wait", "name")),
    "timeout": _simple("stoic.policies.timeout.Timeout", ("seconds", "name")),
    "bulkhead": _simple("stoic.policies.bulkhead.Bulkhead",
                        ("max_concurrent", "max_waiting", "wait_timeout", "name")),
}


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return (type(value).__name__, value)


class Built:
    """One generation of built policies: name -> (pipeline, resolved settings, parts)."""

    __slots__ = ("parts", "pipelines", "settings")

    def __init__(self) -> None:
        self.pipelines: dict[str, Pipeline] = {}
        self.settings: dict[str, dict[str, Any]] = {}
        self.parts: dict[tuple[str, str, Any], Policy] = {}


def build_policies(data: Mapping[str, Any], source: str, environ: Mapping[str, str],
           previous: Built | None) -> Built:
    unknown = sorted(set(data) - {"policies"})
    if unknown:
        raise ConfigError(source, unknown[0], data[unknown[0]],
                          "unknown top-level key; policies go under [policies.NAME]")
    policies = data.get("policies", {})
    if not isinstance(policies, dict):
        raise ConfigError(source, "policies", policies, "expected a table of named policies")
    policies = {k: (dict(v) if isinstance(v, dict) else v) for k, v in policies.items()}
    for table in policies.values():
        if isinstance(table, dict):
            for part, value in table.items():
                if isinstance(value, dict):
                    table[part] = dict(value)
    origins = apply_environment(policies, environ)
    built = Built()
    for name, table in policies.items():
        key = f"policies.{name}"
        if not isinstance(table, dict):
            raise ConfigError(origins.get(key, source), key, table, "expected a table")
        if not name or "." in name:
            raise ConfigError(source, key, name, "a policy name must be non-empty, without dots")
        order = table.get("order", ORDER)
        if not isinstance(order, (list, tuple)) or any(o not in BUILDERS for o in order) or (
            len(set(order)) != len(order)
        ):
            raise ConfigError(origins.get(f"{key}.order", source), f"{key}.order", order,
                              f"expected a list drawn from {', '.join(ORDER)}, each once")
        for part_name, value in table.items():
            if part_name != "order" and part_name not in BUILDERS:
                raise ConfigError(origins.get(f"{key}.{part_name}", source),
                                  f"{key}.{part_name}", value,
                                  f"unknown part; expected one of {', '.join(ORDER)}, order")
        parts: list[Policy] = []
        settings: dict[str, Any] = {}
        for part_name in order:
            if part_name not in table:
                continue
            values = table[part_name]
            if not isinstance(values, dict):
                values = {SHORTHAND.get(part_name, "value"): values}
            settings[part_name] = values
            identity = (name, part_name, _freeze(values))
            kept = previous.parts.get(identity) if previous is not None else None
            if kept is None:
                part = Part(source, f"{key}.{part_name}", values, origins)
                kept = BUILDERS[part_name](part, name)
            built.parts[identity] = kept
            parts.append(kept)
        if not parts:
            raise ConfigError(origins.get(key, source), key, table,
                              f"declares no policy; give at least one of {', '.join(ORDER)}")
        built.pipelines[name] = Pipeline(*parts)
        built.settings[name] = settings
    return built
