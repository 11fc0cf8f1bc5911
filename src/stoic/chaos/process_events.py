"""The events of process faults and network partitions (``stoic.chaos.process``)."""

from __future__ import annotations

from dataclasses import dataclass

from ..events import Event

__all__ = ["NetworkHealed", "NetworkPartitioned", "ProcessFaulted"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessFaulted(Event):
    """The supervisor did ``action`` (kill, terminate, pause, resume, restart) to ``name``."""

    action: str
    pid: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkPartitioned(Event):
    """``proxies`` were disabled to cut the network; ``name`` labels the partition."""

    proxies: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkHealed(Event):
    """``proxies`` were enabled again."""

    proxies: tuple[str, ...]

