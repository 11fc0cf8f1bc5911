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
        "sqlite", help="Where idempotency keys, the queue and breaker state live: "
        "sqlite, redis or rabbitmq (the queue; keys stay in SQLite)."),
    report: Path | None = typer.Option(None, help="Write the HTML report here."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the scorecard as JSON."),
    redis_url: str = typer.Option("redis://127.0.0.1:6379/0", help="Redis for --backend redis."),
    amqp_url: str = typer.Option("amqp://guest:guest@127.0.0.1:5672/",
                                 help="RabbitMQ for --backend rabbitmq."),
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
    try:
        options = [
            RunOptions(mode=m, duration=duration, rps=rps, seed=seed, backend=backend,
                       redis_url=redis_url, amqp_url=amqp_url)
            for m in modes
        ]
    except ValueError as exc:
        _fail(str(exc))
    _check_backend(backend, redis_url, amqp_url)
    results = _run_all(options)
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


def _check_backend(backend: str, redis_url: str, amqp_url: str) -> None:
    """The server of --backend answers, before any process of the shop starts."""
    option, url, family = {
        "redis": ("--redis-url", redis_url, "redis"),
        "rabbitmq": ("--amqp-url", amqp_url, "amqp"),
    }.get(backend, ("", "", ""))
    if url:
        check_reachable(parse_backend(url, option, (family,)), DEFAULT_TIMEOUT)


def _run_all(options: list[Any]) -> list[Any]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .runner import run

    results = []
    with Progress(
        TextColumn("[bold]{task.fields[mode]:>5}[/bold]"), BarColumn(),
        TextColumn("{task.fields[phase]:<24}"), TimeElapsedColumn(),
    ) as progress:
        for option in options:
            task = progress.add_task("", total=option.duration, mode=option.mode,
                                     phase="starting the shop")

            def update(phase: str, elapsed: float, total: float, task: Any = task) -> None:
                progress.update(task, completed=min(elapsed, total), phase=phase)

            started = time.monotonic()
            try:
                result = run(option, progress=update)
            except RuntimeError as exc:
                progress.stop()
                _fail(str(exc), RUNTIME)
            except KeyboardInterrupt:
                progress.stop()
                typer.echo("interrupted: every process of the shop was stopped", err=True)
                raise typer.Exit(130) from None
            progress.update(task, completed=option.duration,
                            phase=f"done in {time.monotonic() - started:.0f} s")
            results.append(result)
    return results


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
    backend: str = typer.Option("sqlite", help="sqlite, redis or rabbitmq."),
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
