"""Protocol fuzzing of every node endpoint over real HTTP on 127.0.0.1.

A real ``Node`` (hypercorn, trio mode) coordinates a real job: a ``JobServer`` built the way
``run_encode`` builds one, over a small lavfi source, with a lease ticker as ``_watch`` runs.
One node is open and one has a secret. Hypothesis throws methods, targets (traversals, huge,
unicode, query strings), headers (signatures, timestamps, ranges), bodies (bytes, msgpack,
valid and broken messages, oversized, chunked) and non-HTTP bytes at them through raw
sockets, so nothing normalises a path or refuses a header on the way out. The promises:
no 5xx and no hang for anything; 4xx for what is malformed; 401 for what is unsigned when
there is a secret; 401/410 for a source read without a valid token or running attempt; no
file in the work directory for a result upload of an unknown attempt; and, afterwards, a
node that still answers ``GET /v1/info``.

Why a thread: every example must hit the same long-lived server (state left behind by one
request is what a later one can trip over), but ``@given`` on an async test under
pytest-trio runs each example in a fresh ``trio.run``. So each node runs in ``trio.run`` in
a background thread, one per module and secret, and the tests are plain synchronous code
over blocking sockets; the few reads of job state go through ``trio.from_thread``.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import re
import secrets
import socket
import string
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode

import msgpack  # type: ignore[import-untyped]  # ships no stubs
import pytest
import trio
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from chunker.commands import video_plan
from chunker.plan import plan_chunks
from chunker.tools import find_ffmpeg
from media import make_source
from peer import media
from peer.identity import Devices, load_identity
from peer.jobserver import JobServer
from peer.node import Node, NodeConfig
from peer.options import EncodeOptions, JobIntent, LocalSettings, NetworkSettings, Tuning
from peer.pairing import PairingService
from peer.web import Web, WebConfig
from profiles import load_profile
from screens.web_assets import web_assets
from swarm import auth
from swarm.config import Timings
from swarm.errors import AuthError, LocalProtocolError, RemoteProtocolError
from swarm.pairing import Paired
from swarm.protocol import (
    MAX_CONTROL_BODY,
    Assignment,
    ClaimRequest,
    Invite,
    InviteReply,
    JobDone,
    Message,
    NodeInfo,
    Progress,
    ResultAck,
    Wait,
    decode,
    encode,
)

SECRET = "fuzzing is caring"
# The third kind of swarm, closed (the CLI's default): the test signs as the one device the
# node is paired with.
CLOSED = "closed"
JOB = "fuzzJob_0123-abc"  # fixed, so that strategies can aim at the real job's routes
# Loopback answers in milliseconds; an answer later than this is a hang.
REQUEST_TIMEOUT_S = 3.0
# Short chunks give many to hand out; short leases (ticked as run_encode's _watch does)
# return the chunks that fuzzed claims take, so a test can always claim one for itself.
CHUNK_S = 0.25
LEASE_S = 3.0
TICK_S = 0.2

FUZZ = settings(max_examples=200, deadline=timedelta(seconds=2 * REQUEST_TIMEOUT_S),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- a node in a thread ----------------------------------------------------------------------
class FuzzedNode:
    """The test side's handle on a node serving a job in another thread."""

    def __init__(self, port: int, secret: auth.Credential, workdir: Path, source: bytes,
                 job: JobServer, token: trio.lowlevel.TrioToken, stop: trio.CancelScope
                 ) -> None:
        self.port, self.secret, self.workdir = port, secret, workdir
        self.source = source  # what the source route must serve
        self.job, self.token, self.stop = job, token, stop
        self.app_errors: list[logging.LogRecord] = []
        self.held = ""  # an attempt the source test keeps using while it runs

    def __repr__(self) -> str:  # hypothesis prints it with every failing example
        return f"FuzzedNode(port={self.port}, secret={self.secret is not None})"

    def in_trio(self, fn: Callable[..., Any], *args: Any) -> Any:
        return trio.from_thread.run_sync(fn, *args, trio_token=self.token)

    def running(self, attempt: str, chunk: int | None = None) -> bool:
        return bool(self.in_trio(self.job.running_attempt, attempt, chunk))

    def request(self, method: str, target: str | bytes, headers: Sequence[tuple[str, str]] = (),
                body: bytes = b"", *, sign: bool = True, digest: str | None = None,
                framing: str = "length", pieces: Sequence[int] = ()) -> Reply:
        """One request; signed (when there is a secret) as a peer signs it unless told not."""
        hdrs = list(headers)
        if sign and isinstance(target, str):
            hdrs += auth.sign(self.secret, method, target, time.time(),
                              digest or auth.body_digest(body)).items()
        data = http_request(method, target, hdrs, body, framing=framing, pieces=pieces)
        return exchange(self.port, data, head=method == "HEAD")

    def attempt(self) -> Assignment:
        """A running attempt of the job, claimed over HTTP as a peer claims one."""
        deadline = time.monotonic() + 2 * LEASE_S
        while time.monotonic() < deadline:
            claim = ClaimRequest(secrets.token_hex(8), 0, False)
            reply = self.request("POST", f"/v1/jobs/{JOB}/claim", body=encode(claim))
            assert reply.status == 200, reply
            msg = decode(reply.body, (Assignment, Wait, JobDone))
            if isinstance(msg, Assignment):
                return msg
            assert isinstance(msg, Wait), "the job cannot finish: no result ever verifies"
            time.sleep(msg.retry_after_s)
        raise AssertionError("no chunk came free within two leases")

    def assert_no_app_error(self, *, broken_framing: bool = False) -> None:
        """No exception escaped the app (hypercorn logs each one, seen by a client or not).

        With ``broken_framing`` one kind is allowed: hypercorn 0.18 shuts a connection whose
        framing broke (``TCPServer._close``: ``send_eof`` outside its ``send_lock``) while
        the app may still be sending its answer, whose send then raises BusyResourceError.
        Logged noise, local to that connection (peer.http.end_after_request keeps it from
        reaching hypercorn's own reader, where it ended the server).
        """
        errors, self.app_errors[:] = list(self.app_errors), []
        if broken_framing:
            errors = [r for r in errors
                      if not (r.exc_info and r.exc_info[0] is trio.BusyResourceError)]
        assert not errors, [r.getMessage() + f": {r.exc_info and r.exc_info[1]!r}"
                            for r in errors]

    def assert_alive(self) -> None:
        reply = exchange(self.port, http_request("GET", "/v1/info"))
        assert reply.status == 200, reply
        info = decode(reply.body, NodeInfo)
        assert info.state == "busy"
        # A closed node names its job only to a device paired with it.
        assert info.job_id == (None if info.closed else JOB)
        signed = decode(self.request("GET", "/v1/info").body, NodeInfo)
        assert signed.job_id == JOB
        self.assert_no_app_error()


async def _tick(job: JobServer) -> None:
    while True:
        job.tick(trio.current_time())
        await trio.sleep(TICK_S)


def _closed(kind: str | None, folder: Path) -> tuple[auth.Credential, dict[str, Any]]:
    """For ``kind`` CLOSED: the credential of a device paired with a closed node whose
    identity is in ``folder``, and the node's settings (NodeConfig, NetworkSettings);
    otherwise the secret (or None) and nothing."""
    if kind != CLOSED:
        return kind, {}
    folder.mkdir(parents=True, exist_ok=True)
    ident = load_identity(folder)
    peer_id, key = secrets.token_hex(16), secrets.token_bytes(32)
    Devices(folder).add(Paired(peer_id, "paired-peer", key, ""))
    return auth.PairKey(peer_id, key), {
        "closed": True, "pairing": PairingService(folder, ident, door=False)}


def _query(node: FuzzedNode | auth.Credential, attempt: str, token: str) -> str:
    """A source URL's query as a peer of this kind of swarm sends it (peer.worker)."""
    cred = node.secret if isinstance(node, FuzzedNode) else node
    device = {"device": cred.device_id} if isinstance(cred, auth.PairKey) else {}
    return urlencode({"attempt": attempt, "token": token} | device)


async def _serve(source: Path, workdir: Path, kind: str | None,
                 ready: Callable[[FuzzedNode], None], source_bytes: bytes) -> None:
    secret, access = _closed(kind, workdir.parent / (workdir.name + "-identity"))
    plain = secret if not isinstance(secret, auth.PairKey) else None
    ffmpeg = await trio.to_thread.run_sync(find_ffmpeg, ["libx264"])
    info = await media.probe(ffmpeg, str(source))
    profile = load_profile("hd")
    opts = EncodeOptions(JobIntent(str(source), str(workdir / "out.mp4"), profile,
                                   chunk_seconds=CHUNK_S),
                         LocalSettings(no_local=True),
                         NetworkSettings(enabled=True, discover=False, secret=plain, **access),
                         Tuning(timings=Timings(lease_s=LEASE_S)))
    plans = plan_chunks(info.video, info.format_start_s, CHUNK_S)
    fps = info.video.frames / info.duration_s
    vplan = video_plan(profile, *info.video.display_size, fps, opts.job.upscale)
    job = JobServer(job_id=JOB, opts=opts, ffmpeg=ffmpeg, info=info, plans=plans, vplan=vplan,
                    workdir=str(workdir), emit=lambda e: None, local_key="local")
    node = Node(NodeConfig(name="fuzz", port=0, host="127.0.0.1", secret=plain,
                           advertise=False, **access), ffmpeg, coordinator=True)
    # The web page too (peer.web): its routes answer fuzzed requests beside the protocol's.
    web = Web(WebConfig(web_assets(), secret=plain, uploads=workdir / "up",
                        max_upload_bytes=64 * 1024, hls_root=workdir / "hls",
                        closed=bool(access)), node)
    node.web = web
    with trio.CancelScope() as stop:
        async with trio.open_nursery() as nursery:
            await nursery.start(web.run)
            await nursery.start(node.run)
            node.jobs[JOB] = job
            nursery.start_soon(_tick, job)
            ready(FuzzedNode(node.port, secret, workdir, source_bytes, job,
                             trio.lowlevel.current_trio_token(), stop))


class _Collect(logging.Handler):
    def __init__(self, into: list[logging.LogRecord]) -> None:
        super().__init__(logging.ERROR)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_source("no_audio", tmp_path_factory.mktemp("fuzz-src"))


@pytest.fixture(scope="module", params=[None, SECRET, CLOSED], ids=["open", "secret", "closed"])
def node(request: pytest.FixtureRequest, source: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzedNode]:
    workdir = tmp_path_factory.mktemp("fuzz-work")
    handoff: queue.Queue[FuzzedNode | BaseException] = queue.Queue()

    def main() -> None:
        try:
            trio.run(_serve, source, workdir, request.param, handoff.put, source.read_bytes())
        except BaseException as exc:  # handed to the test thread, which fails on it
            handoff.put(exc)

    thread = threading.Thread(target=main, name="fuzzed-node", daemon=True)
    thread.start()
    got = handoff.get(timeout=60)
    if isinstance(got, BaseException):
        raise got
    # hypercorn logs an exception that escaped the app here, even when no client sees it.
    collect = _Collect(got.app_errors)
    logging.getLogger("hypercorn.error").addHandler(collect)
    try:
        yield got
        assert thread.is_alive(), handoff.get_nowait()
        got.assert_alive()
    finally:
        logging.getLogger("hypercorn.error").removeHandler(collect)
        if thread.is_alive():
            got.in_trio(got.stop.cancel)
        thread.join(10)
    assert handoff.empty(), handoff.get_nowait()  # trio.run ended without an exception


# -- raw HTTP ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reply:
    status: int | None  # None: the connection closed without an answer
    headers: dict[str, str]
    body: bytes
    raw: bytes


def http_request(method: str | bytes, target: str | bytes,
                 headers: Sequence[tuple[str | bytes, str | bytes]] = (), body: bytes = b"",
                 *, framing: str = "length", pieces: Sequence[int] = ()) -> bytes:
    """Bytes of one HTTP/1.1 request, exactly as given: nothing is quoted or checked.

    ``framing``: "length" (Content-Length), "chunked" (cut at ``pieces``), or "bad-chunked"
    (a chunk-size line that is not hex, which no server can read as a complete body).
    """

    def b(x: str | bytes) -> bytes:
        return x.encode("utf-8") if isinstance(x, str) else x

    lines = [b(method) + b" " + b(target) + b" HTTP/1.1", b"Host: 127.0.0.1",
             b"Connection: close"]
    lines += [b(k) + b": " + b(v) for k, v in headers]
    if framing == "length":
        lines.append(b"Content-Length: %d" % len(body))
        payload = body
    else:
        lines.append(b"Transfer-Encoding: chunked")
        cuts = sorted({min(max(0, p), len(body)) for p in pieces} | {0, len(body)})
        parts = [body[i:j] for i, j in itertools.pairwise(cuts) if j > i]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts)
        payload += b"zz\r\n" if framing == "bad-chunked" else b"0\r\n\r\n"
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload


_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})[^\r\n]*\r\n")


def exchange(port: int, data: bytes, *, head: bool = False, half_close: bool = False
             ) -> Reply:
    """Send ``data`` on a fresh connection and read one final response (1xx skipped).

    Reading stops at the end of the framed body, not at EOF: hypercorn keeps some refused
    connections open after answering. A missing answer within REQUEST_TIMEOUT_S fails.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT_S) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before we finished sending; the answer may be waiting to be read
        buf = b""
        while True:
            reply = _parse(buf, head)
            if reply is not None:
                return reply
            try:
                got = sock.recv(1 << 16)
            except ConnectionResetError:
                got = b""
            except TimeoutError:
                pytest.fail(f"no answer in {REQUEST_TIMEOUT_S} s to {data[:300]!r}")
            if not got:
                return _parse(buf, head, eof=True) or Reply(None, {}, b"", buf)
            buf += got


def _parse(buf: bytes, head: bool, eof: bool = False) -> Reply | None:
    start = 0
    while True:
        end = buf.find(b"\r\n\r\n", start)
        m = _STATUS.match(buf, start)
        if end < 0 or m is None:
            return None
        status = int(m.group(1))
        if 100 <= status < 200 and status != 101:
            start = end + 4
            continue
        headers: dict[str, str] = {}
        for line in buf[m.end():end].split(b"\r\n"):
            k, _, v = line.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        body = buf[end + 4:]
        want = 0 if head or status in (101, 204, 304) else int(headers.get("content-length", -1))
        if want >= 0 and len(body) >= want:
            return Reply(status, headers, body[:want], buf)
        return Reply(status, headers, body, buf) if eof else None


# -- strategies -------------------------------------------------------------------------------
_TCHAR = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
_VCHAR = "".join(map(chr, range(0x21, 0x7F)))
_FRAMING_HEADERS = {"host", "connection", "content-length", "transfer-encoding", "upgrade",
                    "http2-settings"}

_hex64 = st.from_regex(r"[0-9a-f]{64}", fullmatch=True)
_tokens = st.from_regex(r"[A-Za-z0-9_-]{8,64}", fullmatch=True)
# Attempt ids as the job makes them (guessable: tests check what guessing gets you).
_attempt_like = st.builds("c{:05d}a{:03d}".format, st.integers(0, 40), st.integers(0, 4))
_attempts = _attempt_like | _tokens | st.text(max_size=80) | st.just("")

_ROUTES = ["/v1/info", "/v1/invite", f"/v1/jobs/{JOB}", f"/v1/jobs/{JOB}/claim",
           f"/v1/jobs/{JOB}/progress", f"/v1/jobs/{JOB}/failed", f"/v1/jobs/{JOB}/source",
           f"/v1/jobs/{JOB}/chunks/0/result", f"/v1/jobs/{JOB}/chunks/999999/result",
           "/v1/jobs/someOtherJob42/claim", "/v1/jobs/short/claim", "/", "/v1", "/v2/info",
           # The web page's (peer.web); not /web/events, whose answer never ends.
           "/web/app.js", "/web/style.css", "/web/login", "/web/upload", "/web/hls.min.js",
           f"/web/jobs/{JOB}/result", f"/web/jobs/{JOB}/hls/master.m3u8",
           f"/web/jobs/{JOB}/hls/v00000.m4s", "/web/jobs/../../etc/passwd", "/web/"]
_TRAVERSALS = [
    "/v1/jobs/../info", "/v1/info/..", "/v1/./info", "//v1/info", "/v1//info", "/V1/INFO",
    f"/v1/jobs/{JOB}/../../../../etc/passwd", f"/v1/jobs/{JOB}/chunks/../../source",
    f"/v1/jobs/{JOB}/chunks/0/../../source", f"/v1/jobs/{JOB}/chunks/..%2f..%2fx/result",
    "/v1/jobs/%2e%2e/%2e%2e/etc/passwd", f"/v1/jobs/{JOB}%2fclaim", "/v1/%69nfo",
    "/..%2f..%2f..%2fetc%2fpasswd", "/v1/jobs/" + "../" * 40 + "etc/passwd", "\\v1\\info",
    "/v1/info%00", f"/v1/jobs/{JOB}/source%00.mp4", f"/v1/jobs/{JOB}/chunks/-1/result",
    f"/v1/jobs/{JOB}/chunks/0000001/result", f"/v1/jobs/{JOB}/claim%0a", "/v1/info%0a",
    f"/v1/jobs/{JOB}/chunks/%d9%a1/result", "*", "http://127.0.0.1/v1/info", "/v1/info#x",
    "127.0.0.1:80", "/%ff%fe%fd", "/v1/jobs/" + "%c0%ae" * 6 + "/claim",
]


@st.composite
def _targets(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["route", "traversal", "mutated", "quoted", "raw", "huge",
                                 "random"]))
    if kind == "route":
        path = draw(st.sampled_from(_ROUTES)).encode()
    elif kind == "traversal":
        path = draw(st.sampled_from(_TRAVERSALS)).encode()
    elif kind == "mutated":
        base = draw(st.sampled_from(_ROUTES))
        at = draw(st.integers(0, len(base)))
        path = (base[:at] + draw(st.text(_VCHAR, max_size=12)) + base[at:]).encode()
    elif kind == "quoted":  # unicode, percent-encoded as a client would
        path = ("/v1/" + quote(draw(st.text(max_size=30)), safe="/")).encode()
    elif kind == "raw":  # unicode sent as raw UTF-8 bytes, which HTTP/1.1 does not allow
        path = ("/v1/jobs/" + draw(st.text(min_size=1, max_size=20))).encode("utf-8",
                                                                              "surrogatepass")
    elif kind == "huge":
        path = ("/v1/jobs/" + "a" * draw(st.integers(1000, 20_000))).encode()
    else:
        path = ("/" + draw(st.text(_VCHAR, max_size=60))).encode()
    query = draw(st.one_of(
        st.just(""),
        st.lists(st.tuples(st.sampled_from(["attempt", "token", "x"]) | st.text(max_size=8),
                           _attempts | _hex64), max_size=12).map(urlencode),
        st.text(_VCHAR, max_size=120),
        st.integers(300, 3000).map(lambda n: "a=" * n),
    ))
    return path + (b"?" + query.encode() if query else b"")


# Not "head" in another case: hypercorn 0.18 upper-cases the method for the app (so it
# answers as to HEAD, without a body) while h11 takes it as written (and wants the body).
_methods = (st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS",
                             "TRACE", "CONNECT", "get", "Post"])
            | st.text(_TCHAR, min_size=1, max_size=24)).filter(
                lambda m: m == "HEAD" or m.upper() != "HEAD")


def _millis(offset_ms: int) -> str:
    return str(int(time.time() * 1000) + offset_ms)


_times = st.one_of(st.integers(-10**8, 10**8).map(_millis), st.text(_VCHAR, max_size=20),
                   st.sampled_from(["", "-1", "+1", "1_000", "0", "9" * 5000, "1e12"]))
_signatures = st.one_of(_hex64, st.text(_VCHAR, max_size=80), st.just(""),
                        st.just("0" * 64), st.just("A" * 64), st.just("a" * 5000))
_ranges = st.one_of(
    st.builds("bytes={}-{}".format, st.integers(-5, 10**6), st.integers(-5, 10**6)),
    st.builds("bytes={}-".format, st.integers(-5, 10**6)),
    st.builds("bytes=-{}".format, st.integers(-5, 10**6)),
    st.sampled_from(["bytes=", "bytes=-", "bytes=0-0,5-9", "items=0-5", "bytes=1-0",
                     "bytes=" + "9" * 5000 + "-", "bytes=+1-+2", "bytes= 3 - 7 "]),
    st.text(_VCHAR, max_size=30),
)
_header = st.one_of(
    st.tuples(st.sampled_from([auth.TIME_HEADER, "x-swarm-time"]), _times),
    st.tuples(st.sampled_from([auth.SIGNATURE_HEADER, "X-SWARM-SIGNATURE"]), _signatures),
    st.tuples(st.just("Range"), _ranges),
    st.tuples(st.just("Accept"), st.sampled_from(["application/json", "application/msgpack",
                                                  "*/*", "application/json;q=0"])),
    st.tuples(st.just("Content-Type"), st.text(_VCHAR, max_size=40)),
    st.tuples(st.just("Expect"), st.just("100-continue")),
    st.tuples(st.text(_TCHAR, min_size=1, max_size=20).filter(
        lambda k: k.lower() not in _FRAMING_HEADERS),
        st.text(_VCHAR + "".join(map(chr, range(0x80, 0x100))), max_size=60)),
    st.tuples(st.just("X-Big"), st.integers(1000, 20_000).map(lambda n: "b" * n)),
)
_headers = st.lists(_header.map(lambda kv: (kv[0], kv[1].encode("latin-1"))), max_size=8)

_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
            | st.floats(allow_nan=True) | st.text(max_size=20) | st.binary(max_size=4))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=6)
                       | st.dictionaries(st.text(max_size=10), inner, max_size=6),
                       max_leaves=20)
_node_ids = st.from_regex(r"[0-9a-f]{8,64}", fullmatch=True)
_claims = st.builds(ClaimRequest, _node_ids, st.integers(0, 63), st.booleans())
_progress = st.builds(Progress, st.just(JOB) | _tokens, st.integers(0, 40),
                      _attempt_like | _tokens, st.integers(0, 10**7),
                      st.floats(0, 1e6))
_invites = st.builds(Invite, _tokens, st.just("http://127.0.0.1:9"), st.just(
    {**load_profile("hd").to_wire(), "out_width": 320, "out_height": 240, "out_gop": 50}),
    _tokens)
_messages: st.SearchStrategy[Message] = _claims | _progress | _invites


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    """A valid message with one field replaced, dropped or added: reaches the field checks."""
    body = msgpack.unpackb(encode(draw(_messages)), raw=False)
    key = draw(st.sampled_from(sorted(body)) | st.text(max_size=8))
    if draw(st.booleans()) and key in body:
        del body[key]
    else:
        body[key] = draw(_values)
    return bytes(msgpack.packb(body, use_bin_type=True))


_bodies = st.one_of(
    st.just(b""),
    st.binary(max_size=2048),
    _values.map(lambda v: bytes(msgpack.packb(v, use_bin_type=True))),
    _messages.map(encode),
    _mutated(),
    st.integers(MAX_CONTROL_BODY + 1, MAX_CONTROL_BODY + 100_000).map(lambda n: b"\0" * n),
)
_framings = st.sampled_from(["length", "length", "chunked", "bad-chunked"])
_pieces = st.lists(st.integers(0, 4096), max_size=6)


# -- what the protocol says ----------------------------------------------------------------------
_JOB_PATH = re.compile(r"/v1/jobs/([A-Za-z0-9_-]{8,64})(/claim|/progress|/failed|/source"
                       r"|/chunks/[0-9]{1,6}/result)?", re.ASCII)


def _may_succeed(node: FuzzedNode, method: str, target: bytes) -> bool:
    """Whether the protocol has a 2xx for this method and target at all (nothing else may).

    Unsigned requests never qualify in a swarm with a secret, and these tests cannot sign
    a fuzzed request, so there only ``GET /v1/info`` and the web page's public files ever
    succeed (and, in an open swarm, its sign-in, which then asks for nothing).
    """
    path = unquote(target.split(b"?")[0].decode("ascii", "replace"))
    method = method.upper()  # as hypercorn hands it to the app
    if path == "/v1/info":
        return method == "GET"
    if path in ("/", "/web/app.js", "/web/style.css"):
        return method in ("GET", "HEAD")
    if path == "/web/login":
        return method == "POST" and node.secret is None
    m = _JOB_PATH.fullmatch(path)
    if node.secret is not None or m is None:
        return False
    rest = m.group(2) or ""
    if rest == "":
        return method == "DELETE"
    allowed = {"/claim": ("POST",), "/progress": ("POST",), "/failed": ("POST",),
               "/source": ("GET", "HEAD")}
    return m.group(1) == JOB and method in allowed.get(rest, ("PUT",))


def _control_status(route: str, body: bytes) -> int:
    """The status a correctly signed control request with this body must get."""
    if len(body) > MAX_CONTROL_BODY:
        return 413
    if route == "delete":
        return 204
    kind = {"claim": ClaimRequest, "progress": Progress, "invite": Invite}[route]
    try:
        decode(body, kind)
    except RemoteProtocolError as exc:
        return exc.status_code
    return 409 if route == "invite" else 200  # a coordinating node takes no invites


_CONTROL = {"claim": ("POST", f"/v1/jobs/{JOB}/claim"),
            "progress": ("POST", f"/v1/jobs/{JOB}/progress"),
            "invite": ("POST", "/v1/invite"),
            "delete": ("DELETE", f"/v1/jobs/{JOB}")}


# -- the fuzzing -------------------------------------------------------------------------------
@FUZZ
@given(method=_methods, target=_targets(), headers=_headers, body=_bodies,
       framing=_framings, pieces=_pieces)
def test_any_request_gets_an_answer_below_500(node: FuzzedNode, method: str, target: bytes,
                                              headers: list[tuple[str, bytes]], body: bytes,
                                              framing: str, pieces: list[int]) -> None:
    data = http_request(method, target, headers, body, framing=framing, pieces=pieces)
    reply = exchange(node.port, data, head=method == "HEAD")
    broken = framing == "bad-chunked"
    node.assert_no_app_error(broken_framing=broken)
    if reply.status is None:
        assert broken, "a well-framed request must get an answer"
        return
    assert reply.status < 500, reply
    if reply.status < 400:
        assert 200 <= reply.status < 300, reply
        assert _may_succeed(node, method, target), reply


@FUZZ
@given(route=st.sampled_from(sorted(_CONTROL)), body=_bodies,
       framing=st.sampled_from(["length", "chunked"]), pieces=_pieces, json_reply=st.booleans())
def test_signed_control_bodies_get_exactly_the_decoders_verdict(
        node: FuzzedNode, route: str, body: bytes, framing: str, pieces: list[int],
        json_reply: bool) -> None:
    # Signed, so the body reaches the decoder: the status must be the one decode() names.
    method, target = _CONTROL[route]
    accept = [("Accept", "application/json")] if json_reply else []
    reply = node.request(method, target, accept, body, framing=framing, pieces=pieces)
    assert reply.status == _control_status(route, body), reply
    if reply.status == 200:
        want = {"claim": {"assign", "wait"}, "progress": {"progress_ack"}}[route]
        if json_reply:
            assert json.loads(reply.body)["t"] in want
        else:
            assert decode(reply.body).TYPE in want


_BAD_SIGNATURES = ["none", "no-time", "no-signature", "bad-time", "bad-signature", "stale",
                   "future", "other-secret", "other-body", "other-target", "other-method",
                   "forged-twice"]


@FUZZ
@given(route=st.sampled_from([*sorted(_CONTROL), "result"]),
       how=st.sampled_from([*_BAD_SIGNATURES, "valid"]), body=st.binary(max_size=512),
       garbage=_signatures)
def test_unsigned_requests_get_401_with_a_secret(node: FuzzedNode, route: str, how: str,
                                                 body: bytes, garbage: str) -> None:
    if node.secret is None:
        pytest.skip("an open swarm signs nothing")
    if route == "result":
        attempt = "c00099a009"  # well-formed but never handed out
        method, target = "PUT", f"/v1/jobs/{JOB}/chunks/0/result?attempt={attempt}"
        digest = auth.streamed_digest(attempt)
    else:
        (method, target), digest = _CONTROL[route], auth.body_digest(body)
    now, secret = time.time(), node.secret
    signed_as = {"method": method, "target": target, "digest": digest}
    if how == "stale":
        now -= auth.MAX_SKEW_S + 1
    elif how == "future":
        now += auth.MAX_SKEW_S + 1
    elif how == "other-secret":
        secret = (auth.PairKey(secret.device_id, secrets.token_bytes(32))
                  if isinstance(secret, auth.PairKey) else SECRET + "!")
    elif how == "other-body":
        signed_as["digest"] = auth.body_digest(body + b"x")
    elif how == "other-target":
        signed_as["target"] = target + "x"
    elif how == "other-method":
        signed_as["method"] = "PATCH"
    sig = auth.sign(secret, signed_as["method"], signed_as["target"], now, signed_as["digest"])
    headers = list(sig.items())
    if how == "none":
        headers = []
    elif how == "no-time":
        headers = [h for h in headers if h[0] != auth.TIME_HEADER]
    elif how == "no-signature":
        headers = [h for h in headers if h[0] != auth.SIGNATURE_HEADER]
    elif how == "bad-time":
        headers = [(auth.TIME_HEADER, garbage or "x"), (auth.SIGNATURE_HEADER,
                                                        sig[auth.SIGNATURE_HEADER])]
    elif how == "bad-signature":
        assume(garbage != sig[auth.SIGNATURE_HEADER])
        headers = [(auth.TIME_HEADER, sig[auth.TIME_HEADER]), (auth.SIGNATURE_HEADER, garbage)]
    elif how == "forged-twice":  # a forged pair first, the valid pair after it
        headers = [(auth.TIME_HEADER, _millis(0)), (auth.SIGNATURE_HEADER, "0" * 64), *headers]
    reply = node.request(method, target, headers, body, sign=False)
    if how == "valid":  # the control: the same request signed properly passes the check
        assert reply.status != 401, reply
    else:
        assert reply.status == 401, reply
    assert not os.listdir(node.workdir)


@FUZZ
@given(data=st.data(), head=st.booleans())
def test_source_needs_a_valid_token_and_a_running_attempt(node: FuzzedNode, data: Any,
                                                          head: bool) -> None:
    path = f"/v1/jobs/{JOB}/source"
    if not (node.held and node.running(node.held)):
        node.held = node.attempt().attempt
    running = node.held
    attempt = data.draw(st.just(running) | _attempts, label="attempt")
    # Only an attempt id can have a token; for anything else no token is valid.
    good = auth.url_token(node.secret, path, attempt) if re.fullmatch(
        r"[A-Za-z0-9_-]{8,64}", attempt) else None
    tokens = _hex64 | st.text(max_size=70)
    token = data.draw(st.just(good) | tokens if good else tokens, label="token")
    rng = data.draw(st.none() | _ranges, label="range")
    query = _query(node, attempt, token)
    reply = node.request("HEAD" if head else "GET", f"{path}?{query}",
                         [("Range", rng)] if rng is not None else [], sign=False)
    if node.secret is not None and token != good:
        assert reply.status == 401, reply
    elif not node.running(attempt):
        assert reply.status == 410, reply
    else:
        _check_source_reply(node.source, reply, rng, head)


def _check_source_reply(source: bytes, reply: Reply, rng: str | None, head: bool) -> None:
    size = len(source)
    assert reply.status in (200, 206, 416), reply
    if reply.status == 416:
        assert rng is not None
        return
    if reply.status == 200:
        first, last = 0, size - 1
    else:
        m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", reply.headers.get("content-range", ""))
        assert m is not None and int(m.group(3)) == size, reply.headers
        first, last = int(m.group(1)), int(m.group(2))
        assert 0 <= first <= last < size
    assert int(reply.headers["content-length"]) == last - first + 1
    if not head:
        assert reply.body == source[first:last + 1]
    # Where the header is a plain single range, the bytes must be exactly the ones asked for.
    simple = re.fullmatch(r"bytes=([0-9]+)-([0-9]*)", rng or "")
    if simple and int(simple.group(1)) < size:
        lo, hi = int(simple.group(1)), simple.group(2)
        if not hi or int(hi) >= lo:
            assert (first, last) == (lo, min(int(hi), size - 1) if hi else size - 1)
    elif rng is None:
        assert reply.status == 200


@FUZZ
@given(attempt=_attempts, chunk=st.integers(0, 999_999) | st.integers(0, 40),
       body=st.binary(max_size=4096) | st.integers(1, 60_000).map(os.urandom),
       framing=st.sampled_from(["length", "chunked"]), pieces=_pieces)
def test_result_for_an_unknown_attempt_writes_nothing(node: FuzzedNode, attempt: str,
                                                      chunk: int, body: bytes, framing: str,
                                                      pieces: list[int]) -> None:
    # Nothing else writes into the work directory during this test, so any change to it
    # (even a file made and deleted again: the directory's mtime moves) is this request's.
    assume(not node.running(attempt, chunk))
    before = (sorted(os.listdir(node.workdir)), os.stat(node.workdir).st_mtime_ns)
    target = f"/v1/jobs/{JOB}/chunks/{chunk}/result?" + urlencode({"attempt": attempt})
    try:
        headers = list(auth.sign(node.secret, "PUT", target, time.time(),
                                 auth.streamed_digest(attempt)).items())
    except LocalProtocolError:  # not an attempt id at all: cannot even be signed
        headers = []
    reply = node.request("PUT", target, headers, body, sign=False, framing=framing,
                         pieces=pieces)
    expected = 401 if node.secret is not None and not headers else 409
    assert reply.status == expected, reply
    assert (sorted(os.listdir(node.workdir)), os.stat(node.workdir).st_mtime_ns) == before


@settings(FUZZ, max_examples=12)  # each example costs an attempt and an ffmpeg run
@given(body=st.binary(max_size=4096) | st.integers(1, 200_000).map(os.urandom),
       framing=st.sampled_from(["length", "chunked"]), pieces=_pieces)
def test_garbage_result_for_a_running_attempt_is_refused_and_removed(
        node: FuzzedNode, body: bytes, framing: str, pieces: list[int]) -> None:
    a = node.attempt()
    target = f"/v1/jobs/{JOB}/chunks/{a.chunk}/result?attempt={a.attempt}"
    reply = node.request("PUT", target, body=body, digest=auth.streamed_digest(a.attempt),
                         framing=framing, pieces=pieces)
    assert reply.status == 200, reply
    ack = decode(reply.body, ResultAck)  # a reason quoting ffmpeg must still be valid
    assert not ack.accepted and ack.reason.startswith("verification failed"), ack
    assert os.listdir(node.workdir) == []
    assert not node.running(a.attempt)  # failed, so its chunk is handed out again


_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@FUZZ
@given(data=st.one_of(
    st.binary(min_size=1, max_size=4096),
    st.binary(max_size=512).map(lambda b: b"\x16\x03\x01\x02\x00\x01" + b),  # a TLS hello
    st.binary(max_size=512).map(lambda b: _H2_PREFACE + b),
    st.tuples(_methods, st.binary(max_size=512)).map(
        lambda mb: mb[0].encode() + b" /v1/info HTTP/1.1\r\n" + mb[1]),
    # Not empty: a connection that sends nothing waits out hypercorn's 5 s keep-alive.
    st.text(min_size=1, max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
))
def test_non_http_bytes_are_refused_or_dropped(node: FuzzedNode, data: bytes) -> None:
    # Half-closing says "that is all": the node must answer or hang up, never wait on.
    reply = exchange(node.port, data, half_close=True)
    node.assert_no_app_error(broken_framing=True)  # a request may be followed by garbage
    statuses = [int(s) for s in re.findall(rb"HTTP/1\.[01] (\d{3}) ", reply.raw)]
    assert all(s < 500 for s in statuses), reply
    if not data.startswith((b"GET ", b"PRI ")):
        assert all(400 <= s < 500 for s in statuses), reply
    node.assert_alive()


# -- the cases fuzzing finds only by luck ----------------------------------------------------------
@pytest.mark.parametrize("target", ["/v1/info", f"/v1/jobs/{JOB}/source", "/nowhere"])
def test_websocket_upgrades_are_refused(node: FuzzedNode, target: str) -> None:
    reply = node.request("GET", target, [
        ("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")])
    assert reply.status is not None and 400 <= reply.status < 500, reply
    node.assert_alive()


@pytest.mark.parametrize("suffix", ["/claim%0A", "/claim%0D%0A", "%0A/claim", "/claim/"])
def test_lookalike_claim_routes_are_404(node: FuzzedNode, suffix: str) -> None:
    # Signed over exactly this target, so only the route can refuse it.
    claim = ClaimRequest(secrets.token_hex(8), 0, False)
    reply = node.request("POST", f"/v1/jobs/{JOB}{suffix}", body=encode(claim))
    assert reply.status == 404, reply


@pytest.mark.parametrize("chunk", ["%D9%A1", "%EF%BC%91", "1%0A"])  # Arabic and fullwidth 1
def test_lookalike_chunk_numbers_are_404(node: FuzzedNode, chunk: str) -> None:
    a = node.attempt()
    target = f"/v1/jobs/{JOB}/chunks/{chunk}/result?attempt={a.attempt}"
    reply = node.request("PUT", target, body=b"x", digest=auth.streamed_digest(a.attempt))
    assert reply.status == 404, reply
    assert node.running(a.attempt) and os.listdir(node.workdir) == []


@pytest.mark.parametrize("route", sorted(_CONTROL))
def test_a_huge_declared_body_is_413_before_it_is_sent(node: FuzzedNode, route: str) -> None:
    method, target = _CONTROL[route]
    head = http_request(method, target, [("Content-Length", str(10**12))]).replace(
        b"Content-Length: 0\r\n", b"")
    assert exchange(node.port, head).status == 413


# Before peer.http.end_after_request, this took the whole node down within ~60 requests.
BROKEN_CHUNKED_ROUNDS = 300


@pytest.mark.parametrize("target", ["/v1/info", "/nowhere", f"/v1/jobs/{JOB}/claim"])
def test_a_broken_chunked_body_does_not_take_the_node_down(node: FuzzedNode,
                                                            target: str) -> None:
    # The node answers before reading the body; the broken chunk after it arrives while
    # hypercorn closes the connection.
    data = http_request("POST" if "claim" in target else "GET", target, body=b"x" * 10,
                        framing="bad-chunked")
    for _ in range(BROKEN_CHUNKED_ROUNDS):
        reply = exchange(node.port, data)
        assert reply.status is None or 400 <= reply.status < 500, reply
    node.assert_no_app_error(broken_framing=True)
    node.assert_alive()


def _abort(sock: socket.socket) -> None:
    """Close with a TCP reset, as a crashed peer's kernel would."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_aborted_transfers_leave_no_file_and_a_live_node(node: FuzzedNode) -> None:
    a = node.attempt()
    path = f"/v1/jobs/{JOB}/source"
    token = auth.url_token(node.secret, path, a.attempt)
    get = http_request("GET", f"{path}?{_query(node, a.attempt, token)}")
    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", node.port), timeout=REQUEST_TIMEOUT_S)
        sock.sendall(get)
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
        _abort(sock)
    assert node.running(a.attempt)  # a reader going away is no reason to drop the attempt

    target = f"/v1/jobs/{JOB}/chunks/{a.chunk}/result?attempt={a.attempt}"
    headers = auth.sign(node.secret, "PUT", target, time.time(), auth.streamed_digest(a.attempt))
    put = http_request("PUT", target, [*headers.items(), ("Content-Length", "100000")])
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=REQUEST_TIMEOUT_S)
    sock.sendall(put.replace(b"Content-Length: 0\r\n", b"") + os.urandom(5000))
    deadline = time.monotonic() + REQUEST_TIMEOUT_S
    while not os.listdir(node.workdir) and time.monotonic() < deadline:
        time.sleep(0.01)  # the upload has begun once its file exists
    assert os.listdir(node.workdir) == [f"recv_{a.attempt}.nut"]
    _abort(sock)
    while os.listdir(node.workdir) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert os.listdir(node.workdir) == []
    assert not node.running(a.attempt)  # a broken upload fails the attempt: it is requeued
    node.assert_alive()


def test_node_survived_the_fuzzing(node: FuzzedNode) -> None:
    node.assert_alive()
    a = node.attempt()  # and it still hands out work and serves it
    path = f"/v1/jobs/{JOB}/source"
    token = auth.url_token(node.secret, path, a.attempt)
    reply = node.request("GET", f"{path}?{_query(node, a.attempt, token)}", sign=False)
    assert reply.status == 200 and reply.body == node.source
    # The promise of test_result_for_an_unknown_attempt_writes_nothing, once more overall.
    assert os.listdir(node.workdir) == []


# -- a peer node: invites from anywhere, and the proof in its replies ------------------------
@dataclass
class PeerNode:
    port: int
    secret: auth.Credential
    node_id: str
    token: trio.lowlevel.TrioToken
    stop: trio.CancelScope
    app_errors: list[logging.LogRecord]

    def __repr__(self) -> str:
        return f"PeerNode(port={self.port}, secret={self.secret is not None})"


async def _serve_peer(kind: str | None, folder: Path, ready: Callable[[PeerNode], None]
                      ) -> None:
    secret, access = _closed(kind, folder)
    ffmpeg = await trio.to_thread.run_sync(find_ffmpeg, ["libx264"])
    # A coordinator at port 9 of loopback never answers: an accepted invite is dropped
    # within half a second, and the node takes invites again.
    node = Node(NodeConfig(name="fuzz-peer", port=0, host="127.0.0.1",
                           secret=secret if not access else None,
                           advertise=False, serve_pyz=False,
                           timings=Timings(coordinator_gone_s=0.5), **access), ffmpeg)
    with trio.CancelScope() as stop:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            ready(PeerNode(node.port, secret, node.node_id, trio.lowlevel.current_trio_token(),
                           stop, []))


@pytest.fixture(scope="module", params=[None, SECRET, CLOSED], ids=["open", "secret", "closed"])
def peer_node(request: pytest.FixtureRequest,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerNode]:
    handoff: queue.Queue[PeerNode | BaseException] = queue.Queue()
    folder = tmp_path_factory.mktemp("fuzz-peer-identity")

    def main() -> None:
        try:
            trio.run(_serve_peer, request.param, folder, handoff.put)
        except BaseException as exc:
            handoff.put(exc)

    thread = threading.Thread(target=main, name="fuzzed-peer", daemon=True)
    thread.start()
    got = handoff.get(timeout=60)
    if isinstance(got, BaseException):
        raise got
    collect = _Collect(got.app_errors)
    logging.getLogger("hypercorn.error").addHandler(collect)
    try:
        yield got
        assert thread.is_alive(), handoff.get_nowait()
        reply = exchange(got.port, http_request("GET", "/v1/info"))
        assert reply.status == 200 and decode(reply.body, NodeInfo).node_id == got.node_id
        assert not got.app_errors, [r.getMessage() for r in got.app_errors]
    finally:
        logging.getLogger("hypercorn.error").removeHandler(collect)
        if thread.is_alive():
            trio.from_thread.run_sync(got.stop.cancel, trio_token=got.token)
        thread.join(10)


_HOSTS = st.sampled_from([
    "127.0.0.1", "127.9.9.9", "[::1]", "[::ffff:127.0.0.1]", "0.0.0.0", "10.0.0.1",
    "192.0.2.1", "255.255.255.255", "[fe80::1%25eth0]", "[::ffff:10.0.0.1]", "[2001:db8::1]",
    "localhost", "example.com", "nas.local", "127.0.0.1.nip.io",
]) | st.ip_addresses(v=4).map(str)
# Ports where nothing listens: an invite that is believed sends its claims nowhere.
_URLS = st.builds(lambda scheme, host, port: f"{scheme}://{host}:{port}",
                  st.sampled_from(["http", "https"]), _HOSTS, st.sampled_from([1, 9]))


def _is_loopback(host: str) -> bool:
    """Independently of swarm.trust: an IP literal on loopback (the test's own address)."""
    import ipaddress

    try:
        ip = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def _invite_fields() -> dict[str, Any]:
    return {**load_profile("hd").to_wire(), "out_width": 320, "out_height": 240, "out_gop": 50}


@FUZZ
@given(url=_URLS, job=_tokens, nonce=_tokens)
def test_invites_are_believed_only_from_the_coordinator_they_name(
        peer_node: PeerNode, url: str, job: str, nonce: str) -> None:
    """The test sends from 127.0.0.1: only loopback coordinators are its own address, and
    an https one only from a paired device whose certificate the node holds. A believed
    invite is answered with a reply whose proof verifies (with a secret), or 409
    while the node still works on an earlier one."""
    body = encode(Invite(job, url, _invite_fields(), nonce))
    headers = list(auth.sign(peer_node.secret, "POST", "/v1/invite", time.time(),
                             auth.body_digest(body)).items())
    reply = exchange(peer_node.port, http_request("POST", "/v1/invite", headers, body))
    host = url.split("://", 1)[1].rsplit(":", 1)[0]
    if not _is_loopback(host):
        assert reply.status == 403, (url, reply)
        return
    if url.startswith("https://"):
        # TLS to a coordinator only with a certificate pinned for the paired device that
        # signed the invite (peer.tls); this one is signed with the secret, by no device,
        # or by a device paired with no certificate.
        assert reply.status == 403 and b"certificate" in reply.body, (url, reply)
        return
    assert reply.status in (200, 409), (url, reply)
    if reply.status == 200:
        ack = decode(reply.body, InviteReply)
        assert ack.accepted and ack.node_id == peer_node.node_id
        auth.check_reply_proof(peer_node.secret, ack.proof, nonce, InviteReply.TYPE, job,
                               peer_node.node_id, "accepted")
        if peer_node.secret is not None:
            with pytest.raises(AuthError):  # the proof is bound to this invite's nonce
                auth.check_reply_proof(peer_node.secret, ack.proof, nonce + "x",
                                       InviteReply.TYPE, job, peer_node.node_id, "accepted")


@FUZZ
@given(method=_methods, target=_targets(), headers=_headers, body=_bodies,
       sign=st.booleans())
def test_a_peer_node_answers_anything_below_500(peer_node: PeerNode, method: str,
                                                target: bytes,
                                                headers: list[tuple[str, bytes]],
                                                body: bytes, sign: bool) -> None:
    hdrs: list[tuple[str | bytes, str | bytes]] = list(headers)
    if sign and peer_node.secret is not None and method.isascii() and method.isalpha() \
            and len(method) <= 16:
        text = target.decode("latin-1")
        if text.startswith("/") and text.isascii() and text.isprintable():
            hdrs += auth.sign(peer_node.secret, method, text, time.time(),
                              auth.body_digest(body)).items()
    reply = exchange(peer_node.port, http_request(method, target, hdrs, body),
                     head=method == "HEAD")
    assert reply.status is None or reply.status < 500, reply
