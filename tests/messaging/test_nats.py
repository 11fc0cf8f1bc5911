"""NatsBroker beyond the shared contract: ack wait, max deliveries, leases past ack_wait."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import stoic

pytest.importorskip("nats")


@pytest.fixture
def short(nats_url: str, topic: str) -> Iterator[Any]:
    """A broker whose consumer waits 0.5 s for an ack before JetStream redelivers."""
    from stoic.messaging.nats import NatsBroker

    broker = NatsBroker(nats_url, prefix="stoictest", ack_wait=0.5, max_deliver=2)
    yield broker
    broker.delete_topic(topic)
    broker.close()


def claim_within(broker: Any, topic: str, seconds: float, lease: float = 30.0) -> list[Any]:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        got = broker.claim(topic, lease=lease)
        if got:
            return list(got)
        time.sleep(0.05)
    return []


def test_a_sigkilled_process_s_messages_come_back_after_ack_wait(
    short: Any, nats_url: str, topic: str
) -> None:
    short.stats(topic)  # creates the streams and the consumer (ack_wait 0.5 s)
    msg_id = short.publish(topic, "job")
    script = (
        "import sys, time\n"
        "from stoic.messaging.nats import NatsBroker\n"
        f"b = NatsBroker({nats_url!r}, prefix='stoictest', ack_wait=0.5)\n"
        "while not b.claim(sys.argv[1], lease=60.0): time.sleep(0.02)\n"
        "print('claimed', flush=True)\n"
        "time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(stoic.__file__).parent.parent)}
    proc = subprocess.Popen([sys.executable, "-c", script, topic], env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "claimed"
        proc.send_signal(signal.SIGKILL)  # its lease of 60 s dies with it
        proc.wait(10)
        [again] = claim_within(short, topic, 10.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (again.id, again.attempts) == (msg_id, 2)
    assert short.ack(again)


def test_a_lease_longer_than_ack_wait_is_kept_alive(short: Any, topic: str) -> None:
    short.publish(topic, "slow job")
    [held] = claim_within(short, topic, 3.0, lease=5.0)
    time.sleep(1.5)  # three ack waits: JetStream would have redelivered without in_progress
    assert short.claim(topic, lease=30.0) == []
    assert short.ack(held)


def test_a_message_delivered_past_max_deliver_is_dead_lettered_with_the_reason(
    short: Any, topic: str
) -> None:
    short.publish(topic, "poison", id="p1")
    for _ in range(2):  # each delivery's worker "dies": its lease runs out unacked
        assert claim_within(short, topic, 3.0, lease=0.2)
        time.sleep(0.3)
    assert claim_within(short, topic, 1.0) == []
    [dead] = short.dead_letters(topic)
    assert (dead.message.id, dead.reason) == ("p1", "max deliveries")
    assert "delivered 3 times" in (dead.error or "")
    assert short.stats(topic).recovered == 2  # both expired leases were taken back here
