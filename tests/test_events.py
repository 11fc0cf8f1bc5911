"""Events: delivered to subscribers, cheap without them, isolated from failing sinks."""

from __future__ import annotations

import dataclasses
import sys

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
        assert stoic.Retry(max_attempts=2).call(flaky) == "ok"
    assert built == 0


def test_sink_must_be_callable() -> None:
    with pytest.raises(TypeError, match="sink"):
        events.subscribe("not callable")  # type: ignore[arg-type]


class TestCallRecording:
    """``dispatcher.record``: what a policy calls per finished call, chosen when listeners change."""

    def test_nothing_listening_means_no_recording_at_all(self) -> None:
        assert events.dispatcher.record is None
        remove = events.dispatcher.add_recorder(lambda *args: None)
        remove()
        assert events.dispatcher.record is None

    def test_a_lone_trusted_recorder_is_called_directly(self) -> None:
        seen: list[tuple[object, ...]] = []

        def recorder(*args: object) -> None:
            seen.append(args)

        remove = events.dispatcher.add_recorder(recorder, trusted=True)
        assert events.dispatcher.record is recorder  # nothing between a policy and it
        stoic.Retry(name="direct").call(lambda: 1)
        remove()
        assert [args[:3] for args in seen] == [("retry", "direct", "success")]

    def test_an_untrusted_recorder_that_raises_is_logged_and_the_call_goes_on(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        seen: list[tuple[object, ...]] = []
        events.dispatcher.add_recorder(lambda *args: 1 / 0)
        events.dispatcher.add_recorder(lambda *args: seen.append(args))
        assert stoic.Retry(name="guarded").call(lambda: "ok") == "ok"
        assert [args[:3] for args in seen] == [("retry", "guarded", "success")]
        assert "recorder" in caplog.text and "ZeroDivisionError" in caplog.text

    def test_sinks_that_want_calls_get_call_finished_alongside_recorders(self) -> None:
        recorded: list[tuple[object, ...]] = []
        finished: list[events.Event] = []
        events.dispatcher.add_recorder(lambda *args: recorded.append(args))
        events.subscribe(finished.append)
        other: list[events.Event] = []
        events.dispatcher.subscribe(other.append, calls=False)
        stoic.Pipeline(stoic.Retry(name="outer"), stoic.CircuitBreaker("inner")).call(lambda: 1)
        assert [args[:3] for args in recorded] == [
            ("circuit_breaker", "inner", "success"), ("retry", "outer", "success"),
        ]
        assert [(type(e).__name__, e.name) for e in finished] == [
            ("CallFinished", "inner"), ("CallFinished", "outer"),
        ]
        assert other == []  # calls=False: no CallFinished

    def test_a_failed_call_is_recorded_with_its_outcome_and_error_type(self) -> None:
        recorded: list[tuple[object, ...]] = []
        events.dispatcher.add_recorder(lambda *args: recorded.append(args), trusted=True)
        breaker = stoic.CircuitBreaker("failing")

        def refused() -> None:
            raise ConnectionRefusedError

        with pytest.raises(ConnectionRefusedError):
            breaker.call(refused)
        ((policy, name, outcome, duration, attempts, error_type),) = recorded
        assert (policy, name, outcome, attempts, error_type) == (
            "circuit_breaker", "failing", "transient", 1, "ConnectionRefusedError")
        assert isinstance(duration, float) and duration >= 0


def _every_stoic_module() -> None:
    """Import every module of stoic (those whose extras are missing are passed over)."""
    import importlib
    import pkgutil

    for info in pkgutil.walk_packages(stoic.__path__, "stoic."):
        if info.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(info.name)
        except ImportError:
            continue


def _subclasses(cls: type) -> set[type]:
    found: set[type] = set()
    for sub in cls.__subclasses__():
        found |= {sub} | _subclasses(sub)
    return found


class TestCatalogue:
    def test_every_event_class_stoic_defines_is_in_the_catalogue(self) -> None:
        """A new event class must be listed in stoic.events.catalogue(), beside its area's."""
        from stoic.events import Event, catalogue

        _every_stoic_module()
        # dataclass(slots=True) replaces each class: keep the ones their module holds
        defined = {
            c for c in _subclasses(Event)
            if c.__module__.startswith("stoic.")
            and getattr(sys.modules[c.__module__], c.__qualname__, None) is c
        }
        missing = sorted(c.__qualname__ for c in defined - set(catalogue()))
        assert missing == []

    def test_every_catalogued_event_is_a_frozen_slotted_dataclass(self) -> None:
        import dataclasses

        from stoic.events import catalogue

        for cls in catalogue():
            assert dataclasses.is_dataclass(cls), cls
            assert cls.__dataclass_params__.frozen, cls  # type: ignore[attr-defined]
            assert "__slots__" in cls.__dict__, cls

    def test_catalogued_classes_are_attributes_of_stoic_events(self) -> None:
        import stoic.events
        from stoic.policies.breaker import BreakerOpened

        assert stoic.events.BreakerOpened is BreakerOpened
        for cls in stoic.events.catalogue():
            assert getattr(stoic.events, cls.__name__) is cls
            assert cls.__name__ in stoic.events.__all__
