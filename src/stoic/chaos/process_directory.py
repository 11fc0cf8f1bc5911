"""Processes a ``Supervisor(state_dir=...)`` recorded on disk, and faulting them from anywhere.

A record is ``<state_dir>/<name>.json`` (pid, command, cwd, env, log), written atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from time import monotonic
from typing import IO, Literal

from ..events import dispatcher
from .process_events import ProcessFaulted

__all__ = ["ProcessDirectory", "ProcessState", "proc_state", "write_record"]

ProcessState = Literal["running", "paused", "stopped", "exited"]
"""``running``; ``paused`` (SIGSTOP); ``stopped`` by the supervisor; ``exited`` on its own."""


def write_record(state_dir: Path, record: dict[str, object]) -> None:
    """Write ``record`` as ``<state_dir>/<name>.json``, atomically."""
    state_dir.mkdir(parents=True, exist_ok=True)
    target = state_dir / f"{record['name']}.json"
    temporary = target.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(record), encoding="utf-8")
    temporary.replace(target)  # atomic: a reader never sees half a record


def proc_state(pid: int) -> str | None:
    """The kernel's one-letter state (R, S, T, Z...) or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return "S"
        return "S"


class ProcessDirectory:
    """Fault processes recorded by a ``Supervisor(state_dir=...)``, from any process.

    The verbs match ``Supervisor``'s and signal the recorded process group. ``restart``
    starts the recorded command again, detached, and updates the record; the process is then
    no longer a child of the supervisor that first started it (which will report it exited).
    """

    def __init__(self, state_dir: str | os.PathLike[str], *, grace: float = 5.0) -> None:
        if grace < 0:
            raise ValueError(f"grace must be >= 0 seconds, got {grace!r}")
        self.state_dir = Path(state_dir)
        self.grace = grace

    def record(self, name: str) -> dict[str, object]:
        path = self.state_dir / f"{name}.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise KeyError(f"no process named {name!r} recorded in {self.state_dir}") from None
        if not isinstance(data, dict) or not isinstance(data.get("pid"), int):
            raise ValueError(f"{path} is not a process record")
        return data

    def pid(self, name: str) -> int:
        pid = self.record(name)["pid"]
        assert isinstance(pid, int)
        return pid

    def state(self, name: str) -> ProcessState:
        """``running``, ``paused`` or ``exited`` (gone, or a zombie nobody reaped yet)."""
        code = proc_state(self.pid(name))
        if code is None or code in ("Z", "X"):
            return "exited"
        return "paused" if code in ("T", "t") else "running"

    def _signal(self, name: str, sig: int, action: str) -> int:
        pid = self.pid(name)
        if dispatcher.sinks:
            dispatcher.emit(ProcessFaulted(name=name, action=action, pid=pid))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        return pid

    def _wait_gone(self, name: str, timeout: float) -> bool:
        end = monotonic() + timeout
        while self.state(name) != "exited":
            if monotonic() >= end:
                return False
            threading.Event().wait(0.01)
        return True

    def kill(self, name: str) -> None:
        self._signal(name, signal.SIGKILL, "kill")
        self._wait_gone(name, 10.0)

    def terminate(self, name: str, grace: float | None = None) -> None:
        if self.state(name) == "paused":
            self._signal(name, signal.SIGCONT, "resume")
        self._signal(name, signal.SIGTERM, "terminate")
        if not self._wait_gone(name, self.grace if grace is None else grace):
            self._signal(name, signal.SIGKILL, "kill")
            self._wait_gone(name, 10.0)

    def pause(self, name: str) -> None:
        self._signal(name, signal.SIGSTOP, "pause")
        self._wait_state(name, lambda state: state != "running")  # signals land asynchronously

    def resume(self, name: str) -> None:
        self._signal(name, signal.SIGCONT, "resume")
        self._wait_state(name, lambda state: state != "paused")

    def _wait_state(self, name: str, done: Callable[[str], bool], timeout: float = 2.0) -> None:
        end = monotonic() + timeout
        while not done(self.state(name)) and monotonic() < end:
            threading.Event().wait(0.005)

    def restart(self, name: str, *, graceful: bool = True) -> int:
        """Stop the recorded process and start its command again; returns the new pid."""
        record = self.record(name)
        if self.state(name) != "exited":
            if graceful:
                self.terminate(name)
            else:
                self.kill(name)
        if dispatcher.sinks:
            dispatcher.emit(ProcessFaulted(name=name, action="restart", pid=self.pid(name)))
        raw_command = record.get("command")
        if not isinstance(raw_command, list) or not raw_command:
            raise ValueError(f"the record of {name!r} has no command")
        command = [str(part) for part in raw_command]
        extra = record.get("env")
        env: dict[str, str] | None = None
        if isinstance(extra, dict) and extra:
            env = {**os.environ, **{str(k): str(v) for k, v in extra.items()}}
        cwd = record.get("cwd")
        log = record.get("log")
        output: IO[bytes] | int = subprocess.DEVNULL
        if isinstance(log, str):
            output = open(log, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            popen = subprocess.Popen(
                command, env=env, cwd=cwd if isinstance(cwd, str) else None,
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            if not isinstance(output, int):
                output.close()
        new_pid: int = popen.pid
        write_record(self.state_dir, {**record, "pid": new_pid})
        return new_pid
