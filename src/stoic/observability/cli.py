"""``stoic alerts``: write Prometheus rules, Alertmanager routes and their unit tests.

Every argument is validated before anything is written: a bad value prints the reason and
exits with status 2, leaving the output directory untouched.
"""

from __future__ import annotations

from pathlib import Path

import typer

from .._cli import USAGE, CommandError, command_group
from .alerts import AlertConfig, write

__all__ = ["app"]

app = command_group("Generate Prometheus alert rules and Alertmanager routes for a service.")


@app.command()
def render(
    service: str = typer.Option(..., help="Value of the `service` label on the service's series."),
    slo: float = typer.Option(0.999, help="Availability objective, strictly between 0 and 1."),
    latency_p99: float = typer.Option(
        0.5, "--latency-p99", help="Seconds; alert when a dependency's p99 stays above it."
    ),
    out: Path = typer.Option(..., help="Directory to write rules.yml, alertmanager.yml, "
                             "rules.test.yml into (created if missing)."),
    team: str | None = typer.Option(None, help="Owning team for routing (default: the service)."),
) -> None:
    """Write rules.yml, alertmanager.yml and rules.test.yml for --service into the --out
    directory (each file is rendered and checked before any is written)."""
    try:
        config = AlertConfig(service=service, slo=slo, latency_p99=latency_p99, team=team)
    except ValueError as exc:
        raise CommandError(str(exc), USAGE) from None
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out must be a directory, {out} is a file", USAGE)
    for path in write(config, out):
        typer.echo(f"wrote {path}")
    typer.echo(f"check with: promtool test rules {out / 'rules.test.yml'}")
