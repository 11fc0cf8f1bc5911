"""The private event loop of the asyncio-only brokers (NATS, RabbitMQ): uvloop's where it is
installed, asyncio's when asked; a sync call gets the coroutine's result or its exception."""

from __future__ import annotations

import asyncio

import pytest

from stoic.messaging.loop import LoopThread


async def _answer(value: int) -> int:
    await asyncio.sleep(0)
    return value


async def _fail() -> None:
    await asyncio.sleep(0)
    raise KeyError("gone")


def _check(thread: LoopThread) -> None:
    try:
        assert thread.run(_answer(7)) == 7
        with pytest.raises(KeyError, match="gone"):
            thread.run(_fail())
        assert asyncio.run(thread.arun(_answer(8))) == 8  # from another loop
    finally:
        thread.stop()
    assert thread.loop.is_closed()


def test_the_loop_is_uvloops_where_it_is_installed() -> None:
    uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed")
    thread = LoopThread("test-uvloop")
    assert isinstance(thread.loop, uvloop.Loop)
    _check(thread)


def test_stoic_uvloop_0_keeps_asyncios_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOIC_UVLOOP", "0")
    thread = LoopThread("test-asyncio")
    assert type(thread.loop).__module__.startswith("asyncio")
    _check(thread)
