"""requests (and urllib3 underneath): a failed connect is TRANSIENT, a failed read UNKNOWN."""

from __future__ import annotations

import requests
import urllib3.exceptions as u3

from ..outcome import Classifier, Outcome, Verdict, register_default
from .stdlib import status_of_response

__all__ = ["install"]

_CONNECT_CAUSES = (u3.NewConnectionError, u3.ConnectTimeoutError, u3.NameResolutionError)


def _connection_error(exc: BaseException) -> Verdict:
    # requests.ConnectionError covers both "could not connect" and "connection aborted".
    seen: BaseException | None = exc
    for _ in range(6):
        if seen is None:
            break
        if isinstance(seen, _CONNECT_CAUSES):
            return Verdict(Outcome.TRANSIENT, None, "connect failed")
        reason = getattr(seen, "reason", None)
        if isinstance(reason, _CONNECT_CAUSES):
            return Verdict(Outcome.TRANSIENT, None, "connect failed")
        args = getattr(seen, "args", ())
        if args and isinstance(args[0], BaseException):
            seen = args[0]
        else:
            seen = seen.__cause__ or seen.__context__
    return Verdict(Outcome.UNKNOWN, None, "connection lost")


_TABLE: tuple[tuple[type[BaseException], Classifier], ...] = (
    (requests.ConnectTimeout, Verdict(Outcome.TRANSIENT, None, "connect timed out")),
    (requests.ReadTimeout, Verdict(Outcome.UNKNOWN, None, "read timed out")),
    (requests.Timeout, Verdict(Outcome.UNKNOWN, None, "timed out")),
    (requests.ConnectionError, _connection_error),
    (requests.exceptions.ChunkedEncodingError, Verdict(Outcome.UNKNOWN, None, "body cut")),
    (requests.HTTPError, status_of_response("HTTP error without a response")),
    (requests.exceptions.InvalidURL, Outcome.PERMANENT),
    (requests.exceptions.MissingSchema, Outcome.PERMANENT),
    (requests.exceptions.InvalidSchema, Outcome.PERMANENT),
    (requests.exceptions.InvalidHeader, Outcome.PERMANENT),
    (requests.TooManyRedirects, Outcome.PERMANENT),
    (u3.NewConnectionError, Verdict(Outcome.TRANSIENT, None, "connect failed")),
    (u3.ConnectTimeoutError, Verdict(Outcome.TRANSIENT, None, "connect timed out")),
    (u3.ReadTimeoutError, Verdict(Outcome.UNKNOWN, None, "read timed out")),
    (u3.ProtocolError, Verdict(Outcome.UNKNOWN, None, "connection lost")),
)


def install() -> None:
    """Register this library's classifiers (called by stoic.outcome on first use)."""
    for exc_type, what in _TABLE:
        register_default(exc_type, what)
