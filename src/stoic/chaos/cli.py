"""``stoic proxy``: run the Toxiproxy-compatible fault proxy, or drive a running one.

    stoic proxy                                   # serve: API on 127.0.0.1:8474, like toxiproxy-server
    stoic proxy --port 0 --config proxies.json    # create proxies at start
    stoic proxy list                              # like toxiproxy-cli, against 127.0.0.1:8474
    stoic proxy create redis -l 127.0.0.1:26379 -u 127.0.0.1:6379
    stoic proxy toxic add redis -t latency -a latency=1000 -a jitter=100
    stoic proxy toxic update redis -n latency_downstream -a latency=2000
    stoic proxy toxic remove redis -n latency_downstream

The config file is Toxiproxy's: a JSON (or YAML) list of ``{"name", "listen", "upstream",
"enabled"}`` objects. The commands take toxiproxy-cli's names, flags and units; ``--host``
(or ``TOXIPROXY_URL``) says where the API is. An error is one line on stderr: exit 2 for a
bad command line or a request the proxy refused as malformed (400), 1 for the rest.
"""

from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import typer

from .._cli import RUNTIME, TIMEOUT_OPTION, USAGE, CommandError
from .faults import read_document

__all__ = ["DEFAULT_API", "api_url", "app", "load_config", "toxic_app"]

#: where the commands look for the API unless ``--host`` or ``TOXIPROXY_URL`` says otherwise
DEFAULT_API = "http://127.0.0.1:8474"

T = TypeVar("T")

app = typer.Typer(
    help="Run the fault proxy (Toxiproxy 2.x compatible HTTP API), or drive a running one "
         "with a command.",
    invoke_without_command=True, add_completion=False,
    subcommand_metavar="[COMMAND [ARGS]...]",  # no command: serve
)
toxic_app = typer.Typer(help="Add, update, remove or list a proxy's toxics.",
                        no_args_is_help=True, add_completion=False)
app.add_typer(toxic_app, name="toxic")


def load_config(path: Path) -> list[dict[str, Any]]:
    """Read a proxy list from JSON or YAML (``.yaml``/``.yml``); ValueError if malformed."""
    data = read_document(path)
    if isinstance(data, dict) and "proxies" in data:
        data = data["proxies"]
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise ValueError(f"{path}: expected a list of proxy objects")
    return data


def api_url(host: str) -> str:
    """``host`` as toxiproxy-cli takes it (a URL, or ``host[:port]``) -> the API's base URL."""
    url = host if host.startswith(("http://", "https://")) else f"http://{host}"
    parts = urlsplit(url)  # ValueError for a port that is not a number
    if not parts.hostname:
        raise ValueError(f"no host in {host!r}")
    if parts.port is None:
        url = f"{parts.scheme}://{parts.netloc}:8474{parts.path}"
    return url.rstrip("/")


def _fail(message: str, code: int = RUNTIME) -> NoReturn:
    """One line on stderr and exit ``code``, through the root command's error boundary."""
    raise CommandError(message, code)


@app.callback()
def proxy(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", help="Address the HTTP API listens on (with a "
                             "command: where the running proxy's API is)."),
    port: int = typer.Option(8474, help="API port (0 picks a free one, printed at start)."),
    config: Path | None = typer.Option(
        None, "--config", exists=True, dir_okay=False, help="JSON/YAML list of proxies."
    ),
    seed: int | None = typer.Option(None, help="Seed toxicity and jitter, for repeatable runs."),
) -> None:
    """Serve the fault proxy until interrupted; with a COMMAND, drive a running one."""
    if ctx.invoked_subcommand is not None:
        sources = {name: ctx.get_parameter_source(name) for name in ("host", "port")}
        given = {name for name, source in sources.items()  # typer may bundle its own click
                 if source is not None and source.name != "DEFAULT"}
        if config is not None or seed is not None:
            _fail("--config and --seed are for serving; leave them out with a command", USAGE)
        if given:  # `stoic proxy --port 9000 list`: the API of a proxy served that way
            if ":" in host and "://" not in host and not host.startswith("["):
                host = f"[{host}]"  # an IPv6 address
            ctx.obj = f"{host}:{port}" if "port" in given else host
        return
    _serve(host, port, config, seed)


def _serve(host: str, port: int, config: Path | None, seed: int | None) -> None:
    from .proxy import ApiError, serve

    proxies: list[dict[str, Any]] = []
    if config is not None:
        try:
            proxies = load_config(config)
        except ValueError as exc:
            _fail(str(exc), USAGE)

    async def main() -> None:
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        ready.add_done_callback(
            lambda f: typer.echo(f"stoic proxy: API listening on {host}:{f.result()}", err=True)
        )
        await serve(host, port, proxies, seed=seed, ready=ready)

    try:
        asyncio.run(main())
    except ApiError as exc:
        _fail(exc.message)
    except ImportError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        pass


# ---------------------------------------------------------------------------------------------
# commands against a running proxy (toxiproxy-cli's)

HOST = typer.Option(
    None, "--host", "-h", envvar="TOXIPROXY_URL", show_default=DEFAULT_API,
    help="The proxy's API: a URL or host[:port].",
)
JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")
PROXY = typer.Argument(..., help="The proxy's name.")
TOXIC_NAME = typer.Option(..., "--toxicName", "--toxic-name", "-n", help="The toxic's name.")
TOXICITY = typer.Option(
    None, "--toxicity", "--tox", help="Probability (0 to 1) that the toxic applies to a "
    "connection, rolled once per connection.  [default: 1.0]",
)
ATTRIBUTES = typer.Option(
    [], "--attribute", "-a", metavar="KEY=VALUE",
    help="A toxic attribute in Toxiproxy's units (ms, KB/s, bytes, microseconds); repeat it.",
)


def _call(
    ctx: typer.Context, host: str | None, timeout: float, what: str, action: Callable[[Any], T]
) -> T:
    """Run ``action(client)`` and turn every expected failure into one line and an exit."""
    from .proxy import ApiError, ProxyClient

    try:
        url = api_url(host or ctx.obj or DEFAULT_API)
    except ValueError as exc:
        _fail(f"bad --host: {exc}", USAGE)
    try:
        return action(ProxyClient(url, timeout=timeout))
    except ApiError as exc:
        _fail(f"{what}: {exc.message}", USAGE if exc.status == 400 else RUNTIME)
    except (OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        _fail(f"cannot reach the proxy API at {url}: {reason}")
    except ValueError as exc:  # an answer that is not JSON: not a Toxiproxy API
        _fail(f"{url} did not answer as a Toxiproxy API does: {exc}")


def _table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> None:
    cells = [[str(cell) for cell in row] for row in (header, *rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _attributes(pairs: list[str]) -> dict[str, int]:
    attributes: dict[str, int] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        try:
            if not sep or not key:
                raise ValueError
            attributes[key.strip()] = int(value)
        except ValueError:
            _fail(f"--attribute must be KEY=INTEGER (e.g. latency=1000), got {pair!r}", USAGE)
    return attributes


def _toxicity(value: float | None) -> float | None:
    if value is not None and not 0.0 <= value <= 1.0:
        _fail(f"--toxicity must be between 0 and 1, got {value!r}", USAGE)
    return value


@app.command("list")
def list_proxies(
    ctx: typer.Context, host: str | None = HOST, timeout: float = TIMEOUT_OPTION,
    json_: bool = JSON,
) -> None:
    """List every proxy: name, listen and upstream addresses, enabled, number of toxics."""
    proxies = _call(ctx, host, timeout, "list", lambda client: client.proxies())
    if json_:
        typer.echo(json.dumps(proxies, indent=2, sort_keys=True))
        return
    rows = [(p["name"], p["listen"], p["upstream"], "enabled" if p["enabled"] else "disabled",
             len(p.get("toxics") or ())) for _name, p in sorted(proxies.items())]
    _table(rows, ("NAME", "LISTEN", "UPSTREAM", "ENABLED", "TOXICS"))


@app.command("create")
def create_proxy(
    ctx: typer.Context, name: str = PROXY, host: str | None = HOST,
    timeout: float = TIMEOUT_OPTION,
    listen: str = typer.Option("127.0.0.1:0", "--listen", "-l",
                               help="Address to listen on (port 0: a free one)."),
    upstream: str = typer.Option(..., "--upstream", "-u", help="Address to forward to."),
) -> None:
    """Create a proxy (enabled) from LISTEN to UPSTREAM."""
    handle = _call(ctx, host, timeout, f"create {name}",
                   lambda client: client.create(name, upstream=upstream, listen=listen))
    typer.echo(f"Created new proxy {name} listening on {handle.listen}")


def _delete(client: Any, name: str) -> str:
    """Delete a proxy: its port closes and its connections drop."""
    client.delete(name)
    return f"Deleted proxy {name}"


def _toggle(client: Any, name: str) -> str:
    """Disable an enabled proxy (connections refused), or enable a disabled one."""
    enabled = not client.proxy(name).enabled
    (client.enable if enabled else client.disable)(name)
    return f"Proxy {name} is now {'enabled' if enabled else 'disabled'}"


def _proxy_command(verb: str, act: Callable[[Any, str], str]) -> None:
    """Register ``verb NAME``: ``act(client, name)`` does it and says what it did (its
    docstring is the command's help)."""

    def command(
        ctx: typer.Context, name: str = PROXY, host: str | None = HOST,
        timeout: float = TIMEOUT_OPTION,
    ) -> None:
        typer.echo(_call(ctx, host, timeout, f"{verb} {name}", lambda client: act(client, name)))

    app.command(verb, help=act.__doc__)(command)


_proxy_command("delete", _delete)
_proxy_command("toggle", _toggle)


@toxic_app.command("add")
def add_toxic(
    ctx: typer.Context, proxy: str = PROXY, host: str | None = HOST,
    timeout: float = TIMEOUT_OPTION,
    type_: str = typer.Option(..., "--type", "-t", help="latency, bandwidth, slow_close, "
                              "timeout, reset_peer, slicer or limit_data."),
    toxic_name: str | None = typer.Option(
        None, "--toxicName", "--toxic-name", "-n", help="Default: TYPE_STREAM."),
    toxicity: float | None = TOXICITY, attribute: list[str] = ATTRIBUTES,
    upstream: bool = typer.Option(False, "--upstream", "-u", help="On client-to-server data."),
    downstream: bool = typer.Option(False, "--downstream", "-d",
                                    help="On server-to-client data (the default)."),
) -> None:
    """Add a toxic to PROXY; it applies at once, to open connections too."""
    if upstream and downstream:
        _fail("give --upstream or --downstream, not both", USAGE)
    attributes = _attributes(attribute)
    rate = _toxicity(toxicity)
    stream = "upstream" if upstream else "downstream"
    toxic = _call(ctx, host, timeout, f"toxic add on proxy {proxy}", lambda client: (
        client.add_toxic(proxy, type_, name=toxic_name, stream=stream,
                         toxicity=1.0 if rate is None else rate, **attributes)))
    typer.echo(f"Added {toxic['stream']} {toxic['type']} toxic '{toxic['name']}' "
               f"on proxy '{proxy}'")


@toxic_app.command("update")
def update_toxic(
    ctx: typer.Context, proxy: str = PROXY, host: str | None = HOST,
    timeout: float = TIMEOUT_OPTION,
    toxic_name: str = TOXIC_NAME, toxicity: float | None = TOXICITY,
    attribute: list[str] = ATTRIBUTES,
) -> None:
    """Change a toxic's toxicity or attributes; attributes left out keep their values."""
    attributes = _attributes(attribute)
    rate = _toxicity(toxicity)
    _call(ctx, host, timeout, f"toxic update on proxy {proxy}", lambda client: (
        client.update_toxic(proxy, toxic_name, toxicity=rate, **attributes)))
    typer.echo(f"Updated toxic '{toxic_name}' on proxy '{proxy}'")


@toxic_app.command("remove")
def remove_toxic(
    ctx: typer.Context, proxy: str = PROXY, host: str | None = HOST,
    timeout: float = TIMEOUT_OPTION,
    toxic_name: str = TOXIC_NAME,
) -> None:
    """Remove a toxic from PROXY (also: toxic delete, as in toxiproxy-cli)."""
    _call(ctx, host, timeout, f"toxic remove on proxy {proxy}",
          lambda client: client.remove_toxic(proxy, toxic_name))
    typer.echo(f"Removed toxic '{toxic_name}' on proxy '{proxy}'")


toxic_app.command("delete", hidden=True)(remove_toxic)


@toxic_app.command("list")
def list_toxics(
    ctx: typer.Context, proxy: str = PROXY, host: str | None = HOST,
    timeout: float = TIMEOUT_OPTION, json_: bool = JSON,
) -> None:
    """List PROXY's toxics in the order they apply."""
    toxics = _call(ctx, host, timeout, f"toxic list on proxy {proxy}",
                   lambda client: client.toxics(proxy))
    if json_:
        typer.echo(json.dumps(toxics, indent=2, sort_keys=True))
        return
    rows = [(t["name"], t["type"], t["stream"], f"{t['toxicity']:g}",
             " ".join(f"{k}={v}" for k, v in sorted(t["attributes"].items()))) for t in toxics]
    _table(rows, ("NAME", "TYPE", "STREAM", "TOXICITY", "ATTRIBUTES"))
