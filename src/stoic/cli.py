"""The ``stoic`` command. Each area contributes a Typer sub-app in its own module.

``stoic queue ...`` (messaging), ``stoic idempotency ...``, ``stoic alerts ...``
(observability), ``stoic proxy`` (chaos) and ``stoic demo`` are found in ``_COMMANDS`` and
imported only when the command starts. Needs the ``stoic[cli]`` extra.
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
}


def build_app() -> Any:
    """Assemble the Typer application from the areas' sub-apps (each needs only the cli extra)."""
    try:
        import typer
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit("the stoic command needs the cli extra: pip install 'stoic[cli]'") from exc
    app = typer.Typer(
        name="stoic", no_args_is_help=True, add_completion=False,
        help="Failures in distributed systems, made survivable.",
    )
    for name, module_name in _COMMANDS.items():
        app.add_typer(importlib.import_module(module_name).app, name=name)
    return app


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``stoic`` console script."""
    app = build_app()
    app(args=argv if argv is not None else sys.argv[1:], prog_name="stoic")
