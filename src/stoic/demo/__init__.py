"""``stoic demo``: a small real shop under chaos, written the naive way and the stoic way.

Four services (``orders``, ``payments``, ``inventory``, ``fulfillment``), each its own
uvicorn process with its own SQLite database, behind stoic's Toxiproxy-compatible chaos
proxy and run by stoic's ``Supervisor``. A load generator sends orders while a scripted,
seeded scenario slows, breaks, kills and partitions them; the scorecard is then counted from
the services' own databases. See ``docs/demo.md``.

Run it with ``stoic demo`` (extra ``stoic[demo]``), or from Python::

    from stoic.demo import RunOptions, run
    result = run(RunOptions(mode="stoic", duration=20))
    print(result.scorecard)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runner import RunOptions, RunResult, Shop, run
    from .scorecard import Scorecard

__all__ = ["RunOptions", "RunResult", "Scorecard", "Shop", "run"]


def __getattr__(name: str) -> Any:
    # loaded on first use: importing stoic.demo starts nothing and imports no extras
    if name in ("RunOptions", "RunResult", "Shop", "run"):
        from . import runner

        return getattr(runner, name)
    if name == "Scorecard":
        from .scorecard import Scorecard

        return Scorecard
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
