"""One swarm node: the HTTP server (hypercorn, trio mode), mDNS presence, encoder slots.

A node serves every caller ``GET /v1/info``; takes invites and works for up to
``MAX_JOBS`` coordinators at once, its slots shared among their jobs by ``peer.turns``
(peer role); and, while it coordinates a job, serves that job's claims, source, progress
and results (coordinator role, state in ``peer.jobserver.JobServer``). Every request other
than /v1/info is signed when the swarm has a secret; every body is bounded;
a bad request gets a 4xx and the node carries on.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import secrets
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol, cast

import httpx
import hypercorn.trio.tcp_server
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve
from hypercorn.typing import ASGIFramework

from chunker.tools import FFmpeg
from swarm import auth
from swarm.config import Timings
from swarm.errors import AuthError, PeerError, ProfileError, RemoteProtocolError, UsageError
from swarm.events import (
    JobJoined,
    JobLeft,
    NodeEvent,
    NodeUp,
    PyzReady,
    SlotEnd,
    SlotProgress,
    SlotStart,
)
from swarm.liveness import Silence
from swarm.presence import PeerRecord, State
from swarm.protocol import (
    MAX_JOBS,
    PROTOCOL_VERSION,
    AttemptFailed,
    ClaimRequest,
    Hello,
    Invite,
    InviteReply,
    JobDone,
    NodeInfo,
    Progress,
    ProgressAck,
    ResultAck,
    Wait,
    decode,
)
from swarm.protocol import Assignment as AssignmentMsg
from swarm.trust import invite_address_problem

from . import pyz as pyz_mod
from . import tls
from .client import call
from .host import free_port
from .http import (
    HTTPError,
    Receive,
    Request,
    Scope,
    Send,
    end_after_request,
    read_body,
    respond,
    respond_message,
)
from .lan import lan_address
from .options import NetworkSettings
from .pairing import PAIR_ROUTES, PairingService
from .transfer import SEND_BUFFER
from .tunnel import Tunnel
from .turns import Turns
from .worker import accept_invite, work_slot

__all__ = ["DEFAULT_PORT", "SOFTWARE_VERSION", "JobEndpoints", "Node", "NodeConfig", "WebRoutes",
           "check_port"]

log = logging.getLogger(__name__)

DEFAULT_PORT = 7800
SOFTWARE_VERSION = "0.1.0"
# Encoders worth telling a coordinator about (NodeInfo allows 64).
ADVERTISED_ENCODERS = ("libx264", "libx265", "libsvtav1", "aac", "ac3", "libopus")
# \Z, not $ (which also matches before a final newline), and [0-9], not \d (which matches
# any Unicode digit): a decoded "/claim%0A" or "/chunks/%D9%A1/result" is no route of ours.
_JOB_ROUTE = re.compile(r"^/v1/jobs/([A-Za-z0-9_-]{8,64})(/.*)?\Z")
_RESULT_ROUTE = re.compile(r"^/chunks/([0-9]{1,6})/result\Z")
# A slideshow chunk's k-th image (peer.slidework): an index into the attempt's run only.
_IMAGE_ROUTE = re.compile(r"^/images/([0-9]{1,2})\Z")
# A node named with --peer is greeted this often while idle; a coordinator that appears
# there invites us within one period.
GREET_EVERY_S = 3.0
GREET_TIMEOUT_S = 2.0
# A connection whose peer acknowledged nothing (or kept its window shut) this long is dead:
# twice the coordinator's default lease, by which time its chunk went to someone else.
PEER_GONE_S = 30.0
# GET /swarm.pyz: the archive goes out in pieces of this size (hypercorn buffers each one),
# and a request that comes while it is being built waits this long for it.
PYZ_PIECE = 256 * 1024
PYZ_WAIT_S = 60.0
PYZ_DIGEST_HEADER = "x-swarm-pyz-sha256"


# hypercorn's trio shell reads a connection 64 kB at a time (its module constant MAX_RECV),
# and each read costs a pass through h11 and the ASGI queue: a result upload spent most of
# its CPU there (bench/transfer). A larger read is the same bytes in fewer passes; the
# request body stays bounded by our own limits (peer.http.iter_body).
RECV_PIECE = 1024 * 1024
if getattr(hypercorn.trio.tcp_server, "MAX_RECV", RECV_PIECE) < RECV_PIECE:
    hypercorn.trio.tcp_server.MAX_RECV = RECV_PIECE


class _HyperConfig(HyperConfig):
    """Hypercorn's config, with sends bounded in time on the sockets it serves on.

    Hypercorn writes each response piece in a *shielded* ``send_all``: when a peer vanishes
    (Wi-Fi gone, power cut: no FIN, no RST) while we stream it source bytes, that send waits
    for the kernel to give up, about 15 minutes of retransmissions, and cancellation cannot
    reach it, so a coordinator sat at 100 % that long before merging. TCP_USER_TIMEOUT on
    the listening socket (inherited by every accepted one) makes the kernel drop such a
    connection after ``peer_gone_s``; the send then fails and shutdown goes on. A live but
    slow peer keeps acknowledging and opening its window, so it is not affected. Linux-only
    option: elsewhere the old behaviour stays.
    """

    peer_gone_s: float | None = PEER_GONE_S
    send_buffer: int | None = SEND_BUFFER
    # The TLS context of the node's second listener (peer.tls), None: plain HTTP only.
    # Hypercorn makes its own context from files; ours carries the identity's certificate.
    tls: ssl.SSLContext | None = None

    @property
    def ssl_enabled(self) -> bool:
        return self.tls is not None

    def create_ssl_context(self) -> ssl.SSLContext | None:
        return self.tls

    def create_sockets(self) -> Any:
        sockets = super().create_sockets()
        option = getattr(socket, "TCP_USER_TIMEOUT", None)
        for sock in [*sockets.insecure_sockets, *sockets.secure_sockets]:
            if sock.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            if self.peer_gone_s and option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, int(self.peer_gone_s * 1000))
            if self.send_buffer:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)
        return sockets


def _shown_name(work: _Work) -> str:
    """Who a job is for, as ``swarm peers`` shows it: the coordinator's name, else its
    address (a URL of at most 256 characters; NodeInfo carries 64)."""
    name = work.coordinator_name or work.coordinator_url.split("://", 1)[-1]
    return name[:64]


def check_port(host: str, port: int) -> None:
    """Refuse a port another program holds, before anything slow runs (join's benchmark).

    Bound as hypercorn binds (SO_REUSEADDR), so a socket left in TIME_WAIT by the last run
    does not count as taken; the socket is closed again at once.
    """
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except PermissionError as exc:
            raise UsageError(f"port {port}: permission denied (below 1024 needs root); "
                             "choose another with --port") from exc
        except OSError as exc:
            raise UsageError(f"port {port} is in use (another `swarm join` on this host?); "
                             "choose another with --port, or --port 0 for any free one"
                             ) from exc


@dataclass(slots=True)
class NodeConfig:
    name: str = field(default_factory=socket.gethostname)
    port: int = DEFAULT_PORT
    host: str = "0.0.0.0"
    secret: str | None = None
    slots: int = 1
    advertise: bool = True
    interfaces: Sequence[str] | None = None  # IPv4 addresses for mDNS; None: all
    peers: list[tuple[str, int]] = field(default_factory=list)  # coordinators to greet
    peer_gone_s: float | None = PEER_GONE_S  # see _HyperConfig
    serve_pyz: bool = True  # build swarm.pyz, for GET /swarm.pyz and the dashboard
    # Build it at start (a `join`: its line says how to fetch it) or when first wanted (a
    # coordinator: a build is seconds of CPU, more on a Pi, taken from the job's encode).
    pyz_at_start: bool = True
    timings: Timings = field(default_factory=Timings)  # how long a coordinator may be silent
    cache_dir: Path | None = None  # where a swarm.pyz build is kept; None: nowhere
    # This device's pairing (peer.pairing): its door while unpaired, and the keys of the
    # devices it is paired with, which may sign requests instead of the secret. None: none.
    pairing: PairingService | None = None
    # TLS for paired devices (peer.tls.server_context): served on a second port, tls_port
    # (0: any free one), beside the plain one, which --open and --secret swarms keep using.
    tls: ssl.SSLContext | None = None
    tls_port: int = 0
    # Closed (the CLI's default without --secret or --open): only paired devices are
    # believed; a request not signed by one is refused, even with no secret set.
    closed: bool = False

    @classmethod
    def coordinating(cls, net: NetworkSettings, timings: Timings,
                     cache_dir: Path | None = None) -> NodeConfig:
        """The node of a coordinator: it only browses (peers learn its URL from the invite),
        on ``net.port`` if free, and drops a dead connection after two leases. Closed, it
        also serves TLS with this device's certificate, which its paired peers pinned: they
        fetch the source, claim and upload over it (peer.recruit invites them to https)."""
        closed = net.closed and net.pairing is not None
        return cls(name=net.name, port=free_port(net.port), secret=net.secret,
                   advertise=False, interfaces=net.interfaces, peer_gone_s=2 * timings.lease_s,
                   timings=timings, cache_dir=cache_dir, pairing=net.pairing,
                   closed=net.closed, pyz_at_start=False,
                   tls=tls.server_context(net.pairing.cert) if closed else None)


class WebRoutes(Protocol):
    """The page a node serves besides the protocol (``peer.web.Web``), at ``/`` and
    ``/web/``; None: those paths are 404 as any unknown one."""

    def handles(self, path: str) -> bool: ...

    async def handle(self, request: Request, receive: Receive, send: Send) -> None: ...


class JobEndpoints(Protocol):
    """What the routes under /v1/jobs/ID/ need of a job this node coordinates
    (``peer.jobserver.JobServer``). Each answers a peer's request; ``now`` is trio's clock."""

    def claim_remote(self, node_id: str, now: float, prefetch: bool = False
                     ) -> AssignmentMsg | Wait | JobDone: ...

    async def read_layout(self) -> None: ...

    def progress_remote(self, attempt: str, chunk: int, frames: int, fps: float,
                        now: float) -> bool: ...

    def running_attempt(self, attempt: str, chunk: int | None = None) -> bool: ...

    def fail(self, attempt: str, reason: str) -> None: ...

    def heard(self, attempt: str, now: float) -> None: ...

    def queued_wanted(self, reporting: str, queued: str) -> bool: ...

    async def serve_source(self, attempt: str, request: Request, send: Send,
                           receive: Receive, head: bool) -> None: ...

    async def receive_result(self, attempt: str, chunk: int, request: Request,
                             receive: Receive) -> tuple[bool, str]: ...

    async def serve_image(self, attempt: str, index: int, request: Request, send: Send,
                          receive: Receive, head: bool) -> None: ...


@dataclass(slots=True)
class _Work:
    job_id: str
    coordinator_url: str
    scope: trio.CancelScope
    coordinator_name: str = ""
    pin: str | None = None  # the TLS fingerprint of an https coordinator (peer.tls)
    cred: auth.Credential = None  # what requests to the coordinator are signed with
    chunk: int | None = None
    frames: int = 0
    fps: float = 0.0
    done: int = 0


class Node:
    """Run with ``await nursery.start(node.run)``; reports the node once it is reachable."""

    def __init__(self, config: NodeConfig, ffmpeg: FFmpeg, scores: dict[str, float] | None = None,
                 *, coordinator: bool = False,
                 on_event: Callable[[NodeEvent], None] = lambda e: None) -> None:
        self.config = config
        self.ffmpeg = ffmpeg
        self.scores = dict(scores or {})
        self.node_id = secrets.token_hex(8)
        self.coordinator = coordinator
        self.jobs: dict[str, JobEndpoints] = {}
        self.work: dict[str, _Work] = {}  # the jobs this node works on as a peer
        self.turns = Turns(max(1, config.slots))
        self.port = 0
        self.tls_port = 0  # where the TLS listener is, once running; 0: none
        self.on_event = on_event
        self._nursery: trio.Nursery | None = None
        self._advertiser: Any = None
        # Where a coordinating node passes on nodes that said hello (see /v1/hello).
        self.hello_sink: Callable[[str, int], None] | None = None
        self.pyz: pyz_mod.Pyz | None = None
        self._pyz_wanted = False
        self._pyz_tried = trio.Event()
        self.web: WebRoutes | None = None

    # -- identity ------------------------------------------------------------------------
    @property
    def state(self) -> State:
        return "busy" if (self.work or self.coordinator) else "idle"

    def info(self, jobs: bool = True) -> NodeInfo:
        """What /v1/info says; ``jobs`` False: not which jobs it works on (a closed node
        tells them only to the devices paired with it)."""
        job = next(iter(self.work), None) or next(iter(self.jobs), None)
        if not jobs:
            job = None
        return NodeInfo(
            node_id=self.node_id, name=self.config.name[:64] or "node",
            version=SOFTWARE_VERSION, arch=(platform.machine() or "unknown")[:32],
            cpus=max(1, min(1024, os.cpu_count() or 1)),
            ffmpeg=(self.ffmpeg.version.replace(" ", "_") or "unknown")[:64],
            encoders=tuple(e for e in ADVERTISED_ENCODERS if e in self.ffmpeg.encoders),
            scores=self.scores, state=self.state, job_id=job,
            slots=max(1, min(64, self.config.slots)),
            pyz_sha256=self.pyz.sha256 if self.pyz is not None else None,
            working_for={w.job_id: _shown_name(w) for w in self.work.values()} if jobs else {},
            device_id=self.device_id, closed=self.config.closed, tls_port=self.tls_port,
        )

    def record(self) -> PeerRecord:
        return PeerRecord(
            node_id=self.node_id, name=self.config.name[:63] or "node", host="",
            port=self.port, protocol=PROTOCOL_VERSION, arch=(platform.machine() or "x")[:32],
            cpus=max(1, os.cpu_count() or 1), score=self.scores.get("hd", 0.0),
            state=self.state, version=SOFTWARE_VERSION,
            fingerprint=auth.fingerprint(self.config.secret) if self.config.secret else "",
            jobs=len(self.work), device=self.device_id, closed=self.config.closed,
        )

    @property
    def device_id(self) -> str:
        """This device's identity (peer.identity), "" for a node without one."""
        pairing = self.config.pairing
        return pairing.identity.device_id if pairing is not None else ""

    def pair_key(self, device: str) -> auth.PairKey | None:
        """The credential for talking to paired device ``device``; None if not paired."""
        pairing = self.config.pairing
        key = pairing.key_for(device) if pairing is not None and device else None
        return auth.PairKey(self.device_id, key) if key is not None else None

    # -- lifecycle -----------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        hc = _HyperConfig()
        hc.peer_gone_s = self.config.peer_gone_s
        hc.bind = [f"{self.config.host}:{self.config.port}"]
        if self.config.tls is not None:
            hc.tls = self.config.tls
            hc.insecure_bind, hc.bind = hc.bind, [f"{self.config.host}:{self.config.tls_port}"]
        hc.accesslog = None
        hc.errorlog = logging.getLogger("hypercorn.error")
        hc.loglevel = "WARNING"
        hc.graceful_timeout = 1.0
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            # The app reads and writes ASGI messages as plain mappings (peer.http); hypercorn
            # types each kind as its own TypedDict, which a mapping is not.
            app = cast(ASGIFramework, self.app)
            binds = await nursery.start(partial(serve, app, hc, mode="asgi"))
            for bound in binds:  # "http://HOST:PORT", then "https://..." when there is TLS
                port = int(str(bound).rsplit(":", 1)[1])
                if str(bound).startswith("https:"):
                    self.tls_port = port
                else:
                    self.port = port
            if self.config.advertise:
                from .discovery import advertise

                try:
                    self._advertiser = await nursery.start(partial(
                        advertise, self.record(), interfaces=self.config.interfaces))
                except Exception as exc:  # no multicast-capable interface: --peer still works
                    log.warning("not advertising on mDNS: %s", exc)
            self.on_event(NodeUp(self.port, self.config.name, self.node_id, self.address))
            if self.config.pyz_at_start:
                self.want_pyz()
            if self.config.peers:
                nursery.start_soon(self._greet)
            task_status.started(self)
            await trio.sleep_forever()

    @property
    def address(self) -> str:
        """HOST:PORT as other devices on the LAN reach this node (an address, never a name)."""
        return f"{lan_address()}:{self.port}"

    def want_pyz(self) -> None:
        """Start building swarm.pyz unless it is built, being built, or not served."""
        if self.config.serve_pyz and not self._pyz_wanted and self._nursery is not None:
            self._pyz_wanted = True
            self._nursery.start_soon(self._build_pyz)

    async def _build_pyz(self) -> None:
        """Build swarm.pyz once (a niced child, ~4 CPU s uncached) and say how to fetch
        it."""
        try:
            # Paused while this node encodes for a coordinator; a coordinator's own build
            # runs only when asked for, so it is not held back by its job.
            self.pyz = await pyz_mod.get_niced(self.config.cache_dir,
                                               busy=lambda: bool(self.work))
        except Exception as exc:  # e.g. a dependency installed without its file list
            log.warning("not serving %s: %s", pyz_mod.BOOTSTRAP_NAME, exc)
            return
        finally:
            self._pyz_tried.set()
        self.on_event(PyzReady(self.pyz.sha256, self.pyz.size, self.address,
                               pyz_mod.bootstrap_line(self.address)))

    async def _serve_pyz(self, send: Send, head: bool) -> None:
        self.want_pyz()
        if self.config.serve_pyz and not self._pyz_tried.is_set():
            with trio.move_on_after(PYZ_WAIT_S):
                await self._pyz_tried.wait()
        built = self.pyz
        if built is None and self.config.serve_pyz and not self._pyz_tried.is_set():
            # The build waits while this node encodes (pyz_mod.get_niced).
            raise HTTPError(f"{pyz_mod.BOOTSTRAP_NAME} is still being built on this node, "
                            "behind its encoding; try again in a minute", status_code=503)
        if built is None:
            raise HTTPError(f"{pyz_mod.BOOTSTRAP_NAME} is not available from this node",
                            status_code=503)
        headers = [(b"content-type", b"application/zip"),
                   (b"content-length", str(built.size).encode()),
                   (b"content-disposition",
                    f'attachment; filename="{pyz_mod.BOOTSTRAP_NAME}"'.encode()),
                   (PYZ_DIGEST_HEADER.encode(), built.sha256.encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if head:
            await send({"type": "http.response.body", "body": b""})
            return
        view = memoryview(built.data)
        for offset in range(0, built.size, PYZ_PIECE):
            await send({"type": "http.response.body",
                        "body": bytes(view[offset:offset + PYZ_PIECE]),
                        "more_body": offset + PYZ_PIECE < built.size})

    async def _greet(self) -> None:
        """While a job would fit, tell each --peer node we exist, so that a coordinator
        there invites us (one that already has us just ignores it)."""
        async with httpx.AsyncClient(timeout=httpx.Timeout(GREET_TIMEOUT_S)) as client:
            while True:
                if len(self.work) < MAX_JOBS:
                    for host, port in self.config.peers:
                        try:
                            await call(client, self.config.secret, "POST", "/v1/hello",
                                       Hello(self.node_id, self.port), (ResultAck,),
                                       base=f"http://{host}:{port}")
                        except PeerError as exc:
                            log.debug("hello to %s:%d: %s", host, port, exc)
                await trio.sleep(GREET_EVERY_S)

    async def _announce(self) -> None:
        if self._advertiser is not None:
            try:
                await self._advertiser.update(self.record())
            except Exception as exc:
                log.debug("mDNS update failed: %s", exc)

    # -- peer role -----------------------------------------------------------------------
    async def _work(self, invite: Invite, terms: Any) -> None:
        """Work on one job: a task per node slot, each taking its turns at the node's
        slots with the other jobs held (``peer.turns``)."""
        work = self.work[invite.job_id]
        self.turns.join(invite.job_id, invite.priority)
        self.on_event(JobJoined(invite.job_id, invite.coordinator_url))
        await self._announce()
        try:
            with work.scope:
                verify: ssl.SSLContext | bool = (True if work.pin is None
                                                 else tls.pinned_context([work.pin]))
                # The job's: any slot's answer from the coordinator counts for all.
                silence = Silence(self.config.timings.coordinator_gone_s, trio.current_time())
                async with httpx.AsyncClient(base_url=terms.coordinator_url, verify=verify,
                                             timeout=httpx.Timeout(10.0)) as client:
                    async with trio.open_nursery() as slots:
                        if work.pin is not None:  # ffmpeg reads through the pinned client
                            tunnel = await slots.start(Tunnel(client, terms.coordinator_url).run)
                            terms = replace(terms, source_base=tunnel.url(""))
                        for slot in range(max(1, self.config.slots)):
                            slots.start_soon(partial(
                                work_slot, terms, node_id=self.node_id, slot=slot,
                                secret=work.cred, ffmpeg=self.ffmpeg, client=client,
                                on_event=partial(self._slot_event, work),
                                timings=self.config.timings, turns=self.turns,
                                silence=silence, on_gone=slots.cancel_scope.cancel))
        finally:
            self.work.pop(invite.job_id, None)
            self.turns.leave(invite.job_id)
            self.on_event(JobLeft(invite.job_id))
            with trio.CancelScope(shield=True), trio.move_on_after(3):
                await self._announce()

    def _slot_event(self, work: _Work, e: NodeEvent) -> None:
        match e:
            case SlotStart(chunk=chunk):
                work.chunk, work.frames, work.fps = chunk, 0, 0.0
            case SlotProgress(frames=frames, fps=fps):
                work.frames, work.fps = frames, fps
            case SlotEnd(chunk=chunk, outcome=outcome):
                if work.chunk == chunk:  # a verdict may come after the next chunk started
                    work.chunk = None
                work.done += outcome == "done"
        self.on_event(e)

    # -- HTTP ----------------------------------------------------------------------------
    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] == "websocket":
            # No route speaks WebSocket. Returning without a reply makes hypercorn answer the
            # handshake with 500; a close before accepting is its way to refuse (403).
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            return
        receive, send = end_after_request(receive, send)
        try:
            request = Request.from_scope(scope)
            await self._route(request, receive, send)
        except RemoteProtocolError as exc:
            await respond(send, exc.status_code, (str(exc)[:300] + "\n").encode())
        except ProfileError as exc:  # an invite whose profile we cannot encode
            await respond(send, 422, (str(exc)[:300] + "\n").encode())

    def _check(self, request: Request, body: bytes | None = None, digest: str | None = None
               ) -> str | None:
        """Raise AuthError unless the request is signed as this node believes; the paired
        device that signed it, None for a secret's signature or an open node."""
        digest = digest if digest is not None else auth.body_digest(body or b"")
        pairing = self.config.pairing
        if pairing is not None and auth.DEVICE_HEADER.lower() in request.headers:
            # A paired device signs with the key pinned for it; that suffices with or
            # without a secret, and a bad one is refused even in an open swarm.
            return auth.verify_device(pairing.key_for, request.method, request.target,
                                      request.headers, digest, time.time())
        if self.config.closed:
            raise AuthError("this device is closed: it takes requests only from devices "
                            "paired with it (`swarm pair`), or start it with --open")
        auth.verify(self.config.secret, request.method, request.target, request.headers,
                    digest, time.time())
        return None

    def _shows_jobs(self, request: Request) -> bool:
        """Whether /v1/info may name this node's jobs to the asker: anyone unless closed."""
        if not self.config.closed:
            return True
        try:
            return self._check(request) is not None
        except AuthError:
            return False

    def _token_cred(self, request: Request) -> auth.Credential:
        """What a source or image URL's token is checked with: the pairing of the device
        it names, else the secret (ffmpeg's requests carry no signature headers)."""
        device = request.query.get("device")
        if device is not None or self.config.closed:
            cred = self.pair_key(device or "") if auth.is_device_id(device or "") else None
            if cred is None:
                raise AuthError("a source token of a device not paired with this one")
            return cred
        return self.config.secret

    async def _route(self, request: Request, receive: Receive, send: Send) -> None:
        path, method = request.path, request.method
        if self.web is not None and self.web.handles(path):
            await self.web.handle(request, receive, send)
            return
        if path == "/v1/info":
            if method != "GET":
                raise HTTPError("use GET", status_code=405)
            await respond_message(send, self.info(self._shows_jobs(request)), request)
            return
        if path == f"/{pyz_mod.BOOTSTRAP_NAME}":
            # Unsigned, like /v1/info: a device that has no swarm yet has no secret either,
            # and the program holds none.
            if method not in ("GET", "HEAD"):
                raise HTTPError("use GET", status_code=405)
            await self._serve_pyz(send, method == "HEAD")
            return
        if path in PAIR_ROUTES and self.config.pairing is not None:
            # Unsigned: the new device has no key yet; the code is what the PAKE checks.
            await self.config.pairing.route(request, receive, send)
            return
        if path == "/v1/invite":
            if method != "POST":
                raise HTTPError("use POST", status_code=405)
            body = await read_body(receive, request)
            device = self._check(request, body)
            await self._invite(decode(body, Invite), request, send, device)
            return
        if path == "/v1/hello":
            if method != "POST":
                raise HTTPError("use POST", status_code=405)
            body = await read_body(receive, request)
            if not self.config.closed:
                # Closed: a hello is only a hint (the coordinator then asks /v1/info and
                # invites a paired device with a signed invite), and a joining device does
                # not know which of its pairings this coordinator is.
                self._check(request, body)
            hello = decode(body, Hello)
            if self.hello_sink is None:
                raise HTTPError("not coordinating a job", status_code=404)
            self.hello_sink(request.client, hello.port)
            await respond_message(send, ResultAck(True, ""), request)
            return
        m = _JOB_ROUTE.match(path)
        if not m:
            raise HTTPError("no such endpoint", status_code=404)
        job_id, rest = m.group(1), m.group(2) or ""
        if rest == "" and method == "DELETE":
            self._check(request, await read_body(receive, request))
            held = self.work.get(job_id)
            if held is not None:  # only this coordinator's job: the others carry on
                held.scope.cancel()
            await respond(send, 204)
            return
        server = self.jobs.get(job_id)
        if server is None:
            raise HTTPError("no such job here", status_code=404)
        if rest == "/claim" and method == "POST":
            body = await read_body(receive, request)
            self._check(request, body)
            claim = decode(body, ClaimRequest)
            if claim.prefetch:
                await server.read_layout()
            reply = server.claim_remote(claim.node_id, trio.current_time(), claim.prefetch)
            await respond_message(send, reply, request)
            return
        if rest == "/progress" and method == "POST":
            body = await read_body(receive, request)
            self._check(request, body)
            prog = decode(body, Progress)
            keep = server.progress_remote(prog.attempt, prog.chunk, prog.frames_done,
                                          prog.fps, trio.current_time())
            queued_keep = (prog.queued is None
                           or server.queued_wanted(prog.attempt, prog.queued))
            await respond_message(send, ProgressAck(keep, queued_keep), request)
            return
        if rest == "/failed" and method == "POST":
            body = await read_body(receive, request)
            self._check(request, body)
            failed = decode(body, AttemptFailed)
            server.heard(failed.attempt, trio.current_time())
            known = server.running_attempt(failed.attempt, failed.chunk)
            if known:
                server.fail(failed.attempt, failed.reason)
            await respond_message(send, ResultAck(known, "" if known else "not running"),
                                  request)
            return
        if rest == "/source" and method in ("GET", "HEAD"):
            attempt = request.query.get("attempt", "")
            auth.verify_url_token(self._token_cred(request), path, attempt,
                                  request.query.get("token", ""))
            await server.serve_source(attempt, request, send, receive, method == "HEAD")
            return
        im = _IMAGE_ROUTE.match(rest)
        if im and method in ("GET", "HEAD"):
            attempt = request.query.get("attempt", "")
            auth.verify_url_token(self._token_cred(request), path, attempt,
                                  request.query.get("token", ""))
            await server.serve_image(attempt, int(im.group(1)), request, send, receive,
                                     method == "HEAD")
            return
        rm = _RESULT_ROUTE.match(rest)
        if rm and method == "PUT":
            attempt = request.query.get("attempt", "")
            self._check(request, digest=auth.streamed_digest(attempt) if attempt else "x")
            ok, reason = await server.receive_result(attempt, int(rm.group(1)), request,
                                                     receive)
            # A refusal quotes ffmpeg, whose messages span lines; a reason is one printable line.
            reason = "".join(c if c.isprintable() else " " for c in reason)
            await respond_message(send, ResultAck(ok, reason[:200]), request)
            return
        raise HTTPError("no such endpoint or method", status_code=404)

    def invite_reply(self, invite: Invite, cred: auth.Credential, reason: str = ""
                     ) -> InviteReply:
        """An acceptance that proves this node holds the swarm's secret, or the pairing
        the invite was signed with (swarm.auth)."""
        return InviteReply(True, reason, self.node_id, auth.reply_proof(
            cred, invite.nonce, InviteReply.TYPE, invite.job_id, self.node_id,
            "accepted"))

    def _pin_for(self, invite: Invite, request: Request) -> str | None:
        """The certificate to pin for an https coordinator: the one paired with the device
        that signed the invite (``_check`` verified that signature). An https coordinator
        we hold no certificate for is refused: its TLS would authenticate no one."""
        if not invite.coordinator_url.startswith("https://"):
            return None
        device = request.headers.get(auth.DEVICE_HEADER.lower(), "")
        pairing = self.config.pairing
        pin = pairing.cert_for(device) if pairing is not None and device else None
        if pin is None:
            raise HTTPError("an https coordinator must be a paired device whose certificate "
                            "this node holds (pair them again if they were paired before "
                            "certificates)", status_code=403)
        return pin

    async def _invite(self, invite: Invite, request: Request, send: Send,
                      device: str | None = None) -> None:
        # Work only for whoever sent the invite: the address in it must be the sender's.
        problem = invite_address_problem(invite.coordinator_url, request.client)
        if problem is not None:
            raise HTTPError(problem, status_code=403)
        pin = self._pin_for(invite, request)
        if self.coordinator:
            raise HTTPError("this node is coordinating its own job", status_code=409)
        # Replies and every request for the job are signed as the invite was: with the
        # pairing of the device that signed it, else the secret.
        cred: auth.Credential = self.config.secret
        if device is not None:
            cred = self.pair_key(device)
            if cred is None:  # revoked between the check and now
                raise HTTPError("the inviting device is not paired with this one",
                                status_code=401)
        if invite.job_id in self.work:
            await respond_message(send, self.invite_reply(invite, cred,
                                                          "already working on it"), request)
            return
        if len(self.work) >= MAX_JOBS:
            raise HTTPError(f"busy with {len(self.work)} jobs already", status_code=409)
        terms = accept_invite(invite)  # ProfileError -> 422
        slots = max(1, self.config.slots)
        terms = replace(terms, threads=max(1, (os.cpu_count() or 1) // slots))
        missing = [c for c in (terms.profile.video.codec,) if c not in self.ffmpeg.encoders]
        if missing:
            raise HTTPError(f"this node's ffmpeg lacks {missing[0]}", status_code=422)
        assert self._nursery is not None
        self.work[invite.job_id] = _Work(invite.job_id, terms.coordinator_url,
                                         trio.CancelScope(), invite.coordinator_name, pin,
                                         cred=cred)
        self._nursery.start_soon(self._work, invite, terms)
        await respond_message(send, self.invite_reply(invite, cred), request)
