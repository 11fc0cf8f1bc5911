"""Random sequences of publish/claim/ack/nack/dead-letter/requeue agree with a simple model.

The model is the contract in a few dicts: a message is ready, held (leased), dead or done.
Whatever the sequence, a broker never delivers a held, dead or finished message, never loses
a ready one, never queues a finished id again (de-duplication), and its stats agree.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from stoic.messaging import MemoryBroker, Message, SQLiteBroker

IDS = st.sampled_from([f"m{i}" for i in range(8)])


class BrokerModel(RuleBasedStateMachine):
    kind = "memory"
    redis_url = ""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp()
        self.topic = f"model-{uuid.uuid4().hex[:10]}"
        if self.kind == "redis":
            from stoic.messaging.redis import RedisBroker

            self.broker: Any = RedisBroker(self.redis_url)
        elif self.kind == "sqlite":
            self.broker = SQLiteBroker(f"{self.dir}/q.db")
        else:
            self.broker = MemoryBroker()
        self.state: dict[str, str] = {}  # id -> ready | held | dead | done
        self.held: dict[str, Message] = {}
        self.finished: dict[str, Message] = {}  # deliveries already acked, nacked or dead

    def teardown(self) -> None:
        if hasattr(self.broker, "delete_topic"):
            self.broker.delete_topic(self.topic)
        self.broker.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(msg_id=IDS)
    def publish(self, msg_id: str) -> None:
        self.broker.publish(self.topic, {"id": msg_id}, id=msg_id)
        self.state.setdefault(msg_id, "ready")  # any known id is a no-op

    @rule(n=st.integers(1, 4))
    def claim(self, n: int) -> None:
        ready = {i for i, s in self.state.items() if s == "ready"}
        got = self.broker.claim(self.topic, max_messages=n, lease=300.0)
        assert len(got) == min(n, len(ready))
        for m in got:
            assert m.id in ready, f"delivered {m.id} in state {self.state.get(m.id)}"
            assert m.payload == {"id": m.id}
            self.state[m.id] = "held"
            self.held[m.id] = m

    @precondition(lambda self: self.held)
    @rule(data=st.data(), how=st.sampled_from(["ack", "nack", "dead"]))
    def settle(self, data: st.DataObject, how: str) -> None:
        msg_id = data.draw(st.sampled_from(sorted(self.held)))
        m = self.held.pop(msg_id)
        self.finished[msg_id] = m
        if how == "ack":
            assert self.broker.ack(m) is True
            self.state[msg_id] = "done"
        elif how == "nack":
            assert self.broker.nack(m, 0.0) is True
            self.state[msg_id] = "ready"
        else:
            self.broker.dead_letter(m, "model", None)
            self.state[msg_id] = "dead"

    @precondition(lambda self: self.finished)
    @rule(data=st.data())
    def settled_receipt_is_refused(self, data: st.DataObject) -> None:
        msg_id = data.draw(st.sampled_from(sorted(self.finished)))
        m = self.finished[msg_id]
        assert self.broker.ack(m) is False
        assert self.broker.nack(m, 0.0) is False

    @rule()
    def requeue(self) -> None:
        dead = {i for i, s in self.state.items() if s == "dead"}
        assert self.broker.requeue(self.topic) == len(dead)
        for i in dead:
            self.state[i] = "ready"

    @invariant()
    def stats_agree(self) -> None:
        s = self.broker.stats(self.topic)
        count = {k: sum(1 for v in self.state.values() if v == k) for k in ("ready", "held",
                                                                             "dead")}
        assert (s.ready, s.in_flight, s.dead, s.delayed) == (
            count["ready"], count["held"], count["dead"], 0
        )


class SQLiteBrokerModel(BrokerModel):
    kind = "sqlite"


def test_redis_broker_agrees_with_the_model_on_random_sequences(redis_url: str) -> None:
    from hypothesis.stateful import run_state_machine_as_test

    class RedisBrokerModel(BrokerModel):
        kind = "redis"

    RedisBrokerModel.redis_url = redis_url
    run_state_machine_as_test(
        RedisBrokerModel,
        settings=settings(max_examples=25, stateful_step_count=20, deadline=None),
    )


@pytest.mark.parametrize("machine", [BrokerModel, SQLiteBrokerModel], ids=["memory", "sqlite"])
def test_broker_agrees_with_the_model_on_random_sequences(machine: type) -> None:
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(
        machine, settings=settings(max_examples=40, stateful_step_count=25, deadline=None)
    )
