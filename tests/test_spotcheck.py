"""Content spot checks: a peer that returns other pictures is caught, benched, replaced.

The decisions (samples, verdict) are pure; the comparison is real ffmpeg on lavfi sources;
the peer that alters frames is a real node over real HTTP whose encoder gets a drawbox
filter, injected in this test process only (the worker's argv builder is wrapped here),
never by anything the network can send.
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

import peer.worker
from chunker.commands import encode_chunk_argv, verify_chunk_argv, video_plan
from chunker.plan import plan_chunks, plans_from_cuts
from chunker.probe import parse_framecrc, probe
from chunker.spotcheck import GRID, parse_tile_psnr, spot_check_argv
from chunker.tools import find_ffmpeg
from chunker.verify import check_output
from media import decode_errors, media_info
from peer.coordinator import run_encode
from peer.node import Node, NodeConfig
from peer.options import EncodeOptions, JobIntent, LocalSettings, NetworkSettings
from profiles import load_profile
from swarm.events import ChunkFailed, JobEvent, PeerBenched
from swarm.spotcheck import SAMPLES, THRESHOLD_DB, sample_frames, verdict

# -- decisions (pure) -----------------------------------------------------------------------

def test_samples_are_distinct_ascending_and_inside_the_chunk() -> None:
    rng = random.Random(7)
    for frames in (1, 2, 3, 50, 10_000):
        s = sample_frames(frames, rng)
        assert s == sorted(set(s)) and len(s) == min(SAMPLES, frames)
        assert 0 <= s[0] and s[-1] < frames
    with pytest.raises(ValueError):
        sample_frames(0, rng)


def test_the_verdict_fails_on_any_tile_below_the_threshold() -> None:
    good = [THRESHOLD_DB + 10.0] * (GRID * GRID)
    assert verdict([3, 9], [good, good]) is None
    assert verdict([3, 9], [good, [math.inf] * len(good)]) is None  # identical tiles
    why = verdict([3, 9], [good, [*good[:-1], THRESHOLD_DB - 0.1]])
    assert why is not None and "frame 9 differs" in why
    assert verdict([3], [[math.nan] * len(good)]) is not None  # NaN never passes
    assert verdict([3, 9], [good]) is not None  # a sample with no tiles is no pass
    assert verdict([3, 9], [good, []]) is not None
    assert verdict([], []) is not None


def test_psnr_statistics_are_read_tile_by_tile() -> None:
    lines = "\n".join(f"n:{i + 1} mse_avg:{mse} mse_y:1 psnr_avg:x" for i, mse in
                      enumerate([0.0, 65.025, 6502.5, 1.0]))
    [got] = parse_tile_psnr(lines, 1, grid=2)
    assert got[0] == math.inf and abs(got[1] - 30.0) < 1e-9 and abs(got[2] - 10.0) < 1e-9
    with pytest.raises(ValueError, match="expected 8"):
        parse_tile_psnr(lines, 2, grid=2)  # a frame missing on one side is not a pass
    with pytest.raises(ValueError, match="unreadable"):
        parse_tile_psnr("n:1 mse_avg:nan", 1, grid=1)


# -- the comparison, with real ffmpeg -------------------------------------------------------

@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spot") / "clip.mp4"
    subprocess.run([find_ffmpeg().path, "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=640x360:rate=25:duration=4", "-c:v", "libx264", "-g", "25",
                    "-crf", "18", "-y", str(path)], check=True)
    return path


def _chunk(clip: Path, out: Path, first: int, frames: int, box: bool = False) -> Any:
    ff = find_ffmpeg()
    info = probe(ff, str(clip))
    prof = load_profile("480p")
    plan = video_plan(prof, 640, 360, 25.0, False, info.video.time_base)
    cut = plans_from_cuts(info.video, info.format_start_s, [0, first])[1]
    argv = encode_chunk_argv(ff.path, prof, plan, str(clip), cut.seek_s, cut.trim_s, frames,
                             progress=False)
    if box:
        argv = _with_box(argv)
    with open(out, "wb") as fh:
        subprocess.run(argv, check=True, stdout=fh)
    return ff, info, plan


def _start(ff: Any, chunk: Path) -> float:
    """The chunk's first timestamp, read from the same listing its verification reads."""
    listing = subprocess.run(verify_chunk_argv(ff, str(chunk)), check=True,
                             capture_output=True, text=True).stdout
    video = next(s for s in parse_framecrc(listing).values() if s.media_type == "video")
    return float(min(p for p, _, _ in video.packets) * video.tb)


def _scores(ff: Any, chunk: Path, info: Any, plan: Any, first: int, ks: list[int]
            ) -> list[list[float]]:
    """Tile PSNRs of chunk frames ``ks`` against source frames ``first + k``."""
    out = subprocess.run(spot_check_argv(ff, str(chunk), _start(ff, chunk), info, plan,
                                         first, ks),
                         check=True, capture_output=True, text=True).stdout
    return parse_tile_psnr(out, len(ks))


def test_a_correct_chunk_passes_and_wrong_frames_fail(clip: Path, tmp_path: Path) -> None:
    chunk = tmp_path / "c.nut"
    ff, info, plan = _chunk(clip, chunk, 30, 40)
    ks = [0, 7, 21, 39]
    assert verdict(ks, _scores(ff, chunk, info, plan, 30, ks)) is None
    # The same frames held against their neighbours, or another chunk's: caught.
    assert verdict(ks, _scores(ff, chunk, info, plan, 31, ks)) is not None
    assert verdict(ks, _scores(ff, chunk, info, plan, 0, ks)) is not None
    boxed = tmp_path / "b.nut"
    _chunk(clip, boxed, 30, 40, box=True)
    assert verdict([21], _scores(ff, boxed, info, plan, 30, [21])) is not None


# -- a peer that alters frames, over real HTTP ----------------------------------------------

BOX = "drawbox=x=iw/3:y=ih/3:w=iw/8:h=ih/8:color=red:t=fill"


def _with_box(argv: list[str]) -> list[str]:
    i = argv.index("-filter_complex") + 1
    return [*argv[:i], argv[i].replace("setsar=1", f"setsar=1,{BOX}"), *argv[i + 1:]]


async def test_a_peer_returning_altered_frames_is_benched_and_its_chunks_redone(
        monkeypatch: pytest.MonkeyPatch, clip: Path, tmp_path: Path) -> None:
    # The liar's encoder is the real ffmpeg under another name (a symlink), so that the
    # wrapped argv builder can tell its calls from the honest node's in this one process,
    # and draw a box into every frame it encodes.
    ff = find_ffmpeg()
    liar_path = tmp_path / "liar-ffmpeg"
    liar_path.symlink_to(ff.path)
    real: Callable[..., list[str]] = peer.worker.encode_chunk_argv

    def tampered(ffmpeg: str, *args: Any, **kwargs: Any) -> list[str]:
        argv = real(ffmpeg, *args, **kwargs)
        return _with_box(argv) if ffmpeg == str(liar_path) else argv

    monkeypatch.setattr(peer.worker, "encode_chunk_argv", tampered)
    events: list[JobEvent] = []
    with trio.fail_after(300):  # a loaded CI machine: 40 s when idle
        async with trio.open_nursery() as nursery:
            nodes = []
            for name, binary in (("honest", ff), ("liar", replace(ff, path=str(liar_path)))):
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
    benched = [e for e in events if isinstance(e, PeerBenched)]
    assert [e.peer for e in benched] == ["liar"], events
    assert "content check" in benched[0].reason
    failed = [e for e in events if isinstance(e, ChunkFailed) and e.peer == "liar"]
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
    tiles = _scores(ff, chunk, info, plan, p.first, ks)
    assert verdict(ks, tiles) is None, [round(min(t), 1) for t in tiles]
