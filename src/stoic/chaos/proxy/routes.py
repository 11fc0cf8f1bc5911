"""The Toxiproxy 2.x routes: (method, path, JSON body) -> (status, JSON answer).

Transport-free, so the HTTP server (``server``) and ``ProxyServer.request`` (in process) share
it. A route is a path pattern (``*`` matches one segment, passed to the handler) and a
handler per method; an unknown path answers 404, a known path with another method 405.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from .model import ApiError, Collection, body_object

__all__ = ["ROUTES", "TOXIPROXY_VERSION", "Answer", "dispatch"]

#: the Toxiproxy version whose API this server speaks (reported by ``GET /version``)
TOXIPROXY_VERSION = "2.12.0"

Answer = tuple[int, Any]
Handler = Callable[[Collection, list[str], Any], Awaitable[Answer]]


async def _version(collection: Collection, args: list[str], body: Any) -> Answer:
    return 200, {"version": TOXIPROXY_VERSION}


async def _reset(collection: Collection, args: list[str], body: Any) -> Answer:
    failed = await collection.reset()
    if not failed:
        return 204, None
    reasons = "; ".join(f"{name}: {why}" for name, why in failed.items())
    return 409, {"error": f"reset, but could not enable {reasons}", "status": 409,
                 "failed": failed}


async def _populate(collection: Collection, args: list[str], body: Any) -> Answer:
    done, error = await collection.populate(body)
    payload: dict[str, Any] = {"proxies": [p.to_json() for p in done]}
    if error is None:
        return 201, payload
    payload.update({"error": error.message, "status": error.status})
    return error.status, payload


async def _proxies(collection: Collection, args: list[str], body: Any) -> Answer:
    return 200, {name: p.to_json() for name, p in collection.proxies.items()}


async def _create(collection: Collection, args: list[str], body: Any) -> Answer:
    return 201, (await collection.create(body_object(body))).to_json()


async def _proxy(collection: Collection, args: list[str], body: Any) -> Answer:
    return 200, collection.get(args[0]).to_json()


async def _update(collection: Collection, args: list[str], body: Any) -> Answer:
    return 200, (await collection.update(args[0], body_object(body))).to_json()


async def _delete(collection: Collection, args: list[str], body: Any) -> Answer:
    await collection.delete(args[0])
    return 204, None


async def _toxics(collection: Collection, args: list[str], body: Any) -> Answer:
    return 200, [t.to_json() for t in collection.get(args[0]).toxics.values()]


async def _add_toxic(collection: Collection, args: list[str], body: Any) -> Answer:
    return 200, collection.add_toxic(args[0], body_object(body)).to_json()


async def _toxic(collection: Collection, args: list[str], body: Any) -> Answer:
    return 200, collection.get_toxic(args[0], args[1]).to_json()


async def _update_toxic(collection: Collection, args: list[str], body: Any) -> Answer:
    return 200, collection.update_toxic(args[0], args[1], body_object(body)).to_json()


async def _remove_toxic(collection: Collection, args: list[str], body: Any) -> Answer:
    collection.remove_toxic(args[0], args[1])
    return 204, None


#: path pattern -> method -> handler (Toxiproxy accepts POST and PATCH alike for updates)
ROUTES: dict[tuple[str, ...], dict[str, Handler]] = {
    ("version",): {"GET": _version},
    ("reset",): {"POST": _reset},
    ("populate",): {"POST": _populate},
    ("proxies",): {"GET": _proxies, "POST": _create},
    ("proxies", "*"): {"GET": _proxy, "POST": _update, "PATCH": _update, "DELETE": _delete},
    ("proxies", "*", "toxics"): {"GET": _toxics, "POST": _add_toxic},
    ("proxies", "*", "toxics", "*"): {
        "GET": _toxic, "POST": _update_toxic, "PATCH": _update_toxic, "DELETE": _remove_toxic,
    },
}


def _match(parts: list[str]) -> tuple[dict[str, Handler], list[str]] | None:
    for pattern, methods in ROUTES.items():
        if len(pattern) == len(parts) and all(
            want in ("*", part) for want, part in zip(pattern, parts, strict=True)
        ):
            return methods, [part for want, part in zip(pattern, parts, strict=True) if want == "*"]
    return None


async def dispatch(collection: Collection, method: str, path: str, body: Any) -> Answer:
    """Answer one API request. ``body`` is decoded JSON (or None); refusals raise ApiError.

    Requests run one at a time (``collection.lock``), so each sees and leaves a whole state.
    """
    parts = [unquote(p) for p in path.split("?", 1)[0].strip("/").split("/") if p]
    found = _match(parts)
    if found is None:
        raise ApiError(404, f"no such route: {path}")
    methods, args = found
    handler = methods.get(method.upper())
    if handler is None:
        raise ApiError(405, f"method {method} not allowed on {path}")
    async with collection.lock:
        return await handler(collection, args, body)
