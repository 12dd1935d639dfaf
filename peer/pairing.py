"""Pairing over HTTP: the new device's door (``/v1/pair/start``, ``/v1/pair/finish``) and
the client that ``swarm pair CODE`` runs, around the sans-I/O ``swarm.pairing``.

Bodies are JSON (a person may try them with curl), bounded to ``MAX_PAIR_BODY``; a bad one
is a 400, a wrong code a 403, too many starts a 429, and the node carries on. The group
arithmetic takes a fraction of a second on a Pi, so it runs in a thread, one run at a time.
The door is open while this device is paired with no one; it closes once it is paired.

``/v1/pair/introduce`` (swarm.introduce) is how membership spreads: a device this one is
paired with introduces another, signed and sealed with their pair key; it is open whenever
there is a pairing to check it with, and adds no device that is paired already.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import trio

from swarm import auth
from swarm.errors import RemoteProtocolError
from swarm.introduce import Introduction, open_sealed, seal
from swarm.pairing import Door, Initiator, Paired, PairingFailed, parse_started

from .client import transport_errors
from .http import HTTPError, Receive, Request, Send, read_body, respond
from .identity import Device, Devices, Identity
from .tls import load_cert

__all__ = ["INTRODUCE_ROUTE", "MAX_PAIR_BODY", "PAIR_ROUTES", "PairingService", "introduce",
           "pair_with"]

INTRODUCE_ROUTE = "/v1/pair/introduce"
PAIR_ROUTES = ("/v1/pair/start", "/v1/pair/finish", INTRODUCE_ROUTE)
MAX_PAIR_BODY = 2048  # an element is 512 hex digits; the rest are ids and names


class PairingService:
    """The routes of a node that shows a pairing code, and the devices it has paired."""

    def __init__(self, folder: Path, identity: Identity,
                 on_code: Callable[[str], None] | None = None,
                 on_paired: Callable[[Device], None] | None = None, *,
                 door: bool = True) -> None:
        """``door``: show a code and take pairings while paired with no one (``swarm
        join``); a coordinator's node only looks its pairings up."""
        self.folder = folder
        self.identity = identity
        self.devices = Devices(folder)
        self.cert = load_cert(folder, identity.device_id)
        self.door: Door | None = (None if self.devices.devices or not door else
                                  Door(identity.device_id, identity.name, self.cert.fingerprint))
        self._on_code = on_code or (lambda code: None)
        self._on_paired = on_paired or (lambda dev: None)
        self._lock = trio.Lock()
        self._stamp = -1
        if self.door is not None:
            self._on_code(self.door.code)

    def key_for(self, device_id: str) -> bytes | None:
        """The pinned key of a paired device, as devices.json holds it now (``swarm pair``
        and ``swarm devices revoke`` change it from another process): re-read when its
        modification time changed."""
        self._reload()
        return self.devices.key_for(device_id)

    def cert_for(self, device_id: str) -> str | None:
        """The pinned TLS fingerprint of a paired device, as devices.json holds it now."""
        self._reload()
        return self.devices.cert_for(device_id)

    def _reload(self) -> None:
        try:
            stamp = self.devices.path.stat().st_mtime_ns
        except FileNotFoundError:
            stamp = 0
        if stamp != self._stamp:
            self.devices, self._stamp = Devices(self.folder), stamp

    async def route(self, request: Request, receive: Receive, send: Send) -> None:
        if request.method != "POST":
            raise HTTPError("use POST", status_code=405)
        body = await read_body(receive, request, MAX_PAIR_BODY)
        if request.path == INTRODUCE_ROUTE:
            async with self._lock:
                taken = self._introduced(request, body)
            await respond(send, 200, json.dumps(taken).encode(), "application/json")
            return
        if self.door is None:
            raise HTTPError("this device is paired already and shows no pairing code",
                            status_code=404)
        try:
            obj: Any = json.loads(body)
        except ValueError as exc:
            raise HTTPError("the body is not JSON") from exc
        door = self.door
        async with self._lock:
            code = door.code
            now = trio.current_time()
            if request.path == PAIR_ROUTES[0]:
                started = await trio.to_thread.run_sync(door.start, obj, now)
                reply: dict[str, Any] = started.to_json()
            else:
                paired = door.finish(obj, now)
                dev = Devices(self.folder).add(paired)
                self.door = None  # paired: this device is in the swarm now
                self._on_paired(dev)
                reply = {"paired": True, "name": dev.name}
            if self.door is not None and door.code != code:
                self._on_code(door.code)  # attempts spent: the screen shows the new code
        await respond(send, 200, json.dumps(reply).encode(), "application/json")


    def _introduced(self, request: Request, body: bytes) -> dict[str, Any]:
        """Pin the device a paired one introduces (4xx for anything else)."""
        sender = auth.verify_device(self.key_for, request.method, request.target,
                                    request.headers, auth.body_digest(body), time.time())
        key = self.key_for(sender)
        try:
            obj = json.loads(body)
            if not (isinstance(obj, dict) and set(obj) == {"sealed"}):
                raise ValueError("other keys")
            sealed = bytes.fromhex(obj["sealed"])
        except (ValueError, TypeError) as exc:
            raise HTTPError('the body is JSON {"sealed": HEX}, nothing else') from exc
        if key is None:  # revoked since the check
            raise HTTPError("not paired", status_code=401)
        intro = Introduction.from_bytes(open_sealed(key, sealed))
        if intro.device_id in (self.identity.device_id, sender):
            raise HTTPError("a device is not introduced to itself or by itself")
        devices = Devices(self.folder)
        if intro.device_id in devices.devices:
            raise HTTPError("paired with that device already: the pairing is kept",
                            status_code=409)
        dev = devices.add(Paired(intro.device_id, intro.name, intro.key, intro.cert))
        self.door = None  # in the swarm now
        self._reload()
        self._on_paired(dev)
        return {"paired": True, "name": dev.name}


async def introduce(client: httpx.AsyncClient, base_url: str, me: Identity, key: bytes,
                    intro: Introduction) -> None:
    """Tell the device at ``base_url``, paired with us under ``key``, about another one.
    Raises PeerError if it was not taken."""
    body = json.dumps({"sealed": seal(key, intro.to_bytes()).hex()}).encode()
    headers = auth.sign_device(key, me.device_id, "POST", INTRODUCE_ROUTE, time.time(),
                               auth.body_digest(body))
    with transport_errors():
        resp = await client.post(base_url + INTRODUCE_ROUTE, content=body,
                                 headers={**headers, "content-type": "application/json"})
    if resp.status_code != 200:
        raise RemoteProtocolError(f"{base_url}: {resp.status_code} {resp.text[:200].strip()}",
                                  status_code=resp.status_code)


async def pair_with(client: httpx.AsyncClient, base_url: str, code: str, identity: Identity,
                    folder: Path) -> Device:
    """Run the initiator's side against the device at ``base_url`` showing ``code``; store
    and return that device. Raises PairingFailed on a wrong code, PeerError otherwise."""
    cert = await trio.to_thread.run_sync(load_cert, folder, identity.device_id)
    init = await trio.to_thread.run_sync(Initiator, code, identity.device_id, identity.name,
                                         cert.fingerprint)

    async def post(path: str, body: dict[str, Any]) -> Any:
        with transport_errors():
            resp = await client.post(base_url + path, json=body)
        if resp.status_code != 200:
            cls = PairingFailed if resp.status_code in (403, 404, 409, 429) else \
                RemoteProtocolError
            raise cls(f"{base_url}{path}: {resp.status_code} {resp.text[:200].strip()}",
                      status_code=resp.status_code)
        if len(resp.content) > MAX_PAIR_BODY:
            raise RemoteProtocolError("pairing reply too large")
        try:
            return resp.json()
        except ValueError as exc:
            raise RemoteProtocolError(f"{base_url}{path}: reply is not JSON") from exc

    started = parse_started(await post(PAIR_ROUTES[0], init.start_body()))
    paired: Paired
    paired, finish = await trio.to_thread.run_sync(init.finish, started)
    await post(PAIR_ROUTES[1], finish)
    return Devices(folder).add(paired)
