"""aiohttp: connector errors TRANSIENT, disconnects and read timeouts UNKNOWN."""

from __future__ import annotations

import aiohttp  # type: ignore[import-not-found, unused-ignore]

from ..outcome import Outcome, Verdict, classify_status, register_default

__all__: list[str] = []


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
for _name, _what in _TABLE:
    _type = getattr(aiohttp, _name, None)
    if _type is not None:
        register_default(_type, _what)  # type: ignore[arg-type]
