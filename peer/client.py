"""Signed msgpack calls from one node to another, over httpx.

Every request but ``GET /v1/info`` is signed when the swarm has a secret (swarm.auth);
every reply is decoded and validated (swarm.protocol) before anyone acts on it. This is
where httpx's errors become ``swarm.errors.TransportError``: callers catch ``PeerError``
(the network or the other node failed us) and never import httpx's exceptions.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import overload

import httpx

from swarm import auth
from swarm.errors import RemoteProtocolError, TransportError
from swarm.protocol import (
    CONTENT_TYPE,
    M2,
    M3,
    MAX_CONTROL_BODY,
    M,
    Message,
    NodeInfo,
    decode,
    encode,
)

from .tls import PinMismatch

__all__ = ["call", "fetch_info", "signed_headers", "transport_errors"]

@contextmanager
def transport_errors() -> Iterator[None]:
    """Map httpx's errors (connect, read, write, timeouts, a broken stream) into ours,
    keeping the message and chaining the original."""
    try:
        yield
    except httpx.HTTPError as exc:
        raise TransportError(_pin_problem(exc) or str(exc) or type(exc).__name__) from exc


def _pin_problem(exc: BaseException) -> str | None:
    """The message of a refused certificate pin (peer.tls) somewhere in ``exc``'s chain:
    httpcore reports it as a bare ConnectError, which says nothing."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, PinMismatch):
            return f"refused: {cur}"
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def signed_headers(secret: auth.Credential, method: str, target: str, digest: str
                   ) -> dict[str, str]:
    return auth.sign(secret, method, target, time.time(), digest)


# The reply is one of ``expected``: typed as their union, as decode types it.
@overload
async def call(client: httpx.AsyncClient, secret: auth.Credential, method: str, target: str,
               msg: Message | None, expected: tuple[type[M]], base: str = "") -> M: ...
@overload
async def call(client: httpx.AsyncClient, secret: auth.Credential, method: str, target: str,
               msg: Message | None, expected: tuple[type[M], type[M2]], base: str = ""
               ) -> M | M2: ...
@overload
async def call(client: httpx.AsyncClient, secret: auth.Credential, method: str, target: str,
               msg: Message | None, expected: tuple[type[M], type[M2], type[M3]],
               base: str = "") -> M | M2 | M3: ...
async def call(client: httpx.AsyncClient, secret: auth.Credential, method: str, target: str,
               msg: Message | None, expected: tuple[type[Message], ...], base: str = ""
               ) -> Message:
    """One control request; raises TransportError (network) or RemoteProtocolError (reply).

    ``target`` is the path (and query) that is signed; ``base`` the scheme and authority,
    when the client has no base URL of its own.
    """
    body = encode(msg) if msg is not None else b""
    headers = signed_headers(secret, method, target, auth.body_digest(body))
    headers["content-type"] = CONTENT_TYPE
    with transport_errors():
        resp = await client.request(method, base + target, content=body, headers=headers)
    if resp.status_code >= 300:
        raise RemoteProtocolError(
            f"{method} {target.split('?')[0]}: {resp.status_code} {resp.text[:120].strip()}",
            status_code=resp.status_code)
    if len(resp.content) > MAX_CONTROL_BODY:
        raise RemoteProtocolError("reply too large")
    return decode(resp.content, expected)


async def fetch_info(client: httpx.AsyncClient, base_url: str,
                     secret: auth.Credential = None) -> NodeInfo:
    """A node's ``/v1/info``; signed (``secret``), a closed node also says its jobs."""
    headers = signed_headers(secret, "GET", "/v1/info", auth.body_digest(b""))
    with transport_errors():
        resp = await client.get(f"{base_url}/v1/info", headers=headers)
    if resp.status_code != 200:
        raise RemoteProtocolError(f"{base_url}: /v1/info answered {resp.status_code}")
    return decode(resp.content, NodeInfo)


# `swarm peers` asks each device found what it is working on; one that does not answer
# this soon is shown without it rather than holding up the list.
INFO_TIMEOUT_S = 2.0


async def fetch_infos(bases: list[str]) -> dict[str, NodeInfo]:
    """``/v1/info`` of each base URL at once; those that failed are left out."""
    import trio

    out: dict[str, NodeInfo] = {}

    async def one(client: httpx.AsyncClient, base: str) -> None:
        try:
            out[base] = await fetch_info(client, base)
        except (TransportError, RemoteProtocolError):
            pass

    async with httpx.AsyncClient(timeout=httpx.Timeout(INFO_TIMEOUT_S)) as client:
        async with trio.open_nursery() as nursery:
            for base in dict.fromkeys(bases):
                nursery.start_soon(one, client, base)
    return out
