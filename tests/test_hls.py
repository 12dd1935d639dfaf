"""Progressive HLS (`swarm encode --hls DIR`): the pure rules, the fMP4 rewrite on real
ffmpeg output, and whole jobs whose stream is read back by ffmpeg's HLS demuxer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from chunker import fmp4
from media import FFMPEG, decode_errors, media_info
from peer.coordinator import run_encode
from peer.options import EncodeOptions, JobIntent, LocalSettings, NetworkSettings
from profiles import load_profile
from swarm.errors import UsageError
from swarm.events import HlsEnd, HlsSegment, JobEnd, JobEvent
from swarm.hls import (
    InOrder,
    MediaPlaylist,
    audio_groups,
    avc_codec,
    behind_live,
    target_duration,
)

REPO = Path(__file__).resolve().parent.parent
SWARM = [sys.executable, "-c", "import cli; cli.main()"]
# ffmpeg's native AAC encoder primes with 1024 samples; an mp4 skips them with its edit
# list, a fragmented stream plays them (before the video's first frame).
AAC_PRIMING = 1024
AC3_PROFILE = "fhd"  # a built-in profile with AC-3 audio


# -- the pure rules -------------------------------------------------------------------------
def test_chunks_are_published_in_order_without_gaps() -> None:
    order = InOrder(5)
    assert order.verified(2) == []
    assert order.verified(0) == [0]
    assert order.verified(1) == [1, 2]
    assert order.verified(4) == []
    assert not order.done
    assert order.verified(3) == [3, 4]
    assert order.done
    with pytest.raises(ValueError):
        order.verified(5)


def test_playlist_only_grows_and_marks_a_new_init() -> None:
    pl = MediaPlaylist(target_s=3)
    text = pl.header()
    assert "#EXT-X-PLAYLIST-TYPE:EVENT" in text and "#EXT-X-TARGETDURATION:3" in text
    first = pl.segment("v00000.m4s", 2.0, "init.mp4")
    assert first == '#EXT-X-MAP:URI="init.mp4"\n#EXTINF:2.000000,\nv00000.m4s\n'
    assert pl.segment("v00001.m4s", 2.0, "init.mp4") == "#EXTINF:2.000000,\nv00001.m4s\n"
    other = pl.segment("v00002.m4s", 1.5, "init1.mp4")
    assert other.startswith('#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI="init1.mp4"\n')
    with pytest.raises(ValueError, match="target"):
        pl.segment("v00003.m4s", 3.6, "init1.mp4")
    assert pl.end() == "#EXT-X-ENDLIST\n"
    with pytest.raises(ValueError, match="ended"):
        pl.segment("v00004.m4s", 1.0, "init1.mp4")


def test_target_duration_rounds_up() -> None:
    assert target_duration([2.0, 2.0, 1.2]) == 2
    assert target_duration([2.04]) == 3
    assert target_duration([]) == 1


def test_audio_follows_the_published_video() -> None:
    ends = [1.0, 2.0, 3.0, 4.0, 4.5]
    assert audio_groups(ends, 0, 2.0) == 2
    assert audio_groups(ends, 2, 2.5) == 0
    assert audio_groups(ends, 2, 4.2) == 2
    assert audio_groups(ends, 4, None) == 1


def test_behind_live_edge() -> None:
    # 1 s segments: 4 s of video after 2 s is ahead; after 3.5 s a viewer has caught up.
    assert not behind_live(4.0, 2.0, 1.0)
    assert behind_live(4.0, 3.5, 1.0)
    assert not behind_live(1.0, 0.0, 1.0)


def test_codec_string_from_avcc() -> None:
    assert avc_codec(bytes([1, 0x64, 0x00, 0x1F, 0xFF])) == "avc1.64001f"
    with pytest.raises(ValueError):
        avc_codec(b"\x00\x01")


# -- the fMP4 rewrite, on real ffmpeg output --------------------------------------------------
def _fragmented_chunk(tmp: Path, start_s: float, frames: int, name: str) -> bytes:
    nut = tmp / f"{name}.nut"
    subprocess.run([FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size=160x120:rate=25:duration=4,trim=start={start_s}",
                    "-frames:v", str(frames), "-c:v", "libx264", "-bf", "2", "-g", "25",
                    "-f", "nut", str(nut)], check=True, timeout=60)
    mp4 = tmp / f"{name}.mp4"
    subprocess.run([FFMPEG, "-v", "error", "-y", "-i", str(nut), "-c", "copy", "-f", "mp4",
                    "-movflags", "frag_keyframe+empty_moov+default_base_moof",
                    "-video_track_timescale", "12800", str(mp4)], check=True, timeout=60)
    return mp4.read_bytes()


def test_retimed_chunks_play_as_one_stream(tmp_path: Path) -> None:
    a = _fragmented_chunk(tmp_path, 0.0, 50, "a")
    b = _fragmented_chunk(tmp_path, 2.0, 50, "b")
    init_a, tracks, frags_a = fmp4.parse(a)
    init_b, _, frags_b = fmp4.parse(b)
    assert init_a == init_b  # one init serves chunks x264 encoded with the same settings
    (track,) = tracks.values()
    assert track.handler == b"vide" and track.timescale == 12800
    # ffmpeg starts every file at decode time 0: what the rewrite is for.
    assert frags_a[0].decode_start == 0 and frags_b[0].decode_start == 0
    assert frags_a[0].starts_with_sync and frags_b[0].starts_with_sync
    lead = frags_a[0].first_pts
    shift_b = 2 * 12800 + lead - frags_b[0].first_pts
    seq = 1
    body = b""
    for f in frags_a:
        body += fmp4.retime(f, f.decode_start, seq)
        seq += 1
    for f in frags_b:
        body += fmp4.retime(f, f.decode_start + shift_b, seq)
        seq += 1
    joined = tmp_path / "joined.mp4"
    joined.write_bytes(init_a + body)
    _, _, again = fmp4.parse(init_a + body)
    assert [f.decode_start for f in again[len(frags_a):]] == [
        f.decode_start + shift_b for f in frags_b]
    res = subprocess.run([FFMPEG, "-v", "error", "-i", str(joined), "-f", "framecrc", "-"],
                         capture_output=True, text=True, timeout=60, check=True)
    assert res.stderr == ""
    pts = [int(line.split(",")[2]) for line in res.stdout.splitlines()
           if line and not line.startswith("#")]
    assert sorted(pts) == list(range(pts[0], pts[0] + 100))  # in frames: none lost or doubled


def test_broken_fragments_are_refused() -> None:
    with pytest.raises(ValueError):
        fmp4.parse(b"\x00\x00\x00\x10moof" + b"\x00" * 4)
    with pytest.raises(ValueError):
        fmp4.parse(b"\x00\x00\x01\x00ftyp")


# -- whole jobs ---------------------------------------------------------------------------------
def _opts(src: Path, out: Path, hls: Path, profile: str = "hd", force: bool = False
          ) -> EncodeOptions:
    return EncodeOptions(JobIntent(str(src), str(out), load_profile(profile), chunk_seconds=1.0,
                                   hls=str(hls), force=force),
                         LocalSettings(workers=2), NetworkSettings(name="testnode"))


def _frame_md5s(path: Path, extra: tuple[str, ...] = ()) -> list[str]:
    res = subprocess.run([FFMPEG, "-nostdin", "-v", "error", *extra, "-i", str(path),
                          "-map", "0:v:0", "-fps_mode", "passthrough", "-f", "framemd5", "-"],
                         capture_output=True, text=True, timeout=120, check=True)
    return [line.rsplit(",", 1)[1].strip() for line in res.stdout.splitlines()
            if line and not line.startswith("#")]


def _start_times(path: Path) -> dict[str, float]:
    res = subprocess.run(["ffprobe" if Path("/usr/bin/ffprobe").exists() else FFMPEG,
                          "-v", "error", "-show_entries", "stream=codec_type,start_time",
                          "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, timeout=60, check=True)
    out: dict[str, float] = {}
    for line in res.stdout.split():
        kind, start = line.split(",")
        out.setdefault(kind, float(start))
    return out


@pytest.mark.parametrize("name", ["open_gop", "audio_late", "video_late", "vfr", "no_audio"])
async def test_stream_grows_by_appends_and_equals_the_file(name: str, corpus: dict[str, Path],
                                                           tmp_path: Path) -> None:
    src = corpus[name]
    out, hls = tmp_path / "out.mp4", tmp_path / "hls"
    snapshots: list[str] = []
    events: list[JobEvent] = []

    def emit(e: JobEvent) -> None:
        events.append(e)
        if isinstance(e, HlsSegment):
            snapshots.append((hls / "video.m3u8").read_text())

    with trio.fail_after(120):
        report = await run_encode(_opts(src, out, hls), emit)
    kinds = [type(e) for e in events]
    # Playable before the job ends: the first segment comes before the merge's end.
    assert kinds.index(HlsSegment) < kinds.index(HlsEnd) < kinds.index(JobEnd)
    first_at = next(e.at_s for e in events if isinstance(e, HlsSegment))
    assert first_at < report["wall_s"]
    final = (hls / "video.m3u8").read_text()
    assert final.endswith("#EXT-X-ENDLIST\n")
    assert snapshots and all(final.startswith(s) for s in snapshots)  # only ever appended
    assert len(snapshots) == len(report["chunks"]) == report["hls"]["segments"]
    master = hls / "master.m3u8"
    assert "#EXT-X-STREAM-INF:" in master.read_text()
    # Read back through ffmpeg's HLS demuxer: silent, and exactly the merged file's frames,
    # which the job verified against the source's.
    assert decode_errors(master) == ""
    assert _frame_md5s(master) == _frame_md5s(out)
    assert len(_frame_md5s(master)) == media_info(src).video.frames
    hs, os_ = _start_times(master), _start_times(out)
    assert "audio" not in os_ or "audio" in hs
    if name == "no_audio":
        assert "audio" not in hs and not (hls / "audio.m3u8").exists()
    else:
        s = media_info(src)
        assert s.audio is not None
        rate = media_info(out).audios[0].sample_rate
        # As the merged file promises (tests/test_pipeline.py): the source's offset between
        # audio and video, within one audio frame.
        stream_offset = hs["audio"] + AAC_PRIMING / rate - hs["video"]
        assert abs(stream_offset - (s.audio.start_s - s.video.start_s)) <= 1024 / rate + 0.001
        assert abs(os_["audio"] - os_["video"] - (s.audio.start_s - s.video.start_s)) \
            <= 1024 / rate + 0.001
        audio_pl = (hls / "audio.m3u8").read_text()
        assert audio_pl.endswith("#EXT-X-ENDLIST\n")
    assert not [p for p in hls.iterdir() if p.name.startswith(".")]  # no temporary left


async def test_a_failed_job_leaves_no_stream(corpus: dict[str, Path], tmp_path: Path) -> None:
    src = tmp_path / "cut.mp4"
    data = corpus["closed_gop"].read_bytes()
    src.write_bytes(data[: len(data) // 3])  # truncated: the probe or the encode fails
    out, hls = tmp_path / "out.mp4", tmp_path / "hls"
    with trio.fail_after(120), pytest.raises(Exception):  # noqa: B017
        await run_encode(_opts(src, out, hls))
    assert not hls.exists() and not out.exists()


async def test_cancelled_job_removes_its_stream(corpus: dict[str, Path], tmp_path: Path) -> None:
    out, hls = tmp_path / "out.mp4", tmp_path / "hls"
    seen = trio.Event()

    def emit(e: JobEvent) -> None:
        if isinstance(e, HlsSegment):
            seen.set()

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_encode, _opts(corpus["open_gop"], out, hls), emit)
            await seen.wait()
            assert (hls / "video.m3u8").exists()
            nursery.cancel_scope.cancel()
    assert not hls.exists() and not out.exists()


async def test_refusals(corpus: dict[str, Path], tmp_path: Path) -> None:
    src = corpus["closed_gop"]
    other = tmp_path / "photos"
    other.mkdir()
    (other / "me.jpg").write_bytes(b"x")
    with pytest.raises(UsageError, match="other files"):
        await run_encode(_opts(src, tmp_path / "a.mp4", other))
    assert (other / "me.jpg").exists()
    # An earlier stream is replaced only with --force.
    hls = tmp_path / "hls"
    with trio.fail_after(120):
        await run_encode(_opts(src, tmp_path / "b.mp4", hls))
    with pytest.raises(UsageError, match="--force"):
        await run_encode(_opts(src, tmp_path / "c.mp4", hls))
    with trio.fail_after(120):
        await run_encode(_opts(src, tmp_path / "d.mp4", hls, force=True))
    assert (hls / "video.m3u8").read_text().endswith("#EXT-X-ENDLIST\n")
    # AC-3 is not an HLS fMP4 audio codec browsers take.
    assert load_profile(AC3_PROFILE).audio.codec == "ac3"
    with pytest.raises(UsageError, match="AAC or Opus"):
        await run_encode(_opts(src, tmp_path / "e.mp4", tmp_path / "hls2", profile=AC3_PROFILE))
    assert not (tmp_path / "hls2").exists()


def test_cli_hls_option(corpus: dict[str, Path], tmp_path: Path) -> None:
    env = os.environ | {"PYTHONPATH": str(REPO)}
    res = subprocess.run([*SWARM, "encode", str(corpus["closed_gop"]), "-o",
                          str(tmp_path / "o.mp4"), "--local-only", "--chunk-seconds", "1",
                          "--hls", str(tmp_path / "s")], capture_output=True, text=True,
                         timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    assert "HLS playable" in res.stderr and "HLS complete" in res.stderr
    assert (tmp_path / "s" / "master.m3u8").exists()
    bad = subprocess.run([*SWARM, "encode", str(corpus["closed_gop"]), "--local-only", "--hls",
                          str(tmp_path / "o.mp4")], capture_output=True, text=True,
                         timeout=60, env=env)
    assert bad.returncode == 2 and "not a directory" in bad.stderr


def test_crashed_job_resumes_its_stream(tmp_path: Path) -> None:
    src = tmp_path / "src.mp4"
    subprocess.run([FFMPEG, "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=1280x720:rate=25:duration=8", "-f", "lavfi", "-i",
                    "sine=duration=8", "-c:v", "libx264", "-preset", "ultrafast", "-g", "25",
                    "-c:a", "aac", "-shortest", str(src)], check=True, timeout=120)
    env = os.environ | {"PYTHONPATH": str(REPO)}
    argv = [*SWARM, "encode", str(src), "-o", str(tmp_path / "out.mp4"), "--local-only",
            "-w", "1", "--chunk-seconds", "1", "--hls", str(tmp_path / "s"), "-q"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    playlist = tmp_path / "s" / "video.m3u8"
    try:
        deadline = time.monotonic() + 90
        while not (playlist.exists() and playlist.read_text().count("#EXTINF") >= 2):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # a crash: power loss, the OOM killer
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert "#EXT-X-ENDLIST" not in playlist.read_text()
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr
    assert playlist.read_text().endswith("#EXT-X-ENDLIST\n")
    master = tmp_path / "s" / "master.m3u8"
    assert decode_errors(master) == ""
    assert _frame_md5s(master) == _frame_md5s(tmp_path / "out.mp4")
    assert len(_frame_md5s(master)) == 200
