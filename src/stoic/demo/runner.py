"""Run the shop under the scenario once, in one mode, and count what happened.

One run: pick free ports, start the four services (and the chaos proxy when it is available)
as separate processes, send the load, apply the scenario's faults on time, scrape each
service's ``/metrics``, stop the load, drain (wait for fulfillment to finish what it can),
read the scorecard from the databases, and stop every process. Nothing outlives the run:
processes are killed in ``finally``, at exit and on SIGTERM, and each child leaves on its own
if the runner dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import chaosnet, workdirs
from .loadgen import LoadGenerator, Request
from .procs import ProcessGroup, free_port, wait_http
from .scenario import Scenario, build_scenario
from .scorecard import Scorecard, compute, series
from .services.common import SERVICES, ShopConfig

__all__ = ["BACKENDS", "MODES", "RunOptions", "RunResult", "Shop", "run"]

MODES = ("naive", "stoic")
BACKENDS = ("sqlite", "redis", "rabbitmq", "postgres")
_STATE = re.compile(r'^stoic_circuit_breaker_state\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)', re.M)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How to run: mode, length (s), load (orders/s), seed, backend, where to keep the files."""

    mode: str = "stoic"
    duration: float = 30.0
    rps: float = 30.0
    seed: int = 1
    backend: str = "sqlite"
    workdir: str | None = None
    edge_deadline: float = 2.0
    client_timeout: float = 8.0
    drain_timeout: float = 30.0
    redis_url: str = "redis://127.0.0.1:6379/0"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    postgres_url: str = "postgresql://postgres@127.0.0.1:5432/test"
    cleanup: bool = False  # delete the working directory if the runner dies mid-run

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if not 6.0 <= self.duration <= 3600.0:
            raise ValueError(f"duration must be in [6, 3600] seconds, got {self.duration!r}")
        if not 1.0 <= self.rps <= 200.0:
            raise ValueError(f"rps must be in [1, 200] orders per second, got {self.rps!r}")
        if not 0.2 <= self.edge_deadline <= 30.0:
            raise ValueError(f"edge_deadline must be in [0.2, 30] seconds, got {self.edge_deadline!r}")


@dataclass(slots=True)
class RunResult:
    """What one run produced: the scorecard, time series for the report, the timeline."""

    options: RunOptions
    scorecard: Scorecard
    scenario: Scenario
    series: dict[str, list[Any]]
    breakers: list[dict[str, Any]]
    network_faults: str
    workdir: str
    notes: list[str] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    started: float = 0.0
    drain_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {
            "mode": self.options.mode, "seed": self.options.seed,
            "backend": self.options.backend, "duration": self.options.duration,
            "rps": self.options.rps, "edge_deadline": self.options.edge_deadline,
            "network_faults": self.network_faults,
            "phases": [{"name": p.name, "start": p.start, "end": p.end, "faults": list(p.faults)}
                       for p in self.scenario.phases],
            "scorecard": self.scorecard.as_dict(), "series": self.series,
            "breakers": self.breakers, "notes": self.notes,
            "drain_seconds": round(self.drain_seconds, 2),
        }


Progress = Callable[[str, float, float], None]


class Shop:
    """The running shop: services, proxies and their configuration; ``close()`` stops it all.

    Use as a context manager. ``ports`` fixes the services' ports (``serve`` does, so users
    know where to find it); by default each is picked free.
    """

    def __init__(
        self, options: RunOptions, workdir: Path, *, ports: dict[str, int] | None = None,
        proxy_port: int | None = None,
    ) -> None:
        self.options = options
        self.workdir = workdir
        self.procs = ProcessGroup(workdir)
        self.net: chaosnet.Network | None = None
        self.namespace = False  # the run's schema exists on the shared server (postgres)
        try:
            self.ports = ports or {name: free_port() for name in SERVICES}
            self.net = chaosnet.start(self.procs, workdir, self.ports, api_port=proxy_port)
            self.cfg = ShopConfig(
                mode=options.mode, workdir=str(workdir), ports=self.ports, urls=self.net.urls,
                backend=options.backend, seed=options.seed,
                prefix=f"stoic-demo-{uuid.uuid4().hex[:8]}", edge_deadline=options.edge_deadline,
                redis_url=options.redis_url, amqp_url=options.amqp_url,
                postgres_url=options.postgres_url, cleanup=options.cleanup,
            )
            if options.backend == "postgres":
                from . import parts

                parts.create_namespace(self.cfg)
                self.namespace = True
            config_path = workdir / "shop.json"
            self.cfg.save(config_path)
            for name in SERVICES:
                self.procs.start(
                    name, self.procs.python("-m", "stoic.demo.services", name, str(config_path)))
            for name in SERVICES:
                self.wait(name)
        except BaseException:
            self.close()
            raise

    def wait(self, name: str, timeout: float = 30.0) -> None:
        """Block until service ``name`` answers; RuntimeError with its log if it died."""
        try:
            wait_http(f"http://127.0.0.1:{self.ports[name]}/_demo/health", timeout=timeout,
                      alive=lambda: self.procs.alive(name))
        except TimeoutError as exc:
            log_file = self.workdir / f"{name}.log"
            log = log_file.read_text()[-3000:] if log_file.exists() else ""
            raise RuntimeError(f"the {name} service did not start:\n{log}") from exc

    def close(self) -> None:
        """Stop every process of the shop, and remove its state from a shared server."""
        self.procs.close()
        if self.net is not None:
            self.net.close()
        if self.namespace:
            from . import parts

            self.namespace = False
            with contextlib.suppress(Exception):
                parts.drop_namespace(self.cfg)

    def __enter__(self) -> Shop:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def run(options: RunOptions, progress: Progress | None = None) -> RunResult:
    """Run the scenario once; ``progress(phase, elapsed, duration)`` is called as it goes.

    The services' files stay in the working directory (a new temporary one unless
    ``options.workdir`` is set): they are the scorecard's ground truth.
    """
    scenario = build_scenario(options.duration, options.seed)
    workdir = Path(options.workdir) if options.workdir else workdirs.make(options.mode)
    workdir.mkdir(parents=True, exist_ok=True)
    with Shop(options, workdir) as shop:
        assert shop.net is not None
        result = asyncio.run(_drive(options, scenario, shop.cfg, shop.procs, shop.net, progress))
    result.workdir = str(workdir)
    return result


async def _drive(
    options: RunOptions, scenario: Scenario, cfg: ShopConfig, procs: ProcessGroup,
    net: chaosnet.Network, progress: Progress | None,
) -> RunResult:
    import httpx

    started = time.time() + 0.3
    orders_url = f"http://127.0.0.1:{cfg.ports['orders']}"
    load = LoadGenerator(
        orders_url, rps=options.rps, duration=scenario.duration, seed=options.seed,
        mode=options.mode, edge_deadline=options.edge_deadline,
        client_timeout=options.client_timeout,
    )
    breakers: list[dict[str, Any]] = []
    # breakers are named http:<host:port>; show them by the service behind that address
    hosts = {f"http:{httpx.URL(url).netloc.decode()}": name for name, url in cfg.urls.items()}
    stop = asyncio.Event()
    reported: list[str] = []
    async with httpx.AsyncClient(timeout=2.0) as control:

        async def scrape() -> None:
            while not stop.is_set():
                t = time.time() - started
                try:
                    text = (await control.get(f"{orders_url}/metrics")).text
                    states = {hosts.get(name, name): state
                              for name, state in _breaker_states(text).items()}
                    breakers.append({"t": round(t, 2), "states": states})
                except httpx.HTTPError:
                    pass
                if progress is not None:  # every phase, also one shorter than a scrape
                    for phase in scenario.phases[len(reported):]:
                        if phase.start > t:
                            break
                        reported.append(phase.name)
                        progress(phase.name, max(phase.start, 0.0), scenario.duration)
                    progress(scenario.phase_at(max(0.0, t)), max(0.0, t), scenario.duration)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)

        async def faults() -> None:
            for action in scenario.actions:
                delay = started + action.at - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await _apply(action.kind, action.action, scenario, cfg, procs, net, control)

        scraper = asyncio.create_task(scrape())
        chaos = asyncio.create_task(faults())
        await load.run(started)
        await chaos
        if progress is not None:
            progress("drain", scenario.duration, scenario.duration)
        drain_began = time.monotonic()
        await _drain(options, cfg, control)
        drain_seconds = time.monotonic() - drain_began
        drained_at = time.time()
        stats = await _stats(control, orders_url)
        dead = await asyncio.to_thread(_dead_lettered, cfg) if cfg.mode == "stoic" else None
        stop.set()
        await scraper
    card = compute(
        options.mode, cfg.workdir, load.requests, scenario, started, not_sent=load.not_sent,
        breaker_openings=int(stats.get("breaker_openings", 0)) if cfg.mode == "stoic" else None,
        limit_changes=int(stats.get("limit_changes", 0)) if cfg.mode == "stoic" else None,
        dead_lettered=dead, deadline=options.edge_deadline,
    )
    # the charts run to the end of the drain, where the last pending orders completed
    length = max([scenario.duration, drained_at - started]
                 + [r.end - started for r in load.requests if r.end])
    return RunResult(
        options=options, scorecard=card, scenario=scenario,
        series=series(cfg.workdir, load.requests, started, length), breakers=breakers,
        network_faults=net.kind, workdir=cfg.workdir, notes=list(net.notes),
        requests=load.requests, started=started, drain_seconds=drain_seconds,
    )


async def _apply(
    kind: str, action: str, scenario: Scenario, cfg: ShopConfig, procs: ProcessGroup,
    net: chaosnet.Network, control: Any,
) -> None:
    on = action == "start"
    payments = f"http://127.0.0.1:{cfg.ports['payments']}/_demo/chaos"
    if kind == "payments_latency":
        await asyncio.to_thread(net.latency, "payments", scenario.payments_latency if on else 0.0,
                                scenario.payments_jitter)
    elif kind == "payments_lose_replies":
        with contextlib.suppress(Exception):
            await control.post(payments, json={"lose_replies": scenario.lose_reply_rate if on else 0.0,
                                                "seed": scenario.seed})
    elif kind == "payments_killed":
        await asyncio.to_thread(procs.kill if on else procs.start, "payments")
    elif kind == "inventory_partition":
        await asyncio.to_thread(net.partition, "inventory", on)
    elif kind == "worker_killed":
        await asyncio.to_thread(procs.kill if on else procs.start, "fulfillment")


async def _drain(options: RunOptions, cfg: ShopConfig, control: Any) -> None:
    """Wait until the shop has finished its work, or nothing moves for a while.

    Finished: no order still pending (the stoic build's workflows finish orders accepted
    during an outage once the dependency is back) and every accepted order fulfilled.
    """
    import sqlite3

    def counts() -> tuple[int, int, int]:
        def one(db: str, sql: str) -> int:
            conn = sqlite3.connect(cfg.db(db), timeout=10.0)
            try:
                return int(conn.execute(sql).fetchone()[0])
            except sqlite3.OperationalError:
                return 0
            finally:
                conn.close()

        return (one("orders", "SELECT COUNT(*) FROM orders WHERE status='accepted'"),
                one("fulfillment", "SELECT COUNT(DISTINCT order_id) FROM fulfillments"),
                one("orders", "SELECT COUNT(*) FROM orders WHERE status='pending'")
                if cfg.mode == "stoic" else 0)

    quiet = cfg.worker_lease + 3.0 if cfg.mode == "stoic" else 1.0
    end = time.monotonic() + options.drain_timeout
    last, last_change = None, time.monotonic()
    while time.monotonic() < end:
        now = await asyncio.to_thread(counts)
        if now != last:
            last, last_change = now, time.monotonic()
        accepted, fulfilled, pending = now
        if fulfilled >= accepted and not pending and time.monotonic() - last_change > 0.5:
            return
        # an order still pending in the stoic build is a workflow waiting for its next try
        # (up to a few seconds after an outage): worth waiting for, up to the drain timeout
        if not pending and time.monotonic() - last_change > quiet:
            return
        await asyncio.sleep(0.2)


async def _stats(control: Any, url: str) -> dict[str, Any]:
    try:
        return dict((await control.get(f"{url}/_demo/stats")).json())
    except Exception:
        return {}


def _dead_lettered(cfg: ShopConfig) -> int | None:
    """Messages in the dead-letter queue, from the broker's own statistics.

    On a shared Redis or RabbitMQ the run's topic is deleted afterwards: each run has its
    own namespace, and leaves nothing behind on the server.
    """
    from . import parts

    broker = parts.broker(cfg)
    try:
        stats = broker.stats("order.placed")
        value = stats.get("dead") if isinstance(stats, dict) else getattr(stats, "dead", None)
        return int(value) if value is not None else None
    finally:
        if cfg.backend in ("redis", "rabbitmq"):
            with contextlib.suppress(Exception):
                broker.delete_topic("order.placed")
        close = getattr(broker, "close", None)
        if callable(close):
            close()
        if cfg.backend == "redis":
            _forget_redis_keys(cfg)


def _forget_redis_keys(cfg: ShopConfig) -> None:
    """Delete this run's idempotency records and breaker state from the shared Redis."""
    import redis

    client = redis.Redis.from_url(cfg.redis_url)
    try:
        keys = list(client.scan_iter(match=f"{cfg.prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i:i + 500])
    finally:
        client.close()


def _breaker_states(text: str) -> dict[str, str]:
    """``{breaker name: state}`` from a Prometheus exposition of stoic's breaker gauge."""
    states: dict[str, str] = {}
    for match in _STATE.finditer(text):
        labels = dict(_LABEL.findall(match.group("labels")))
        if float(match.group("value")) == 1.0 and "name" in labels and "state" in labels:
            states[labels["name"]] = labels["state"]
    return states
