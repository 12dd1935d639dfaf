"""Test sources made with lavfi at test time, and independent checks of outputs.

Each source is a few seconds of small video, so the whole corpus builds in seconds; each
covers one of the hard cases the output promises hold for.
"""

from __future__ import annotations

import re
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chunker.probe import MediaInfo, probe
from chunker.tools import ffmpeg_info
from ffmpegs import BUNDLED

# Sources and the independent checks below use one fixed binary (see tests/ffmpegs.py).
FFMPEG = BUNDLED

_X264 = ["-c:v", "libx264", "-preset", "veryfast"]


@dataclass(frozen=True)
class Source:
    name: str
    why: str
    inputs: list[str]
    args: list[str]
    ext: str = ".mp4"
    # A second pass, stream copy of the first pass's file with these input options (a cut).
    recut: list[str] | None = None
    # Edits the finished file in place, for what no ffmpeg from 5.1 to 9 spells alike.
    patch: Callable[[Path], None] | None = None


def _lavfi(graph: str) -> list[str]:
    return ["-f", "lavfi", "-i", graph]


def _tone(seconds: float, layout: str = "stereo") -> list[str]:
    return _lavfi(f"sine=frequency=440:duration={seconds},aformat=channel_layouts={layout}")


def _tkhd_matrix(path: Path, matrix: tuple[int, ...]) -> None:
    """Set the video track header's display matrix (the first trak is the video here)."""
    data = bytearray(path.read_bytes())
    at = data.index(b"tkhd")
    version = data[at + 4]
    # After the size/type, version+flags, times, track id, reserved, duration, reserved,
    # layer, group, volume, reserved: 40 bytes into the payload (52 for version 1).
    struct.pack_into(">9i", data, at + 4 + (52 if version == 1 else 40), *matrix)
    path.write_bytes(bytes(data))


def _portrait(path: Path) -> None:
    # What a phone held upright writes: landscape pixels, turned 90 degrees clockwise on
    # display (ffmpeg reports "rotation of -90.00 degrees").
    _tkhd_matrix(path, (0, 1 << 16, 0, -(1 << 16), 0, 0, 240 << 16, 0, 1 << 30))


# 24 fps for 4 s (longer than ffmpeg's frame-rate guess reads, so it guesses 24), then 30 fps,
# then 15 fps: a phone switching modes. concat keeps each segment's own spacing.
_RATE_SWITCH = ("testsrc2=size=320x240:rate=24:duration=4[a];"
                "testsrc2=size=320x240:rate=30:duration=1[b];"
                "testsrc2=size=320x240:rate=15:duration=1[c];"
                "[a][b][c]concat=n=3:v=1:a=0")

SOURCES: dict[str, Source] = {s.name: s for s in [
    Source("closed_gop", "closed GOP, B-frames, stereo AAC",
           [*_lavfi("testsrc2=size=320x240:rate=25:duration=4"), *_tone(4)],
           [*_X264, "-bf", "2", "-g", "25", "-x264-params", "open-gop=0",
            "-c:a", "aac", "-shortest"]),
    Source("open_gop", "open GOP with B-frames and a scene cut (testsrc2 -> mandelbrot)",
           ["-f", "lavfi", "-i",
            "testsrc2=size=320x240:rate=30:duration=2[a];"
            "mandelbrot=size=320x240:rate=30,trim=duration=2,setpts=PTS-STARTPTS[b];"
            "[a][b]concat=n=2:v=1:a=0,format=yuv420p", *_tone(4)],
           [*_X264, "-bf", "3", "-g", "40", "-x264-params", "open-gop=1:scenecut=40",
            "-c:a", "aac", "-shortest"]),
    Source("vfr", "variable frame rate like phone footage (gaps and bursts)",
           [*_lavfi("testsrc2=size=320x240:rate=30:duration=4,"
                    "setpts='(N/30+0.012*N*mod(floor(N/15),2))/TB'"), *_tone(5)],
           [*_X264, "-bf", "2", "-g", "30", "-fps_mode", "vfr", "-c:a", "aac"]),
    Source("audio_late", "audio starts 0.5 s after the video",
           [*_lavfi("testsrc2=size=320x240:rate=25:duration=4"), "-itsoffset", "0.5",
            *_tone(3.5)],
           [*_X264, "-bf", "2", "-g", "25", "-c:a", "aac"]),
    Source("video_late", "video starts 0.4 s after the audio",
           ["-itsoffset", "0.4", *_lavfi("testsrc2=size=320x240:rate=25:duration=3.6"),
            *_tone(4)],
           [*_X264, "-bf", "2", "-g", "25", "-c:a", "aac"]),
    Source("no_audio", "video only",
           _lavfi("testsrc2=size=320x240:rate=24:duration=3"),
           [*_X264, "-g", "24"]),
    Source("surround", "5.1 audio",
           [*_lavfi("testsrc2=size=320x240:rate=25:duration=3"), *_tone(3, "5.1")],
           [*_X264, "-g", "25", "-c:a", "aac", "-b:a", "256k", "-shortest"]),
    Source("ntsc", "29.97 fps (30000/1001)",
           [*_lavfi("testsrc2=size=320x240:rate=30000/1001:duration=4"), *_tone(4)],
           [*_X264, "-bf", "2", "-g", "15", "-c:a", "aac", "-shortest"]),
    Source("odd_size", "odd picture size (321x241), FFV1 + FLAC in Matroska",
           [*_lavfi("testsrc2=size=321x241:rate=25:duration=3"), *_tone(3)],
           ["-c:v", "ffv1", "-g", "25", "-c:a", "flac", "-shortest"], ".mkv"),
    Source("two_audio", "two audio tracks: stereo, and mono starting 0.3 s late",
           [*_lavfi("testsrc2=size=320x240:rate=25:duration=4"), *_tone(4), "-itsoffset", "0.3",
            *_lavfi("sine=frequency=660:duration=3.7")],
           [*_X264, "-bf", "2", "-g", "25", "-map", "0:v", "-map", "1:a", "-map", "2:a",
            "-c:a", "aac", "-metadata:s:a:0", "language=eng", "-metadata:s:a:1",
            "language=fre", "-metadata:s:a:1", "title=Commentary"]),
    Source("anamorphic", "non-square pixels (SAR 4:3) and sparse keyframes",
           [*_lavfi("testsrc2=size=240x240:rate=25:duration=4,setsar=4/3"), *_tone(4)],
           [*_X264, "-g", "250", "-c:a", "aac", "-shortest"]),
    Source("rate_switch", "24 fps, then 30, then 15, keyframes at the switches (phone modes)",
           [*_lavfi(_RATE_SWITCH), *_tone(6)],
           [*_X264, "-bf", "2", "-g", "30", "-force_key_frames", "4,5",
            "-fps_mode", "passthrough", "-enc_time_base:v", "1/90000", "-c:a", "aac"]),
    # MPEG-TS seeks land on any frame, not on keyframes: GOPs longer than the tests' 1 s
    # chunks put cuts between keyframes, where that matters.
    Source("mpegts", "MPEG-TS as the seed platform records it (timestamps from 1.4 s)",
           [*_lavfi("testsrc2=size=320x240:rate=25:duration=3"), *_tone(3)],
           [*_X264, "-bf", "2", "-g", "50", "-c:a", "aac", "-f", "mpegts"], ".ts"),
    Source("mpegts_wrap", "MPEG-TS whose 33-bit timestamps wrap 1.3 s in",
           [*_lavfi("testsrc2=size=320x240:rate=25:duration=3"), *_tone(3)],
           [*_X264, "-bf", "2", "-g", "40", "-c:a", "aac",
            "-output_ts_offset", "95441", "-f", "mpegts"], ".ts"),
    Source("edit_cut", "a stream-copy cut: the edit list starts 0.3 s into a GOP",
           [*_lavfi("testsrc2=size=320x240:rate=25:duration=4"), *_tone(4)],
           [*_X264, "-bf", "2", "-g", "50", "-c:a", "aac"], recut=["-ss", "1.3"]),
    Source("neg_cts", "B-pyramid with negative composition offsets (ctts v1, no edit "
           "list); audio 1 s longer than the video",
           [*_lavfi("testsrc2=size=320x240:rate=25:duration=3"), *_tone(4)],
           [*_X264, "-bf", "3", "-x264-params", "b-pyramid=normal", "-g", "25",
            "-c:a", "aac", "-movflags", "+negative_cts_offsets"]),
    Source("audio_short", "B-pyramid; the audio ends 1.5 s before the video",
           [*_lavfi("testsrc2=size=320x240:rate=25:duration=4"), *_tone(2.5)],
           [*_X264, "-bf", "3", "-x264-params", "b-pyramid=normal", "-g", "25",
            "-c:a", "aac"]),
    Source("hi422p10", "10-bit 4:2:2 H.264 (High 4:2:2)",
           [*_lavfi("testsrc2=size=320x240:rate=25:duration=3,format=yuv422p10le"),
            *_tone(3)],
           [*_X264, "-profile:v", "high422", "-bf", "2", "-g", "25", "-c:a", "aac",
            "-shortest"]),
    Source("portrait", "a phone held upright: 320x240 pixels shown turned 90 degrees",
           [*_lavfi("testsrc2=size=320x240:rate=30:duration=3"), *_tone(3)],
           [*_X264, "-bf", "2", "-g", "30", "-c:a", "aac", "-shortest"], patch=_portrait),
]}


def make_source(name: str, folder: Path) -> Path:
    s = SOURCES[name]
    out = folder / f"{name}{s.ext}"
    first = out if s.recut is None else folder / f"{name}.full{s.ext}"
    run = [FFMPEG, "-nostdin", "-v", "error", "-y"]
    subprocess.run([*run, *s.inputs, *s.args, str(first)], check=True, timeout=120)
    if s.recut is not None:
        subprocess.run([*run, *s.recut, "-i", str(first), "-map", "0", "-c", "copy", str(out)],
                       check=True, timeout=120)
        first.unlink()
    if s.patch is not None:
        s.patch(out)
    return out


def media_info(path: Path) -> MediaInfo:
    return probe(ffmpeg_info(FFMPEG), str(path))


def crashes_on(ffmpeg: str, path: Path) -> bool:
    """Whether this ffmpeg build dies on opening the file (imageio-ffmpeg's static 7.0.2
    does on any MPEG-TS): a fault of the binary, which swarm reports but cannot mend."""
    res = subprocess.run([ffmpeg, "-nostdin", "-v", "quiet", "-i", str(path)],
                         capture_output=True, timeout=60, check=False)
    return res.returncode < 0


def decode_errors(path: Path, ffmpeg: str = FFMPEG) -> str:
    """What `ffmpeg -v error -i OUT -f null -` prints: the promise is nothing.

    The frames are passed through in the file's own time base: by default ffmpeg would
    round them onto 1/(guessed frame rate), and a file whose rate changes (rate_switch, the
    source as much as the output) then draws "non monotonically increasing dts" from the
    null muxer, a complaint about that rounding and not about the file.
    """
    tb = media_info(path).video.time_base
    res = subprocess.run([ffmpeg, "-nostdin", "-v", "error", "-i", str(path),
                          "-fps_mode", "passthrough",
                          "-enc_time_base:v", f"{tb.numerator}/{tb.denominator}",
                          "-f", "null", "-"],
                         capture_output=True, text=True, timeout=120)
    return res.stderr + ("" if res.returncode == 0 else f"exit {res.returncode}")


def decoded_times(path: Path) -> list[float]:
    """Every frame the decoder shows, in seconds from the first: what a player presents,
    found without the probe (which lists packets, and which the outputs are checked by)."""
    tb = media_info(path).video.time_base
    res = subprocess.run(
        [FFMPEG, "-nostdin", "-v", "error", "-i", str(path), "-map", "0:v:0",
         "-fps_mode", "passthrough", "-enc_time_base:v", f"{tb.numerator}/{tb.denominator}",
         "-c:v", "wrapped_avframe", "-f", "framecrc", "-"],
        capture_output=True, text=True, timeout=120, check=True)
    pts = sorted(int(line.split(",")[2]) for line in res.stdout.splitlines()
                 if line and not line.startswith("#"))
    return [float((p - pts[0]) * tb) for p in pts]


def min_psnr(source: Path, output: Path, width: int, height: int) -> float:
    """Lowest per-frame PSNR of output against the source scaled the same way.

    A frame shifted by one position in a moving test pattern scores far below a correct
    one, so this catches an off-by-one cut that timestamps alone (CFR) cannot.
    """
    graph = (f"[0:v]scale={width}:{height}:flags=bicubic,setsar=1,format=yuv420p,"
             "setpts=PTS-STARTPTS[a];[1:v]format=yuv420p,setpts=PTS-STARTPTS[b];[a][b]psnr")
    res = subprocess.run(
        [FFMPEG, "-nostdin", "-hide_banner", "-i", str(source), "-i", str(output),
         "-lavfi", graph, "-fps_mode", "passthrough", "-f", "null", "-"],
        capture_output=True, text=True, timeout=120, check=True)
    m = re.search(r"PSNR y:.* min:([\d.]+|inf)", res.stderr)
    assert m, res.stderr[-500:]
    return float("inf") if m.group(1) == "inf" else float(m.group(1))


def sound_span(path: Path) -> tuple[float, float]:
    """When the tone is first and last heard, from the decoded audio (seconds).

    Stream start times include encoder priming that players skip, which differs between
    encoders; what a listener hears is the content, so A/V sync is checked on it.
    """
    res = subprocess.run(
        [FFMPEG, "-nostdin", "-hide_banner", "-i", str(path), "-map", "0:a:0",
         "-af", "aresample=async=1:first_pts=0,aformat=channel_layouts=mono,"
         "silencedetect=noise=-40dB:duration=0.01", "-f", "null", "-"],
        capture_output=True, text=True, timeout=120, check=True)
    ends = [float(x) for x in re.findall(r"silence_end: ([\d.]+)", res.stderr)]
    starts = [float(x) for x in re.findall(r"silence_start: ([\d.]+)", res.stderr)]
    m = re.search(r"time=(\d+):(\d+):([\d.]+)", res.stderr)
    assert m, res.stderr[-300:]
    total = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    onset = ends[0] if starts and starts[0] < 0.005 and ends else 0.0
    tail_start = starts[-1] if starts and (not ends or starts[-1] > ends[-1]) else total
    return onset, tail_start
