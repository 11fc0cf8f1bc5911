"""Start, kill and restart the shop's processes, and leave nothing behind.

Every service runs in its own process group (``start_new_session``), so a kill reaches the
whole group; the set of live groups is cleaned up at exit, on SIGINT/SIGTERM and from
``close()``. Each child also watches its parent (see ``services.common.watch_parent``) and
leaves if the demo itself dies by SIGKILL, where no handler can run. Ports are picked free
by binding port 0.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["ProcessGroup", "free_port", "wait_http"]

_LIVE: set[int] = set()  # process group ids of every child still running, for atexit
_HANDLERS_INSTALLED = False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(
    url: str, timeout: float = 20.0, alive: Callable[[], bool] | None = None,
) -> None:
    """Block until ``url`` answers an HTTP GET (any status); TimeoutError otherwise.

    ``alive``: stop waiting at once when it returns False (the process died on start).
    """
    import httpx

    end = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < end:
        if alive is not None and not alive():
            raise TimeoutError(f"the process serving {url} exited")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError as exc:
            last = exc
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s ({last!r})")


def _kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _kill_all() -> None:
    for pgid in list(_LIVE):
        _kill_group(pgid)
        _LIVE.discard(pgid)


def _install_handlers() -> None:
    global _HANDLERS_INSTALLED
    if _HANDLERS_INSTALLED:
        return
    _HANDLERS_INSTALLED = True
    atexit.register(_kill_all)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            previous = signal.getsignal(sig)
        except ValueError:
            continue

        def handler(signum: int, frame: object, previous: object = previous) -> None:
            _kill_all()
            if callable(previous):
                previous(signum, frame)
            raise SystemExit(128 + signum)

        with contextlib.suppress(ValueError):  # not the main thread: atexit still covers us
            signal.signal(sig, handler)


class ProcessGroup:
    """Named child processes on a ``stoic.chaos.Supervisor``: start, kill, start again, close.

    The supervisor gives each child its own process group and does the killing; this class
    adds the safety net the demo needs: every live group is also killed at exit and on
    SIGTERM/SIGHUP. KeyboardInterrupt (Ctrl-C) propagates; the caller's ``finally`` calls
    ``close()``, and atexit catches anything that escapes.
    """

    def __init__(self, logdir: str | Path) -> None:
        from stoic.chaos import Supervisor

        self.logdir = Path(logdir)
        self.commands: dict[str, list[str]] = {}
        self.supervisor = Supervisor(log_dir=self.logdir, env={"PYTHONUNBUFFERED": "1"},
                                     grace=1.0)
        _install_handlers()

    def _track(self, name: str) -> None:
        pid = self.supervisor.pid(name)
        if pid is not None:
            _LIVE.add(pid)

    def start(self, name: str, command: list[str] | None = None) -> None:
        """Start ``name`` (with ``command`` the first time; the same command on restart)."""
        if command is not None:
            self.commands[name] = command
        self.supervisor.start(name, self.commands[name])
        self._track(name)

    def kill(self, name: str) -> None:
        """SIGKILL ``name`` and its whole process group, and reap it."""
        if name not in self.commands:
            return
        pid = self.supervisor.pid(name)
        with contextlib.suppress(KeyError):
            self.supervisor.kill(name)
            self.supervisor.wait(name, timeout=5.0)
        if pid is not None:
            _LIVE.discard(pid)

    def alive(self, name: str) -> bool:
        """Whether ``name`` is running."""
        try:
            return self.supervisor.state(name) == "running"
        except KeyError:
            return False

    def close(self) -> None:
        """Stop every process: SIGTERM, a short grace, then SIGKILL; reap all."""
        pids = [self.supervisor.pid(name) for name in self.commands]
        for pid in pids:  # all at once: the supervisor then waits for each in turn
            if pid is not None:
                _kill_group(pid, signal.SIGTERM)
        self.supervisor.close()
        for pid in pids:
            if pid is not None:
                _kill_group(pid)
                _LIVE.discard(pid)

    @staticmethod
    def python(*args: str) -> list[str]:
        """A command line running this interpreter with ``args``."""
        return [sys.executable, *args]
