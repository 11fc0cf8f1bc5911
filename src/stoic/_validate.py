"""Argument checks shared by every constructor: one wording, one place.

stoic validates configuration once, at construction, and a bad value raises ``ValueError``
naming the parameter, the value it got and what is allowed. These functions are that check,
written once: each returns the value normalised (a duration as ``float``) so a constructor
reads ``self.open_for = seconds("open_for", open_for, finite=True)``.

``bool`` is never accepted where a number is meant: ``True`` is an ``int`` to Python, but
``attempts=True`` is a mistake, not one attempt. NaN is never a number here either.
The module is private (its callers are stoic's own modules); its functions are public names
so that every area may use them.
"""

from __future__ import annotations

import math
import re

__all__ = [
    "count",
    "header_name",
    "identifier",
    "is_number",
    "non_empty",
    "number",
    "rate",
    "seconds",
]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
# RFC 9110 token characters: what a header field name may hold.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def is_number(value: object) -> bool:
    """True for an int or float that is not a bool and not NaN."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def count(
    name: str, value: object, *, minimum: int = 1, maximum: int | None = None,
    optional: bool = False,
) -> int:
    """``value`` as an int in ``[minimum, maximum]``.

    ``optional`` only adds "or None" to the message: a caller that accepts None checks for
    it first (``None if x is None else count("x", x, optional=True)``), which keeps types exact.
    """
    if (
        isinstance(value, bool) or not isinstance(value, int) or value < minimum
        or (maximum is not None and value > maximum)
    ):
        allowed = f"an int >= {minimum}" if maximum is None else f"an int in {minimum}..{maximum}"
        raise ValueError(
            f"{name} must be {allowed}{' or None' if optional else ''}, got {value!r}"
        )
    return value


def seconds(
    name: str, value: object, *, zero: bool = False, optional: bool = False,
    finite: bool = False,
) -> float:
    """``value`` as a duration in float seconds: > 0 (>= 0 with ``zero``).

    ``optional`` only adds "or None" to the message, as for ``count``.

    With ``finite`` an infinite duration is refused too (an open period must end).
    """
    ok = is_number(value) and (value >= 0 if zero else value > 0)  # type: ignore[operator]
    if not ok or (finite and value == math.inf):
        bound = ">= 0" if zero else "> 0"
        suffix = (" (finite)" if finite else "") + (" or None" if optional else "")
        raise ValueError(f"{name} must be {bound} seconds{suffix}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def number(
    name: str, value: object, *, above: float | None = None, at_least: float | None = None,
    finite: bool = True,
) -> float:
    """``value`` as a float that is ``> above`` and/or ``>= at_least`` (finite unless told)."""
    ok = is_number(value) and (finite is False or value not in (math.inf, -math.inf))
    if ok and above is not None:
        ok = value > above  # type: ignore[operator]
    if ok and at_least is not None:
        ok = value >= at_least  # type: ignore[operator]
    if not ok:
        bounds = [f"> {above:g}"] if above is not None else []
        if at_least is not None:
            bounds.append(f">= {at_least:g}")
        allowed = " and ".join(bounds) or "a number"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def rate(name: str, value: object, *, zero: bool = False) -> float:
    """``value`` as a fraction in (0, 1], or in [0, 1] with ``zero``."""
    low_ok = is_number(value) and (value >= 0.0 if zero else value > 0.0)  # type: ignore[operator]
    if not (low_ok and value <= 1.0):  # type: ignore[operator]
        raise ValueError(f"{name} must be in {'[' if zero else '('}0, 1], got {value!r}")
    return float(value)  # type: ignore[arg-type]


def non_empty(name: str, value: object) -> str:
    """``value`` as a non-empty str."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty str, got {value!r}")
    return value


def header_name(name: str, value: object) -> str:
    """``value`` as an HTTP header field name (an RFC 9110 token: ASCII, no spaces)."""
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise ValueError(f"{name} must be a non-empty ASCII header name, got {value!r}")
    return value


def identifier(name: str, value: object) -> str:
    """``value`` as a plain SQL identifier: letters, digits and ``_``, at most 63, no digit first.

    Safe to put in SQL text as it is, so a table name can never carry a statement.
    """
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        raise ValueError(f"{name} must be a plain SQL identifier, got {value!r}")
    return value
