"""Recruiting peers for a job: mDNS, ``--peer`` and hellos; invites, re-invites, goodbyes.

The trio shell around the coordinator's candidate list: a candidate is invited once its
``/v1/info`` shows it idle (or working for other coordinators, with room for one more
job), able to encode the profile, and not ourselves; one that drops
the job is invited again; one that accepts invites but never claims is left alone.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import httpx
import trio

from chunker.tools import short_version
from swarm import auth
from swarm.errors import AuthError, PeerError, RemoteProtocolError, TransportError, UsageError
from swarm.events import JobEvent, NoPeers, PeerForeign, PeerJoined, PeerLeft, PeerUnreachable
from swarm.presence import PeerEvent, access_verdict, classify, fruitless, has_room
from swarm.protocol import MAX_JOBS, PROTOCOL_VERSION, Invite, InviteReply, NodeInfo
from swarm.trust import KINDS

from . import tls
from .client import call, fetch_info, transport_errors
from .lan import route_address
from .node import Node
from .pyz import bootstrap_line

if TYPE_CHECKING:
    from .jobserver import JobServer
    from .options import EncodeOptions

__all__ = ["CENSUS_S", "census", "parse_peer", "recruit"]

log = logging.getLogger(__name__)


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
    cred: auth.Credential = None  # what its invite and goodbye are signed with
    # Closed, to a peer whose certificate we pinned: its TLS address and a client pinned
    # to that certificate, which its invite and goodbye go over.
    tls_base: str = ""
    tls_client: httpx.AsyncClient | None = None

    @property
    def control(self) -> str:
        return self.tls_base or self.base

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"


def parse_peer(spec: str) -> tuple[str, int]:
    host, sep, port = spec.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--peer {spec}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def _foreign_why(verdict: str) -> str:
    """Why a device that was found is not used, after "peer NAME not used: "."""
    if verdict == "foreign-secret":
        return "it has another secret"
    if verdict == "unpaired":
        return "not paired with this device (run `swarm pair` here with the code its " \
               "`swarm join` shows)"
    if verdict == "closed":
        return "it is closed: it works only for devices paired with it (pair them, or " \
               "start it with --open)"
    kind = KINDS.get(verdict)
    return f"{kind.label} ({kind.hint})" if kind is not None and kind.hint else verdict


def _our_fingerprint(opts: EncodeOptions) -> str:
    return auth.fingerprint(opts.net.secret) if opts.net.secret else ""


def _paired(opts: EncodeOptions) -> Callable[[str], bool] | None:
    """A closed coordinator's test of a device id: paired with us (None when not closed)."""
    pairing = opts.net.pairing
    if not opts.net.closed:
        return None
    return lambda device: pairing is not None and pairing.key_for(device) is not None


# Candidates a job keeps track of (mDNS, --peer, hellos): a LAN of devices, not a flood.
MAX_CANDIDATES = 256

# How long the coordinator listens for mDNS answers before it plans the chunks (while it
# probes the input). Three peers in network namespaces all answered within 0.1 s
# (tests/netns.py LAN, `find_peers` at 0.1-1 s found all three every time).
CENSUS_S = 0.3


async def census(opts: EncodeOptions) -> int:
    """How many peers of our swarm that could take our job answer mDNS now: idle ones and
    ones working for other coordinators with room for ours (``presence.has_room``, as
    ``recruit`` invites them); the chunk plan is sized for them.

    Only a count: recruiting proper (``recruit``) still invites whoever appears later.
    A network without multicast, or any other failure, counts none."""
    from .discovery import find_peers

    fp = _our_fingerprint(opts)
    try:
        records = await find_peers(CENSUS_S, interfaces=opts.net.interfaces)
    except Exception as exc:  # only a sizing hint: it must never stop a job
        log.debug("census failed: %s", exc)
        return 0
    paired = _paired(opts)
    return sum(1 for r in records
               if has_room(r) and classify(r, fp, PROTOCOL_VERSION, paired) == "ok")


async def recruit(server: JobServer, node: Node, opts: EncodeOptions,
                   emit: Callable[[JobEvent], None]) -> None:
    """Find peers (mDNS, --peer), invite them, re-invite ones that dropped the job."""
    candidates: dict[str, _Candidate] = {}
    for spec in opts.net.peers:
        host, port = parse_peer(spec)
        candidates[f"{host}:{port}"] = _Candidate(host, port, named=True)
    our_fp = _our_fingerprint(opts)
    paired = _paired(opts)

    def hello(host: str, port: int) -> None:
        if f"{host}:{port}" not in candidates and len(candidates) >= MAX_CANDIDATES:
            return  # a closed coordinator takes unsigned hellos: they are only hints
        c = candidates.setdefault(f"{host}:{port}", _Candidate(host, port))
        if not c.invited:
            c.next_try = 0.0

    node.hello_sink = hello

    async def watch_mdns() -> None:
        from .discovery import browse

        send, recv = trio.open_memory_channel[PeerEvent](64)
        async with trio.open_nursery() as n:
            n.start_soon(partial(browse, send, interfaces=opts.net.interfaces))
            async for ev in recv:
                rec = ev.record
                if rec.node_id == node.node_id or not rec.host:
                    continue
                key = f"{rec.host}:{rec.port}"
                if ev.kind == "removed":
                    server.device_gone(rec.node_id)
                    server.peer_left(rec.node_id, trio.current_time())
                    if key in candidates:
                        candidates.pop(key)
                        emit(PeerLeft(rec.name))
                    continue
                verdict = classify(rec, our_fp, PROTOCOL_VERSION, paired)
                if verdict != "ok":
                    if key not in candidates:
                        server.device_seen(rec.node_id, rec.name, verdict)
                        emit(PeerForeign(rec.name, _foreign_why(verdict)))
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
            info = await fetch_info(client, c.base, c.cred)
        except PeerError as exc:
            log.debug("peer %s unreachable: %s", c.base, exc)
            if c.named and not c.reported:
                # Once: it is retried every few seconds, and may still come up.
                c.reported = True
                why = str(exc) or type(exc).__name__
                spec = f"{c.host}:{c.port}"
                server.named_peer_unreachable(spec, why)
                emit(PeerUnreachable(spec, why))
            return
        if info.node_id == node.node_id:
            c.unusable = "ourselves"
            return
        c.node_id, c.name = info.node_id, info.name
        if c.invited and server.job_id in _jobs_of(info):
            return
        # What mDNS says, /v1/info says too, for --peer and hello candidates (not believed
        # either way: a device is ours only once its reply proves the pairing or secret).
        c.cred = node.pair_key(info.device_id) if opts.net.closed else opts.net.secret
        # Closed: paired is what that one read of devices.json said (it may change meanwhile).
        verdict = access_verdict(info.device_id, info.closed,
                                 None if paired is None else lambda _: c.cred is not None)
        if verdict is not None:
            c.unusable = verdict
            server.device_seen(info.node_id, info.name, verdict)
            emit(PeerForeign(info.name, _foreign_why(verdict)))
            return
        pin = opts.net.pairing.cert_for(info.device_id) if opts.net.closed else None
        if pin is not None and info.tls_port and c.tls_client is None:
            c.tls_base = f"https://{c.host}:{info.tls_port}"
            c.tls_client = httpx.AsyncClient(timeout=httpx.Timeout(3.0),
                                             verify=tls.pinned_context([pin]))
        if opts.net.closed and not info.working_for and info.state != "idle":
            # A closed node names its jobs only to a paired device's signed request: ask
            # again, signed, before taking it for one coordinating a job of its own.
            try:  # over TLS where it serves it: the answer names jobs
                info = await fetch_info(c.tls_client or client, c.control, c.cred)
            except PeerError:
                return
        if opts.job.profile.video.codec not in info.encoders:
            c.unusable = f"lacks {opts.job.profile.video.codec}"
            emit(PeerForeign(info.name, c.unusable))
            return
        # A peer working for other coordinators still takes ours, up to MAX_JOBS; a busy
        # one working for nobody is coordinating a job of its own.
        c.busy = (info.state != "idle" and server.job_id not in _jobs_of(info)
                  and not 0 < len(info.working_for) < MAX_JOBS)
        if c.busy:
            return
        stop = fruitless(c.invites, server.has_claimed(info.node_id))
        if stop is not None:
            c.unusable = stop
            emit(PeerForeign(info.name, c.unusable))
            return
        c.invites += 1
        # Closed, to a peer whose certificate was pinned at pairing (it holds ours too):
        # everything of the job goes over TLS, and its ffmpeg reads through it.
        url = (f"https://{route_address(c.host)}:{node.tls_port}" if pin and node.tls_port
               else f"http://{route_address(c.host)}:{node.port}")
        invite = Invite(server.job_id, url, server.invite_fields(), secrets.token_urlsafe(16),
                        server.invite_ladder(), priority=opts.net.priority,
                        coordinator_name=opts.net.name[:64])
        try:
            ack = await call(c.tls_client or client, c.cred, "POST", "/v1/invite", invite,
                             (InviteReply,), base=c.control)
        except PeerError as exc:
            if isinstance(exc, RemoteProtocolError) and exc.status_code in (401, 403, 422):
                c.unusable = str(exc)
                if exc.status_code == 401:
                    # Closed: it holds no pairing with us (revoked, or paired again since).
                    why = "unpaired" if opts.net.closed else "foreign-secret"
                    server.device_seen(info.node_id, info.name, why)
                    emit(PeerForeign(info.name, _foreign_why(why)))
                else:
                    emit(PeerForeign(info.name, str(exc)))
            return
        assert isinstance(ack, InviteReply)
        try:
            # A member proves the secret; an open node accepts anything and cannot.
            if ack.node_id != info.node_id:
                raise AuthError(f"the reply names node {ack.node_id}, not {info.node_id}")
            auth.check_reply_proof(c.cred, ack.proof, invite.nonce, InviteReply.TYPE,
                                   invite.job_id, ack.node_id, "accepted")
        except AuthError as exc:
            c.unusable = "unproven"
            server.device_seen(info.node_id, info.name, "unproven")
            emit(PeerForeign(info.name, f"not a member of this swarm: {exc}"))
            return
        server.device_seen(info.node_id, info.name, "ok")
        if ack.accepted and not c.invited:
            c.invited = True
            server.peer_invited(info.node_id, info.name, info.scores.get(opts.job.profile.name),
                                info.slots, short_version(info.ffmpeg), trio.current_time())
            server.named_peer_reached(f"{c.host}:{c.port}")  # it came up after all
            emit(PeerJoined(info.name, c.base, info.arch, info.ffmpeg, info.cpus,
                            info.scores.get(opts.job.profile.name, 0.0)))

    hint_at: float | None = trio.current_time() + opts.tuning.timings.no_peer_hint_s

    def maybe_hint(now: float) -> None:
        nonlocal hint_at
        if any(c.invited for c in candidates.values()):
            hint_at = None  # a peer took part: the hint is moot for the rest of the job
        elif hint_at is not None and now >= hint_at:
            if node.pyz is None:
                node.want_pyz()  # built when first wanted (NodeConfig.pyz_at_start)
                return
            hint_at = None
            emit(NoPeers(opts.tuning.timings.no_peer_hint_s, node.address,
                         bootstrap_line(node.address), node.pyz.sha256))

    async with httpx.AsyncClient(timeout=httpx.Timeout(3.0)) as client:
        try:
            async with trio.open_nursery() as nursery:
                if opts.net.discover:
                    nursery.start_soon(watch_mdns)
                while True:
                    now = trio.current_time()
                    maybe_hint(now)
                    for c in list(candidates.values()):
                        if c.unusable or c.next_try > now:
                            continue
                        if c.invited:
                            c.next_try = now + opts.tuning.timings.recheck_invited_s
                            # Still ours? A peer that dropped the job is invited again.
                            nursery.start_soon(_recheck, c, client, server)
                        else:
                            nursery.start_soon(try_invite, c, client)
                    await trio.sleep(opts.tuning.timings.recruit_every_s)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(3):
                async with trio.open_nursery() as bye:
                    for c in candidates.values():
                        if c.invited:
                            bye.start_soon(_goodbye, c, c.tls_client or client, server.job_id,
                                           c.cred)
                for c in candidates.values():
                    if c.tls_client is not None:
                        await c.tls_client.aclose()


async def _recheck(c: _Candidate, client: httpx.AsyncClient, server: JobServer) -> None:
    try:
        info = await fetch_info(c.tls_client or client, c.control, c.cred)
    except PeerError:
        return
    if server.job_id not in _jobs_of(info):
        c.invited = False
        c.next_try = 0.0


def _jobs_of(info: NodeInfo) -> set[str]:
    """The jobs a node works on: several when it serves several coordinators."""
    return set(info.working_for) | ({info.job_id} if info.job_id else set())


async def _goodbye(c: _Candidate, client: httpx.AsyncClient, job_id: str,
                   secret: auth.Credential) -> None:
    try:
        target = f"/v1/jobs/{job_id}"
        headers = auth.sign(secret, "DELETE", target, time.time(), auth.body_digest(b""))
        with transport_errors():
            await client.delete(f"{c.control}{target}", headers=headers)
    except TransportError:
        pass
