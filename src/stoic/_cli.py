"""What every ``stoic`` command shares: one error boundary, backend URLs, connection checks.

Someone who mistypes a URL, points a command at a server that is down or at a file that is
not a database should read one line saying what was wrong, not a traceback, and should not
wait half a minute for a library's default timeout. Every area's command module uses this
module for that, so the rules below hold for all of them:

- A command raises ``CommandError(message, exit_code)`` for a failure it understands:
  ``USAGE`` (2) for a bad argument (URL, scheme, identifier), ``RUNTIME`` (1) for what went
  wrong while running (server unreachable, no such file, not a database, timeout).
- ``explain(exc)`` is the one mapping from what the backends raise (sqlite3, redis, psycopg
  and psycopg_pool, aio-pika/aiormq, nats, ``OSError``, ``TimeoutError``, ``ValueError``
  from validation, a missing extra) to a ``CommandError``. Anything else is a bug in stoic and
  keeps its traceback.
- ``BoundaryGroup`` is the root command's click group: whatever a sub-command raises goes
  through ``explain`` and comes out as ``error: <message>`` on one line of stderr with the exit
  code. The chaos, workflow and future commands get it by being mounted on the root.
- ``parse_backend`` checks a URL once (scheme family, SQLite path); ``reaching(backend)`` names
  the backend in whatever fails inside it; ``check_reachable`` makes a handshake bounded by
  ``--timeout`` (``TIMEOUT_OPTION``, 5 s by default, ``STOIC_TIMEOUT``) before a client with
  its own long defaults is built; ``existing_sqlite_file`` makes sure an inspection command
  never creates a file.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import typer
from typer.core import TyperGroup

__all__ = [
    "DEFAULT_TIMEOUT",
    "RUNTIME",
    "TIMEOUT_OPTION",
    "USAGE",
    "Backend",
    "BoundaryGroup",
    "CommandError",
    "UrlOption",
    "check_reachable",
    "choose_url",
    "command_group",
    "existing_sqlite_file",
    "explain",
    "note_deprecated_url",
    "parse_backend",
    "reaching",
    "redacted",
    "redis_client",
]

USAGE = 2  # a bad argument: the same status click gives to a usage error
RUNTIME = 1  # the command ran and failed
DEFAULT_TIMEOUT = 5.0  # seconds; a person waiting at a prompt, not a service riding out a blip


def command_group(help: str) -> typer.Typer:
    """A group of ``stoic`` subcommands: shows its help when run bare, and stays a group (with
    its own ``--help`` naming its commands) even while it holds a single command. Completion
    is the ``stoic`` command's own."""
    app = typer.Typer(no_args_is_help=True, add_completion=False, help=help)

    @app.callback()
    def group() -> None:
        pass

    group.__doc__ = help  # what ``stoic --help`` lists the group as
    return app


class CommandError(Exception):
    """A failure a command understands: printed as ``error: <message>``, exit ``exit_code``."""

    def __init__(self, message: str, exit_code: int = RUNTIME) -> None:
        super().__init__(message)
        self.message = _one_line(message)
        self.exit_code = exit_code


def _check_timeout(value: float) -> float:
    if not value > 0:
        raise typer.BadParameter(f"must be > 0 seconds, got {value!r}")
    return value


TIMEOUT_OPTION: Any = typer.Option(
    DEFAULT_TIMEOUT, "--timeout", envvar="STOIC_TIMEOUT", callback=_check_timeout,
    help="Seconds to wait for a server to connect and answer.",
)


# --- the boundary ------------------------------------------------------------------------


class BoundaryGroup(TyperGroup):
    """The root group: expected failures of any sub-command become one line and an exit code."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            error = explain(exc)  # None for click's and typer's own exits and usage errors
            if error is None:
                raise  # or a bug in stoic: keep the traceback
            typer.echo(f"error: {error.message}", err=True)
            raise typer.Exit(error.exit_code) from None


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _message(exc: BaseException) -> str:
    return _one_line(str(exc)) or type(exc).__name__


def _sqlite(exc: BaseException) -> CommandError:
    text = _message(exc)
    if text == "file is not a database":
        return CommandError("not a SQLite database")
    if text == "unable to open database file":
        return CommandError("cannot open the database file (missing, or a directory?)")
    if text.startswith("no such table: "):
        table = text[len("no such table: "):]
        return CommandError(f"not a stoic database: it has no table {table}")
    if "readonly database" in text:
        return CommandError("the database is read-only here: cannot write to it")
    return CommandError(f"SQLite: {text}")


def _os_error(exc: BaseException) -> CommandError:
    if not isinstance(exc, OSError):
        return CommandError(_message(exc))
    what = exc.strerror or _message(exc)
    if exc.filename is not None:
        what = f"{exc.filename}: {what}"
    if isinstance(exc, ConnectionError):
        what = f"cannot connect: {what}"
    return CommandError(what)


def _prefixed(prefix: str, exit_code: int = RUNTIME) -> Callable[[BaseException], CommandError]:
    return lambda exc: CommandError(f"{prefix}{_message(exc)}", exit_code)


def _postgres(exc: BaseException) -> CommandError:
    # libpq's first line is the error; the next ones are hints and the query's context
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return CommandError(f"PostgreSQL: {first or type(exc).__name__}")


def _optional_type(module: str, name: str) -> type[BaseException] | None:
    # Only a library that was imported can have raised: look it up, never import it here.
    found = getattr(sys.modules.get(module), name, None)
    return found if isinstance(found, type) and issubclass(found, BaseException) else None


def _rules() -> list[tuple[type[BaseException] | None, Callable[[BaseException], CommandError]]]:
    """Most specific first: the first matching class gives the message."""
    return [
        (_optional_type("psycopg_pool", "PoolTimeout"),
         _prefixed("PostgreSQL: no connection in time: ")),
        (_optional_type("psycopg", "Error"), _postgres),
        (_optional_type("redis.exceptions", "TimeoutError"), _prefixed("Redis did not answer: ")),
        (_optional_type("redis.exceptions", "ConnectionError"),
         _prefixed("cannot connect to Redis: ")),
        (_optional_type("redis.exceptions", "RedisError"), _prefixed("Redis: ")),
        (_optional_type("aiormq.exceptions", "AMQPConnectionError"),
         _prefixed("cannot connect to RabbitMQ: ")),
        (_optional_type("aiormq.exceptions", "AMQPError"), _prefixed("RabbitMQ: ")),
        (_optional_type("nats.errors", "Error"), _prefixed("NATS: ")),
        (sqlite3.Error, _sqlite),
        (TimeoutError, lambda exc: CommandError(f"timed out: {_message(exc)}")),
        (asyncio.TimeoutError, lambda exc: CommandError("timed out")),  # 3.10: not the builtin
        (OSError, _os_error),
        (ImportError, lambda exc: CommandError(f"a needed package is missing: {_message(exc)}")),
        (ValueError, _prefixed("", USAGE)),
    ]


def explain(exc: BaseException) -> CommandError | None:
    """The one-line error an expected failure deserves, or None for a bug (keep the traceback)."""
    if isinstance(exc, CommandError):
        return exc
    for exc_type, describe in _rules():
        if exc_type is not None and isinstance(exc, exc_type):
            return describe(exc)
    return None


# --- backend URLs ------------------------------------------------------------------------

_FAMILIES = {
    "sqlite": "sqlite", "memory": "memory",
    "redis": "redis", "rediss": "redis", "unix": "redis",
    "postgresql": "postgresql", "postgres": "postgresql",
    "amqp": "amqp", "amqps": "amqp",
    "nats": "nats", "tls": "nats",
}
_EXAMPLES = {
    "sqlite": "sqlite:///file.db", "memory": "memory://", "redis": "redis://host:6379/0",
    "postgresql": "postgresql://user@host/db", "amqp": "amqp://user:password@host:5672/",
    "nats": "nats://host:4222",
}
_PORTS = {"redis": 6379, "postgresql": 5432, "amqp": 5672, "nats": 4222}


@dataclass(frozen=True, slots=True)
class Backend:
    """A backend URL checked once: ``family`` is ``sqlite``, ``redis``, ``postgresql``,
    ``amqp``, ``nats`` or ``memory``; ``path`` is the file of a SQLite URL."""

    url: str
    family: str
    option: str
    path: Path | None = None

    @property
    def shown(self) -> str:
        """The URL as printed in messages: without its password."""
        return redacted(self.url)


def redacted(url: str) -> str:
    """``url`` with the password replaced by ``***``, for messages."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rsplit("@", 1)
        user = netloc[0].split(":", 1)[0]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))
    except ValueError:
        return url


def parse_backend(url: str, option: str, accepted: Sequence[str]) -> Backend:
    """Check ``url`` (given with ``option``) names one of the ``accepted`` families.

    Raises ``CommandError`` (usage) naming the option, the URL and the accepted forms; a
    PostgreSQL command never takes a SQLite URL for a DSN, and the other way round.
    """
    forms = ", ".join(_EXAMPLES[f] for f in accepted)
    if not isinstance(url, str) or "://" not in url:
        raise CommandError(f"{option}: expected a URL such as {forms}, got {url!r}", USAGE)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as exc:
        raise CommandError(f"{option}: malformed URL {redacted(url)!r}: {exc}", USAGE) from None
    family = _FAMILIES.get(parts.scheme.lower())
    if family is None or family not in accepted:
        raise CommandError(
            f"{option}: unsupported scheme {parts.scheme!r} in {redacted(url)!r}: use {forms}",
            USAGE,
        )
    path = None
    if family == "sqlite":
        raw = unquote(url.split("://", 1)[1].split("?", 1)[0])
        if not raw.startswith("/") or raw == "/":
            raise CommandError(
                f"{option}: SQLite URLs look like sqlite:///relative.db or "
                f"sqlite:////absolute/path.db, got {url!r}", USAGE,
            )
        path = Path(raw[1:])
    return Backend(url=url, family=family, option=option, path=path)


def choose_url(option: str, given: str | None, positional: str | None, envvar: str) -> str:
    """The backend URL from ``option`` or from the deprecated positional spelling (not both)."""
    if given is not None and positional is not None:
        raise CommandError(f"give the URL once: {option} URL (the positional URL is the "
                           "deprecated spelling)", USAGE)
    url = positional if positional is not None else given
    if url is None:
        raise CommandError(f"missing {option} URL (or {envvar})", USAGE)
    return url


def note_deprecated_url(option: str, positional: str | None) -> None:
    """Say once, after the command succeeded (a failure stays one line), that the positional
    URL is the old spelling."""
    if positional is not None:
        typer.echo(f"note: the positional URL is deprecated; use {option} URL", err=True)


class UrlOption:
    """The backend URL option of one command group (``--store``, ``--broker``): its name,
    its environment variable and the backend families it accepts, given once."""

    def __init__(self, option: str, envvar: str, families: Sequence[str]) -> None:
        self.option, self.envvar, self.families = option, envvar, tuple(families)

    def choose(self, given: str | None, positional: str | None) -> str:
        """``choose_url`` for this option."""
        return choose_url(self.option, given, positional, self.envvar)

    def parse(self, url: str, families: Sequence[str] | None = None) -> Backend:
        """``parse_backend`` for this option: its families, or the narrower ``families``."""
        return parse_backend(url, self.option, self.families if families is None else families)

    def note_deprecated(self, positional: str | None) -> None:
        """``note_deprecated_url`` for this option."""
        note_deprecated_url(self.option, positional)

    def positional(self) -> Any:
        """The deprecated positional spelling of the URL, as a command's typer argument."""
        return typer.Argument(None, metavar="[URL]", show_default=False,
                              help=f"Deprecated: use {self.option}.")


@contextmanager
def reaching(backend: Backend) -> Iterator[None]:
    """Expected failures inside become ``CommandError`` starting with the backend's URL."""
    try:
        yield
    except Exception as exc:
        error = explain(exc)
        if error is None:
            raise
        if not error.message.startswith(backend.shown):
            error = CommandError(f"{backend.shown}: {error.message}", error.exit_code)
        raise error from None


def existing_sqlite_file(backend: Backend) -> Path:
    """The SQLite file a command reads or changes; ``CommandError`` if it is not there, so a
    typo never creates an empty database that then reports zeros."""
    if backend.path is None:
        raise CommandError(f"{backend.option}: not a SQLite URL: {backend.shown}", USAGE)
    path = backend.path
    if path.is_dir():
        raise CommandError(f"{backend.shown}: {path} is a directory, not a database file")
    if not path.is_file():
        raise CommandError(f"{backend.shown}: no such file {path} (nothing was created)")
    return path


# --- connection checks -------------------------------------------------------------------


def check_reachable(backend: Backend, timeout: float) -> None:
    """A handshake with the server, bounded by ``timeout`` seconds, before a client with its
    own longer defaults (connection pools, reconnecting clients) is built. ``CommandError``
    naming the URL when the server is down, silent, or refuses the credentials."""
    checks: dict[str, Callable[[Backend, float], None]] = {
        "redis": _ping_redis, "postgresql": _connect_postgres, "amqp": _open_amqp,
        "nats": _greet_nats,
    }
    check = checks.get(backend.family)
    if check is None:
        return
    with reaching(backend):
        try:
            check(backend, timeout)
        except (TimeoutError, asyncio.TimeoutError) as exc:  # distinct classes on 3.10
            raise CommandError(
                f"{backend.shown}: no answer within {timeout:g} s (--timeout)"
            ) from exc


def redis_client(url: str, timeout: float, *, decode_responses: bool) -> Any:
    """A redis client whose connects and replies wait at most ``timeout`` seconds, no retry."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0), decode_responses=decode_responses,
    )


def _ping_redis(backend: Backend, timeout: float) -> None:
    from redis.exceptions import TimeoutError as RedisTimeout

    client = redis_client(backend.url, timeout, decode_responses=False)
    try:
        client.ping()
    except RedisTimeout as exc:
        raise TimeoutError(str(exc)) from exc
    finally:
        client.close()


def _connect_postgres(backend: Backend, timeout: float) -> None:
    import psycopg

    # A broker URL may carry stoic's own options (schema, table_prefix...): libpq gets its own
    known = {option.keyword.decode() for option in psycopg.pq.Conninfo.get_defaults()}
    parts = urlsplit(backend.url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k in known]
    dsn = urlunsplit(parts._replace(query=urlencode(query)))
    try:  # libpq counts whole seconds, at least 2
        with psycopg.connect(dsn, connect_timeout=max(2, round(timeout))):
            pass
    except psycopg.OperationalError as exc:
        if "timeout expired" in str(exc):  # libpq's words for connect_timeout running out
            raise TimeoutError(str(exc)) from exc
        raise


def _open_amqp(backend: Backend, timeout: float) -> None:
    import logging

    import aio_pika

    async def handshake() -> None:
        connection = await asyncio.wait_for(aio_pika.connect(backend.url), timeout)
        await connection.close()

    quiet = [logging.getLogger(name) for name in ("aiormq", "aio_pika")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:  # they log the failure we are about to report on one line
        logger.setLevel(logging.CRITICAL)
    try:
        asyncio.run(handshake())
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)


def _greet_nats(backend: Backend, timeout: float) -> None:
    parts = urlsplit(backend.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or _PORTS["nats"]
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        if not sock.recv(4).startswith(b"INFO"):
            raise CommandError(f"{backend.shown}: the server at {host}:{port} is not NATS")
