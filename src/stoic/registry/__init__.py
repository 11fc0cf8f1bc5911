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

import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..policies.base import AsyncStep, Policy, Step
from ..policies.pipeline import Pipeline
from .building import ORDER, build_policies
from .errors import ConfigError
from .reading import read_file

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
        self._generation = build_policies(data, source, self._env(), None)
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
            built = build_policies(read_file(self.path), self.source, self._env(), self._generation)
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
    return Registry(read_file(file), source=str(file), path=file, environ=environ)


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
