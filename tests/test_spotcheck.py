"""Content spot checks: a peer that returns other pictures is caught, benched, replaced.

The decisions (which results, which frames, the verdict) are pure; the comparison is real
ffmpeg on lavfi sources; the peers that alter frames are real nodes over real HTTP whose
encoders swap frames, draw a box or encode another film, injected in this test process only
(the worker's argv builder is wrapped here), never by anything the network can send.
"""

from __future__ import annotations

import math
import random
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio

import ffmpegs
import peer.worker
from chunker.commands import encode_chunk_argv, verify_chunk_argv, video_plan
from chunker.plan import plan_chunks, plans_from_cuts
from chunker.probe import probe
from chunker.spotcheck import (
    GRID,
    neighbours,
    parse_compared,
    reduced_size,
    sampled_verify_argv,
    spot_check_argv,
)
from chunker.tools import FFmpeg, find_ffmpeg
from chunker.verify import check_chunk_listing, check_output
from media import decode_errors, media_info
from peer.coordinator import run_encode
from peer.node import Node, NodeConfig
from peer.options import EncodeOptions, JobIntent, LocalSettings, NetworkSettings
from profiles import load_profile
from swarm.events import ChunkFailed, JobEvent, PeerBenched
from swarm.spotcheck import (
    ABSOLUTE_DB,
    CHANGE_MARGIN_DB,
    FAIR_DB,
    FIRST_CHECKED,
    LEAD_MARGIN_DB,
    ONE_IN,
    SAMPLES,
    check_result,
    judge,
    sample_frames,
    share_checked,
    verdict,
)

# -- decisions (pure) -----------------------------------------------------------------------

def test_samples_are_distinct_ascending_and_inside_the_chunk() -> None:
    rng = random.Random(7)
    for frames in (1, 2, 3, 50, 10_000):
        s = sample_frames(frames, rng)
        assert s == sorted(set(s)) and len(s) == min(SAMPLES, frames)
        assert 0 <= s[0] and s[-1] < frames
    with pytest.raises(ValueError):
        sample_frames(0, rng)


def test_a_peers_first_results_are_all_checked_then_one_in_four() -> None:
    rng = random.Random(11)
    assert all(check_result(n, rng) for n in range(FIRST_CHECKED))
    later = [check_result(FIRST_CHECKED + n, rng) for n in range(4000)]
    assert abs(sum(later) / len(later) - 1 / ONE_IN) < 0.03
    # The expected share: all of a short job's results, towards 1 in 4 of a long one's.
    assert share_checked(0) == 0.0 and share_checked(FIRST_CHECKED) == 1.0
    assert share_checked(100) == pytest.approx((FIRST_CHECKED + 97 / ONE_IN) / 100)


def test_a_tile_passes_close_to_its_frame_or_as_close_as_the_source_moves() -> None:
    n = GRID * GRID
    assert judge([ABSOLUTE_DB] * n, [[ABSOLUTE_DB + 5] * n], [[99.0] * n]) is None  # close
    assert judge([math.inf] * n, [], []) is None  # identical tiles, no neighbour
    # Fairly close, however little the source moves, if not nearer a neighbour.
    fair = [FAIR_DB] * n
    assert judge(fair, [[FAIR_DB + LEAD_MARGIN_DB] * n], [[99.0] * n]) is None
    why = judge(fair, [[FAIR_DB + LEAD_MARGIN_DB + 0.1] * n], [[99.0] * n])
    assert why is not None and "tile 0 " in why and "another frame" in why
    # Grain: further from its own frame than that frame is from the next by less than the
    # margin, and not nearer a neighbour by the margin: a correct encode.
    far = FAIR_DB - 5
    noisy = [far] * n
    near = [[far + LEAD_MARGIN_DB] * n] * 2
    moves = [[far + CHANGE_MARGIN_DB] * n] * 2
    assert judge(noisy, near, moves) is None
    # Further from its frame than the source moves (a box, another film), in one tile; the
    # source's larger change counts (one neighbour may be a repeat of the frame).
    why = judge(noisy, near, [[*moves[0][:-1], far + CHANGE_MARGIN_DB + 0.1], moves[1]])
    assert why is None
    why = judge(noisy, near, [[*moves[0][:-1], far + CHANGE_MARGIN_DB + 0.1]] * 2)
    assert why is not None and f"tile {n - 1} " in why and "moves" in why
    # Nearer a neighbour than its own frame by more than the margin: a frame one step off.
    why = judge(noisy, [near[0], [far + LEAD_MARGIN_DB + 0.1] * n], moves)
    assert why is not None and "tile 0 " in why and "another frame" in why
    assert judge(noisy, [], []) is not None  # far, and nothing to judge it by
    assert judge([math.nan] * n, near, moves) is not None  # NaN never passes
    assert judge([], [], []) is not None and judge(noisy, [noisy[:-1]], moves) is not None


def test_the_verdict_names_the_first_wrong_frame() -> None:
    n = GRID * GRID
    good = ([ABSOLUTE_DB + 10.0] * n, [[0.0] * n], [[0.0] * n])
    bad = ([ABSOLUTE_DB - 10.0] * n, [[0.0] * n], [[ABSOLUTE_DB + 10.0] * n])
    assert verdict([3, 9], [good, good]) is None
    why = verdict([3, 9], [good, bad])
    assert why is not None and "frame 9 differs" in why
    assert verdict([3, 9], [good]) is not None  # a sample not compared is no pass
    assert verdict([], []) is not None


def test_psnr_statistics_are_read_per_comparison_and_tile() -> None:
    # Samples 0 and 5 of a chunk at source frame 0, of a 6-frame source: frame 0 has only
    # a neighbour after it, frame 5 only one before it.
    assert neighbours(0, 6) == [0, 1] and neighbours(5, 6) == [4, 5]
    assert neighbours(3, 6) == [2, 3, 4] and neighbours(0, 1) == [0]
    # The chunk frames against [0, 1] and [4, 5], then source frame 0 against 1, 5 against 4.
    mses = [0.0, 65.025, 6.5025, 0.65025, 650.25, 6502.5]
    lines = "\n".join(f"n:{i + 1} mse_avg:{mse} mse_y:1 psnr_avg:x"
                      for i, mse in enumerate(mses))
    first, second = parse_compared(lines, 0, [0, 5], 6, grid=1)
    assert first.own == [math.inf] and first.others == [[pytest.approx(30.0)]]
    assert first.changes == [[pytest.approx(20.0)]]
    assert second.own == [pytest.approx(50.0)] and second.others == [[pytest.approx(40.0)]]
    assert second.changes == [[pytest.approx(10.0)]]
    with pytest.raises(ValueError, match="expected 8"):  # a comparison missing: no pass
        parse_compared(lines, 0, [0, 3], 6, grid=1)
    with pytest.raises(ValueError, match="unreadable"):
        parse_compared("n:1 mse_avg:nan", 0, [0], 1, grid=1)


# -- the comparison, with real ffmpeg -------------------------------------------------------

# What a peer should encode, and the same with grain so strong (as tests/test_source_bytes
# encodes) that a correct low-bitrate encode keeps little of its pixels.
CLIPS = {"clip": "testsrc2=size=640x360:rate=25:duration=4",
         "noisy": "testsrc2=size=640x360:rate=25:duration=4,noise=alls=100:allf=t"}


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("spot")
    out = {}
    for name, graph in CLIPS.items():
        out[name] = folder / f"{name}.mp4"
        subprocess.run([find_ffmpeg().path, "-v", "error", "-f", "lavfi", "-i", graph,
                        "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-crf", "18",
                        "-pix_fmt", "yuv420p", "-y", str(out[name])], check=True)
    return out


@pytest.fixture(scope="module")
def clip(clips: dict[str, Path]) -> Path:
    return clips["clip"]


# How a lying peer alters its encode (the encode's argv, as built for it): each frame
# swapped with its neighbour (frame count and timestamps kept; a clone fills an odd end,
# the encode's -frames:v cuts an even one), a box over 1/64 of the frame straddling the
# tile grid's corner, or another film laid over the whole picture.
BOX = "drawbox=x=iw*3/16:y=ih*3/16:w=iw/8:h=ih/8:color=red:t=fill"
SHIFT = "shuffleframes=1 0,tpad=stop=1:stop_mode=clone"
OTHER = "[x];testsrc=size=1280x720:rate=25[m];[x][m]overlay=shortest=1"


def _altered(argv: list[str], how: str) -> list[str]:
    i = argv.index("-filter_complex") + 1
    extra = {"box": f",{BOX}", "shift": f",{SHIFT}", "other": OTHER}[how]
    return [*argv[:i], argv[i].replace("setsar=1", f"setsar=1{extra}"), *argv[i + 1:]]


def _chunk(src: Path, out: Path, first: int, frames: int, how: str = "") -> Any:
    ff = find_ffmpeg()
    info = probe(ff, str(src))
    prof = load_profile("480p")
    plan = video_plan(prof, 640, 360, 25.0, False, info.video.time_base)
    cut = plans_from_cuts(info.video, info.format_start_s, [0, first])[1]
    argv = encode_chunk_argv(ff.path, prof, plan, str(src), cut.seek_s, cut.trim_s, frames,
                             progress=False)
    if how:
        argv = _altered(argv, how)
    with open(out, "wb") as fh:
        subprocess.run(argv, check=True, stdout=fh)
    return ff, info, plan


def _verdict(ff: Any, chunk: Path, info: Any, plan: Any, first: int, ks: list[int]
             ) -> str | None:
    """The check of chunk frames ``ks`` against source frames ``first + k`` and around."""
    picked = chunk.with_suffix(".samples")
    subprocess.run(sampled_verify_argv(ff, str(chunk), plan, ks, str(picked)), check=True,
                   capture_output=True)
    out = subprocess.run(spot_check_argv(ff, str(picked), info, plan, first, ks),
                         check=True, capture_output=True, text=True).stdout
    compared = parse_compared(out, first, ks, info.video.frames)
    return verdict(ks, [(c.own, c.others, c.changes) for c in compared])


def test_a_correct_chunk_passes_and_wrong_frames_fail(clips: dict[str, Path],
                                                      tmp_path: Path) -> None:
    chunk = tmp_path / "c.nut"
    ff, info, plan = _chunk(clips["clip"], chunk, 30, 40)
    ks = [0, 7, 21, 39]
    assert _verdict(ff, chunk, info, plan, 30, ks) is None
    # The same frames held against their neighbours, or another chunk's: caught.
    assert _verdict(ff, chunk, info, plan, 31, ks) is not None
    assert _verdict(ff, chunk, info, plan, 29, ks) is not None
    assert _verdict(ff, chunk, info, plan, 0, ks) is not None
    for how in ("box", "shift", "other"):
        wrong = tmp_path / f"{how}.nut"
        _chunk(clips["clip"], wrong, 30, 40, how)
        for k in ks:  # each frame on its own
            assert _verdict(ff, wrong, info, plan, 30, [k]) is not None, (how, k)


def test_a_correct_chunk_of_strong_noise_passes(clips: dict[str, Path],
                                                tmp_path: Path) -> None:
    """The false alarm an absolute threshold gave: a correct 480p encode of such grain
    scores 13-14 dB at full size. Altered, it is still caught."""
    chunk = tmp_path / "c.nut"
    ff, info, plan = _chunk(clips["noisy"], chunk, 30, 40)
    ks = list(range(0, 40, 3))
    assert _verdict(ff, chunk, info, plan, 30, ks) is None
    for how in ("box", "shift", "other"):
        wrong = tmp_path / f"{how}.nut"
        _chunk(clips["noisy"], wrong, 30, 40, how)
        assert _verdict(ff, wrong, info, plan, 30, ks) is not None, how


@pytest.fixture(params=ffmpegs.params())
def binary(request: pytest.FixtureRequest) -> FFmpeg:
    return ffmpegs.require(request.param)


@pytest.mark.parametrize("name", ["open_gop", "vfr", "mpegts_wrap", "neg_cts"])
def test_the_checks_decode_lists_the_frames_as_the_verification_does(
        name: str, corpus: dict[str, Path], binary: FFmpeg, tmp_path: Path) -> None:
    """A checked result's sampled frames come out of its verification's decode
    (``sampled_verify_argv``): that decode must list the frames exactly as
    ``verify_chunk_argv`` does (all but the checksum, which wrapped_avframe takes of a
    pointer) with a stderr as clean, and its pictures must pass the check, whichever ffmpeg
    the coordinator runs."""
    src = corpus[name]
    if name.startswith("mpegts") and binary.short_version.startswith("7.0"):
        pytest.skip("ffmpeg 7.0 crashes on these MPEG-TS sources (tests/media.crashes_on)")
    info = probe(binary, str(src))
    v = info.video
    plan = video_plan(load_profile("480p"), *v.display_size, v.frames / info.duration_s,
                      False, v.time_base)
    cut = plan_chunks(v, info.format_start_s, 1.0, keyframe_seek=info.keyframe_seek)[1]
    chunk = tmp_path / "c.nut"
    with open(chunk, "wb") as fh:
        subprocess.run(encode_chunk_argv(binary.path, load_profile("480p"), plan, str(src),
                                         cut.seek_s, cut.trim_s, cut.frames, progress=False),
                       check=True, stdout=fh)
    alone = subprocess.run(verify_chunk_argv(binary, str(chunk)), check=True,
                           capture_output=True, text=True)
    ks = [0, cut.frames // 2, cut.frames - 1]
    picked = tmp_path / "picked.yuv"
    both = subprocess.run(sampled_verify_argv(binary, str(chunk), plan, ks, str(picked)),
                          check=True, capture_output=True, text=True)

    def frames(text: str) -> list[str]:
        return [line.rsplit(",", 1)[0] for line in text.splitlines()
                if not line.startswith("#")]

    assert len(frames(alone.stdout)) == cut.frames
    assert frames(both.stdout) == frames(alone.stdout)
    assert both.stderr == alone.stderr == ""
    assert (check_chunk_listing(both.stdout, both.stderr, info, cut.first, cut.frames)
            == check_chunk_listing(alone.stdout, alone.stderr, info, cut.first, cut.frames))
    rw, rh = reduced_size(plan)
    assert picked.stat().st_size == len(ks) * rw * rh * 3 // 2  # the sampled frames, whole
    for first, ok in ((cut.first, True), (cut.first + 1, False)):  # and held one frame off
        out = subprocess.run(spot_check_argv(binary, str(picked), info, plan, first, ks),
                             check=True, capture_output=True, text=True).stdout
        compared = parse_compared(out, first, ks, v.frames)
        assert (verdict(ks, [(c.own, c.others, c.changes) for c in compared]) is None) == ok


# -- peers that alter frames, over real HTTP ------------------------------------------------

async def test_peers_returning_altered_frames_are_benched_and_their_chunks_redone(
        monkeypatch: pytest.MonkeyPatch, clips: dict[str, Path], tmp_path: Path) -> None:
    # Each liar's encoder is the real ffmpeg under another name (a symlink), so that the
    # wrapped argv builder can tell its calls from the honest node's in this one process,
    # and alter every chunk it encodes.
    ff = find_ffmpeg()
    liars = {f"liar-{how}": tmp_path / f"{how}-ffmpeg" for how in ("shift", "box", "other")}
    for path in liars.values():
        path.symlink_to(ff.path)
    real: Callable[..., list[str]] = peer.worker.encode_chunk_argv

    def tampered(ffmpeg: str, *args: Any, **kwargs: Any) -> list[str]:
        argv = real(ffmpeg, *args, **kwargs)
        for name, path in liars.items():
            if ffmpeg == str(path):
                return _altered(argv, name.removeprefix("liar-"))
        return argv

    monkeypatch.setattr(peer.worker, "encode_chunk_argv", tampered)
    events: list[JobEvent] = []
    clip = clips["clip"]
    with trio.fail_after(300):  # a loaded CI machine: 40 s when idle
        async with trio.open_nursery() as nursery:
            nodes = []
            binaries = [("honest", ff), *((n, replace(ff, path=str(p))) for n, p in
                                          liars.items())]
            for name, binary in binaries:
                node = Node(NodeConfig(name=name, port=0, host="127.0.0.1", secret="k",
                                       advertise=False, serve_pyz=False), binary)
                await nursery.start(node.run)
                nodes.append(node)
            out = tmp_path / "out.mp4"
            opts = EncodeOptions(
                JobIntent(str(clip), str(out), load_profile("480p"), chunk_seconds=0.5),
                LocalSettings(no_local=True),
                NetworkSettings(enabled=True, discover=False, name="coord", secret="k",
                                peers=tuple(f"127.0.0.1:{n.port}" for n in nodes)))
            report = await run_encode(opts, events.append)
            nursery.cancel_scope.cancel()
    benched = {e.peer: e.reason for e in events if isinstance(e, PeerBenched)}
    assert benched.keys() == set(liars), events
    assert all("content check" in why for why in benched.values()), benched
    failed = [e for e in events if isinstance(e, ChunkFailed) and e.peer in liars]
    assert failed and all("content check" in e.reason for e in failed)
    assert {c["peer"] for c in report["chunks"]} == {"honest"}
    check_output(media_info(out), media_info(clip))
    assert decode_errors(out) == ""


# -- no false alarms on the hard sources ----------------------------------------------------

@pytest.mark.parametrize("name", ["open_gop", "vfr", "ntsc", "odd_size", "anamorphic",
                                  "rate_switch", "mpegts_wrap", "edit_cut", "neg_cts",
                                  "hi422p10", "portrait"])
def test_a_correct_chunk_of_every_hard_source_passes(name: str, source: Path,
                                                     tmp_path: Path) -> None:
    """Seek, trim, rotation, odd sizes, 10-bit 4:2:2, VFR, wrapping clocks: the check reads
    the source exactly as the encode did, so an honest peer's chunk always passes."""
    ff = find_ffmpeg()
    info = probe(ff, str(source))
    plans = plan_chunks(info.video, info.format_start_s, 1.0,
                        keyframe_seek=info.keyframe_seek)
    p = plans[len(plans) // 2]
    dw, dh = info.video.display_size
    fps = info.video.frames / max(1e-3, info.duration_s)
    prof = load_profile("480p")
    plan = video_plan(prof, dw, dh, fps, False, info.video.time_base)
    chunk = tmp_path / "c.nut"
    with open(chunk, "wb") as fh:
        subprocess.run(encode_chunk_argv(ff.path, prof, plan, str(source), p.seek_s, p.trim_s,
                                         p.frames, progress=False), check=True, stdout=fh)
    ks = sorted({0, p.frames // 2, p.frames - 1})
    assert _verdict(ff, chunk, info, plan, p.first, ks) is None
