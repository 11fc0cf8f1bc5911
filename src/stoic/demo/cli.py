"""``stoic demo``: the shop under chaos, naive code vs stoic, measured and plotted.

    stoic demo                         # both builds, 30 s each, scorecard side by side
    stoic demo --quick                 # a shorter run (under 45 s in all)
    stoic demo --report report.html --json scorecard.json
    stoic demo serve                   # keep the stoic shop up, for you and Chaos Toolkit
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, NoReturn

import typer

from .._cli import DEFAULT_TIMEOUT, RUNTIME, USAGE, CommandError, check_reachable, parse_backend

__all__ = ["app"]

app = typer.Typer(
    help="Run a small real shop under a chaos scenario, naive code vs stoic, and compare.",
    invoke_without_command=True, add_completion=False,
)

QUICK_DURATION = 12.0


def _fail(message: str, exit_code: int = USAGE) -> NoReturn:
    raise CommandError(message, exit_code)  # the root command prints it on one line


@app.callback()
def demo(
    ctx: typer.Context,
    quick: bool = typer.Option(False, "--quick", help=f"A {QUICK_DURATION:.0f} s run per build."),
    mode: str = typer.Option("both", help="naive, stoic or both."),
    duration: float | None = typer.Option(None, help="Seconds of load per build (default 30)."),
    rps: float = typer.Option(30.0, help="Orders per second sent to the shop."),
    seed: int = typer.Option(1, help="Fixes every random choice: the same seed, the same run."),
    backend: str = typer.Option(
        "sqlite", help="Where stoic's machinery lives (idempotency keys, the queue, breaker "
        "state, workflows): sqlite, redis, rabbitmq (the queue; keys stay in SQLite) or "
        "postgres (keys, queue, workflows and their outbox, in a schema of the run's own)."),
    report: Path | None = typer.Option(None, help="Write the HTML report here."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the scorecard as JSON."),
    redis_url: str = typer.Option("redis://127.0.0.1:6379/0", help="Redis for --backend redis."),
    amqp_url: str = typer.Option("amqp://guest:guest@127.0.0.1:5672/",
                                 help="RabbitMQ for --backend rabbitmq."),
    postgres_url: str = typer.Option("postgresql://postgres@127.0.0.1:5432/test",
                                     help="PostgreSQL for --backend postgres."),
    keep: bool = typer.Option(False, "--keep", help="Keep the working files (databases, logs)."),
    workdir: Path | None = typer.Option(
        None, help="Put the working files here, one folder per build, and keep them."),
) -> None:
    """Run the scenario and print the scorecard (and write the report and JSON if asked)."""
    if ctx.invoked_subcommand is not None:
        return
    from .runner import BACKENDS, MODES, RunOptions

    if mode not in (*MODES, "both"):
        _fail(f"--mode must be naive, stoic or both, got {mode!r}")
    if backend not in BACKENDS:
        _fail(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if duration is None:
        duration = QUICK_DURATION if quick else 30.0
    modes = list(MODES) if mode == "both" else [mode]
    for path, what in ((report, "--report"), (json_path, "--json")):
        if path is not None and not path.parent.exists():
            _fail(f"{what}: directory {path.parent} does not exist")
    if workdir is not None and workdir.exists() and not workdir.is_dir():
        _fail(f"--workdir: {workdir} is not a directory")
    try:
        options = [
            RunOptions(mode=m, duration=duration, rps=rps, seed=seed, backend=backend,
                       redis_url=redis_url, amqp_url=amqp_url, postgres_url=postgres_url)
            for m in modes
        ]
    except ValueError as exc:
        _fail(str(exc))
    _check_backend(backend, redis_url, amqp_url, postgres_url)
    results = _run_all(options, keep=keep or workdir is not None, parent=workdir)
    data = [r.as_dict() for r in results]
    _print_scorecard(data)
    if json_path is not None:
        json_path.write_text(json.dumps(
            {"runs": [{k: v for k, v in d.items() if k != "series"} | {"series": d["series"]}
                      for d in data]}, indent=2))
        typer.echo(f"scorecard written to {json_path}")
    if report is not None:
        from .report import render

        report.write_text(render(data))
        typer.echo(f"report written to {report}")


def _check_backend(backend: str, redis_url: str, amqp_url: str, postgres_url: str) -> None:
    """The server of --backend answers, before any process of the shop starts."""
    option, url, family = {
        "redis": ("--redis-url", redis_url, "redis"),
        "rabbitmq": ("--amqp-url", amqp_url, "amqp"),
        "postgres": ("--postgres-url", postgres_url, "postgresql"),
    }.get(backend, ("", "", ""))
    if url:
        check_reachable(parse_backend(url, option, (family,)), DEFAULT_TIMEOUT)


def _run_all(options: list[Any], *, keep: bool, parent: Path | None) -> list[Any]:
    """Run each build in its own working directory; remove the directories unless ``keep``."""
    import dataclasses

    from rich.console import Console

    from . import workdirs
    from .runner import run

    console = Console(stderr=True, soft_wrap=True)
    for gone in workdirs.sweep():
        console.print(f"removed {gone}, left behind by an earlier run that was killed")
    folders = {o.mode: workdirs.make(o.mode, parent) for o in options}
    where = parent if parent is not None else ", ".join(str(f) for f in folders.values())
    console.print(f"working files: {where}" + ("" if keep else " (removed at the end; --keep to keep)"))
    results = []
    try:
        with _Progress(console) as progress:
            for option in options:
                option = dataclasses.replace(option, workdir=str(folders[option.mode]),
                                             cleanup=not keep)
                update = progress.start(option.mode, option.duration)
                try:
                    result = run(option, progress=update)
                except RuntimeError as exc:
                    progress.stop()
                    _fail(str(exc), RUNTIME)
                except KeyboardInterrupt:
                    progress.stop()
                    typer.echo("interrupted: every process of the shop was stopped", err=True)
                    raise typer.Exit(130) from None
                progress.done(option.mode)
                results.append(result)
    finally:
        if not keep:
            for folder in folders.values():
                workdirs.remove(folder)
    return results


class _Progress:
    """Where each build is: a live bar on a terminal, a plain line per phase elsewhere.

    The clock of a build keeps running until the build is done (its drain included), so a
    person watching sees it working, not stuck.
    """

    def __init__(self, console: Any) -> None:
        self.console = console
        self.live = console.is_terminal
        self.bar: Any = None
        self.tasks: dict[str, Any] = {}
        self.started: dict[str, float] = {}
        self.phase: dict[str, str] = {}

    def __enter__(self) -> _Progress:
        if self.live:
            from rich.progress import BarColumn, Progress, TextColumn

            self.bar = Progress(
                TextColumn("[bold]{task.fields[mode]:>5}[/bold]"), BarColumn(),
                TextColumn("{task.fields[phase]:<26}"), _clock_column(), console=self.console,
            )
            self.bar.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def start(self, mode: str, duration: float) -> Any:
        """Show build ``mode`` starting; returns the callback ``runner.run`` reports to."""
        self.started[mode] = time.monotonic()
        self.phase[mode] = ""
        if self.bar is not None:
            self.tasks[mode] = self.bar.add_task("", total=duration, mode=mode,
                                                 phase="starting the shop", t0=time.monotonic(),
                                                 stopped=None)
        else:
            self.console.print(f"{mode}: starting the shop")

        def update(phase: str, elapsed: float, total: float) -> None:
            if self.bar is not None:
                self.bar.update(self.tasks[mode], completed=min(elapsed, total), phase=phase)
            if phase != self.phase[mode]:
                self.phase[mode] = phase
                if self.bar is None:
                    self.console.print(f"{mode}: {phase} (at {elapsed:.0f} s of {total:.0f})")

        return update

    def done(self, mode: str) -> None:
        took = time.monotonic() - self.started[mode]
        if self.bar is not None:
            task = self.tasks[mode]
            self.bar.update(task, completed=self.bar.tasks[task].total, phase=f"done in {took:.0f} s",
                            stopped=took)
        else:
            self.console.print(f"{mode}: done in {took:.0f} s")


def _clock_column() -> Any:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Clock(ProgressColumn):
        """Time since the build started, running until it is done (rich's stops at 100%)."""

        def render(self, task: Any) -> Text:
            took = task.fields.get("stopped")
            if took is None:
                took = time.monotonic() - task.fields["t0"]
            minutes, seconds = divmod(int(took), 60)
            return Text(f"{minutes}:{seconds:02d}", style="progress.elapsed")

    return Clock()


def _print_scorecard(data: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    from .report import SCORECARD_ROWS, format_value

    first = data[0]
    table = Table(title=(f"stoic demo: {first['duration']:.0f} s at {first['rps']:.0f} orders/s, "
                         f"seed {first['seed']}, backend {first['backend']}"))
    table.add_column("counted from the services' databases")
    for run in data:
        table.add_column(run["mode"], justify="right")
    for key, label, kind in SCORECARD_ROWS:
        table.add_row(label, *(format_value(run["scorecard"].get(key), kind) for run in data))
    console = Console()
    console.print(table)
    for run in data:
        for note in run.get("notes", []):
            console.print(f"[yellow]note ({run['mode']}):[/yellow] {note}")


@app.command()
def serve(
    port: int = typer.Option(8000, help="Port of the orders service (POST /orders)."),
    proxy_port: int = typer.Option(8474, help="Port of the chaos proxy's Toxiproxy API."),
    backend: str = typer.Option("sqlite", help="sqlite, redis, rabbitmq or postgres."),
    workdir: Path | None = typer.Option(None, help="Where the databases go (default: temp)."),
) -> None:
    """Keep the shop (stoic build) up until Ctrl-C, for you and for Chaos Toolkit."""
    import socket
    import tempfile

    from .procs import free_port
    from .runner import BACKENDS, RunOptions, Shop

    if backend not in BACKENDS:
        _fail(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    for value, what in ((port, "--port"), (proxy_port, "--proxy-port")):
        if not 1 <= value <= 65535:
            _fail(f"{what} must be in 1..65535, got {value}")
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", value))
            except OSError:
                _fail(f"{what}: port {value} is already in use")
    directory = workdir or Path(tempfile.mkdtemp(prefix="stoic-demo-serve-"))
    directory.mkdir(parents=True, exist_ok=True)
    ports = {"orders": port, "payments": free_port(), "inventory": free_port(),
             "fulfillment": free_port()}
    try:
        shop = Shop(RunOptions(mode="stoic", backend=backend), directory, ports=ports,
                    proxy_port=proxy_port)
    except RuntimeError as exc:
        _fail(str(exc), RUNTIME)
    with shop:
        typer.echo(f"orders:      http://127.0.0.1:{port}/orders  (POST {{\"order_id\": ...}})")
        typer.echo(f"metrics:     http://127.0.0.1:{port}/metrics")
        typer.echo(f"chaos proxy: http://127.0.0.1:{proxy_port}  (Toxiproxy API; proxies "
                   "payments, inventory, fulfillment)")
        typer.echo(f"databases:   {directory}")
        typer.echo("Ctrl-C to stop.")
        try:
            while True:
                time.sleep(1.0)
                if not shop.procs.alive("orders"):
                    _fail(f"the orders service stopped; see {directory / 'orders.log'}", RUNTIME)
        except KeyboardInterrupt:
            typer.echo("stopping")
