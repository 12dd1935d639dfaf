"""TLS between paired devices (peer.tls, peer.tunnel, swarm.x509) over real sockets.

A real coordinator ``Node`` serves a real ``JobServer`` on its plain port and on its TLS
port; clients pin its certificate's fingerprint; a peer-side ``Tunnel`` lets a real ffmpeg
read the source over that TLS connection. A relay between the tunnel and the node keeps
every byte that crossed it, to show that the source's bytes never crossed in clear (and,
through the same relay over plain HTTP, that the check would see them if they did).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import secrets
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio

from chunker.commands import video_plan
from chunker.plan import plan_chunks
from chunker.tools import find_ffmpeg
from media import FFMPEG, make_source
from peer import media, tls
from peer.client import call, transport_errors
from peer.identity import Devices, load_identity
from peer.jobserver import JobServer
from peer.node import Node, NodeConfig
from peer.options import EncodeOptions, JobIntent, LocalSettings, NetworkSettings, Tuning
from peer.pairing import PairingService
from peer.tunnel import Tunnel
from profiles import load_profile
from swarm import auth, x509
from swarm.config import Timings
from swarm.errors import TransportError, UsageError
from swarm.pairing import Paired
from swarm.protocol import Assignment, ClaimRequest, Invite, JobDone, NodeInfo, Wait, decode, encode

SECRET = "tls tests"
JOB = "tlsJob_0123-abc"


# -- certificates ------------------------------------------------------------------------------
def test_ed25519_matches_rfc8032() -> None:
    # RFC 8032 section 7.1, TEST 1 and TEST 2.
    sk = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    assert x509.ed25519_public(sk).hex() == (
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    assert x509.ed25519_sign(sk, b"").hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b")
    sk2 = bytes.fromhex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
    assert x509.ed25519_sign(sk2, b"\x72").hex() == (
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00")


@pytest.mark.parametrize("use_openssl", [False, True], ids=["python", "openssl"])
def test_a_certificate_is_made_once_and_kept_private(tmp_path: Path, use_openssl: bool
                                                     ) -> None:
    if use_openssl and not any(Path(d, "openssl").exists()
                               for d in os.environ.get("PATH", "").split(os.pathsep)):
        pytest.skip("no openssl command here")
    cert = tls.load_cert(tmp_path, "ab" * 16, use_openssl=use_openssl)
    assert (cert.path.stat().st_mode & 0o777) == 0o600
    assert cert.fingerprint == hashlib.sha256(cert.der).hexdigest()
    assert tls.load_cert(tmp_path, "ab" * 16).fingerprint == cert.fingerprint  # kept
    # The stdlib's OpenSSL takes it as a server's key and certificate.
    tls.server_context(cert)
    if use_openssl is False and Path("/usr/bin/openssl").exists():
        # And the openssl command finds the hand-made signature valid.
        out = subprocess.run(["/usr/bin/openssl", "verify", "-CAfile", str(cert.path),
                              str(cert.path)], capture_output=True, text=True, check=False)
        assert out.returncode == 0, out.stderr


def test_a_damaged_certificate_file_is_an_error_not_replaced(tmp_path: Path) -> None:
    cert = tls.load_cert(tmp_path, "cd" * 16, use_openssl=False)
    cert.path.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(UsageError, match="damaged"):
        tls.load_cert(tmp_path, "cd" * 16)
    assert "AAAA" in cert.path.read_text()


# -- a coordinator with TLS --------------------------------------------------------------------
@dataclass
class Coordinator:
    node: Node
    job: JobServer
    cert: tls.Cert
    source: Path

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.node.tls_port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.node.port}"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_source("no_audio", tmp_path_factory.mktemp("tls-src"))


@pytest.fixture
async def coordinator(source: Path, tmp_path: Path, nursery: trio.Nursery
                      ) -> AsyncIterator[Coordinator]:
    ffmpeg = await trio.to_thread.run_sync(find_ffmpeg, ["libx264"])
    info = await media.probe(ffmpeg, str(source))
    chunk_s = info.duration_s + 1.0  # one chunk: its source is the whole file
    profile = load_profile("hd")
    opts = EncodeOptions(JobIntent(str(source), str(tmp_path / "out.mp4"), profile,
                                   chunk_seconds=chunk_s),
                         LocalSettings(no_local=True),
                         NetworkSettings(enabled=True, discover=False, secret=SECRET),
                         Tuning(timings=Timings(lease_s=600.0)))
    plans = plan_chunks(info.video, info.format_start_s, chunk_s)
    vplan = video_plan(profile, *info.video.display_size, info.video.frames / info.duration_s,
                       opts.job.upscale)
    job = JobServer(job_id=JOB, opts=opts, ffmpeg=ffmpeg, info=info, plans=plans, vplan=vplan,
                    workdir=str(tmp_path), emit=lambda e: None, local_key="local")
    folder = tmp_path / "coordinator"
    cert = tls.load_cert(folder, load_identity(folder).device_id)
    node = Node(NodeConfig(name="tls", port=0, host="127.0.0.1", secret=SECRET,
                           advertise=False, serve_pyz=False, tls=tls.server_context(cert)),
                ffmpeg, coordinator=True)
    await nursery.start(node.run)
    node.jobs[JOB] = job
    assert node.port and node.tls_port and node.port != node.tls_port
    yield Coordinator(node, job, cert, source)


def pinned(fingerprint: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(verify=tls.pinned_context([fingerprint]), timeout=30)


async def claim(client: httpx.AsyncClient, base: str) -> Assignment:
    msg = await call(client, SECRET, "POST", f"/v1/jobs/{JOB}/claim",
                     ClaimRequest("ab" * 8, 0, False), (Assignment, Wait, JobDone), base=base)
    assert isinstance(msg, Assignment), msg
    return msg


def source_target(a: Assignment) -> str:
    return f"{a.source_path}?attempt={a.attempt}&token=" + auth.url_token(
        SECRET, a.source_path, a.attempt)


class Relay:
    """A TCP relay to ``port`` on loopback that keeps every byte it passes, both ways."""

    def __init__(self, port: int) -> None:
        self.to, self.port, self.seen = port, 0, bytearray()

    async def run(self, *, task_status: trio.TaskStatus[Relay] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._one, listeners)
            task_status.started(self)

    async def _one(self, down: trio.SocketStream) -> None:
        async with down, await trio.open_tcp_stream("127.0.0.1", self.to) as up:
            async def pump(a: trio.SocketStream, b: trio.SocketStream) -> None:
                try:
                    while data := await a.receive_some(65536):
                        self.seen += data
                        await b.send_all(data)
                    await b.send_eof()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            async with trio.open_nursery() as n:
                n.start_soon(pump, down, up)
                n.start_soon(pump, up, down)


def _windows(data: bytes, n: int = 64, size: int = 48) -> list[bytes]:
    """``n`` pieces of ``data`` from all over it, each unlikely to occur by chance."""
    rng = random.Random(7)
    return [data[o:o + size] for o in (rng.randrange(0, len(data) - size) for _ in range(n))]


async def _framemd5(url: str) -> list[str]:
    """The frames ffmpeg decodes from ``url``, as hashes with their timestamps."""
    out = await trio.run_process([FFMPEG, "-nostdin", "-v", "error", "-i", url, "-map", "0:v",
                                  "-f", "framemd5", "-"], capture_stdout=True,
                                 capture_stderr=True)
    lines = [ln for ln in out.stdout.decode().splitlines() if ln and not ln.startswith("#")]
    assert lines, out.stderr.decode()
    return lines


async def test_ffmpeg_reads_the_source_over_tls_frame_exact_and_encrypted(
        coordinator: Coordinator, nursery: trio.Nursery) -> None:
    relay = await nursery.start(Relay(coordinator.node.tls_port).run)
    with trio.fail_after(120):
        async with pinned(coordinator.cert.fingerprint) as client:
            a = await claim(client, coordinator.https)
            tunnel = await nursery.start(Tunnel(client, f"https://127.0.0.1:{relay.port}").run)
            over_tls = await _framemd5(tunnel.url(source_target(a)))
    local = await _framemd5(str(coordinator.source))
    assert over_tls == local  # every frame, at its timestamp
    data = coordinator.source.read_bytes()
    assert tunnel.forwarded >= len(data)  # the whole file went through the tunnel
    assert len(relay.seen) > len(data)
    assert not any(w in relay.seen for w in _windows(data))  # and none of it in clear

    # The same check sees the source in a plain-HTTP transfer through the same relay.
    plain = await nursery.start(Relay(coordinator.node.port).run)
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.get(f"http://127.0.0.1:{plain.port}{source_target(a)}")
    assert r.content == data
    assert all(w in plain.seen for w in _windows(data))


async def test_a_wrong_fingerprint_is_refused_before_any_request(coordinator: Coordinator
                                                                 ) -> None:
    with trio.fail_after(60):
        async with pinned(coordinator.cert.fingerprint) as client:
            a = await claim(client, coordinator.https)
        served, attempts = coordinator.job.source_read, len(coordinator.job.job.attempts)
        other = tls.load_cert(coordinator.cert.path.parent / "other", "ef" * 16,
                              use_openssl=False)
        async with pinned(other.fingerprint) as wrong:
            with pytest.raises(TransportError) as exc, transport_errors():
                await wrong.get(coordinator.https + source_target(a))
            with pytest.raises(TransportError):
                await claim(wrong, coordinator.https)
    assert "pinned" in str(exc.value)
    assert coordinator.job.source_read == served  # not one byte of the source was read
    assert len(coordinator.job.job.attempts) == attempts  # and the claim never arrived


async def test_the_tunnel_refuses_what_is_not_its_own_and_closes_cleanly(
        coordinator: Coordinator) -> None:
    with trio.fail_after(60):
        async with pinned(coordinator.cert.fingerprint) as client:
            a = await claim(client, coordinator.https)
            async with trio.open_nursery() as scope:
                tunnel = await scope.start(Tunnel(client, coordinator.https).run)
                base = f"http://127.0.0.1:{tunnel.port}"
                async with httpx.AsyncClient() as local:
                    r = await local.get(base + source_target(a))  # no token: not ours
                    assert r.status_code == 404
                    r = await local.post(tunnel.url(source_target(a)), content=b"x")
                    assert r.status_code == 405
                    r = await local.get(tunnel.url(source_target(a)),
                                        headers={"range": "bytes=10-19"})
                    assert r.status_code == 206
                    assert r.content == coordinator.source.read_bytes()[10:20]
                    # Garbage and a request cut short: that connection ends, the tunnel stays.
                    for junk in (b"\x16\x03\x01\x00\x05hello", b"GET /", os.urandom(3000)):
                        async with await trio.open_tcp_stream("127.0.0.1", tunnel.port) as s:
                            await s.send_all(junk)
                            await s.send_eof()
                            while await s.receive_some(4096):
                                pass
                    r = await local.head(tunnel.url(source_target(a)))
                    assert int(r.headers["content-length"]) == coordinator.source.stat().st_size
                assert _open_sockets(tunnel.port)  # the check sees its listener
                scope.cancel_scope.cancel()
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", tunnel.port)
    assert _open_sockets(tunnel.port) == []  # none left behind, listening or connected


def _open_sockets(port: int) -> list[str]:
    """Lines of /proc/net/tcp for sockets on ``port`` (either end) that someone still
    holds: a closed one lingers only in TIME_WAIT, which has no inode."""
    held = []
    with open("/proc/net/tcp", encoding="ascii") as fh:
        for line in fh.readlines()[1:]:
            f = line.split()
            ports = {int(f[1].split(":")[1], 16), int(f[2].split(":")[1], 16)}
            if port in ports and f[9] != "0":
                held.append(line.strip())
    return held


async def test_the_tls_listener_survives_junk_and_keeps_serving(
        coordinator: Coordinator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="hypercorn.error")
    rng = random.Random(15)
    hello = _client_hello()
    cases: list[bytes] = [b"", b"GET /v1/info HTTP/1.1\r\nhost: x\r\n\r\n", hello,
                          hello[:5], hello[:40], b"\x16\x03\x01\xff\xff" + os.urandom(200)]
    for _ in range(120):
        kind = rng.randrange(4)
        if kind == 0:
            cases.append(rng.randbytes(rng.randrange(1, 2000)))
        elif kind == 1:  # a handshake record with some of its bytes flipped
            b = bytearray(hello)
            for _ in range(rng.randrange(1, 8)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            cases.append(bytes(b))
        elif kind == 2:  # cut short
            cases.append(hello[:rng.randrange(1, len(hello))])
        else:  # a good hello, then garbage
            cases.append(hello + rng.randbytes(rng.randrange(1, 500)))
    with trio.fail_after(120):
        for data in cases:
            async with await trio.open_tcp_stream("127.0.0.1", coordinator.node.tls_port) as s:
                try:
                    await s.send_all(data)
                    await s.send_eof()
                    with trio.move_on_after(5) as slow:
                        while await s.receive_some(4096):
                            pass
                    assert not slow.cancelled_caught, data[:40]
                except trio.BrokenResourceError:
                    pass  # the server cut it: fine
        async with pinned(coordinator.cert.fingerprint) as client:
            r = await client.get(coordinator.https + "/v1/info")
            assert decode(r.content, NodeInfo).name == "tls"
        async with httpx.AsyncClient() as client:
            assert (await client.get(coordinator.http + "/v1/info")).status_code == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def _client_hello() -> bytes:
    """The first flight of a real TLS client, as bytes."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()



# -- a paired peer encodes for a TLS coordinator -----------------------------------------------
async def _tick(job: JobServer) -> None:
    while True:
        job.tick(trio.current_time())
        await trio.sleep(0.2)


async def test_a_paired_peer_encodes_over_tls_frame_exact(coordinator: Coordinator,
                                                          tmp_path: Path,
                                                          nursery: trio.Nursery) -> None:
    job = coordinator.job
    nursery.start_soon(_tick, job)
    # The two devices as pairing leaves them: each holds the other's key and certificate.
    coord_dir, peer_dir = coordinator.cert.path.parent, tmp_path / "peer"
    coord_id = load_identity(coord_dir).device_id
    key = os.urandom(32)
    peer_id = load_identity(peer_dir).device_id
    Devices(peer_dir).add(Paired(coord_id, "coord", key,
                                 tls.load_cert(coord_dir, coord_id).fingerprint))
    Devices(coord_dir).add(Paired(peer_id, "peer", key,
                                  tls.load_cert(peer_dir, peer_id).fingerprint))
    # A peer invited by a device signs its requests with that pairing: the coordinator
    # checks them with the key it pinned (as a closed coordinator's node does).
    coordinator.node.config.pairing = PairingService(coord_dir, load_identity(coord_dir),
                                                     door=False)
    stranger = load_identity(tmp_path / "stranger").device_id
    Devices(peer_dir).add(Paired(stranger, "old-pairing", key, ""))  # paired before certs
    assert tls.load_cert(coord_dir, coord_id) == coordinator.cert
    ffmpeg = await trio.to_thread.run_sync(find_ffmpeg, ["libx264"])
    peer = Node(NodeConfig(name="peer", port=0, host="127.0.0.1", secret=SECRET,
                           advertise=False, serve_pyz=False,
                           pairing=PairingService(peer_dir, load_identity(peer_dir))), ffmpeg)
    await nursery.start(peer.run)
    assert peer_id != coord_id

    def invite_from(device: str | None) -> tuple[bytes, dict[str, str]]:
        body = encode(Invite(JOB, coordinator.https, job.invite_fields(),
                             secrets.token_urlsafe(16), job.invite_ladder(),
                             coordinator_name="coord"))
        if device is None:
            return body, auth.sign(SECRET, "POST", "/v1/invite", time.time(),
                                   auth.body_digest(body))
        return body, auth.sign_device(key, device, "POST", "/v1/invite", time.time(),
                                      auth.body_digest(body))

    with trio.fail_after(180):
        async with httpx.AsyncClient(timeout=30) as client:
            url = f"http://127.0.0.1:{peer.port}/v1/invite"
            for who in (None, stranger):  # no device, or one whose certificate it lacks
                body, headers = invite_from(who)
                r = await client.post(url, content=body, headers=headers)
                assert r.status_code == 403 and "certificate" in r.text, r.text
            assert not peer.work
            body, headers = invite_from(coord_id)
            r = await client.post(url, content=body, headers=headers)
            assert r.status_code == 200, r.text
        await job.finished.wait()
    (rec,) = job.in_order()
    assert rec.peer != "local" and rec.file
    # Verified by the coordinator as every result is (frame count, timestamps); and here
    # again: the same number of frames as the source, decoding without an error.
    assert len(await _framemd5(rec.file)) == len(await _framemd5(str(coordinator.source)))
    assert job.source_read >= coordinator.source.stat().st_size  # all of it, over TLS
