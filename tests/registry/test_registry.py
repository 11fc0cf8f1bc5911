"""stoic.registry: policies declared in TOML/YAML files behave like the same built in code."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stoic
from stoic import backoff, registry
from stoic.policies.breaker import CircuitBreaker, CountWindow
from stoic.registry import ConfigError, load


def write(tmp_path: Path, text: str, name: str = "stoic.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


class Flaky:
    """Raises the scripted exceptions in turn, then returns the call count."""

    def __init__(self, *errors: BaseException | None) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        if self.errors:
            error = self.errors.pop(0)
            if error is not None:
                raise error
        return self.calls


class TestLoading:
    def test_a_declared_policy_retries_like_the_file_says(self, tmp_path: Path) -> None:
        path = write(tmp_path, """
            [policies.payments]
            retry = { attempts = 4, backoff = "constant", delay = 0.5 }
            timeout = 2.0
        """.replace("\n            ", "\n"))
        reg = load(path, environ={})
        flaky = Flaky(ConnectionRefusedError(), ConnectionRefusedError(), None)
        with stoic.testing.virtual_time() as vc:
            assert reg["payments"].call(flaky) == 3
        assert vc.sleeps == [0.5, 0.5]
        parts = reg["payments"].current.policies
        assert [type(p).__name__ for p in parts] == ["Retry", "Timeout"]

    def test_yaml_files_are_read_too(self, tmp_path: Path) -> None:
        path = write(tmp_path, "policies:\n  search:\n    retry: {attempts: 2}\n    bulkhead: 5\n",
                     "stoic.yaml")
        reg = load(path, environ={})
        assert reg.settings() == {"search": {"retry": {"attempts": 2},
                                             "bulkhead": {"max_concurrent": 5}}}

    def test_order_changes_the_nesting(self, tmp_path: Path) -> None:
        path = write(tmp_path, '[policies.p]\norder = ["timeout", "retry"]\ntimeout = 1\n'
                               'retry = {attempts = 2}\n')
        parts = load(path, environ={})["p"].current.policies
        assert [type(p).__name__ for p in parts] == ["Timeout", "Retry"]

    def test_the_breaker_is_registered_under_the_policy_name(self, tmp_path: Path) -> None:
        path = write(tmp_path, "[policies.ledger]\nbreaker = {minimum_calls = 2, window = 2}\n")
        load(path, environ={})
        assert stoic.breakers["ledger"].minimum_calls == 2

    def test_an_unknown_name_lists_the_declared_ones(self, tmp_path: Path) -> None:
        reg = load(write(tmp_path, "[policies.a]\ntimeout = 1\n"), environ={})
        with pytest.raises(KeyError, match="declared: a"):
            reg["b"]

    def test_process_wide_registry(self, tmp_path: Path) -> None:
        registry.configure(write(tmp_path, "[policies.a]\ntimeout = 1\n"), environ={})
        assert registry.policy("a").current.policies[0].seconds == 1.0


BAD = [
    ("[policies.p]\nretry = {attempts = 0}\n", "policies.p.retry.attempts", 0),
    ("[policies.p]\nretry = {attempts = 'three'}\n", "policies.p.retry.attempts", "three"),
    ("[policies.p]\nretry = {backoff = 'fibonacci'}\n", "policies.p.retry.backoff", "fibonacci"),
    ("[policies.p]\nretry = {initial = -1}\n", "policies.p.retry.initial", -1),
    ("[policies.p]\nretry = {jitter = 'lots'}\n", "policies.p.retry.jitter", "lots"),
    ("[policies.p]\nretry = {atempts = 3}\n", "policies.p.retry.atempts", 3),
    ("[policies.p]\nretry = {budget = {ratio = 2}}\n", "policies.p.retry.budget.ratio", 2),
    ("[policies.p]\nbreaker = {failure_rate = 1.5}\n", "policies.p.breaker.failure_rate", 1.5),
    ("[policies.p]\nbreaker = {window = 0}\n", "policies.p.breaker.window", 0),
    ("[policies.p]\nbreaker = {open_for = -3}\n", "policies.p.breaker.open_for", -3),
    ("[policies.p]\ntimeout = 0\n", "policies.p.timeout.seconds", 0),
    ("[policies.p]\nbulkhead = 0\n", "policies.p.bulkhead.max_concurrent", 0),
    ("[policies.p]\nrate_limit = {rate = -1}\n", "policies.p.rate_limit.rate", -1),
    ("[policies.p]\nretries = {attempts = 3}\n", "policies.p.retries", {"attempts": 3}),
    ("[policies.p]\norder = ['retry', 'retry']\nretry = {}\n", "policies.p.order",
     ["retry", "retry"]),
    ("[policies.p]\n", "policies.p", {}),
    ("[policy.p]\ntimeout = 1\n", "policy", {"p": {"timeout": 1}}),
]


class TestErrors:
    @pytest.mark.parametrize(("text", "key", "value"), BAD, ids=[b[1] for b in BAD])
    def test_every_bad_value_names_the_file_the_key_and_the_value(
        self, tmp_path: Path, text: str, key: str, value: Any
    ) -> None:
        path = write(tmp_path, text)
        with pytest.raises(ConfigError) as info:
            load(path, environ={})
        assert info.value.key == key
        assert info.value.value == value
        assert info.value.source == str(path)
        assert str(path) in str(info.value) and key in str(info.value)

    def test_a_syntax_error_names_the_file_and_line(self, tmp_path: Path) -> None:
        path = write(tmp_path, "[policies.p]\ntimeout = = 1\n")
        with pytest.raises(ConfigError, match=r"stoic\.toml.*line 2"):
            load(path, environ={})

    def test_a_missing_file_is_a_config_error(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="cannot read"):
            load(tmp_path / "absent.toml", environ={})


class TestEnvironment:
    def test_an_environment_variable_overrides_one_field(self, tmp_path: Path) -> None:
        path = write(tmp_path, "[policies.payments]\nretry = {attempts = 4, max_time = 9.5}\n")
        reg = load(path, environ={"STOIC_POLICIES__PAYMENTS__RETRY__ATTEMPTS": "6"})
        retry = reg["payments"].current.policies[0]
        assert (retry.attempts, retry.max_time) == (6, 9.5)

    def test_an_environment_variable_can_add_a_part(self, tmp_path: Path) -> None:
        path = write(tmp_path, "[policies.payments]\nretry = {attempts = 4}\n")
        reg = load(path, environ={"STOIC_POLICIES__PAYMENTS__TIMEOUT": "1.5"})
        assert reg.settings()["payments"]["timeout"] == {"seconds": 1.5}

    def test_a_bad_override_names_the_variable(self, tmp_path: Path) -> None:
        path = write(tmp_path, "[policies.payments]\nretry = {attempts = 4}\n")
        variable = "STOIC_POLICIES__PAYMENTS__RETRY__BACKOFF"
        with pytest.raises(ConfigError) as info:
            load(path, environ={variable: "spiral"})
        assert info.value.source == f"environment {variable}"
        assert info.value.key == "policies.payments.retry.backoff"


# --- a policy from a file behaves like the same policy built in code -------------------------

retries = st.fixed_dictionaries({
    "attempts": st.integers(1, 5),
    "kind": st.sampled_from(["constant", "exponential", "linear"]),
    "initial": st.sampled_from([0.01, 0.1, 0.25, 1.0]),
    "max": st.sampled_from([0.5, 2.0, 10.0]),
    "idempotent": st.booleans(),
}).filter(lambda r: r["max"] >= r["initial"])  # a schedule's max is at least its first wait
breakers = st.one_of(st.none(), st.fixed_dictionaries({
    "failure_rate": st.sampled_from([0.25, 0.5, 1.0]),
    "minimum_calls": st.integers(1, 4),
    "window": st.integers(1, 6),
    "open_for": st.sampled_from([1.0, 30.0]),
}))
errors = st.lists(st.sampled_from(["transient", "unknown", "permanent", "ok"]), max_size=12)


def code_policy(r: dict[str, Any], b: dict[str, Any] | None, name: str) -> stoic.Pipeline:
    if r["kind"] == "constant":
        schedule = backoff.constant(r["initial"], max=r["max"])
    elif r["kind"] == "exponential":
        schedule = backoff.exponential(r["initial"], 2.0, r["max"], jitter=None)
    else:
        schedule = backoff.linear(r["initial"], 0.1, r["max"], jitter=None)
    parts: list[Any] = [stoic.Retry(max_attempts=r["attempts"], backoff=schedule,
                                    idempotent=r["idempotent"], name=name)]
    if b is not None:
        parts.append(CircuitBreaker(name, failure_rate=b["failure_rate"],
                                    minimum_calls=b["minimum_calls"],
                                    window=CountWindow(b["window"]), open_for=b["open_for"]))
    return stoic.Pipeline(*parts)


def file_text(r: dict[str, Any], b: dict[str, Any] | None, name: str) -> str:
    delay = "delay" if r["kind"] == "constant" else "initial"
    jitter = "" if r["kind"] == "constant" else ', jitter = "none"'
    step = ", step = 0.1" if r["kind"] == "linear" else ""
    idem = "true" if r["idempotent"] else "false"
    text = (f"[policies.{name}]\nretry = {{ attempts = {r['attempts']}, backoff = "
            f"\"{r['kind']}\", {delay} = {r['initial']}, max = {r['max']}{jitter}{step}, "
            f"idempotent = {idem} }}\n")
    if b is not None:
        text += (f"breaker = {{ failure_rate = {b['failure_rate']}, minimum_calls = "
                 f"{b['minimum_calls']}, window = {b['window']}, open_for = {b['open_for']} }}\n")
    return text


def run(policy: stoic.Policy, script: list[str]) -> tuple[list[str], list[float]]:
    """What each call of the script came to, and every backoff wait, on virtual time."""
    made = {"transient": ConnectionRefusedError, "unknown": ConnectionResetError,
            "permanent": ValueError}
    results: list[str] = []
    with stoic.testing.virtual_time() as vc:
        for what in script:
            def op(what: str = what) -> str:
                if what == "ok":
                    return "ok"
                raise made[what]()

            try:
                results.append(policy.call(op))
            except Exception as exc:
                results.append(type(exc).__name__)
            vc.advance(0.5)
        return results, list(vc.sleeps)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(r=retries, b=breakers, script=errors)
def test_a_policy_from_a_file_behaves_like_the_same_built_in_code(
    tmp_path: Path, r: dict[str, Any], b: dict[str, Any] | None, script: list[str]
) -> None:
    from_code = run(code_policy(r, b, "in-code"), script)
    reg = load(write(tmp_path, file_text(r, b, "in-file")), environ={})
    assert run(reg["in-file"], script) == from_code
    # and the settings it resolved to load back to the same thing
    again = registry.from_mapping({"policies": reg.settings()})
    assert again.settings() == reg.settings()


# --- reload ---------------------------------------------------------------------------------


class TestReload:
    def test_new_calls_get_the_new_pipeline_and_a_running_call_finishes_on_the_old(
        self, tmp_path: Path
    ) -> None:
        path = write(tmp_path, "[policies.p]\nretry = {attempts = 2, backoff = 'constant', "
                               "delay = 0}\n")
        reg = load(path, environ={})
        policy = reg["p"]
        inside, go_on = threading.Event(), threading.Event()
        calls = {"old": 0}

        def slow_then_fail() -> None:
            calls["old"] += 1
            if calls["old"] == 1:
                inside.set()
                assert go_on.wait(10)
            raise ConnectionRefusedError()

        outcome: list[BaseException] = []

        def running() -> None:
            try:
                policy.call(slow_then_fail)
            except ConnectionRefusedError as exc:
                outcome.append(exc)

        thread = threading.Thread(target=running)
        thread.start()
        assert inside.wait(10)
        write(tmp_path, "[policies.p]\nretry = {attempts = 5, backoff = 'constant', delay = 0}\n")
        assert reg.reload()
        go_on.set()
        thread.join(10)
        assert calls["old"] == 2 and len(outcome) == 1  # the old pipeline: 2 attempts
        fresh = Flaky(*[ConnectionRefusedError()] * 4)
        assert policy.call(fresh) == 5  # the new one: 5 attempts

    def test_unchanged_parts_survive_a_reload(self, tmp_path: Path) -> None:
        text = "[policies.p]\nbreaker = {minimum_calls = 2}\nretry = {attempts = 2}\n"
        reg = load(write(tmp_path, text), environ={})
        breaker = reg["p"].current.policies[1]
        write(tmp_path, text.replace("attempts = 2", "attempts = 3"))
        reg.reload()
        assert reg["p"].current.policies[1] is breaker
        assert reg["p"].current.policies[0].attempts == 3

    def test_a_bad_reload_keeps_the_good_policies(self, tmp_path: Path) -> None:
        reg = load(write(tmp_path, "[policies.p]\nretry = {attempts = 2}\n"), environ={})
        write(tmp_path, "[policies.p]\nretry = {attempts = -2}\n")
        with pytest.raises(ConfigError, match="attempts"):
            reg.reload()
        assert reg["p"].current.policies[0].attempts == 2

    def test_reload_under_concurrent_calls_loses_none(self, tmp_path: Path) -> None:
        reg = load(write(tmp_path, "[policies.p]\nretry = {attempts = 3, backoff = 'constant', "
                                   "delay = 0}\nbulkhead = 64\n"), environ={})
        policy = reg["p"]
        done: list[int] = []
        failed: list[BaseException] = []
        stop = threading.Event()

        def caller() -> None:
            count = 0
            while not stop.is_set() and count < 5000:
                try:
                    policy.call(Flaky(ConnectionRefusedError()))
                    count += 1
                except BaseException as exc:
                    failed.append(exc)
                    return
            done.append(count)

        threads = [threading.Thread(target=caller) for _ in range(4)]
        for t in threads:
            t.start()
        for i in range(30):
            write(tmp_path, f"[policies.p]\nretry = {{attempts = {2 + i % 3}, backoff = "
                            f"'constant', delay = 0}}\nbulkhead = {32 + i}\n")
            reg.reload()
        stop.set()
        for t in threads:
            t.join(30)
        assert failed == []
        assert len(done) == 4 and all(n > 0 for n in done)

    def test_watch_reloads_when_the_file_changes(self, tmp_path: Path) -> None:
        path = write(tmp_path, "[policies.p]\ntimeout = 1\n")
        reg = load(path, environ={})
        with reg.watch(interval=0.02) as watcher:
            time.sleep(0.05)
            path.write_text("[policies.p]\ntimeout = 2.5\n# longer, so the size changes\n")
            end = time.monotonic() + 10
            while reg.settings()["p"]["timeout"]["seconds"] != 2.5 and time.monotonic() < end:
                time.sleep(0.02)
        assert reg.settings()["p"]["timeout"] == {"seconds": 2.5}
        assert watcher.reloads >= 1


class TestCommand:
    def test_config_check_prints_the_resolved_policies(self, tmp_path: Path) -> None:
        from typer.testing import CliRunner

        from stoic.cli import build_app

        path = write(tmp_path, "[policies.payments]\nretry = {attempts = 4}\ntimeout = 2\n")
        result = CliRunner().invoke(build_app(), ["config", "check", str(path)])
        assert result.exit_code == 0, result.output
        assert "[payments]" in result.output and "attempts=4" in result.output

    def test_config_check_exits_2_naming_the_key(self, tmp_path: Path) -> None:
        from typer.testing import CliRunner

        from stoic.cli import build_app

        path = write(tmp_path, "[policies.payments]\nretry = {attempts = 0}\n")
        result = CliRunner().invoke(build_app(), ["config", "check", str(path)])
        assert result.exit_code == 2
        assert "policies.payments.retry.attempts = 0" in result.output
