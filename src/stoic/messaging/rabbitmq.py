"""A broker on RabbitMQ (``stoic[rabbitmq]``, aio-pika), for existing RabbitMQ estates.

Layout, per topic:

- ``stoic.<topic>``: a durable *quorum* queue (replicated, and it counts redeliveries in the
  ``x-delivery-count`` header). Messages are persistent and every publish waits for the
  publisher confirm, so ``publish`` returning means the broker has the message.
- ``stoic.<topic>.delay.<ms>``: quorum queues with a fixed message TTL that dead-letter (at
  least once) back into the main queue: delayed publishes and retry backoff. A delay is
  rounded *up* to the next bucket (100 ms ... 1 h, then whole hours), because a queue only
  expires messages at its head: one TTL per queue keeps a long delay from holding back a
  short one.
- ``stoic.<topic>.dead``: the dead-letter queue; dead letters carry ``x-stoic-reason``,
  ``x-stoic-error`` and the attempt count in headers.

Leases: a claimed message is an unacked delivery on this broker's connection. Deliveries
are pushed ahead by a consumer (``prefetch`` per topic), so a claim needs no round trip. If
the process dies or loses its connection, RabbitMQ redelivers it at once. Within a living
process, a lease that runs out without an ack or an extension is given back (``nack`` with
requeue) by a housekeeping task, so a hung handler's messages reach other workers, as on
the other brokers. ``stats().recovered`` counts those: leases that ran out in *this* broker
object. A dead process's deliveries come back marked ``redelivered``, as do deliveries
merely read by ``peek`` or given back unclaimed: RabbitMQ does not tell them apart, so
they are not counted.

De-duplication: RabbitMQ has no publish-side de-duplication. Pass ``dedupe=<idempotency
store>`` to make publishing an id already published within ``dedupe_window`` a no-op (the
store is shared by every publisher); without it, republished ids are delivered again and a
de-duplicating consumer (``Worker(dedupe=...)`` or ``Inbox``) absorbs them.

The sync methods run the async ones on a private event-loop thread (``LoopThread``); the
async twins can be awaited from any event loop. Under ``stoic.deadline`` an operation is
given up (``stoic.DeadlineExceeded``) when the time left runs out, and not started once it
has passed: a publish given up on may still reach the queue (publish it again with the
same id and a ``dedupe`` store); a cancelled ack leaves the message to its lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import Any

from .. import clock
from .broker import check_int, check_topic, prepare, require
from .loop import LoopThread
from .loop_broker import LoopBroker
from .model import DeadLetter, Message, QueueStats
from .rabbitmq_wire import (
    IDLE,
    STOIC_HEADERS,
    Consumer,
    Held,
    browse,
    bucket,
    carry,
    count,
    from_server,
    to_message,
)

_WHAT = "a RabbitBroker operation"

__all__ = ["RabbitBroker"]

class RabbitBroker(LoopBroker):
    """At-least-once queues on RabbitMQ quorum queues; ``amqp://...`` in ``connect``.

    Args:
        url: the AMQP URL, e.g. ``amqp://guest:guest@127.0.0.1:5672/``.
        dedupe: an idempotency store for publish-side de-duplication (see module docs).
        dedupe_window: seconds an id stays de-duplicated when ``dedupe`` is given.
        prefix: queue name prefix (default ``"stoic"``).
        prefetch: deliveries RabbitMQ pushes ahead to this broker per topic; ``claim`` takes
            from them without a round trip.
    """

    #: Seconds a message can be counted in no queue while RabbitMQ moves it (a delayed retry
    #: dead-lettered from its delay queue back to its queue); ``Worker(stop_when_empty=True)``
    #: waits this long and looks again before it calls a topic empty.
    stats_settle: float = 0.25
    _what = _WHAT

    def __init__(
        self, url: str = "amqp://guest:guest@127.0.0.1:5672/", *, dedupe: Any = None,
        dedupe_window: float = 86400.0, prefix: str = "stoic", prefetch: int = 100,
    ) -> None:
        if not url.startswith(("amqp://", "amqps://")):
            raise ValueError(f"url must start with amqp:// or amqps://, got {url!r}")
        if not dedupe_window > 0:
            raise ValueError(f"dedupe_window must be > 0 seconds, got {dedupe_window!r}")
        if not prefix or any(c.isspace() for c in prefix):
            raise ValueError(f"prefix must be non-empty without spaces, got {prefix!r}")
        check_int("prefetch", prefetch)
        if dedupe is not None and not callable(getattr(dedupe, "claim", None)):
            raise ValueError(f"dedupe must be an idempotency store, got {dedupe!r}")
        require("aio_pika", "RabbitBroker", "rabbitmq")
        self.url = url
        self.dedupe = dedupe
        self.dedupe_window = float(dedupe_window)
        self.prefix = prefix
        self.prefetch = prefetch
        self._consumers: dict[str, Consumer] = {}
        self._loop = LoopThread("stoic-rabbitmq")
        self._held: dict[str, Held] = {}
        self._recovered: dict[str, int] = {}  # leases that ran out here (stats().recovered)
        self._declared: set[str] = set()
        self._closed = False
        try:
            self._loop.call(_WHAT, self._connect())
        except BaseException:
            # A connect given up on (the deadline) leaves aiormq's tasks behind: end them.
            self._loop.cancel_pending()
            self._loop.stop()
            raise

    def __repr__(self) -> str:
        return f"RabbitBroker({self.url!r}, prefix={self.prefix!r})"

    # --- plumbing ------------------------------------------------------------------------

    async def _connect(self) -> None:
        import aio_pika

        self._conn = await aio_pika.connect_robust(self.url)
        self._pub = await self._conn.channel(publisher_confirms=True)
        self._housekeeping = asyncio.ensure_future(self._expire_leases())

    def _q(self, topic: str, suffix: str = "") -> str:
        return f"{self.prefix}.{topic}{suffix}"

    async def _declare(self, topic: str) -> None:
        if topic in self._declared:
            return
        check_topic(topic)
        args = {"x-queue-type": "quorum"}
        await self._pub.declare_queue(self._q(topic), durable=True, arguments=args)
        await self._pub.declare_queue(self._q(topic, ".dead"), durable=True, arguments=args)
        self._declared.add(topic)

    async def _delay_queue(self, topic: str, bucket: int) -> str:
        name = self._q(topic, f".delay.{bucket}")
        if name not in self._declared:
            await self._pub.declare_queue(name, durable=True, arguments={
                "x-queue-type": "quorum", "x-message-ttl": bucket,
                "x-dead-letter-exchange": "", "x-dead-letter-routing-key": self._q(topic),
                "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish",
            })
            self._declared.add(name)
        return name

    async def _send(
        self, routing_key: str, msg_id: str, body: str, headers: Mapping[str, Any]
    ) -> None:
        import aio_pika

        message = aio_pika.Message(
            body.encode(), message_id=msg_id, headers=dict(headers),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT, content_type="application/json",
        )
        await self._pub.default_exchange.publish(message, routing_key=routing_key)

    async def _route(self, topic: str, delay: float) -> str:
        await self._declare(topic)
        if delay <= 0:
            return self._q(topic)
        return await self._delay_queue(topic, bucket(delay))

    # --- publishing ----------------------------------------------------------------------

    def publish_many(
        self, topic: str, payloads: Iterable[Any], *, ids: Sequence[str] | None = None,
        headers: Mapping[str, str] | None = None, delay: float = 0.0,
    ) -> list[str]:
        msg_ids, bodies, head, delay = prepare(topic, payloads, ids, headers, delay)
        fresh = self._fresh(topic, msg_ids)
        self._loop.call(_WHAT, self._publish_all(topic, msg_ids, bodies, head, delay, fresh))
        return msg_ids

    async def apublish_many(
        self, topic: str, payloads: Iterable[Any], *, ids: Sequence[str] | None = None,
        headers: Mapping[str, str] | None = None, delay: float = 0.0,
    ) -> list[str]:
        msg_ids, bodies, head, delay = prepare(topic, payloads, ids, headers, delay)
        fresh = await asyncio.to_thread(self._fresh, topic, msg_ids)
        await self._loop.acall(_WHAT, self._publish_all(topic, msg_ids, bodies, head, delay, fresh))
        return msg_ids

    def _fresh(self, topic: str, msg_ids: list[str]) -> list[bool]:
        """Which ids are new (publish-side de-duplication through the store, if any)."""
        store = self.dedupe
        if store is None:
            return [True] * len(msg_ids)
        out = []
        for msg_id in msg_ids:
            key = f"stoic-publish:{topic}:{msg_id}"
            claim = store.claim(key, topic, lease=30.0, ttl=self.dedupe_window)
            if getattr(claim.status, "value", claim.status) == "claimed":
                store.complete(key, claim.token, None, ttl=self.dedupe_window)
                out.append(True)
            else:
                out.append(False)
        return out

    async def _publish_all(
        self, topic: str, msg_ids: list[str], bodies: list[str], head: dict[str, str],
        delay: float, fresh: list[bool],
    ) -> None:
        route = await self._route(topic, delay)
        created = repr(clock.wall())
        sends: list[Awaitable[None]] = [
            self._send(route, msg_id, body, {**head, "x-stoic-created": created})
            for msg_id, body, new in zip(msg_ids, bodies, fresh, strict=True) if new
        ]
        await asyncio.gather(*sends)  # confirms are awaited concurrently, in publish order

    # --- consuming -----------------------------------------------------------------------

    async def _consumer(self, topic: str) -> Consumer:
        consumer = self._consumers.get(topic)
        if consumer is None or consumer.channel.is_closed:
            await self._declare(topic)
            channel = await self._conn.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=self.prefetch)
            queue = await channel.get_queue(self._q(topic), ensure=False)
            buffer: deque[Any] = deque()

            async def deliver(incoming: Any) -> None:
                buffer.append(incoming)

            tag = await queue.consume(deliver, no_ack=False)
            consumer = self._consumers[topic] = Consumer(channel, queue, tag, buffer)
            await asyncio.sleep(0.02)  # let the first deliveries arrive
        consumer.last_claim = clock.now()
        return consumer

    async def _claim(self, topic: str, n: int, lease: float) -> list[Message]:
        await self._expire(clock.now())
        buffer = (await self._consumer(topic)).buffer
        out: list[Message] = []
        until = clock.now() + lease
        while buffer and len(out) < n:
            incoming = buffer.popleft()
            receipt = uuid.uuid4().hex
            self._held[receipt] = Held(incoming, topic, until)
            out.append(to_message(topic, incoming, receipt, clock.wall() + lease))
        return out

    async def _release(self, topic: str) -> None:
        """Cancel the topic's consumer; its unclaimed deliveries go back to the queue."""
        consumer = self._consumers.pop(topic, None)
        if consumer is None:
            return
        with contextlib.suppress(Exception):
            await consumer.queue.cancel(consumer.tag)
        while consumer.buffer:
            incoming = consumer.buffer.popleft()
            with contextlib.suppress(Exception):
                await incoming.nack(requeue=True)
        if not consumer.channel.is_closed:
            with contextlib.suppress(Exception):
                await consumer.channel.close()

    async def _expire_leases(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            now = clock.now()
            try:
                await self._expire(now)
                for topic, consumer in list(self._consumers.items()):
                    if now - consumer.last_claim > IDLE:
                        await self._release(topic)
            except Exception:  # the connection is being re-established
                continue

    async def _expire(self, now: float) -> None:
        expired = [r for r, h in self._held.items() if h.lease_until <= now]
        for receipt in expired:
            held = self._held.pop(receipt, None)
            if held is not None:
                self._recovered[held.topic] = self._recovered.get(held.topic, 0) + 1
                with contextlib.suppress(Exception):  # a closed channel gave it back already
                    await held.incoming.nack(requeue=True)

    def _take(self, message: Message) -> Held | None:
        held = self._held.get(message.receipt)
        if held is None or held.lease_until <= clock.now():
            return None
        return self._held.pop(message.receipt)

    async def _ack_many(self, messages: list[Message]) -> int:
        done = 0
        for m in messages:
            held = self._take(m)
            if held is not None:
                try:
                    await held.incoming.ack()
                except Exception:  # its channel closed: RabbitMQ redelivers it
                    continue
                done += 1
        return done

    async def _nack(self, message: Message, delay: float) -> bool:
        held = self._take(message)
        if held is None:
            return False
        # Republish (with the attempts so far) and ack the original: the backoff delay goes
        # through a delay queue, and the attempt count stays ours rather than the server's.
        headers = carry(held.incoming, message.attempts)
        route = await self._route(message.topic, delay)
        await self._send(route, message.id, message.body, headers)
        await held.incoming.ack()
        return True

    async def _extend(self, message: Message, lease: float) -> bool:
        held = self._held.get(message.receipt)
        now = clock.now()
        if held is None or held.lease_until <= now:
            return False
        held.lease_until = now + lease
        return True

    async def _dead_letter(self, message: Message, reason: str, error: str | None) -> None:
        held = self._take(message)
        if held is None:
            return
        await self._declare(message.topic)
        headers = carry(held.incoming, message.attempts)
        headers["x-stoic-reason"] = reason
        headers["x-stoic-dead-at"] = repr(clock.wall())
        if error is not None:
            headers["x-stoic-error"] = error
        await self._send(self._q(message.topic, ".dead"), message.id, message.body, headers)
        await held.incoming.ack()

    # --- inspection and the DLQ ----------------------------------------------------------

    async def _stats(self, topic: str) -> QueueStats:
        await self._declare(topic)
        ch = await self._conn.channel()
        try:
            ready = await count(ch, self._q(topic))
            dead = await count(ch, self._q(topic, ".dead"))
            delayed = 0
            for name in list(self._declared):
                if name.startswith(self._q(topic, ".delay.")):
                    delayed += await count(ch, name)
        finally:
            await ch.close()
        in_flight = sum(1 for h in self._held.values() if h.topic == topic)
        consumer = self._consumers.get(topic)
        if consumer is not None:
            ready += len(consumer.buffer)  # pushed to us, not yet claimed
        return QueueStats(topic, ready, delayed, in_flight, dead,
                          recovered=self._recovered.get(topic, 0))

    async def _peek(self, topic: str, limit: int) -> list[Message]:
        """Reads up to ``limit`` messages and gives them back (RabbitMQ counts that as a
        delivery in ``x-delivery-count``)."""
        return [d.message for d in await self._browse(self._q(topic), topic, limit)]

    async def _dead_letters(self, topic: str, limit: int) -> list[DeadLetter]:
        return await self._browse(self._q(topic, ".dead"), topic, limit)

    async def _browse(self, queue_name: str, topic: str, limit: int) -> list[DeadLetter]:
        await self._declare(topic)
        return await browse(self._conn, queue_name, topic, limit)

    async def _requeue(self, topic: str, ids: set[str] | None) -> int:
        await self._declare(topic)
        ch = await self._conn.channel()
        moved = 0
        try:
            queue = await ch.get_queue(self._q(topic, ".dead"), ensure=False)
            while True:
                incoming = await queue.get(no_ack=False, fail=False)
                if incoming is None:
                    break
                m = to_message(topic, incoming, "", 0.0, dead=True)
                if ids is not None and m.id not in ids:
                    continue  # left unacked: back on the dead queue when the channel closes
                headers = {k: v for k, v in (incoming.headers or {}).items()
                           if k not in STOIC_HEADERS and not from_server(k)}
                headers["x-stoic-created"] = repr(m.created_at)
                await self._send(self._q(topic), m.id, m.body, headers)
                await incoming.ack()
                moved += 1
        finally:
            await ch.close()
        return moved

    async def _purge(self, topic: str) -> int:
        await self._declare(topic)
        queue = await self._pub.get_queue(self._q(topic, ".dead"), ensure=False)
        result = await queue.purge()
        return int(getattr(result, "message_count", 0) or 0)

    async def _delete(self, topic: str) -> None:
        await self._release(topic)
        names = [n for n in self._declared if n == self._q(topic) or n.startswith(
            self._q(topic, "."))]
        names += [self._q(topic), self._q(topic, ".dead")]
        for name in set(names):
            ch = await self._conn.channel()
            try:
                await ch.queue_delete(name)
            except Exception:
                pass
            finally:
                if not ch.is_closed:
                    await ch.close()
            self._declared.discard(name)
        self._declared.discard(topic)

    async def _close(self) -> None:
        self._housekeeping.cancel()
        for topic in list(self._consumers):
            await self._release(topic)
        self._held.clear()
        await self._conn.close()
