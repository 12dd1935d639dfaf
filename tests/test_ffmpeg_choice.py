"""Which ffmpeg runs, decided by what each binary can do, and said once when it matters.

Real binaries only: the builds under test (tests/ffmpegs.py) are put on PATH as `ffmpeg`
where a test needs a system ffmpeg that lacks something.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import ffmpegs
from chunker.commands import encode_chunk_argv, verify_chunk_argv, video_plan
from chunker.probe import probe
from chunker.tools import FFmpeg, ffmpeg_info
from chunker.verify import check_chunk_listing
from media import FFMPEG, min_psnr
from peer.coordinator import run_encode
from peer.options import EncodeOptions, JobIntent, LocalSettings, NetworkSettings
from profiles import load_profile

SWARM = [sys.executable, "-c", "import cli; cli.main()"]
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(params=ffmpegs.params())
def binary(request: pytest.FixtureRequest) -> FFmpeg:
    return ffmpegs.require(request.param)


def test_each_build_verifies_a_vfr_chunk_in_the_demuxers_time_base(
        binary: FFmpeg, corpus: dict[str, Path], tmp_path: Path) -> None:
    """5.1 spells the option -1, 9.x demux; the record knows which, and the listing keeps
    every frame's own (variable) timestamp."""
    assert binary.demux_time_base in ("demux", "-1")
    assert not binary.lacks(["libx264", "aac"])
    src = probe(binary, str(corpus["vfr"]))
    profile = load_profile("hd")
    plan = video_plan(profile, *src.video.display_size, 30.0, False)
    chunk = tmp_path / "c.nut"
    with chunk.open("wb") as fh:
        subprocess.run(encode_chunk_argv(binary.path, profile, plan, src.path, None, None,
                                         src.video.frames, threads=1, progress=False),
                       stdout=fh, check=True, timeout=120)
    res = subprocess.run(verify_chunk_argv(binary, str(chunk)), capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    check_chunk_listing(res.stdout, res.stderr, src, 0, src.video.frames)


def _swarm(tmp_path: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "SWARM_FFMPEG"}
    return subprocess.run([*SWARM, *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=180, env=base | {"PYTHONPATH": str(REPO)} | env)


def _lacking_svtav1() -> FFmpeg:
    for path in ffmpegs.under_test():
        info = ffmpegs.require(path)
        if not info.has("libsvtav1"):
            return info
    pytest.skip("no ffmpeg under test lacks libsvtav1 (7.0.2 from imageio-ffmpeg 0.7.0 does)")


def test_a_system_ffmpeg_that_lacks_the_encoder_is_passed_over_with_one_line(
        corpus: dict[str, Path], tmp_path: Path) -> None:
    lacking = _lacking_svtav1()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "ffmpeg").symlink_to(lacking.path)
    res = _swarm(tmp_path, "encode", str(corpus["no_audio"]), "-o", "o.mp4", "-p", "fhd-av1",
                 env={"PATH": f"{bindir}:{os.environ['PATH']}"})
    assert res.returncode == 0, res.stderr
    said = [ln for ln in res.stderr.splitlines() if "lacks" in ln]
    assert said == [f"swarm: WARNING: ffmpeg {lacking.short_version} at {bindir / 'ffmpeg'} "
                    "lacks libsvtav1; using the bundled ffmpeg "
                    f"{ffmpeg_info(ffmpegs.BUNDLED).short_version}"], res.stderr
    assert "failed" not in res.stderr
    # --quiet: errors only, and this is no error.
    res = _swarm(tmp_path, "encode", str(corpus["no_audio"]), "-o", "q.mp4", "-p", "fhd-av1",
                 "-q", env={"PATH": f"{bindir}:{os.environ['PATH']}"})
    assert res.returncode == 0 and res.stderr == "", res.stderr


def test_swarm_ffmpeg_that_lacks_the_encoder_is_one_error_before_any_chunk(
        corpus: dict[str, Path], tmp_path: Path) -> None:
    lacking = _lacking_svtav1()
    res = _swarm(tmp_path, "encode", str(corpus["no_audio"]), "-o", "o.mp4", "-p", "fhd-av1",
                 env={"SWARM_FFMPEG": lacking.path})
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        f"swarm: error: SWARM_FFMPEG={lacking.path} (ffmpeg {lacking.short_version}) lacks "
        "libsvtav1: point it at an ffmpeg that has them, or unset it"]
    assert sorted(os.listdir(tmp_path)) == []



@pytest.fixture(scope="module")
def late_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 s of testsrc2 in Matroska whose timestamps start at 2 s."""
    src = tmp_path_factory.mktemp("late") / "late.mkv"
    subprocess.run([FFMPEG, "-nostdin", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=320x240:rate=25:duration=3", "-c:v", "libx264",
                    "-preset", "veryfast", "-g", "25", "-bf", "2", "-output_ts_offset", "2",
                    str(src)], check=True, timeout=60)
    return src


async def test_a_source_that_starts_late_gets_its_own_frames_on_every_build(
        binary: FFmpeg, late_source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    """Builds disagree on a file's start time (5.1 reads -0.023 s from Matroska with AAC
    priming, 9.0 reads 0); the trim must still pick each chunk's own frames on each build.
    Before the trim counted in source time, a 2 s start gave every chunk the frames of the
    one before (18 dB)."""
    out = tmp_path / "out.mp4"
    with trio.fail_after(120):
        report = await run_encode(EncodeOptions(
            JobIntent(str(late_source), str(out), load_profile("hd"), chunk_seconds=1.0),
            LocalSettings(workers=2, ffmpeg=binary.path), NetworkSettings(name="t")))
    assert len(report["chunks"]) == 3
    o = probe(ffmpeg_info(FFMPEG), str(out))
    assert min_psnr(late_source, out, o.video.width, o.video.height) > 35.0
