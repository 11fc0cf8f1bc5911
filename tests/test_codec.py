"""The JSON codec: every supported type round-trips, nothing stored can run code."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stoic import codec
from stoic.errors import CodecError


@pytest.mark.parametrize(
    "value",
    [
        dt.datetime(2026, 11, 27, 5, 45, 1, 123456, tzinfo=dt.timezone.utc),
        dt.datetime(2026, 11, 27, 5, 45),
        dt.date(2026, 11, 27),
        dt.time(5, 45, 1),
        dt.timedelta(days=1, seconds=3.5),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        decimal.Decimal("10.005"),
        b"\x00\xffbytes",
        {1, 2, 3},
        (1, "two", (3.0, None)),
        {"nested": [(1, 2), {"a": decimal.Decimal("1.5")}]},
    ],
    ids=lambda v: type(v).__name__,
)
def test_supported_types_round_trip_exactly(value: Any) -> None:
    assert codec.decode(codec.encode(value)) == value


def test_dataclass_and_pydantic_model_encode_as_their_fields() -> None:
    pydantic = pytest.importorskip("pydantic")

    @dataclasses.dataclass
    class Point:
        x: int
        y: int

    class User(pydantic.BaseModel):  # type: ignore[misc,name-defined]
        name: str
        joined: dt.date

    assert codec.decode(codec.encode(Point(1, 2))) == {"x": 1, "y": 2}
    assert codec.decode(codec.encode(User(name="a", joined=dt.date(2026, 1, 1)))) == {
        "name": "a", "joined": "2026-01-01"}


def test_registered_type_round_trips_and_wins_over_builtins() -> None:
    class Cents(int):
        pass

    c = codec.Codec()
    c.register(Cents, "cents", int, Cents)
    back = c.decode(c.encode({"price": Cents(250)}))
    assert back == {"price": 250}
    assert isinstance(back["price"], Cents)


def test_unencodable_value_raises_codec_error_naming_the_type() -> None:
    with pytest.raises(CodecError, match="object"):
        codec.encode(object())
    with pytest.raises(CodecError):
        codec.encode(float("nan"))


def test_unknown_tag_is_an_error_never_an_import() -> None:
    evil = '{"__stoic__": "os.system", "v": "echo pwned"}'
    with pytest.raises(CodecError, match="unknown codec tag"):
        codec.decode(evil)


def test_bad_json_raises_codec_error() -> None:
    with pytest.raises(CodecError, match="cannot decode"):
        codec.decode("{not json")


def test_canonical_text_is_the_same_for_equal_values_in_any_key_order() -> None:
    assert codec.canonical({"b": 1, "a": [1, {"d": 2, "c": 3}]}) == codec.canonical(
        {"a": [1, {"c": 3, "d": 2}], "b": 1})
    assert codec.canonical({"é": 1}).isascii()


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)


@given(_json)
def test_any_json_like_value_with_tuples_round_trips(value: Any) -> None:
    assert codec.decode(codec.encode(value)) == value


def _slow_encode(c: codec.Codec, value: Any, canonical: bool = False) -> str:
    """What ``encode``/``canonical`` wrote before the fast path: a ``_tuples`` copy, encoded."""
    encoder = c._canonical if canonical else c._encoder
    return encoder.encode(codec._tuples(value, c._by_type))


@given(_json)
def test_fast_path_writes_the_same_text_as_the_tuple_preserving_walk(value: Any) -> None:
    c = codec.Codec()
    assert c.encode(value) == _slow_encode(c, value)
    assert c.canonical(value) == _slow_encode(c, value, canonical=True)


def test_registered_subclass_of_a_plain_type_is_still_tagged_inside_plain_containers() -> None:
    class Cents(int):
        pass

    c = codec.Codec()
    c.register(Cents, "cents", int, Cents)
    value = {"lines": [{"price": Cents(250), "qty": 2}]}
    assert c.encode(value) == _slow_encode(c, value)
    assert isinstance(c.decode(c.encode(value))["lines"][0]["price"], Cents)


def test_registering_an_exact_plain_type_still_wins() -> None:
    c = codec.Codec()
    c.register(float, "money", lambda f: f"{f:.2f}", float)
    assert c.encode({"a": [1.5]}) == '{"a":[{"__stoic__":"money","v":"1.50"}]}'
    assert c.decode(c.encode({"a": [1.5]})) == {"a": [1.5]}


def test_a_cycle_is_a_codec_error() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(CodecError):
        codec.encode({"a": loop})
