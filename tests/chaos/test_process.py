"""Process faults on real child processes; partitions through a real fault proxy."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import stoic
from stoic.chaos import Monkey, Network, ProxyServer, Supervisor, heal, partition
from stoic.chaos.process import NetworkHealed, NetworkPartitioned, ProcessFaulted

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def ticker(path: Path) -> list[str]:
    """A process that appends a byte to ``path`` every 10 ms."""
    code = (
        "import sys, time\n"
        "with open(sys.argv[1], 'ab', buffering=0) as f:\n"
        "    while True:\n"
        "        f.write(b'.'); time.sleep(0.01)\n"
    )
    return [sys.executable, "-c", code, str(path)]


def grows(path: Path, within: float = 0.3) -> bool:
    before = path.stat().st_size if path.exists() else 0
    end = time.monotonic() + within
    while time.monotonic() < end:
        if path.exists() and path.stat().st_size > before:
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    with Supervisor(log_dir=tmp_path / "logs", grace=2.0) as sup:
        yield sup


class TestSupervisor:
    def test_pause_freezes_a_process_and_resume_restarts_it(
        self, supervisor: Supervisor, tmp_path: Path
    ) -> None:
        out = tmp_path / "ticks"
        supervisor.start("ticker", ticker(out))
        assert grows(out, within=5)
        supervisor.pause("ticker")
        assert supervisor.state("ticker") == "paused"
        time.sleep(0.05)  # let a write in flight land
        assert not grows(out, within=0.2)
        supervisor.resume("ticker")
        assert supervisor.state("ticker") == "running"
        assert grows(out)

    def test_kill_is_sigkill_and_leaves_the_process_stopped(self, supervisor: Supervisor) -> None:
        supervisor.start("victim", SLEEPER)
        supervisor.kill("victim")
        info = supervisor.info("victim")
        assert (info.state, info.returncode) == ("stopped", -9)

    def test_terminate_is_sigterm(self, supervisor: Supervisor) -> None:
        supervisor.start("victim", SLEEPER)
        supervisor.terminate("victim")
        assert supervisor.info("victim").returncode == -15

    def test_terminate_kills_a_process_that_ignores_sigterm_after_the_grace(
        self, supervisor: Supervisor
    ) -> None:
        stubborn = [sys.executable, "-c",
                    "import signal, time, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
                    " print('ready', flush=True); time.sleep(60)"]
        supervisor.start("stubborn", stubborn)
        log = supervisor.log_dir / "stubborn.log"  # type: ignore[operator]
        end = time.monotonic() + 5
        while "ready" not in (log.read_text() if log.exists() else "") and time.monotonic() < end:
            time.sleep(0.02)
        start = time.monotonic()
        supervisor.terminate("stubborn", grace=0.3)
        assert supervisor.info("stubborn").returncode == -9
        assert time.monotonic() - start >= 0.3

    def test_kill_reaches_the_children_of_a_shell_command(
        self, supervisor: Supervisor, tmp_path: Path
    ) -> None:
        out = tmp_path / "ticks"
        supervisor.start("shell", " ".join(ticker(out)[:2]) + ' "' + ticker(out)[2] + f'" {out}')
        assert grows(out, within=5)
        supervisor.kill("shell")
        assert not grows(out, within=0.2)

    def test_restart_starts_the_same_command_again(self, supervisor: Supervisor) -> None:
        first = supervisor.start("svc", SLEEPER)
        again = supervisor.restart("svc")
        assert again.pid != first.pid
        assert (again.state, again.restarts, again.command) == ("running", 1, first.command)

    def test_a_process_that_ends_on_its_own_is_exited(self, supervisor: Supervisor) -> None:
        supervisor.start("short", [sys.executable, "-c", "raise SystemExit(3)"])
        assert supervisor.wait("short", timeout=10) == 3
        assert supervisor.states() == {"short": "exited"}

    def test_starting_a_running_name_again_is_refused(self, supervisor: Supervisor) -> None:
        supervisor.start("svc", SLEEPER)
        with pytest.raises(ValueError, match="already running"):
            supervisor.start("svc", SLEEPER)

    def test_ready_port_returns_once_the_service_listens_even_after_restart(
        self, supervisor: Supervisor
    ) -> None:
        from support import free_port

        port = free_port()
        server = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
        supervisor.start("web", server, ready_port=port)
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        supervisor.restart("web")
        socket.create_connection(("127.0.0.1", port), timeout=1).close()

    def test_ready_port_reports_a_process_that_died_instead(self, supervisor: Supervisor) -> None:
        from support import free_port

        crash = [sys.executable, "-c", "print('no config'); raise SystemExit(4)"]
        with pytest.raises(RuntimeError, match=r"exited with 4[\s\S]*no config"):
            supervisor.start("crash", crash, ready_port=free_port(), ready_timeout=10)

    def test_unknown_names_raise_key_error(self, supervisor: Supervisor) -> None:
        with pytest.raises(KeyError):
            supervisor.kill("ghost")

    def test_each_fault_emits_an_event(self, supervisor: Supervisor) -> None:
        seen: list[ProcessFaulted] = []
        stoic.events.subscribe(lambda e: seen.append(e) if isinstance(e, ProcessFaulted) else None)
        supervisor.start("svc", SLEEPER)
        supervisor.pause("svc")
        supervisor.resume("svc")
        supervisor.kill("svc")
        assert [(e.name, e.action) for e in seen] == [
            ("svc", "pause"), ("svc", "resume"), ("svc", "kill")]

    def test_close_stops_everything(self, tmp_path: Path) -> None:
        with Supervisor() as sup:
            sup.start("a", SLEEPER)
            sup.start("b", SLEEPER)
        assert set(sup.states().values()) == {"stopped"}


class TestMonkey:
    def test_the_same_seed_gives_the_same_schedule(self, supervisor: Supervisor) -> None:
        group = ["a", "b", "c"]
        one = Monkey(supervisor, group, min_interval=1, max_interval=5, seed=11).plan(20)
        two = Monkey(supervisor, group, min_interval=1, max_interval=5, seed=11).plan(20)
        assert one == two
        assert all(1 <= s.delay <= 5 and s.target in group for s in one)
        assert {s.target for s in one} == set(group)

    def test_the_monkey_strikes_by_its_plan_and_restarts(self, supervisor: Supervisor) -> None:
        for name in ("a", "b"):
            supervisor.start(name, SLEEPER)
        pids = {name: supervisor.pid(name) for name in ("a", "b")}
        monkey = Monkey(supervisor, ["a", "b"], min_interval=0.01, max_interval=0.05, seed=4,
                        rounds=3, restart_after=0.01)
        with monkey:
            end = time.monotonic() + 10
            while len(monkey.history) < 3 and time.monotonic() < end:
                time.sleep(0.02)
            time.sleep(0.1)
        assert monkey.history == monkey.plan(3)
        struck = {s.target for s in monkey.history}
        for name in struck:
            assert supervisor.info(name).restarts >= 1
            assert supervisor.pid(name) != pids[name]
            assert supervisor.state(name) == "running"

    @pytest.mark.parametrize(("kwargs", "message"), [
        ({"min_interval": -1, "max_interval": 1}, "min_interval"),
        ({"min_interval": 2, "max_interval": 1}, "max_interval"),
        ({"min_interval": 0, "max_interval": 1, "action": "explode"}, "action"),
    ])
    def test_bad_settings_raise_value_error(
        self, supervisor: Supervisor, kwargs: dict[str, Any], message: str
    ) -> None:
        with pytest.raises(ValueError, match=message):
            Monkey(supervisor, ["a"], **kwargs)


def reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"x")
            return sock.recv(10) == b"x"
    except OSError:
        return False


class TestPartition:
    def test_partition_cuts_only_links_between_groups_and_heal_restores(
        self, proxy_server: ProxyServer, echo_port: int
    ) -> None:
        upstream = f"127.0.0.1:{echo_port}"
        ports = {name: proxy_server.create(name, upstream).port
                 for name in ("orders->payments", "gateway->orders", "orders->db")}
        net = Network(proxy_server, {
            "orders->payments": ("orders", "payments"),
            "gateway->orders": ("gateway", "orders"),
            "orders->db": ("orders", "db"),
        })
        seen: list[object] = []
        stoic.events.subscribe(seen.append)
        with net.partitioned(["gateway", "orders"], ["payments"]) as cut:
            assert cut == ["orders->payments"]
            assert not reachable(ports["orders->payments"])
            assert reachable(ports["gateway->orders"])
            assert reachable(ports["orders->db"])  # db is in no group: untouched
        assert all(reachable(port) for port in ports.values())
        assert [type(e) for e in seen] == [NetworkPartitioned, NetworkHealed]

    def test_partition_and_heal_functions_work_over_http(
        self, proxy_server: ProxyServer, echo_port: int
    ) -> None:
        from stoic.chaos import ProxyClient

        port = proxy_server.create("link", f"127.0.0.1:{echo_port}").port
        client = ProxyClient(proxy_server.api_url)
        assert partition(client, ["link"]) == ["link"]
        assert not reachable(port)
        heal(client, ["link"])
        assert reachable(port)

    def test_a_service_in_two_groups_is_refused(self, proxy_server: ProxyServer) -> None:
        with pytest.raises(ValueError, match="two groups"):
            Network(proxy_server).partition(["a"], ["a", "b"])


class TestProcessDirectory:
    """Faulting processes recorded by a Supervisor, as another process (chaos run) does."""

    def test_records_let_another_process_pause_kill_and_restart(self, tmp_path: Path) -> None:
        from stoic.chaos.process import ProcessDirectory

        with Supervisor(state_dir=tmp_path / "state", grace=2.0) as sup:
            first = sup.start("svc", SLEEPER)
            directory = ProcessDirectory(tmp_path / "state")
            assert directory.pid("svc") == first.pid
            directory.pause("svc")
            assert directory.state("svc") == "paused"
            directory.resume("svc")
            assert directory.state("svc") == "running"
            new_pid = directory.restart("svc", graceful=False)
            assert new_pid != first.pid
            assert directory.state("svc") == "running"
            assert sup.state("svc") == "stopped" or sup.state("svc") == "exited"
            directory.kill("svc")
            assert directory.state("svc") == "exited"
            sup.start("other", SLEEPER)
            directory.restart("other")
            restarted = directory.pid("other")
        # closing the supervisor also stops what was restarted from its records
        assert ProcessDirectory(tmp_path / "state").state("other") == "exited"
        assert restarted != sup.info("other").pid

    def test_an_unknown_name_raises_key_error(self, tmp_path: Path) -> None:
        from stoic.chaos.process import ProcessDirectory

        with pytest.raises(KeyError, match="ghost"):
            ProcessDirectory(tmp_path).kill("ghost")
