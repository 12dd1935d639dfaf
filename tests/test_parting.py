"""A ladder chunk's renditions parted across encoders at the tail (swarm.scheduler, item 5).

One chunk and two peers: the first to claim takes the top rung, the other the two others,
each decoding the source itself; the coordinator verifies both parts, joins them
into one chunk file and publishes it. The output must be what the same job writes with the
chunk kept whole: the same packets in every rendition, frame-exact, through the files and
the HLS playlists. Real ffmpeg, real peer nodes over HTTP.
"""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from chunker.commands import VideoPlan, encode_chunk_argv, join_parts_argv, packet_listing_argv
from chunker.tools import find_ffmpeg
from media import FFMPEG, decode_errors, media_info
from peer.coordinator import run_encode
from peer.jobserver import joined_unchanged
from peer.node import Node, NodeConfig
from peer.options import EncodeOptions, JobIntent, LocalSettings, NetworkSettings, Tuning
from peer.worker import JobTerms, work_slot
from profiles import Rung, load_profile
from swarm.events import ChunkDone, ChunkParted, ChunkStart, JobEvent
from swarm.protocol import (
    Assignment,
    AttemptFailed,
    JobDone,
    Message,
    ProgressAck,
    ResultAck,
    decode,
    encode,
)

HEIGHTS = (360, 240, 144)
SECONDS = 10  # one chunk of 250 frames: long enough to be worth parting


def _make_source(path: Path) -> None:
    subprocess.run([FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size=640x360:rate=25:duration={SECONDS}", "-f", "lavfi", "-i",
                    f"sine=frequency=440:duration={SECONDS}", "-c:v", "libx264", "-preset",
                    "ultrafast", "-bf", "2", "-g", "25", "-c:a", "aac", "-shortest", str(path)],
                   check=True, timeout=120)


def _packets(path: Path) -> list[str]:
    """Every video packet of ``path`` (dts, pts, duration, size, checksum), copied."""
    res = subprocess.run([FFMPEG, "-nostdin", "-v", "error", "-copyts", "-i", str(path),
                          "-map", "0:v:0", "-c", "copy", "-f", "framecrc", "-"],
                         capture_output=True, text=True, timeout=120, check=True)
    return [line for line in res.stdout.splitlines() if line and not line.startswith("#")]


def _intent(src: Path, out: Path, hls: Path) -> JobIntent:
    # One chunk of the whole clip, the user's length: it cannot be cut in time.
    return JobIntent(str(src), f"{out}/", load_profile("hd-crf"), chunk_seconds=SECONDS,
                     hls=str(hls), segment_s=2.0, ladder=HEIGHTS)


async def _job(src: Path, folder: Path, parting: bool) -> tuple[dict[str, Any],
                                                              list[JobEvent]]:
    """The job on two peer nodes of one slot each (parting is across devices only)."""
    events: list[JobEvent] = []
    with trio.fail_after(240):
        async with trio.open_nursery() as nursery:
            nodes = [Node(NodeConfig(name=f"peer-{n}", port=0, host="127.0.0.1", secret="k",
                                     advertise=False), find_ffmpeg()) for n in "ab"]
            for node in nodes:
                await nursery.start(node.run)
            opts = EncodeOptions(
                _intent(src, folder / "out", folder / "hls"), LocalSettings(no_local=True),
                NetworkSettings(enabled=True, discover=False, name="coord", secret="k",
                                peers=tuple(f"127.0.0.1:{n.port}" for n in nodes)),
                Tuning(part_renditions=parting))
            report = await run_encode(opts, events.append)
            nursery.cancel_scope.cancel()
    return report, events


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("parting")
    src = tmp / "clip.mp4"
    _make_source(src)
    for name in ("parted", "whole"):
        (tmp / name).mkdir()
    runs = {name: trio.run(_job, src, tmp / name, name == "parted")
            for name in ("parted", "whole")}
    return {"src": src, "tmp": tmp, "runs": runs}


def test_the_tail_chunk_is_parted_only_when_allowed(jobs: dict[str, Any]) -> None:
    report, events = jobs["runs"]["parted"]
    parted = [e for e in events if isinstance(e, ChunkParted)]
    assert [(e.chunk, e.renditions, e.rest, e.rest_renditions) for e in parted] == [
        (0, ("360p",), 1, ("240p", "144p"))]
    # Over the wire (Assignment.rungs), each part to its own device (the tail may then
    # copy the later part to the device that is done with its own, as for any chunk).
    starts: dict[int, str] = {}
    for e in events:
        if isinstance(e, ChunkStart):
            starts.setdefault(e.chunk, e.peer)
    assert sorted(starts) == [0, 1] and starts[0] != starts[1]
    done = [e for e in events if isinstance(e, ChunkDone)]
    assert sorted(e.chunk for e in done) == [0, 1]
    assert done[-1].frames_done == media_info(jobs["src"]).video.frames
    assert not any(isinstance(e, ChunkParted) for e in jobs["runs"]["whole"][1])
    # The report lists the source's one chunk, not its parts, encoded by both peers.
    by = {e.chunk: e.peer for e in done}
    assert [c["peer"] for c in report["chunks"]] == [" + ".join(dict.fromkeys([by[0], by[1]]))]
    # Its peers are credited each with its part (by the share of the work), not as one.
    credited = {p["name"]: p["frames"] for p in report["peers"]}
    assert set(credited) == set(by.values())
    if by[0] != by[1]:  # the 360p part is the larger
        assert credited[by[0]] > credited[by[1]] > 0
        assert sum(credited.values()) in range(report["chunks"][0]["frames"] - 1,
                                               report["chunks"][0]["frames"] + 2)
    assert len(jobs["runs"]["whole"][0]["chunks"]) == 1


def test_a_parted_chunk_makes_the_same_output_as_a_whole_one(jobs: dict[str, Any]) -> None:
    tmp, src = jobs["tmp"], media_info(jobs["src"])
    for h in HEIGHTS:
        parted, whole = (tmp / name / "out" / f"clip.{h}p.mp4" for name in ("parted", "whole"))
        assert decode_errors(parted) == ""
        info = media_info(parted)
        assert info.video.frames == src.video.frames and info.audios
        assert min(info.video.width, info.video.height) == h
        # x264 with the same settings and threads is deterministic: the same packets.
        assert _packets(parted) == _packets(whole)
    for name in ("parted", "whole"):
        hls = tmp / name / "hls"
        for playlist in sorted(hls.glob("video*.m3u8")):
            assert playlist.read_text().endswith("#EXT-X-ENDLIST\n")
            assert len(_packets(playlist)) == src.video.frames
        assert len(list(hls.glob("video*.m3u8"))) == len(HEIGHTS)
    # Nothing of the parts is left behind.
    assert not list(tmp.glob("**/part_*.nut"))


def test_a_part_plan_keeps_each_rung_as_the_ladder_has_it() -> None:
    rungs = (Rung(360, 640, crf=23), Rung(240, 426, crf=24), Rung(144, 256, crf=26))
    plan = VideoPlan(640, 360, 25, None, rungs)
    assert plan.part(()) is plan and plan.part((0, 1, 2)) is plan
    part = plan.part((1, 2))
    assert (part.width, part.height, part.rungs) == (426, 240, rungs[1:])
    assert part.gop_frames == 25 and part.renditions == 2
    for bad in ((3,), (2, 1), (1, 1)):
        with pytest.raises(ValueError):
            plan.part(bad)
    with pytest.raises(ValueError):
        replace(plan, rungs=()).part((0,))


def test_a_join_that_changed_a_packet_is_caught(tmp_path: Path) -> None:
    """The coordinator's check of a join (``joined_unchanged``) on real files: the parts
    joined pass; a joined file holding another encode of a rung, or missing one, fails."""
    ff = find_ffmpeg()
    src = tmp_path / "clip.mp4"
    _make_source(src)
    rungs = (Rung(360, 640, crf=23), Rung(240, 426, crf=24), Rung(144, 256, crf=26))
    plan = VideoPlan(640, 360, 25, None, rungs)
    profile = load_profile("hd-crf")

    def encode(part: VideoPlan, name: str) -> str:
        path = str(tmp_path / name)
        argv = encode_chunk_argv(ff.path, profile, part, str(src), None, None, 50,
                                 progress=False, threads=1)
        with open(path, "wb") as fh:
            subprocess.run(argv, stdout=fh, check=True, timeout=120)
        return path

    a, b = encode(plan.part((0,)), "a.nut"), encode(plan.part((1, 2)), "b.nut")
    other = encode(replace(plan, rungs=(replace(rungs[0], crf=30), *rungs[1:])).part((0,)),
                   "other.nut")

    def listing(parts: list[tuple[str, int]], joined: list[tuple[str, int]]) -> bytes:
        out = str(tmp_path / "joined.nut")
        subprocess.run(join_parts_argv(ff.path, joined, out), check=True, timeout=120)
        return subprocess.run(packet_listing_argv(ff.path, [p for p, _ in parts] + [out]),
                              capture_output=True, check=True, timeout=120).stdout

    assert joined_unchanged(listing([(a, 1), (b, 2)], [(a, 1), (b, 2)]), 3)
    assert not joined_unchanged(listing([(a, 1), (b, 2)], [(other, 1), (b, 2)]), 3)
    assert not joined_unchanged(listing([(a, 1), (b, 2)], [(b, 2)]), 3)


def test_a_peer_refuses_rungs_its_invite_did_not_give() -> None:
    """Rungs come as indices into the invite's own ladder; any other is refused as a
    failed attempt (told to the coordinator), with no encoder started, and the slot goes
    on. The coordinator here is a stand-in on the wire, since what it says is the input."""
    failed: list[str] = []
    claims: list[float] = []

    async def coordinator(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/claim"):
            claims.append(trio.current_time())
            msg: Message = JobDone("bad-rungs1") if failed else Assignment(
                job_id="bad-rungs1", chunk=0, attempt="c00000a001", lease_s=30.0,
                start_s=0.0, frames=25, source_path="/v1/jobs/bad-rungs1/source",
                rungs=(1,))
            return httpx.Response(200, content=encode(msg))
        if path.endswith("/failed"):
            failed.append(decode(await request.aread(), AttemptFailed).reason)
            return httpx.Response(200, content=encode(ResultAck(True, "")))
        await request.aread()  # the upload (none comes) and progress reports
        return httpx.Response(200, content=encode(ProgressAck(True, True)))

    async def main() -> None:
        # No ladder: a single rendition, so rung 1 names nothing.
        terms = JobTerms("bad-rungs1", "http://coordinator", load_profile("hd"),
                         VideoPlan(640, 360, 50))
        async with httpx.AsyncClient(transport=httpx.MockTransport(coordinator),
                                     base_url="http://coordinator") as client:
            with trio.fail_after(30):
                await work_slot(terms, node_id="ab12cd34ef56ab12", slot=0, secret=None,
                                ffmpeg=find_ffmpeg(), client=client)

    trio.run(main)
    # Each one it was given (a prefetch may have come before the first was told) failed
    # so: ffmpeg never ran, or its reason would be its own (nothing serves the source).
    assert failed and set(failed) == {"rungs [1] are not rungs of the invite's ladder"}
    assert len(claims) >= 2  # it claimed again and heard the job was done
