"""``stoic workflow``: look into runs and steer them from the shell.

    stoic workflow list [--status needs_attention] [--json] --store sqlite:///flows.db
    stoic workflow show ID          the step history: timings, keys, attempts, errors
    stoic workflow cancel ID
    stoic workflow retry ID         a failed (not compensated) or parked run
    stoic workflow resolve ID STEP --done [--result JSON] | --failed
    stoic workflow worker URL --app myapp.flows      run the workflows registered there
    stoic workflow purge --older-than 7d

``--store`` defaults to the ``STOIC_WORKFLOWS`` environment variable. ``list`` and ``show``
open a SQLite file read-only. Every error is one line on stderr, never a traceback.
Needs ``stoic[cli]``.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer

from .. import clock
from ..errors import StoicError
from .engine import Workflows, open_store
from .store import Status, Store

__all__ = ["app", "parse_age"]

app = typer.Typer(
    name="workflow", no_args_is_help=True, add_completion=False,
    help="Inspect and steer durable workflow runs (list, show, cancel, retry, resolve, worker,"
         " purge).",
)

StoreOption = typer.Option(
    ..., "--store", "-s", envvar="STOIC_WORKFLOWS",
    help="Workflow store: sqlite:///file.db or postgresql://...",
)
T = TypeVar("T")
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_age(text: str) -> float:
    """``"90"``, ``"15m"``, ``"24h"``, ``"7d"`` to seconds (ValueError otherwise)."""
    found = _AGE.match(text)
    if found is None:
        raise ValueError(f"--older-than must look like 90, 15m, 24h or 7d, got {text!r}")
    return float(found.group(1)) * _UNITS[found.group(2)]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


@contextmanager
def _store(url: str, *, readonly: bool = False) -> Iterator[Store]:
    options: dict[str, Any] = {"readonly": True} if readonly and url.startswith("sqlite") else {}
    try:
        store = open_store(url, **options)
    except (ValueError, ImportError, OSError) as exc:
        raise _fail(f"cannot open workflow store {url!r}: {exc}") from exc
    try:
        yield store
    except typer.Exit:
        raise
    except (StoicError, ValueError, LookupError, OSError, sqlite3.Error) as exc:
        raise _fail(str(exc)) from exc
    except Exception as exc:  # a driver's own error (psycopg): still one line
        raise _fail(f"{type(exc).__name__}: {exc}") from exc
    finally:
        store.close()


def _guard(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except typer.Exit:
        raise
    except sqlite3.OperationalError as exc:
        raise _fail(f"{exc} (is this a workflow store?)") from exc


def _when(epoch: float | None) -> str:
    if not epoch:
        return "-"
    return _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _short(text: str | None, width: int = 70) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    typer.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@app.command("list")
def list_runs(
    store: str = StoreOption,
    status: str = typer.Option(None, "--status", help="Only runs in this status."),
    limit: int = typer.Option(50, "--limit", min=1, help="At most this many, newest first."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """List runs, newest first."""
    if status is not None and status not in {s.value for s in Status}:
        raise _fail(f"--status must be one of {', '.join(s.value for s in Status)}, "
                    f"got {status!r}")
    with _store(store, readonly=True) as opened:
        runs = _guard(lambda: opened.runs(status, limit))
    if as_json:
        for run in runs:
            typer.echo(json.dumps({"id": run.id, "workflow": run.name, "version": run.version,
                                   "status": run.status, "created_at": run.created_at,
                                   "updated_at": run.updated_at, "error": run.error}))
        return
    if not runs:
        typer.echo("no workflow runs" + (f" in status {status}" if status else ""))
        return
    _table(["ID", "WORKFLOW", "STATUS", "CREATED", "UPDATED", "NOTE"],
           [[r.id, f"{r.name}@{r.version}", r.status, _when(r.created_at), _when(r.updated_at),
             _short(r.error, 50)] for r in runs])


@app.command()
def show(run_id: str = typer.Argument(..., help="The run's id."),
         store: str = StoreOption) -> None:
    """One run and its step history (timings, keys, attempts, errors)."""
    with _store(store, readonly=True) as opened:
        run = _guard(lambda: opened.get(run_id))
        if run is None:
            raise _fail(f"no workflow run {run_id!r}")
        steps = _guard(lambda: opened.steps(run_id))
    typer.echo(f"run       {run.id}")
    typer.echo(f"workflow  {run.name} (version {run.version})")
    typer.echo(f"status    {run.status}" + ("  (cancel requested)" if run.cancel_requested
                                              and run.status not in ("cancelled",) else ""))
    typer.echo(f"created   {_when(run.created_at)}   updated {_when(run.updated_at)}"
               f"   recoveries {run.recoveries}")
    if run.deadline_at:
        typer.echo(f"deadline  {_when(run.deadline_at)}")
    if run.result is not None:
        typer.echo(f"result    {_short(run.result, 200)}")
    if run.error:
        typer.echo(f"error     {_short(run.error, 200)}")
    if not steps:
        typer.echo("no steps recorded")
        return
    _table(["#", "STEP", "KIND", "STATUS", "TRIES", "STARTED", "TOOK", "KEY", "ERROR"], [
        [str(s.seq), s.name, s.kind, s.status, str(s.attempts), _when(s.started_at),
         f"{s.finished_at - s.started_at:.3f}s" if s.finished_at else "-", s.key,
         _short(s.error, 40)] for s in steps])


@app.command()
def cancel(run_id: str = typer.Argument(..., help="The run's id."),
           store: str = StoreOption) -> None:
    """Cancel a run: it stops before its next step and compensates."""
    with _store(store) as opened:
        status = opened.cancel(run_id, clock.wall())
    if status is None:
        raise _fail(f"no workflow run {run_id!r}")
    typer.echo(f"{run_id}: {status}")


@app.command()
def retry(run_id: str = typer.Argument(..., help="The run's id."),
          store: str = StoreOption) -> None:
    """Run a failed (not compensated) or parked run again from its failed step."""
    with _store(store) as opened:
        opened.retry(run_id, clock.wall())
    typer.echo(f"{run_id}: pending")


@app.command()
def resolve(
    run_id: str = typer.Argument(..., help="The run's id."),
    step: str = typer.Argument(..., help="The step in doubt (a once=True step)."),
    done: bool = typer.Option(False, "--done", help="The step took effect."),
    failed: bool = typer.Option(False, "--failed", help="The step did not take effect."),
    result: str = typer.Option(None, "--result", help="With --done: the step's result, JSON."),
    store: str = StoreOption,
) -> None:
    """Settle a parked step: --done (with its --result) or --failed; the run goes on."""
    if done == failed:
        raise _fail("give exactly one of --done or --failed")
    if result is not None:
        if failed:
            raise _fail("--result goes with --done")
        try:
            json.loads(result)
        except ValueError as exc:
            raise _fail(f"--result must be JSON: {exc}") from exc
    with _store(store) as opened:
        opened.resolve(run_id, step, done, result, clock.wall())
    typer.echo(f"{run_id}: step {step!r} marked {'done' if done else 'failed'}; run pending")


@app.command()
def purge(
    older_than: str = typer.Option(..., "--older-than", help="Age: 90, 15m, 24h, 7d."),
    store: str = StoreOption,
) -> None:
    """Delete finished runs (completed, failed, cancelled) older than that."""
    try:
        seconds = parse_age(older_than)
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    with _store(store) as opened:
        count = opened.purge(seconds, clock.wall())
    typer.echo(f"purged {count} run{'' if count == 1 else 's'}")


@app.command()
def worker(
    url: str = typer.Argument(..., help="Workflow store: sqlite:///file.db or postgresql://..."),
    app_path: str = typer.Option(..., "--app", help="module or module:attribute holding a "
                                 "Workflows with the registered workflow functions."),
    concurrency: int = typer.Option(8, "--concurrency", min=1, help="Runs worked at once."),
) -> None:
    """Work off due runs of the workflows registered in --app until interrupted."""
    module_name, _, attribute = app_path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise _fail(f"cannot import {module_name!r}: {exc}") from exc
    found = [getattr(module, attribute, None)] if attribute else list(vars(module).values())
    sources = [f for f in found if isinstance(f, Workflows)]
    if not sources:
        raise _fail(f"no Workflows found in {app_path!r}")
    try:
        flows = Workflows(url)
    except (ValueError, ImportError, OSError) as exc:
        raise _fail(f"cannot open workflow store {url!r}: {exc}") from exc
    for source in sources:
        flows.include(source)
    typer.echo(f"stoic workflow worker: {', '.join(flows.kinds)} on {url}", err=True)
    try:
        flows.run_worker(concurrency=concurrency)
    except KeyboardInterrupt:
        pass
    finally:
        flows.close()
