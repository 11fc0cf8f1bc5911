"""``stoic config check FILE``: validate a policy file and print what it resolves to.

The environment overrides (``STOIC_POLICIES__...``) of the current shell are applied, so
the output is what a service started from this shell would run. A bad file prints the
error naming the file, key and value, and exits with status 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .._cli import USAGE, CommandError, command_group
from . import ConfigError, load

__all__ = ["app"]

app = command_group("Check policy configuration files (TOML or YAML).")


@app.command()
def check(
    file: Path = typer.Argument(..., help="The policy file: .toml, or .yaml/.yml."),
    as_json: bool = typer.Option(False, "--json", help="Print the resolved settings as JSON."),
) -> None:
    """Validate FILE and print each named policy as the pipeline it builds."""
    try:
        registry = load(file)
    except ConfigError as exc:
        raise CommandError(str(exc), USAGE) from None  # one line, like every stoic command
    settings = registry.settings()
    if as_json:
        typer.echo(json.dumps(settings, indent=2, sort_keys=True))
        return
    typer.echo(f"{file}: {len(registry)} polic{'y' if len(registry) == 1 else 'ies'}")
    for name in registry:
        typer.echo(f"\n[{name}]")
        for part in registry[name].current.policies:
            typer.echo(f"  {part!r}")
