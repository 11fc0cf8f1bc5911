"""``ConfigError``: what the policy registry raises for a file it cannot build."""

from __future__ import annotations

from typing import Any

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A configuration file (or environment override) declares something stoic cannot build.

    ``source`` is the file (or environment variable), ``key`` the dotted path of the bad
    entry, ``value`` what it held.
    """

    def __init__(self, source: str, key: str, value: Any, reason: str) -> None:
        super().__init__(f"{source}: {key} = {value!r}: {reason}")
        self.source = source
        self.key = key
        self.value = value
        self.reason = reason
