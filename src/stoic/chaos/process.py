"""Process faults and network partitions: kill, pause and restart services, cut links.

* ``Supervisor`` starts named commands and does to them what a crash, an OOM kill, a GC pause
  or a deploy would: ``kill`` (SIGKILL), ``terminate`` (SIGTERM, then SIGKILL after a grace
  period), ``pause`` (SIGSTOP) and ``resume`` (SIGCONT), ``restart``; ``state`` says where
  each one is. Each command runs in its own process group, so a shell wrapper and its
  children are signalled together.
* ``partition`` / ``heal`` and ``Network`` split services into groups that cannot reach each
  other by disabling the fault proxies (``stoic.chaos.proxy``) that carry traffic between
  them, and re-enable them to heal.
* ``ProcessDirectory`` acts on processes a ``Supervisor(state_dir=...)`` recorded, from another
  process: this is how ``chaos run`` (the Chaos Toolkit extension) kills or pauses services
  that a test harness or ``stoic demo`` started.
* ``Monkey`` kills a random member of a group at random, bounded intervals. Its schedule comes
  from a seeded generator, so a failing run can be repeated exactly.

POSIX only (signals and process groups). The parts live in ``supervisor``, ``process_directory``,
``partitions``, ``monkey`` and ``process_events``; this module gathers them.
"""

from __future__ import annotations

from .monkey import Monkey, MonkeyStruck
from .partitions import Network, ProxyControl, heal, partition
from .process_directory import ProcessDirectory, ProcessState
from .process_events import NetworkHealed, NetworkPartitioned, ProcessFaulted
from .supervisor import ProcessInfo, Supervisor

__all__ = [
    "Monkey",
    "MonkeyStruck",
    "Network",
    "NetworkHealed",
    "NetworkPartitioned",
    "ProcessDirectory",
    "ProcessFaulted",
    "ProcessInfo",
    "ProcessState",
    "ProxyControl",
    "Supervisor",
    "heal",
    "partition",
]
