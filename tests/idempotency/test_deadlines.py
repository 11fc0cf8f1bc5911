"""The idempotency stores never wait past the caller's ``stoic.deadline``.

Another connection holds the lock a store operation needs; under ``stoic.deadline(0.3)`` the
operation raises ``stoic.DeadlineExceeded`` (chained to the driver's error) soon after the
deadline, writes nothing, and without a deadline it waits as long as it always did.
These are real-time tests (the wait is SQLite's or the server's, no virtual clock reaches
it); the bounds are generous for a loaded machine.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

import stoic
from stoic.idempotency import SQLiteStore

_SLACK = 2.0  # seconds past the deadline a loaded machine may take to report it


def _hold_sqlite_lock(path: Path) -> sqlite3.Connection:
    """A second connection holding the file's write lock until it is closed."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    return holder


class TestSQLiteStore:
    def test_claim_behind_a_lock_stops_at_the_deadline_and_writes_nothing(
        self, tmp_path: Path
    ) -> None:
        """A claim waiting for another writer's lock gives up when the deadline runs out."""
        store = SQLiteStore(tmp_path / "keys.db", busy_timeout=30.0)
        store.get("warm-up")  # the file and table exist before the lock is taken
        holder = _hold_sqlite_lock(tmp_path / "keys.db")
        try:
            started = time.monotonic()
            with pytest.raises(stoic.DeadlineExceeded) as caught, stoic.deadline(0.3):
                store.claim("k", "fp", lease=10, ttl=60)
            waited = time.monotonic() - started
        finally:
            holder.rollback()
            holder.close()
        assert 0.25 <= waited < 0.3 + _SLACK
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        assert isinstance(caught.value, TimeoutError)
        assert store.get("k") is None
        store.close()

    def test_without_a_deadline_the_store_waits_its_busy_timeout(self, tmp_path: Path) -> None:
        """No deadline: the full busy timeout, then sqlite3's own error, as before."""
        store = SQLiteStore(tmp_path / "keys.db", busy_timeout=1.0)
        store.get("warm-up")
        holder = _hold_sqlite_lock(tmp_path / "keys.db")
        try:
            started = time.monotonic()
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                store.claim("k", "fp", lease=10, ttl=60)
            waited = time.monotonic() - started
        finally:
            holder.rollback()
            holder.close()
        assert waited >= 0.95

    def test_the_busy_timeout_comes_back_after_a_deadline(self, tmp_path: Path) -> None:
        """A call under a short deadline does not shorten the next call's wait."""
        store = SQLiteStore(tmp_path / "keys.db", busy_timeout=1.0)
        store.get("warm-up")
        with stoic.deadline(0.05):
            store.get("short")
        holder = _hold_sqlite_lock(tmp_path / "keys.db")
        try:
            started = time.monotonic()
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                store.complete("k", "token", None, ttl=60)
            waited = time.monotonic() - started
        finally:
            holder.rollback()
            holder.close()
        assert waited >= 0.95

    def test_a_shorter_busy_timeout_fails_as_itself_under_a_long_deadline(
        self, tmp_path: Path
    ) -> None:
        """The store's own timeout, shorter than the time left, is not the deadline."""
        store = SQLiteStore(tmp_path / "keys.db", busy_timeout=0.2)
        store.get("warm-up")
        holder = _hold_sqlite_lock(tmp_path / "keys.db")
        try:
            with pytest.raises(sqlite3.OperationalError) as caught, stoic.deadline(30):
                store.release("k", "token")
        finally:
            holder.rollback()
            holder.close()
        assert not isinstance(caught.value, stoic.DeadlineExceeded)

    def test_no_operation_starts_after_the_deadline(self, tmp_path: Path) -> None:
        """A passed deadline refuses the operation before it touches the file."""
        store = SQLiteStore(tmp_path / "keys.db")
        with stoic.deadline(0.001):
            time.sleep(0.01)
            with pytest.raises(stoic.DeadlineExceeded):
                store.claim("k", "fp", lease=10, ttl=60)
        assert store.get("k") is None
