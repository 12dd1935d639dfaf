"""Prefetch: a queued chunk's source copied ahead, encoded exactly as if read in place.

- The copy (``copy_source_argv``) and its encode (``copied=True``) give the very bytes the
  encode straight from the source gives, on every ffmpeg under test and on the hard cases:
  open GOP, VFR, MPEG-TS (and its 33-bit wrap), negative composition offsets.
- ``peer.prefetch.Prefetch`` holds at most its budget before the chunk starts, feeds the
  encoder the whole copy after, and leaves no process and no file once closed.
- The wire: reports name the queued attempt, and the answer says when it was stolen.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import httpx
import msgpack
import pytest
import trio
from coordinated import two_chunk_job

import ffmpegs
from chunker.commands import copy_source_argv, encode_chunk_argv, video_plan
from chunker.plan import plan_chunks
from chunker.tools import FFmpeg
from media import FFMPEG, make_source, media_info
from peer.prefetch import Prefetch, sweep_stale_dirs
from peer.proc import run_ffmpeg
from peer.worker import work_slot
from procs import ffmpeg_children
from profiles import load_profile
from swarm.config import Timings
from swarm.errors import RemoteProtocolError
from swarm.events import ChunkDone, ChunkFailed
from swarm.protocol import Assignment, Progress, ProgressAck, decode, encode

T = TypeVar("T")
# What one read of a child's stdout returns at most (trio's receive_some default).
PIPE_PIECE = 64 * 1024
HARD_CASES = ["open_gop", "vfr", "mpegts", "mpegts_wrap", "neg_cts"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("prefetch-src")
    return {name: make_source(name, folder) for name in HARD_CASES}


@pytest.fixture(params=ffmpegs.params())
def binary(request: pytest.FixtureRequest) -> FFmpeg:
    return ffmpegs.require(request.param)


@pytest.mark.parametrize("name", HARD_CASES)
def test_encoding_the_copy_gives_the_bytes_encoding_the_source_gives(
        name: str, sources: dict[str, Path], binary: FFmpeg) -> None:
    src = sources[name]
    if name.startswith("mpegts") and binary.short_version.startswith("7.0"):
        pytest.skip("ffmpeg 7.0 crashes on these MPEG-TS sources (tests/media.crashes_on)")
    info = media_info(src)
    v = info.video
    profile = load_profile("hd")
    vplan = video_plan(profile, *v.display_size, v.frames / info.duration_s, False,
                       v.time_base)
    plans = plan_chunks(v, info.format_start_s, 1.0, keyframe_seek=info.keyframe_seek)
    assert len(plans) >= 3
    for p in plans[1:]:  # chunk 0 has no seek: it is never copied ahead
        assert p.seek_s is not None
        # One thread: x264 with several is not deterministic from run to run.
        direct = subprocess.run(
            encode_chunk_argv(binary.path, profile, vplan, str(src), p.seek_s, p.trim_s,
                              p.frames, threads=1, progress=False),
            capture_output=True, check=True, timeout=120).stdout
        copy = subprocess.run(copy_source_argv(binary.path, str(src), p.seek_s),
                              capture_output=True, check=True, timeout=120).stdout
        via_copy = subprocess.run(
            encode_chunk_argv(binary.path, profile, vplan, "pipe:0", p.seek_s, p.trim_s,
                              p.frames, threads=1, progress=False, copied=True),
            input=copy, capture_output=True, check=True, timeout=120).stdout
        assert direct and via_copy == direct, (name, p.index, len(direct), len(via_copy))


def _assignment(seek_s: float, budget: int) -> Assignment:
    return Assignment(job_id="job-prefetch", chunk=3, attempt="c00003a001", lease_s=15.0,
                      start_s=seek_s, frames=25, source_path="/v1/jobs/job-prefetch/source",
                      seek_s=seek_s, trim_s=seek_s, prefetch_bytes=budget)


def _copiers(path: Path) -> list[int]:
    """ffmpeg processes copying ``path`` (the prefetch's child), by their command line."""
    out = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(path).encode() in argv and b"-output_ts_offset" in argv:
            out.append(int(proc.name))
    return out


def test_a_prefetch_holds_its_budget_then_feeds_the_encoder_all_of_it(
        sources: dict[str, Path], tmp_path: Path) -> None:
    src = sources["open_gop"]
    whole = subprocess.run(copy_source_argv(FFMPEG, str(src), 1.0),
                           capture_output=True, check=True, timeout=60).stdout
    budget = len(whole) // 4

    async def main() -> None:
        with trio.fail_after(60):
            fetch = Prefetch(_assignment(1.0, budget), FFMPEG, str(src), str(tmp_path))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fetch.run)
                # The copy stalls at its budget: the piece that would cross it waits.
                while fetch.written < budget - PIPE_PIECE:  # noqa: ASYNC110 (no event)
                    await trio.sleep(0.01)
                await trio.sleep(0.5)
                assert budget - PIPE_PIECE < fetch.written <= budget, (fetch.written, budget)
                assert not fetch.ended.is_set()
                assert Path(fetch.path).stat().st_size == fetch.written  # noqa: ASYNC240
                # Started: it runs on to the source's end, a bounded step ahead of the
                # encoder (here ffmpeg's stdin-reading counterpart: a copy to a file).
                got = tmp_path / "fed.nut"
                await run_ffmpeg([FFMPEG, "-v", "error", "-f", "nut", "-i", "pipe:0",
                                  "-map", "0", "-c", "copy", "-f", "nut", "-y", str(got)],
                                 stdin_feed=fetch.feed, what="reader")
                assert fetch.ended.is_set() and fetch.error is None
                assert fetch.fed == fetch.written == len(whole)
                assert Path(fetch.path).read_bytes() == whole  # noqa: ASYNC240
                assert media_info(got).video.frames > 0
                await fetch.close()
            assert not Path(fetch.path).exists()  # noqa: ASYNC240

    trio.run(main)


def test_closing_a_stalled_prefetch_kills_its_copy_and_removes_its_file(
        sources: dict[str, Path], tmp_path: Path) -> None:
    src = sources["open_gop"]

    async def main() -> None:
        with trio.fail_after(60):
            fetch = Prefetch(_assignment(1.0, 1000), FFMPEG, str(src), str(tmp_path))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fetch.run)
                while not fetch.written:  # noqa: ASYNC110 (a child's output: no event)
                    await trio.sleep(0.01)
                assert _copiers(src)  # stalled at its budget, alive
                await fetch.close()
                assert fetch.ended.is_set()
            assert not _copiers(src)
            assert not list(tmp_path.iterdir())  # noqa: ASYNC240

    trio.run(main)


def test_a_copy_held_at_its_budget_past_its_stall_limit_is_given_up(
        sources: dict[str, Path], tmp_path: Path) -> None:
    """Before the coordinator's kernel cuts a download held still (TCP_USER_TIMEOUT),
    which the copy would take for the source's end, the copy gives up: an error, no
    process; the slot then streams the chunk from the source."""
    src = sources["open_gop"]

    async def main() -> None:
        with trio.fail_after(60):
            fetch = Prefetch(_assignment(1.0, 1000), FFMPEG, str(src), str(tmp_path),
                             stall_s=0.5)
            t0 = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fetch.run)
                await fetch.ended.wait()
                held = trio.current_time() - t0
            assert fetch.error is not None and "held at its budget" in fetch.error
            assert fetch.written <= 1000 + PIPE_PIECE
            assert not _copiers(src)
            await fetch.close()
            assert not list(tmp_path.iterdir())  # noqa: ASYNC240
        assert 0.5 <= held < 10, held

    trio.run(main)


def test_reports_name_the_queued_attempt_and_hear_whether_it_is_still_wanted() -> None:
    p = Progress("job-prefetch", 2, "c00002a001", 10, 25.0, queued="c00003a001")
    assert decode(encode(p), Progress) == p
    old = Progress("job-prefetch", 2, "c00002a001", 10, 25.0)  # from a peer before this
    assert decode(encode(old), Progress).queued is None
    assert decode(encode(ProgressAck(True, False)), ProgressAck).queued_keep is False
    assert decode(encode(ProgressAck(True)), ProgressAck).queued_keep is True
    a = _assignment(2.0, 123456)
    assert decode(encode(a), Assignment).prefetch_bytes == 123456
    fields = msgpack.unpackb(encode(a))
    for bad in (0, -1, 1 << 40, "1000"):
        with pytest.raises(RemoteProtocolError, match="prefetch_bytes"):
            decode(msgpack.packb(fields | {"prefetch_bytes": bad}), Assignment)


def _children(word: str) -> list[int]:
    """This test process's ffmpeg children whose command line holds ``word``."""
    me = str(os.getpid())
    found = []
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        if stat[1] == me and word.encode() in argv:
            found.append(int(proc.name))
    return found


def test_a_stolen_prefetch_is_dropped_with_its_file_within_a_report(tmp_path: Path) -> None:
    """A real slot (peer.worker) against a real coordinator node on 127.0.0.1: while its
    first chunk encodes (held still with SIGSTOP), it prefetches the second; a much faster
    peer then steals that one. The next report hears so, and the copy and its file go."""
    # MKV: served uncapped, so the copy has a budget below its chunk (an indexed MP4's
    # copy fetches the whole chunk at once, and this one's was often over before a look).
    src = tmp_path / "src.mkv"
    subprocess.run([FFMPEG, "-nostdin", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=640x360:rate=25:duration=6", "-c:v", "libx264",
                    # Near-lossless: megabytes, so the copy stalls at its budget (what is
                    # left of a small one fits in the pipe, and that copy is over at once).
                    "-preset", "ultrafast", "-qp", "4", "-g", "25", str(src)],
                   check=True, timeout=60)

    async def main() -> None:
        job = await two_chunk_job(src, tmp_path, "job-prefetch-steal")
        server, node, ffmpeg = job.server, job.node, job.ffmpeg
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
                node.jobs[server.job_id] = server
                url = f"http://127.0.0.1:{node.port}"
                terms = job.terms(url)
                async with httpx.AsyncClient(base_url=url) as client:
                    nursery.start_soon(partial(work_slot, terms, node_id="ab12cd34ef56ab12",
                                               slot=0, secret=None, ffmpeg=ffmpeg,
                                               client=client))
                    encoder = await _until(lambda: _children("libx264"))
                    for pid in encoder:
                        os.kill(pid, signal.SIGSTOP)
                    pattern = (f"swarm-prefetch-{os.getpid()}-{server.job_id[:16]}-0-*"
                               "/prefetch_*.nut")
                    files = await _until(lambda: [
                        f for f in Path(tempfile.gettempdir()).glob(pattern) if _size(f)])
                    assert _children("-output_ts_offset")  # the copy runs
                    # A peer a hundred times faster, idle, takes the unstarted chunk.
                    now = trio.current_time()
                    server.job.add_peer("fast", 1e9, now)
                    steal = server.claim_remote("fast", now)
                    assert isinstance(steal, Assignment) and steal.chunk == 1
                    stolen = trio.current_time()
                    await _until(lambda: not files[0].exists() and not _children(
                        "-output_ts_offset"))
                    # Within one report period (1 s) and its round trip.
                    assert trio.current_time() - stolen < 2.5
                    for pid in encoder:
                        os.kill(pid, signal.SIGCONT)
                nursery.cancel_scope.cancel()
        assert not ffmpeg_children()
        # The slot's directory went with it.
        tmp = Path(tempfile.gettempdir())
        left = list(tmp.glob(f"swarm-prefetch-*-{server.job_id[:16]}-*"))  # noqa: ASYNC240
        assert not left, left

    trio.run(main)


@pytest.mark.parametrize("container", ["mp4", "mkv"])
def test_a_prefetched_chunk_outlasting_the_coordinators_tcp_timeout_is_encoded_whole(
        tmp_path: Path, container: str) -> None:
    """A real slot against a real coordinator node on 127.0.0.1 whose TCP_USER_TIMEOUT
    (``peer_gone_s``, two leases) is shorter than the slot's first chunk (its encoder held
    still with SIGSTOP) while the second is prefetched. An MP4 source is served capped to
    each chunk, and its copy fetches all of it at once; an MKV one is not, and its copy,
    held at its budget, gives up after a lease. Either way the second chunk comes out
    whole, with no failed attempt (bench/lan: the kernel cut the held copies, which ended
    there as if at the source's end, and their chunks came back short)."""
    src = tmp_path / f"src.{container}"
    subprocess.run([FFMPEG, "-nostdin", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=640x360:rate=25:duration=6,noise=alls=30:allf=t",
                    # Grain near-lossless: megabytes a chunk, so that what a copy leaves
                    # past its budget is far more than the sockets' buffers hold.
                    "-c:v", "libx264", "-preset", "ultrafast", "-qp", "8", "-g", "25",
                    str(src)], check=True, timeout=60)
    assert src.stat().st_size > 8_000_000
    lease_s = 1.5
    events: list[object] = []

    async def main() -> None:
        job = await two_chunk_job(src, tmp_path, f"job-prefetch-{container}",
                                  emit=events.append,
                                  timings=Timings(lease_s=lease_s, silent_s=60.0),
                                  peer_gone_s=2 * lease_s)
        server, node, ffmpeg = job.server, job.node, job.ffmpeg
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
                node.jobs[server.job_id] = server
                url = f"http://127.0.0.1:{node.port}"
                terms = job.terms(url)
                async with httpx.AsyncClient(base_url=url) as client:
                    slot_done = trio.Event()

                    async def slot() -> None:
                        await work_slot(terms, node_id="ab12cd34ef56ab12", slot=0,
                                        secret=None, ffmpeg=ffmpeg, client=client)
                        slot_done.set()

                    nursery.start_soon(slot)
                    encoder = await _until(lambda: _children("libx264"))
                    for pid in encoder:
                        os.kill(pid, signal.SIGSTOP)
                    await _until(lambda: server.job.chunks[1].attempts)  # claimed ahead
                    # Held past the coordinator's TCP timeout (and past the copy's lease).
                    await trio.sleep(3 * lease_s)
                    for pid in encoder:
                        os.kill(pid, signal.SIGCONT)
                    await slot_done.wait()
                nursery.cancel_scope.cancel()
        failed = [e for e in events if isinstance(e, ChunkFailed)]
        assert not failed, failed
        done = sorted(e.chunk for e in events if isinstance(e, ChunkDone))
        assert done == [0, 1], events
        [first] = server.job.chunks[1].attempts
        assert server.job.attempts[first].peer == "ab12cd34ef56ab12"  # the prefetch, kept
        served = server.attempt_records[first].served
        if container == "mp4":  # copied whole ahead, never given up and sent again
            assert served < 1.2 * src.stat().st_size / 2, (served, src.stat().st_size)

    trio.run(main)
    assert not ffmpeg_children()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


async def _until(check: Callable[[], T]) -> T:
    """Poll what a child process does (it has no event to wait on) until it is true."""
    while not (value := check()):  # noqa: ASYNC110
        await trio.sleep(0.02)
    return value


def test_the_directories_of_a_killed_node_are_swept_by_the_next(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: its pid names no process now
    dead = tmp_path / f"swarm-prefetch-{gone.pid}-job-0-abc"
    mine = tmp_path / f"swarm-prefetch-{os.getpid()}-job-0-def"
    other = tmp_path / "swarm-lan-xyz"
    for d in (dead, mine, other):
        d.mkdir()
        (d / "prefetch_c00001a001.nut").write_bytes(b"x")
    sweep_stale_dirs(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, other.name])
