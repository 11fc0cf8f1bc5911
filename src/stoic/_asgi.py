"""The ASGI types, in one low module that every ASGI piece of stoic imports.

ASGI is a calling convention, not a library: an application is an async callable taking a
``scope`` (what the connection is), a ``receive`` callable (the next message from the client)
and a ``send`` callable (a message to the client). Messages and scopes are plain mutable
mappings. Nothing here imports a framework, and nothing here imports the rest of stoic, so
the middlewares (``stoic.integrations.asgi``, ``stoic.idempotency.asgi``) can both use these
names without importing each other.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["ASGIApp", "Message", "Receive", "Scope", "Send"]

Scope = MutableMapping[str, Any]
"""What the connection is: ``type``, ``method``, ``path``, ``headers`` (byte pairs) ..."""

Message = MutableMapping[str, Any]
"""One ASGI event: ``http.request``, ``http.response.start``, ``http.response.body`` ..."""

Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
