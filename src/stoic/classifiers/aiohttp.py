"""aiohttp: connector errors TRANSIENT, disconnects and read timeouts UNKNOWN."""

from __future__ import annotations

import aiohttp  # type: ignore[import-untyped, import-not-found, unused-ignore]

from ..outcome import Outcome, Verdict, classify_status, register_default

__all__ = ["install"]


def _response_error(exc: BaseException) -> Verdict:
    status = getattr(exc, "status", None)
    if not isinstance(status, int):
        return Verdict(Outcome.UNKNOWN, None, "response error")
    return classify_status(status, getattr(exc, "headers", None))


_TABLE: list[tuple[str, object]] = [
    ("ClientConnectorError", Verdict(Outcome.TRANSIENT, None, "connect failed")),
    ("ConnectionTimeoutError", Verdict(Outcome.TRANSIENT, None, "connect timed out")),
    ("SocketTimeoutError", Verdict(Outcome.UNKNOWN, None, "read timed out")),
    ("ServerTimeoutError", Verdict(Outcome.UNKNOWN, None, "timed out")),
    ("ServerDisconnectedError", Verdict(Outcome.UNKNOWN, None, "server disconnected")),
    ("ClientOSError", Verdict(Outcome.UNKNOWN, None, "connection error")),
    ("ClientPayloadError", Verdict(Outcome.UNKNOWN, None, "body cut")),
    ("ClientResponseError", _response_error),
    ("InvalidURL", Outcome.PERMANENT),
]


def install() -> None:
    """Register this library's classifiers (called by stoic.outcome on first use)."""
    for name, what in _TABLE:
        exc_type = getattr(aiohttp, name, None)
        if exc_type is not None:
            register_default(exc_type, what)  # type: ignore[arg-type]
