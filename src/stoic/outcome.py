"""What a failure means: did the work happen, may it be retried, when.

``classify(exc)`` answers with a ``Verdict``: an ``Outcome`` plus ``retry_after`` and a short
reason. The registry maps exception types (or their dotted names, so nothing is imported
early) to an outcome or to a function of the exception. The most specific registered class
in the exception's MRO wins. Which classifier applies is cached per exception type; the
verdict itself is computed per instance, since it may depend on an errno or a status.

Classifiers for third-party libraries live in ``stoic.classifiers.<library>`` and are
imported the first time an exception from that library is classified.

The registry (``_registry``) is the one piece of global state here; ``reset_classifiers``
restores the defaults for tests.
"""

from __future__ import annotations

import enum
import importlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TypeAlias

from . import clock

__all__ = [
    "Classifier",
    "Outcome",
    "Verdict",
    "classify",
    "classify_status",
    "install_defaults",
    "parse_retry_after",
    "register_classifier",
    "register_default",
    "reset_classifiers",
]


class Outcome(enum.Enum):
    """What one attempt's result says about the operation."""

    SUCCESS = "success"
    TRANSIENT = "transient"  #: did not take effect; safe to retry
    THROTTLED = "throttled"  #: refused for load; retry after a delay (honour retry_after)
    UNKNOWN = "unknown"  #: may have taken effect; retry only if the operation is idempotent
    PERMANENT = "permanent"  #: retrying will not help (bad input, 4xx, bugs)

    @property
    def is_failure(self) -> bool:
        """True for outcomes that mean the dependency failed (what a breaker counts)."""
        return self in _DEPENDENCY_FAILURES


_DEPENDENCY_FAILURES = frozenset({Outcome.TRANSIENT, Outcome.THROTTLED, Outcome.UNKNOWN})


@dataclass(frozen=True, slots=True)
class Verdict:
    """An outcome, the seconds to wait before retrying when known, and why."""

    outcome: Outcome
    retry_after: float | None = None
    reason: str = ""


ClassifierFn: TypeAlias = Callable[[BaseException], "Verdict | Outcome | None"]
Classifier: TypeAlias = "Outcome | Verdict | ClassifierFn"
_Entry: TypeAlias = "Verdict | Callable[[BaseException], Verdict | None]"

# Top-level module of an exception -> the stoic module that registers its classifiers.
_LAZY: dict[str, str] = {
    "httpx": "stoic.classifiers.httpx",
    "httpcore": "stoic.classifiers.httpx",
    "requests": "stoic.classifiers.requests",
    "urllib3": "stoic.classifiers.requests",
    "aiohttp": "stoic.classifiers.aiohttp",
    "grpc": "stoic.classifiers.grpc",
    "redis": "stoic.classifiers.redis",
    "psycopg": "stoic.classifiers.psycopg",
    "psycopg_pool": "stoic.classifiers.psycopg",
    "sqlite3": "stoic.classifiers.sqlite3",
}

_lock = threading.RLock()
_registry: dict[type[BaseException], _Entry] = {}
# the base set (the standard library's), restored by reset_classifiers
_defaults: dict[type[BaseException], _Entry] = {}
_by_name: dict[str, _Entry] = {}
_loaded: set[str] = set()
# exception type -> the registered entries along its MRO, most specific first
_cache: dict[type[BaseException], tuple[_Entry, ...]] = {}


def _entry(classifier: Classifier, label: str) -> _Entry:
    if isinstance(classifier, Verdict):
        return classifier
    if isinstance(classifier, Outcome):
        return Verdict(classifier, None, label)
    if not callable(classifier):
        raise TypeError(
            f"outcome_or_fn must be an Outcome, a Verdict or a callable, got {classifier!r}"
        )
    fn = classifier

    def entry(exc: BaseException) -> Verdict | None:
        result = fn(exc)
        if isinstance(result, Outcome):
            return Verdict(result, None, label)
        return result

    return entry


def register_classifier(exc_type: type[BaseException] | str, outcome_or_fn: Classifier) -> None:
    """Say what ``exc_type`` means.

    ``exc_type`` is a class, or its dotted name (``"mylib.errors.Busy"``) so that nothing is
    imported early. ``outcome_or_fn`` is an ``Outcome``, a ``Verdict``, or a function of the
    exception returning either, or None to defer to the next registered class in the MRO.
    """
    if isinstance(exc_type, str):
        if not exc_type or "." not in exc_type:
            raise ValueError(f"exc_type must be a dotted name like 'pkg.Error', got {exc_type!r}")
        entry = _entry(outcome_or_fn, exc_type.rsplit(".", 1)[-1])
        with _lock:
            _ensure_defaults()
            _by_name[exc_type] = entry
            _cache.clear()
        return
    if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
        raise TypeError(f"exc_type must be an exception class or a dotted name, got {exc_type!r}")
    entry = _entry(outcome_or_fn, exc_type.__name__)
    with _lock:
        _ensure_defaults()
        _registry[exc_type] = entry
        _cache.clear()


def register_default(exc_type: type[BaseException], outcome_or_fn: Classifier) -> None:
    """Register a built-in classifier unless the user already registered ``exc_type``.

    Used by ``stoic.classifiers.*`` modules, which load lazily and must not override a
    registration the user made before they loaded.
    """
    with _lock:
        if exc_type not in _registry:
            _registry[exc_type] = _entry(outcome_or_fn, exc_type.__name__)
            _cache.clear()


def install_defaults(defaults: Mapping[type[BaseException], Classifier]) -> None:
    """Install the base classifiers, the ones ``reset_classifiers`` restores.

    ``import stoic`` calls it once with ``stoic.classifiers.stdlib.DEFAULTS``: the classifier
    modules import this registry, never the other way round. A type the user registered
    already keeps the user's classifier.
    """
    with _lock:
        for exc_type, classifier in defaults.items():
            entry = _entry(classifier, exc_type.__name__)
            _defaults[exc_type] = entry
            _registry.setdefault(exc_type, entry)
        _cache.clear()


def _ensure_defaults() -> None:
    if not _registry:
        _registry.update(_defaults)


def _chain(exc_type: type[BaseException]) -> tuple[_Entry, ...]:
    with _lock:
        _ensure_defaults()
        for cls in exc_type.__mro__:
            target = _LAZY.get(cls.__module__.partition(".")[0])
            if target is not None and target not in _loaded:
                _loaded.add(target)
                importlib.import_module(target).install()
        entries: list[_Entry] = []
        for cls in exc_type.__mro__:
            found = _by_name.get(f"{cls.__module__}.{cls.__qualname__}") if _by_name else None
            if found is None:
                found = _registry.get(cls)
            if found is not None:
                entries.append(found)
        chain = tuple(entries)
        _cache[exc_type] = chain
        return chain


_NOT_A_FAILURE = Verdict(Outcome.PERMANENT, None, "cancellation or exit, not a failure")
_UNCLASSIFIED = Verdict(Outcome.PERMANENT, None, "unclassified")


def classify(exc: BaseException) -> Verdict:
    """Classify an exception. Never raises; an exception nobody registered is PERMANENT.

    ``asyncio.CancelledError``, ``KeyboardInterrupt``, ``SystemExit`` and ``GeneratorExit``
    are not failures: policies never catch them, and ``classify`` reports them PERMANENT so
    that nothing retries them.
    """
    try:
        chain = _cache[type(exc)]
    except KeyError:
        chain = _chain(type(exc))
    for entry in chain:
        if isinstance(entry, Verdict):
            return entry
        try:
            verdict = entry(exc)
        except Exception:  # a broken classifier must not become a new failure of the call
            return Verdict(Outcome.PERMANENT, None, f"classifier failed for {type(exc).__name__}")
        if verdict is not None:
            return verdict
    if not isinstance(exc, Exception):
        return _NOT_A_FAILURE
    return _UNCLASSIFIED


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP date. None if bad."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if seconds >= 0 and seconds == seconds and seconds != float("inf") else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - clock.wall())


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    value = headers.get(name)
    if value is not None:
        return value
    lower = name.lower()
    for key, val in headers.items():
        if key.lower() == lower:
            return val
    return None


def classify_status(status: int, headers: Mapping[str, str] | None = None) -> Verdict:
    """Classify an HTTP status code (and ``Retry-After``, when present).

    2xx/3xx SUCCESS; 408, 425 TRANSIENT; 429, and 409 with Retry-After (a request with the same
    idempotency key still in flight), THROTTLED; other 4xx PERMANENT; 503 TRANSIENT, or
    THROTTLED with Retry-After; 501 and 505 PERMANENT; 500, 502, 504 and other 5xx UNKNOWN.
    """
    if status < 400:
        return _SUCCESS if status >= 100 else Verdict(Outcome.PERMANENT, None, f"HTTP {status}")
    retry_after = parse_retry_after(_header(headers, "Retry-After"))
    reason = f"HTTP {status}"
    if status == 429:
        return Verdict(Outcome.THROTTLED, retry_after, reason)
    if status in (408, 425):
        return Verdict(Outcome.TRANSIENT, retry_after, reason)
    if status == 409 and retry_after is not None:
        # the IETF Idempotency-Key draft: the same key is still being processed; come back
        return Verdict(Outcome.THROTTLED, retry_after, reason)
    if status < 500:
        return Verdict(Outcome.PERMANENT, None, reason)
    if status == 503:
        if retry_after is not None:
            return Verdict(Outcome.THROTTLED, retry_after, reason)
        return Verdict(Outcome.TRANSIENT, None, reason)
    if status in (501, 505):
        return Verdict(Outcome.PERMANENT, None, reason)
    return Verdict(Outcome.UNKNOWN, retry_after, reason)


_SUCCESS = Verdict(Outcome.SUCCESS, None, "success")


def reset_classifiers() -> None:
    """Forget user registrations and restore the defaults (for tests)."""
    with _lock:
        _registry.clear()
        _by_name.clear()
        _loaded.clear()
        _cache.clear()
        _ensure_defaults()
