"""A minimal ASGI toolkit for the node's few endpoints: bounded bodies, typed replies.

No framework: the node has eight routes, and owning the request loop keeps every body
size-bounded and every failure a 4xx. hypercorn (trio mode) runs the app.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from swarm.errors import RemoteProtocolError
from swarm.protocol import CONTENT_TYPE, MAX_CONTROL_BODY, PROTOCOL_VERSION, Message, encode

__all__ = ["ClientGone", "HTTPError", "Request", "end_after_request", "iter_body", "read_body",
           "respond", "respond_message"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

# Request targets are short on this protocol; anything longer is not ours.
MAX_TARGET = 1024
MAX_QUERY_PARAMS = 8


class HTTPError(RemoteProtocolError):
    """A request we refuse, with its status code."""


class ClientGone(HTTPError):
    """The client's connection closed before its request body was complete."""


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    target: str  # raw path with query string, exactly as sent: what signatures cover
    query: dict[str, str]
    headers: dict[str, str]
    client: str

    @classmethod
    def from_scope(cls, scope: Scope) -> Request:
        raw = scope.get("raw_path") or scope["path"].encode()
        qs = scope.get("query_string", b"")
        if len(raw) + len(qs) > MAX_TARGET:
            raise HTTPError("request target too long", status_code=414)
        try:
            target = raw.decode("ascii") + (("?" + qs.decode("ascii")) if qs else "")
            pairs = parse_qsl(qs.decode("ascii"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError as exc:
            raise HTTPError("request target is not ASCII") from exc
        if len(pairs) > MAX_QUERY_PARAMS:
            raise HTTPError("too many query parameters")
        headers: dict[str, str] = {}
        for k, v in scope.get("headers", []):
            headers.setdefault(k.decode("latin-1").lower(), v.decode("latin-1"))
        client = scope.get("client") or ("", 0)
        return cls(scope["method"], scope["path"], target, dict(pairs), headers, client[0])


def end_after_request(receive: Receive, send: Send) -> tuple[Receive, Send]:
    """``receive`` and ``send`` wrapped so that no response ends before its request has.

    A response sent before the request body was read (a 404, 401 or 413) goes out at once,
    but its end is held back while the rest of the body is read and dropped (or until the
    client goes away). Why: when a response ends first, hypercorn 0.18 (trio) shuts the
    socket with ``send_eof`` outside its send lock; if the rest of that request then breaks
    HTTP framing (a bad chunk header), its own 400 collides with that shutdown, and the
    BusyResourceError ends the whole server, and so the job (tests/test_fuzz_http.py: about
    60 requests of ``GET /v1/info`` with a broken chunked body were enough, in 10 ms).
    The cost: a refused upload is read to its end instead of cut off; a peer's worker stops
    one anyway at its next progress report (keep=False), within a second.
    """
    body_read = False

    async def receive_tracked() -> MutableMapping[str, Any]:
        nonlocal body_read
        msg = await receive()
        if msg["type"] == "http.disconnect" or not msg.get("more_body", False):
            body_read = True
        return msg

    async def send_held(message: MutableMapping[str, Any]) -> None:
        if (message["type"] != "http.response.body" or message.get("more_body", False)
                or body_read):
            await send(message)
            return
        await send({**message, "more_body": True})  # the client has its whole answer now
        while not body_read:
            await receive_tracked()
        await send({"type": "http.response.body", "body": b""})

    return receive_tracked, send_held


async def iter_body(receive: Receive, limit: int) -> AsyncIterator[bytes]:
    """The request body in pieces; HTTPError 413 as soon as it passes ``limit`` bytes."""
    total = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ClientGone("client went away", status_code=400)
        data = msg.get("body", b"")
        total += len(data)
        if total > limit:
            raise HTTPError(f"body larger than {limit} bytes", status_code=413)
        if data:
            yield data
        if not msg.get("more_body", False):
            return


async def read_body(receive: Receive, request: Request, limit: int = MAX_CONTROL_BODY
                    ) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise HTTPError(f"body larger than {limit} bytes", status_code=413)
    parts = [piece async for piece in iter_body(receive, limit)]
    return b"".join(parts)


async def respond(send: Send, status: int, body: bytes = b"",
                  content_type: str = "text/plain; charset=utf-8",
                  headers: list[tuple[bytes, bytes]] | None = None) -> None:
    hdrs = [(b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})


async def respond_message(send: Send, msg: Message, request: Request, status: int = 200
                          ) -> None:
    """msgpack by default; JSON when the caller asks for it (curl, browsers, people)."""
    if "application/json" in request.headers.get("accept", ""):
        data = {"v": PROTOCOL_VERSION, "t": msg.TYPE, **{
            k: (dict(v) if hasattr(v, "items") else v)  # read-only maps -> JSON objects
            for k, v in ((f, getattr(msg, f)) for f in msg.__dataclass_fields__)}}
        await respond(send, status, json.dumps(data).encode(), "application/json")
    else:
        await respond(send, status, encode(msg), CONTENT_TYPE)
