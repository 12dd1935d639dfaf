"""Recruiting peers for a job: mDNS, ``--peer`` and hellos; invites, re-invites, goodbyes.

The trio shell around the coordinator's candidate list: a candidate is invited once its
``/v1/info`` shows it idle, able to encode the profile, and not ourselves; one that drops
the job is invited again; one that accepts invites but never claims is left alone.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import httpx
import trio

from chunker.tools import short_version
from swarm import auth
from swarm.errors import RemoteProtocolError, UsageError
from swarm.events import JobEvent, NoPeers, PeerForeign, PeerJoined, PeerLeft, PeerUnreachable
from swarm.presence import PeerEvent, classify
from swarm.protocol import PROTOCOL_VERSION, Invite, ResultAck

from .client import call, fetch_info
from .node import Node
from .pyz import bootstrap_line

if TYPE_CHECKING:
    from .coordinator import EncodeOptions, JobServer

__all__ = ["CENSUS_S", "census", "free_port", "parse_peer", "recruit"]

log = logging.getLogger(__name__)

RECRUIT_EVERY_S = 1.0
# A job with no peer after this long says how to add one (the line that fetches swarm.pyz
# from us): long enough for mDNS answers and --peer hellos, short enough to be read early.
NO_PEER_HINT_S = 5.0
RECHECK_INVITED_S = 5.0
MAX_FRUITLESS_INVITES = 3

@dataclass(slots=True)
class _Candidate:
    host: str
    port: int
    node_id: str = ""
    name: str = ""
    invited: bool = False
    unusable: str = ""
    next_try: float = 0.0
    busy: bool = False
    invites: int = 0
    named: bool = False  # given as --peer: the user expects it, so say if it cannot be had
    reported: bool = False

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"


def free_port(wanted: int) -> int:
    """``wanted`` if it can be bound (so `join --peer HOST:7800` finds us), else any port."""
    if wanted == 0:
        return 0
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("0.0.0.0", wanted))
        except OSError:
            return 0
    return wanted


def _local_ip_for(host: str) -> str:
    """Our address on the route to ``host`` (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((host, 9))
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def parse_peer(spec: str) -> tuple[str, int]:
    host, sep, port = spec.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--peer {spec}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def _our_fingerprint(opts: EncodeOptions) -> str:
    return auth.fingerprint(opts.secret) if opts.secret else ""


# How long the coordinator listens for mDNS answers before it plans the chunks (while it
# probes the input). Three peers in network namespaces all answered within 0.1 s
# (tests/netns.py LAN, `find_peers` at 0.1-1 s found all three every time).
CENSUS_S = 0.3


async def census(opts: EncodeOptions) -> int:
    """How many idle peers of our swarm answer mDNS now; the chunk plan is sized for them.

    Only a count: recruiting proper (``recruit``) still invites whoever appears later.
    A network without multicast, or any other failure, counts none."""
    from .discovery import find_peers

    fp = _our_fingerprint(opts)
    try:
        records = await find_peers(CENSUS_S, interfaces=opts.interfaces)
    except Exception as exc:  # only a sizing hint: it must never stop a job
        log.debug("census failed: %s", exc)
        return 0
    return sum(1 for r in records
               if r.state == "idle" and classify(r, fp, PROTOCOL_VERSION) == "ok")


async def recruit(server: JobServer, node: Node, opts: EncodeOptions,
                   emit: Callable[[JobEvent], None]) -> None:
    """Find peers (mDNS, --peer), invite them, re-invite ones that dropped the job."""
    candidates: dict[str, _Candidate] = {}
    for spec in opts.peers:
        host, port = parse_peer(spec)
        candidates[f"{host}:{port}"] = _Candidate(host, port, named=True)
    our_fp = _our_fingerprint(opts)

    def hello(host: str, port: int) -> None:
        c = candidates.setdefault(f"{host}:{port}", _Candidate(host, port))
        if not c.invited:
            c.next_try = 0.0

    node.hello_sink = hello

    async def watch_mdns() -> None:
        from .discovery import browse

        send, recv = trio.open_memory_channel[PeerEvent](64)
        async with trio.open_nursery() as n:
            n.start_soon(partial(browse, send, interfaces=opts.interfaces))
            async for ev in recv:
                rec = ev.record
                if rec.node_id == node.node_id or not rec.host:
                    continue
                key = f"{rec.host}:{rec.port}"
                if ev.kind == "removed":
                    server.peer_left(rec.node_id, trio.current_time())
                    if key in candidates:
                        candidates.pop(key)
                        emit(PeerLeft(rec.name))
                    continue
                verdict = classify(rec, our_fp, PROTOCOL_VERSION)
                if verdict != "ok":
                    if key not in candidates:
                        emit(PeerForeign(rec.name, verdict))
                        candidates[key] = _Candidate(rec.host, rec.port, rec.node_id,
                                                     rec.name, unusable=verdict)
                    continue
                c = candidates.setdefault(key, _Candidate(rec.host, rec.port))
                if rec.state == "idle" and c.busy:
                    c.next_try = 0.0  # it just freed up: ask again now

    async def try_invite(c: _Candidate, client: httpx.AsyncClient) -> None:
        now = trio.current_time()
        c.next_try = now + 3.0
        try:
            info = await fetch_info(client, c.base)
        except (httpx.HTTPError, RemoteProtocolError) as exc:
            log.debug("peer %s unreachable: %s", c.base, exc)
            if c.named and not c.reported:
                # Once: it is retried every few seconds, and may still come up.
                c.reported = True
                why = str(exc) or type(exc).__name__
                spec = f"{c.host}:{c.port}"
                server.unreachable[spec] = why
                emit(PeerUnreachable(spec, why))
            return
        if info.node_id == node.node_id:
            c.unusable = "ourselves"
            return
        c.node_id, c.name = info.node_id, info.name
        if c.invited and info.job_id == server.job_id:
            return
        if opts.profile.video.codec not in info.encoders:
            c.unusable = f"lacks {opts.profile.video.codec}"
            emit(PeerForeign(info.name, c.unusable))
            return
        c.busy = info.state != "idle" and info.job_id != server.job_id
        if c.busy:
            return
        if c.invites >= MAX_FRUITLESS_INVITES and info.node_id not in server.claimed_by:
            # It accepts invites but never claims: typically an open node asked by a
            # coordinator with a secret (its unsigned claims get 401). Stop asking.
            c.unusable = "accepts invites but never claims (another secret?)"
            emit(PeerForeign(info.name, c.unusable))
            return
        c.invites += 1
        url = f"http://{_local_ip_for(c.host)}:{node.port}"
        invite = Invite(server.job_id, url, server.invite_fields())
        try:
            ack = await call(client, opts.secret, "POST", "/v1/invite", invite, (ResultAck,),
                             base=c.base)
        except (httpx.HTTPError, RemoteProtocolError) as exc:
            if isinstance(exc, RemoteProtocolError) and exc.status_code in (401, 422):
                c.unusable = str(exc)
                emit(PeerForeign(info.name, str(exc)))
            return
        assert isinstance(ack, ResultAck)
        if ack.accepted and not c.invited:
            c.invited = True
            server.names[info.node_id] = info.name
            server.invited_at[info.node_id] = trio.current_time()
            server.unreachable.pop(f"{c.host}:{c.port}", None)  # it came up after all
            score = info.scores.get(opts.profile.name)
            if score and score > 0:
                server.scores[info.node_id] = score
            server.slots[info.node_id] = info.slots
            server.ffmpegs[info.node_id] = short_version(info.ffmpeg)
            emit(PeerJoined(info.name, c.base, info.arch, info.ffmpeg, info.cpus,
                            info.scores.get(opts.profile.name, 0.0)))

    hint_at: float | None = trio.current_time() + NO_PEER_HINT_S

    def maybe_hint(now: float) -> None:
        nonlocal hint_at
        if any(c.invited for c in candidates.values()):
            hint_at = None  # a peer took part: the hint is moot for the rest of the job
        elif hint_at is not None and now >= hint_at and node.pyz is not None:
            hint_at = None
            emit(NoPeers(NO_PEER_HINT_S, node.address, bootstrap_line(node.address),
                         node.pyz.sha256))

    async with httpx.AsyncClient(timeout=httpx.Timeout(3.0)) as client:
        try:
            async with trio.open_nursery() as nursery:
                if opts.discover:
                    nursery.start_soon(watch_mdns)
                while True:
                    now = trio.current_time()
                    maybe_hint(now)
                    for c in list(candidates.values()):
                        if c.unusable or c.next_try > now:
                            continue
                        if c.invited:
                            c.next_try = now + RECHECK_INVITED_S
                            # Still ours? A peer that dropped the job is invited again.
                            nursery.start_soon(_recheck, c, client, server)
                        else:
                            nursery.start_soon(try_invite, c, client)
                    await trio.sleep(RECRUIT_EVERY_S)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(3):
                async with trio.open_nursery() as bye:
                    for c in candidates.values():
                        if c.invited:
                            bye.start_soon(_goodbye, c, client, server.job_id, opts.secret)


async def _recheck(c: _Candidate, client: httpx.AsyncClient, server: JobServer) -> None:
    try:
        info = await fetch_info(client, c.base)
    except (httpx.HTTPError, RemoteProtocolError):
        return
    if info.job_id != server.job_id:
        c.invited = False
        c.next_try = 0.0


async def _goodbye(c: _Candidate, client: httpx.AsyncClient, job_id: str,
                   secret: str | None) -> None:
    try:
        target = f"/v1/jobs/{job_id}"
        headers = auth.sign(secret, "DELETE", target, time.time(), auth.body_digest(b""))
        await client.delete(f"{c.base}{target}", headers=headers)
    except httpx.HTTPError:
        pass
