"""The `make demo` example runs and its table comes from the service's own ledger."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "flaky_service.py"


def test_flaky_service_example_prints_both_rows_and_stoic_charges_nobody_twice() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--orders", "24", "--seed", "3"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows = {
        m.group(1): [float(x) for x in m.groups()[1:]]
        for m in re.finditer(r"^(naive|stoic)\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)s$", done.stdout, re.M)
    }
    assert set(rows) == {"naive", "stoic"}
    calls, twice, _surfaced, _wall = rows["stoic"]
    assert twice == 0
    assert calls >= 24  # every order reached the service at least once


def test_bad_option_is_a_clear_error() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--orders", "0"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "--orders" in done.stderr
