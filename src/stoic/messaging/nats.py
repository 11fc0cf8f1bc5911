"""A broker on NATS JetStream (``stoic[nats]``, nats-py): ``nats://`` in ``connect``.

Layout, per topic (``<t>`` is the topic when it is letters, digits and dashes, else a hash):

- stream ``<prefix>_<t>`` on subject ``<prefix>.q.<t>``: work-queue retention (a message is
  removed when acked), file storage, and a de-duplication window: a publish carries its id
  as ``Nats-Msg-Id``, so publishing an id again within ``dedupe_window`` is a no-op on the
  server. One durable pull consumer, ``stoic``, shared by every worker.
- stream ``<prefix>_<t>_delay``: messages published with a ``delay``. JetStream (2.9) has no
  delayed delivery, so a claim moves due ones to the topic's stream (publish with the same
  ``Nats-Msg-Id``, then ack: a crash in between is absorbed by the de-duplication window)
  and gives the others back with ``nak(delay=time left)``.
- stream ``<prefix>_<t>_dead``: dead letters, with reason, error and attempts in a header.

Leases: a claimed message is an unacked delivery. The consumer's ``ack_wait`` is the lease a
*dead* process's messages wait out before JetStream redelivers them (set it to the lease
your workers use; 30 s by default). Within a living process every claim's own ``lease`` is
kept exactly: a lease longer than ``ack_wait`` is kept alive with ``in_progress``
(``extend_lease`` does the same), and a lease that runs out is given back with ``nak`` by
a housekeeping task, so a hung handler's messages reach other workers. ``nack(delay)`` is
``nak(delay)``. A message delivered more than ``max_deliver`` times without being acked or
dead-lettered (a poison message that kills its worker every time) is moved to the dead
letters by the next claim, with the reason "max deliveries" and that error.

Counts: ``stats`` reads the consumer: ``ready`` is what was never delivered, ``in_flight``
every delivered and unacked message, including retries waiting for their ``nak`` delay
(JetStream does not tell those apart); ``delayed`` is the delay stream. ``recovered``
counts the messages whose lease ran out in *this* broker object (a hung handler's messages,
given back by the housekeeping task). JetStream redelivers a dead process's messages
without telling anyone, and a redelivery after a crash looks the same as one after a nack,
so those are not counted on NATS.

The sync methods run the async ones on a private event-loop thread (``LoopThread``); the
async twins can be awaited from any event loop. Under ``stoic.deadline`` an operation is
given up (``stoic.DeadlineExceeded``, its work on the loop cancelled) when the time left runs
out, and not started once it has passed; a publish given up on may still have reached the
stream (publish it again with the same id: JetStream de-duplicates it).
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Sequence
from typing import Any

from .. import clock
from . import nats_wire as wire
from .broker import check_int, require
from .loop import LoopThread
from .loop_broker import LoopBroker
from .model import DeadLetter, Message, QueueStats
from .nats_wire import Held, Names

_WHAT = "a NatsBroker operation"

__all__ = ["NatsBroker"]

_HOUSEKEEPING = 0.05  # seconds between two passes over the held leases
_DELAY_CHECK = 0.1  # seconds between two looks at a topic's delay stream


class NatsBroker(LoopBroker):
    """At-least-once queues on NATS JetStream; see the module docstring for the layout.

    Args:
        url: the NATS server, e.g. ``nats://127.0.0.1:4222``.
        prefix: stream and subject prefix (letters, digits, dashes).
        ack_wait: seconds JetStream waits for an ack before redelivering a message whose
            consumer died (the lease of a dead process); living processes keep each claim's
            own lease.
        dedupe_window: seconds an id stays de-duplicated (the stream's duplicate window).
        max_deliver: deliveries after which an unacked message is dead-lettered.
        storage: ``"file"`` (survives a server restart) or ``"memory"``.
    """

    _what = _WHAT

    def __init__(
        self, url: str = "nats://127.0.0.1:4222", *, prefix: str = "stoic",
        ack_wait: float = 30.0, dedupe_window: float = 86400.0, max_deliver: int = 20,
        storage: str = "file",
    ) -> None:
        if not url.startswith(("nats://", "tls://")):
            raise ValueError(f"url must start with nats:// or tls://, got {url!r}")
        if not isinstance(prefix, str) or not wire.TOKEN.match(prefix) or len(prefix) > 32:
            raise ValueError(f"prefix must be 1-32 letters, digits or dashes, got {prefix!r}")
        if not ack_wait >= 0.1:
            raise ValueError(f"ack_wait must be >= 0.1 seconds, got {ack_wait!r}")
        if not dedupe_window > 0:
            raise ValueError(f"dedupe_window must be > 0 seconds, got {dedupe_window!r}")
        check_int("max_deliver", max_deliver)
        if storage not in ("file", "memory"):
            raise ValueError(f"storage must be 'file' or 'memory', got {storage!r}")
        require("nats", "NatsBroker", "nats")
        self.url, self.prefix = url, prefix
        self.ack_wait = float(ack_wait)
        self.dedupe_window = float(dedupe_window)
        self.max_deliver = max_deliver
        self.storage = storage
        self._token = uuid.uuid4().hex[:12]
        self._names: dict[str, Names] = {}
        self._ready: set[str] = set()  # topics whose streams and consumers exist
        self._held: dict[str, Held] = {}
        self._held_lock = threading.Lock()  # taken by callers' threads and the loop's
        self._sending: set[asyncio.Future[None]] = set()
        self._recovered: dict[str, int] = {}
        self._next_delay_check: dict[str, float] = {}
        self._inboxes: dict[str, Any] = {}  # stream -> the subscription its pulls answer on
        self._closed = False
        self._loop = LoopThread("stoic-nats")
        try:
            self._loop.call(_WHAT, self._connect())
        except BaseException:
            self._loop.cancel_pending()  # what a connect given up on left running
            self._loop.stop()
            raise

    def __repr__(self) -> str:
        return f"NatsBroker({self.url!r}, prefix={self.prefix!r})"

    # --- plumbing ------------------------------------------------------------------------

    async def _connect(self) -> None:
        import nats

        self._nc = await nats.connect(self.url, name=f"stoic-{self._token}",
                                      max_reconnect_attempts=-1)
        self._js = self._nc.jetstream()
        self._housekeeping = asyncio.ensure_future(self._keep_leases())

    def names(self, topic: str) -> Names:
        """Stream and subject names of ``topic``."""
        names = self._names.get(topic)
        if names is None:
            names = self._names[topic] = Names.of(self.prefix, topic)
        return names

    async def _ensure(self, topic: str) -> Names:
        names = self.names(topic)
        if topic in self._ready:
            return names
        from nats.js import api

        work = api.RetentionPolicy.WORK_QUEUE
        storage = api.StorageType.FILE if self.storage == "file" else api.StorageType.MEMORY
        for stream, subject, retention in (
            (names.stream, names.subject, work), (names.delay_stream, names.delay_subject, work),
            (names.dead_stream, names.dead_subject, api.RetentionPolicy.LIMITS),
        ):
            await wire.ensure_stream(self._js, api.StreamConfig(
                name=stream, subjects=[subject], retention=retention, storage=storage,
                duplicate_window=self.dedupe_window,
            ))
        for stream, ack_wait in ((names.stream, self.ack_wait), (names.delay_stream, 30.0)):
            await wire.ensure_consumer(self._js, stream, api.ConsumerConfig(
                durable_name=wire.DURABLE, ack_policy=api.AckPolicy.EXPLICIT, ack_wait=ack_wait,
                max_deliver=-1, max_ack_pending=100_000, deliver_policy=api.DeliverPolicy.ALL,
            ))
        self._ready.add(topic)
        return names

    # --- publishing ----------------------------------------------------------------------

    async def _publish(
        self, topic: str, msg_ids: list[str], bodies: list[str], head: dict[str, str],
        delay: float,
    ) -> list[str]:
        names = await self._ensure(topic)
        now = clock.wall()
        common = {wire.CREATED: repr(now)}
        if head:
            common[wire.HEADERS] = json.dumps(head, separators=(",", ":"))
        subject = names.subject
        if delay > 0:
            subject = names.delay_subject
            common[wire.AT] = repr(now + delay)
        sends = [
            self._js.publish(subject, wire.to_bytes(body), headers={**common, wire.ID: msg_id})
            for msg_id, body in zip(msg_ids, bodies, strict=True)
        ]
        if len(sends) == 1:  # awaited as it is: no task of its own to schedule
            await sends[0]
        else:
            await asyncio.gather(*sends)  # pipelined; each waits for the stream's ack
        return msg_ids

    # --- consuming -----------------------------------------------------------------------

    async def _claim(self, topic: str, n: int, lease: float) -> list[Message]:
        names = await self._ensure(topic)
        now = clock.wall()
        await self._expire(now)
        if now >= self._next_delay_check.get(topic, 0.0):
            self._next_delay_check[topic] = now + _DELAY_CHECK
            await self._move_due(names, now)
        out: list[Message] = []
        for msg in await self._pull(names.stream, n):
            meta = msg.metadata
            receipt = f"{meta.sequence.stream}:{meta.num_delivered}:{self._token}"
            message = wire.to_message(topic, msg, receipt, now + lease)
            if meta.num_delivered > self.max_deliver:
                await self._dead(names, message, msg, "max deliveries", (
                    f"delivered {meta.num_delivered} times without an ack (its consumer "
                    "died or hung each time)"))
                await msg.term()
                continue
            with self._held_lock:
                self._held[receipt] = Held(msg, topic, now + lease, now)
            out.append(message)
        return out

    async def _pull(self, stream: str, n: int) -> list[Any]:
        """Up to ``n`` messages that are ready now: one no-wait pull request, answered on a
        subscription kept per stream (a message that arrives after a pull gave up waiting
        is taken by the next pull, not lost until its ack wait)."""
        sub = self._inboxes.get(stream)
        if sub is None:
            sub = self._inboxes[stream] = await self._nc.subscribe(self._nc.new_inbox())
        return await wire.pull(self._nc, sub, stream, n)

    async def _move_due(self, names: Names, now: float) -> None:
        """Delayed messages whose time has come go to the topic's stream; others wait."""
        for msg in await self._pull(names.delay_stream, 100):
            headers = msg.headers or {}
            left = wire.as_float(headers.get(wire.AT)) - now
            if left > 0:
                await msg.nak(delay=left)
                continue
            kept = {k: v for k, v in headers.items() if k != wire.AT}
            await self._js.publish(names.subject, msg.data, headers=kept)
            await msg.ack()

    async def _expire(self, now: float) -> None:
        expired: list[Held] = []
        progress: list[Held] = []
        with self._held_lock:
            for receipt, held in list(self._held.items()):
                if held.until <= now:
                    del self._held[receipt]
                    expired.append(held)
                elif now - held.progressed >= self.ack_wait / 3:
                    held.progressed = now
                    progress.append(held)
        for held in expired:
            self._recovered[held.topic] = self._recovered.get(held.topic, 0) + 1
            await self._give_back(held, 0.0)
        for held in progress:
            await held.msg.in_progress()

    async def _keep_leases(self) -> None:
        while True:
            await asyncio.sleep(_HOUSEKEEPING)
            try:
                await self._expire(clock.wall())
            except Exception:  # the connection reconnects; leases are kept on the next pass
                continue

    async def _give_back(self, held: Held, delay: float) -> None:
        await held.msg.nak(delay=delay or None)

    def _take(self, message: Message) -> Held | None:
        with self._held_lock:
            held = self._held.pop(message.receipt, None)
            if held is not None and held.until <= clock.wall():
                self._held[message.receipt] = held  # expired: housekeeping gives it back
                return None
        return held

    def ack_many(self, messages: Sequence[Message]) -> int:
        # No wait for the loop thread: the held deliveries are taken here, and their acks
        # sent by the loop right after (an ack lost with a dying process is a redelivery).
        taken = [h for h in (self._take(m) for m in messages) if h is not None]
        if taken:
            self._loop.loop.call_soon_threadsafe(self._send_acks, taken)
        return len(taken)

    def _send_acks(self, taken: list[Held]) -> None:
        task = asyncio.ensure_future(self._acks(taken))
        self._sending.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._sending.discard)

    async def _acks(self, taken: list[Held]) -> None:
        for held in taken:
            await held.msg.ack()

    async def _ack_many(self, messages: list[Message]) -> int:
        done = 0
        for message in messages:
            held = self._take(message)
            if held is not None:
                await held.msg.ack()  # sent by the client's flusher right away; an ack
                done += 1  # lost with a dying process only means a redelivery
        return done

    async def _nack(self, message: Message, delay: float) -> bool:
        held = self._take(message)
        if held is None:
            return False
        await self._give_back(held, delay)
        await self._nc.flush()
        return True

    async def _extend(self, message: Message, lease: float) -> bool:
        held = self._take(message)
        if held is None:
            return False
        now = clock.wall()
        held.until, held.progressed = now + lease, now
        with self._held_lock:
            self._held[message.receipt] = held
        await held.msg.in_progress()
        return True

    async def _dead_letter(self, message: Message, reason: str, error: str | None) -> None:
        held = self._take(message)
        if held is None:
            return
        await self._dead(self.names(message.topic), message, held.msg, reason, error)
        await held.msg.term()
        await self._nc.flush()

    async def _dead(
        self, names: Names, message: Message, msg: Any, reason: str, error: str | None,
    ) -> None:
        """Write the dead letter (before the original is terminated: never neither)."""
        record = {"id": message.id, "reason": reason, "error": error,
                  "attempts": message.attempts, "created_at": message.created_at,
                  "dead_at": clock.wall(), "headers": dict(message.headers)}
        await self._js.publish(names.dead_subject, msg.data, headers={
            wire.DEAD: json.dumps(record, separators=(",", ":"))})

    # --- inspection and the DLQ ----------------------------------------------------------

    async def _stats(self, topic: str) -> QueueStats:
        names = await self._ensure(topic)
        info = await self._js.consumer_info(names.stream, wire.DURABLE)
        delayed = (await self._js.stream_info(names.delay_stream)).state.messages
        dead = (await self._js.stream_info(names.dead_stream)).state.messages
        return QueueStats(topic, int(info.num_pending or 0), int(delayed),
                          int(info.num_ack_pending or 0), int(dead),
                          recovered=self._recovered.get(topic, 0))

    async def _peek(self, topic: str, limit: int) -> list[Message]:
        names = await self._ensure(topic)
        return [wire.to_message(topic, raw, "", 0.0)
                for raw in await wire.browse(self._js, names.stream, names.subject, limit)]

    async def _dead_letters(self, topic: str, limit: int) -> list[DeadLetter]:
        names = await self._ensure(topic)
        return [wire.to_dead_letter(topic, raw)
                for raw in await wire.browse(self._js, names.dead_stream, names.dead_subject, limit)]

    async def _requeue(self, topic: str, ids: set[str] | None) -> int:
        names = await self._ensure(topic)
        count = 0
        for raw in await wire.browse(self._js, names.dead_stream, names.dead_subject, 1_000_000):
            dead = wire.to_dead_letter(topic, raw)
            if ids is not None and dead.message.id not in ids:
                continue
            headers = {wire.ID: f"{dead.message.id}:requeued:{uuid.uuid4().hex}",
                       wire.STOIC_ID: dead.message.id, wire.CREATED: repr(dead.message.created_at)}
            if dead.message.headers:
                headers[wire.HEADERS] = json.dumps(dict(dead.message.headers),
                                               separators=(",", ":"))
            await self._js.publish(names.subject, raw.data or b"", headers=headers)
            await self._js.delete_msg(names.dead_stream, int(raw.seq))
            count += 1
        return count

    async def _purge(self, topic: str) -> int:
        names = await self._ensure(topic)
        count = (await self._js.stream_info(names.dead_stream)).state.messages
        await self._js.purge_stream(names.dead_stream)
        return int(count)

    async def _delete(self, topic: str) -> None:
        from nats.js.errors import NotFoundError

        names = self.names(topic)
        for stream in (names.stream, names.delay_stream, names.dead_stream):
            try:
                await self._js.delete_stream(stream)
            except NotFoundError:
                pass
        self._ready.discard(topic)
        for stream in (names.stream, names.delay_stream):
            sub = self._inboxes.pop(stream, None)
            if sub is not None:
                await sub.unsubscribe()
        with self._held_lock:
            for receipt in [r for r, h in self._held.items() if h.topic == topic]:
                del self._held[receipt]

    async def _close(self) -> None:
        self._housekeeping.cancel()
        with self._held_lock:
            self._held.clear()  # unacked deliveries come back after ack_wait
        await self._nc.drain()


