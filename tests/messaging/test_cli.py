"""``stoic queue``: stats, peek and the dead-letter commands against a real SQLite queue."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from stoic.cli import build_app
from stoic.messaging import SQLiteBroker


def setup_queue(path: Path) -> str:
    broker = SQLiteBroker(path)
    broker.publish_many("orders", [{"n": 1}, {"n": 2}, {"n": 3}], ids=["o1", "o2", "o3"])
    [m] = broker.claim("orders", max_messages=1)
    broker.dead_letter(m, "permanent failure", "ValueError: no such product")
    broker.close()
    return f"sqlite:///{path}"


def test_stats_and_peek_show_the_queue(tmp_path: Path) -> None:
    url = setup_queue(tmp_path / "q.db")
    runner = CliRunner()
    result = runner.invoke(build_app(), ["queue", "stats", "orders", "--broker", url, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {
        "topic": "orders", "ready": 2, "delayed": 0, "in_flight": 0, "dead": 1, "recovered": 0
    }
    result = runner.invoke(build_app(), ["queue", "peek", "orders", "--broker", url])
    assert result.exit_code == 0, result.output
    assert "o2" in result.output and '{"n":3}' in result.output


def test_dlq_list_requeue_and_purge(tmp_path: Path) -> None:
    url = setup_queue(tmp_path / "q.db")
    runner = CliRunner()
    app = build_app()
    listed = runner.invoke(app, ["queue", "dlq", "list", "orders", "--broker", url])
    assert listed.exit_code == 0, listed.output
    assert "o1" in listed.output and "ValueError: no such product" in listed.output
    requeued = runner.invoke(app, ["queue", "dlq", "requeue", "orders", "--id", "o1", "-b", url])
    assert "requeued 1 dead letter" in requeued.output
    assert SQLiteBroker(tmp_path / "q.db").stats("orders").ready == 3

    broker = SQLiteBroker(tmp_path / "q.db")
    for m in broker.claim("orders", max_messages=3):
        broker.dead_letter(m, "test")
    refused = runner.invoke(app, ["queue", "dlq", "purge", "orders", "-b", url], input="n\n")
    assert refused.exit_code != 0
    assert broker.stats("orders").dead == 3
    purged = runner.invoke(app, ["queue", "dlq", "purge", "orders", "-b", url, "--yes"])
    assert "purged 3 dead letters" in purged.output
    assert broker.stats("orders").dead == 0


def test_bad_broker_url_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(build_app(), ["queue", "stats", "x", "--broker", "nope://x"])
    assert result.exit_code == 2
    assert "unsupported scheme 'nope'" in result.output


def test_peek_and_dlq_list_print_json_when_asked(tmp_path: Path) -> None:
    url = setup_queue(tmp_path / "q.db")
    runner = CliRunner()
    peeked = runner.invoke(build_app(), ["queue", "peek", "orders", "-b", url, "--json"])
    assert peeked.exit_code == 0, peeked.output
    assert [(m["id"], json.loads(m["body"])) for m in json.loads(peeked.output)] == [
        ("o2", {"n": 2}), ("o3", {"n": 3})
    ]
    listed = runner.invoke(build_app(), ["queue", "dlq", "list", "orders", "-b", url, "--json"])
    assert listed.exit_code == 0, listed.output
    [dead] = json.loads(listed.output)
    assert (dead["id"], dead["reason"], dead["error"]) == (
        "o1", "permanent failure", "ValueError: no such product"
    )


def test_requeue_reports_the_ids_it_did_not_find_and_exits_1(tmp_path: Path) -> None:
    url = setup_queue(tmp_path / "q.db")
    result = CliRunner().invoke(
        build_app(), ["queue", "dlq", "requeue", "orders", "--id", "o1", "--id", "missing",
                      "-b", url],
    )
    assert result.exit_code == 1
    assert "requeued 1 dead letter" in result.output
    assert "not in the dead-letter queue of orders: missing" in result.output
    assert SQLiteBroker(tmp_path / "q.db").stats("orders").dead == 0


def test_inspection_opens_the_file_read_only_and_changes_nothing(tmp_path: Path) -> None:
    url = setup_queue(tmp_path / "q.db")
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    before = other.read_bytes()
    runner = CliRunner()
    for command in (["stats"], ["peek"], ["dlq", "list"]):
        result = runner.invoke(build_app(), ["queue", *command, "orders", "-b", url])
        assert result.exit_code == 0, result.output
        refused = runner.invoke(build_app(),
                                ["queue", *command, "orders", "-b", f"sqlite:///{other}"])
        assert refused.exit_code == 1
        assert "not a stoic database: it has no table stoic_" in refused.output
    for command in (["dlq", "requeue"], ["dlq", "purge", "--yes"]):
        refused = runner.invoke(build_app(),
                                ["queue", *command, "orders", "-b", f"sqlite:///{other}"])
        assert refused.exit_code == 1, refused.output
    assert other.read_bytes() == before  # no table was added to someone else's database


def test_a_read_only_broker_reads_and_refuses_to_write(tmp_path: Path) -> None:
    setup_queue(tmp_path / "q.db")
    broker = SQLiteBroker(tmp_path / "q.db", read_only=True)
    assert broker.stats("orders").ready == 2
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        broker.publish("orders", {"n": 4})
    broker.close()
    with pytest.raises(sqlite3.OperationalError):
        SQLiteBroker(tmp_path / "missing.db", read_only=True)
    assert not (tmp_path / "missing.db").exists()


def test_inspecting_a_postgres_broker_never_creates_its_tables(postgres_dsn: str) -> None:
    import uuid

    import psycopg

    schema = f"stoic_cli_{uuid.uuid4().hex[:10]}"
    url = f"{postgres_dsn}?schema={schema}"
    try:
        for command in (["stats"], ["peek"], ["dlq", "list"]):
            result = CliRunner().invoke(build_app(), ["queue", *command, "orders", "-b", url])
            assert result.exit_code == 1, result.output
            [line] = result.stderr.splitlines()
            assert line.startswith("error: ") and "does not exist" in line, line
        with psycopg.connect(postgres_dsn) as conn:
            found = conn.execute("SELECT count(*) FROM information_schema.tables"
                                 " WHERE table_schema = %s", (schema,)).fetchone()
        assert found == (0,)
        migrated = CliRunner().invoke(build_app(), ["queue", "migrate", "--broker", url])
        assert migrated.exit_code == 0, migrated.output
        result = CliRunner().invoke(build_app(), ["queue", "stats", "orders", "-b", url, "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["ready"] == 0
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.mark.parametrize("kind", ["postgres", "nats"])
def test_queue_commands_work_against_postgres_and_nats(
    kind: str, request: pytest.FixtureRequest, topic: str
) -> None:
    from stoic.messaging import connect

    if kind == "postgres":
        url = str(request.getfixturevalue("postgres_broker_url"))
    else:
        url = f"{request.getfixturevalue('nats_url')}?prefix=stoictest"
    broker = connect(url)
    try:
        broker.publish_many(topic, [{"n": 1}, {"n": 2}], ids=["o1", "o2"])
        end = time.monotonic() + 5
        got: list[Any] = []
        while not got and time.monotonic() < end:
            got = broker.claim(topic, max_messages=1)
        broker.dead_letter(got[0], "permanent failure", "ValueError: no such product")
        runner, app = CliRunner(), build_app()
        stats = runner.invoke(app, ["queue", "stats", topic, "--broker", url, "--json"])
        assert stats.exit_code == 0, stats.output
        assert json.loads(stats.output)["dead"] == 1
        peek = runner.invoke(app, ["queue", "peek", topic, "--broker", url])
        assert peek.exit_code == 0 and "o2" in peek.output, peek.output
        listed = runner.invoke(app, ["queue", "dlq", "list", topic, "--broker", url])
        assert "o1" in listed.output and "no such product" in listed.output, listed.output
        requeued = runner.invoke(app, ["queue", "dlq", "requeue", topic, "--broker", url])
        assert "requeued 1 dead letter" in requeued.output, requeued.output
        assert broker.stats(topic).dead == 0
    finally:
        broker.delete_topic(topic)
        broker.close()
