"""Frozen settings: a live policy's settings never change; replace() builds a new policy."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from stoic import Bulkhead, Fallback, RateLimiter, Retry, RetryBudget, Timeout
from stoic.errors import BulkheadFullError, RateLimitedError
from stoic.policies.hedge import Hedge

# (policy, a setting, a new value for it, an invalid value for it)
CASES: list[tuple[Any, str, Any, Any]] = [
    (Bulkhead(2, name="db"), "max_concurrent", 1, 0),
    (Timeout(1.0, name="t"), "seconds", 2.0, -1.0),
    (Hedge(0.1, name="h"), "max_hedges", 2, 0),
    (Fallback("cached", name="f"), "value_or_fn", "other", None),
    (RateLimiter(5.0, name="r"), "rate", 10.0, 0.0),
    (Retry(max_attempts=2), "max_attempts", 4, 0),
]
IDS = [type(case[0]).__name__ for case in CASES]


@pytest.mark.parametrize(("policy", "setting", "new", "bad"), CASES, ids=IDS)
class TestEveryPolicy:
    def test_assigning_a_setting_on_a_live_policy_raises_and_says_how(
        self, policy: Any, setting: str, new: Any, bad: Any
    ) -> None:
        before = getattr(policy, setting)
        with pytest.raises(AttributeError, match=rf"{setting} is read-only.*replace\("):
            setattr(policy, setting, new)
        assert getattr(policy, setting) == before

    def test_the_config_is_a_frozen_dataclass(
        self, policy: Any, setting: str, new: Any, bad: Any
    ) -> None:
        assert dataclasses.is_dataclass(policy.config)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(policy.config, setting, new)
        assert getattr(policy.config, setting) == getattr(policy, setting)

    def test_replace_builds_a_new_policy_and_leaves_this_one_alone(
        self, policy: Any, setting: str, new: Any, bad: Any
    ) -> None:
        before = getattr(policy, setting)
        twin = policy.replace(**{setting: new})
        assert type(twin) is type(policy) and twin is not policy
        assert getattr(twin, setting) == new
        assert getattr(policy, setting) == before
        assert twin.name == policy.name

    def test_replace_validates_and_rejects_unknown_names(
        self, policy: Any, setting: str, new: Any, bad: Any
    ) -> None:
        if setting != "value_or_fn":  # any value is a valid fallback value
            with pytest.raises(ValueError, match=setting):
                policy.replace(**{setting: bad})
        with pytest.raises(TypeError, match="unknown parameters"):
            policy.replace(no_such_setting=1)


def test_a_replaced_bulkhead_has_slots_of_its_own() -> None:
    one = Bulkhead(1, name="one")
    two = one.replace(max_concurrent=2)
    # while ``one``'s only slot is taken, ``two`` still admits a call
    assert one.call(lambda: two.call(lambda: "inside")) == "inside"
    with pytest.raises(BulkheadFullError):
        one.call(lambda: one.call(lambda: "never"))
    assert (one.active, two.active) == (0, 0)


def test_a_replaced_rate_limiter_counts_its_own_rate() -> None:
    limiter = RateLimiter(1.0, burst=1, name="own")
    twin = limiter.replace(burst=2)
    limiter.call(lambda: None)
    with pytest.raises(RateLimitedError):
        limiter.call(lambda: None)
    twin.call(lambda: None)
    twin.call(lambda: None)  # its own bucket of two, untouched by the first limiter's call


def test_a_replaced_rate_limiter_keeps_the_rules_of_the_constructor() -> None:
    with pytest.raises(ValueError, match="max_wait needs wait=True"):
        RateLimiter(1.0).replace(max_wait=1.0)
    assert RateLimiter(2.5).burst == 3


def test_a_full_replaced_bulkhead_rejects_by_its_own_limit() -> None:
    bulkhead = Bulkhead(2).replace(max_concurrent=1)

    def nested() -> str:
        return bulkhead.call(lambda: "never")

    with pytest.raises(BulkheadFullError):
        bulkhead.call(nested)


def test_hedge_and_timeout_replace_keep_working_async() -> None:
    async def ok() -> str:
        return "ok"

    hedge = Hedge(0.5, budget=RetryBudget()).replace(max_hedges=2)
    timeout = Timeout(1.0).replace(seconds=5.0)
    assert asyncio.run(hedge.acall(ok)) == "ok"
    assert asyncio.run(timeout.acall(ok)) == "ok"
    assert (hedge.max_hedges, timeout.seconds) == (2, 5.0)


def test_a_retry_budget_settings_are_read_only() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=1.0, window=5.0)
    for setting in ("ratio", "min_per_second", "window"):
        with pytest.raises(AttributeError, match="read-only"):
            setattr(budget, setting, 9.0)
    assert (budget.ratio, budget.min_per_second, budget.window) == (0.2, 1.0, 5.0)
    wider = budget.replace(window=10.0)
    assert (wider.ratio, wider.window, budget.window) == (0.2, 10.0, 5.0)
    with pytest.raises(ValueError, match="window"):
        budget.replace(window=0.5)


def test_replace_keeps_a_subclass_own_attributes_and_starts_fresh_state() -> None:
    from stoic.policies.throttle import AdaptiveThrottle, ThrottleBudget

    throttle = AdaptiveThrottle()
    budget = ThrottleBudget(throttle, ratio=1.0, min_per_second=0.0)
    budget.deposit()
    twin = budget.replace(ratio=0.5)
    assert type(twin) is ThrottleBudget and twin.throttle is throttle
    assert (twin.ratio, twin.balance, budget.balance) == (0.5, 0.0, 1.0)
    assert not twin.try_withdraw()
