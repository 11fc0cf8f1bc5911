"""``Supervisor``: start named commands and kill, pause, resume or restart them."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from time import monotonic
from typing import IO

from ..events import dispatcher
from .process_directory import ProcessDirectory, ProcessState, write_record
from .process_events import ProcessFaulted

__all__ = ["ProcessInfo", "ProcessState", "Supervisor"]


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """A snapshot of one supervised process."""

    name: str
    command: tuple[str, ...]
    pid: int | None
    state: ProcessState
    returncode: int | None
    restarts: int


@dataclass(slots=True)
class _Managed:
    name: str
    command: tuple[str, ...]
    env: dict[str, str] | None
    cwd: str | None
    log: Path | None
    popen: subprocess.Popen[bytes] | None = None
    paused: bool = False
    stopped: bool = False
    restarts: int = 0
    output: IO[bytes] | None = field(default=None, repr=False)
    ready_port: int | None = None
    ready_timeout: float = 10.0


class Supervisor:
    """Starts named commands and injects process faults into them.

    ``log_dir``: when given, each process's stdout and stderr go to ``<log_dir>/<name>.log``
    (appended across restarts); otherwise they are discarded. ``state_dir``: when given, each
    start writes ``<state_dir>/<name>.json`` (pid, command, cwd, env, log) so that another
    process can fault it through ``ProcessDirectory``. Use as a context manager, or call
    ``close()``, to stop everything it started (and anything restarted from its records).
    """

    def __init__(
        self, *, log_dir: str | os.PathLike[str] | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None, grace: float = 5.0,
    ) -> None:
        if grace < 0:
            raise ValueError(f"grace must be >= 0 seconds, got {grace!r}")
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.env = dict(env) if env is not None else None
        self.grace = grace
        self._procs: dict[str, _Managed] = {}
        self._lock = threading.RLock()

    # -- lifecycle -------------------------------------------------------------------------
    def start(
        self, name: str, command: Sequence[str] | str, *, env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None, ready_port: int | None = None,
        ready_timeout: float = 10.0,
    ) -> ProcessInfo:
        """Start ``command`` (argv list, or a string run by ``/bin/sh -c``) as ``name``.

        ``env`` is added to the supervisor's environment (itself added to ``os.environ``).
        With ``ready_port``, return only once something accepts connections on
        127.0.0.1:``ready_port`` (also after each ``restart``): RuntimeError if the process
        exits first, TimeoutError after ``ready_timeout`` seconds.
        Raises ValueError if a process of that name is still running.
        """
        if not name:
            raise ValueError("name must be a non-empty string")
        if ready_port is not None and not 0 < ready_port <= 65535:
            raise ValueError(f"ready_port must be in 1..65535, got {ready_port!r}")
        if ready_timeout <= 0:
            raise ValueError(f"ready_timeout must be > 0 seconds, got {ready_timeout!r}")
        argv = ("/bin/sh", "-c", command) if isinstance(command, str) else tuple(command)
        if not argv:
            raise ValueError("command must not be empty")
        with self._lock:
            current = self._procs.get(name)
            if current is not None and self._state(current) in ("running", "paused"):
                raise ValueError(f"process {name!r} is already running (pid {current.popen.pid})"
                                 if current.popen else f"process {name!r} is already running")
            merged = {**(self.env or {}), **(env or {})}
            managed = _Managed(
                name=name, command=argv, env=merged or None,
                cwd=os.fspath(cwd) if cwd is not None else None,
                log=self.log_dir / f"{name}.log" if self.log_dir is not None else None,
                restarts=current.restarts if current is not None else 0,
                ready_port=ready_port, ready_timeout=ready_timeout,
            )
            self._spawn(managed)
            self._procs[name] = managed
        self._wait_ready(managed)
        return self.info(name)

    def _wait_ready(self, managed: _Managed) -> None:
        port, popen = managed.ready_port, managed.popen
        if port is None or popen is None:
            return
        end = monotonic() + managed.ready_timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                pass
            code = popen.poll()
            if code is not None:
                tail = ""
                if managed.log is not None and managed.log.exists():
                    tail = "; log tail:\n" + managed.log.read_text(errors="replace")[-1500:]
                raise RuntimeError(
                    f"process {managed.name!r} exited with {code} before listening on "
                    f"port {port}{tail}"
                )
            if monotonic() >= end:
                raise TimeoutError(
                    f"process {managed.name!r} not listening on port {port} after "
                    f"{managed.ready_timeout}s"
                )
            threading.Event().wait(0.02)

    def _spawn(self, managed: _Managed) -> None:
        env = {**os.environ, **managed.env} if managed.env else None
        if managed.log is not None:
            managed.log.parent.mkdir(parents=True, exist_ok=True)
            managed.output = managed.log.open("ab")
        managed.popen = subprocess.Popen(
            managed.command, env=env, cwd=managed.cwd, stdin=subprocess.DEVNULL,
            stdout=managed.output or subprocess.DEVNULL, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: signals reach its children too
        )
        managed.paused = False
        managed.stopped = False
        if self.state_dir is not None:
            write_record(self.state_dir, {
                "name": managed.name, "pid": managed.popen.pid, "command": list(managed.command),
                "cwd": managed.cwd, "env": managed.env,
                "log": str(managed.log) if managed.log is not None else None,
            })

    def _get(self, name: str) -> _Managed:
        managed = self._procs.get(name)
        if managed is None:
            raise KeyError(f"no supervised process named {name!r}")
        return managed

    def _signal(self, managed: _Managed, sig: int) -> None:
        popen = managed.popen
        if popen is None or popen.poll() is not None:
            return
        try:
            os.killpg(popen.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:  # pragma: no cover - the group leader changed owner
            popen.send_signal(sig)

    def _emit(self, managed: _Managed, action: str) -> None:
        if dispatcher.sinks:
            pid = managed.popen.pid if managed.popen is not None else None
            dispatcher.emit(ProcessFaulted(name=managed.name, action=action, pid=pid))

    # -- faults ----------------------------------------------------------------------------
    def kill(self, name: str) -> None:
        """SIGKILL the process group: a crash with no chance to clean up. Waits for it."""
        with self._lock:
            managed = self._get(name)
            self._emit(managed, "kill")
            self._signal(managed, signal.SIGKILL)
            self._reap(managed)

    def terminate(self, name: str, grace: float | None = None) -> None:
        """SIGTERM (a graceful stop), then SIGKILL if it is still alive after ``grace``."""
        with self._lock:
            managed = self._get(name)
            self._emit(managed, "terminate")
            if managed.paused:
                self._signal(managed, signal.SIGCONT)  # a stopped process cannot handle TERM
            self._signal(managed, signal.SIGTERM)
            popen = managed.popen
            if popen is not None:
                try:
                    popen.wait(timeout=self.grace if grace is None else grace)
                except subprocess.TimeoutExpired:
                    self._signal(managed, signal.SIGKILL)
            self._reap(managed)

    def pause(self, name: str) -> None:
        """SIGSTOP: the process is alive but answers nothing (a long GC pause, a hung VM)."""
        self._set_paused(name, True)

    def resume(self, name: str) -> None:
        """SIGCONT a paused process."""
        self._set_paused(name, False)

    def _set_paused(self, name: str, paused: bool) -> None:
        with self._lock:
            managed = self._get(name)
            self._emit(managed, "pause" if paused else "resume")
            self._signal(managed, signal.SIGSTOP if paused else signal.SIGCONT)
            managed.paused = paused

    def restart(self, name: str, *, graceful: bool = True) -> ProcessInfo:
        """Stop it (terminate, or kill when ``graceful=False``) and start the same command."""
        with self._lock:
            managed = self._get(name)
            if self._state(managed) in ("running", "paused"):
                if graceful:
                    self.terminate(name)
                else:
                    self.kill(name)
            self._emit(managed, "restart")
            managed.restarts += 1
            self._spawn(managed)
        self._wait_ready(managed)
        return self.info(name)

    def _reap(self, managed: _Managed) -> None:
        popen = managed.popen
        if popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=10)
        managed.stopped = True
        managed.paused = False
        if managed.output is not None:
            managed.output.close()
            managed.output = None

    # -- state -----------------------------------------------------------------------------
    def _state(self, managed: _Managed) -> ProcessState:
        popen = managed.popen
        if popen is None or popen.poll() is not None:
            return "stopped" if managed.stopped else "exited"
        return "paused" if managed.paused else "running"

    def _info(self, managed: _Managed) -> ProcessInfo:
        popen = managed.popen
        return ProcessInfo(
            name=managed.name, command=managed.command,
            pid=popen.pid if popen is not None else None, state=self._state(managed),
            returncode=popen.poll() if popen is not None else None, restarts=managed.restarts,
        )

    def state(self, name: str) -> ProcessState:
        """``running``, ``paused``, ``stopped`` (by the supervisor) or ``exited`` (on its own)."""
        with self._lock:
            return self._state(self._get(name))

    def info(self, name: str) -> ProcessInfo:
        with self._lock:
            return self._info(self._get(name))

    def states(self) -> dict[str, ProcessState]:
        """Every supervised process's state, by name."""
        with self._lock:
            return {name: self._state(m) for name, m in self._procs.items()}

    def pid(self, name: str) -> int | None:
        return self.info(name).pid

    @property
    def names(self) -> list[str]:
        return list(self._procs)

    def wait(self, name: str, timeout: float | None = None) -> int | None:
        """Wait for the process to end; its return code (None if still alive at timeout)."""
        popen = self._get(name).popen
        if popen is None:
            return None
        try:
            return popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        """Stop every process it started (TERM, then KILL after the grace period)."""
        with self._lock:
            for name, managed in list(self._procs.items()):
                if self._state(managed) in ("running", "paused"):
                    self.terminate(name)
                elif managed.output is not None:
                    managed.output.close()
                    managed.output = None
                if self.state_dir is not None:  # restarted from the records, elsewhere?
                    directory = ProcessDirectory(self.state_dir, grace=self.grace)
                    with contextlib.suppress(KeyError, ValueError, OSError):
                        if directory.state(name) in ("running", "paused"):
                            directory.terminate(name)

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

