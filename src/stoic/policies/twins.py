"""One source for a call path's sync and async twins: write it async, get the sync one from it.

The speed trick of this module, for ``benchmarks/overhead.py`` (the CircuitBreaker and Retry
rows, sync and async, and the Pipeline rows): a per-call path must not spend a Python frame it
can avoid, so a sync path and its async twin cannot share their logic through helper
functions called per call (a frame each, 10-25% of a closed breaker's cost), and cannot be
one ``async def`` driven synchronously (a coroutine object per call). Writing each twin by
hand repeats the logic, and the two drift apart.

So a path is written once, as an ordinary async module that mypy and ruff check like any
other (``policies/retry_loop.py``, ``policies/breaker/paths_async.py``), and ``unasync``
compiles that module's source a second time as its synchronous twin: the same tree with every
``async``/``await`` removed and the names in ``renames`` replaced (``_alease`` -> ``_lease``,
``asleep`` -> ``sleep``), as httpcore's ``unasync`` does at build time. Both run the bytecode
a hand-written twin would. Only the module's functions and imports are compiled again (its
constants are already in the globals the twin runs in), straight from the transformed tree:
no source text is generated, and the twin keeps the module's file name and line numbers, so
a traceback through a sync path points at the line of the async source it came from. This
costs a few milliseconds at import, once per module.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Mapping
from types import ModuleType
from typing import Any

__all__ = ["unasync"]


def unasync(module: ModuleType, *, renames: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The synchronous twin of ``module`` (async code): the scope its source defines, run again
    with ``async``/``await`` removed and ``renames`` applied, in a copy of its globals."""
    tree = ast.parse(inspect.getsource(module))
    tree.body = [node for node in tree.body if _kept(node)]
    tree = ast.fix_missing_locations(_Unasync(renames or {}).visit(tree))
    scope = dict(vars(module))
    code = compile(tree, inspect.getsourcefile(module) or module.__name__, "exec")
    exec(code, scope)  # stoic's own module, compiled at import
    return scope


def _kept(node: ast.stmt) -> bool:
    """What the twin compiles again: the functions and the imports. The imports cost nothing
    (the modules are loaded) and matter: ``from __future__`` keeps annotations unevaluated,
    and CPython 3.11 reads ``clock.monotonic`` with ``LOAD_ATTR`` only when ``clock`` is bound
    by an import in the code it compiles."""
    return isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Import, ast.ImportFrom))


class _Unasync(ast.NodeTransformer):
    """``async def`` -> ``def``, ``await x`` -> ``x``, ``async with/for`` -> ``with/for``."""

    def __init__(self, renames: Mapping[str, str]) -> None:
        self.renames = renames

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> ast.FunctionDef:
        self.generic_visit(node)
        node.name = self.renames.get(node.name, node.name)
        return ast.copy_location(ast.FunctionDef(**{f: getattr(node, f) for f in node._fields}),
                                 node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.FunctionDef:
        self.generic_visit(node)
        node.name = self.renames.get(node.name, node.name)
        return node

    def visit_arg(self, node: ast.arg) -> ast.arg:
        node.arg = self.renames.get(node.arg, node.arg)
        return node

    def visit_AsyncWith(self, node: ast.AsyncWith) -> ast.With:
        self.generic_visit(node)
        return ast.copy_location(ast.With(**{f: getattr(node, f) for f in node._fields}), node)

    def visit_AsyncFor(self, node: ast.AsyncFor) -> ast.For:
        self.generic_visit(node)
        return ast.copy_location(ast.For(**{f: getattr(node, f) for f in node._fields}), node)

    def visit_Await(self, node: ast.Await) -> ast.expr:
        return self.visit(node.value)  # type: ignore[no-any-return]

    def visit_Name(self, node: ast.Name) -> ast.Name:
        node.id = self.renames.get(node.id, node.id)
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.Attribute:
        self.generic_visit(node)
        node.attr = self.renames.get(node.attr, node.attr)
        return node
