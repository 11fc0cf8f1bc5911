"""Run stoic's proxy for one demo run: ``python -m stoic.demo.proxy PORT WORKDIR``.

The same server as ``stoic proxy``, plus the parent watch every demo process has, so the
proxy never outlives the demo.
"""

from __future__ import annotations

import asyncio
import sys

from .services.common import watch_parent

__all__ = ["main"]


def main(argv: list[str]) -> None:
    """Serve the proxy API on 127.0.0.1:``argv[0]`` until killed.

    ``argv[1]``, the run's working directory, only labels the process (so a look at the
    process list tells which run it belongs to).
    """
    from stoic.chaos.proxy import serve

    watch_parent()
    asyncio.run(serve("127.0.0.1", int(argv[0]), ()))


if __name__ == "__main__":
    main(sys.argv[1:])
