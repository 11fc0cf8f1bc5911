"""``ctx.publish`` through the transactional outbox: the message exists exactly when the
checkpoint that records it does (SQLite and PostgreSQL, same database as the store)."""

from __future__ import annotations

from typing import Any

import pytest

from stoic.messaging import MemoryBroker, Outbox
from stoic.testing import VirtualClock
from stoic.workflow import MemoryStore, Store, Workflows
from workflow.wfhelpers import Crash, crash_and_expire


def _outbox_rows(store: Any, outbox: Outbox) -> list[tuple[str, str]]:
    if isinstance(store, MemoryStore):
        return [(topic, msg_id) for _, topic, _, msg_id in store.outbox]
    if hasattr(store, "drop"):  # PostgreSQL: a pooled connection
        with store.connection() as conn:
            return list(conn.execute(f"SELECT topic, id FROM {outbox.table} ORDER BY seq"))
    return list(store.connection().execute(f"SELECT topic, id FROM {outbox.table} ORDER BY seq"))


def _create(store: Any, outbox: Outbox) -> None:
    if isinstance(store, MemoryStore):
        return
    if hasattr(store, "drop"):
        with store.connection() as conn:
            outbox.create(conn)
        return
    outbox.create(store.connection())


def test_publish_commits_with_the_checkpoint_and_never_twice(
    store: Store, clock: VirtualClock,
) -> None:
    flows = Workflows(store, lease=5.0)
    outbox = Outbox(table=f"wf_outbox_{id(store) % 100000}")
    _create(store, outbox)
    crash = [True]
    seen: list[int] = []

    def after() -> None:
        if crash[0]:
            crash[0] = False
            raise Crash

    @flows.workflow("w")
    def w(ctx: Any) -> str:
        message_id = ctx.publish(outbox, "orders", {"placed": 1})
        seen.append(len(_outbox_rows(store, outbox)))
        ctx.step("after", after)
        return str(message_id)

    handle = flows.start("w", id="r")
    with pytest.raises(Crash):
        flows.drain()
    assert seen == [0]  # not written before the checkpoint that records it committed
    assert _outbox_rows(store, outbox) == [("orders", "r/publish:orders/0")]
    crash_and_expire(flows, clock)
    flows.drain()
    assert handle.result() == "r/publish:orders/0"
    assert _outbox_rows(store, outbox) == [("orders", "r/publish:orders/0")]  # not twice
    if not isinstance(store, MemoryStore):
        with (store.connection() if hasattr(store, "drop") else _nullcontext(store)) as conn:
            conn.execute(f"DROP TABLE {outbox.table}")


class _nullcontext:
    def __init__(self, store: Any) -> None:
        self.conn = store.connection()

    def __enter__(self) -> Any:
        return self.conn

    def __exit__(self, *exc: object) -> None:
        pass


def test_publish_to_a_broker_uses_the_stable_id(flows: Workflows) -> None:
    broker = MemoryBroker()

    @flows.workflow("w")
    def w(ctx: Any) -> str:
        return str(ctx.publish(broker, "orders", {"n": 1}))

    handle = flows.start("w", id="r")
    flows.drain()
    assert handle.result() == "r/publish:orders/0"
    (message,) = broker.claim("orders", max_messages=5)
    assert message.id == "r/publish:orders/0" and message.payload == {"n": 1}
