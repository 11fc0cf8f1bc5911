"""The demo's working directories: made with an owner, removed after the run, swept after a crash.

Every run keeps its services' databases and logs in a directory of its own (they are the
scorecard's ground truth while the run lasts). ``stoic demo`` removes it at the end unless
asked to keep it; a directory whose owner died without cleaning up (the demo was killed) is
removed by the shop's own processes as they leave, and, should they have been killed too, by
the next ``stoic demo`` (``sweep``). The owner is recorded as ``owner.pid`` inside it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["OWNER_FILE", "PREFIX", "make", "remove", "sweep"]

PREFIX = "stoic-demo-"
OWNER_FILE = "owner.pid"


def make(label: str, parent: Path | None = None) -> Path:
    """A new working directory for ``label`` (``parent``/``label`` when given, else a temp one)."""
    if parent is not None:
        path = parent / label
        path.mkdir(parents=True, exist_ok=True)
    else:
        path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{label}-"))
    (path / OWNER_FILE).write_text(str(os.getpid()))
    return path


def remove(path: str | Path) -> None:
    """Delete a working directory and everything in it (nothing if it is already gone)."""
    shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(root: Path | None = None) -> list[Path]:
    """Remove what earlier runs left behind in ``root`` (the temp dir): their owner is dead.

    A directory without an owner file, or whose owner is still running (another demo), is
    left alone. Returns what was removed.
    """
    removed: list[Path] = []
    base = Path(root or tempfile.gettempdir())
    for path in base.glob(f"{PREFIX}*"):
        owner = path / OWNER_FILE
        if not path.is_dir() or not owner.is_file():
            continue
        with contextlib.suppress(OSError, ValueError):
            if not _alive(int(owner.read_text().strip())):
                remove(path)
                removed.append(path)
    return removed
