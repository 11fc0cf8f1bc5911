"""The SQL text of the workflow stores: tables, columns, statements, and what differs by database.

A ``Dialect`` says the few things SQLite and PostgreSQL write differently: the parameter mark,
how a list parameter is matched, how rows are locked, the column types of the tables.
``Statements`` builds a store's fixed statements once, for its table prefix and dialect, from
SQL both databases accept (``ON CONFLICT ... DO UPDATE``, ``RETURNING``, ``COUNT(*) FILTER``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .store import ACTIVE, CLAIMABLE, DUE, TERMINAL, RunRecord, StepRecord

__all__ = [
    "ACTIVE_SQL",
    "ASSERT_FENCE",
    "CLAIMABLE_SQL",
    "POSTGRES",
    "RUN_COLUMNS",
    "SQLITE",
    "STEP_COLUMNS",
    "TABLE_PREFIX",
    "Dialect",
    "Statements",
    "check_prefix",
    "run_from_row",
    "step_from_row",
    "step_params",
]

#: A table prefix both SQL stores accept (it is spliced into SQL, so it is checked first).
TABLE_PREFIX = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,40}$")
#: The columns ``run_from_row`` and ``step_from_row`` read, in order.
RUN_COLUMNS = (
    "id, name, version, args, fingerprint, status, priority, ckey, due_at, deadline_at, owner,"
    " token, lease_until, cancel, result, error, created_at, started_at, updated_at,"
    " finished_at, recoveries, trace"
)
STEP_COLUMNS = (
    "seq, name, kind, key, status, attempts, started_at, result, error, due_at, finished_at, once"
)


def _listed(states: Sequence[str] | frozenset[str]) -> str:
    return ", ".join(f"'{s}'" for s in sorted(states))


#: The states of ``store`` as SQL lists.
CLAIMABLE_SQL, _DUE, ACTIVE_SQL, _TERMINAL = (_listed(s) for s in (CLAIMABLE, DUE, ACTIVE,
                                                                  TERMINAL))
#: ``{runs}``, ``{steps}``, ``{signals}``, ``{real}``, ``{bigint}``, ``{serial}`` and
#: ``{rowid}`` are filled in per store and dialect.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS {runs} (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, version INTEGER NOT NULL, kind TEXT NOT NULL,
    args TEXT NOT NULL, fingerprint TEXT NOT NULL, status TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0, ckey TEXT, due_at {real} NOT NULL, deadline_at {real},
    owner TEXT, token {bigint} NOT NULL DEFAULT 0, lease_until {real},
    cancel SMALLINT NOT NULL DEFAULT 0, result TEXT, error TEXT, created_at {real} NOT NULL,
    started_at {real}, updated_at {real} NOT NULL, finished_at {real},
    recoveries INTEGER NOT NULL DEFAULT 0, trace TEXT);
CREATE INDEX IF NOT EXISTS {runs}_due ON {runs} (status, due_at);
CREATE INDEX IF NOT EXISTS {runs}_created ON {runs} (created_at);
CREATE TABLE IF NOT EXISTS {steps} (
    run_id TEXT NOT NULL, seq INTEGER NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL,
    key TEXT NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL,
    started_at {real} NOT NULL, result TEXT, error TEXT, due_at {real}, finished_at {real},
    once SMALLINT NOT NULL DEFAULT 0, PRIMARY KEY (run_id, seq)){rowid};
CREATE TABLE IF NOT EXISTS {signals} (
    seq {serial} PRIMARY KEY, run_id TEXT NOT NULL, name TEXT NOT NULL, payload TEXT NOT NULL,
    sent_at {real} NOT NULL, taken SMALLINT NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS {signals}_run ON {signals} (run_id, name, seq)
"""


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between the SQL the two stores send."""

    name: str
    mark: str                 # the parameter mark: "?" or "%s"
    list_param: bool          # one array parameter (= ANY(%s)) instead of a mark per value
    lock_rows: str            # appended to a SELECT that reads rows it will update
    skip_locked: str          # appended to the claim's SELECT
    same: str                 # NULL-safe equality
    types: Mapping[str, str]  # the schema's column types
    #: The fenced UPDATE fails the transaction by itself when it matched no row (a division
    #: by zero), so a write can be sent with its COMMIT at once and its results read after.
    asserts_fence: bool = False

    def among(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """``column`` is one of ``values``: the SQL and its parameters."""
        if self.list_param:
            return f"{column} = ANY({self.mark})", [list(values)]
        if not values:
            return "0 = 1", []
        return f"{column} IN ({', '.join([self.mark] * len(values))})", list(values)

    def schema(self, prefix: str) -> list[str]:
        """The statements that create a store's tables (idempotent)."""
        text = _SCHEMA.format(runs=f"{prefix}_runs", steps=f"{prefix}_steps",
                              signals=f"{prefix}_signals", **self.types)
        return [s.strip() for s in text.split(";")]


SQLITE = Dialect("sqlite", "?", False, "", "", "IS",
                 {"real": "REAL", "bigint": "INTEGER", "serial": "INTEGER",
                  "rowid": " WITHOUT ROWID"})
POSTGRES = Dialect("postgres", "%s", True, " FOR UPDATE", " FOR UPDATE SKIP LOCKED",
                   "IS NOT DISTINCT FROM",
                   {"real": "DOUBLE PRECISION", "bigint": "BIGINT", "serial": "BIGSERIAL",
                    "rowid": ""}, asserts_fence=True)


def check_prefix(prefix: object) -> str:
    if not isinstance(prefix, str) or not TABLE_PREFIX.match(prefix):
        raise ValueError(f"prefix must be a plain SQL identifier, got {prefix!r}")
    return prefix


def run_from_row(row: Sequence[Any]) -> RunRecord:
    """A ``RunRecord`` from a row of ``RUN_COLUMNS``."""
    return RunRecord(
        id=row[0], name=row[1], version=int(row[2]), args=row[3], fingerprint=row[4],
        status=row[5], priority=int(row[6]), key=row[7], due_at=float(row[8]),
        deadline_at=row[9], owner=row[10], token=int(row[11]), lease_until=row[12],
        cancel_requested=bool(row[13]), result=row[14], error=row[15], created_at=row[16],
        started_at=row[17], updated_at=row[18], finished_at=row[19], recoveries=int(row[20]),
        trace=row[21],
    )


def step_from_row(row: Sequence[Any]) -> StepRecord:
    return StepRecord(
        seq=int(row[0]), name=row[1], kind=row[2], key=row[3], status=row[4],
        attempts=int(row[5]), started_at=float(row[6]), result=row[7], error=row[8],
        due_at=row[9], finished_at=row[10], once=bool(row[11]),
    )


def step_params(run_id: str, s: StepRecord) -> tuple[Any, ...]:
    return (run_id, s.seq, s.name, s.kind, s.key, s.status, s.attempts, s.started_at, s.result,
            s.error, s.due_at, s.finished_at, int(s.once))


#: After a CTE ``f`` of the fenced UPDATE: its ``cancel``, or an error when it matched no row.
ASSERT_FENCE = "SELECT (SELECT cancel FROM f), 1 / (SELECT COUNT(*) FROM f)"


class Statements:
    """The fixed statements of one store, built once with its tables and parameter mark."""

    def __init__(self, prefix: str, dialect: Dialect) -> None:
        runs, steps, signals = f"{prefix}_runs", f"{prefix}_steps", f"{prefix}_signals"
        self.runs, self.steps, self.signals = runs, steps, signals
        fenced = "WHERE id = ? AND token = ? AND status = 'running' RETURNING cancel"
        text = {
            "create": f"INSERT INTO {runs} (id, name, version, kind, args, fingerprint, status,"
                      " priority, ckey, due_at, deadline_at, created_at, updated_at, trace, owner,"
                      " token, lease_until, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
                      " ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING RETURNING id",
            "get": f"SELECT {RUN_COLUMNS} FROM {runs} WHERE id = ?",
            "history": f"SELECT {STEP_COLUMNS} FROM {steps} WHERE run_id = ? ORDER BY seq",
            "active": f"SELECT COUNT(*), COUNT(*) FILTER (WHERE ckey {dialect.same} ?) FROM"
                      f" {runs} WHERE name = ? AND started_at IS NOT NULL AND status IN"
                      f" ({ACTIVE_SQL})",
            "take": f"UPDATE {runs} SET status = 'running', owner = ?, token = token + 1,"
                    " lease_until = ?, updated_at = ?, started_at = COALESCE(started_at, ?),"
                    f" recoveries = recoveries + ? WHERE id = ? RETURNING {RUN_COLUMNS}",
            "touch": f"UPDATE {runs} SET lease_until = ?, updated_at = ? {fenced}",
            "leave": f"UPDATE {runs} SET status = ?, due_at = COALESCE(?, due_at),"
                     " result = COALESCE(?, result), error = ?, owner = NULL,"
                     f" lease_until = NULL, updated_at = ?, finished_at = ? {fenced}",
            "wake": f"UPDATE {runs} SET due_at = ? WHERE id = ? AND EXISTS (SELECT 1 FROM"
                    f" {signals} WHERE run_id = ? AND name = ? AND taken = 0)",
            "put_step": f"INSERT INTO {steps} (run_id, {STEP_COLUMNS}) VALUES (?, ?, ?, ?, ?,"
                        " ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, seq) DO UPDATE SET"
                        " name = excluded.name, kind = excluded.kind, key = excluded.key,"
                        " status = excluded.status, attempts = excluded.attempts,"
                        " started_at = excluded.started_at, result = excluded.result,"
                        " error = excluded.error, due_at = excluded.due_at,"
                        " finished_at = excluded.finished_at, once = excluded.once",
            "renew": f"UPDATE {runs} SET lease_until = ? WHERE id = ? AND token = ? AND"
                     " status = 'running'",
            "next_signal": f"SELECT seq, payload FROM {signals} WHERE run_id = ? AND name = ?"
                           " AND taken = 0 ORDER BY seq LIMIT 1",
            "count_due": f"SELECT name, COUNT(*) FROM {runs} WHERE (status IN ({_DUE}) AND"
                         " due_at <= ?) OR (status = 'running' AND lease_until < ?) GROUP BY name",
            "exists": f"SELECT 1 FROM {runs} WHERE id = ?",
            "signal": f"INSERT INTO {signals} (run_id, name, payload, sent_at) VALUES"
                      " (?, ?, ?, ?)",
            "signalled": f"UPDATE {runs} SET due_at = ? WHERE id = ? AND status = 'waiting'",
            "status": f"SELECT status, started_at FROM {runs} WHERE id = ?{dialect.lock_rows}",
            "cancel_new": f"UPDATE {runs} SET status = 'cancelled', cancel = 1,"
                          " finished_at = ?, updated_at = ? WHERE id = ?",
            "cancel_running": f"UPDATE {runs} SET cancel = 1, updated_at = ? WHERE id = ?",
            "cancel_waiting": f"UPDATE {runs} SET cancel = 1, status = 'pending', due_at = ?,"
                              " updated_at = ? WHERE id = ?",
            "last_step": f"SELECT {STEP_COLUMNS} FROM {steps} WHERE run_id = ? AND name = ?"
                         " ORDER BY seq DESC LIMIT 1",
            "settle": f"UPDATE {steps} SET status = ?, result = ?, error = ?, finished_at = ?"
                      " WHERE run_id = ? AND seq = ?",
            "resume": f"UPDATE {runs} SET status = 'pending', due_at = ?, error = NULL,"
                      " updated_at = ? WHERE id = ?",
            "locked_run": f"SELECT {RUN_COLUMNS} FROM {runs} WHERE id = ?{dialect.lock_rows}",
            "retry_steps": f"UPDATE {steps} SET status = 'retrying', due_at = ? WHERE"
                           " run_id = ? AND status = 'failed'",
            "retry_run": f"UPDATE {runs} SET status = 'pending', due_at = ?, error = NULL,"
                         " result = NULL, finished_at = NULL, updated_at = ? WHERE id = ?",
        }
        old = (f"SELECT id FROM {runs} WHERE status IN ({_TERMINAL}) AND"
               " COALESCE(finished_at, updated_at) < ?")
        text["purge_steps"] = f"DELETE FROM {steps} WHERE run_id IN ({old})"
        text["purge_signals"] = f"DELETE FROM {signals} WHERE run_id IN ({old})"
        text["purge_runs"] = f"DELETE FROM {runs} WHERE id IN ({old}) RETURNING id"
        if dialect.asserts_fence:
            for name in ("touch", "leave"):
                text[f"{name}_update"] = text[name]
                text[name] = f"WITH f AS ({text[name]}) {ASSERT_FENCE}"
        for name, sql in text.items():
            setattr(self, name, sql.replace("?", dialect.mark))

    create: str
    get: str
    history: str
    active: str
    take: str
    touch: str
    leave: str
    touch_update: str   # the fenced UPDATEs alone (dialects that assert the fence)
    leave_update: str
    wake: str
    put_step: str
    renew: str
    next_signal: str
    count_due: str
    exists: str
    signal: str
    signalled: str
    status: str
    cancel_new: str
    cancel_running: str
    cancel_waiting: str
    last_step: str
    settle: str
    resume: str
    locked_run: str
    retry_steps: str
    retry_run: str
    purge_steps: str
    purge_signals: str
    purge_runs: str
