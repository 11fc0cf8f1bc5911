"""SQLite group commit: concurrent writes of one process share a COMMIT (and its fsync),
and a write that fails takes nothing of the others with it."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stoic.workflow import SQLiteStore, Workflows


def _statements(store: SQLiteStore) -> Counter[str]:
    """Count the statements the store's shared write connection runs, by first word."""
    seen: Counter[str] = Counter()
    with store._write() as conn:  # opens the writer connection
        conn.execute("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY)")
    writer = store._group.conn
    assert writer is not None
    writer.set_trace_callback(lambda sql: seen.update([sql.split()[0].upper()]))
    return seen


def _insert(store: SQLiteStore, key: str, then: Callable[[], Any] = lambda: None) -> None:
    with store._write() as conn:
        conn.execute("INSERT INTO t (k) VALUES (?)", (key,))
        then()


def _keys(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {k for (k,) in conn.execute("SELECT k FROM t")}
    finally:
        conn.close()


def _wait_until(check: Callable[[], bool], seconds: float = 5.0) -> None:
    end = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.001)


def test_writes_queued_during_a_write_share_its_commit(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "g.db")
    seen = _statements(store)
    inside, done = threading.Event(), []

    def first() -> None:  # holds the connection until two more writers queue behind it
        inside.set()
        _wait_until(lambda: store._group.waiting == 2)

    opener = threading.Thread(target=lambda: (_insert(store, "a", first), done.append("a")))
    opener.start()
    inside.wait(5)
    others = [threading.Thread(target=lambda k=k: (_insert(store, k), done.append(k)))
              for k in ("b", "c")]
    for t in others:
        t.start()
    for t in (opener, *others):
        t.join(10)
    assert sorted(done) == ["a", "b", "c"]
    assert seen["COMMIT"] == 1 and seen["BEGIN"] == 1  # three writes, one transaction
    assert _keys(tmp_path / "g.db") == {"a", "b", "c"}
    store.close()


def test_a_failed_write_in_a_group_rolls_back_only_itself(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "g.db")
    seen = _statements(store)
    inside, errors, done = threading.Event(), [], []

    def first() -> None:
        inside.set()
        _wait_until(lambda: store._group.waiting == 2)

    def failing() -> None:
        def boom() -> None:
            raise RuntimeError("refused")
        try:
            _insert(store, "b", boom)
        except RuntimeError as exc:
            errors.append(str(exc))

    opener = threading.Thread(target=lambda: (_insert(store, "a", first), done.append("a")))
    opener.start()
    inside.wait(5)
    bad = threading.Thread(target=failing)
    bad.start()
    _wait_until(lambda: store._group.waiting == 1)
    good = threading.Thread(target=lambda: (_insert(store, "c"), done.append("c")))
    good.start()
    for t in (opener, bad, good):
        t.join(10)
    assert errors == ["refused"] and sorted(done) == ["a", "c"]
    assert seen["COMMIT"] == 1  # the failed write did not end the shared transaction
    assert _keys(tmp_path / "g.db") == {"a", "c"}
    store.close()


def test_a_write_returns_only_once_its_group_committed(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "g.db")
    _statements(store)
    inside, returned = threading.Event(), threading.Event()

    def first() -> None:
        inside.set()
        _wait_until(lambda: store._group.waiting == 1)

    opener = threading.Thread(target=lambda: (_insert(store, "a", first), returned.set()))
    opener.start()
    inside.wait(5)
    late_inside, release = threading.Event(), threading.Event()
    late = threading.Thread(target=lambda: _insert(
        store, "b", lambda: (late_inside.set(), release.wait(5))))
    late.start()
    late_inside.wait(5)  # "a" is written, its transaction open: "b", the last writer, is in it
    time.sleep(0.05)
    assert not returned.is_set() and _keys(tmp_path / "g.db") == set()
    release.set()
    for t in (opener, late):
        t.join(10)
    assert returned.is_set() and _keys(tmp_path / "g.db") == {"a", "b"}
    store.close()


def test_sixteen_concurrent_workflows_share_commits(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "g.db")
    seen = _statements(store)
    flows = Workflows(store)

    @flows.workflow("two")
    def two(ctx: Any, i: int) -> Any:
        return [ctx.step("a", lambda: i), ctx.step("b", lambda: i + 1)]

    start = threading.Barrier(16)
    results: dict[int, Any] = {}

    def run(t: int) -> None:
        start.wait(5)
        for k in range(8):
            results[t * 8 + k] = flows.run("two", t * 8 + k, id=f"r{t}-{k}")

    threads = [threading.Thread(target=run, args=(t,)) for t in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {i: [i, i + 1] for i in range(128)}
    writes = seen["BEGIN"] + seen["SAVEPOINT"]
    assert writes >= 128 * 4  # each run: created, two step boundaries, finished
    assert seen["COMMIT"] < writes / 2  # grouped, not one fsync per checkpoint
    flows.close()


class _InterruptingLock:
    """The group's lock, except that ``victim``'s first acquire is interrupted (as a
    KeyboardInterrupt can interrupt a lock wait in the main thread): at once, or
    ``after_release``, once the holder let go of the lock."""

    def __init__(self, victim: str, *, after_release: bool = False) -> None:
        self.real = threading.Lock()
        self.victim = victim
        self.after_release = after_release
        self.released = threading.Event()
        self.interrupted = False

    def acquire(self, blocking: bool = True) -> bool:
        if threading.current_thread().name == self.victim and not self.interrupted:
            self.interrupted = True
            if self.after_release:
                self.released.wait(5)
            raise KeyboardInterrupt
        return self.real.acquire(blocking)

    def release(self) -> None:
        self.real.release()
        self.released.set()


@pytest.mark.parametrize("after_release", [False, True])
def test_a_writer_interrupted_while_queued_leaves_no_batch_waiting(
    tmp_path: Path, after_release: bool
) -> None:
    store = SQLiteStore(tmp_path / "g.db")
    _statements(store)
    lock = _InterruptingLock("victim", after_release=after_release)
    store._group.lock = lock  # type: ignore[assignment]
    inside, release, interrupted = threading.Event(), threading.Event(), []

    def hold() -> None:
        inside.set()
        release.wait(5)

    opener = threading.Thread(target=_insert, args=(store, "a", hold))
    opener.start()
    inside.wait(5)

    def victim() -> None:
        try:
            _insert(store, "never")
        except KeyboardInterrupt:
            interrupted.append(True)

    queued = threading.Thread(target=victim, name="victim")
    queued.start()
    if after_release:  # "a" finishes while the victim is queued: it leaves the COMMIT to it
        _wait_until(lambda: store._group.waiting == 1)
        release.set()
        queued.join(5)  # interrupted then: it must commit "a" for it
    else:
        queued.join(5)
        release.set()  # "a" finishes with nobody queued any more: it commits its own write
    opener.join(5)
    assert interrupted == [True] and not opener.is_alive()
    assert _keys(tmp_path / "g.db") == {"a"}
    store.close()
