"""``stoic proxy``: run the Toxiproxy-compatible fault proxy in the foreground.

    stoic proxy                                   # API on 127.0.0.1:8474, like toxiproxy-server
    stoic proxy --port 0 --config proxies.json    # create proxies at start

The config file is Toxiproxy's: a JSON (or YAML) list of ``{"name", "listen", "upstream",
"enabled"}`` objects. Stop with Ctrl-C.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import typer

from .faults import read_document

__all__ = ["app", "load_config"]

app = typer.Typer(
    help="Run the fault proxy (Toxiproxy 2.x compatible HTTP API).",
    invoke_without_command=True, add_completion=False,
)


def load_config(path: Path) -> list[dict[str, Any]]:
    """Read a proxy list from JSON or YAML (``.yaml``/``.yml``); ValueError if malformed."""
    data = read_document(path)
    if isinstance(data, dict) and "proxies" in data:
        data = data["proxies"]
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise ValueError(f"{path}: expected a list of proxy objects")
    return data


@app.callback()
def proxy(
    host: str = typer.Option("127.0.0.1", help="Address the HTTP API listens on."),
    port: int = typer.Option(8474, help="API port (0 picks a free one, printed at start)."),
    config: Path | None = typer.Option(
        None, "--config", exists=True, dir_okay=False, help="JSON/YAML list of proxies."
    ),
    seed: int | None = typer.Option(None, help="Seed toxicity and jitter, for repeatable runs."),
) -> None:
    """Serve the fault proxy until interrupted."""
    from .proxy import ApiError, serve

    proxies: list[dict[str, Any]] = []
    if config is not None:
        try:
            proxies = load_config(config)
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    async def main() -> None:
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        ready.add_done_callback(
            lambda f: typer.echo(f"stoic proxy: API listening on {host}:{f.result()}", err=True)
        )
        await serve(host, port, proxies, seed=seed, ready=ready)

    try:
        asyncio.run(main())
    except ApiError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        typer.echo(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        pass
