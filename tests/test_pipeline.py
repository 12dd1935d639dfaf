"""The output promises, on every hard-case source, through the real pipeline and ffmpeg."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
from pathlib import Path

import pytest
import trio

import ffmpegs
from chunker.commands import AUDIO_COPY_EXACT, encode_chunk_argv, video_plan
from chunker.probe import probe
from chunker.tools import FFmpeg, ffmpeg_info
from chunker.tracks import plan_tracks
from media import (
    FFMPEG,
    SOURCES,
    decode_errors,
    decoded_times,
    media_info,
    min_psnr,
    sound_span,
)
from peer import media as steps
from peer.coordinator import run_encode
from peer.options import EncodeOptions, JobIntent, LocalSettings, NetworkSettings
from peer.proc import run_ffmpeg
from profiles import load_profile
from swarm.errors import UsageError

# An off-by-one frame in testsrc2 scores below 20 dB; a correct 2 Mb/s encode of these
# small clips scores above 40 dB at its worst frame.
MIN_FRAME_PSNR_DB = 35.0
MS = 0.001


@pytest.fixture(params=ffmpegs.params())
def binary(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> FFmpeg:
    """Each test that takes this runs once per ffmpeg under test (tests/ffmpegs.py), which
    then does every step of the job; the sources and the checks use one fixed binary."""
    info = ffmpegs.require(request.param)
    monkeypatch.setenv("SWARM_FFMPEG", info.path)  # for _encode, as cli.py passes it down
    return info


async def _encode(src: Path, out: Path, profile: str = "hd", chunk_s: float = 1.0,
                  workers: int = 2) -> dict:
    opts = EncodeOptions(JobIntent(str(src), str(out), load_profile(profile),
                                   chunk_seconds=chunk_s),
                         LocalSettings(workers=workers, ffmpeg=os.environ.get("SWARM_FFMPEG")),
                         NetworkSettings(name="testnode"))
    with trio.fail_after(120):
        return await run_encode(opts)


@pytest.mark.parametrize("name", sorted(SOURCES))
async def test_output_keeps_every_promise(name: str, binary: FFmpeg, source: Path,
                                          tmp_path: Path) -> None:
    src = source
    out = tmp_path / "out.mp4"
    report = await _encode(src, out)
    s, o = media_info(src), media_info(out)

    # The probe lists the frames a decoder shows (not, say, those an edit list hides).
    shown = decoded_times(src)
    assert len(shown) == s.video.frames
    s0, o0 = s.video.seconds(0), o.video.seconds(0)
    assert max(abs(s.video.seconds(i) - s0 - t) for i, t in enumerate(shown)) <= 1 * MS
    # Exactly the source's frames, at the source's times relative to the first frame.
    assert o.video.frames == s.video.frames
    worst = max(abs((o.video.seconds(i) - o0) - (s.video.seconds(i) - s0))
                for i in range(s.video.frames))
    assert worst <= 1 * MS, f"timestamp off by {worst * 1000:.3f} ms"
    # Decodes silently.
    assert decode_errors(out) == ""
    # The right frames: each output frame matches the source frame at its position.
    assert min_psnr(src, out, o.video.width, o.video.height) > MIN_FRAME_PSNR_DB
    # Several chunks were really cut and merged.
    assert len(report["chunks"]) >= 3
    assert sum(c["frames"] for c in report["chunks"]) == s.video.frames
    # Upright pixels (a phone's rotation applied, none left for the player), square, even
    # sides, never larger than the source.
    assert o.video.rotation == 0
    dw, dh = s.video.display_size
    assert o.video.width % 2 == 0 and o.video.height % 2 == 0
    assert o.video.width <= dw and o.video.height <= dh
    assert o.video.sar in (0, 1)
    assert abs(o.video.width / o.video.height - dw / dh) < 0.02
    # Audio: every track of the source, heard at the same moments, never upmixed.
    assert len(o.audios) == len(s.audios)
    # Each track's language and title as the build under test reads them from the source:
    # 5.1 and 7.0.2 do not read the track name 9.0's mp4 muxer writes ("Commentary").
    seen = probe(binary, str(src)).dump
    assert [(x.language or "und", x.title) for x in o.dump.of_kind("audio")] == [
        (x.language or "und", x.title) for x in seen.of_kind("audio")]
    if s.audio is not None and o.audio is not None:
        frame_s = 1024 / o.audio.sample_rate
        (s_on, s_off), (o_on, o_off) = sound_span(src), sound_span(out)
        assert abs(o_on - s_on) <= frame_s
        assert abs(o_off - s_off) <= frame_s
        assert o.audio.channels == min(s.audio.channels, 2)
        s_offset = s.audio.start_s - s.video.start_s
        o_offset = o.audio.start_s - o.video.start_s
        assert abs(o_offset - s_offset) <= frame_s + MS
    # Nothing left beside the output but the output.
    assert sorted(os.listdir(tmp_path)) == ["out.mp4"]


def test_rate_switch_source_has_three_frame_spacings(corpus: dict[str, Path]) -> None:
    """The source really changes rate (24, 30, 15 fps), and ffmpeg's frame-rate guess sees
    only the first: the trap the chunk encode must not fall into."""
    v = media_info(corpus["rate_switch"]).video
    gaps = [float((b - a) * v.time_base) for a, b in zip(v.pts, v.pts[1:], strict=False)]
    runs = [(round(1 / g), len(list(n))) for g, n in itertools.groupby(gaps)]
    assert runs == [(24, 96), (30, 30), (15, 14)]
    keys = {round(v.seconds(k), 3) for k in v.keyframes}
    assert {4.0, 5.0} <= keys  # at the switches
    res = subprocess.run([FFMPEG, "-hide_banner", "-i", str(corpus["rate_switch"])],
                         capture_output=True, text=True, timeout=60, check=False)
    assert re.search(r"Video: .* 24 tbr", res.stderr)


async def test_surround_kept_with_a_six_channel_profile(
        binary: FFmpeg, corpus: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    await _encode(corpus["surround"], out, profile="fhd")
    o = media_info(out)
    assert o.audio is not None and o.audio.channels == 6 and o.audio.codec == "ac3"
    assert o.video.frames == media_info(corpus["surround"]).video.frames


async def test_stereo_is_not_upmixed_by_a_six_channel_profile(
        binary: FFmpeg, corpus: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    await _encode(corpus["closed_gop"], out, profile="fhd")
    o = media_info(out)
    assert o.audio is not None and o.audio.channels == 2


@pytest.mark.parametrize("profile", ["fhd-x265", "fhd-av1"])
async def test_other_codecs_are_frame_exact(profile: str, binary: FFmpeg,
                                            corpus: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    codec = load_profile(profile).video.codec
    if not binary.has(codec):
        # Said once, before any chunk: never a loop of failing chunks (7.0.2 lacks SVT-AV1).
        with pytest.RaisesGroup(pytest.RaisesExc(UsageError, match=f"lacks {codec}"),
                                flatten_subgroups=True):
            await _encode(corpus["open_gop"], out, profile=profile, chunk_s=1.5)
        return
    await _encode(corpus["open_gop"], out, profile=profile, chunk_s=1.5)
    s, o = media_info(corpus["open_gop"]), media_info(out)
    assert o.video.frames == s.video.frames
    assert o.video.codec == {"fhd-x265": "hevc", "fhd-av1": "av1"}[profile]
    assert decode_errors(out) == ""


async def test_one_worker_and_one_chunk(corpus: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    report = await _encode(corpus["ntsc"], out, chunk_s=60, workers=1)
    assert len(report["chunks"]) == 1
    assert media_info(out).video.frames == media_info(corpus["ntsc"]).video.frames


async def test_report_fields(corpus: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    r = await _encode(corpus["closed_gop"], out)
    for key in ("input", "output", "profile", "frames", "duration_s", "wall_s", "chunks",
                "peers"):
        assert key in r
    assert r["frames"] == 100 and r["profile"] == "hd"
    for c in r["chunks"]:
        assert set(c) >= {"index", "start_s", "frames", "peer", "attempts", "encode_s",
                          "bytes_in", "bytes_out"}
        assert c["peer"] == "testnode" and c["attempts"] == 1 and c["bytes_out"] > 0
    assert [c["index"] for c in r["chunks"]] == list(range(len(r["chunks"])))
    assert r["peers"] == [{"name": "testnode", "chunks": len(r["chunks"]), "frames": 100,
                           "encode_s": pytest.approx(sum(c["encode_s"] for c in r["chunks"]),
                                                     abs=0.01)}]


OPUS_PROFILE = """description = "opus test"
[video]
codec = "libx264"
width = 320
height = 240
preset = "veryfast"
crf = 30
[audio]
codec = "libopus"
bitrate_k = 96
sample_rate = 48000
channels = 2
"""


async def _listing(path: Path, *args: str) -> str:
    res = await run_ffmpeg([FFMPEG, "-v", "error", "-i", str(path), "-map", "0:a", *args,
                            "-f", "framecrc", "-"], what="listing")
    return res.stdout.decode()


@pytest.mark.parametrize("codec", sorted(AUDIO_COPY_EXACT))
@pytest.mark.parametrize("name", ["audio_late", "video_late", "surround", "vfr", "two_audio"])
async def test_audio_encoded_beside_the_chunks_is_what_the_merge_would_encode(
        codec: str, name: str, corpus: dict[str, Path], tmp_path: Path) -> None:
    """The coordinator encodes AAC/Opus while chunks encode and the merge copies it: the
    output must carry the very packets, and decode to the very samples (priming and end
    trim included), that encoding inside the merge gives; for every audio track."""
    if codec == "aac":
        profile = load_profile("hd")
    else:
        (tmp_path / "opus.toml").write_text(OPUS_PROFILE)
        profile = load_profile(str(tmp_path / "opus.toml"))
    assert profile.audio.codec == codec
    # On the bundled binary: ffmpeg before 8.0 loses the AAC end trim whichever way it
    # encodes (5.1 and 7.0.2, 4 s source of 176400 samples: a single-process encode and the
    # copy decode to 177150, the encode inside the merge to 177152), so there is no exact
    # reference to compare with.
    ffmpeg = ffmpeg_info(ffmpegs.BUNDLED)
    info = await steps.probe(ffmpeg, str(corpus[name]))
    dw, dh = info.video.display_size
    vplan = video_plan(profile, dw, dh, 25.0, False)
    chunk = tmp_path / "chunk_00000.nut"
    with chunk.open("wb") as fh:
        await run_ffmpeg(encode_chunk_argv(ffmpeg.path, profile, vplan, info.path, None, None,
                                           info.video.frames, progress=False), stdout=fh)
    in_merge, copied, audio = (tmp_path / "a.mp4", tmp_path / "b.mp4", tmp_path / "au.mp4")
    tracks = plan_tracks(info, "mp4", profile.audio.channels, codec)
    await steps.merge(ffmpeg, str(tmp_path), [str(chunk)], [None], info, profile, tracks,
                      str(in_merge), "mp4")
    await steps.encode_audio(ffmpeg, info, profile, tracks, str(audio))
    await steps.merge(ffmpeg, str(tmp_path), [str(chunk)], [None], info, profile, tracks,
                      str(copied), "mp4", str(audio))
    packets = await _listing(in_merge, "-c", "copy")
    assert packets.count("\n") > 20
    # The listing holds every audio track (framecrc numbers them); all of them are there.
    assert {ln.split(",")[0] for ln in packets.splitlines() if not ln.startswith("#")} == {
        str(i) for i in range(len(info.audios))}
    assert await _listing(copied, "-c", "copy") == packets
    assert await _listing(copied) == await _listing(in_merge)
    # And the video track is untouched by the different merge.
    assert media_info(copied).video == media_info(in_merge).video
