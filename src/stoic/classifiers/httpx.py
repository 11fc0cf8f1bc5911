"""httpx: connect-phase errors are TRANSIENT, read-phase errors UNKNOWN, statuses by the table."""

from __future__ import annotations

import httpx

from ..outcome import Classifier, Outcome, Verdict, register_default
from .stdlib import status_of_response

__all__ = ["install"]


_TABLE: tuple[tuple[type[BaseException], Classifier], ...] = (
    (httpx.ConnectError, Verdict(Outcome.TRANSIENT, None, "connect failed")),
    (httpx.ConnectTimeout, Verdict(Outcome.TRANSIENT, None, "connect timed out")),
    (httpx.PoolTimeout, Verdict(Outcome.TRANSIENT, None, "connection pool timed out")),
    (httpx.ProxyError, Verdict(Outcome.TRANSIENT, None, "proxy failed")),
    (httpx.ReadTimeout, Verdict(Outcome.UNKNOWN, None, "read timed out")),
    (httpx.WriteTimeout, Verdict(Outcome.UNKNOWN, None, "write timed out")),
    (httpx.ReadError, Verdict(Outcome.UNKNOWN, None, "read failed")),
    (httpx.WriteError, Verdict(Outcome.UNKNOWN, None, "write failed")),
    (httpx.RemoteProtocolError, Verdict(Outcome.UNKNOWN, None, "peer broke the protocol")),
    (httpx.NetworkError, Verdict(Outcome.UNKNOWN, None, "network error")),
    (httpx.TimeoutException, Verdict(Outcome.UNKNOWN, None, "timed out")),
    (httpx.LocalProtocolError, Outcome.PERMANENT),
    (httpx.UnsupportedProtocol, Outcome.PERMANENT),
    (httpx.DecodingError, Outcome.PERMANENT),
    (httpx.TooManyRedirects, Outcome.PERMANENT),
    (httpx.InvalidURL, Outcome.PERMANENT),
    (httpx.StreamError, Outcome.PERMANENT),
    (httpx.HTTPStatusError, status_of_response("HTTP status error without a response")),
)


def install() -> None:
    """Register this library's classifiers (called by stoic.outcome on first use)."""
    for exc_type, what in _TABLE:
        register_default(exc_type, what)
