"""Frozen settings: how a policy exposes its configuration, and how a changed copy is made.

Every policy keeps what it was told in ``config``, a frozen dataclass validated once when the
policy is built (``RetryConfig``, ``BreakerConfig``, ``BulkheadConfig``, ...). Its settings
read through to it as ``setting`` attributes: ``bulkhead.max_concurrent`` is
``bulkhead.config.max_concurrent``, and assigning it raises ``AttributeError`` saying how to
get a changed policy instead. Call paths capture their settings once, when they are built,
so a live policy never changes under a running call.

``Configured.replace(**changes)`` builds a new policy from ``dataclasses.replace(config,
**changes)``: the names are the constructor's, the values validated as at construction.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, NoReturn, TypeVar, overload

__all__ = ["Configured", "PolicyConfig", "setting"]

T = TypeVar("T")
C = TypeVar("C", bound="Configured")


class setting(Generic[T]):
    """A read-only attribute that reads the policy's ``config`` (field ``field``, default: its name)."""

    __slots__ = ("field", "name")

    def __init__(self, field: str | None = None) -> None:
        self.field = field or ""
        self.name = field or ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self.field = self.field or name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> setting[T]: ...
    @overload
    def __get__(self, obj: object, owner: type | None = None) -> T: ...

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        if obj is None:
            return self
        return getattr(obj.config, self.field)  # type: ignore[attr-defined]

    def __set__(self, obj: object, value: object) -> NoReturn:
        kind = type(obj).__name__
        raise AttributeError(
            f"{kind}.{self.name} is read-only: a policy's settings are frozen ({kind}.config); "
            f"build a new one, e.g. policy.replace({self.field}=...)"
        )


class Configured:
    """A policy whose settings live in a frozen ``config``; ``_build(config)`` sets it up."""

    config: Any

    def _build(self, config: Any) -> None:
        raise NotImplementedError

    def replace(self: C, **changes: Any) -> C:
        """A new policy with this one's settings and ``changes`` (the constructor's names).

        Unknown names raise ``TypeError``; values are validated as at construction. This
        policy is unchanged.
        """
        known = {f.name for f in dataclasses.fields(self.config)}
        unknown = set(changes) - known
        if unknown:
            raise TypeError(f"{type(self).__name__}.replace() got unknown parameters: {sorted(unknown)}")
        twin = copy.copy(self)  # a subclass's own attributes come along ...
        twin._build(dataclasses.replace(self.config, **changes))  # ... the state is new
        return twin


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyConfig:
    """Base of a policy's frozen settings: ``name``, empty for the policy's ``default_name``.

    A subclass declares its fields and validates them in ``_check`` (which may normalise a
    value with ``_normalise``: the dataclass is frozen).
    """

    name: str = ""
    default_name: ClassVar[str] = "policy"

    def __post_init__(self) -> None:
        self._check()
        self._normalise("name", self.name or self.default_name)

    def _check(self) -> None:
        """Validate (and normalise) the subclass's own settings; raise ``ValueError``."""

    def _normalise(self, field: str, value: object) -> None:
        object.__setattr__(self, field, value)
