"""Classification: what a failure means, from the stdlib, HTTP statuses and the registry."""

from __future__ import annotations

import asyncio
import errno
import socket
import sqlite3
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

import stoic
from stoic import Outcome, Verdict, classify, classify_status, register_classifier
from stoic.testing import virtual_time

T, U, P, THR = Outcome.TRANSIENT, Outcome.UNKNOWN, Outcome.PERMANENT, Outcome.THROTTLED


class TestStdlib:
    @pytest.mark.parametrize(
        ("exc", "outcome"),
        [
            (ConnectionRefusedError(), T),
            (socket.gaierror(), T),
            (OSError(errno.EMFILE, "too many open files"), T),
            (OSError(errno.ENFILE, "file table overflow"), T),
            (OSError(errno.ENOBUFS, "no buffer space"), T),
            (OSError(errno.ENOMEM, "out of memory"), T),
            (ConnectionResetError(), U),
            (ConnectionAbortedError(), U),
            (BrokenPipeError(), U),
            (TimeoutError(), U),  # also socket.timeout and asyncio.TimeoutError
            (OSError("something else"), U),
            (FileNotFoundError(), P),
            (PermissionError(), P),
            (IsADirectoryError(), P),
            (NotADirectoryError(), P),
            (FileExistsError(), P),
            (ValueError(), P),
            (TypeError(), P),
            (KeyError("k"), P),
        ],
        ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
    )
    def test_default_outcome(self, exc: BaseException, outcome: Outcome) -> None:
        assert classify(exc).outcome is outcome

    @pytest.mark.parametrize(
        "exc", [asyncio.CancelledError(), KeyboardInterrupt(), SystemExit(1), GeneratorExit()]
    )
    def test_cancellation_is_never_a_retryable_failure(self, exc: BaseException) -> None:
        verdict = classify(exc)
        assert verdict.outcome is P
        assert "not a failure" in verdict.reason

    def test_rejections_are_throttled_with_their_retry_after(self) -> None:
        verdict = classify(stoic.CircuitOpenError("open", retry_after=4.5))
        assert verdict == Verdict(THR, 4.5, "circuit_open")

    def test_sqlite_locked_is_transient_other_errors_permanent(self) -> None:
        assert classify(sqlite3.OperationalError("database is locked")).outcome is T
        assert classify(sqlite3.OperationalError("no such table: x")).outcome is P
        assert classify(sqlite3.IntegrityError("UNIQUE constraint failed")).outcome is P


class TestStatus:
    @pytest.mark.parametrize(
        ("status", "outcome"),
        [
            (200, Outcome.SUCCESS), (204, Outcome.SUCCESS), (302, Outcome.SUCCESS),
            (408, T), (425, T), (429, THR), (400, P), (401, P), (404, P), (409, P), (422, P),
            (503, T), (500, U), (502, U), (504, U), (599, U), (501, P), (505, P),
        ],
    )
    def test_status_table(self, status: int, outcome: Outcome) -> None:
        assert classify_status(status).outcome is outcome

    def test_503_with_retry_after_is_throttled(self) -> None:
        verdict = classify_status(503, {"Retry-After": "7"})
        assert verdict.outcome is THR
        assert verdict.retry_after == 7.0

    def test_409_with_retry_after_is_throttled_without_it_permanent(self) -> None:
        assert classify_status(409, {"Retry-After": "1"}).outcome is THR
        assert classify_status(409).outcome is P

    def test_retry_after_header_name_is_case_insensitive(self) -> None:
        assert classify_status(429, {"retry-after": "3"}).retry_after == 3.0

    def test_retry_after_as_http_date(self) -> None:
        with virtual_time() as clock:
            when = datetime.fromtimestamp(clock.time(), tz=timezone.utc) + timedelta(seconds=30)
            verdict = classify_status(429, {"Retry-After": format_datetime(when, usegmt=True)})
        assert verdict.retry_after is not None
        assert 29.0 <= verdict.retry_after <= 30.0

    @pytest.mark.parametrize("value", ["soon", "-5", "", "nan", "inf"])
    def test_malformed_retry_after_is_ignored(self, value: str) -> None:
        assert classify_status(429, {"Retry-After": value}).retry_after is None


class TestRegistry:
    def test_most_specific_registered_class_wins(self) -> None:
        class Base(Exception): ...

        class Child(Base): ...

        register_classifier(Base, T)
        register_classifier(Child, P)
        assert classify(Base()).outcome is T
        assert classify(Child()).outcome is P

    def test_function_classifier_sees_the_instance_every_time(self) -> None:
        class Busy(Exception):
            def __init__(self, code: int) -> None:
                self.code = code

        register_classifier(Busy, lambda e: T if e.code == 1 else P)  # type: ignore[attr-defined]
        assert classify(Busy(1)).outcome is T
        assert classify(Busy(2)).outcome is P  # cached lookup, fresh verdict

    def test_function_returning_none_defers_to_the_next_class(self) -> None:
        class Base(Exception): ...

        class Child(Base): ...

        register_classifier(Base, THR)
        register_classifier(Child, lambda e: None)
        assert classify(Child()).outcome is THR

    def test_registration_by_dotted_name_needs_no_import(self) -> None:
        class Late(Exception): ...

        register_classifier(f"{Late.__module__}.{Late.__qualname__}", THR)
        assert classify(Late()).outcome is THR

    def test_a_broken_classifier_does_not_raise(self) -> None:
        class Odd(Exception): ...

        register_classifier(Odd, lambda e: 1 / 0)  # type: ignore[arg-type, return-value]
        assert classify(Odd()).outcome is P

    def test_bad_registration_is_refused(self) -> None:
        with pytest.raises(TypeError, match="exc_type"):
            register_classifier(int, T)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="outcome_or_fn"):
            register_classifier(ValueError, "transient")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="dotted"):
            register_classifier("Nodots", T)

    def test_user_registration_survives_lazy_library_classifiers(self) -> None:
        httpx = pytest.importorskip("httpx", reason="needs the http extra")

        register_classifier(httpx.ConnectError, P)
        assert classify(httpx.ConnectError("boom")).outcome is P
