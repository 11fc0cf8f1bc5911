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

POSIX only (signals and process groups).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal, Protocol

from ..events import Event, dispatcher

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

ProcessState = Literal["running", "paused", "stopped", "exited"]
"""``running``; ``paused`` (SIGSTOP); ``stopped`` by the supervisor; ``exited`` on its own."""


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
        end = _monotonic() + managed.ready_timeout
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
            if _monotonic() >= end:
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
            _write_record(self.state_dir, {
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


# ---------------------------------------------------------------------------------------------
# processes recorded on disk


def _write_record(state_dir: Path, record: dict[str, object]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    target = state_dir / f"{record['name']}.json"
    temporary = target.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(record), encoding="utf-8")
    temporary.replace(target)  # atomic: a reader never sees half a record


def _proc_state(pid: int) -> str | None:
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
        code = _proc_state(self.pid(name))
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
        end = _monotonic() + timeout
        while self.state(name) != "exited":
            if _monotonic() >= end:
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
        end = _monotonic() + timeout
        while not done(self.state(name)) and _monotonic() < end:
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
        _write_record(self.state_dir, {**record, "pid": new_pid})
        return new_pid


def _monotonic() -> float:
    import time

    return time.monotonic()


# ---------------------------------------------------------------------------------------------
# partitions


class ProxyControl(Protocol):
    """Anything that can disable and enable a proxy by name (ProxyServer, ProxyClient)."""

    def disable(self, name: str) -> None: ...
    def enable(self, name: str) -> None: ...


def partition(
    control: ProxyControl, proxies: Iterable[str], *, name: str = "partition"
) -> list[str]:
    """Disable ``proxies`` (new connections refused, open ones dropped); return their names."""
    return _switch(control.disable, proxies, name, NetworkPartitioned)


def heal(control: ProxyControl, proxies: Iterable[str], *, name: str = "partition") -> list[str]:
    """Enable ``proxies`` again; return their names."""
    return _switch(control.enable, proxies, name, NetworkHealed)


def _switch(
    switch: Callable[[str], None], proxies: Iterable[str], name: str,
    event: type[NetworkPartitioned] | type[NetworkHealed],
) -> list[str]:
    """Apply ``switch`` to each proxy in turn, then publish ``event`` for all of them."""
    names = list(proxies)
    for proxy in names:
        switch(proxy)
    if dispatcher.sinks:
        dispatcher.emit(event(name=name, proxies=tuple(names)))
    return names


class Network:
    """Which proxy carries traffic from which service to which, so groups can be cut apart.

    ``links`` maps a proxy name to ``(client_service, server_service)``: the proxy that
    ``orders`` uses to reach ``payments`` is ``{"payments-from-orders": ("orders", "payments")}``.
    ``partition(["gateway", "orders"], ["payments"])`` disables every proxy between the two
    groups, in both directions; ``heal()`` enables them all again.
    """

    def __init__(
        self, control: ProxyControl, links: Mapping[str, tuple[str, str]] | None = None
    ) -> None:
        self.control = control
        self.links: dict[str, tuple[str, str]] = dict(links or {})
        self.cut: list[str] = []

    def link(self, proxy: str, client: str, server: str) -> None:
        """Declare that ``client`` reaches ``server`` through ``proxy``."""
        self.links[proxy] = (client, server)

    def between(self, *groups: Iterable[str]) -> list[str]:
        """Proxies whose two ends are in different groups (services in no group stay linked)."""
        member: dict[str, int] = {}
        for index, group in enumerate(groups):
            for service in group:
                if service in member:
                    raise ValueError(f"service {service!r} is in two groups")
                member[service] = index
        return [
            proxy for proxy, (a, b) in self.links.items()
            if a in member and b in member and member[a] != member[b]
        ]

    def partition(self, *groups: Iterable[str]) -> list[str]:
        """Cut the network between ``groups``; returns the disabled proxies."""
        if len(groups) < 2:
            raise ValueError(f"a partition needs at least two groups, got {len(groups)}")
        proxies = [p for p in self.between(*groups) if p not in self.cut]
        self.cut.extend(partition(self.control, proxies))
        return proxies

    def heal(self) -> list[str]:
        """Enable every proxy this network disabled."""
        cut, self.cut = self.cut, []
        return heal(self.control, cut)

    @contextlib.contextmanager
    def partitioned(self, *groups: Iterable[str]) -> Iterator[list[str]]:
        """Partitioned inside the block, healed after it (even on error)."""
        proxies = self.partition(*groups)
        try:
            yield proxies
        finally:
            self.heal()


# ---------------------------------------------------------------------------------------------
# the monkey


@dataclass(frozen=True, slots=True)
class MonkeyStruck:
    """One strike: ``delay`` seconds after the previous one, ``action`` on ``target``."""

    delay: float
    target: str
    action: str


class Monkey:
    """Kill (or pause, or terminate) a random member of ``group`` at random intervals.

    Intervals are uniform in ``[min_interval, max_interval]`` seconds and targets uniform over
    ``group``, both from ``random.Random(seed)``: the same seed gives the same ``plan``. With
    ``restart_after`` a struck process is restarted (or resumed, after a pause) that many
    seconds later. ``start()`` runs the schedule on a thread until ``stop()`` or ``rounds``.
    """

    def __init__(
        self, supervisor: Supervisor, group: Sequence[str], *, min_interval: float,
        max_interval: float, seed: int | None = None,
        action: Literal["kill", "terminate", "pause"] = "kill",
        restart_after: float | None = None, rounds: int | None = None,
    ) -> None:
        if not group:
            raise ValueError("group must name at least one process")
        if min_interval < 0:
            raise ValueError(f"min_interval must be >= 0 seconds, got {min_interval!r}")
        if max_interval < min_interval:
            raise ValueError(
                f"max_interval must be >= min_interval ({min_interval!r}), got {max_interval!r}"
            )
        if action not in ("kill", "terminate", "pause"):
            raise ValueError(f"action must be kill, terminate or pause, got {action!r}")
        if restart_after is not None and restart_after < 0:
            raise ValueError(f"restart_after must be >= 0 seconds, got {restart_after!r}")
        if rounds is not None and rounds < 0:
            raise ValueError(f"rounds must be >= 0, got {rounds!r}")
        self.supervisor = supervisor
        self.group = tuple(group)
        self.min_interval = min_interval
        self.max_interval = max_interval
        self.seed = seed
        self.action = action
        self.restart_after = restart_after
        self.rounds = rounds
        self.history: list[MonkeyStruck] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def plan(self, rounds: int) -> list[MonkeyStruck]:
        """The first ``rounds`` strikes this monkey will make (the same for the same seed)."""
        rng = random.Random(self.seed)
        return [self._next(rng) for _ in range(rounds)]

    def _next(self, rng: random.Random) -> MonkeyStruck:
        delay = rng.uniform(self.min_interval, self.max_interval)
        return MonkeyStruck(delay=delay, target=rng.choice(self.group), action=self.action)

    def start(self) -> Monkey:
        if self._thread is not None:
            raise RuntimeError("monkey already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="stoic-monkey", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=30)

    def __enter__(self) -> Monkey:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        rng = random.Random(self.seed)
        done = 0
        while self.rounds is None or done < self.rounds:
            strike = self._next(rng)
            if self._stop.wait(strike.delay):
                return
            self._strike(strike)
            self.history.append(strike)
            done += 1
            if self.restart_after is not None:
                if self._stop.wait(self.restart_after):
                    return
                self._recover(strike.target)

    def _strike(self, strike: MonkeyStruck) -> None:
        with contextlib.suppress(KeyError):
            getattr(self.supervisor, strike.action)(strike.target)

    def _recover(self, target: str) -> None:
        with contextlib.suppress(KeyError, ValueError):
            if self.action == "pause":
                self.supervisor.resume(target)
            else:
                self.supervisor.restart(target)
