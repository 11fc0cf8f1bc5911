"""redis-py commands that never wait past ``stoic.deadline``.

    client = stoic.integrations.redis.client("redis://127.0.0.1:6379/0")
    with stoic.deadline(0.5):
        client.blpop("jobs", timeout=30)       # gives up after half a second

Every read of a reply is bounded by the time left (or the connection's ``socket_timeout``
when that is shorter). When the deadline runs out first, the command raises
``stoic.DeadlineExceeded`` chained to redis-py's ``TimeoutError``, and redis-py drops the
connection (a reply may still be on its way; the connection cannot be reused). A command is
not sent once the deadline has passed. Without a deadline nothing changes.

Use ``client(url)``, or pass ``connection_class=DeadlineConnection`` to ``redis.Redis``
or ``redis.ConnectionPool``. Needs a redis-py whose ``Connection.read_response`` takes a
``timeout`` (tested with 8.x).
"""

from __future__ import annotations

from typing import Any

import redis
from redis import exceptions

from ..context import remaining
from ..errors import DeadlineExceeded
from ._deadlines import check_started, deadline_ran_out

__all__ = ["DeadlineConnection", "client"]


class DeadlineConnection(redis.Connection):
    """A TCP connection whose sends are refused after the deadline and reads end at it."""

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        check_started("the Redis command")
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]

    def read_response(self, disable_decoding: bool = False, **kwargs: Any) -> Any:
        left = remaining()
        if left is None:
            return super().read_response(disable_decoding, **kwargs)
        if left <= 0:  # the reply may still come: this connection cannot be reused
            self.disconnect()  # type: ignore[no-untyped-call]
            raise DeadlineExceeded("deadline passed before the Redis reply was read; the "
                                   "connection was dropped")
        own = kwargs.get("timeout", self.socket_timeout)
        if not isinstance(own, (int, float)) or own > left:
            kwargs["timeout"] = left
        try:
            return super().read_response(disable_decoding, **kwargs)
        except exceptions.TimeoutError as exc:
            error = deadline_ran_out(exc, "a Redis command")
            if error is None:
                raise
            raise error from exc


def client(url: str, **kwargs: Any) -> redis.Redis:
    """``redis.Redis.from_url(url)`` whose connections are ``DeadlineConnection``."""
    if not url.startswith("redis://"):
        raise ValueError(f"url must be a redis:// URL (TLS and sockets: pass connection_class "
                         f"to redis.Redis yourself), got {url!r}")
    return redis.Redis.from_url(url, connection_class=DeadlineConnection, **kwargs)
