"""Lazy exports for packages: a name is imported from its module on first use, then cached.

A package such as ``stoic.workflow`` lists names whose modules need an extra (psycopg,
redis) or cost time to import. Importing the package must stay cheap and must not need the
extra, so those names are resolved by a module-level ``__getattr__`` (PEP 562) the first time
someone reads them. This module writes that ``__getattr__`` and its ``__dir__`` once; the
packages only give their table. ``require`` imports such an extra where it is needed, with
an error that names the extra to install. The module is private; its functions are public
names so that every package may use them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["lazy_exports", "require"]


def lazy_exports(
    package: str, lazy: Mapping[str, str], names: Iterable[str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return ``(__getattr__, __dir__)`` for ``package``.

    Args:
        package: the package's ``__name__``; relative module names resolve against it.
        lazy: exported name -> the module defining it (dotted, or relative such as ``.proxy``).
        names: the package's ``__all__``, listed by ``__dir__`` even before first use.
        namespace: the package's ``globals()``: a loaded name is stored there, so the next
            read is a plain attribute lookup that does not come back here.

    An unknown name raises ``AttributeError`` worded as Python's own.
    """
    listed = tuple(names)

    def __getattr__(name: str) -> Any:
        try:
            module_name = lazy[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(module_name, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(listed))

    return __getattr__, __dir__


def require(module: str, who: str, extra: str) -> Any:
    """Import ``module`` for ``who``, or an ``ImportError`` that names the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"{who} needs the {extra} extra: pip install 'stoic[{extra}]'") from exc
