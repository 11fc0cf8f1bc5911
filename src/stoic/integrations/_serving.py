"""What the server-side integrations (gRPC, WSGI) share: reading what a caller sent.

No framework is imported here. A request's time budget and its request id come from the
caller; both are untrusted, so both are checked and bounded before stoic binds them.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable
from typing import Any

__all__ = ["budget_seconds", "check_max_deadline", "check_server", "request_id", "user_of"]

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


def budget_seconds(millis: str | None, cap: float | None, label: str) -> float | None:
    """A request's time budget in seconds from a milliseconds header value, clamped to ``cap``.

    A missing value gives ``cap``; a malformed or negative one is logged and gives ``cap``;
    None means no deadline at all.
    """
    if millis is None:
        return cap
    text = millis.strip()
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        _log.warning("stoic: ignoring bad %s value %r; using max_deadline=%s", label, text[:64], cap)
        return cap
    seconds = value / 1000.0
    if cap is not None and seconds > cap:
        return cap
    return seconds
