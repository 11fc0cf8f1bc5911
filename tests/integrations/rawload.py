"""An open-loop HTTP/1.1 load generator on raw asyncio streams, for the overload tests.

httpx costs about a millisecond of CPU per request; on a loaded two-core machine that alone
would cap the offered load. This client writes the request line and reads the status, the
headers and a ``Content-Length`` body on kept-alive connections, nothing more.
"""

from __future__ import annotations

import asyncio

__all__ = ["Connections"]


class Connections:
    """Kept-alive connections to one ``host:port``; one request at a time per connection."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def request(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        """``(status, body)``; status 0 when the connection failed."""
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                 "Content-Length: 0"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        try:
            status = int((await reader.readline()).split()[1])
            length, keep = 0, True
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    keep = False
            body = await reader.readexactly(length)
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
            writer.close()
            return 0, b""
        if keep:
            self.idle.append((reader, writer))
        else:
            writer.close()
        return status, body

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()
