"""The public surface: every name in __all__ exists, the list is sorted, nothing extra leaks."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import stoic


def test_all_is_sorted_and_every_name_resolves() -> None:
    assert stoic.__all__ == sorted(stoic.__all__)
    for name in stoic.__all__:
        assert getattr(stoic, name) is not None, name


def test_every_module_declares_all() -> None:
    missing = []
    for info in pkgutil.walk_packages(stoic.__path__, "stoic."):
        if ".demo" in info.name or info.name.endswith("__main__"):
            continue
        try:
            module = importlib.import_module(info.name)
        except ImportError:
            continue  # an optional extra that is not installed
        if not hasattr(module, "__all__"):
            missing.append(info.name)
    assert missing == []


def test_import_stoic_loads_only_the_standard_library() -> None:
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import stoic\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(','.join(sorted(new - set(sys.stdlib_module_names) - {'stoic'})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_design_contract_names_exist() -> None:
    for name in [
        "Outcome", "Verdict", "classify", "classify_status", "register_classifier", "Retry",
        "RetryBudget", "Timeout", "deadline", "remaining", "Fallback", "Pipeline", "events",
        "context", "testing", "backoff", "DeadlineExceeded", "Rejected",
    ]:
        assert hasattr(stoic, name), name
    assert callable(stoic.backoff.exponential)
    assert callable(stoic.testing.virtual_time)
