"""Every ```python block in docs/*.md runs: a page's blocks run in order, in one fresh process,
and then again in a second fresh process from the same directory: an example a reader runs twice
must pass twice (use a temporary directory, or clean up what it writes).

Blocks fenced as ```py (not ```python) are shown but not run: use that for fragments.
A page whose examples need a server names it in an HTML comment on its first line,
``<!-- needs: redis -->`` (redis, postgres, rabbitmq), and is skipped or failed like any test
that needs the service.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from support import require_service

DOCS = Path(__file__).resolve().parent.parent / "docs"
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```", re.S | re.M)
_NEEDS = re.compile(r"<!--\s*needs:\s*([\w, ]+)-->")
_SERVICES = {"redis": 6379, "postgres": 5432, "rabbitmq": 5672, "nats": 4222}

PAGES = sorted(p for p in DOCS.glob("**/*.md") if _BLOCK.search(p.read_text()))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_doc_examples_run(page: Path, tmp_path: Path) -> None:
    text = page.read_text()
    needs = _NEEDS.search(text)
    if needs:
        for name in (n.strip() for n in needs.group(1).split(",")):
            require_service(name, "127.0.0.1", _SERVICES[name])
    source = "\n\n".join(block for block in _BLOCK.findall(text))
    script = tmp_path / "example.py"
    script.write_text(source)
    env = {**os.environ, "PYTHONPATH": str(DOCS.parent / "src")}
    for run in ("first", "second"):
        done = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
            text=True, timeout=120,
        )
        assert done.returncode == 0, (
            f"{page.name} examples failed on the {run} run from the same directory:\n"
            f"{done.stdout}\n{done.stderr}"
        )


def test_every_capability_has_a_page_with_a_runnable_example() -> None:
    assert len(PAGES) >= 5, f"expected doc pages with runnable examples, found {PAGES}"
