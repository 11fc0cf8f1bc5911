"""``Workflows``: register workflow functions, start runs, and work them off.

    flows = Workflows("sqlite:///shop-flows.db")

    @flows.workflow("place-order", version=1)
    def place_order(ctx, order_id):
        hold = ctx.step("reserve", reserve_stock, order_id, compensate=release_stock)
        return ctx.step("charge", charge_card, order_id, policy=payments)

    handle = flows.start("place-order", "o-17", id="order-o-17")
    flows.run_worker()          # in any number of processes

A worker claims due runs with a lease and a fencing token, runs each pass on a thread of its
pool, renews the leases of the runs it holds, and takes over runs whose worker's lease ran
out (it crashed or hung). Nothing waits in a worker thread: a sleep, a wait for a signal or a
step's durable backoff stores the time the run is due and frees the thread.
"""

from __future__ import annotations

import inspect
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from .. import clock
from ..codec import Codec, default_codec
from ..context import bind
from ..events import dispatcher
from ..policies.backoff import exponential
from ..policies.retry import Retry
from .context import AsyncWorkflowContext, WorkflowContext
from .errors import (
    CompensationOutcome,
    StaleLease,
    UnknownWorkflow,
    WorkflowConflict,
    WorkflowDiverged,
    WorkflowFailed,
    WorkflowNeedsAttention,
    WorkflowNotFound,
)
from .events import (
    WorkflowFinished,
    WorkflowLeaseLost,
    WorkflowParked,
    WorkflowRecovered,
    WorkflowStarted,
)
from .execution import Execution
from .handle import WorkflowHandle
from .store import (
    FOREVER,
    PARKED,
    TERMINAL,
    Claimed,
    Fence,
    Limits,
    NewRun,
    RunRecord,
    RunUpdate,
    Status,
    Store,
    check_limit,
    check_seconds,
    fingerprint,
    kind_of,
    open_store,
)
from .tracing import tracer
from .worker import Worker

__all__ = ["Definition", "Worker", "WorkflowHandle", "Workflows", "default_retry", "open_store"]

_log = logging.getLogger("stoic.workflow")
F = TypeVar("F", bound=Callable[..., Any])


def default_retry() -> Retry:
    """The engine's durable retry of steps: 30 passes, 1 s doubling to 5 min, full jitter,
    for at most a day. A step's own policy retries quickly first; this outlasts outages."""
    return Retry(max_attempts=30, backoff=exponential(1.0, 2.0, 300.0), max_time=86400.0,
                 name="workflow-step")


@dataclass(frozen=True, slots=True)
class Definition:
    """A registered workflow function."""

    name: str
    version: int
    fn: Callable[..., Any]
    is_async: bool
    limits: Limits


class Workflows:
    """Durable workflows on one store.

    Args:
        store: ``"sqlite:///file.db"``, ``"postgresql://..."``, ``"memory://"`` or a store.
        lease: seconds a worker holds a run without renewing it; after that another worker
            takes it over. Workers renew every third of it.
        retry: the engine's durable retry of steps whose own policy gave up on a TRANSIENT or
            THROTTLED failure (``Retry.next_delay`` decides; default ``default_retry()``).
        poll_interval: the longest a worker waits before looking for due runs again (it is
            woken at once by starts in its own process and at the next due time it knows).
        codec: encodes arguments, step results and payloads (never pickle).
        store_options: passed to the store when ``store`` is a URL (``synchronous=``, ...).
    """

    def __init__(
        self, store: str | Store, *, lease: float = 30.0, retry: Retry | None = None,
        poll_interval: float = 0.25, codec: Codec | None = None, **store_options: Any,
    ) -> None:
        self.lease = check_seconds("lease", lease)
        self.poll_interval = check_seconds("poll_interval", poll_interval)
        if retry is not None and not isinstance(retry, Retry):
            raise ValueError(f"retry must be a stoic.Retry or None, got {retry!r}")
        self.retry = retry or default_retry()
        self.codec = codec or default_codec
        self.store = open_store(store, **store_options)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._registry: dict[str, Definition] = {}
        self._latest: dict[str, int] = {}
        self._limits: dict[str, Limits] = {}
        self._wake = threading.Condition()
        self._finished = threading.Condition()
        self._generation = 0

    def __repr__(self) -> str:
        return f"Workflows({self.store!r})"

    # --- registration ---------------------------------------------------------------------

    def workflow(
        self, name: str, *, version: int = 1, concurrency: int | None = None,
        concurrency_per_key: int | None = None,
    ) -> Callable[[F], F]:
        """Register a workflow function (sync or ``async def``) as ``name`` at ``version``.

        Register several versions of one name so runs recorded by old code finish on it;
        ``start`` uses the highest. ``concurrency`` caps runs of this name in progress at
        once (across every worker), ``concurrency_per_key`` caps those sharing a ``key=``.
        """
        if not isinstance(name, str) or not name or "@" in name:
            raise ValueError(f"name must be a non-empty string without '@', got {name!r}")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"version must be an int >= 1, got {version!r}")
        limits = Limits(check_limit("concurrency", concurrency),
                        check_limit("concurrency_per_key", concurrency_per_key))

        def register(fn: F) -> F:
            if not callable(fn):
                raise ValueError(f"a workflow must be a function, got {fn!r}")
            kind = kind_of(name, version)
            if kind in self._registry:
                raise ValueError(f"workflow {name!r} version {version} is already registered")
            self._registry[kind] = Definition(name, version, fn,
                                              inspect.iscoroutinefunction(fn), limits)
            self._latest[name] = max(version, self._latest.get(name, 0))
            if limits.total is not None or limits.per_key is not None:
                self._limits[name] = limits
            return fn

        return register

    def include(self, other: Workflows) -> None:
        """Register every workflow of ``other`` here too (the CLI's worker runs an app's
        workflows on the store given on its command line)."""
        for kind, definition in other._registry.items():
            if kind not in self._registry:
                self._registry[kind] = definition
                self._latest[definition.name] = max(definition.version,
                                                    self._latest.get(definition.name, 0))
        self._limits.update(other._limits)

    @property
    def kinds(self) -> tuple[str, ...]:
        """The ``name@version`` of every registered workflow."""
        return tuple(self._registry)

    # --- starting and steering runs -------------------------------------------------------

    def start(
        self, name: str, /, *args: Any, id: str | None = None, deadline: float | None = None,
        priority: int = 0, key: str | None = None, version: int | None = None,
        kwargs: Mapping[str, Any] | None = None,
    ) -> WorkflowHandle:
        """Record a run of workflow ``name`` with ``args`` and return its handle.

        Idempotent on ``id``: starting an existing id with the same arguments returns its
        handle; with different arguments it raises ``WorkflowConflict``. Arguments that the
        codec cannot encode raise ``CodecError`` and nothing is written. ``deadline``: seconds
        from now after which the run fails (and compensates), durably. ``priority``: higher
        runs first. ``key``: groups runs for ``concurrency_per_key``.
        """
        if version is None:
            if name not in self._latest:
                raise UnknownWorkflow(f"no workflow {name!r} is registered; pass version= to "
                                      "start one registered in another process")
            version = self._latest[name]
        self.start_checks(id, deadline, priority, key)
        handle, _ = self._record(name, version, args, kwargs, id, deadline, priority, key,
                                 claim=False)
        return handle

    def _record(
        self, name: str, version: int, args: tuple[Any, ...], kwargs: Mapping[str, Any] | None,
        id: str | None, deadline: float | None, priority: int, key: str | None, *, claim: bool,
    ) -> tuple[WorkflowHandle, Claimed | None]:
        """Write a new run (claimed by this process when ``claim``): its handle, and the claim
        when this call created it claimed."""
        text = self.codec.encode([list(args), dict(kwargs or {})])
        run_id = id or uuid.uuid4().hex
        hook = tracer()
        trace = hook.traceparent() if hook is not None else None
        now = clock.wall()
        new = NewRun(
            id=run_id, name=name, version=version, args=text, fingerprint=fingerprint(name, text),
            priority=priority, key=key, deadline_at=None if deadline is None else now + deadline,
            created_at=now, trace=trace, owner=self.owner if claim else None,
            lease_until=now + self.lease if claim else None,
        )
        existing = self.store.create(new)
        if existing is not None:
            if existing.fingerprint != new.fingerprint:
                raise WorkflowConflict(
                    f"workflow id {run_id!r} was already started as {existing.name!r} with other "
                    "arguments; use a new id, or the same arguments to get its handle")
            return WorkflowHandle(self, run_id), None
        if dispatcher.sinks:
            dispatcher.emit(WorkflowStarted(name=name, workflow_id=run_id, version=version))
        handle = WorkflowHandle(self, run_id)
        if claim:
            record = RunRecord(
                id=run_id, name=name, version=version, args=text, fingerprint=new.fingerprint,
                status="running", priority=priority, key=key, due_at=now,
                deadline_at=new.deadline_at, owner=self.owner, token=1,
                lease_until=new.lease_until, cancel_requested=False, result=None, error=None,
                created_at=now, started_at=now, updated_at=now, finished_at=None, recoveries=0,
                trace=trace)
            return handle, Claimed(record, (), Fence(run_id, 1, self.owner), False)
        self.wake()
        return handle, None

    @staticmethod
    def start_checks(id: str | None, deadline: float | None, priority: int,
                     key: str | None) -> None:
        """Validate ``start``'s options (ValueError naming the parameter)."""
        if id is not None and (not isinstance(id, str) or not id):
            raise ValueError(f"id must be a non-empty string, got {id!r}")
        if deadline is not None:
            check_seconds("deadline", deadline)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ValueError(f"priority must be an int, got {priority!r}")
        if key is not None and not isinstance(key, str):
            raise ValueError(f"key must be a string or None, got {key!r}")

    def handle(self, run_id: str) -> WorkflowHandle:
        """The handle of an existing run (``WorkflowNotFound`` if there is none)."""
        if self.store.get(run_id) is None:
            raise WorkflowNotFound(f"no workflow run {run_id!r}")
        return WorkflowHandle(self, run_id)

    def signal(self, run_id: str, name: str, payload: Any = None) -> None:
        """Send signal ``name`` to a run; kept until its ``ctx.wait_for(name)`` takes it."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        if not self.store.signal(run_id, name, self.codec.encode(payload), clock.wall()):
            raise WorkflowNotFound(f"no workflow run {run_id!r}")
        self.wake()

    def cancel(self, run_id: str) -> Status:
        """Cancel a run: a run not yet started ends at once; a started one stops before its
        next step and runs its compensations. Returns the status after the request."""
        status = self.store.cancel(run_id, clock.wall())
        if status is None:
            raise WorkflowNotFound(f"no workflow run {run_id!r}")
        self.wake()
        self._bump()
        return Status(status)

    def outcome(self, run: RunRecord) -> Any:
        """A finished run's result, or the exception its end calls for."""
        return self._outcome(run.id, run.status, run.result, run.error)

    def _outcome(self, run_id: str, status: str, result: str | None, error: str | None) -> Any:
        if status == "completed":
            return self.codec.decode(result or "null")
        info = self.codec.decode(error) if error and error.startswith("{") else {}
        if status in ("failed", "cancelled"):
            raise WorkflowFailed(
                run_id, status=status, error_type=info.get("type", "Exception"),
                message=info.get("message", ""),
                compensations=[CompensationOutcome(*c) for c in info.get("compensations", [])],
            )
        if status == "unknown_workflow":
            raise WorkflowNeedsAttention(run_id, error or "no worker knows its code")
        if info.get("type") == "WorkflowDiverged":
            diverged = WorkflowDiverged.__new__(WorkflowDiverged)
            Exception.__init__(diverged, info.get("message", ""))
            raise diverged
        if status == "needs_attention":
            raise WorkflowNeedsAttention(run_id, info.get("message", ""))
        raise ValueError(f"run {run_id!r} has not ended ({status})")

    # --- running --------------------------------------------------------------------------

    def execute(self, claimed: Claimed) -> RunUpdate | None:
        """Run one pass of a claimed run in this thread (what a worker's threads do); returns
        the run-level update the pass committed (None if it lost its lease or failed)."""
        run = claimed.run
        hook = tracer()
        with bind(workflow_id=run.id, workflow=run.name):
            if hook is None:
                return self._pass(claimed)[0]
            with hook.run_pass(run, claimed.recovered) as set_outcome:
                final, outcome = self._pass(claimed)
                set_outcome(outcome)
                return final

    def _pass(self, claimed: Claimed) -> tuple[RunUpdate | None, str]:
        """``execute``'s work: the committed update and the pass's outcome (the run's status
        after it, ``lease_lost`` or ``error``)."""
        run = claimed.run
        definition = self._registry[run.kind]
        if claimed.recovered and dispatcher.sinks:
            dispatcher.emit(WorkflowRecovered(name=run.name, workflow_id=run.id,
                                              token=claimed.fence.token, worker=self.owner))
        execution = Execution(self.store, claimed, codec=self.codec, retry=self.retry,
                              lease=self.lease, code_version=definition.version)
        try:
            args, kwargs = self.codec.decode(run.args)
            if definition.is_async:
                import asyncio

                context = AsyncWorkflowContext(execution)
                asyncio.run(context.run(definition.fn, tuple(args), kwargs))
            else:
                WorkflowContext(execution).run(definition.fn, tuple(args), kwargs)
        except StaleLease:
            _log.warning("workflow %s: lease lost (token %d); another worker has the run",
                         run.id, claimed.fence.token)
            if dispatcher.sinks:
                dispatcher.emit(WorkflowLeaseLost(name=run.name, workflow_id=run.id,
                                                  token=claimed.fence.token, worker=self.owner))
            outcome = "lease_lost"
        except Exception:
            # The store failed (or the engine has a bug): the lease runs out and a later pass
            # takes the run over from its last checkpoint.
            _log.exception("workflow %s: pass failed; it resumes after its lease", run.id)
            outcome = "error"
        else:
            self._report(run, execution)
            final = execution.final
            return final, "running" if final is None else final.status
        finally:
            self._bump()
        return None, outcome

    def _report(self, run: RunRecord, execution: Execution) -> None:
        if not dispatcher.sinks:
            return
        final = self.store.get(run.id)
        if final is None:
            return
        if final.status in TERMINAL:
            info = self.codec.decode(final.error) if final.error else {}
            dispatcher.emit(WorkflowFinished(name=run.name, workflow_id=run.id,
                                             status=final.status,
                                             error_type=info.get("type") if info else None))
        elif final.status == "needs_attention":
            dispatcher.emit(WorkflowParked(name=run.name, workflow_id=run.id,
                                           status=final.status, reason=final.error or ""))

    def _bump(self) -> None:
        with self._finished:
            self._generation += 1
            self._finished.notify_all()
        self.wake()

    def wake(self) -> None:
        """Wake this process's idle workers (something may have become due)."""
        with self._wake:
            self._wake.notify_all()

    def idle(self, seconds: float, stop: threading.Event) -> None:
        """Wait up to ``seconds`` (real time) for ``wake()``, unless ``stop`` is set."""
        with self._wake:
            if not stop.is_set():
                self._wake.wait(seconds)

    @property
    def generation(self) -> int:
        """Counts passes that ended in this process (``wait_change`` waits for the next)."""
        return self._generation

    def wait_change(self, generation: int, seconds: float) -> None:
        """Wait up to ``seconds`` for a pass to end after ``generation`` was read."""
        with self._finished:
            if self._generation == generation:
                self._finished.wait(seconds)

    def claim(self, limit: int, only: str | None = None) -> list[Claimed]:
        return self.store.claim(self.owner, self.kinds, clock.wall(), self.lease, limit,
                                self._limits, only)

    def drain(self, *, max_passes: int = 100_000) -> int:
        """Run due runs in this thread until none is due and none will be (except runs waiting
        for a signal without a timeout); sleeps between on stoic's clock, so under
        ``stoic.testing.virtual_time()`` sleeps and timeouts take no real time. Returns the
        number of passes. For tests and scripts; services run ``run_worker``."""
        passes = 0
        while passes < max_passes:
            claimed = self.claim(1)
            if claimed:
                self.execute(claimed[0])
                passes += 1
                continue
            self.park_unknown()
            due = self.store.next_due(self.kinds, clock.wall())
            if due is None or due >= FOREVER:
                return passes
            wait = due - clock.wall()
            if wait > 0:
                clock.sleep(wait)
        return passes

    def run(
        self, name: str, /, *args: Any, id: str | None = None, deadline: float | None = None,
        priority: int = 0, key: str | None = None, kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        """Start a run and work it off in this thread; return its result (``result()``'s
        exceptions). Durable like ``start``: a crash leaves it for any worker to finish. A new
        run of a workflow without concurrency limits is recorded already claimed (one commit
        fewer); an existing id is joined as ``start`` would."""
        version = self._latest.get(name)
        if version is None or name in self._limits:
            handle = self.start(name, *args, id=id, deadline=deadline, priority=priority,
                                key=key, kwargs=kwargs)
            claimed = None
        else:
            self.start_checks(id, deadline, priority, key)
            handle, claimed = self._record(name, version, args, kwargs, id, deadline, priority,
                                           key, claim=True)
        if claimed is not None:
            final = self.execute(claimed)
            if final is not None and (final.status in TERMINAL or final.status in PARKED):
                return self._outcome(handle.id, final.status, final.result, final.error)
        while True:
            claimed_list = self.claim(1, only=handle.id)
            if claimed_list:
                self.execute(claimed_list[0])
            run = handle.info()
            if run.status in TERMINAL or run.status in PARKED:
                return self.outcome(run)
            if run.status == "running" or run.due_at >= FOREVER:  # another worker; a signal
                return handle.result()
            wait = run.due_at - clock.wall()
            if wait > 0:
                clock.sleep(wait)

    def park_unknown(self) -> None:
        """Park due runs of workflows no code here knows (``unknown_workflow``)."""
        parked = self.store.park_unknown(
            self.kinds, clock.wall(),
            f"no workflow of this name and version is registered in worker {self.owner}; it "
            "runs as soon as a worker that has the code claims it")
        if parked and dispatcher.sinks:
            for run_id in parked:
                dispatcher.emit(WorkflowParked(name="?", workflow_id=run_id,
                                               status="unknown_workflow",
                                               reason="unknown workflow"))

    def start_worker(self, *, concurrency: int = 8) -> Worker:
        """A worker on a background thread; call ``stop()`` on it to end it."""
        worker = Worker(self, concurrency=concurrency)
        worker.start()
        return worker

    def run_worker(self, *, concurrency: int = 8) -> None:
        """Work off due runs until interrupted (SIGINT/SIGTERM via KeyboardInterrupt)."""
        worker = Worker(self, concurrency=concurrency)
        try:
            worker.run()
        finally:
            worker.stop()

    def close(self) -> None:
        self.store.close()
