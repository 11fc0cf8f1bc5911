"""What a workflow store keeps, and the contract every store meets.

A store holds three things: runs (one row per workflow run: its input, status, lease and
fencing token, result), step records (one per step, sleep, wait or publish a run made, in
order) and signals. The engine passes every time in (``now``, epoch seconds from
``stoic.clock.wall()``) so virtual time works against a real database.

Fencing: ``claim`` hands out a run with a new, larger ``token``. Every later write of that
run's worker names the token, and the store applies the write only if the token is still the
run's current one (``commit`` raises ``StaleLease`` otherwise, writing nothing). A worker that
stalled past its lease and wakes up can therefore never overwrite the work of the worker that
took the run over.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol, runtime_checkable

from .errors import WorkflowNotFound

__all__ = [
    "ACTIVE",
    "CLAIMABLE",
    "DUE",
    "FOREVER",
    "PARKED",
    "TERMINAL",
    "Claimed",
    "Commit",
    "CountsDue",
    "Fence",
    "Limits",
    "NewRun",
    "Notifying",
    "RunRecord",
    "RunUpdate",
    "Status",
    "StepRecord",
    "Store",
    "check_limit",
    "check_resolvable",
    "check_retry",
    "check_seconds",
    "fingerprint",
    "kind_of",
    "open_store",
    "pick",
    "settle",
]

#: ``due_at`` of a run that waits for a signal with no timeout.
FOREVER = 1e18


class Status(str, Enum):
    """Where a run is. Parked states (``needs_attention``, ``unknown_workflow``) wait for a
    person or for code; terminal states never change again."""

    PENDING = "pending"                    # due at due_at (new, or a step's durable backoff)
    RUNNING = "running"                    # claimed by a worker holding a lease
    SLEEPING = "sleeping"                  # in ctx.sleep until due_at
    WAITING = "waiting"                    # in ctx.wait_for until a signal or due_at
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    NEEDS_ATTENTION = "needs_attention"    # parked: see the run's error
    UNKNOWN_WORKFLOW = "unknown_workflow"  # no worker seen had code for its name and version

    def __str__(self) -> str:
        return self.value


TERMINAL = frozenset({"completed", "failed", "cancelled"})
#: States a worker may claim once ``due_at`` has passed (plus ``running`` past its lease).
CLAIMABLE = ("pending", "sleeping", "waiting", "unknown_workflow")
#: States of a run waiting for its ``due_at`` to run again (the due backlog counts these, and
#: ``running`` runs past their lease; not parked runs).
DUE = ("pending", "sleeping", "waiting")
#: Started runs in these states hold a concurrency slot of their name and key.
ACTIVE = ("running", "pending", "sleeping", "waiting")
#: Parked states: the run waits for a person or for code.
PARKED = ("needs_attention", "unknown_workflow")


def kind_of(name: str, version: int) -> str:
    """The registry key of a workflow's code: ``"place-order@1"``."""
    return f"{name}@{version}"


def fingerprint(name: str, encoded_args: str) -> str:
    """Identifies a start request: the same id started again must carry the same one."""
    return hashlib.sha256(f"{name}\x1f{encoded_args}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class NewRun:
    """A run as ``start()`` records it."""

    id: str
    name: str
    version: int
    args: str
    fingerprint: str
    priority: int
    key: str | None
    deadline_at: float | None
    created_at: float
    trace: str | None = None
    owner: str | None = None          # set: recorded already claimed by this worker (token 1)
    lease_until: float | None = None

    @property
    def status(self) -> str:
        return "pending" if self.owner is None else "running"

    @property
    def token(self) -> int:
        return 0 if self.owner is None else 1

    @property
    def started_at(self) -> float | None:
        return None if self.owner is None else self.created_at


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A stored run. ``error`` is JSON (type, message, compensations) or None."""

    id: str
    name: str
    version: int
    args: str
    fingerprint: str
    status: str
    priority: int
    key: str | None
    due_at: float
    deadline_at: float | None
    owner: str | None
    token: int
    lease_until: float | None
    cancel_requested: bool
    result: str | None
    error: str | None
    created_at: float
    started_at: float | None
    updated_at: float
    finished_at: float | None
    recoveries: int
    trace: str | None = None

    @property
    def kind(self) -> str:
        return kind_of(self.name, self.version)


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One operation of a run, at position ``seq``.

    ``kind`` is ``step``, ``compensate``, ``sleep``, ``wait`` or ``publish``. ``status`` is
    ``started`` (intent committed, outcome not yet known), ``completed``, ``failed`` or
    ``retrying`` (failed, due again at ``due_at``). ``result`` and ``error`` are JSON text.
    """

    seq: int
    name: str
    kind: str
    key: str
    status: str
    attempts: int
    started_at: float
    result: str | None = None
    error: str | None = None
    due_at: float | None = None
    finished_at: float | None = None
    once: bool = False


@dataclass(frozen=True, slots=True)
class Fence:
    """A worker's hold on a run: writes carrying an older ``token`` are refused."""

    run_id: str
    token: int
    owner: str


@dataclass(frozen=True, slots=True)
class RunUpdate:
    """The run-level part of a commit: a new status (and what goes with it)."""

    status: str
    due_at: float | None = None
    result: str | None = None
    error: str | None = None
    wake_on_signal: str | None = None   # waiting: due now if such a signal is already there


@dataclass(slots=True)
class Commit:
    """Everything one checkpoint writes, atomically, under the run's fence."""

    steps: list[StepRecord] = field(default_factory=list)
    run: RunUpdate | None = None
    signals_taken: list[int] = field(default_factory=list)
    outbox: list[tuple[Any, str, Any, str]] = field(default_factory=list)  # (Outbox, topic, payload, id)

    def __bool__(self) -> bool:
        return bool(self.steps or self.run or self.signals_taken or self.outbox)


@dataclass(frozen=True, slots=True)
class Limits:
    """Concurrency limits of one workflow name: runs of the name, and runs per key."""

    total: int | None = None
    per_key: int | None = None


@dataclass(frozen=True, slots=True)
class Claimed:
    """A claimed run with its history; ``recovered`` when it was taken from a lost worker."""

    run: RunRecord
    steps: tuple[StepRecord, ...]
    fence: Fence
    recovered: bool


class Store(Protocol):
    """Where runs live. Every method is safe to call from many threads and processes.

    ``claim`` and ``commit`` are the engine's hot path; the rest serve ``start``, signals,
    the handle and the CLI.
    """

    def create(self, run: NewRun) -> RunRecord | None:
        """Record ``run`` (status pending, due now; or running, claimed by ``run.owner`` with
        token 1) unless its id exists; return the existing run in that case, None when this
        call created it."""
        ...

    def claim(
        self, owner: str, kinds: Sequence[str], now: float, lease: float, limit: int,
        limits: Mapping[str, Limits], only: str | None = None,
    ) -> list[Claimed]:
        """Take up to ``limit`` due runs of ``kinds`` (or only run ``only``), highest priority
        first, each with a new fencing token and a lease until ``now + lease``. A run whose
        lease ran out is due. New runs respect ``limits`` (started runs hold their slot)."""
        ...

    def commit(self, fence: Fence, commit: Commit, now: float, lease: float) -> bool:
        """Write ``commit`` atomically if ``fence`` is current, renewing the lease (or ending
        it, when the run update leaves ``running``). Returns whether cancel was requested.
        Raises ``StaleLease`` (writing nothing) when the token is no longer current."""
        ...

    def renew(self, fences: Sequence[Fence], now: float, lease: float) -> list[str]:
        """Extend the leases; return the ids of runs whose fence is no longer current."""
        ...

    def get(self, run_id: str) -> RunRecord | None: ...

    def steps(self, run_id: str) -> list[StepRecord]: ...

    def runs(self, status: str | None = None, limit: int = 100) -> list[RunRecord]:
        """Newest first, optionally of one status."""
        ...

    def next_signal(self, run_id: str, name: str) -> tuple[int, str] | None:
        """The oldest signal ``name`` of the run not yet taken: (its seq, payload JSON)."""
        ...

    def signal(self, run_id: str, name: str, payload: str, now: float) -> bool:
        """Keep a signal for the run (waking it if it waits); False if no such run."""
        ...

    def cancel(self, run_id: str, now: float) -> str | None:
        """Request cancellation; returns the run's status after, None if no such run. A run
        never started is cancelled at once; others wake to compensate."""
        ...

    def park_unknown(self, kinds: Sequence[str], now: float, reason: str) -> list[str]:
        """Mark due runs whose kind is not in ``kinds`` ``unknown_workflow``; return their ids."""
        ...

    def next_due(self, kinds: Sequence[str], after: float) -> float | None:
        """The earliest ``due_at`` (or lease end) later than ``after`` among claimable runs of
        ``kinds`` (runs due already but held back by a concurrency limit are not news)."""
        ...

    def resolve(self, run_id: str, step: str, done: bool, result: str | None, now: float) -> None:
        """Settle a parked step in doubt (the latest record named ``step``) and make the run
        due again. Raises ``WorkflowNotFound`` or ``ValueError``."""
        ...

    def retry(self, run_id: str, now: float) -> None:
        """Make a failed or parked run due again (failed steps become retrying)."""
        ...

    def purge(self, older_than: float, now: float) -> int:
        """Delete finished runs (and their steps and signals) older than that; return count."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Notifying(Protocol):
    """A store that can wake idle workers when a run becomes due (PostgreSQL LISTEN/NOTIFY)."""

    def listen(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake()`` from a background thread on each notice; returns ``stop``."""
        ...


@runtime_checkable
class CountsDue(Protocol):
    """A store that can count its due backlog cheaply (one indexed query), for metrics."""

    def count_due(self, now: float) -> dict[str, int]:
        """Runs due by ``now`` and not claimed, by workflow name: ``pending``, ``sleeping`` or
        ``waiting`` with ``due_at <= now``, and ``running`` past their lease (their worker is
        gone). Names with no due run are left out."""
        ...


def check_limit(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1 or None, got {value!r}")
    return value


def check_seconds(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        value > 0 and math.isfinite(value)
    ):
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


def pick(
    candidates: Sequence[tuple[str, str, str | None, bool]], limit: int,
    limits: Mapping[str, Limits], active: Callable[[str, str | None], tuple[int, int]],
) -> list[str]:
    """Choose up to ``limit`` run ids from due ``candidates`` (id, name, key, started), in
    order, within each name's ``limits``. ``active(name, key)`` counts the started, unfinished
    runs of the name and of the (name, key) pair. A started run always fits: it already holds
    its slot, and refusing it could deadlock a name at its limit."""
    chosen: list[str] = []
    taken_name: dict[str, int] = {}
    taken_key: dict[tuple[str, str | None], int] = {}
    for run_id, name, key, started in candidates:
        if len(chosen) >= limit:
            break
        rule = limits.get(name)
        if started or rule is None or (rule.total is None and (rule.per_key is None or key is None)):
            chosen.append(run_id)
            continue
        total, per_key = active(name, key)
        total += taken_name.get(name, 0)
        per_key += taken_key.get((name, key), 0)
        if rule.total is not None and total >= rule.total:
            continue
        if rule.per_key is not None and key is not None and per_key >= rule.per_key:
            continue
        chosen.append(run_id)
        taken_name[name] = taken_name.get(name, 0) + 1
        taken_key[(name, key)] = taken_key.get((name, key), 0) + 1
    return chosen


def check_resolvable(run_id: str, status: str | None) -> None:
    """Refuse to resolve a step of a run that does not exist (``WorkflowNotFound``) or is not
    parked as ``needs_attention`` (``ValueError``); ``status`` None means no such run."""
    if status is None:
        raise WorkflowNotFound(f"no workflow run {run_id!r}")
    if status != "needs_attention":
        raise ValueError(f"run {run_id!r} is {status}, not needs_attention")


def settle(record: StepRecord, done: bool, result: str | None, now: float) -> StepRecord:
    """A step in doubt, settled by a person: completed with ``result`` or failed."""
    if record.status not in ("started", "retrying", "failed"):
        raise ValueError(f"step {record.name!r} is {record.status}; only a step in doubt "
                         "(started, retrying or failed) can be resolved")
    if done:
        return dataclasses.replace(record, status="completed", result=result or "null",
                                   error=None, finished_at=now)
    error = '{"type":"StepResolvedFailed","message":"marked failed by an operator"}'
    return dataclasses.replace(record, status="failed", error=error, finished_at=now)


def check_retry(run: RunRecord, steps: list[StepRecord]) -> None:
    """Refuse a retry that would run a compensated run forward again."""
    if run.status not in ("failed", "needs_attention", "cancelled", "unknown_workflow"):
        raise ValueError(f"run {run.id!r} is {run.status}; only failed or parked runs can be "
                         "retried")
    if run.status == "cancelled" or any(s.kind == "compensate" for s in steps):
        raise ValueError(f"run {run.id!r} was compensated or cancelled; start a new run "
                         "instead of retrying it")


def open_store(target: str | Store, **options: Any) -> Store:
    """A store from a URL (``sqlite:///path``, ``memory://``, ``postgresql://...``) or as is."""
    if not isinstance(target, str):
        return target
    if target.startswith("sqlite:///"):
        from .sqlite import SQLiteStore

        return SQLiteStore(target[len("sqlite:///"):], **options)
    if target.startswith("memory://"):
        from .memory import MemoryStore

        return MemoryStore()
    if target.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore

        return PostgresStore(target, **options)
    raise ValueError(f"store must be sqlite:///path, postgresql://... or memory://, got {target!r}")
