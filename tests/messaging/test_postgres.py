"""PostgresBroker beyond the shared contract: your transaction, wake-ups, tables, the CLI."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from stoic.messaging import Message, Worker, connect

pytest.importorskip("psycopg")


@pytest.fixture
def pg(postgres_broker_url: str) -> Iterator[Any]:
    broker = connect(postgres_broker_url)
    yield broker
    broker.close()


def test_publishing_with_the_callers_connection_queues_only_what_commits(
    pg: Any, postgres_dsn: str, topic: str
) -> None:
    import psycopg

    with psycopg.connect(postgres_dsn) as conn:  # not autocommit: one transaction
        pg.publish(topic, "rolled back", connection=conn)
        conn.rollback()
        pg.publish(topic, "committed", id="c1", connection=conn)
        pg.publish_many(topic, ["also"], ids=["c2"], connection=conn)
        assert pg.stats(topic).ready == 0  # not visible before the commit
        conn.commit()
    got = pg.claim(topic, max_messages=10)
    assert [(m.id, m.payload) for m in got] == [("c1", "committed"), ("c2", "also")]
    pg.delete_topic(topic)


def test_an_idle_worker_wakes_on_notify_long_before_its_poll_interval(
    pg: Any, topic: str
) -> None:
    handled = threading.Event()
    worker = Worker(pg, topic, lambda m: handled.set(), poll_interval=30.0)
    thread = threading.Thread(target=worker.run, kwargs={"handle_signals": False})
    thread.start()
    try:
        time.sleep(0.5)  # the worker found nothing and waits (for 30 s if it polled)
        pg.publish(topic, "wake up")
        assert handled.wait(10.0)
    finally:
        worker.stop()
        thread.join(10.0)  # stop() is not kept waiting for the 30 s poll interval
    assert not thread.is_alive()
    pg.delete_topic(topic)


def test_a_stalled_message_comes_back_after_its_lease_and_is_counted_recovered(
    pg: Any, topic: str
) -> None:
    pg.publish(topic, 1)
    [first] = pg.claim(topic, lease=0.2)  # the worker holding it dies
    time.sleep(0.3)
    [again] = pg.claim(topic, lease=30.0)
    assert (again.id, again.attempts) == (first.id, 2)
    assert pg.stats(topic).recovered == 1
    assert pg.ack(again)
    pg.delete_topic(topic)


def test_concurrent_first_users_create_the_tables_once(
    postgres_dsn: str, pg_schema_cleanup: set[str]
) -> None:
    """Tables are created under an advisory lock: racing first publishers do not collide."""
    from stoic.messaging.postgres import PostgresBroker

    schema = f"stoic_test_{uuid.uuid4().hex[:10]}"
    brokers = [PostgresBroker(postgres_dsn, schema=schema, min_size=0, max_size=1)
               for _ in range(4)]
    errors: list[BaseException] = []

    def first_use(b: PostgresBroker) -> None:
        try:
            b.publish("t", 1)
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=first_use, args=(b,)) for b in brokers]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
        assert brokers[0].stats("t").ready == 4
    finally:
        for b in brokers:
            b.close()
        import psycopg

        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def test_without_create_tables_nothing_is_created_until_migrate(
    postgres_dsn: str,
) -> None:
    import psycopg

    from stoic.messaging.postgres import PostgresBroker

    schema = f"stoic_test_{uuid.uuid4().hex[:10]}"
    broker = PostgresBroker(postgres_dsn, schema=schema, create_tables=False, min_size=0)
    try:
        with pytest.raises(psycopg.Error):
            broker.publish("t", 1)
        broker.migrate()
        broker.publish("t", 1)
        [m] = broker.claim("t")
        assert isinstance(m, Message) and m.payload == 1
    finally:
        broker.close()
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.mark.parametrize(("option", "value"), [
    ("schema", "Bad-Name"), ("table_prefix", "x;drop"), ("dedupe_window", -1.0),
    ("max_size", 0),
])
def test_bad_configuration_is_refused_naming_the_parameter(
    option: str, value: Any, postgres_dsn: str
) -> None:
    from stoic.messaging.postgres import PostgresBroker

    with pytest.raises(ValueError, match=option):
        PostgresBroker(postgres_dsn, **{option: value})


def test_queue_migrate_creates_the_tables_from_the_shell(postgres_dsn: str) -> None:
    import psycopg
    from typer.testing import CliRunner

    from stoic.cli import build_app
    from stoic.messaging.postgres import PostgresBroker

    schema = f"stoic_test_{uuid.uuid4().hex[:10]}"
    url = f"{postgres_dsn}?schema={schema}"
    try:
        shown = CliRunner().invoke(build_app(), ["queue", "migrate", url, "--print-sql"])
        assert shown.exit_code == 0, shown.output
        assert f"CREATE TABLE IF NOT EXISTS {schema}.stoic_messages" in shown.output
        for _ in range(2):  # safe to run again
            result = CliRunner().invoke(build_app(), ["queue", "migrate", url])
            assert result.exit_code == 0, result.output
        broker = PostgresBroker(postgres_dsn, schema=schema, create_tables=False, min_size=0)
        broker.publish("t", 1)
        assert broker.stats("t").ready == 1
        broker.close()
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def test_ack_and_claim_acks_the_finished_and_claims_the_next_in_one_call(
    pg: Any, topic: str
) -> None:
    from stoic.messaging import AckAndClaim

    assert isinstance(pg, AckAndClaim)
    pg.publish_many(topic, [0, 1, 2, 3, 4])
    acked, first = pg.ack_and_claim([], topic, max_messages=2)
    assert acked == 0 and [m.payload for m in first] == [0, 1]
    acked, second = pg.ack_and_claim(first, topic, max_messages=2)
    assert acked == 2 and [m.payload for m in second] == [2, 3]
    stale = first[0]  # acked already: counted out, and never claimed again
    acked, third = pg.ack_and_claim([stale, second[0]], topic, max_messages=5)
    assert acked == 1 and [m.payload for m in third] == [4]
    acked, nothing = pg.ack_and_claim([second[1], *third], topic)
    assert acked == 2 and nothing == []
    stats = pg.stats(topic)
    assert (stats.ready, stats.in_flight) == (0, 0)
    assert pg.ack_and_claim(third, topic) == (0, [])  # a second ack counts nothing
    pg.delete_topic(topic)


def test_ack_and_claim_never_hands_back_a_message_it_acks(pg: Any, topic: str) -> None:
    pg.publish(topic, "only")
    [held] = pg.claim(topic, lease=0.05)
    time.sleep(0.1)  # its lease ran out: claimable again, and still ackable by its holder
    acked, claimed = pg.ack_and_claim([held], topic)
    assert acked == 1 and claimed == []
    assert pg.stats(topic).ready == 0 and pg.claim(topic) == []
    pg.delete_topic(topic)


def test_a_worker_acks_each_message_with_its_next_claim(pg: Any, topic: str) -> None:
    calls: list[tuple[str, int]] = []
    real_ack_many, real_ack_and_claim = pg.ack_many, pg.ack_and_claim

    def ack_many(messages: Any) -> int:
        calls.append(("ack_many", len(messages)))
        return int(real_ack_many(messages))

    def ack_and_claim(done: Any, t: str, **kw: Any) -> Any:
        calls.append(("ack_and_claim", len(done)))
        return real_ack_and_claim(done, t, **kw)

    pg.ack_many, pg.ack_and_claim = ack_many, ack_and_claim
    pg.publish_many(topic, list(range(20)))
    seen: list[int] = []
    counts = Worker(pg, topic, lambda m: seen.append(m.payload), prefetch=1).run(
        stop_when_empty=True, handle_signals=False)
    assert seen == list(range(20)) and counts.handled == 20
    # every ack rode with the next claim: no separate ack call
    assert sum(n for kind, n in calls if kind == "ack_and_claim") == 20
    assert not [c for c in calls if c[0] == "ack_many"]
    stats = pg.stats(topic)
    assert (stats.ready, stats.in_flight) == (0, 0)
    pg.delete_topic(topic)


def test_a_stopped_worker_acks_what_it_handled_before_returning(pg: Any, topic: str) -> None:
    pg.publish_many(topic, ["a", "b", "c"])
    worker: Worker

    def handle(message: Message) -> None:
        if message.payload == "b":
            worker.stop()  # the loop ends after this batch: its ack cannot wait for a claim

    worker = Worker(pg, topic, handle, prefetch=1)
    counts = worker.run(handle_signals=False)
    assert counts.handled == 2
    stats = pg.stats(topic)
    assert (stats.ready, stats.in_flight) == (1, 0)  # "c" waits; "a" and "b" are acked
    pg.delete_topic(topic)
