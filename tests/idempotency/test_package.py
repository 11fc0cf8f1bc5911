"""The package itself: imports with the stdlib alone, exports what it says, never unpickles."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import stoic.idempotency

SRC = Path(stoic.idempotency.__file__).resolve().parent
CODEC = SRC.parent / "codec.py"

_WITHOUT_EXTRAS = """
import sys
for name in ("redis", "psycopg", "psycopg_pool", "starlette", "typer"):
    sys.modules[name] = None          # importing any of them now raises ImportError
import tempfile, os
import stoic
from stoic.idempotency import SQLiteStore, MemoryStore, RedisStore, idempotent

store = SQLiteStore(os.path.join(tempfile.mkdtemp(), "i.db"))

@stoic.idempotent(store=store, key="{n}")
def double(n: int) -> int:
    return 2 * n

assert double(2) == double(2) == 4
try:
    RedisStore("redis://127.0.0.1:6379/0")
except ImportError as exc:
    assert "stoic[redis]" in str(exc), exc
else:
    raise AssertionError("RedisStore without redis-py must say which extra to install")
print("ok")
"""


def test_package_imports_and_works_without_any_extra_installed() -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC.parent.parent)}
    done = subprocess.run([sys.executable, "-c", _WITHOUT_EXTRAS], capture_output=True,
                          text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_every_exported_name_exists_once() -> None:
    names = stoic.idempotency.__all__
    assert len(set(names)) == len(names)
    for name in names:
        assert getattr(stoic.idempotency, name) is not None, name
    assert stoic.idempotent is stoic.idempotency.idempotent


def test_no_module_that_reads_stored_data_can_unpickle_or_evaluate_it() -> None:
    forbidden_modules = {"pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle"}
    forbidden_builtins = {"eval", "exec", "compile", "__import__"}
    for path in [*SRC.glob("*.py"), CODEC]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not {a.name.split(".")[0] for a in node.names} & forbidden_modules, path
            elif isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] not in forbidden_modules, path
            elif isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Name):
                    assert func.id not in forbidden_builtins, (path, func.id)
                elif isinstance(func, ast.Attribute) and func.attr == "import_module":
                    # only the lazy loader in __init__, over its own fixed module names
                    assert path.name == "__init__.py", path
