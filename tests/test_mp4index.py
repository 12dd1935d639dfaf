"""Where a chunk's bytes lie in an MP4 (chunker/mp4index.py): real files made by ffmpeg.

The proof that a chunk's byte range holds every byte its decode needs: a copy of the file
with every other media byte overwritten decodes the chunk's frames exactly as the file
does, seeking as a peer's encoder seeks. Open GOP (x264's open-gop, whose leading pictures
follow their keyframe in decode order) and B-frames included; both layouts.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from chunker.mp4index import PROBE_GAP, PROBE_SAMPLES, read_layout
from chunker.plan import ChunkPlan, plan_chunks
from chunker.probe import MediaInfo, probe
from chunker.tools import find_ffmpeg
from media import FFMPEG

SECONDS = 6
CHUNK_S = 1.5


def _make(folder: Path, name: str, x264: str, extra: list[str]) -> Path:
    out = folder / name
    subprocess.run(
        [FFMPEG, "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
         f"testsrc2=size=320x240:rate=25,noise=alls=20:allf=t,trim=duration={SECONDS}",
         "-f", "lavfi", "-i", f"sine=frequency=440:duration={SECONDS}",
         "-c:v", "libx264", "-preset", "ultrafast", "-qp", "4", "-bf", "3", "-g", "30",
         "-x264-params", x264, "-pix_fmt", "yuv420p", "-c:a", "aac", *extra, str(out)],
        check=True, timeout=120)
    return out


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("mp4index")
    return {
        "moov_at_end": _make(folder, "end.mp4", "scenecut=0", []),
        "faststart_open_gop": _make(folder, "open.mp4", "open-gop=1:scenecut=0",
                                    ["-movflags", "+faststart"]),
    }


def _frames(path: Path, plan: ChunkPlan, info: MediaInfo) -> str:
    """The chunk's decoded frames (timestamps and checksums), read as a peer reads them."""
    args = [FFMPEG, "-nostdin", "-v", "error", "-copyts"]
    if plan.seek_s is not None:
        args += ["-ss", f"{plan.seek_s:.6f}", "-noaccurate_seek"]
    args += ["-i", str(path), "-map", "0:V:0"]
    if plan.trim_s is not None:
        args += ["-vf", f"trim=start={plan.trim_s:.6f}"]
    args += ["-fps_mode", "passthrough", "-frames:v", str(plan.frames), "-f", "framecrc", "-"]
    out = subprocess.run(args, capture_output=True, check=False, timeout=60)
    lines = [ln for ln in out.stdout.decode().splitlines() if not ln.startswith("#")]
    assert len(lines) == plan.frames or path.suffix == ".holed", (path, plan, out.stderr)
    return "\n".join(lines)


@pytest.mark.parametrize("layout", ["moov_at_end", "faststart_open_gop"])
def test_each_chunk_decodes_from_its_range_alone(layout: str, sources: dict[str, Path],
                                                 tmp_path: Path) -> None:
    src = sources[layout]
    info = probe(find_ffmpeg(), str(src))
    data = src.read_bytes()
    with src.open("rb") as fh:
        got = read_layout(fh, len(data), info.video.frames)
    assert got is not None
    plans = plan_chunks(info.video, info.format_start_s, CHUNK_S)
    assert len(plans) >= 3
    assert any(p.seek_s is not None for p in plans)
    media = got.media_start
    for plan in plans:
        lo, hi = got.chunk_range(plan.first, plan.frames)
        assert media <= lo < hi <= got.index_start
        # Everything outside the boxes before the media, the chunk's range and what
        # follows the media (the moov at the end) overwritten with 0xff.
        holed = bytearray(data)
        for a, b in ((media, lo), (hi, got.index_start)):
            holed[a:b] = b"\xff" * (b - a)
        if plan.seek_s is not None:
            # ffmpeg probes the first packets before it seeks; what they are does not
            # reach the chunk's frames, so they are left as they were.
            probe_end = got.ends[3]
            holed[media:min(lo, probe_end)] = data[media:min(lo, probe_end)]
        path = tmp_path / f"chunk{plan.index}.holed"
        path.write_bytes(bytes(holed))
        assert _frames(path, plan, info) == _frames(src, plan, info), (layout, plan)


def test_what_each_request_is_answered_with(sources: dict[str, Path]) -> None:
    src = sources["moov_at_end"]
    info = probe(find_ffmpeg(), str(src))
    size = src.stat().st_size
    with src.open("rb") as fh:
        got = read_layout(fh, size, info.video.frames)
    assert got is not None
    plans = plan_chunks(info.video, info.format_start_s, CHUNK_S)
    last = plans[-2]  # one that seeks, with a chunk after it
    lo, hi = got.chunk_range(last.first, last.frames)
    # The moov follows the media: the file's start is answered up to the media only if
    # the media is large enough that every ffmpeg seeks past it (this one is not).
    assert (got.header_end is not None) == (got.index_start - got.media_start >= 4 << 20)
    assert got.cap(lo, last.first, last.frames) == hi
    assert got.cap(lo + 1, last.first, last.frames) == hi
    assert got.cap(hi, last.first, last.frames) is None  # the next chunk's bytes
    assert got.cap(got.index_start, last.first, last.frames) == size  # the moov
    # The probe's samples, where the chunk starts far enough past them that every ffmpeg
    # asks anew for it (else up to its end, as any request before it).
    probe_end = got.ends[PROBE_SAMPLES - 1]
    far = lo >= probe_end + PROBE_GAP
    assert got.cap(got.media_start, last.first, last.frames) == (probe_end if far else hi)
    near = next(p for p in plans if p.first > 0)
    near_lo, near_hi = got.chunk_range(near.first, near.frames)
    if near_lo < probe_end + PROBE_GAP:
        assert got.cap(got.media_start, near.first, near.frames) == near_hi
    first = plans[0]
    assert got.cap(got.media_start, first.first, first.frames) == got.chunk_range(
        first.first, first.frames)[1]


def test_other_files_have_no_layout(tmp_path: Path) -> None:
    mkv = tmp_path / "a.mkv"
    subprocess.run([FFMPEG, "-nostdin", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=64x64:rate=10:duration=1", "-c:v", "libx264", str(mkv)],
                   check=True, timeout=60)
    frag = tmp_path / "frag.mp4"
    subprocess.run([FFMPEG, "-nostdin", "-v", "error", "-i", str(mkv), "-c", "copy",
                    "-movflags", "frag_keyframe+empty_moov", str(frag)], check=True, timeout=60)
    for path in (mkv, frag):
        with path.open("rb") as fh:
            assert read_layout(fh, path.stat().st_size, 10) is None, path
    # A count that is not the probe's (samples an edit list hides): not trusted either.
    plain = tmp_path / "plain.mp4"
    subprocess.run([FFMPEG, "-nostdin", "-v", "error", "-i", str(mkv), "-c", "copy",
                    str(plain)], check=True, timeout=60)
    with plain.open("rb") as fh:
        assert read_layout(fh, plain.stat().st_size, 10) is not None
        assert read_layout(fh, plain.stat().st_size, 11) is None
