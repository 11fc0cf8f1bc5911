"""Bulkhead: a cap on concurrent calls, a bounded waiting room, sync and async."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import stoic
from stoic.events import CallRejected, Event
from stoic.testing import virtual_time


class TestSync:
    def test_rejects_at_once_beyond_max_concurrent_without_waiting_room(self) -> None:
        bulkhead = stoic.Bulkhead(2)
        inside = threading.Barrier(3, timeout=10)
        release = threading.Event()
        errors: list[BaseException] = []

        def hold() -> None:
            inside.wait()
            release.wait(10)

        def run() -> None:
            try:
                bulkhead.call(hold)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(2)]
        for thread in threads:
            thread.start()
        inside.wait()  # both slots are taken now
        with pytest.raises(stoic.BulkheadFullError) as info:
            bulkhead.call(lambda: None)
        assert isinstance(info.value, stoic.Rejected)
        release.set()
        for thread in threads:
            thread.join(10)
        assert errors == []
        assert bulkhead.active == 0
        assert bulkhead.call(lambda: "free again") == "free again"

    def test_never_runs_more_than_max_concurrent_threads_at_once(self) -> None:
        bulkhead = stoic.Bulkhead(3, max_waiting=100)
        lock = threading.Lock()
        inside = peak = 0

        def work() -> None:
            nonlocal inside, peak
            with lock:
                inside += 1
                peak = max(peak, inside)
            threading.Event().wait(0.002)
            with lock:
                inside -= 1

        threads = [threading.Thread(target=bulkhead.call, args=(work,)) for _ in range(24)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        assert peak == 3
        assert (bulkhead.active, bulkhead.waiting) == (0, 0)

    def test_waiter_times_out_with_bulkhead_full(self) -> None:
        bulkhead = stoic.Bulkhead(1, max_waiting=1, wait_timeout=0.05)
        entered, release = threading.Event(), threading.Event()

        def hold() -> None:
            entered.set()
            release.wait(10)

        holder = threading.Thread(target=bulkhead.call, args=(hold,))
        holder.start()
        entered.wait(10)
        with pytest.raises(stoic.BulkheadFullError):
            bulkhead.call(lambda: None)
        assert bulkhead.waiting == 0
        release.set()
        holder.join(10)

    def test_slot_is_freed_when_the_call_raises(self) -> None:
        bulkhead = stoic.Bulkhead(1)
        with pytest.raises(ZeroDivisionError):
            bulkhead.call(lambda: 1 / 0)
        assert bulkhead.active == 0


class TestAsync:
    async def test_waiting_room_serves_waiters_in_order_then_rejects(self) -> None:
        bulkhead = stoic.Bulkhead(1, max_waiting=2)
        gate = asyncio.Event()
        order: list[int] = []

        async def work(i: int) -> int:
            order.append(i)
            await gate.wait()
            return i

        tasks = [asyncio.create_task(bulkhead.acall(work, i)) for i in range(3)]
        await asyncio.sleep(0)
        assert (bulkhead.active, bulkhead.waiting) == (1, 2)
        with pytest.raises(stoic.BulkheadFullError):
            await bulkhead.acall(work, 99)
        gate.set()
        assert await asyncio.gather(*tasks) == [0, 1, 2]
        assert order == [0, 1, 2]
        assert (bulkhead.active, bulkhead.waiting) == (0, 0)

    async def test_wait_timeout_runs_on_virtual_time(self) -> None:
        async with virtual_time() as clock:
            bulkhead = stoic.Bulkhead(1, max_waiting=1, wait_timeout=30.0)
            holder = asyncio.create_task(bulkhead.acall(asyncio.sleep, 3600))
            await asyncio.sleep(0)
            with pytest.raises(stoic.BulkheadFullError):
                await bulkhead.acall(asyncio.sleep, 0)
            assert clock.elapsed == pytest.approx(30.0)
            assert bulkhead.waiting == 0
            holder.cancel()
            with pytest.raises(asyncio.CancelledError):
                await holder
            assert bulkhead.active == 0

    async def test_deadline_bounds_the_wait(self) -> None:
        async with virtual_time():
            bulkhead = stoic.Bulkhead(1, max_waiting=1)
            holder = asyncio.create_task(bulkhead.acall(asyncio.sleep, 3600))
            await asyncio.sleep(0)
            with stoic.deadline(2.0), pytest.raises(stoic.DeadlineExceeded):
                await bulkhead.acall(asyncio.sleep, 0)
            holder.cancel()
            await asyncio.gather(holder, return_exceptions=True)

    async def test_cancelled_waiter_leaves_the_room_and_loses_no_slot(self) -> None:
        bulkhead = stoic.Bulkhead(1, max_waiting=5)
        gate = asyncio.Event()
        holder = asyncio.create_task(bulkhead.acall(gate.wait))
        waiter = asyncio.create_task(bulkhead.acall(asyncio.sleep, 0))
        await asyncio.sleep(0)
        assert bulkhead.waiting == 1
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert bulkhead.waiting == 0
        gate.set()
        await holder
        assert bulkhead.active == 0
        assert await bulkhead.acall(asyncio.sleep, 0, "ok") == "ok"

    async def test_threads_and_tasks_share_one_limit(self) -> None:
        bulkhead = stoic.Bulkhead(1, max_waiting=1)
        entered, release = threading.Event(), threading.Event()

        def hold() -> None:
            entered.set()
            release.wait(10)

        thread = threading.Thread(target=bulkhead.call, args=(hold,))
        thread.start()
        await asyncio.get_running_loop().run_in_executor(None, entered.wait, 10)
        task = asyncio.create_task(bulkhead.acall(asyncio.sleep, 0, "after the thread"))
        await asyncio.sleep(0.01)
        assert not task.done()  # waiting for the thread's slot
        release.set()
        assert await asyncio.wait_for(task, 10) == "after the thread"
        thread.join(10)


def test_rejection_emits_call_rejected() -> None:
    seen: list[Event] = []
    stoic.events.subscribe(seen.append)
    bulkhead = stoic.Bulkhead(1, name="pdf")

    def nested() -> Any:
        return bulkhead.call(lambda: None)

    with pytest.raises(stoic.BulkheadFullError):
        bulkhead.call(nested)
    assert [(e.name, e.policy, e.reason) for e in seen if isinstance(e, CallRejected)] == [
        ("pdf", "bulkhead", "bulkhead_full")
    ]


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"max_concurrent": 0}, "max_concurrent"),
        ({"max_concurrent": 1, "max_waiting": -1}, "max_waiting"),
        ({"max_concurrent": 1, "wait_timeout": 0}, "wait_timeout"),
    ],
)
def test_bad_configuration_names_the_parameter(kwargs: dict[str, Any], parameter: str) -> None:
    with pytest.raises(ValueError, match=parameter):
        stoic.Bulkhead(**kwargs)
