"""RedisState against real Redis servers: a fleet shares opens, trials and rate limits,
and a Redis that dies never fails a call."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import stoic
from stoic.events import Event
from stoic.policies.breaker import BreakerState
from stoic.state import RedisState, StateStoreDegraded, StateStoreRecovered
from support import free_port, wait_for_port

pytestmark = pytest.mark.services

POLL = 0.5  # the refresh bound used in these tests; pub/sub is usually much faster
SLACK = 1.5  # a loaded CI machine may schedule the listener late


def ok() -> str:
    return "ok"


def refused() -> None:
    raise ConnectionRefusedError("payments is down")


def trip(breaker: stoic.CircuitBreaker, n: int) -> None:
    for _ in range(n):
        with pytest.raises(ConnectionRefusedError):
            breaker.call(refused)


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    import redis

    name = f"stoic-test-{uuid.uuid4().hex[:10]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    # a large COUNT: a Redis shared with other suites may hold many keys, and SCAN's
    # default of 10 per round trip turns this cleanup into seconds
    keys = list(client.scan_iter(match=f"{name}:*", count=10_000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def states(redis_url: str, prefix: str) -> Iterator[list[RedisState]]:
    made: list[RedisState] = []
    yield made
    for state in made:
        state.close()


def until(predicate: Any, timeout: float) -> float:
    """Real seconds until ``predicate()`` is true (for I/O across processes and threads)."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not true after {timeout}s")
        time.sleep(0.005)
    return time.monotonic() - start


def redis_server(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_for_port(port)
    return process


CHILD = textwrap.dedent(
    """
    import sys, time
    import stoic
    from stoic.state import RedisState

    url, prefix, poll = sys.argv[1], sys.argv[2], float(sys.argv[3])
    state = RedisState(url, prefix=prefix, poll=poll)
    breaker = stoic.CircuitBreaker("payments", minimum_calls=2, open_for=30, backend=state)
    print(f"ready {time.time():.6f}", flush=True)
    end = time.time() + 20
    while time.time() < end:
        try:
            breaker.call(lambda: None)
        except stoic.CircuitOpenError as exc:
            print(f"rejected {time.time():.6f} {exc.retry_after:.3f}", flush=True)
            break
        time.sleep(0.005)
    else:
        print("never rejected", flush=True)
    state.close()
    """
)


def spawn_child(redis_url: str, prefix: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, redis_url, prefix, str(POLL)],
        stdout=subprocess.PIPE, text=True, env=env,
    )


class TestFleetBreaker:
    def test_open_in_one_process_is_followed_by_another_within_the_bound(
        self, redis_url: str, prefix: str, states: list[RedisState]
    ) -> None:
        child = spawn_child(redis_url, prefix)
        try:
            assert child.stdout is not None
            assert child.stdout.readline().startswith("ready")
            time.sleep(0.3)  # let the child subscribe, so this measures the message path
            state = RedisState(redis_url, prefix=prefix, poll=POLL)
            states.append(state)
            breaker = stoic.CircuitBreaker("payments", minimum_calls=2, open_for=30, backend=state)
            trip(breaker, 2)
            opened_at = time.time()
            line = child.stdout.readline().split()
            assert line[0] == "rejected", line
            assert float(line[1]) - opened_at < POLL + SLACK
            assert 25 < float(line[2]) <= 30  # the child rejects for the fleet's time left
        finally:
            child.kill()
            child.wait()

    def test_a_process_that_missed_the_message_finds_the_open_on_refresh(
        self, redis_url: str, prefix: str, states: list[RedisState]
    ) -> None:
        state = RedisState(redis_url, prefix=prefix, poll=POLL)
        states.append(state)
        breaker = stoic.CircuitBreaker("payments", minimum_calls=2, open_for=30, backend=state)
        trip(breaker, 2)
        time.sleep(0.2)  # published
        child = spawn_child(redis_url, prefix)  # starts after the message went out
        try:
            assert child.stdout is not None
            ready = float(child.stdout.readline().split()[1])
            line = child.stdout.readline().split()
            assert line[0] == "rejected", line
            assert float(line[1]) - ready < POLL + SLACK
        finally:
            child.kill()
            child.wait()

    def test_one_trial_runs_across_the_fleet_and_its_success_closes_everyone(
        self, redis_url: str, prefix: str, states: list[RedisState]
    ) -> None:
        a_state = RedisState(redis_url, prefix=prefix, poll=POLL)
        b_state = RedisState(redis_url, prefix=prefix, poll=POLL)
        states += [a_state, b_state]
        a = stoic.CircuitBreaker(
            "payments", minimum_calls=2, open_for=0.3, half_open_calls=1, backend=a_state
        )
        b = stoic.CircuitBreaker(
            "payments", minimum_calls=2, open_for=0.3, half_open_calls=1, backend=b_state
        )
        trip(a, 2)
        until(lambda: b.state is BreakerState.OPEN, POLL + SLACK)
        time.sleep(0.35)  # both open periods are over
        gate = threading.Event()
        trials: list[str] = []

        def trial(who: str) -> str:
            trials.append(who)
            gate.wait(10)
            return who

        results: dict[str, Any] = {}

        def run(who: str, breaker: stoic.CircuitBreaker) -> None:
            try:
                results[who] = breaker.call(trial, who)
            except stoic.CircuitOpenError as exc:
                results[who] = exc

        threads = [threading.Thread(target=run, args=(w, br)) for w, br in (("a", a), ("b", b))]
        for thread in threads:
            thread.start()
        until(lambda: len(trials) + sum(
            isinstance(r, stoic.CircuitOpenError) for r in results.values()) == 2, 5)
        assert len(trials) == 1  # the lease let exactly one process try
        gate.set()
        for thread in threads:
            thread.join(10)
        winner = trials[0]
        loser = b if winner == "a" else a
        assert isinstance(results["b" if winner == "a" else "a"], stoic.CircuitOpenError)
        assert (a if winner == "a" else b).state is BreakerState.CLOSED
        until(lambda: loser.state is BreakerState.CLOSED, POLL + SLACK)

    async def test_async_trial_takes_the_lease_off_the_event_loop_and_closes(
        self, redis_url: str, prefix: str, states: list[RedisState]
    ) -> None:
        import redis

        state = RedisState(redis_url, prefix=prefix, poll=POLL)
        states.append(state)
        breaker = stoic.CircuitBreaker(
            "search", minimum_calls=1, open_for=0.2, half_open_calls=1, backend=state
        )

        async def down() -> None:
            raise ConnectionRefusedError("down")

        async def up() -> str:
            return "up"

        with pytest.raises(ConnectionRefusedError):
            await breaker.acall(down)
        with pytest.raises(stoic.CircuitOpenError):
            await breaker.acall(up)
        await asyncio.sleep(0.25)
        client = redis.Redis.from_url(redis_url)
        try:
            assert await breaker.acall(up) == "up"  # this process held the fleet's lease
            assert breaker.state is BreakerState.CLOSED
            until(lambda: client.exists(f"{prefix}:breaker:search:trial") == 0, 5)  # released
        finally:
            client.close()

    def test_keys_are_namespaced_by_prefix(
        self, redis_url: str, prefix: str, states: list[RedisState]
    ) -> None:
        import redis

        ours = RedisState(redis_url, prefix=prefix, poll=POLL)
        theirs = RedisState(redis_url, prefix=prefix + "-other", poll=POLL)
        states += [ours, theirs]
        mine = stoic.CircuitBreaker("payments", minimum_calls=2, open_for=30, backend=ours)
        other = stoic.CircuitBreaker("payments", minimum_calls=2, open_for=30, backend=theirs)
        trip(mine, 2)
        client = redis.Redis.from_url(redis_url)
        try:
            until(lambda: client.exists(f"{prefix}:breaker:payments:open") == 1, 5)
        finally:
            client.close()
        time.sleep(POLL * 2)
        assert other.state is BreakerState.CLOSED


class TestFleetRateLimit:
    def test_two_states_enforce_one_rate_together(
        self, redis_url: str, prefix: str, states: list[RedisState]
    ) -> None:
        a_state = RedisState(redis_url, prefix=prefix)
        b_state = RedisState(redis_url, prefix=prefix)
        states += [a_state, b_state]
        a = stoic.RateLimiter(10, per=60, backend=a_state, name="signup")
        b = stoic.RateLimiter(10, per=60, backend=b_state, name="signup")
        admitted, waits = 0, []
        for limiter in (a, b) * 10:
            try:
                limiter.call(ok)
                admitted += 1
            except stoic.RateLimitedError as exc:
                waits.append(exc.retry_after)
        assert admitted == 10
        assert len(waits) == 10 and all(w is not None and 0 < w <= 6.0 for w in waits)

    async def test_async_limit_uses_the_same_script(
        self, redis_url: str, prefix: str, states: list[RedisState]
    ) -> None:
        state = RedisState(redis_url, prefix=prefix)
        states.append(state)
        limiter = stoic.RateLimiter(3, per=60, backend=state, name="async")

        async def work() -> str:
            return "ok"

        results = []
        for _ in range(5):
            try:
                results.append(await limiter.acall(work))
            except stoic.RateLimitedError:
                results.append("limited")
        await state.aclose()
        assert results == ["ok"] * 3 + ["limited"] * 2


class TestOwnServer:
    def test_one_round_trip_per_rate_limited_call(self, redis_url: str) -> None:
        import redis

        port = free_port()
        server = redis_server(port)
        url = f"redis://127.0.0.1:{port}/0"
        state = RedisState(url, prefix="rt")
        try:
            limiter = stoic.RateLimiter(1000, backend=state, name="api")
            limiter.call(ok)  # loads the script
            probe = redis.Redis.from_url(url)

            def counts() -> tuple[int, int]:
                total = int(probe.info("stats")["total_commands_processed"])
                evalsha = probe.info("commandstats").get("cmdstat_evalsha", {"calls": 0})
                return total, int(evalsha["calls"])

            total_before, evalsha_before = counts()
            for _ in range(50):
                limiter.call(ok)
            total_after, evalsha_after = counts()
            probe.close()
            assert evalsha_after - evalsha_before == 50
            # every command Redis ran was one of those scripts (EVALSHA + TIME, GET, SET
            # inside it) or our two INFO probes: no other round trip was made
            assert total_after - total_before == 50 * 4 + 2
        finally:
            state.close()
            server.kill()
            server.wait()

    def test_redis_killed_mid_run_calls_keep_flowing_on_local_state(
        self, redis_url: str
    ) -> None:
        port = free_port()
        server = redis_server(port)
        url = f"redis://127.0.0.1:{port}/0"
        seen: list[Event] = []
        stoic.events.subscribe(seen.append)
        state = RedisState(url, prefix="kill", timeout=0.2, retry_interval=0.2, poll=0.2)
        try:
            breaker = stoic.CircuitBreaker(
                "payments", minimum_calls=5, open_for=0.2, half_open_calls=1, backend=state,
                window=stoic.CountWindow(5),
            )
            limiter = stoic.RateLimiter(10_000, backend=state, name="api")
            pipeline = stoic.Pipeline(limiter, breaker)
            for _ in range(20):
                assert pipeline.call(ok) == "ok"
            server.kill()
            server.wait()
            results = [pipeline.call(ok) for _ in range(200)]  # no exception reaches us
            assert results == ["ok"] * 200
            # the breaker still protects, on local state: it opens, then recovers alone
            trip(breaker, 3)  # 3 of the last 5 calls failed
            with pytest.raises(stoic.CircuitOpenError):
                breaker.call(ok)
            time.sleep(0.25)
            assert breaker.call(ok) == "ok"
            assert breaker.state is BreakerState.CLOSED
            degraded = [e for e in seen if isinstance(e, StateStoreDegraded)]
            assert len(degraded) == 1  # once per outage, not per call
            assert state.degraded
            # Redis comes back: the store says so and is used again
            server = redis_server(port)
            until(lambda: limiter.call(ok) == "ok" and not state.degraded, 5)
            assert any(isinstance(e, StateStoreRecovered) for e in seen)
        finally:
            state.close()
            server.kill()
            server.wait()

    def test_redis_that_stops_answering_degrades_within_its_timeout(self) -> None:
        port = free_port()
        server = redis_server(port)
        state = RedisState(f"redis://127.0.0.1:{port}/0", prefix="slow", timeout=0.1,
                           retry_interval=30.0)
        try:
            limiter = stoic.RateLimiter(10_000, backend=state, name="api")
            assert limiter.call(ok) == "ok"
            server.send_signal(signal.SIGSTOP)  # still accepts connections, never answers
            start = time.monotonic()
            assert [limiter.call(ok) for _ in range(100)] == ["ok"] * 100
            # one call waited for the timeout; the other 99 went straight to local state
            assert time.monotonic() - start < 2.0
            assert state.degraded
        finally:
            server.send_signal(signal.SIGCONT)
            state.close()
            server.kill()
            server.wait()

    def test_unreachable_redis_from_the_start_never_fails_a_call(self) -> None:
        port = free_port()  # nothing listens here
        state = RedisState(f"redis://127.0.0.1:{port}/0", timeout=0.1, retry_interval=5.0)
        try:
            breaker = stoic.CircuitBreaker("x", backend=state)
            limiter = stoic.RateLimiter(5, backend=state, name="x")
            assert [stoic.Pipeline(limiter, breaker).call(ok) for _ in range(5)] == ["ok"] * 5
            with pytest.raises(stoic.RateLimitedError):
                limiter.call(ok)  # the local fallback still limits
        finally:
            state.close()


def test_bad_configuration_names_the_parameter() -> None:
    with pytest.raises(ValueError, match="prefix"):
        RedisState(prefix="")
    with pytest.raises(ValueError, match="timeout"):
        RedisState(timeout=0)
    with pytest.raises(ValueError, match="url"):
        RedisState("localhost")
