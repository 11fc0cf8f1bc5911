"""What the server-side integrations (ASGI, WSGI, Django, gRPC) share: their settings, and
reading what a caller sent.

No framework is imported here. A request's time budget and its request id come from the
caller; both are untrusted, so both are checked and bounded before stoic binds them.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable
from typing import Any, ClassVar, TypedDict

__all__ = [
    "Serving",
    "ServingOptions",
    "budget_seconds",
    "check_max_deadline",
    "check_server",
    "request_id",
    "user_of",
]

_log = logging.getLogger("stoic.serving")

_MAX_REQUEST_ID = 200


def check_max_deadline(value: object) -> float | None:
    """``max_deadline`` as float seconds, or None; ``ValueError`` when not > 0 and finite."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        0 < value < math.inf
    ):
        raise ValueError(f"max_deadline must be > 0 seconds (finite) or None, got {value!r}")
    return float(value)


def check_server(service: object, version: object, bulkhead: object, user_id: object,
                 hook_takes: str) -> None:
    """Validate what every server-side integration takes; ``ValueError`` naming the argument."""
    from ..policies.base import Policy

    for label, value in (("service", service), ("version", version)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{label} must be a non-empty str, got {value!r}")
    if bulkhead is not None and not isinstance(bulkhead, Policy):
        raise ValueError(f"bulkhead must be a stoic policy (a Bulkhead) or None, got {bulkhead!r}")
    if user_id is not None and not callable(user_id):
        raise ValueError(f"user_id must be a callable taking {hook_takes}, got {user_id!r}")


def user_of(hook: Callable[[Any], str | None] | None, request: Any) -> str | None:
    """The user id the ``user_id`` hook finds in ``request``; None when it fails (logged)."""
    if hook is None:
        return None
    try:
        return hook(request)
    except Exception:
        _log.warning("stoic: the user_id hook failed", exc_info=True)
        return None


def request_id(raw: str | bytes | None) -> str:
    """The caller's request id when it is printable ASCII of sane length, else a new one.

    It is echoed into logs and response headers, so nothing else is trusted.
    """
    if isinstance(raw, str):
        raw = raw.encode("latin-1", "replace")
    if raw and len(raw) <= _MAX_REQUEST_ID and all(33 <= b <= 126 for b in raw):
        return raw.decode("ascii")
    return uuid.uuid4().hex


def budget_seconds(
    millis: str | None, cap: float | None, label: str, log: logging.Logger = _log
) -> float | None:
    """A request's time budget in seconds from a milliseconds header value, clamped to ``cap``.

    A missing value gives ``cap``; a malformed or negative one is logged (on ``log``) and
    gives ``cap``; None means no deadline at all.
    """
    if millis is None:
        return cap
    text = millis.strip()
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        log.warning("stoic: ignoring malformed %s value %r; using max_deadline=%s", label,
                    text[:64], cap)
        return cap
    if value < 0:
        log.warning("stoic: negative %s value %r; using max_deadline=%s", label, text[:64], cap)
        return cap
    seconds = value / 1000.0
    if cap is not None and seconds > cap:
        return cap
    return seconds


class ServingOptions(TypedDict, total=False):
    """The optional arguments of ``Serving`` (and of the middlewares built on it)."""

    deadline_header: str
    max_deadline: float | None
    shed_when_expired: bool
    bulkhead: Any  # a stoic policy
    user_id: Callable[[Any], str | None] | None
    request_id_header: str


class Serving:
    """The settings of a request edge, validated once: ASGI's and WSGI's ``StoicMiddleware``
    and the Django middleware take these arguments (see ``StoicMiddleware`` for each).

    A subclass says how its server hands over a request header (``header_key``) and what
    the ``user_id`` hook is given (``hook_takes``, for the error message).
    """

    hook_takes: ClassVar[str] = "the environ"

    def __init__(
        self,
        service: str,
        version: str,
        deadline_header: str = "X-Request-Timeout-Ms",
        max_deadline: float | None = None,
        shed_when_expired: bool = True,
        bulkhead: Any = None,
        user_id: Callable[[Any], str | None] | None = None,
        *,
        request_id_header: str = "X-Request-ID",
    ) -> None:
        from .._validate import header_name

        check_server(service, version, bulkhead, user_id, self.hook_takes)
        self.service = service
        self.version = version
        self.deadline_header = header_name("deadline_header", deadline_header)
        self.max_deadline = check_max_deadline(max_deadline)
        self.shed_when_expired = bool(shed_when_expired)
        self.bulkhead = bulkhead
        self.user_id = user_id
        self.request_id_header = header_name("request_id_header", request_id_header)
        self._deadline_key = self.header_key(deadline_header)
        self._request_id_key = self.header_key(request_id_header)
        from ..observability.otel import extract  # None at once unless tracing is on

        self._extract = extract

    @staticmethod
    def header_key(header: str) -> Any:
        """Where the server puts request header ``header`` (a WSGI environ key, ASGI bytes)."""
        raise NotImplementedError
