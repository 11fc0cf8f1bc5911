"""stoic's brokers never wait past the caller's ``stoic.deadline``.

Something else holds what a broker operation needs (another process's SQLite write lock,
a PostgreSQL row or table lock, a paused Redis server of the test's own); under
``stoic.deadline(0.3)`` the operation raises ``stoic.DeadlineExceeded`` soon after the
deadline, leaves nothing half written, and without a deadline it waits as it always did.
Real-time tests (the waits are SQLite's and the servers'); the bounds are generous.
"""

from __future__ import annotations

import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import stoic
from stoic.messaging import SQLiteBroker
from support import free_port, require_service, wait_for_port

_SLACK = 2.0  # seconds past the deadline a loaded machine may take to report it


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
        holder = _hold_sqlite_lock(tmp_path / "q.db")
        try:
            started = time.monotonic()
            with pytest.raises(stoic.DeadlineExceeded) as caught, stoic.deadline(0.3):
                broker.publish("jobs", {"n": 1})
            waited = time.monotonic() - started
        finally:
            holder.rollback()
            holder.close()
        assert 0.25 <= waited < 0.3 + _SLACK
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
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


@pytest.fixture(scope="module")
def own_redis() -> Iterator[tuple[str, Any]]:
    """A Redis server of this module's own (it gets paused), and a client to pause it with."""
    require_service("redis", "127.0.0.1", 6379)
    redis = pytest.importorskip("redis")
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        control = redis.Redis(port=port)
        yield f"redis://127.0.0.1:{port}/0", control
        control.close()
    finally:
        process.kill()
        process.wait()


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
        try:
            started = time.monotonic()
            with pytest.raises(stoic.DeadlineExceeded) as caught, stoic.deadline(0.3):
                broker.claim(topic, lease=0.5)
            waited = time.monotonic() - started
        finally:
            control.execute_command("CLIENT", "UNPAUSE")
        assert 0.25 <= waited < 0.3 + _SLACK
        assert caught.value.__cause__ is not None
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
