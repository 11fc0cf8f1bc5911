"""The shared argument checks: each names the parameter and the value, and refuses bools."""

from __future__ import annotations

import math

import pytest

from stoic._validate import count, header_name, identifier, non_empty, number, rate, seconds


class TestCount:
    def test_accepts_an_int_in_range_and_returns_it(self) -> None:
        assert count("n", 3) == 3
        assert count("port", 0, minimum=0, maximum=65535) == 0

    @pytest.mark.parametrize("value", [True, 0, 1.0, "2", None])
    def test_refuses_bools_floats_and_values_below_the_minimum(self, value: object) -> None:
        with pytest.raises(ValueError, match=r"n must be an int >= 1, got"):
            count("n", value)

    def test_names_the_range_and_none_when_the_caller_allows_none(self) -> None:
        with pytest.raises(ValueError, match=r"port must be an int in 0\.\.9, got 10"):
            count("port", 10, minimum=0, maximum=9)
        with pytest.raises(ValueError, match=r"burst must be an int >= 1 or None, got 0"):
            count("burst", 0, optional=True)


class TestSeconds:
    def test_returns_a_float(self) -> None:
        assert seconds("t", 2) == 2.0
        assert isinstance(seconds("t", 2), float)
        assert seconds("t", 0, zero=True) == 0.0

    @pytest.mark.parametrize("value", [0, -1, math.nan, False, "1"])
    def test_refuses_what_is_not_a_positive_duration(self, value: object) -> None:
        with pytest.raises(ValueError, match=r"t must be > 0 seconds, got"):
            seconds("t", value)

    def test_finite_refuses_infinity(self) -> None:
        assert seconds("t", math.inf) == math.inf
        with pytest.raises(ValueError, match=r"open_for must be > 0 seconds \(finite\)"):
            seconds("open_for", math.inf, finite=True)


def test_number_and_rate_name_their_bounds() -> None:
    assert number("rate", 2.5, above=0) == 2.5
    with pytest.raises(ValueError, match=r"factor must be >= 1, got 0.5"):
        number("factor", 0.5, at_least=1)
    assert rate("r", 1) == 1.0
    assert rate("r", 0, zero=True) == 0.0
    with pytest.raises(ValueError, match=r"r must be in \(0, 1\], got 0"):
        rate("r", 0)
    with pytest.raises(ValueError, match=r"r must be in \[0, 1\], got 1.5"):
        rate("r", 1.5, zero=True)


def test_strings_header_names_and_identifiers() -> None:
    assert non_empty("name", "x") == "x"
    with pytest.raises(ValueError, match="name must be a non-empty str"):
        non_empty("name", "")
    assert header_name("header", "Idempotency-Key") == "Idempotency-Key"
    for bad in ("", "two words", "caf\u00e9", "a:b", 3):
        with pytest.raises(ValueError, match="header must be a non-empty ASCII header name"):
            header_name("header", bad)
    assert identifier("table", "stoic_outbox") == "stoic_outbox"
    for bad in ("1abc", "x; drop", "a" * 64, ""):
        with pytest.raises(ValueError, match="table must be a plain SQL identifier"):
            identifier("table", bad)
