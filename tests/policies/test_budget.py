"""RetryBudget: retries stay within ratio of the calls of the last ``window`` seconds."""

from __future__ import annotations

from stoic import RetryBudget
from stoic.testing import virtual_time


def test_retries_are_allowed_up_to_the_ratio_of_recent_calls() -> None:
    with virtual_time():
        budget = RetryBudget(ratio=0.5, min_per_second=0.0, window=10.0)
        for _ in range(4):
            budget.deposit()
        assert [budget.try_withdraw() for _ in range(3)] == [True, True, False]
        assert budget.balance == 0.0


def test_calls_older_than_the_window_no_longer_pay_for_retries() -> None:
    with virtual_time() as clock:
        budget = RetryBudget(ratio=1.0, min_per_second=0.0, window=3.0)
        budget.deposit()
        budget.deposit()
        clock.advance(2.0)
        assert budget.balance == 2.0  # still inside the window
        clock.advance(1.0)
        assert budget.balance == 0.0  # the second that held them has left it
        assert not budget.try_withdraw()


def test_a_quiet_spell_longer_than_the_window_forgets_everything() -> None:
    with virtual_time() as clock:
        budget = RetryBudget(ratio=1.0, min_per_second=0.0, window=5.0)
        budget.deposit()
        assert budget.try_withdraw()
        clock.advance(60.0)
        budget.deposit()
        assert budget.balance == 1.0  # one call, no retry: the old ones are gone
