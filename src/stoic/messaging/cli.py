"""``stoic queue``: look into a queue and handle its dead letters from the shell.

    stoic queue stats orders --broker sqlite:///app.db
    stoic queue peek orders --limit 5 --broker redis://localhost:6379/0 [--json]
    stoic queue dlq list orders --broker ... [--json]
    stoic queue dlq requeue orders [--id ID ...] --broker ...
    stoic queue dlq purge orders --yes --broker ...

``--broker`` defaults to the ``STOIC_BROKER`` environment variable. Inspection (stats, peek,
dlq list) opens a SQLite file read-only; no command creates a file or a queue database: a
path that does not exist is an error. Servers get ``--timeout`` seconds (default 5) to
answer. Needs ``stoic[cli]``.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer

from .._cli import (
    TIMEOUT_OPTION,
    Backend,
    UrlOption,
    check_reachable,
    existing_sqlite_file,
    reaching,
    redis_client,
)
from . import connect

__all__ = ["app"]

app = typer.Typer(
    name="queue", no_args_is_help=True, add_completion=False,
    help="Inspect queues and manage dead letters (stats, peek, dlq list|requeue|purge).",
)
dlq = typer.Typer(no_args_is_help=True, help="The dead-letter queue of a topic.")
app.add_typer(dlq, name="dlq")

TopicArgument = typer.Argument(..., help="The topic (queue) name.")
BrokerOption = typer.Option(
    ..., "--broker", "-b", envvar="STOIC_BROKER",
    help="Broker URL: sqlite:///file.db, redis://host:port/db, amqp://..., memory://",
)


_BROKER = UrlOption("--broker", "STOIC_BROKER",
                    ("sqlite", "redis", "amqp", "postgresql", "nats", "memory"))
JsonOption = typer.Option(False, "--json", help="Print JSON instead of a table.")


@contextmanager
def _broker(url: str, topic: str, timeout: float, *, read_only: bool) -> Iterator[Any]:
    """The broker ``url`` names, checked first: a SQLite file must exist (and is opened
    read-only for inspection; a command that writes first checks it is a queue database
    read-only), a server must answer within ``timeout`` seconds."""
    backend = _BROKER.parse(url)
    options: dict[str, Any] = {}
    if backend.family == "sqlite":
        existing_sqlite_file(backend)
        if not read_only:
            with _broker(url, topic, timeout, read_only=True) as b:
                b.stats(topic)  # fails on a file that is not a queue database
        else:
            options["read_only"] = True
    else:
        check_reachable(backend, timeout)
        if backend.family == "redis":
            options["client"] = redis_client(url, timeout, decode_responses=True)
        if backend.family == "postgresql":  # tables come from `stoic queue migrate` only
            options.update(create_tables=False, min_size=0, max_size=2)
    with reaching(backend):
        broker = connect(url, **options)
        try:
            yield broker
        finally:
            broker.close()


def _backend(url: str) -> Backend:
    return _BROKER.parse(url)


def _when(epoch: float) -> str:
    if not epoch:
        return "-"
    return _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _short(text: str | None, width: int = 60) -> str:
    if text is None:
        return ""
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(headers: list[str], rows: list[list[str]], empty: str = "") -> None:
    """Aligned columns; ``empty`` is printed instead when there are no rows."""
    if not rows and empty:
        typer.echo(empty)
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    typer.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for r in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _message_json(m: Any) -> dict[str, Any]:
    return {"id": m.id, "attempts": m.attempts, "created_at": m.created_at,
            "available_at": m.available_at, "headers": dict(m.headers), "body": m.body}


def _dead_letters(n: int) -> str:
    return f"{n} dead letter{'' if n == 1 else 's'}"


@app.command()
def stats(
    topic: str = TopicArgument,
    broker: str = BrokerOption,
    as_json: bool = JsonOption,
    timeout: float = TIMEOUT_OPTION,
) -> None:
    """Ready, delayed, in-flight and dead-lettered message counts of TOPIC, and how many
    deliveries so far took a message back from a consumer whose lease ran out (recovered)."""
    with _broker(broker, topic, timeout, read_only=True) as b:
        s = b.stats(topic)
    if as_json:
        typer.echo(json.dumps({"topic": s.topic, "ready": s.ready, "delayed": s.delayed,
                               "in_flight": s.in_flight, "dead": s.dead,
                               "recovered": s.recovered}))
        return
    _table(["topic", "ready", "delayed", "in_flight", "dead", "recovered"],
           [[s.topic, str(s.ready), str(s.delayed), str(s.in_flight), str(s.dead),
             str(s.recovered)]])


def _listing(
    default: int, what: str, read: Callable[[Any, str, int], list[Any]],
    record: Callable[[Any], dict[str, Any]], columns: list[str],
    row: Callable[[Any], list[str]], empty: str,
) -> Callable[..., None]:
    """A command that lists up to ``--limit`` items ``read`` from TOPIC, as a table (one
    ``row`` each, ``empty`` when none) or as JSON (one ``record`` each)."""

    def command(
        topic: str = TopicArgument,
        broker: str = BrokerOption,
        limit: int = typer.Option(default, "--limit", "-n", min=1, help=f"How many {what}."),
        as_json: bool = JsonOption,
        timeout: float = TIMEOUT_OPTION,
    ) -> None:
        with _broker(broker, topic, timeout, read_only=True) as b:
            items = read(b, topic, limit)
        if as_json:
            typer.echo(json.dumps([record(i) for i in items]))
        else:
            _table(columns, [row(i) for i in items], empty=empty.format(topic=topic))

    return command


peek = app.command("peek", help="The next messages of TOPIC, without taking them.")(_listing(
    10, "messages to show", lambda b, topic, n: b.peek(topic, n), _message_json,
    ["id", "attempts", "created", "payload"],
    lambda m: [m.id, str(m.attempts), _when(m.created_at), _short(m.body)],
    "{topic}: no messages",
))

dlq_list = dlq.command(
    "list", help="Dead letters of TOPIC: why each was parked and what failed."
)(_listing(
    100, "to show", lambda b, topic, n: b.dead_letters(topic, n),
    lambda d: _message_json(d.message) | {"reason": d.reason, "error": d.error,
                                          "dead_at": d.dead_at},
    ["id", "attempts", "dead since", "reason", "error"],
    lambda d: [d.message.id, str(d.message.attempts), _when(d.dead_at), d.reason,
               _short(d.error)],
    "{topic}: the dead-letter queue is empty",
))


@dlq.command("requeue")
def dlq_requeue(
    topic: str = TopicArgument,
    broker: str = BrokerOption,
    ids: list[str] = typer.Option(None, "--id", help="Requeue only these ids (repeatable)."),
    timeout: float = TIMEOUT_OPTION,
) -> None:
    """Put dead letters back on TOPIC (all, or those given with --id), attempts reset.

    Exits 1, after requeueing the others, when an --id is not among the dead letters."""
    missing: list[str] = []
    with _broker(broker, topic, timeout, read_only=False) as b:
        if not ids:
            n = b.requeue(topic, None)
        else:
            n = 0
            for msg_id in dict.fromkeys(ids):  # one at a time: the count says which were found
                found = b.requeue(topic, [msg_id])
                n += found
                if not found:
                    missing.append(msg_id)
    typer.echo(f"{topic}: requeued {_dead_letters(n)}")
    if missing:
        typer.echo(f"error: not in the dead-letter queue of {topic}: {', '.join(missing)}",
                   err=True)
        raise typer.Exit(1)


@dlq.command("purge")
def dlq_purge(
    topic: str = TopicArgument,
    broker: str = BrokerOption,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    timeout: float = TIMEOUT_OPTION,
) -> None:
    """Delete the dead letters of TOPIC for good."""
    _backend(broker)  # a bad URL is reported before the question
    if not yes:
        typer.confirm(f"Delete every dead letter of {topic!r}?", abort=True)
    with _broker(broker, topic, timeout, read_only=False) as b:
        n = b.purge_dead(topic)
    typer.echo(f"{topic}: purged {_dead_letters(n)}")


@app.command()
def migrate(
    url: str | None = _BROKER.positional(),
    broker: str | None = typer.Option(
        None, "--broker", "-b", envvar="STOIC_BROKER", metavar="URL",
        help="postgresql://user@host/db[?schema=...&table_prefix=...]",
    ),
    print_sql: bool = typer.Option(False, "--print-sql", help="Print the DDL, run nothing."),
    timeout: float = TIMEOUT_OPTION,
) -> None:
    """Create the PostgreSQL broker's tables ahead of time (safe to run again).

    For deployments whose application role may not run DDL: construct the broker with
    ``create_tables=False``. The other queue commands never create them.
    """
    from urllib.parse import parse_qs, urlsplit

    from .postgres import schema_sql

    target = _BROKER.choose(broker, url)
    backend = _BROKER.parse(target, ("postgresql",))
    query = {k: v[-1] for k, v in parse_qs(urlsplit(target).query).items()}
    schema, prefix = query.get("schema", "public"), query.get("table_prefix", "stoic_")
    ddl = schema_sql(schema, prefix).strip()  # ValueError (usage) for a bad name
    if print_sql:
        typer.echo(ddl)
        return
    with _broker(target, "", timeout, read_only=False) as b, reaching(backend):
        b.migrate()
    typer.echo(f"tables {schema}.{prefix}messages, dead and counters are ready")
    _BROKER.note_deprecated(url)
