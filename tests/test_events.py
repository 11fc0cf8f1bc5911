"""Events: delivered to subscribers, cheap without them, isolated from failing sinks."""

from __future__ import annotations

import dataclasses

import pytest

import stoic
from stoic import events
from stoic.events import CallRejected, RetryScheduled


def test_subscribe_and_unsubscribe() -> None:
    seen: list[events.Event] = []
    unsubscribe = events.subscribe(seen.append)
    event = CallRejected(name="x", policy="bulkhead", reason="full")
    events.dispatcher.emit(event)
    unsubscribe()
    unsubscribe()  # twice is harmless
    events.dispatcher.emit(event)
    assert seen == [event]


def test_events_are_frozen_and_slotted() -> None:
    event = RetryScheduled(name="r", attempt=1, wait=0.1, outcome="transient", error_type="E")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.wait = 2.0  # type: ignore[misc]
    assert not hasattr(event, "__dict__")
    assert event.kind == "RetryScheduled"


def test_a_failing_sink_is_logged_and_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[events.Event] = []
    events.subscribe(lambda e: 1 / 0)
    events.subscribe(seen.append)
    events.dispatcher.emit(CallRejected(name="x", policy="p", reason="r"))
    assert len(seen) == 1
    assert "sink" in caplog.text


def test_no_event_is_built_without_a_subscriber(monkeypatch: pytest.MonkeyPatch) -> None:
    built = 0
    original = RetryScheduled.__init__

    def counting(self: RetryScheduled, *args: object, **kwargs: object) -> None:
        nonlocal built
        built += 1
        original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(RetryScheduled, "__init__", counting)
    calls = 0

    def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionRefusedError
        return "ok"

    with stoic.testing.virtual_time():
        assert stoic.Retry(attempts=2).call(flaky) == "ok"
    assert built == 0


def test_sink_must_be_callable() -> None:
    with pytest.raises(TypeError, match="sink"):
        events.subscribe("not callable")  # type: ignore[arg-type]
