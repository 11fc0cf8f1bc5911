"""A workflow store in this process's memory: complete semantics, no durability (for tests).

It keeps the same rules as the database stores (fencing tokens, leases, limits, signals), so
a test on it proves engine behaviour; only surviving the process is left to the real stores.
Messages ``ctx.publish`` writes to an ``Outbox`` are kept in ``outbox`` as
``(table, topic, payload, id)``.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import StaleLease, WorkflowNotFound
from .store import (
    ACTIVE,
    CLAIMABLE,
    DUE,
    TERMINAL,
    Claimed,
    Commit,
    Fence,
    Limits,
    NewRun,
    RunRecord,
    StepRecord,
    check_resolvable,
    check_retry,
    pick,
    settle,
)

__all__ = ["MemoryStore"]


class MemoryStore:
    """Runs, steps and signals in dicts behind one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, RunRecord] = {}
        self._steps: dict[str, dict[int, StepRecord]] = {}
        self._signals: dict[str, list[list[Any]]] = {}   # run id -> [seq, name, payload, taken]
        self._signal_seq = 0
        self.outbox: list[tuple[str, str, Any, str]] = []

    def __repr__(self) -> str:
        return "MemoryStore()"

    def create(self, run: NewRun) -> RunRecord | None:
        with self._lock:
            existing = self._runs.get(run.id)
            if existing is not None:
                return existing
            self._runs[run.id] = RunRecord(
                id=run.id, name=run.name, version=run.version, args=run.args,
                fingerprint=run.fingerprint, status=run.status, priority=run.priority,
                key=run.key, due_at=run.created_at, deadline_at=run.deadline_at,
                owner=run.owner, token=run.token, lease_until=run.lease_until,
                cancel_requested=False, result=None, error=None, created_at=run.created_at,
                started_at=run.started_at, updated_at=run.created_at,
                finished_at=None, recoveries=0, trace=run.trace,
            )
            self._steps[run.id] = {}
            return None

    def _due(self, run: RunRecord, kinds: Sequence[str], now: float) -> bool:
        if run.kind not in kinds:
            return False
        if run.status in CLAIMABLE:
            return run.due_at <= now
        return run.status == "running" and (run.lease_until or 0.0) < now

    def _active(self, name: str, key: str | None) -> tuple[int, int]:
        total = per_key = 0
        for run in self._runs.values():
            if run.name == name and run.started_at is not None and run.status in ACTIVE:
                total += 1
                per_key += run.key == key
        return total, per_key

    def claim(
        self, owner: str, kinds: Sequence[str], now: float, lease: float, limit: int,
        limits: Mapping[str, Limits], only: str | None = None,
    ) -> list[Claimed]:
        with self._lock:
            pool = [self._runs[only]] if only in self._runs else [] if only else list(
                self._runs.values())
            due = sorted((r for r in pool if self._due(r, kinds, now)),
                         key=lambda r: (-r.priority, r.due_at))
            chosen = pick([(r.id, r.name, r.key, r.started_at is not None) for r in due],
                          limit, limits, self._active)
            claimed = []
            for run_id in chosen:
                run = self._runs[run_id]
                recovered = run.status == "running"
                run = dataclasses.replace(
                    run, status="running", owner=owner, token=run.token + 1,
                    lease_until=now + lease, updated_at=now,
                    started_at=run.started_at if run.started_at is not None else now,
                    recoveries=run.recoveries + recovered,
                )
                self._runs[run_id] = run
                steps = tuple(sorted(self._steps[run_id].values(), key=lambda s: s.seq))
                claimed.append(Claimed(run, steps, Fence(run_id, run.token, owner), recovered))
            return claimed

    def commit(self, fence: Fence, commit: Commit, now: float, lease: float) -> bool:
        with self._lock:
            run = self._runs.get(fence.run_id)
            if run is None or run.token != fence.token or run.status != "running":
                raise StaleLease(f"run {fence.run_id!r}: token {fence.token} is not current")
            steps = self._steps[fence.run_id]
            for step in commit.steps:
                steps[step.seq] = step
            signals = self._signals.get(fence.run_id, [])
            for signal in signals:
                if signal[0] in commit.signals_taken:
                    signal[3] = True
            for outbox, topic, payload, msg_id in commit.outbox:
                self.outbox.append((outbox.table, topic, payload, msg_id))
            update = commit.run
            if update is None:
                run = dataclasses.replace(run, lease_until=now + lease, updated_at=now)
            else:
                due = update.due_at if update.due_at is not None else run.due_at
                if update.wake_on_signal is not None and any(
                    s[1] == update.wake_on_signal and not s[3] for s in signals
                ):
                    due = now
                run = dataclasses.replace(
                    run, status=update.status, due_at=due, updated_at=now,
                    result=update.result if update.result is not None else run.result,
                    error=update.error, owner=None, lease_until=None,
                    finished_at=now if update.status in TERMINAL else None,
                )
            self._runs[fence.run_id] = run
            return run.cancel_requested

    def renew(self, fences: Sequence[Fence], now: float, lease: float) -> list[str]:
        lost = []
        with self._lock:
            for fence in fences:
                run = self._runs.get(fence.run_id)
                if run is None or run.token != fence.token or run.status != "running":
                    lost.append(fence.run_id)
                else:
                    self._runs[fence.run_id] = dataclasses.replace(run, lease_until=now + lease)
        return lost

    def get(self, run_id: str) -> RunRecord | None:
        with self._lock:
            return self._runs.get(run_id)

    def steps(self, run_id: str) -> list[StepRecord]:
        with self._lock:
            return sorted(self._steps.get(run_id, {}).values(), key=lambda s: s.seq)

    def runs(self, status: str | None = None, limit: int = 100) -> list[RunRecord]:
        with self._lock:
            found = [r for r in self._runs.values() if status is None or r.status == status]
        found.sort(key=lambda r: r.created_at, reverse=True)
        return found[:limit]

    def next_signal(self, run_id: str, name: str) -> tuple[int, str] | None:
        with self._lock:
            for seq, signal_name, payload, taken in self._signals.get(run_id, []):
                if signal_name == name and not taken:
                    return seq, payload
        return None

    def signal(self, run_id: str, name: str, payload: str, now: float) -> bool:
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                return False
            self._signal_seq += 1
            self._signals.setdefault(run_id, []).append([self._signal_seq, name, payload, False])
            if run.status == "waiting":
                self._runs[run_id] = dataclasses.replace(run, due_at=now)
            return True

    def cancel(self, run_id: str, now: float) -> str | None:
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                return None
            if run.status in TERMINAL:
                return run.status
            if run.started_at is None:
                run = dataclasses.replace(run, status="cancelled", cancel_requested=True,
                                          finished_at=now, updated_at=now)
            elif run.status == "running":
                run = dataclasses.replace(run, cancel_requested=True, updated_at=now)
            else:
                run = dataclasses.replace(run, cancel_requested=True, status="pending",
                                          due_at=now, updated_at=now)
            self._runs[run_id] = run
            return run.status

    def park_unknown(self, kinds: Sequence[str], now: float, reason: str) -> list[str]:
        parked = []
        with self._lock:
            for run in list(self._runs.values()):
                if run.kind in kinds or run.status == "unknown_workflow":
                    continue
                if self._due(run, (run.kind,), now):
                    self._runs[run.id] = dataclasses.replace(
                        run, status="unknown_workflow", error=reason, owner=None,
                        lease_until=None, updated_at=now)
                    parked.append(run.id)
        return parked

    def next_due(self, kinds: Sequence[str], after: float) -> float | None:
        with self._lock:
            times = [r.due_at if r.status in CLAIMABLE else (r.lease_until or 0.0)
                     for r in self._runs.values()
                     if r.kind in kinds and (r.status in CLAIMABLE or r.status == "running")]
        later = [t for t in times if t > after]
        return min(later) if later else None

    def count_due(self, now: float) -> dict[str, int]:
        counts: dict[str, int] = {}
        with self._lock:
            for r in self._runs.values():
                if (r.status in DUE and r.due_at <= now) or (
                        r.status == "running" and (r.lease_until or 0.0) < now):
                    counts[r.name] = counts.get(r.name, 0) + 1
        return counts

    def resolve(self, run_id: str, step: str, done: bool, result: str | None, now: float) -> None:
        with self._lock:
            found = self._runs.get(run_id)
            check_resolvable(run_id, None if found is None else found.status)
            run = self._runs[run_id]
            records = [s for s in self._steps[run_id].values() if s.name == step]
            if not records:
                raise ValueError(f"run {run_id!r} has no step {step!r}")
            last = max(records, key=lambda s: s.seq)
            self._steps[run_id][last.seq] = settle(last, done, result, now)
            self._runs[run_id] = dataclasses.replace(run, status="pending", due_at=now,
                                                     error=None, updated_at=now)

    def retry(self, run_id: str, now: float) -> None:
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                raise WorkflowNotFound(f"no workflow run {run_id!r}")
            steps = self._steps[run_id]
            check_retry(run, list(steps.values()))
            for seq, record in list(steps.items()):
                if record.status == "failed":
                    steps[seq] = dataclasses.replace(record, status="retrying", due_at=now)
            self._runs[run_id] = dataclasses.replace(
                run, status="pending", due_at=now, error=None, finished_at=None,
                result=None, updated_at=now)

    def purge(self, older_than: float, now: float) -> int:
        with self._lock:
            old = [r.id for r in self._runs.values()
                   if r.status in TERMINAL and (r.finished_at or r.updated_at) < now - older_than]
            for run_id in old:
                del self._runs[run_id]
                self._steps.pop(run_id, None)
                self._signals.pop(run_id, None)
        return len(old)

    def close(self) -> None:
        pass

