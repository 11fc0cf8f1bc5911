"""stoic's brokers never wait past the caller's ``stoic.deadline``.

Something else holds what a broker operation needs (another process's SQLite write lock,
a PostgreSQL row or table lock, a paused Redis server of the test's own); under
``stoic.deadline(0.3)`` the operation raises ``stoic.DeadlineExceeded`` soon after the
deadline, leaves nothing half written, and without a deadline it waits as it always did.
Real-time tests (the waits are SQLite's and the servers'); the bounds are generous.
"""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import stoic
from idempotency.test_deadlines import ends_at_deadline, let_go, own_redis
from stoic.messaging import SQLiteBroker
from support import require_service

_SLACK = 2.0  # seconds past the deadline a loaded machine may take to report it


__all__ = ["own_redis"]  # a fixture shared with the idempotency tests


def _broker(path: Path, busy_timeout: float) -> SQLiteBroker:
    """A broker whose first publish (which imports what headers need) is behind it."""
    broker = SQLiteBroker(path, busy_timeout=busy_timeout)
    broker.publish("warm-up", {})
    return broker


def _hold_sqlite_lock(path: Path) -> sqlite3.Connection:
    """A second connection holding the file's write lock until it rolls back."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    return holder


class TestSQLiteBroker:
    def test_publish_behind_another_writer_stops_at_the_deadline(self, tmp_path: Path) -> None:
        """A publish waiting for another process's lock gives up when the deadline runs out,
        and the message is not queued."""
        broker = _broker(tmp_path / "q.db", 30.0)
        error = ends_at_deadline(lambda: broker.publish("jobs", {"n": 1}),
                                 let_go(_hold_sqlite_lock(tmp_path / "q.db")))
        assert isinstance(error.__cause__, sqlite3.OperationalError)
        assert broker.stats("jobs").ready == 0
        broker.close()

    def test_a_batch_behind_another_writer_is_not_half_written(self, tmp_path: Path) -> None:
        """publish_many under a deadline that runs out queues none of its messages."""
        broker = _broker(tmp_path / "q.db", 30.0)
        holder = _hold_sqlite_lock(tmp_path / "q.db")
        try:
            with pytest.raises(stoic.DeadlineExceeded), stoic.deadline(0.3):
                broker.publish_many("jobs", [{"n": i} for i in range(50)])
        finally:
            holder.rollback()
            holder.close()
        assert broker.stats("jobs").ready == 0
        assert len(broker.publish_many("jobs", [{"n": i} for i in range(50)])) == 50
        broker.close()

    def test_ack_behind_another_writer_stops_at_the_deadline(self, tmp_path: Path) -> None:
        """Bookkeeping is bounded too: the message stays claimed, and acks later."""
        broker = _broker(tmp_path / "q.db", 30.0)
        broker.publish("jobs", {"n": 1})
        [message] = broker.claim("jobs", lease=30)
        holder = _hold_sqlite_lock(tmp_path / "q.db")
        try:
            with pytest.raises(stoic.DeadlineExceeded), stoic.deadline(0.3):
                broker.ack(message)
        finally:
            holder.rollback()
            holder.close()
        assert broker.stats("jobs").in_flight == 1
        assert broker.ack(message)
        broker.close()

    def test_without_a_deadline_the_broker_waits_its_busy_timeout(self, tmp_path: Path) -> None:
        """No deadline (even after one): the full busy timeout, then sqlite3's own error."""
        broker = _broker(tmp_path / "q.db", 1.0)
        with stoic.deadline(0.05):
            broker.stats("jobs")  # sets a short busy timeout, put back by the next call
        holder = _hold_sqlite_lock(tmp_path / "q.db")
        try:
            started = time.monotonic()
            with pytest.raises(sqlite3.OperationalError, match="locked") as caught:
                broker.publish("jobs", {"n": 1})
            waited = time.monotonic() - started
        finally:
            holder.rollback()
            holder.close()
        assert not isinstance(caught.value, stoic.DeadlineExceeded)
        assert waited >= 0.95
        broker.close()

    def test_the_wait_for_the_broker_shared_by_threads_stops_at_the_deadline(
        self, tmp_path: Path
    ) -> None:
        """A thread stuck in a slow operation does not hold another thread's deadline up."""
        broker = _broker(tmp_path / "q.db", 3.0)
        holder = _hold_sqlite_lock(tmp_path / "q.db")
        stuck = threading.Thread(target=broker.publish, args=("jobs", {"n": 0}))
        stuck.start()
        try:
            time.sleep(0.2)  # let the other thread take the broker and wait on the file
            started = time.monotonic()
            with pytest.raises(stoic.DeadlineExceeded, match="connection"), \
                    stoic.deadline(0.3):
                broker.stats("jobs")
            waited = time.monotonic() - started
        finally:
            holder.rollback()
            holder.close()
            stuck.join()
        assert 0.25 <= waited < 0.3 + _SLACK
        broker.close()


class TestRedisBroker:
    def test_claim_on_a_paused_server_stops_at_the_deadline(
        self, own_redis: tuple[str, Any]
    ) -> None:
        """A claim the server holds back ends when the deadline does; the message is
        delivered again once its lease ends (nothing is lost)."""
        from stoic.messaging.redis import RedisBroker

        url, control = own_redis
        topic = f"jobs-{uuid.uuid4().hex[:8]}"
        broker = RedisBroker(url)
        broker.publish(topic, {"n": 1})
        control.execute_command("CLIENT", "PAUSE", 3000, "ALL")
        error = ends_at_deadline(lambda: broker.claim(topic, lease=0.5),
                                 lambda: control.execute_command("CLIENT", "UNPAUSE"))
        assert error.__cause__ is not None
        end = time.monotonic() + 10
        got = broker.claim(topic, lease=30)
        while not got and time.monotonic() < end:
            time.sleep(0.1)
            got = broker.claim(topic, lease=30)
        assert [m.payload for m in got] == [{"n": 1}]
        broker.close()

    def test_without_a_deadline_the_broker_waits_for_the_server(
        self, own_redis: tuple[str, Any]
    ) -> None:
        """No deadline: a publish waits out the pause and succeeds, as before."""
        from stoic.messaging.redis import RedisBroker

        url, control = own_redis
        topic = f"jobs-{uuid.uuid4().hex[:8]}"
        broker = RedisBroker(url)
        broker.publish(topic, {"n": 0})
        control.execute_command("CLIENT", "PAUSE", 1000, "ALL")
        started = time.monotonic()
        broker.publish(topic, {"n": 1})
        assert time.monotonic() - started >= 0.8
        assert broker.stats(topic).ready == 2
        broker.close()


@pytest.fixture
def pg_broker(postgres_dsn: str) -> Iterator[Any]:
    """A PostgresBroker in a schema of its own, dropped afterwards."""
    import psycopg

    from stoic.messaging.postgres import PostgresBroker

    schema = f"t_deadline_{uuid.uuid4().hex[:10]}"
    broker = PostgresBroker(postgres_dsn, schema=schema, max_size=2, notify=False)
    broker.migrate()
    yield broker
    broker.close()
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def _lock_table(dsn: str, table: str) -> Any:
    """Another connection holding ``LOCK TABLE ... ACCESS EXCLUSIVE`` until it rolls back."""
    import psycopg

    holder = psycopg.connect(dsn)
    holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
    return holder


class TestPostgresBroker:
    def test_publish_behind_a_table_lock_stops_at_the_deadline(
        self, pg_broker: Any, postgres_dsn: str
    ) -> None:
        """The server cancels the INSERT when the deadline runs out; nothing is queued."""
        pg_broker.publish("warm-up", {})
        holder = _lock_table(postgres_dsn, f"{pg_broker.schema}.stoic_messages")
        error = ends_at_deadline(lambda: pg_broker.publish("jobs", {"n": 1}), let_go(holder))
        assert type(error.__cause__).__name__ == "QueryCanceled"
        assert pg_broker.stats("jobs").ready == 0

    def test_ack_behind_a_row_lock_stops_at_the_deadline(
        self, pg_broker: Any, postgres_dsn: str
    ) -> None:
        """Bookkeeping is bounded too: the message stays claimed, and acks later."""
        import psycopg

        pg_broker.publish("jobs", {"n": 1})
        [message] = pg_broker.claim("jobs", lease=30)
        holder = psycopg.connect(postgres_dsn)
        holder.execute(f"SELECT seq FROM {pg_broker.schema}.stoic_messages"
                       " WHERE topic = 'jobs' FOR UPDATE")
        try:
            with pytest.raises(stoic.DeadlineExceeded), stoic.deadline(0.3):
                pg_broker.ack(message)
        finally:
            holder.rollback()
            holder.close()
        assert pg_broker.stats("jobs").in_flight == 1
        assert pg_broker.ack(message)

    def test_without_a_deadline_the_broker_waits_for_the_lock(
        self, pg_broker: Any, postgres_dsn: str
    ) -> None:
        """No deadline (even right after one): the INSERT waits for the lock, as before."""
        with stoic.deadline(5):
            pg_broker.stats("jobs")  # leaves statement_timeout set on a pooled connection
        holder = _lock_table(postgres_dsn, f"{pg_broker.schema}.stoic_messages")
        timer = threading.Timer(1.0, holder.rollback)
        timer.start()
        try:
            started = time.monotonic()
            pg_broker.publish("jobs", {"n": 1})
            pg_broker.publish("jobs", {"n": 2})
            waited = time.monotonic() - started
        finally:
            timer.join()
            holder.close()
        assert waited >= 0.9
        assert pg_broker.stats("jobs").ready == 2

    def test_the_wait_for_a_pooled_connection_stops_at_the_deadline(
        self, pg_broker: Any
    ) -> None:
        """With every pooled connection busy, the wait for one ends with the deadline."""
        pg_broker.stats("jobs")
        with pg_broker._pool.connection(), pg_broker._pool.connection():
            started = time.monotonic()
            with pytest.raises(stoic.DeadlineExceeded) as caught, stoic.deadline(0.3):
                pg_broker.stats("jobs")
            waited = time.monotonic() - started
        assert 0.25 <= waited < 0.3 + _SLACK
        assert type(caught.value.__cause__).__name__ == "PoolTimeout"


def _silent_server_given_up(connect: Callable[[int], object]) -> BaseException:
    """``connect(port)`` to a server that accepts and never says a word, under a deadline."""
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        return ends_at_deadline(lambda: connect(silent.getsockname()[1]), lambda: None)
    finally:
        silent.close()


class TestRabbitBroker:
    def test_a_server_that_never_answers_is_given_up_at_the_deadline(self) -> None:
        """Connecting to a server that accepts and then says nothing ends with the deadline."""
        pytest.importorskip("aio_pika")
        from stoic.messaging.rabbitmq import RabbitBroker

        error = _silent_server_given_up(
            lambda port: RabbitBroker(f"amqp://guest:guest@127.0.0.1:{port}/"))
        assert isinstance(error.__cause__, TimeoutError)

    def test_operations_under_a_deadline_work_as_before(self, amqp_url: str) -> None:
        """With time left, publish, claim and ack behave as without a deadline."""
        pytest.importorskip("aio_pika")
        from stoic.messaging.rabbitmq import RabbitBroker

        topic = f"deadline-{uuid.uuid4().hex[:8]}"
        broker = RabbitBroker(amqp_url)
        try:
            with stoic.deadline(30):
                broker.publish(topic, {"n": 1})
                got: list[Any] = []
                end = time.monotonic() + 10
                while not got and time.monotonic() < end:
                    got = broker.claim(topic, lease=30)
                assert [m.payload for m in got] == [{"n": 1}]
                assert broker.ack(got[0])
            with stoic.deadline(0.001):
                time.sleep(0.01)
                with pytest.raises(stoic.DeadlineExceeded):
                    broker.publish(topic, {"n": 2})
        finally:
            broker.delete_topic(topic)
            broker.close()


class TestNatsBroker:
    def test_a_server_that_never_answers_is_given_up_at_the_deadline(self) -> None:
        """Connecting to a server that accepts and then says nothing ends with the deadline."""
        pytest.importorskip("nats")
        from stoic.messaging.nats import NatsBroker

        _silent_server_given_up(lambda port: NatsBroker(f"nats://127.0.0.1:{port}"))

    def test_operations_under_a_deadline_work_as_before(self) -> None:
        """With time left, publish, claim and ack behave as without a deadline; with none
        left, nothing is sent."""
        require_service("NATS", "127.0.0.1", 4222)
        pytest.importorskip("nats")
        from stoic.messaging.nats import NatsBroker

        topic = f"deadline-{uuid.uuid4().hex[:8]}"
        broker = NatsBroker("nats://127.0.0.1:4222")
        try:
            with stoic.deadline(30):
                broker.publish(topic, {"n": 1})
                got = broker.claim(topic, lease=30)
                assert [m.payload for m in got] == [{"n": 1}]
                assert broker.ack(got[0])
            with stoic.deadline(0.001):
                time.sleep(0.01)
                with pytest.raises(stoic.DeadlineExceeded):
                    broker.publish(topic, {"n": 2})
            assert broker.stats(topic).ready == 0
        finally:
            broker.delete_topic(topic)
            broker.close()
