"""Renamed parameters: the old name keeps working for one release, with a warning.

issue 19 gave some parameters one meaning across the package (``backend=`` for shared state,
``max_attempts=`` for a cap). The old spelling is still accepted; this module words the
warning and the conflict error once. The module is private; its function is a public name so
that every policy may use it.
"""

from __future__ import annotations

import warnings
from typing import TypeVar

__all__ = ["renamed"]

T = TypeVar("T")


def renamed(
    owner: str, old: str, new: str, old_value: T | None, new_value: T, *, new_given: bool,
    note: str = "",
) -> T:
    """The value to use for parameter ``new`` of ``owner``, given its deprecated name ``old``.

    Returns ``new_value`` when ``old_value`` is None. Otherwise warns (``DeprecationWarning``,
    pointing at the line that called ``owner``) and returns ``old_value``; raises
    ``TypeError`` when both names were given (``new_given``). ``note`` ends the warning, to
    say why the name changed.
    """
    if old_value is None:
        return new_value
    if new_given:
        raise TypeError(f"give {new}= only ({old}= is its deprecated old name)")
    warnings.warn(
        f"{owner}({old}=...) is deprecated; pass {new}=...{note}",
        DeprecationWarning, stacklevel=3,
    )
    return old_value
