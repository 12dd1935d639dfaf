"""The node's web page: a thin trio shell around ``swarm.board.Board``.

Routes (all under ``/`` and ``/web/``; ``peer.node.Node`` hands them here):

- ``GET /``: the page (``screens/web/index.html``, read by cli.py and passed in as bytes).
  In a closed swarm it shows only the node's name and asks for the secret.
- ``POST /web/login``: the secret, form-encoded; a right one sets the session cookie
  (``swarm.websession``). Everything below needs that cookie in a closed swarm (401).
- ``GET /web/events``: server-sent events, one ``Board.snapshot`` per change.
- ``POST /web/upload?name=N&profile=P``: a video as the raw body, streamed to disk, bounded
  by ``max_upload_bytes``; then queued as a job this node coordinates (``run_encode``).
- ``GET /web/jobs/ID/result``: the encoded file; ``GET /web/jobs/ID/hls/FILE``: its stream.
- ``GET /web/hls.min.js``: hls.js, if the node was given a copy (``--hlsjs``).

What can go wrong, and what happens: an upload cut off half-way is refused and its partial
file removed; a name, profile or file the page asks for is checked against what this node
made (a pattern and a table), never opened as the path it came as.
"""

from __future__ import annotations

import html
import json
import logging
import os
import platform
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

import trio

from profiles import builtin_names, load_profile
from swarm import auth
from swarm.board import Board, Device
from swarm.errors import SwarmError
from swarm.events import Event, JobEvent, JobStart
from swarm.presence import PeerEvent, PeerRecord
from swarm.websession import (
    COOKIE,
    SESSION_S,
    check_session,
    new_session,
    secret_matches,
    session_from_header,
)

from .http import ClientGone, HTTPError, Receive, Request, Send, iter_body, read_body, respond
from .options import EncodeOptions, JobIntent, LocalSettings, NetworkSettings

__all__ = ["DEFAULT_MAX_UPLOAD_MB", "Web", "WebConfig"]

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_MB = 4096  # a phone's 4K clip of a few minutes
# Pages watching at once; each holds a connection and a task.
MAX_WATCHERS = 32
# Uploads streaming at once, and jobs waiting behind the running one.
MAX_UPLOADS = 2
MAX_QUEUED = 8
# A page is sent the board at most this often (a busy job reports many times a second) ...
PUSH_EVERY_S = 0.25
# ... and at least this often, so a proxy or phone keeps the connection and ETAs tick.
KEEPALIVE_S = 2.0
PIECE = 256 * 1024
MAX_LOGIN_BODY = 1024
# A wrong secret is answered after this long, one at a time over all connections: at most
# two online guesses a second, unnoticeable for a person who mistyped.
WRONG_SECRET_S = 0.5
# A video's extension as uploads may carry it; the file on disk gets our own name.
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".mpg")
_JOB_ID = r"[A-Za-z0-9_-]{8,64}"
_JOB_FILE = re.compile(rf"^/web/jobs/({_JOB_ID})/result\Z")
# What peer.hls writes, and nothing else (no dotfiles, no .part files).
_HLS_FILE = re.compile(
    rf"^/web/jobs/({_JOB_ID})/hls/((?:master|video|audio)\.m3u8|(?:audio_)?init[0-9]{{0,3}}\.mp4"
    r"|[va][0-9]{5}\.m4s)\Z")
_HLS_TYPES = {".m3u8": "application/vnd.apple.mpegurl", ".mp4": "video/mp4",
              ".m4s": "video/iso.segment"}


@dataclass(frozen=True, slots=True)
class WebConfig:
    assets: dict[str, bytes]  # index.html, app.js, style.css (screens.web_assets, via cli.py)
    secret: str | None = None
    uploads: Path | None = None  # where browser uploads and their results go; None: off
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB * 1024 * 1024
    hls_root: Path | None = None  # browser jobs publish HLS under it (one folder each)
    hlsjs: Path | None = None  # a local hls.min.js to serve
    # How a browser job runs: its peers and this device's share (net.enabled False: alone).
    job_net: NetworkSettings = field(default_factory=NetworkSettings)
    job_local: LocalSettings = field(default_factory=LocalSettings)
    browse: bool = False  # list the swarm's devices from mDNS
    # A closed swarm (no secret, paired devices only): a browser cannot be paired, so the
    # page shows the node's name and nothing else; --secret opens it to a signed-in browser.
    closed: bool = False

    @property
    def locked(self) -> bool:
        """Whether no browser can sign in: closed, with no secret to sign in with."""
        return self.closed and self.secret is None


@dataclass(slots=True)
class _Queued:
    job_id: str
    opts: EncodeOptions


class Web:
    """Serve the page of a node; ``run`` in the node's nursery runs the browser's jobs.

    ``node``: what the page says of this device (``peer.node.Node``: config, scores,
    ``node_id``, and its ``coordinator`` flag, set while a browser job runs so that the
    node refuses invites as a coordinating node does).
    """

    def __init__(self, config: WebConfig, node: Any = None) -> None:
        self.config = config
        self.node = node
        self.board = Board(Device("here", "this node", platform.machine() or "?", 0.0,
                                  "idle", True, here=True),
                           secret=config.secret is not None or config.closed)
        if node is not None:
            self.attach(node)
        self.profiles = builtin_names()
        self._changed = trio.Event()
        self._watchers = 0
        self._uploads = 0
        self._send, self._recv = trio.open_memory_channel[_Queued](MAX_QUEUED)
        self._results: dict[str, tuple[Path, str]] = {}  # job id -> (file, download name)
        self._hls: dict[str, Path] = {}
        self._external: str | None = None
        self._guessing = trio.Lock()
        hlsjs = config.hlsjs
        self.hlsjs: bytes | None = hlsjs.read_bytes() if hlsjs is not None else None

    def attach(self, node: Any) -> Web:
        """Serve on ``node`` (``swarm encode``'s node exists only once its job started:
        ``NetworkSettings.page`` calls this there)."""
        self.node = node
        self.board.set_here(Device(node.node_id, node.config.name, platform.machine() or "?",
                                   node.scores.get("hd", 0.0),
                                   "busy" if node.coordinator else "idle", True, here=True))
        return self

    # -- what the node and its jobs report ---------------------------------------------
    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def node_event(self, e: Event) -> None:
        self.board.node_event(e, trio.current_time())
        self._poke()

    def tee(self, other: Callable[[Any], None]) -> Callable[[Any], None]:
        """The node's ``on_event``: ``other`` (the terminal's sink), then the page."""
        def both(e: Any) -> None:
            other(e)
            self.node_event(e)
        return both

    def watch(self, e: JobEvent, hls: str | None = None) -> None:
        """An event of the job this node's ``swarm encode`` runs (its CLI sink's feed)."""
        now = trio.current_time()
        if isinstance(e, JobStart):
            self._external = e.job_id
            self.board.queued(e.job_id, Path(e.input).name[:120], e.profile, now,
                              hls=hls is not None)
            if hls is not None:
                self._hls[e.job_id] = Path(hls)
        if self._external is not None:
            self.board.job_event(self._external, e, now)
        self._poke()

    def _job_emit(self, job_id: str) -> Callable[[JobEvent], None]:
        def emit(e: JobEvent) -> None:
            self.board.job_event(job_id, e, trio.current_time())
            self._poke()
        return emit

    # -- the browser's jobs ----------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        async with trio.open_nursery() as nursery:
            if self.config.browse:
                nursery.start_soon(self._browse)
            task_status.started()
            async for item in self._recv:
                await self._run_job(item)

    async def _run_job(self, item: _Queued) -> None:
        from .coordinator import run_encode  # the coordinator imports the node, as we do

        self.node.coordinator = True
        self.board.set_here_state("busy")
        self._poke()
        try:
            await run_encode(item.opts, self._job_emit(item.job_id))
        except SwarmError as exc:
            log.warning("browser job %s failed: %s", item.job_id, exc)
            self.board.failed(item.job_id, str(exc), trio.current_time())
        except Exception as exc:  # a bug in one job must not end the node
            log.exception("browser job %s crashed", item.job_id)
            self.board.failed(item.job_id, f"internal error: {exc}", trio.current_time())
        finally:
            with trio.CancelScope(shield=True):  # the upload is spent, whatever happened
                await trio.to_thread.run_sync(partial(Path(item.opts.job.input).unlink,
                                                      missing_ok=True))
            self.node.coordinator = False
            self.board.set_here_state("idle")
            self._poke()

    def _paired(self, rec: PeerRecord, ours: str) -> bool:
        """What the page calls paired: a device in devices.json; else, unless closed, one
        of the same secret (or none, in an open swarm)."""
        pairing = getattr(getattr(self.node, "config", None), "pairing", None)
        if rec.device and pairing is not None and pairing.key_for(rec.device) is not None:
            return True
        return not self.config.closed and rec.fingerprint == ours

    async def _browse(self) -> None:
        from .discovery import browse

        ours = auth.fingerprint(self.config.secret) if self.config.secret else ""
        send, recv = trio.open_memory_channel[PeerEvent](0)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(browse, send,
                                            interfaces=self.config.job_net.interfaces))
                async for event in recv:
                    rec = event.record
                    if rec.node_id == self.node.node_id:
                        continue
                    if event.kind == "removed":
                        self.board.device_gone(event.name)
                    else:
                        self.board.device(Device(event.name, rec.name, rec.arch, rec.score,
                                                 rec.state, self._paired(rec, ours)))
                    self._poke()
        except Exception as exc:  # no multicast here: the page lists who joined our jobs
            log.warning("web page: not browsing mDNS: %s", exc)

    # -- HTTP ------------------------------------------------------------------------
    @staticmethod
    def handles(path: str) -> bool:
        return path == "/" or path.startswith("/web/")

    def _authed(self, request: Request) -> bool:
        if self.config.locked:
            return False
        return check_session(self.config.secret,
                             session_from_header(request.headers.get("cookie")), time.time())

    async def handle(self, request: Request, receive: Receive, send: Send) -> None:
        path = request.path
        if path == "/":
            self._method(request, "GET", "HEAD")
            await self._page(request, send)
            return
        asset = path.removeprefix("/web/")
        if asset in ("app.js", "style.css"):
            self._method(request, "GET", "HEAD")
            kind = "text/javascript" if asset.endswith(".js") else "text/css"
            await respond(send, 200, self.config.assets[asset], f"{kind}; charset=utf-8",
                          [(b"cache-control", b"no-cache")])
            return
        if path == "/web/login":
            self._method(request, "POST")
            await self._login(request, receive, send)
            return
        if not self._authed(request):
            raise HTTPError("sign in with the swarm's secret first", status_code=401)
        if path == "/web/events":
            self._method(request, "GET")
            await self._events(receive, send)
        elif path == "/web/upload":
            self._method(request, "POST")
            await self._upload(request, receive, send)
        elif path == "/web/hls.min.js":
            self._method(request, "GET")
            if self.hlsjs is None:
                raise HTTPError("this node has no hls.js (swarm join --hlsjs FILE)",
                                status_code=404)
            await respond(send, 200, self.hlsjs, "text/javascript; charset=utf-8")
        elif m := _JOB_FILE.match(path):
            self._method(request, "GET")
            found = self._results.get(m.group(1))
            card = self.board.job(m.group(1))
            if found is None or card is None or card.state != "done":
                raise HTTPError("no such result", status_code=404)
            await self._file(send, found[0], "video/mp4", found[1])
        elif m := _HLS_FILE.match(path):
            self._method(request, "GET")
            folder = self._hls.get(m.group(1))
            if folder is None:
                raise HTTPError("no such stream", status_code=404)
            name = m.group(2)
            await self._file(send, folder / name, _HLS_TYPES[Path(name).suffix])
        else:
            raise HTTPError("no such page", status_code=404)

    @staticmethod
    def _method(request: Request, *allowed: str) -> None:
        if request.method not in allowed:
            raise HTTPError(f"use {allowed[0]}", status_code=405)

    async def _page(self, request: Request, send: Send) -> None:
        authed = self._authed(request)
        page = self.config.assets["index.html"].decode("utf-8")
        page = (page.replace("{{name}}", html.escape(self.node.config.name))
                .replace("{{locked}}", "" if authed else "locked")
                .replace("{{open}}", "open" if self.config.secret is None
                         and not self.config.closed else "closed"))
        await respond(send, 200, page.encode(), "text/html; charset=utf-8",
                      [(b"cache-control", b"no-store")])

    async def _login(self, request: Request, receive: Receive, send: Send) -> None:
        body = await read_body(receive, request, MAX_LOGIN_BODY)
        if self.config.locked:
            raise HTTPError("this swarm is closed to all but paired devices, and a browser "
                            "cannot be paired: start the node with --secret to sign in here",
                            status_code=403)
        if self.config.secret is None:
            await respond(send, 204)
            return
        try:
            form = dict(parse_qsl(body.decode("utf-8"), max_num_fields=4))
        except (UnicodeDecodeError, ValueError) as exc:
            raise HTTPError("a form with the secret") from exc
        if not secret_matches(self.config.secret, form.get("secret", "")):
            async with self._guessing:  # wrong guesses one at a time, each slowly
                await trio.sleep(WRONG_SECRET_S)
            raise HTTPError("wrong secret", status_code=403)
        cookie = (f"{COOKIE}={new_session(self.config.secret, time.time())}; HttpOnly; "
                  f"SameSite=Strict; Path=/; Max-Age={SESSION_S}")
        await respond(send, 204, headers=[(b"set-cookie", cookie.encode())])

    def snapshot(self) -> dict[str, object]:
        snap = self.board.snapshot(trio.current_time())
        return snap | {"profiles": self.profiles, "uploads": self.config.uploads is not None,
                       "max_upload_bytes": self.config.max_upload_bytes,
                       "hlsjs": self.hlsjs is not None}

    async def _events(self, receive: Receive, send: Send) -> None:
        if self._watchers >= MAX_WATCHERS:
            raise HTTPError("too many pages open on this node", status_code=503)
        self._watchers += 1
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream"), (b"cache-control", b"no-store")]})
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._until_gone, receive, nursery.cancel_scope)
                while True:
                    changed = self._changed
                    data = json.dumps(self.snapshot(), separators=(",", ":"))
                    await send({"type": "http.response.body", "more_body": True,
                                "body": f"data: {data}\n\n".encode()})
                    await trio.sleep(PUSH_EVERY_S)
                    with trio.move_on_after(KEEPALIVE_S):
                        await changed.wait()
        finally:
            self._watchers -= 1

    @staticmethod
    async def _until_gone(receive: Receive, scope: trio.CancelScope) -> None:
        # hypercorn drops what an app sends after the client left, without an error: the
        # disconnect message is the only sign, so the stream ends when it comes.
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    async def _upload(self, request: Request, receive: Receive, send: Send) -> None:
        cfg = self.config
        if cfg.uploads is None:
            raise HTTPError("this node takes no uploads (--no-uploads)", status_code=403)
        name = request.query.get("name", "")[:200]
        suffix = Path(name).suffix.lower()
        if suffix not in VIDEO_SUFFIXES:
            raise HTTPError(f"a video file, named {'|'.join(VIDEO_SUFFIXES)}", status_code=415)
        profile = request.query.get("profile", "")
        if profile not in self.profiles:
            raise HTTPError(f"profile: one of {', '.join(self.profiles)}", status_code=422)
        declared = request.headers.get("content-length")
        if declared is None or not declared.isdigit():
            raise HTTPError("send the file with a Content-Length", status_code=411)
        if int(declared) > cfg.max_upload_bytes:
            raise HTTPError(f"larger than {cfg.max_upload_bytes // 2**20} MB (--max-upload-mb)",
                            status_code=413)
        if int(declared) == 0:
            raise HTTPError("the file is empty")
        if self._uploads >= MAX_UPLOADS:
            raise HTTPError("busy with other uploads; try again", status_code=503)
        if self._send.statistics().current_buffer_used >= MAX_QUEUED:
            raise HTTPError("too many jobs queued on this node", status_code=503)
        job_id = secrets.token_hex(8)
        cfg.uploads.mkdir(parents=True, exist_ok=True)
        src = cfg.uploads / f"{job_id}.src{suffix}"
        with self._counted():
            await _receive_file(receive, src, int(declared))
        title = "".join(c for c in Path(name).name if c.isprintable())[:120] or "upload"
        out = cfg.uploads / f"{job_id}.{profile}.mp4"
        hls: str | None = None
        if cfg.hls_root is not None:
            cfg.hls_root.mkdir(parents=True, exist_ok=True)
            hls = str(cfg.hls_root / job_id)
            self._hls[job_id] = Path(hls)
        intent = JobIntent(str(src), str(out), load_profile(profile), hls=hls)
        opts = EncodeOptions(intent, cfg.job_local, replace(cfg.job_net, secret=cfg.secret))
        self._results[job_id] = (out, f"{Path(title).stem}.{profile}.mp4")
        self.board.queued(job_id, title, profile, trio.current_time(), hls=hls is not None,
                          download=True)
        await self._forget_dropped()
        self._send.send_nowait(_Queued(job_id, opts))
        self._poke()
        await respond(send, 201, json.dumps({"job": job_id}).encode(), "application/json")

    async def _forget_dropped(self) -> None:
        """Delete the results and streams of the browser's jobs that left the board: what
        the page no longer offers takes no disk (at most ``MAX_JOBS`` results are kept)."""
        for job_id in [j for j in self._results if self.board.job(j) is None]:
            out, _ = self._results.pop(job_id)
            folder = self._hls.pop(job_id, None)
            await trio.to_thread.run_sync(partial(out.unlink, missing_ok=True))
            if folder is not None:
                await trio.to_thread.run_sync(partial(shutil.rmtree, folder, True))

    @contextmanager
    def _counted(self) -> Iterator[None]:
        self._uploads += 1
        try:
            yield
        finally:
            self._uploads -= 1

    async def _file(self, send: Send, path: Path, kind: str, download: str | None = None
                    ) -> None:
        try:
            f = await trio.open_file(path, "rb")
        except OSError as exc:
            raise HTTPError("not there (yet)", status_code=404) from exc
        async with f:
            size = os.fstat(f.fileno()).st_size
            headers = [(b"content-type", kind.encode()),
                       (b"content-length", str(size).encode()),
                       (b"cache-control", b"no-cache")]
            if download is not None:
                ascii_name = "".join(c if c.isalnum() or c in "._-" else "_"
                                     for c in download)[:100]
                headers.append((b"content-disposition",
                                f"attachment; filename=\"{ascii_name}\"; "
                                f"filename*=UTF-8''{quote(download)}".encode()))
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            left = size
            while left > 0:
                piece = await f.read(min(PIECE, left))
                if not piece:
                    break  # the file shrank: the length we sent is a lie the client sees
                left -= len(piece)
                await send({"type": "http.response.body", "body": piece,
                            "more_body": left > 0})
            if size == 0:
                await send({"type": "http.response.body", "body": b""})


async def _receive_file(receive: Receive, dest: Path, length: int) -> None:
    """The request body into ``dest``: exactly ``length`` bytes, or no file at all."""
    got = 0
    try:
        try:
            async with await trio.open_file(dest, "xb") as f:
                async for piece in iter_body(receive, length):
                    got += len(piece)
                    await f.write(piece)
        except OSError as exc:  # a full disk is the node's trouble, not a crash
            raise HTTPError(f"cannot store the upload: {exc.strerror}", status_code=507
                            ) from exc
        if got != length:
            raise ClientGone(f"the upload ended after {got} of {length} bytes",
                             status_code=400)
    except BaseException:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(partial(dest.unlink, missing_ok=True))
        raise
