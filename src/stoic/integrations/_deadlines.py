"""What the database and queue deadline hooks share: refusing late work, naming the cause.

No driver is imported here (``pooled`` imports psycopg_pool when first called). Each hook
(psycopg, SQLAlchemy, sqlite3, redis) turns the time left before ``stoic.deadline`` into its
library's own timeout, and turns the timeout that fires *because the deadline ran out* into
``stoic.DeadlineExceeded``, chained to the driver's error; a timeout of the driver's own
that fires earlier is left as it is.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import math
from collections.abc import Awaitable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from ..context import remaining, reset_deadline, set_deadline
from ..errors import DeadlineExceeded

__all__ = [
    "RESET_TIMEOUT",
    "SET_TIMEOUT",
    "SQLiteBusy",
    "arun_on",
    "cancel_pending",
    "check_started",
    "deadline_ran_out",
    "outside_deadline",
    "pooled",
    "raise_if_ran_out",
    "run_on",
    "sqlite_busy_ran_out",
    "timeout_ms",
    "within",
]

T = TypeVar("T")

#: PostgreSQL: bound the session's statements (a whole number of milliseconds, >= 1).
SET_TIMEOUT = "SET statement_timeout = {}"
#: PostgreSQL: back to the server's configured default.
RESET_TIMEOUT = "SET statement_timeout = DEFAULT"

# A timeout that fires with less than this left of the deadline was the deadline firing.
_SLACK = 0.005


def check_started(what: str) -> float | None:
    """The time left, or ``DeadlineExceeded`` when it has run out: ``what`` is not started."""
    left = remaining()
    if left is not None and left <= 0:
        raise DeadlineExceeded(f"deadline passed before {what} was sent; it was not run")
    return left


def timeout_ms(left: float) -> int:
    """``left`` seconds as PostgreSQL's statement_timeout: whole milliseconds, at least 1."""
    return max(1, int(left * 1000))


def deadline_ran_out(exc: BaseException, what: str) -> DeadlineExceeded | None:
    """The ``DeadlineExceeded`` to raise from ``exc`` when the deadline has (all but) run out."""
    left = remaining()
    if left is None or left > _SLACK:
        return None
    error = DeadlineExceeded(f"deadline ran out during {what} ({type(exc).__name__})")
    error.__cause__ = exc
    return error


class SQLiteBusy:
    """Bounds one sqlite3 connection's busy wait by the caller's deadline.

    Call it before each operation on the connection: under a deadline it sets SQLite's
    ``busy_timeout`` to the time left (never more than the connection's own ``default``),
    and refuses the operation once the deadline has passed; the first call without a deadline
    after one with puts ``default`` back. Without a deadline and nothing to put back it only
    reads the deadline. Not thread-safe: one per connection, used by one thread at a time.
    """

    __slots__ = ("_bounded", "_conn", "_default_ms")

    def __init__(self, conn: Any, default: float) -> None:
        self._conn = conn
        self._default_ms = math.ceil(default * 1000)
        self._bounded = False

    def __call__(self, what: str) -> None:
        self.bound(remaining(), what)

    def bound(self, left: float | None, what: str) -> None:
        """``__call__`` with the time left already read (``stoic.remaining()``)."""
        if left is None:
            if self._bounded:
                self._bounded = False
                self._conn.execute(f"PRAGMA busy_timeout = {self._default_ms}")
            return
        if left <= 0:
            raise DeadlineExceeded(f"deadline passed before {what} was started; it was not run")
        self._bounded = True
        ms = min(self._default_ms, math.ceil(left * 1000))
        self._conn.execute(f"PRAGMA busy_timeout = {ms}")


def raise_if_ran_out(exc: BaseException, marker: str, what: str) -> None:
    """Raise ``DeadlineExceeded`` from ``exc`` when its message holds ``marker`` (the
    database's word for the cancel stoic set up for the deadline) and the deadline has (all
    but) run out; return otherwise, for the caller to re-raise ``exc``."""
    if marker in str(exc):
        error = deadline_ran_out(exc, what)
        if error is not None:
            raise error from exc


def sqlite_busy_ran_out(exc: BaseException, what: str) -> DeadlineExceeded | None:
    """The ``DeadlineExceeded`` to raise when SQLite gave up waiting for a lock (``database
    is locked``) because the deadline ran out; None for any other error."""
    text = str(exc)
    if "locked" not in text and "busy" not in text:
        return None
    return deadline_ran_out(exc, what)


async def within(awaitable: Awaitable[T], what: str) -> T:
    """Await ``awaitable``, cancelled when the caller's deadline runs out.

    Without a deadline it is awaited as it is. Under one it is not started once the deadline
    has passed, and it is cancelled when the time left is up: then ``DeadlineExceeded``,
    chained to asyncio's ``TimeoutError``. Whatever the awaitable does on cancellation
    (a driver drops its connection, a transaction rolls back) is its own business.
    """
    left = remaining()
    if left is None:
        return await awaitable
    if left <= 0:
        if inspect.iscoroutine(awaitable):
            awaitable.close()  # never started: no "was never awaited" warning
        raise DeadlineExceeded(f"deadline passed before {what} was started; it was not run")
    try:
        return await asyncio.wait_for(awaitable, left)
    except asyncio.TimeoutError as exc:
        raise DeadlineExceeded(f"deadline ran out during {what}") from exc


@contextmanager
def pooled(pool: Any, what: str) -> Iterator[Any]:
    """``pool.connection()`` of a ``psycopg_pool.ConnectionPool``, its wait bounded by the
    caller's deadline: ``DeadlineExceeded`` (chained to ``PoolTimeout``) when the deadline
    ran out first, and none at all once it has passed. Without a deadline the pool's own
    timeout applies, as always."""
    from psycopg_pool import PoolTimeout

    left = check_started(what)
    try:
        with pool.connection(left) as conn:
            yield conn
    except PoolTimeout as exc:
        error = deadline_ran_out(exc, f"the wait for a connection for {what}")
        if error is None:
            raise
        raise error from exc


def _refuse_late(coro: Coroutine[Any, Any, Any], what: str) -> float | None:
    """The time left; ``DeadlineExceeded`` (and ``coro`` closed, never run) once it passed."""
    try:
        return check_started(what)
    except DeadlineExceeded:
        coro.close()
        raise


def run_on(loop: asyncio.AbstractEventLoop, what: str, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on ``loop`` (another thread's) and wait for it, no longer than the
    caller's deadline: then it is cancelled and ``DeadlineExceeded`` raised. It is not
    submitted once the deadline has passed. Without a deadline: ``.result()``, as always."""
    if remaining() is None:
        return asyncio.run_coroutine_threadsafe(coro, loop).result()
    left = _refuse_late(coro, what)
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        return future.result(timeout=left)
    except concurrent.futures.TimeoutError as exc:
        if not future.cancel():  # it finished after all: its own result or error
            return future.result()
        raise DeadlineExceeded(f"deadline ran out during {what}") from exc


async def arun_on(loop: asyncio.AbstractEventLoop, what: str, coro: Coroutine[Any, Any, T]) -> T:
    """``run_on`` for async callers: awaited from the caller's loop (directly when that is
    ``loop``), cancelled when the caller's deadline runs out."""
    if remaining() is not None:
        _refuse_late(coro, what)
    if asyncio.get_running_loop() is loop:
        return await within(coro, what)
    future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, loop)
    return await within(asyncio.wrap_future(future), what)


def cancel_pending(loop: asyncio.AbstractEventLoop, wait: float = 1.0) -> None:
    """Cancel every task on ``loop`` (another thread's) and wait up to ``wait`` seconds for
    them to end: for a client given up on at its deadline before its loop is stopped, so
    none of the tasks it started is destroyed while pending."""

    async def cancel_all() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    try:
        asyncio.run_coroutine_threadsafe(cancel_all(), loop).result(wait)
    except Exception:  # a task that will not end: stopping the loop is all that is left
        pass


class outside_deadline:
    """Run a block with no deadline: for bookkeeping that records work already done.

    Storing a finished call's response (an idempotency store's ``complete``/``release``)
    must not fail because the work overran the caller's deadline: the work would then be
    repeated by the next caller once its lease ran out. Such bookkeeping runs with the
    store's own timeouts, as without a deadline. The deadline is back after the block.
    """

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token = set_deadline(None)

    def __exit__(self, *exc: object) -> None:
        reset_deadline(self._token)
