"""Nodes over real HTTP on 127.0.0.1: invites, remote encoding, signatures, lost coordinators.

The multi-host versions (mDNS, namespaces, SIGKILL) are in test_swarm_netns.py.
"""

from __future__ import annotations

import time
from fractions import Fraction
from pathlib import Path

import httpx
import msgpack
import pytest
import trio

from chunker.tools import find_ffmpeg
from chunker.verify import check_output
from media import decode_errors, media_info
from peer.coordinator import run_encode
from peer.jobserver import JobServer
from peer.node import Node, NodeConfig
from peer.options import EncodeOptions, JobIntent, LocalSettings, NetworkSettings
from peer.worker import MAX_UNANSWERED, accept_invite
from profiles import load_profile
from swarm import auth
from swarm.config import DEFAULT_TIMINGS, Timings
from swarm.errors import ProfileError
from swarm.protocol import Invite, InviteReply, NodeInfo, decode, encode


async def _start_peer(nursery: trio.Nursery, name: str, secret: str | None = None,
                      timings: Timings = DEFAULT_TIMINGS) -> Node:
    node = Node(NodeConfig(name=name, port=0, host="127.0.0.1", secret=secret,
                           advertise=False, timings=timings), find_ffmpeg())
    await nursery.start(node.run)
    return node


async def test_info_answers_msgpack_and_json() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            node = await _start_peer(nursery, "infonode", secret="s3")
            async with httpx.AsyncClient() as client:
                r = await client.get(f"http://127.0.0.1:{node.port}/v1/info")
                info = decode(r.content, NodeInfo)
                assert info.name == "infonode" and info.state == "idle"
                assert "libx264" in info.encoders
                rj = await client.get(f"http://127.0.0.1:{node.port}/v1/info",
                                      headers={"accept": "application/json"})
                assert rj.headers["content-type"] == "application/json"
                assert rj.json()["node_id"] == info.node_id
            nursery.cancel_scope.cancel()


# rate_switch: the peers learn the source's time base from the invite; mpegts_wrap: they
# seek and trim an MPEG-TS whose clock wraps, over HTTP.
@pytest.mark.parametrize("name", ["open_gop", "rate_switch", "mpegts_wrap"])
async def test_remote_peers_encode_frame_exact(name: str, source: Path,
                                               tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            a = await _start_peer(nursery, "peer-a", secret="k")
            b = await _start_peer(nursery, "peer-b", secret="k")
            out = tmp_path / "out.mp4"
            opts = EncodeOptions(
                JobIntent(str(source), str(out), load_profile("hd"), chunk_seconds=0.5),
                LocalSettings(no_local=True),
                NetworkSettings(enabled=True, discover=False, name="coord", secret="k",
                                peers=(f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}")))
            report = await run_encode(opts)
            nursery.cancel_scope.cancel()
    assert {c["peer"] for c in report["chunks"]} == {"peer-a", "peer-b"}
    assert all(c["bytes_in"] > 0 for c in report["chunks"])
    check_output(media_info(out), media_info(source))  # every frame, every timestamp
    assert decode_errors(out) == ""
    assert sorted(p.name for p in await trio.Path(tmp_path).iterdir()) == ["out.mp4"]


async def test_a_peer_encodes_its_next_chunk_while_the_last_one_is_verified(
        corpus: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The coordinator answers a result once it has verified it (a full decode; for a spot
    check a re-render: 25 s on a busy coordinator, bench/slides). A one-slot peer goes on to
    its next chunk meanwhile, so the checks of its results overlap; it used to wait idle
    for each answer."""
    real = JobServer.accept
    checking: set[str] = set()
    overlaps: list[tuple[str, set[str]]] = []

    async def slow_accept(self: JobServer, attempt: str, path: str, bytes_in: int
                          ) -> tuple[bool, str]:
        if checking:
            overlaps.append((attempt, set(checking)))
        checking.add(attempt)
        try:
            await trio.sleep(1.5)  # a slow check: longer than the peer's encode of a chunk
            return await real(self, attempt, path, bytes_in)
        finally:
            checking.discard(attempt)

    monkeypatch.setattr(JobServer, "accept", slow_accept)
    source, out = corpus["closed_gop"], tmp_path / "out.mp4"
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            peer = await _start_peer(nursery, "peer-a")
            opts = EncodeOptions(
                JobIntent(str(source), str(out), load_profile("480p"), chunk_seconds=0.5),
                LocalSettings(no_local=True),
                NetworkSettings(enabled=True, discover=False, name="coord",
                                peers=(f"127.0.0.1:{peer.port}",)))
            report = await run_encode(opts)
            nursery.cancel_scope.cancel()
    assert len(report["chunks"]) >= 3 and {c["peer"] for c in report["chunks"]} == {"peer-a"}
    assert overlaps, "every result was checked alone: the peer waited for each answer"
    # ... but never further ahead of its verdicts than MAX_UNANSWERED results.
    assert all(len(before) <= MAX_UNANSWERED for _, before in overlaps), overlaps
    assert not any(a["reason"] for a in report["attempts"] if a["peer"] == "peer-a"), \
        report["attempts"]  # no attempt lost or duplicated meanwhile
    check_output(media_info(out), media_info(source))
    assert decode_errors(out) == ""


async def test_peer_with_another_secret_gets_no_work(corpus: dict[str, Path],
                                                     tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            good = await _start_peer(nursery, "good", secret="right")
            bad = await _start_peer(nursery, "bad", secret="wrong")
            opened = await _start_peer(nursery, "open", secret=None)
            opts = EncodeOptions(
                JobIntent(str(corpus["closed_gop"]), str(tmp_path / "o.mp4"),
                          load_profile("hd"), chunk_seconds=0.5),
                LocalSettings(no_local=True),
                NetworkSettings(enabled=True, discover=False, name="coord", secret="right",
                                peers=tuple(f"127.0.0.1:{n.port}" for n in (good, bad, opened))))
            report = await run_encode(opts)
            nursery.cancel_scope.cancel()
    assert {c["peer"] for c in report["chunks"]} == {"good"}


async def test_unsigned_and_stale_requests_are_refused() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            node = await _start_peer(nursery, "locked", secret="s")
            base = f"http://127.0.0.1:{node.port}"
            invite = encode(Invite("job12345", "http://127.0.0.1:9", {"name": "x"}, "nonce-123"))
            async with httpx.AsyncClient() as client:
                r = await client.post(f"{base}/v1/invite", content=invite)
                assert r.status_code == 401
                stale = auth.sign("s", "POST", "/v1/invite", time.time() - 120,
                                  auth.body_digest(invite))
                r = await client.post(f"{base}/v1/invite", content=invite, headers=stale)
                assert r.status_code == 401
                wrong = auth.sign("other", "POST", "/v1/invite", time.time(),
                                  auth.body_digest(invite))
                r = await client.post(f"{base}/v1/invite", content=invite, headers=wrong)
                assert r.status_code == 401
                # Signed, but the profile in it is not a valid profile: 422, node stays idle.
                ok = auth.sign("s", "POST", "/v1/invite", time.time(), auth.body_digest(invite))
                r = await client.post(f"{base}/v1/invite", content=invite, headers=ok)
                assert r.status_code == 422
                r = await client.post(f"{base}/v1/invite", content=msgpack.packb([1, 2]),
                                      headers=auth.sign("s", "POST", "/v1/invite", time.time(),
                                                        auth.body_digest(msgpack.packb([1, 2]))))
                assert r.status_code in (400, 422)
                info = decode((await client.get(f"{base}/v1/info")).content, NodeInfo)
                assert info.state == "idle"
            nursery.cancel_scope.cancel()


async def test_peer_drops_a_vanished_coordinator_within_seconds() -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            # The rule itself is tested in virtual time (test_liveness); here the node acts
            # on it, with a silence limit short enough not to wait real seconds.
            gone = Timings(coordinator_gone_s=0.5)
            node = await _start_peer(nursery, "orphan", timings=gone)
            base = f"http://127.0.0.1:{node.port}"
            # A coordinator that is not there: nothing listens on port 9 (discard) here.
            fields = load_profile("hd").to_wire() | {"out_width": 640, "out_height": 360,
                                                     "out_gop": 50}
            invite = Invite("gonejob1", "http://127.0.0.1:9", fields, "nonce-123")
            async with httpx.AsyncClient() as client:
                r = await client.post(f"{base}/v1/invite", content=encode(invite))
                assert r.status_code == 200 and decode(r.content, InviteReply).accepted
                t0 = trio.current_time()
                info = decode((await client.get(f"{base}/v1/info")).content, NodeInfo)
                assert info.state == "busy" and info.job_id == "gonejob1"
                while info.state != "idle":
                    await trio.sleep(0.2)
                    info = decode((await client.get(f"{base}/v1/info")).content, NodeInfo)
                assert trio.current_time() - t0 < gone.coordinator_gone_s + 3
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("path", ["/nope", "/v1/jobs/../../etc/passwd", "/v1/jobs/abcdefgh/claim",
                                  "/v1/info?" + "x=1&" * 20])
async def test_unknown_routes_get_4xx(path: str) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            node = await _start_peer(nursery, "routes")
            async with httpx.AsyncClient() as client:
                r = await client.get(f"http://127.0.0.1:{node.port}{path}")
                assert 400 <= r.status_code < 500
                r = await client.get(f"http://127.0.0.1:{node.port}/v1/info")
                assert r.status_code == 200
            nursery.cancel_scope.cancel()


def test_invite_carries_the_source_time_base() -> None:
    fields = load_profile("hd").to_wire() | {"out_width": 640, "out_height": 360,
                                             "out_gop": 50}
    terms = accept_invite(Invite("tbjob123", "http://127.0.0.1:9",
                                 fields | {"out_time_base": "1/90000"}, "nonce-123"))
    assert terms.plan.time_base == Fraction(1, 90000)
    plain = Invite("tbjob123", "http://127.0.0.1:9", fields, "nonce-123")
    assert accept_invite(plain).plan.time_base is None
    for bad in ("0/1", "1/0", "-1/25", "1/90000 ", "1/9999999999", 25):
        with pytest.raises(ProfileError, match="out_time_base"):
            accept_invite(Invite("tbjob123", "http://127.0.0.1:9",
                                 fields | {"out_time_base": bad}, "nonce-123"))
