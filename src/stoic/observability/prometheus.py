"""Prometheus metrics for stoic, fed by its events.

``instrument(registry=None)`` registers one collector, which keeps plain numbers and turns
them into metric families only when Prometheus scrapes. A finished call updates one list
in its own thread's shard, without a lock: the duration histogram of its ``(name,
outcome)``, whose count is also that pair's ``stoic_calls_total``. The rarer events arrive
through one sink and share one lock. Both are cheaper per call than ``prometheus_client``'s
labelled children, which take a lock per metric and per bucket.

Metrics (label values come from policy names, outcomes and reasons, never from ids):

- ``stoic_calls_total{name,outcome}``: calls that finished, by classified outcome
- ``stoic_retries_total{name}``: retries scheduled
- ``stoic_rejections_total{name,reason}``: calls refused before they started
- ``stoic_circuit_breaker_state{name,state}``: 1 for the current state, 0 for the others
- ``stoic_call_duration_seconds{name}``: histogram of call duration
- ``stoic_messages_total{topic,result}``: messages by result (``dead_lettered``, ...)
- ``stoic_idempotent_replays_total{name}``: calls answered from an idempotency store
- ``stoic_concurrency_limit{name}``: the current limit of each ``AdaptiveLimit`` that moved
  (a ``LoadShedder``'s refusals count in ``stoic_rejections_total`` as ``shed_<priority>``)

Durable workflows (``stoic.workflow``; ``workflow`` is the workflow's name, never a run id):

- ``stoic_workflows_started_total{workflow}``: runs recorded by ``start()``
- ``stoic_workflows_completed_total{workflow}``: runs that returned
- ``stoic_workflows_failed_total{workflow,outcome}``: runs that ended otherwise
  (``outcome``: ``failed`` or ``cancelled``)
- ``stoic_workflow_compensations_total{workflow,outcome}``: compensations run
  (``completed`` or ``failed``)
- ``stoic_workflows_recovered_total{workflow}``: runs taken over from a worker that was lost
- ``stoic_workflows_parked_total{workflow,outcome}``: runs parked (``needs_attention``,
  ``unknown_workflow``)
- ``stoic_workflow_leases_lost_total{workflow}``: passes whose commit was fenced off
- ``stoic_workflow_step_duration_seconds{workflow,step,outcome}``: histogram of step attempts
  (``outcome``: ``success`` or the failure's classified outcome)
- ``stoic_workflows_due{workflow}``: the due backlog, runs due and not yet claimed, counted at
  scrape time in every store given to ``watch_backlog`` (one indexed query per store)

Needs ``prometheus-client`` (``stoic[prometheus]``).
"""

from __future__ import annotations

import logging
import threading
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from .. import clock
from .._validate import count as check_count
from ..events import CallRecorder
from ..workflow.engine import Workflows
from ..workflow.store import CountsDue, Store
from ._events import WORKFLOW_METRICS, breaker_states, connect
from .otel_metrics import DURATION_BUCKETS
from .prometheus_families import breaker_gauge, counter, gauge, histogram

__all__ = [
    "DURATION_BUCKETS",
    "instrument",
    "make_asgi_app",
    "serve",
    "uninstrument",
    "watch_backlog",
]

_log = logging.getLogger("stoic.observability")



_Histograms = dict[tuple[str, str], list[float]]


class _StoicCollector:
    """Counters kept as plain numbers, exposed as Prometheus metric families on scrape.

    Finished calls, the hot path, take no lock: each thread writes its own shard of
    histograms (one per ``(name, outcome)``: counts per bucket, non-cumulative, the last for
    +Inf, then the sum), and a scrape adds the shards up. Only the owning thread ever writes
    a shard, so no update is lost; a scrape copies each list in one C-level step. When a new
    thread makes its first call, the shards of threads that have ended are folded into one,
    so a program that starts a thread per request does not grow a shard per thread. The
    rarer events (retries, rejections, ...) share one lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.retries: dict[str, int] = {}
        self.rejections: dict[tuple[str, str], int] = {}
        self.messages: dict[tuple[str, str], int] = {}
        self.replays: dict[str, int] = {}
        self.states: dict[str, str] = {}
        self.limits: dict[str, int] = {}
        self.workflows: dict[tuple[str, str, str], int] = {}  # (metric, workflow, label)
        self.steps: dict[tuple[str, str, str], list[float]] = {}  # histogram per step
        self.due_names: set[str] = set()  # workflows ever seen due: shown at 0 once drained
        self._retired: _Histograms = {}  # the shards of threads that have ended, added up
        self._shards: list[tuple[weakref.ref[threading.Thread], _Histograms]] = []
        self.call = self._make_call()

    # --- the Recorder interface (called from the event sink) ------------------------------

    def _make_call(self) -> CallRecorder:
        """``call``, the per-call update: a closure over locals, the hot path of metrics."""
        local, new_shard, buckets = threading.local(), self._new_shard, DURATION_BUCKETS
        size = len(DURATION_BUCKETS) + 2

        def call(
            policy: str, name: str, outcome: str, duration: float, attempts: int,
            error_type: str | None,
        ) -> None:
            try:
                shard = local.shard
            except AttributeError:
                shard = local.shard = new_shard()
            histogram = shard.get((name, outcome))
            if histogram is None:
                histogram = shard[name, outcome] = [0.0] * size
            histogram[bisect_left(buckets, duration)] += 1
            histogram[-1] += duration

        return call

    def _new_shard(self) -> _Histograms:
        """A shard for the calling thread; the shards of ended threads are folded first."""
        shard: _Histograms = {}
        owner = weakref.ref(threading.current_thread())
        with self._lock:
            live = []
            for thread, histograms in self._shards:
                running = thread()
                if running is not None and running.is_alive():
                    live.append((thread, histograms))
                else:  # it can write no more: fold it
                    _add_histograms(self._retired, histograms)
            live.append((owner, shard))
            self._shards = live
        return shard

    def histograms(self) -> _Histograms:
        """Every thread's histograms added up: ``(name, outcome) -> counts..., sum``."""
        total: _Histograms = {}
        with self._lock:
            _add_histograms(total, self._retired)
            for _thread, shard in self._shards:
                _add_histograms(total, shard)
        return total

    def retry(self, name: str) -> None:
        with self._lock:
            self.retries[name] = self.retries.get(name, 0) + 1

    def rejection(self, name: str, reason: str) -> None:
        key = (name, reason)
        with self._lock:
            self.rejections[key] = self.rejections.get(key, 0) + 1

    def breaker(self, name: str, state: str) -> None:
        with self._lock:
            self.states[name] = state

    def message(self, topic: str, result: str) -> None:
        key = (topic, result)
        with self._lock:
            self.messages[key] = self.messages.get(key, 0) + 1

    def replay(self, name: str) -> None:
        with self._lock:
            self.replays[name] = self.replays.get(name, 0) + 1

    def limit(self, name: str, limit: int) -> None:
        with self._lock:
            self.limits[name] = limit

    def workflow_count(self, metric: str, workflow: str, label: str = "") -> None:
        """One more of ``metric`` (``started``, ``failed``, ...) for ``workflow``."""
        key = (metric, workflow, label)
        with self._lock:
            self.workflows[key] = self.workflows.get(key, 0) + 1

    def step(self, workflow: str, step: str, outcome: str, duration: float) -> None:
        key = (workflow, step, outcome)
        with self._lock:
            histogram = self.steps.get(key)
            if histogram is None:
                histogram = self.steps[key] = [0.0] * (len(DURATION_BUCKETS) + 2)
            histogram[bisect_left(DURATION_BUCKETS, duration)] += 1
            histogram[-1] += duration

    def due(self) -> dict[str, int]:
        """The due backlog by workflow, from the watched stores; 0 for names seen before."""
        counts: dict[str, int] = {}
        now = clock.wall()
        for store in _watched:
            try:
                found = store.count_due(now)
            except Exception:  # a closed or unreachable store: no number rather than a wrong one
                _log.warning("stoic: cannot count the due workflows of %r", store, exc_info=True)
                continue
            for name, count in found.items():
                counts[name] = counts.get(name, 0) + count
        with self._lock:
            self.due_names.update(counts)
            for name in self.due_names:
                counts.setdefault(name, 0)
        return counts

    # --- the prometheus_client collector interface -----------------------------------------

    def describe(self) -> list[Any]:
        return list(self._families(empty=True))

    def collect(self) -> Iterator[Any]:
        return self._families(empty=False)

    def _families(self, empty: bool) -> Iterator[Any]:
        calls: dict[tuple[str, str], int] = {}
        durations: dict[str, list[float]] = {}
        retries: dict[str, int] = {}
        rejections: dict[tuple[str, str], int] = {}
        messages: dict[tuple[str, str], int] = {}
        replays: dict[str, int] = {}
        states: dict[str, str] = {}
        limits: dict[str, int] = {}
        workflows: dict[tuple[str, str, str], int] = {}
        steps: dict[tuple[str, str, str], list[float]] = {}
        due: dict[str, int] = {}
        if not empty:  # ``describe`` wants the families only, not a copy of the counts
            with self._lock:
                retries, rejections = dict(self.retries), dict(self.rejections)
                messages, replays, states = dict(self.messages), dict(self.replays), dict(self.states)
                limits = dict(self.limits)
                workflows = dict(self.workflows)
                steps = {key: list(counts) for key, counts in self.steps.items()}
            due = self.due()
            states.update(breaker_states())
            for (name, outcome), counts in self.histograms().items():
                calls[name, outcome] = int(sum(counts[:-1]))
                _add(durations, name, counts)

        yield counter("stoic_calls", "Calls through stoic policies that finished, by outcome.",
                      ["name", "outcome"], calls)
        yield counter("stoic_retries", "Retries scheduled.", ["name"], retries)
        yield counter("stoic_rejections", "Calls refused before they started, by reason.",
                      ["name", "reason"], rejections)
        yield breaker_gauge(states)
        yield histogram("stoic_call_duration_seconds", "Duration of calls through stoic policies.",
                        ["name"], durations)
        yield gauge("stoic_concurrency_limit",
                    "The current limit of each adaptive concurrency limit.", ["name"], limits)
        yield counter("stoic_messages", "Messages handled, by topic and result.",
                      ["topic", "result"], messages)
        yield counter("stoic_idempotent_replays",
                      "Calls answered from an idempotency store instead of running again.",
                      ["name"], replays)
        for metric in WORKFLOW_METRICS:
            labels = ["workflow", "outcome"] if metric.by_outcome else ["workflow"]
            yield counter(metric.family, metric.help, labels, {
                (key[1], key[2]) if metric.by_outcome else key[1]: value
                for key, value in workflows.items() if key[0] == metric.key})
        yield histogram("stoic_workflow_step_duration_seconds",
                        "Duration of workflow step attempts, by outcome.",
                        ["workflow", "step", "outcome"], steps)
        yield gauge("stoic_workflows_due", "Workflow runs due and not yet claimed by a worker.",
                    ["workflow"], due)


def _add_histograms(total: _Histograms, shard: _Histograms) -> None:
    """Add ``shard`` into ``total``; safe while ``shard``'s own thread keeps writing to it."""
    for key, counts in shard.copy().items():  # a C-level copy: no size change mid-loop
        _add(total, key, counts)


def _add(total: dict[Any, list[float]], key: Any, counts: list[float]) -> None:
    """Add one histogram (counts per bucket, then the sum) into ``total[key]``."""
    into = total.get(key)
    if into is None:
        total[key] = list(counts)  # one C-level copy, never a list half-updated
    else:
        for index, value in enumerate(counts):
            into[index] += value


class _Installed:
    def __init__(
        self, registry: Any, collector: _StoicCollector, unsubscribe: Callable[[], None]
    ) -> None:
        self.registry, self.collector, self.unsubscribe = registry, collector, unsubscribe


_installed: _Installed | None = None
_install_lock = threading.Lock()


def instrument(registry: Any = None) -> None:
    """Expose stoic's metrics in ``registry`` (default: prometheus_client's global one).

    Calling it again moves the metrics to the new registry, starting from zero.
    """
    global _installed
    from prometheus_client import REGISTRY

    target = REGISTRY if registry is None else registry
    with _install_lock:
        _uninstrument_locked()
        collector = _StoicCollector()
        target.register(collector)
        unsubscribe = connect(collector, trusted=True)
        _installed = _Installed(target, collector, unsubscribe)


def _uninstrument_locked() -> None:
    global _installed
    installed, _installed = _installed, None
    if installed is None:
        return
    installed.unsubscribe()
    try:
        installed.registry.unregister(installed.collector)
    except KeyError:  # already removed by the application
        pass


def uninstrument() -> None:
    """Stop feeding and remove stoic's metrics."""
    with _install_lock:
        _uninstrument_locked()


def serve(port: int, addr: str = "127.0.0.1", registry: Any = None) -> Any:
    """Serve ``/metrics`` over HTTP on ``addr:port`` from a daemon thread.

    Returns the server; call ``.shutdown()`` on it to stop. Binds loopback by default:
    pass ``addr="0.0.0.0"`` deliberately to let another machine scrape.
    """
    check_count("port", port, minimum=0, maximum=65535)
    from prometheus_client import REGISTRY, start_http_server

    target = REGISTRY if registry is None else registry
    started = start_http_server(port, addr=addr, registry=target)
    return started[0] if isinstance(started, tuple) else started


_watched: tuple[CountsDue, ...] = ()  # replaced on change, never mutated: scrapes take no lock


def watch_backlog(source: Workflows | Store) -> Callable[[], None]:
    """Count the due backlog of ``source`` (a ``Workflows`` or its store) in
    ``stoic_workflows_due`` at every scrape; returns a function that stops watching it.

    Each scrape costs the store one indexed query. Watching a store twice counts it once.
    Raises ValueError for a store that cannot count its backlog (``CountsDue``).
    """
    global _watched
    store = source.store if isinstance(source, Workflows) else source
    if not isinstance(store, CountsDue):
        raise ValueError(f"source must be a Workflows or a store with count_due(), got {source!r}")
    with _install_lock:
        if not any(watched is store for watched in _watched):
            _watched = (*_watched, store)

    def unwatch() -> None:
        global _watched
        with _install_lock:
            _watched = tuple(watched for watched in _watched if watched is not store)

    return unwatch


def make_asgi_app(registry: Any = None) -> Any:
    """An ASGI app answering every GET with the exposition; mount it at ``/metrics``."""
    from prometheus_client import REGISTRY
    from prometheus_client import make_asgi_app as _make

    return _make(registry=REGISTRY if registry is None else registry)
