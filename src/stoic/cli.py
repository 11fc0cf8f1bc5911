"""The ``stoic`` command. Each area contributes a Typer sub-app in its own module.

``stoic queue ...`` (messaging), ``stoic idempotency ...``, ``stoic alerts ...``
(observability), ``stoic proxy`` (chaos) and ``stoic demo`` are found in ``_COMMANDS`` and
imported only when the command starts. Needs the ``stoic[cli]`` extra.

Conventions every sub-command follows (``stoic._cli`` holds the shared parts): an expected
failure (bad URL or scheme, unreachable server, missing file, not a database, bad identifier,
timeout) prints one line ``error: ...`` on stderr and exits 2 for a usage error or 1 for a
failure while running, never a traceback; commands that connect wait at most ``--timeout``
seconds (5 by default); a command that prints a table takes ``--json``; inspection never
creates or changes a file.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

__all__ = ["build_app", "main"]

# command name -> module defining ``app`` (a typer.Typer)
_COMMANDS: dict[str, str] = {
    "queue": "stoic.messaging.cli",
    "idempotency": "stoic.idempotency.cli",
    "alerts": "stoic.observability.cli",
    "proxy": "stoic.chaos.cli",
    "demo": "stoic.demo.cli",
    "config": "stoic.registry.cli",
    "workflow": "stoic.workflow.cli",
}


def build_app() -> Any:
    """Assemble the Typer application from the areas' sub-apps (each needs only the cli extra)."""
    try:
        import typer
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit("the stoic command needs the cli extra: pip install 'stoic[cli]'") from exc
    from ._cli import BoundaryGroup

    app = typer.Typer(
        name="stoic", cls=BoundaryGroup, no_args_is_help=True, add_completion=True,
        help="Failures in distributed systems, made survivable.",
    )

    def show_version(value: bool) -> None:
        if value:
            from . import __version__

            typer.echo(f"stoic {__version__}")
            raise typer.Exit()

    @app.callback()
    def stoic(
        version: bool = typer.Option(
            False, "--version", callback=show_version, is_eager=True,
            help="Print the version and exit.",
        ),
    ) -> None:
        """Failures in distributed systems, made survivable."""

    for name, module_name in _COMMANDS.items():
        app.add_typer(importlib.import_module(module_name).app, name=name)
    return app


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``stoic`` console script."""
    app = build_app()
    app(args=argv if argv is not None else sys.argv[1:], prog_name="stoic")
