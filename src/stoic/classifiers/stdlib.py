"""Defaults for the standard library's exceptions.

Connection refused and name-resolution failures happen before any request left: TRANSIENT.
Resets, broken pipes and timeouts can happen after the peer acted on the request: UNKNOWN.
File errors and everything else (ValueError, KeyError, bugs) will not improve on retry:
PERMANENT. Out-of-resource errnos (EMFILE, ENFILE, ENOBUFS, ENOMEM) are local and pass.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import urllib.error

from ..errors import (
    CodecError,
    IdempotencyKeyInUseError,
    IdempotencyKeyMismatchError,
    IdempotencyStoredError,
    Rejected,
)
from ..outcome import Classifier, Outcome, Verdict, classify, classify_status, install_defaults

__all__ = ["DEFAULTS", "install", "status_of_response"]

def status_of_response(no_response: str) -> Classifier:
    """A classifier for an HTTP client's status error: the verdict of its ``response``'s status
    and headers (``classify_status``), or PERMANENT with the reason ``no_response`` when the
    error carries no response. httpx and requests both raise such errors."""

    def classify_response(exc: BaseException) -> Verdict:
        response = getattr(exc, "response", None)
        if response is None:
            return Verdict(Outcome.PERMANENT, None, no_response)
        return classify_status(response.status_code, response.headers)

    return classify_response


_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_CONNECT_ERRNOS = frozenset(
    {errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL}
)


def _os_error(exc: BaseException) -> Verdict:
    code = getattr(exc, "errno", None)
    if code in _RESOURCE_ERRNOS:
        return Verdict(Outcome.TRANSIENT, None, f"out of resources ({errno.errorcode[code]})")
    if code in _CONNECT_ERRNOS:
        return Verdict(Outcome.TRANSIENT, None, f"could not connect ({errno.errorcode[code]})")
    return Verdict(Outcome.UNKNOWN, None, type(exc).__name__)


def _rejected(exc: BaseException) -> Verdict:
    retry_after = getattr(exc, "retry_after", None)
    return Verdict(Outcome.THROTTLED, retry_after, getattr(exc, "reason", "rejected"))


def _in_use(exc: BaseException) -> Verdict:
    return Verdict(Outcome.THROTTLED, getattr(exc, "retry_after", None), "idempotency key in use")


def _url_error(exc: BaseException) -> Verdict:
    # urllib wraps the socket error that stopped it in ``reason``: classify that
    reason = getattr(exc, "reason", None)
    if isinstance(reason, BaseException):
        return classify(reason)
    return Verdict(Outcome.UNKNOWN, None, f"URLError: {reason}")


def _http_error(exc: BaseException) -> Verdict:
    code = getattr(exc, "code", None)
    if not isinstance(code, int):
        return Verdict(Outcome.PERMANENT, None, "HTTPError without a status")
    headers = getattr(exc, "headers", None)
    return classify_status(code, dict(headers.items()) if headers is not None else None)


_PERMANENT = Outcome.PERMANENT

DEFAULTS: dict[type[BaseException], Classifier] = {
    Exception: _PERMANENT,
    OSError: _os_error,
    ConnectionRefusedError: Verdict(Outcome.TRANSIENT, None, "connection refused"),
    socket.gaierror: Verdict(Outcome.TRANSIENT, None, "name resolution failed"),
    ConnectionResetError: Verdict(Outcome.UNKNOWN, None, "connection reset"),
    ConnectionAbortedError: Verdict(Outcome.UNKNOWN, None, "connection aborted"),
    BrokenPipeError: Verdict(Outcome.UNKNOWN, None, "broken pipe"),
    TimeoutError: Verdict(Outcome.UNKNOWN, None, "timed out"),
    asyncio.TimeoutError: Verdict(Outcome.UNKNOWN, None, "timed out"),
    FileNotFoundError: _PERMANENT,
    FileExistsError: _PERMANENT,
    PermissionError: _PERMANENT,
    IsADirectoryError: _PERMANENT,
    NotADirectoryError: _PERMANENT,
    Rejected: _rejected,
    IdempotencyKeyInUseError: _in_use,
    IdempotencyKeyMismatchError: _PERMANENT,
    IdempotencyStoredError: _PERMANENT,
    CodecError: _PERMANENT,
    urllib.error.URLError: _url_error,
    urllib.error.HTTPError: _http_error,
}


def install() -> None:
    """Make these the registry's base classifiers (``import stoic`` does it once)."""
    install_defaults(DEFAULTS)
