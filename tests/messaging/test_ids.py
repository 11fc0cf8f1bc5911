"""Message ids: unique without coordination, and increasing within a process, so that ids
sorted are publish order (Redis orders messages due at the same time by their id)."""

from __future__ import annotations

import threading

from stoic.messaging.model import new_id


def test_ids_made_in_a_tight_loop_increase_strictly() -> None:
    ids = [new_id() for _ in range(50_000)]  # many share a microsecond
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids[:10])


def test_ids_from_many_threads_are_unique_and_increase_in_each() -> None:
    made: list[list[str]] = [[] for _ in range(8)]
    start = threading.Barrier(8)

    def make(k: int) -> None:
        start.wait(5)
        made[k] = [new_id() for _ in range(5_000)]

    threads = [threading.Thread(target=make, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    every = [i for ids in made for i in ids]
    assert len(set(every)) == len(every) == 40_000
    assert all(ids == sorted(ids) for ids in made)
