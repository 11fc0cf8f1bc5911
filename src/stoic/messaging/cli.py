"""``stoic queue``: look into a queue and handle its dead letters from the shell.

    stoic queue stats orders --broker sqlite:///app.db
    stoic queue peek orders --limit 5 --broker redis://localhost:6379/0
    stoic queue dlq list orders --broker ...
    stoic queue dlq requeue orders [--id ID ...] --broker ...
    stoic queue dlq purge orders --yes --broker ...

``--broker`` defaults to the ``STOIC_BROKER`` environment variable. Needs ``stoic[cli]``.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer

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


@contextmanager
def _broker(url: str) -> Iterator[Any]:
    try:
        broker = connect(url)
    except (ValueError, ImportError, OSError) as exc:
        typer.echo(f"error: cannot open broker {url!r}: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        yield broker
    finally:
        broker.close()


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


def _dead_letters(n: int) -> str:
    return f"{n} dead letter{'' if n == 1 else 's'}"


@app.command()
def stats(
    topic: str = TopicArgument,
    broker: str = BrokerOption,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Ready, delayed, in-flight and dead-lettered message counts of TOPIC."""
    with _broker(broker) as b:
        s = b.stats(topic)
    if as_json:
        typer.echo(json.dumps({"topic": s.topic, "ready": s.ready, "delayed": s.delayed,
                               "in_flight": s.in_flight, "dead": s.dead}))
        return
    _table(["topic", "ready", "delayed", "in_flight", "dead"],
           [[s.topic, str(s.ready), str(s.delayed), str(s.in_flight), str(s.dead)]])


@app.command()
def peek(
    topic: str = TopicArgument,
    broker: str = BrokerOption,
    limit: int = typer.Option(10, "--limit", "-n", min=1, help="How many messages to show."),
) -> None:
    """The next messages of TOPIC, without taking them."""
    with _broker(broker) as b:
        messages = b.peek(topic, limit)
    _table(["id", "attempts", "created", "payload"],
           [[m.id, str(m.attempts), _when(m.created_at), _short(m.body)] for m in messages],
           empty=f"{topic}: no messages")


@dlq.command("list")
def dlq_list(
    topic: str = TopicArgument,
    broker: str = BrokerOption,
    limit: int = typer.Option(100, "--limit", "-n", min=1, help="How many to show."),
) -> None:
    """Dead letters of TOPIC: why each was parked and what failed."""
    with _broker(broker) as b:
        dead = b.dead_letters(topic, limit)
    _table(["id", "attempts", "dead since", "reason", "error"],
           [[d.message.id, str(d.message.attempts), _when(d.dead_at), d.reason,
             _short(d.error)] for d in dead],
           empty=f"{topic}: the dead-letter queue is empty")


@dlq.command("requeue")
def dlq_requeue(
    topic: str = TopicArgument,
    broker: str = BrokerOption,
    ids: list[str] = typer.Option(None, "--id", help="Requeue only these ids (repeatable)."),
) -> None:
    """Put dead letters back on TOPIC (all, or those given with --id), attempts reset."""
    with _broker(broker) as b:
        n = b.requeue(topic, ids or None)
    typer.echo(f"{topic}: requeued {_dead_letters(n)}")


@dlq.command("purge")
def dlq_purge(
    topic: str = TopicArgument,
    broker: str = BrokerOption,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete the dead letters of TOPIC for good."""
    if not yes:
        typer.confirm(f"Delete every dead letter of {topic!r}?", abort=True)
    with _broker(broker) as b:
        n = b.purge_dead(topic)
    typer.echo(f"{topic}: purged {_dead_letters(n)}")


@app.command()
def migrate(
    url: str = typer.Argument(..., help="postgresql://user@host/db[?schema=...&table_prefix=...]"),
    print_sql: bool = typer.Option(False, "--print-sql", help="Print the DDL, run nothing."),
) -> None:
    """Create the PostgreSQL broker's tables ahead of time (safe to run again).

    For deployments whose application role may not run DDL: construct the broker with
    ``create_tables=False``.
    """
    from .postgres import PostgresBroker, schema_sql

    with _broker(url) as b:
        if not isinstance(b, PostgresBroker):
            typer.echo(f"error: migrate is for postgresql:// brokers, got {url!r}", err=True)
            raise typer.Exit(2)
        if print_sql:
            typer.echo(schema_sql(b.schema, b.table_prefix).strip())
            return
        b.migrate()
        typer.echo(f"tables {b.schema}.{b.table_prefix}messages, dead and counters are ready")
