"""The store logic SQLite and PostgreSQL share: one implementation over a small dialect.

``SQLStore`` holds every claim, checkpoint, signal and CLI operation once, written in SQL both
databases accept (``ON CONFLICT ... DO UPDATE``, ``RETURNING``, ``COUNT(*) FILTER``). A
``Dialect`` says the few things that differ: the parameter mark, how a list parameter is
matched, how rows are locked, the column types of the tables. A subclass says how it reaches
the database: ``_write()`` (one durable write transaction), ``_read()`` (rows of one
query), and the optional hooks ``_notify`` (wake idle workers) and ``_claim_lock`` (serialise
claims that count concurrency slots).

Fencing is the same for both: every checkpoint starts with ``UPDATE ... WHERE id = ? AND
token = ? AND status = 'running'``, and when that matched no row nothing of the write is
kept: SQLite reads the row and raises ``StaleLease`` inside the transaction, which rolls it
back; PostgreSQL asserts the match in the statement itself (see ``Dialect.asserts_fence``),
so the checkpoint and its COMMIT travel in one round trip and a stale one fails on the server.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .dialect import (
    CLAIMABLE_SQL,
    RUN_COLUMNS,
    SQLITE,
    Dialect,
    Statements,
    check_prefix,
    run_from_row,
    step_from_row,
    step_params,
)
from .errors import StaleLease, WorkflowNotFound
from .store import TERMINAL, Claimed, Fence, check_resolvable, check_retry, pick, settle

if TYPE_CHECKING:
    from .store import Commit, Limits, NewRun, RunRecord, StepRecord

__all__ = ["SQLStore"]


class SQLStore:
    """A workflow store on a SQL database: every operation of the ``Store`` contract.

    Subclasses provide ``_write`` and ``_read`` and may override the hooks.
    """

    dialect: Dialect = SQLITE

    def __init__(self, prefix: str) -> None:
        self.prefix = check_prefix(prefix)
        self._sql = Statements(prefix, self.dialect)

    # --- what a subclass provides ---------------------------------------------------------

    def _write(self) -> contextlib.AbstractContextManager[Any]:
        """A connection in one write transaction, durable when the block returns."""
        raise NotImplementedError

    def _read(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """The rows of one query."""
        raise NotImplementedError

    def _one(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """One statement as one durable write: its rows."""
        with self._write() as conn:
            return list(conn.execute(sql, params).fetchall())

    def _notify(self, conn: Any) -> None:
        """Tell idle workers that a run may have become due (in the write's transaction)."""

    def _claim_lock(self, conn: Any) -> None:
        """Serialise claims that count concurrency slots (one store, many processes)."""

    def _mark(self, sql: str) -> str:
        return sql.replace("?", self.dialect.mark)

    # --- the engine's path ----------------------------------------------------------------

    def create(self, run: NewRun) -> RunRecord | None:
        values = (run.id, run.name, run.version, f"{run.name}@{run.version}", run.args,
                  run.fingerprint, run.status, run.priority, run.key, run.created_at,
                  run.deadline_at, run.created_at, run.created_at, run.trace, run.owner,
                  run.token, run.lease_until, run.started_at)
        if run.owner is not None:  # created claimed: this process runs it, no one to wake
            created = self._one(self._sql.create, values)
        else:
            with self._write() as conn:
                created = conn.execute(self._sql.create, values).fetchall()
                self._notify(conn)
        if created:
            return None
        existing = self.get(run.id)
        assert existing is not None  # runs are deleted only once finished and old
        return existing

    def _claimable(self, kinds: Sequence[str], now: float,
                   only: str | None) -> tuple[str, list[Any]]:
        """The condition of a claimable run (``<`` and ``<=`` as the contract says)."""
        of_kind, params = self.dialect.among("kind", kinds)
        where = self._mark(f"{of_kind} AND ((status IN ({CLAIMABLE_SQL}) AND due_at <= ?) OR"
                           " (status = 'running' AND lease_until < ?))")
        params += [now, now]
        if only is not None:
            where += self._mark(" AND id = ?")
            params.append(only)
        return where, params

    def claim(
        self, owner: str, kinds: Sequence[str], now: float, lease: float, limit: int,
        limits: Mapping[str, Limits], only: str | None = None,
    ) -> list[Claimed]:
        if limit < 1 or not kinds:
            return []
        sql = self._sql
        where, params = self._claimable(kinds, now, only)
        with self._write() as conn:
            if limits:  # counting slots must not race another worker's claim
                self._claim_lock(conn)
            rows = conn.execute(self._mark(
                f"SELECT id, name, ckey, started_at IS NOT NULL, status FROM {sql.runs} WHERE"
                f" {where} ORDER BY priority DESC, due_at LIMIT ?{self.dialect.skip_locked}"),
                (*params, limit * 4 if limits else limit)).fetchall()
            if not rows:
                return []

            def active(name: str, key: str | None) -> tuple[int, int]:
                total, per_key = conn.execute(sql.active, (key, name)).fetchone()
                return int(total), int(per_key)

            chosen = pick([(r[0], r[1], r[2], bool(r[3])) for r in rows], limit, limits, active)
            was = {r[0]: r[4] for r in rows}
            claimed = []
            for run_id in chosen:
                recovered = was[run_id] == "running"
                run = run_from_row(conn.execute(
                    sql.take, (owner, now + lease, now, now, int(recovered), run_id)).fetchone())
                steps = tuple(step_from_row(s)
                              for s in conn.execute(sql.history, (run_id,)).fetchall())
                claimed.append(Claimed(run, steps, Fence(run_id, run.token, owner), recovered))
        return claimed

    def commit(self, fence: Fence, commit: Commit, now: float, lease: float) -> bool:
        try:
            with self._write() as conn:
                fenced = self._checkpoint(conn, fence, commit, now, lease)
                row = () if self.dialect.asserts_fence else fenced.fetchone()
                if row is None:  # raised inside the write: nothing of it is kept
                    raise StaleLease(f"run {fence.run_id!r}: token {fence.token} is not current")
        except self._fence_failed as exc:
            raise StaleLease(f"run {fence.run_id!r}: token {fence.token} is not current") from exc
        if not row:  # the dialect asserted the fence; read the result after the commit
            row = fenced.fetchone()
        return bool(row[0])

    #: What the database raises when a fence asserted in SQL failed (nothing by default).
    _fence_failed: tuple[type[BaseException], ...] = ()

    def _checkpoint(self, conn: Any, fence: Fence, commit: Commit, now: float,
                    lease: float) -> Any:
        """Send a checkpoint's statements; returns the cursor of the fenced UPDATE."""
        sql = self._sql
        update = commit.run
        if update is None:
            fenced = conn.execute(sql.touch, (now + lease, now, fence.run_id, fence.token))
        else:
            fenced = conn.execute(sql.leave, (
                update.status, update.due_at, update.result, update.error, now,
                now if update.status in TERMINAL else None, fence.run_id, fence.token))
            if update.wake_on_signal is not None:
                conn.execute(sql.wake, (now, fence.run_id, fence.run_id, update.wake_on_signal))
        if commit.steps:
            self._put_steps(conn, fence.run_id, commit.steps)
        if commit.signals_taken:
            of_seq, params = self.dialect.among("seq", commit.signals_taken)
            conn.execute(f"UPDATE {sql.signals} SET taken = 1 WHERE {of_seq}", params)
        for outbox, topic, payload, msg_id in commit.outbox:
            outbox.add(conn, topic, payload, id=msg_id)
        if update is not None and update.status not in TERMINAL:
            self._notify(conn)
        return fenced

    def _put_steps(self, conn: Any, run_id: str, steps: Sequence[StepRecord]) -> None:
        conn.executemany(self._sql.put_step, [step_params(run_id, s) for s in steps])

    def renew(self, fences: Sequence[Fence], now: float, lease: float) -> list[str]:
        if not fences:
            return []
        lost = []
        with self._write() as conn:
            for fence in fences:
                if conn.execute(self._sql.renew, (now + lease, fence.run_id,
                                                  fence.token)).rowcount != 1:
                    lost.append(fence.run_id)
        return lost

    # --- reads ----------------------------------------------------------------------------

    def get(self, run_id: str) -> RunRecord | None:
        rows = self._read(self._sql.get, (run_id,))
        return run_from_row(rows[0]) if rows else None

    def steps(self, run_id: str) -> list[StepRecord]:
        return [step_from_row(r) for r in self._read(self._sql.history, (run_id,))]

    def runs(self, status: str | None = None, limit: int = 100) -> list[RunRecord]:
        where, params = ("WHERE status = ?", (status,)) if status else ("", ())
        return [run_from_row(r) for r in self._read(self._mark(
            f"SELECT {RUN_COLUMNS} FROM {self._sql.runs} {where} ORDER BY created_at DESC"
            " LIMIT ?"), (*params, limit))]

    def next_signal(self, run_id: str, name: str) -> tuple[int, str] | None:
        rows = self._read(self._sql.next_signal, (run_id, name))
        return (int(rows[0][0]), rows[0][1]) if rows else None

    def next_due(self, kinds: Sequence[str], after: float) -> float | None:
        if not kinds:
            return None
        of_kind, params = self.dialect.among("kind", kinds)
        rows = self._read(self._mark(
            "SELECT MIN(at) FROM (SELECT CASE WHEN status = 'running' THEN lease_until ELSE"
            f" due_at END AS at FROM {self._sql.runs} WHERE {of_kind} AND status IN"
            f" ({CLAIMABLE_SQL}, 'running')) AS due WHERE at > ?"), (*params, after))
        return None if rows[0][0] is None else float(rows[0][0])

    def count_due(self, now: float) -> dict[str, int]:
        return {name: int(n) for name, n in self._read(self._sql.count_due, (now, now))}

    # --- from outside the run -------------------------------------------------------------

    def signal(self, run_id: str, name: str, payload: str, now: float) -> bool:
        sql = self._sql
        with self._write() as conn:
            if conn.execute(sql.exists, (run_id,)).fetchone() is None:
                return False
            conn.execute(sql.signal, (run_id, name, payload, now))
            conn.execute(sql.signalled, (now, run_id))
            self._notify(conn)
        return True

    def cancel(self, run_id: str, now: float) -> str | None:
        sql = self._sql
        with self._write() as conn:
            row = conn.execute(sql.status, (run_id,)).fetchone()
            if row is None:
                return None
            status, started = row
            if status in TERMINAL:
                return str(status)
            if started is None:
                status = "cancelled"
                conn.execute(sql.cancel_new, (now, now, run_id))
            elif status == "running":
                conn.execute(sql.cancel_running, (now, run_id))
            else:
                status = "pending"
                conn.execute(sql.cancel_waiting, (now, now, run_id))
                self._notify(conn)
        return str(status)

    def park_unknown(self, kinds: Sequence[str], now: float, reason: str) -> list[str]:
        of_kind, params = self.dialect.among("kind", kinds)
        with self._write() as conn:
            rows = conn.execute(self._mark(
                f"UPDATE {self._sql.runs} SET status = 'unknown_workflow', error = ?,"
                f" owner = NULL, lease_until = NULL, updated_at = ? WHERE NOT ({of_kind}) AND"
                f" ((status IN ({CLAIMABLE_SQL}) AND status != 'unknown_workflow' AND due_at <= ?)"
                " OR (status = 'running' AND lease_until < ?)) RETURNING id"),
                (reason, now, *params, now, now)).fetchall()
        return [r[0] for r in rows]

    def resolve(self, run_id: str, step: str, done: bool, result: str | None, now: float) -> None:
        sql = self._sql
        with self._write() as conn:
            row = conn.execute(sql.status, (run_id,)).fetchone()
            check_resolvable(run_id, None if row is None else row[0])
            found = conn.execute(sql.last_step, (run_id, step)).fetchone()
            if found is None:
                raise ValueError(f"run {run_id!r} has no step {step!r}")
            s = settle(step_from_row(found), done, result, now)
            conn.execute(sql.settle, (s.status, s.result, s.error, s.finished_at, run_id, s.seq))
            conn.execute(sql.resume, (now, now, run_id))
            self._notify(conn)

    def retry(self, run_id: str, now: float) -> None:
        sql = self._sql
        with self._write() as conn:
            row = conn.execute(sql.locked_run, (run_id,)).fetchone()
            if row is None:
                raise WorkflowNotFound(f"no workflow run {run_id!r}")
            steps = [step_from_row(s) for s in conn.execute(sql.history, (run_id,)).fetchall()]
            check_retry(run_from_row(row), steps)
            conn.execute(sql.retry_steps, (now, run_id))
            conn.execute(sql.retry_run, (now, now, run_id))
            self._notify(conn)

    def purge(self, older_than: float, now: float) -> int:
        sql = self._sql
        before = (now - older_than,)
        with self._write() as conn:
            conn.execute(sql.purge_steps, before)
            conn.execute(sql.purge_signals, before)
            return len(conn.execute(sql.purge_runs, before).fetchall())
