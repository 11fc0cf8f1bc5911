"""Policies declared in a configuration file, built once, looked up by name, reloaded live.

    # stoic.toml
    [policies.payments]
    retry = { attempts = 4, backoff = "exponential", initial = 0.1, max = 2.0 }
    breaker = { failure_rate = 0.5, minimum_calls = 20, open_for = 30 }
    timeout = 2.0

    registry = stoic.registry.load("stoic.toml")
    charge = registry["payments"].call(gateway.charge, order)

Each ``[policies.NAME]`` table declares one dependency's pipeline. Its parts are composed
outermost first in the order Resilience4j uses: ``retry``, ``breaker``, ``rate_limit``,
``timeout`` (per attempt), ``bulkhead``; an ``order = [...]`` list changes that. Every field
is the keyword argument of the same name of the stoic class it builds (``stoic.Retry``,
``stoic.CircuitBreaker``, ``stoic.RateLimiter``, ``stoic.Timeout``, ``stoic.Bulkhead``), so
the file and the code read alike (``retry.attempts`` is short for ``max_attempts``);
``retry.backoff`` names a schedule (``"exponential"``,
``"linear"``, ``"constant"``) whose parameters sit next to it.

Every field can be overridden from the environment, for a deploy that must differ from the
checked-in file: ``STOIC_POLICIES__PAYMENTS__RETRY__ATTEMPTS=6`` (``__`` separates the path;
names match case-insensitively; the value is read as a TOML value, else as a string).

A bad file fails as a whole, with a ``ConfigError`` (a ``ValueError``) naming the file, the
key and the value: nothing half-built is ever used. ``Registry.reload()`` re-reads the file
and swaps in the new pipelines at once: a call already running finishes on the pipeline it
started with, calls that start afterwards get the new one. Parts whose settings did not
change are kept, so a reload does not reset a breaker's state. ``Registry.watch()`` polls
the file and reloads when it changes; a bad edit is logged and the last good policies stay.

TOML needs Python 3.11 (``tomllib``) or the ``tomli`` package; YAML files (``.yaml``,
``.yml``) need the ``stoic[yaml]`` extra.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..policies.base import AsyncStep, Policy, Step
from ..policies.pipeline import Pipeline

__all__ = [
    "ORDER",
    "ConfigError",
    "NamedPolicy",
    "Registry",
    "Watcher",
    "configure",
    "from_mapping",
    "load",
    "policy",
]

_log = logging.getLogger("stoic.registry")

#: The default nesting, outermost first (Resilience4j's order).
ORDER = ("retry", "breaker", "rate_limit", "timeout", "bulkhead")
_ENV_PREFIX = "STOIC_POLICIES__"


class ConfigError(ValueError):
    """A configuration file (or environment override) declares something stoic cannot build.

    ``source`` is the file (or environment variable), ``key`` the dotted path of the bad
    entry, ``value`` what it held.
    """

    def __init__(self, source: str, key: str, value: Any, reason: str) -> None:
        super().__init__(f"{source}: {key} = {value!r}: {reason}")
        self.source = source
        self.key = key
        self.value = value
        self.reason = reason


# --- reading ---------------------------------------------------------------------------------


def _read(path: Path) -> dict[str, Any]:
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, "<file>", source, f"cannot read it ({exc.strerror})") from exc
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise ConfigError(source, "<file>", source,
                              "YAML needs the yaml extra: pip install 'stoic[yaml]'") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(source, "<file>", source, f"not valid YAML: {exc}") from exc
    else:
        try:
            data = _toml().loads(text)
        except ValueError as exc:  # tomllib.TOMLDecodeError names the line and column
            raise ConfigError(source, "<file>", source, f"not valid TOML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, "<file>", type(data).__name__, "the top level must be a table")
    return data


def _toml() -> Any:
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    try:  # Python 3.10
        import tomli  # type: ignore[import-not-found, unused-ignore]
    except ImportError as exc:
        raise ConfigError("<toml>", "<file>", None,
                          "TOML on Python 3.10 needs tomli: pip install tomli") from exc
    return tomli


def _env_value(raw: str) -> Any:
    try:
        return _toml().loads(f"v = {raw}")["v"]
    except ValueError:
        return raw


def _apply_environment(
    policies: dict[str, Any], environ: Mapping[str, str]
) -> dict[str, str]:
    """Overlay ``STOIC_POLICIES__...`` variables on ``policies``; dotted key -> variable name."""
    origins: dict[str, str] = {}
    by_lower = {name.lower(): name for name in policies}
    for variable in sorted(environ):
        if not variable.upper().startswith(_ENV_PREFIX):
            continue
        path = [p.lower() for p in variable[len(_ENV_PREFIX):].split("__")]
        if len(path) not in (2, 3) or not all(path):
            raise ConfigError(f"environment {variable}", variable, environ[variable],
                              "expected STOIC_POLICIES__NAME__PART[__FIELD]")
        name = by_lower.get(path[0], path[0])
        table = policies.setdefault(name, {})
        if not isinstance(table, dict):
            continue  # reported when the table is built
        value = _env_value(environ[variable])
        if len(path) == 2:
            table[path[1]] = value
        else:
            part = table.get(path[1])
            if not isinstance(part, dict):
                part = {} if part is None else {_SHORTHAND.get(path[1], "value"): part}
                table[path[1]] = part
            part[path[2]] = value
        origins[".".join(["policies", name, *path[1:]])] = f"environment {variable}"
    return origins


# --- building --------------------------------------------------------------------------------

# A part given as a bare value means this field: ``timeout = 2.0`` is ``{seconds = 2.0}``.
_SHORTHAND = {"timeout": "seconds", "bulkhead": "max_concurrent", "rate_limit": "rate"}

_BACKOFF_FIELDS = {
    "exponential": ("initial", "factor", "max", "jitter"),
    "linear": ("initial", "step", "max", "jitter"),
    "constant": ("delay", "max", "jitter"),
}


class _Part:
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


def _backoff(part: _Part, values: dict[str, Any]) -> Any:
    from ..policies import backoff as schedules

    kind = values.pop("backoff", "exponential")
    if kind not in _BACKOFF_FIELDS:
        raise part.error("backoff", kind, f"expected one of {', '.join(_BACKOFF_FIELDS)}")
    fields = _BACKOFF_FIELDS[kind]
    kwargs = {f: values.pop(f) for f in fields if f in values}
    if kwargs.get("jitter") == "none":
        kwargs["jitter"] = None
    return part.build(getattr(schedules, kind), **kwargs)


def _retry(part: _Part, name: str) -> Policy:
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
            sub = _Part(part.source, f"{part.key}.budget", budget, part.origins)
            sub.check_fields(("ratio", "min_per_second", "window"))
            budget = sub.build(RetryBudget, **budget)
    values.setdefault("name", name)
    return part.build(Retry, backoff=schedule, budget=budget, **values)  # type: ignore[no-any-return]


def _breaker(part: _Part, name: str) -> Policy:
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


def _simple(cls_path: str, fields: tuple[str, ...]) -> Callable[[_Part, str], Policy]:
    def build(part: _Part, name: str) -> Policy:
        module, _, cls_name = cls_path.rpartition(".")
        cls = getattr(importlib.import_module(module), cls_name)
        part.check_fields(fields)
        values = dict(part.values)
        values.setdefault("name", name)
        return part.build(cls, **values)  # type: ignore[no-any-return]

    return build


_BUILDERS: dict[str, Callable[[_Part, str], Policy]] = {
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


class _Built:
    """One generation of built policies: name -> (pipeline, resolved settings, parts)."""

    __slots__ = ("parts", "pipelines", "settings")

    def __init__(self) -> None:
        self.pipelines: dict[str, Pipeline] = {}
        self.settings: dict[str, dict[str, Any]] = {}
        self.parts: dict[tuple[str, str, Any], Policy] = {}


def _build(data: Mapping[str, Any], source: str, environ: Mapping[str, str],
           previous: _Built | None) -> _Built:
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
    origins = _apply_environment(policies, environ)
    built = _Built()
    for name, table in policies.items():
        key = f"policies.{name}"
        if not isinstance(table, dict):
            raise ConfigError(origins.get(key, source), key, table, "expected a table")
        if not name or "." in name:
            raise ConfigError(source, key, name, "a policy name must be non-empty, without dots")
        order = table.get("order", ORDER)
        if not isinstance(order, (list, tuple)) or any(o not in _BUILDERS for o in order) or (
            len(set(order)) != len(order)
        ):
            raise ConfigError(origins.get(f"{key}.order", source), f"{key}.order", order,
                              f"expected a list drawn from {', '.join(ORDER)}, each once")
        for part_name, value in table.items():
            if part_name != "order" and part_name not in _BUILDERS:
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
                values = {_SHORTHAND.get(part_name, "value"): values}
            settings[part_name] = values
            identity = (name, part_name, _freeze(values))
            kept = previous.parts.get(identity) if previous is not None else None
            if kept is None:
                part = _Part(source, f"{key}.{part_name}", values, origins)
                kept = _BUILDERS[part_name](part, name)
            built.parts[identity] = kept
            parts.append(kept)
        if not parts:
            raise ConfigError(origins.get(key, source), key, table,
                              f"declares no policy; give at least one of {', '.join(ORDER)}")
        built.pipelines[name] = Pipeline(*parts)
        built.settings[name] = settings
    return built


# --- the registry ----------------------------------------------------------------------------


class NamedPolicy(Policy):
    """The policy registered under a name: each call runs on the pipeline current when it starts.

    It stays the same object across reloads, so it can be stored, used as a decorator, or put
    inside a larger ``Pipeline``; a call that started before a reload finishes on the old
    pipeline, one that starts after gets the new one.
    """

    def __init__(self, registry: Registry, name: str) -> None:
        self.registry = registry
        self.name = name
        self._compose()

    def __repr__(self) -> str:
        return f"NamedPolicy({self.name!r}, {self.current!r})"

    @property
    def current(self) -> Pipeline:
        """The pipeline new calls get now."""
        return self.registry._generation.pipelines[self.name]

    def wrap(self, inner: Step) -> Step:
        cache: list[tuple[Pipeline, Step]] = []
        name, registry = self.name, self.registry

        def step(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            pipeline = registry._generation.pipelines[name]
            entry = cache[0] if cache else None
            if entry is None or entry[0] is not pipeline:  # a reload happened: compose once
                entry = (pipeline, pipeline.wrap(inner))
                cache[:] = [entry]
            return entry[1](fn, args, kwargs)

        return step

    def awrap(self, inner: AsyncStep) -> AsyncStep:
        cache: list[tuple[Pipeline, AsyncStep]] = []
        name, registry = self.name, self.registry

        async def step(fn: Callable[..., Any], args: tuple[Any, ...],
                       kwargs: dict[str, Any]) -> Any:
            pipeline = registry._generation.pipelines[name]
            entry = cache[0] if cache else None
            if entry is None or entry[0] is not pipeline:
                entry = (pipeline, pipeline.awrap(inner))
                cache[:] = [entry]
            return await entry[1](fn, args, kwargs)

        return step


class Registry(Mapping[str, NamedPolicy]):
    """Named policies built from a file (``load``) or a mapping (``from_mapping``).

    ``registry["payments"]`` is a ``NamedPolicy``: use ``.call``, ``.acall`` or decorate.
    """

    def __init__(self, data: Mapping[str, Any], *, source: str = "<mapping>",
                 path: Path | None = None, environ: Mapping[str, str] | None = None) -> None:
        self.source = source
        self.path = path
        self._environ = environ
        self._lock = threading.Lock()
        self._generation = _build(data, source, self._env(), None)
        self._named: dict[str, NamedPolicy] = {}
        self._stamp = self._file_stamp()

    def _env(self) -> Mapping[str, str]:
        return os.environ if self._environ is None else self._environ

    def _file_stamp(self) -> tuple[float, int] | None:
        if self.path is None:
            return None
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return (stat.st_mtime, stat.st_size)

    def __getitem__(self, name: str) -> NamedPolicy:
        named = self._named.get(name)
        if named is None:
            if name not in self._generation.pipelines:
                raise KeyError(f"no policy named {name!r}; declared: "
                               f"{', '.join(sorted(self._generation.pipelines)) or 'none'}")
            with self._lock:
                named = self._named.setdefault(name, NamedPolicy(self, name))
        return named

    def __iter__(self) -> Iterator[str]:
        return iter(self._generation.pipelines)

    def __len__(self) -> int:
        return len(self._generation.pipelines)

    def settings(self) -> dict[str, dict[str, Any]]:
        """The resolved settings of every policy (file plus environment), as plain data."""
        return {name: {part: dict(values) for part, values in parts.items()}
                for name, parts in self._generation.settings.items()}

    def reload(self) -> bool:
        """Re-read the file; swap in the new pipelines. False when there is no file.

        Raises ``ConfigError`` (and keeps the current policies) when the new file is bad. A
        policy removed from the file keeps working for holders of its ``NamedPolicy``.
        """
        if self.path is None:
            return False
        with self._lock:
            stamp = self._file_stamp()
            built = _build(_read(self.path), self.source, self._env(), self._generation)
            for name, pipeline in self._generation.pipelines.items():  # removed: keep serving
                built.pipelines.setdefault(name, pipeline)
            self._generation = built  # one assignment: calls see the old or the new, whole
            self._stamp = stamp
        return True

    def changed(self) -> bool:
        """Whether the file's modification time or size differs from the last load."""
        return self.path is not None and self._file_stamp() != self._stamp

    def watch(self, interval: float = 1.0) -> Watcher:
        """Poll the file every ``interval`` seconds and reload it when it changes."""
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not (
            0 < interval <= 3600
        ):
            raise ValueError(f"interval must be in (0, 3600] seconds, got {interval!r}")
        if self.path is None:
            raise ValueError("watch() needs a registry loaded from a file")
        return Watcher(self, float(interval))


class Watcher:
    """A daemon thread reloading a registry's file when it changes; ``stop()`` ends it."""

    def __init__(self, registry: Registry, interval: float) -> None:
        self.registry = registry
        self.interval = interval
        self.reloads = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stoic-registry-watch",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if not self.registry.changed():
                continue
            try:
                self.registry.reload()
                self.reloads += 1
            except ConfigError as exc:
                self.errors += 1
                self.registry._stamp = self.registry._file_stamp()  # report a bad edit once
                _log.error("stoic: keeping the current policies: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def load(path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None) -> Registry:
    """Build the policies declared in ``path`` (TOML, or YAML by extension).

    ``environ`` (default ``os.environ``) supplies ``STOIC_POLICIES__...`` overrides.
    """
    file = Path(path)
    return Registry(_read(file), source=str(file), path=file, environ=environ)


def from_mapping(data: Mapping[str, Any], *, source: str = "<mapping>",
                 environ: Mapping[str, str] | None = None) -> Registry:
    """Build policies from already-parsed data shaped like the file (``{"policies": {...}}``)."""
    return Registry(data, source=source, environ=environ if environ is not None else {})


# The process-wide registry, set by ``configure`` (the one named registry of this module).
_default: Registry | None = None


def configure(path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None) -> Registry:
    """Load ``path`` as the process-wide registry that ``stoic.registry.policy`` reads."""
    global _default
    _default = load(path, environ=environ)
    return _default


def policy(name: str) -> NamedPolicy:
    """The policy ``name`` from the process-wide registry (``configure`` first)."""
    if _default is None:
        raise LookupError("no registry configured; call stoic.registry.configure(path) first")
    return _default[name]
