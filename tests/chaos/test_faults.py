"""In-process fault points: off by default, controlled at run time, repeatable with a seed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import stoic
from stoic import Outcome, chaos
from stoic.chaos.faults import Fault, FaultInjected, InjectedStatusError, Normal
from stoic.testing import virtual_time


def calls(point: Fault, n: int) -> list[str]:
    """Run a fault point ``n`` times; 'ok' or the error type of each call."""
    outcomes = []
    for _ in range(n):
        try:
            with point:
                pass
            outcomes.append("ok")
        except Exception as exc:
            outcomes.append(type(exc).__name__)
    return outcomes


class TestSwitch:
    def test_a_fault_point_does_nothing_until_enabled(self) -> None:
        @chaos.fault("db.query", error=TimeoutError, rate=1.0)
        def query() -> int:
            return 42

        assert query() == 42
        with chaos.enable(), pytest.raises(TimeoutError, match=r"db\.query"):
            query()
        assert query() == 42  # the with block disabled it again

    def test_disabled_points_never_reach_the_decision(self, monkeypatch: pytest.MonkeyPatch) -> None:
        point = chaos.fault("cheap", error=ValueError, rate=1.0)

        def boom(self: Fault) -> None:
            raise AssertionError("the decision ran while chaos was disabled")

        monkeypatch.setattr(Fault, "_decide", boom)
        def through() -> str:
            return "through"

        wrapped = point(through)
        assert wrapped() == "through"
        with point:
            pass

    def test_rate_zero_is_dormant_even_when_enabled(self) -> None:
        chaos.enable()
        assert calls(chaos.fault("quiet", error=ValueError), 20) == ["ok"] * 20

    def test_an_exception_instance_is_raised_as_given(self) -> None:
        error = ConnectionResetError(104, "reset by chaos")
        chaos.enable()
        with pytest.raises(ConnectionResetError) as caught:
            chaos.fault("net", error=error, rate=1.0).inject()
        assert caught.value is error


class TestStatus:
    @pytest.mark.parametrize(("status", "outcome"), [
        (503, Outcome.TRANSIENT), (429, Outcome.THROTTLED), (404, Outcome.PERMANENT)])
    def test_a_status_fault_is_classified_like_that_http_status(
        self, status: int, outcome: Outcome
    ) -> None:
        chaos.enable()
        with pytest.raises(InjectedStatusError) as caught:
            chaos.fault("api", error=status, rate=1.0).inject()
        assert caught.value.status == status
        assert stoic.classify(caught.value).outcome is outcome


class TestRandomness:
    def test_the_same_seed_gives_the_same_injections(self) -> None:
        point = chaos.fault("flaky", error=ValueError, rate=0.3)
        chaos.enable(seed=7)
        first = calls(point, 200)
        chaos.enable(seed=7)
        assert calls(point, 200) == first
        assert 30 <= first.count("ValueError") <= 90  # about 60 expected

    def test_seed_reseeds_the_running_generator(self) -> None:
        point = chaos.fault("flaky", error=ValueError, rate=0.5)
        chaos.enable()
        chaos.seed(3)
        first = calls(point, 50)
        chaos.seed(3)
        assert calls(point, 50) == first


class TestWhen:
    def test_first_n_calls_only(self) -> None:
        chaos.enable()
        point = chaos.fault("boot", error=KeyError, rate=1.0, when=chaos.first(3))
        assert calls(point, 5) == ["KeyError"] * 3 + ["ok"] * 2

    def test_a_time_window_after_enable(self) -> None:
        point = chaos.fault("storm", error=OSError, rate=1.0, when=chaos.window(10, 20))
        with virtual_time() as clock:
            chaos.enable()
            assert calls(point, 1) == ["ok"]
            clock.advance(10)
            assert calls(point, 1) == ["OSError"]
            clock.advance(10)
            assert calls(point, 1) == ["ok"]

    def test_a_callable_decides(self) -> None:
        switch = {"on": False}
        point = chaos.fault("manual", error=ValueError, rate=1.0, when=lambda: switch["on"])
        chaos.enable()
        assert calls(point, 1) == ["ok"]
        switch["on"] = True
        assert calls(point, 1) == ["ValueError"]


class TestLatency:
    def test_latency_sleeps_through_the_stoic_clock(self) -> None:
        point = chaos.fault("slow", latency=0.25, rate=1.0)
        with virtual_time() as clock:
            chaos.enable()
            assert calls(point, 2) == ["ok", "ok"]
        assert clock.sleeps == [0.25, 0.25]

    def test_uniform_latency_stays_within_its_bounds(self) -> None:
        point = chaos.fault("slow", latency=(0.1, 0.2), rate=1.0)
        with virtual_time() as clock:
            chaos.enable(seed=1)
            calls(point, 50)
        assert all(0.1 <= s <= 0.2 for s in clock.sleeps)
        assert len(set(clock.sleeps)) > 40

    def test_normal_latency_is_never_negative(self) -> None:
        point = chaos.fault("slow", latency=Normal(0.01, 0.05), rate=1.0)
        with virtual_time() as clock:
            chaos.enable(seed=1)
            calls(point, 100)
        assert min(clock.sleeps) >= 0.0

    async def test_async_points_sleep_without_blocking_and_raise(self) -> None:
        @chaos.fault("async.op", error=TimeoutError, latency=0.5, rate=1.0)
        async def op() -> str:
            return "done"

        async with virtual_time() as clock:
            chaos.enable()
            with pytest.raises(TimeoutError):
                await op()
            async with chaos.fault("async.ctx", latency=0.3, rate=1.0):
                pass
        assert clock.sleeps == [0.5, 0.3]


class TestEvents:
    def test_each_injection_emits_an_event(self) -> None:
        seen: list[FaultInjected] = []
        stoic.events.subscribe(lambda e: seen.append(e) if isinstance(e, FaultInjected) else None)
        point = chaos.fault("watched", error=ValueError, latency=0.1, rate=1.0, when=2)
        with virtual_time():
            chaos.enable()
            calls(point, 4)
        assert [(e.name, e.latency, e.error_type) for e in seen] == [
            ("watched", 0.1, "ValueError")] * 2


class TestPlans:
    def test_a_plan_entry_replaces_the_points_own_arguments(self) -> None:
        point = chaos.fault("payments.charge", error=ValueError, rate=1.0)
        chaos.enable({"faults": {"payments.charge": {"error": "ConnectionResetError",
                                                     "rate": 1.0, "first": 1}}})
        assert calls(point, 2) == ["ConnectionResetError", "ok"]

    def test_plans_load_from_json_and_yaml_files(self, tmp_path: Path) -> None:
        plan = {"seed": 5, "faults": {"a": {"error": 503, "rate": 1.0},
                                      "b": {"latency": {"uniform": [0.1, 0.2]}, "rate": 1.0,
                                            "window": [0, 60]}}}
        (tmp_path / "plan.json").write_text(json.dumps(plan))
        (tmp_path / "plan.yaml").write_text(textwrap.dedent("""\
            seed: 5
            faults:
              a: {error: 503, rate: 1.0}
              b: {latency: {uniform: [0.1, 0.2]}, rate: 1.0, window: [0, 60]}
        """))
        from_json = chaos.load_plan(tmp_path / "plan.json")
        from_yaml = chaos.load_plan(tmp_path / "plan.yaml")
        assert from_json.seed == from_yaml.seed == 5
        assert from_json.faults["a"].error == from_yaml.faults["a"].error == 503
        assert from_json.faults["b"].latency == from_yaml.faults["b"].latency

    @pytest.mark.parametrize(("plan", "message"), [
        ({"faults": {"x": {"rate": 2}}}, "rate"),
        ({"faults": {"x": {"error": "NoSuchError"}}}, "error"),
        ({"faults": {"x": {"latency": "slow"}}}, "latency"),
        ({"faults": {"x": {"often": 1}}}, "unknown"),
        ({"faults": {"x": {"first": 1, "window": [0, 1]}}}, "first or window"),
        ({"seed": "abc"}, "seed"),
    ])
    def test_a_malformed_plan_names_what_is_wrong(self, plan: dict[str, Any], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            chaos.load_plan(plan)

    def test_a_plan_file_that_does_not_parse_raises_value_error(self, tmp_path: Path) -> None:
        """YAML errors too, so a watched plan file that is half written is logged, not fatal."""
        (tmp_path / "plan.yaml").write_text("faults: [unclosed\n")
        (tmp_path / "plan.json").write_text("{not json")
        for name in ("plan.yaml", "plan.json"):
            with pytest.raises(ValueError):
                chaos.load_plan(tmp_path / name)

    def test_stoic_chaos_env_var_enables_a_plan_in_a_fresh_process(self, tmp_path: Path) -> None:
        plan = tmp_path / "plan.json"
        plan.write_text(json.dumps({"faults": {"charge": {"error": 503, "rate": 1.0}}}))
        script = textwrap.dedent("""\
            import stoic.chaos as chaos
            @chaos.fault("charge")
            def charge():
                return "charged"
            try:
                print(charge())
            except Exception as exc:
                print(type(exc).__name__, exc.status)
        """)
        env = {"STOIC_CHAOS": str(plan), "PATH": "/usr/bin:/bin"}
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                             text=True, timeout=30, check=True).stdout
        assert out.strip() == "InjectedStatusError 503"
        del env["STOIC_CHAOS"]
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                             text=True, timeout=30, check=True).stdout
        assert out.strip() == "charged"


class TestValidation:
    @pytest.mark.parametrize(("kwargs", "message"), [
        ({"rate": 1.5}, "rate"), ({"rate": -0.1}, "rate"), ({"error": 42}, "status"),
        ({"error": object()}, "error"), ({"latency": -1.0}, "latency"),
        ({"latency": (0.5, 0.1)}, "low <= high"), ({"when": -1}, "first"),
    ])
    def test_bad_arguments_raise_value_error_naming_the_parameter(
        self, kwargs: dict[str, Any], message: str
    ) -> None:
        with pytest.raises(ValueError, match=message):
            chaos.fault("x", **kwargs)

    def test_an_empty_name_is_refused(self) -> None:
        with pytest.raises(ValueError, match="name"):
            chaos.fault("")
