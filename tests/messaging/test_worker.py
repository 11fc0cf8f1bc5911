"""Worker: ack after success, retry with backoff, dead-letter with the error, dedupe, versions."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import stoic
from stoic import backoff
from stoic.events import Event
from stoic.messaging import (
    Message,
    MessageDeadLettered,
    MessageHandled,
    MessageRetried,
    SQLiteBroker,
    Worker,
)

FAST = stoic.Retry(attempts=3, backoff=backoff.constant(0.01, jitter=None))


def collect() -> list[Event]:
    seen: list[Event] = []
    stoic.events.subscribe(seen.append)
    return seen


def test_handler_success_acks_and_nothing_is_left(local_broker: Any, topic: str) -> None:
    local_broker.publish_many(topic, [1, 2, 3])
    got: list[int] = []
    counts = Worker(local_broker, topic, lambda m: got.append(m.payload), retry=FAST).run(
        stop_when_empty=True
    )
    assert sorted(got) == [1, 2, 3]
    assert counts.handled == 3
    s = local_broker.stats(topic)
    assert (s.ready, s.delayed, s.in_flight, s.dead) == (0, 0, 0, 0)


def test_value_error_goes_to_the_dlq_after_one_attempt_with_its_error(
    broker: Any, topic: str
) -> None:
    local_broker = broker
    events = collect()
    calls: list[int] = []

    def handler(m: Message) -> None:
        calls.append(m.attempts)
        raise ValueError("order 7 has no items")

    local_broker.publish(topic, {"order": 7}, id="m1")
    Worker(local_broker, topic, handler, retry=FAST).run(stop_when_empty=True)
    assert calls == [1]
    [dead] = local_broker.dead_letters(topic)
    assert dead.reason == "permanent failure"
    assert dead.error == "ValueError: order 7 has no items"
    assert dead.message.attempts == 1
    [ev] = [e for e in events if isinstance(e, MessageDeadLettered)]
    assert (ev.message_id, ev.attempts, ev.error_type) == ("m1", 1, "ValueError")


def test_connection_error_is_retried_with_backoff_then_dead_lettered_then_requeued(
    broker: Any, topic: str
) -> None:
    local_broker = broker
    events = collect()
    calls: list[int] = []
    healthy = False

    def handler(m: Message) -> None:
        calls.append(m.attempts)
        if not healthy:
            raise ConnectionError("payments down")

    local_broker.publish(topic, "pay", id="p1")
    retry = stoic.Retry(attempts=10, backoff=backoff.exponential(0.05, 2.0, 1.0, jitter=None))
    Worker(local_broker, topic, handler, retry=retry, max_attempts=3, poll_interval=0.01).run(
        stop_when_empty=True
    )
    assert calls == [1, 2, 3]
    delays = [e.delay for e in events if isinstance(e, MessageRetried)]
    assert delays == [0.05, 0.1]  # the retry policy's backoff, growing
    [dead] = local_broker.dead_letters(topic)
    assert dead.reason.startswith("attempts exhausted")
    assert dead.error == "ConnectionError: payments down"
    assert dead.message.attempts == 3

    healthy = True
    assert local_broker.requeue(topic) == 1
    counts = Worker(local_broker, topic, handler, retry=retry, max_attempts=3).run(
        stop_when_empty=True
    )
    assert counts.handled == 1
    assert calls[-1] == 1  # a requeued message starts counting again
    assert local_broker.dead_letters(topic) == []


def test_retry_waits_are_real_delays_on_the_broker(local_broker: Any, topic: str) -> None:
    stamps: list[float] = []

    def handler(m: Message) -> None:
        stamps.append(time.monotonic())
        if len(stamps) < 2:
            raise TimeoutError("slow")

    local_broker.publish(topic, 1)
    retry = stoic.Retry(attempts=3, backoff=backoff.constant(0.3, jitter=None))
    Worker(local_broker, topic, handler, retry=retry, poll_interval=0.01).run(
        stop_when_empty=True
    )
    assert len(stamps) == 2
    assert stamps[1] - stamps[0] >= 0.3


def test_corrupted_row_goes_to_the_dlq_and_the_worker_goes_on(tmp_path: Path, topic: str) -> None:
    broker = SQLiteBroker(tmp_path / "q.db")
    broker.publish(topic, {"ok": 1}, id="bad-json")
    broker.publish(topic, {"ok": 2}, id="bad-headers")
    broker.publish(topic, {"__stoic__": "nope", "v": 1}, id="unknown-tag")
    broker.publish(topic, {"ok": 3}, id="good")
    db = sqlite3.connect(tmp_path / "q.db")
    db.execute("UPDATE stoic_messages SET body = '{\"ok\": ' WHERE id = 'bad-json'")
    db.execute("UPDATE stoic_messages SET headers = '[1, 2' WHERE id = 'bad-headers'")
    db.commit()
    db.close()
    got: list[Any] = []
    counts = Worker(broker, topic, lambda m: got.append(m.payload)).run(stop_when_empty=True)
    assert got == [{"ok": 3}]
    dead = {d.message.id: d for d in broker.dead_letters(topic)}
    assert set(dead) == {"bad-json", "bad-headers", "unknown-tag"}
    assert {d.reason for d in dead.values()} == {"malformed"}
    assert "headers" in (dead["bad-headers"].error or "")
    assert "unknown codec tag" in (dead["unknown-tag"].error or "")
    assert counts.dead_lettered == 3
    broker.close()


def test_incompatible_version_is_dead_lettered_without_running_the_handler(
    local_broker: Any, topic: str
) -> None:
    local_broker.publish(topic, {"v": 1}, id="v1")
    local_broker.publish(topic, {"v": 2}, id="v2", headers={"schema-version": "2"})
    local_broker.publish(topic, {"v": 3}, id="v3", headers={"schema-version": "3"})
    seen: list[str] = []
    Worker(local_broker, topic, lambda m: seen.append(m.id), accept_versions={1, 2}).run(
        stop_when_empty=True
    )
    assert sorted(seen) == ["v1", "v2"]
    [dead] = local_broker.dead_letters(topic)
    assert (dead.message.id, dead.reason) == ("v3", "incompatible version")


def test_dedupe_runs_a_redelivered_message_once(local_broker: Any, topic: str) -> None:
    from stoic.idempotency import MemoryStore

    store = MemoryStore()
    local_broker.dedupe_window = 0.0  # let the broker accept the same id again
    runs: list[str] = []
    local_broker.publish(topic, 1, id="once")
    Worker(local_broker, topic, lambda m: runs.append(m.id), dedupe=store).run(
        stop_when_empty=True
    )
    local_broker.publish(topic, 1, id="once")  # a redelivery, as after a lost ack
    counts = Worker(local_broker, topic, lambda m: runs.append(m.id), dedupe=store).run(
        stop_when_empty=True
    )
    assert runs == ["once"]
    assert counts.duplicates == 1
    assert local_broker.stats(topic).ready == 0


def test_dedupe_releases_the_key_when_the_handler_fails(local_broker: Any, topic: str) -> None:
    from stoic.idempotency import MemoryStore

    store = MemoryStore()
    attempts: list[int] = []

    def handler(m: Message) -> None:
        attempts.append(m.attempts)
        if m.attempts == 1:
            raise ConnectionError("down")

    local_broker.publish(topic, 1)
    Worker(local_broker, topic, handler, dedupe=store, retry=FAST, poll_interval=0.01).run(
        stop_when_empty=True
    )
    assert attempts == [1, 2]


def test_a_slow_handler_keeps_its_message_through_lease_extension(
    broker: Any, topic: str
) -> None:
    local_broker = broker
    runs: list[str] = []

    def slow(m: Message) -> None:
        runs.append(m.id)
        time.sleep(1.0)

    local_broker.publish(topic, 1)
    w1 = Worker(local_broker, topic, slow, lease=0.3)
    w2 = Worker(local_broker, topic, slow, lease=0.3, poll_interval=0.02)
    t1 = threading.Thread(target=w1.run, kwargs={"stop_when_empty": True})
    t1.start()
    time.sleep(0.1)
    t2 = threading.Thread(target=w2.run, kwargs={"stop_when_empty": True})
    t2.start()
    t1.join(10)
    t2.join(10)
    assert len(runs) == 1  # without the heartbeat, w2 would take it after 0.3 s


def test_concurrency_handles_messages_in_parallel(local_broker: Any, topic: str) -> None:
    local_broker.publish_many(topic, list(range(8)))
    active = 0
    peak = 0
    lock = threading.Lock()

    def handler(m: Message) -> None:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.1)
        with lock:
            active -= 1

    counts = Worker(local_broker, topic, handler, concurrency=4, prefetch=1).run(
        stop_when_empty=True
    )
    assert counts.handled == 8
    assert peak >= 2


def test_handler_sees_the_publisher_s_request_id(local_broker: Any, topic: str) -> None:
    with stoic.context.bind(request_id="r-9"):
        local_broker.publish(topic, 1)
    seen: list[Any] = []
    Worker(local_broker, topic, lambda m: seen.append(stoic.context.get("request_id"))).run(
        stop_when_empty=True
    )
    assert seen == ["r-9"]


def test_handled_events_are_emitted(local_broker: Any, topic: str) -> None:
    events = collect()
    local_broker.publish(topic, 1, id="e1")
    Worker(local_broker, topic, lambda m: None).run(stop_when_empty=True)
    [ev] = [e for e in events if isinstance(e, MessageHandled)]
    assert (ev.topic, ev.message_id, ev.attempts, ev.duplicate) == (topic, "e1", 1, False)


async def test_async_handler_runs_under_arun(local_broker: Any, topic: str) -> None:
    import asyncio

    local_broker.publish_many(topic, [1, 2, 3])
    got: list[int] = []

    async def handler(m: Message) -> None:
        await asyncio.sleep(0)
        if m.payload == 2 and m.attempts == 1:
            raise ConnectionError("once")
        got.append(m.payload)

    counts = await Worker(local_broker, topic, handler, retry=FAST, poll_interval=0.01).arun(
        stop_when_empty=True
    )
    assert sorted(got) == [1, 2, 3]
    assert (counts.handled, counts.retried) == (3, 1)


async def test_sync_handler_under_arun_and_async_handler_under_run(
    local_broker: Any, topic: str
) -> None:
    import asyncio

    local_broker.publish_many(topic, [1, 2])
    got: list[int] = []
    await Worker(local_broker, topic, lambda m: got.append(m.payload)).arun(stop_when_empty=True)

    async def ahandler(m: Message) -> None:
        got.append(m.payload)

    local_broker.publish(topic, 3)
    await asyncio.to_thread(Worker(local_broker, topic, ahandler).run, stop_when_empty=True)
    assert sorted(got) == [1, 2, 3]


def test_worker_config_is_validated(local_broker: Any, topic: str) -> None:
    def h(m: Message) -> None: ...

    cases: list[tuple[dict[str, Any], str]] = [
        ({"concurrency": 0}, "concurrency"),
        ({"lease": 0}, "lease"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"prefetch": 0}, "prefetch"),
        ({"accept_versions": []}, "accept_versions"),
        ({"dedupe": object()}, "dedupe"),
    ]
    for kwargs, name in cases:
        with pytest.raises(ValueError, match=name):
            Worker(local_broker, topic, h, **kwargs)


def test_sigterm_stops_claiming_finishes_the_held_message_and_exits(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    marks = tmp_path / "marks"
    script = tmp_path / "w.py"
    script.write_text(textwrap.dedent(f"""
        import time
        from stoic.messaging import SQLiteBroker, Worker
        broker = SQLiteBroker({str(db)!r})
        def handler(m):
            open({str(marks)!r}, "a").write("start %s\\n" % m.payload)
            time.sleep(0.8)
            open({str(marks)!r}, "a").write("end %s\\n" % m.payload)
        Worker(broker, "jobs", handler, prefetch=1).run()
        open({str(marks)!r}, "a").write("exited\\n")
    """))
    broker = SQLiteBroker(db)
    broker.publish_many("jobs", [1, 2, 3])
    env = {**os.environ, "PYTHONPATH": str(Path(stoic.__file__).parent.parent)}
    proc = subprocess.Popen([sys.executable, str(script)], env=env)
    try:
        end = time.monotonic() + 20
        while not (marks.exists() and "start 1" in marks.read_text()):
            assert time.monotonic() < end, "worker never started"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        proc.kill()
    assert marks.read_text().splitlines() == ["start 1", "end 1", "exited"]
    s = broker.stats("jobs")
    assert (s.ready, s.in_flight) == (2, 0)  # message 1 acked, 2 and 3 never claimed


def test_corrupted_redis_stream_entry_goes_to_the_dlq(redis_url: str, topic: str) -> None:
    from stoic.messaging.redis import RedisBroker

    broker = RedisBroker(redis_url)
    try:
        broker.publish(topic, {"ok": 1}, id="good")
        stream = broker._stream(topic)
        broker._r.xadd(stream, {"garbage": "no id, no body"})
        broker._r.xadd(stream, {"m": "bad-json\x1f0\x1f0\x1f", "b": "{not json"})
        got: list[Any] = []
        counts = Worker(broker, topic, lambda m: got.append(m.payload)).run(stop_when_empty=True)
        assert got == [{"ok": 1}]
        assert counts.dead_lettered == 2
        assert {d.reason for d in broker.dead_letters(topic)} == {"malformed"}
    finally:
        broker.delete_topic(topic)
        broker.close()


def test_corrupted_rabbitmq_message_goes_to_the_dlq(amqp_url: str, topic: str) -> None:
    import asyncio

    import aio_pika

    from stoic.messaging.rabbitmq import RabbitBroker

    broker = RabbitBroker(amqp_url)
    try:
        broker.publish(topic, {"ok": 1}, id="good")

        async def raw() -> None:
            conn = await aio_pika.connect(amqp_url)
            ch = await conn.channel()
            await ch.default_exchange.publish(
                aio_pika.Message(b"\xff\xfe not utf-8", message_id="bin"),
                routing_key=f"stoic.{topic}",
            )
            await ch.default_exchange.publish(
                aio_pika.Message(b"{not json", message_id="bad-json"),
                routing_key=f"stoic.{topic}",
            )
            await conn.close()

        asyncio.run(raw())
        got: list[Any] = []
        counts = Worker(broker, topic, lambda m: got.append(m.payload)).run(stop_when_empty=True)
        assert got == [{"ok": 1}]
        assert counts.dead_lettered == 2
        assert {d.message.id for d in broker.dead_letters(topic)} == {"bin", "bad-json"}
    finally:
        broker.delete_topic(topic)
        broker.close()


async def test_arun_with_dedupe_runs_a_redelivered_message_once(
    local_broker: Any, topic: str
) -> None:
    from stoic.idempotency import MemoryStore

    store = MemoryStore()
    local_broker.dedupe_window = 0.0
    runs: list[str] = []

    async def handler(m: Message) -> None:
        runs.append(m.id)

    for _ in range(2):
        local_broker.publish(topic, 1, id="once")
        await Worker(local_broker, topic, handler, dedupe=store).arun(stop_when_empty=True)
    assert runs == ["once"]


def test_a_failing_dedupe_store_puts_the_message_back_and_the_worker_goes_on(
    local_broker: Any, topic: str
) -> None:
    from stoic.idempotency import MemoryStore

    class Flaky(MemoryStore):
        fails = 1

        def claim(self, *args: Any, **kwargs: Any) -> Any:
            if self.fails:
                self.fails -= 1
                raise ConnectionError("store down")
            return super().claim(*args, **kwargs)

    local_broker.publish(topic, 1)
    runs: list[int] = []
    counts = Worker(local_broker, topic, lambda m: runs.append(m.attempts), dedupe=Flaky(),
                    poll_interval=0.01).run(stop_when_empty=True)
    assert runs == [2]
    assert counts.handled == 1
