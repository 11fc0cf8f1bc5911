"""Run one shop service: ``python -m stoic.demo.services NAME CONFIG_JSON``."""

from __future__ import annotations

import logging
import sys

from . import build_app
from .common import ShopConfig, watch_parent

__all__ = ["main"]


def main(argv: list[str]) -> None:
    """Start service ``argv[0]`` with the configuration file ``argv[1]`` under uvicorn."""
    import uvicorn

    if len(argv) != 2:
        raise SystemExit("usage: python -m stoic.demo.services NAME CONFIG_JSON")
    name, path = argv
    cfg = ShopConfig.load(path)
    watch_parent(remove=cfg.workdir if cfg.cleanup else None)
    logging.basicConfig(level=logging.ERROR, format=f"{name}: %(levelname)s %(message)s")
    app = build_app(name, cfg)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=cfg.ports[name], log_level="critical", access_log=False,
        lifespan="auto", timeout_graceful_shutdown=1, backlog=4096,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main(sys.argv[1:])
