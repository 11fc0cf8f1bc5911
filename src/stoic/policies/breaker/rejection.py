"""The exception an open breaker raises, built in C so that rejecting stays cheap.

Benchmark: ``benchmarks/overhead.py``, case "breaker open (rejection)". Every rejection needs
a fresh exception (a shared one would keep growing its traceback), and building a
``CircuitOpenError`` through its Python ``__init__`` costs a frame. ``CircuitOpen`` keeps
``args`` as ``(retry_after, name)`` and uses ``BaseException.__init__``, which CPython calls
without a frame; the message is formatted only when someone reads it. Everywhere else it is
a ``CircuitOpenError``: it carries that name in tracebacks, logs and metrics, and pickles as
one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...errors import CircuitOpenError

__all__ = ["CircuitOpen"]


class CircuitOpen(CircuitOpenError):
    """A ``CircuitOpenError`` made with one C-level construction: ``CircuitOpen(retry_after, name)``."""

    if TYPE_CHECKING:

        def __init__(self, retry_after: float | None, name: str, /) -> None: ...

    else:
        __init__ = BaseException.__init__  # sets args only; CPython calls it without a frame

    @property  # type: ignore[override]
    def retry_after(self) -> float | None:
        return self.args[0]  # type: ignore[no-any-return]

    @retry_after.setter
    def retry_after(self, value: float | None) -> None:
        self.args = (value, *self.args[1:])

    @property  # type: ignore[override]
    def name(self) -> str:
        return self.args[1]  # type: ignore[no-any-return]

    @name.setter
    def name(self, value: str) -> None:
        self.args = (self.args[0], value)

    def __str__(self) -> str:
        return f"circuit {self.name!r} is open"

    def __repr__(self) -> str:
        return f"CircuitOpenError({str(self)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return CircuitOpenError, (str(self),), {"retry_after": self.retry_after, "name": self.name}


CircuitOpen.__name__ = CircuitOpen.__qualname__ = CircuitOpenError.__name__
CircuitOpen.__module__ = CircuitOpenError.__module__
