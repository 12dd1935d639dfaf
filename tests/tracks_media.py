"""A source with every kind of track, made at test time: two audio tracks (languages,
titles, the second one default), a text and an image subtitle, a font attachment, chapters
and the file's title and creation time.

ffmpeg cannot draw an image subtitle from text (its encoders go text to text or bitmap to
bitmap), so the image one is a Blu-ray PGS stream written here: a few segments per cue,
as in the HDMV spec (presentation, window, palette, object, end), each a white bar.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

from media import FFMPEG

SRT = """1
00:00:00,500 --> 00:00:01,500
Hello

2
00:00:02,000 --> 00:00:03,000
World
"""

FFMETADATA = """;FFMETADATA1
title=Tracks test; with = and #
creation_time=2024-05-06T07:08:09.000000Z

[CHAPTER]
TIMEBASE=1/1000
START=0
END=2000
title=Opening

[CHAPTER]
TIMEBASE=1/1000
START=2000
END=4000
title=Ending
"""
TITLE = "Tracks test; with = and #"
CREATION = "2024-05-06T07:08:09"
AUDIO = [("eng", "Main mix", ()), ("fre", "Commentaire", ("default",))]


def _segment(kind: int, data: bytes, at_s: float) -> bytes:
    ticks = round(at_s * 90000)  # PGS clocks run at 90 kHz; pts and dts are equal here
    return b"PG" + struct.pack(">IIBH", ticks, ticks, kind, len(data)) + data


def pgs(cues: list[tuple[float, float]], width: int = 320, height: int = 240) -> bytes:
    """A .sup stream that shows a 100x20 white bar during each (start, end) cue."""
    w, h = 100, 20
    x, y = (width - w) // 2, height - h - 10
    # Each line: one run of w pixels of palette entry 1 (00 11LLLLLL LLLLLLLL CC), then EOL.
    bitmap = bytes([0, 0xC0 | (w >> 8), w & 0xFF, 1, 0, 0]) * h
    window = struct.pack(">BBHHHH", 1, 0, x, y, w, h)
    out = b""
    for n, (start, end) in enumerate(cues):
        show = (struct.pack(">HHBHBBBB", width, height, 0x10, 2 * n, 0x80, 0, 0, 1)
                + struct.pack(">HBBHH", 0, 0, 0, x, y))
        palette = struct.pack(">BB", 0, 0) + bytes([1, 235, 128, 128, 255])
        obj = (struct.pack(">HBB", 0, 0, 0xC0) + (len(bitmap) + 4).to_bytes(3, "big")
               + struct.pack(">HH", w, h) + bitmap)
        out += b"".join(_segment(k, d, start) for k, d in
                        ((0x16, show), (0x17, window), (0x14, palette), (0x15, obj),
                         (0x80, b"")))
        clear = struct.pack(">HHBHBBBB", width, height, 0x10, 2 * n + 1, 0, 0, 0, 0)
        out += b"".join(_segment(k, d, end) for k, d in
                        ((0x16, clear), (0x17, window), (0x80, b"")))
    return out


def make_tracks_source(folder: Path) -> Path:
    """tracks.mkv: video, audio eng + fre, subtitles srt (eng) + PGS (ger), a font."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "subs.srt").write_text(SRT, encoding="utf-8")
    (folder / "subs.sup").write_bytes(pgs([(0.5, 1.5), (2.0, 3.0)]))
    (folder / "meta.txt").write_text(FFMETADATA, encoding="utf-8")
    (folder / "font.ttf").write_bytes(b"\0\1\0\0" + bytes(range(256)) * 4)
    out = folder / "tracks.mkv"
    tags: list[str] = []
    for i, (lang, title, disp) in enumerate(AUDIO):
        tags += [f"-metadata:s:a:{i}", f"language={lang}", f"-metadata:s:a:{i}",
                 f"title={title}", f"-disposition:a:{i}", "+".join(disp) or "0"]
    subprocess.run([
        FFMPEG, "-nostdin", "-v", "error", "-y",
        "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=4",
        "-f", "lavfi", "-i", "sine=frequency=440:duration=4",
        "-f", "lavfi", "-i", "sine=frequency=660:duration=4,aformat=channel_layouts=stereo",
        "-i", str(folder / "subs.srt"), "-i", str(folder / "subs.sup"),
        "-i", str(folder / "meta.txt"),
        "-map", "0:v", "-map", "1:a", "-map", "2:a", "-map", "3:s", "-map", "4:s",
        "-map_metadata", "5", "-map_chapters", "5",
        "-c:v", "libx264", "-preset", "veryfast", "-g", "25", "-c:a", "aac", "-c:s:0", "srt",
        "-c:s:1", "copy", *tags,
        "-metadata:s:s:0", "language=eng", "-metadata:s:s:0", "title=Dialogue",
        "-metadata:s:s:1", "language=ger", "-disposition:s:0", "0", "-disposition:s:1", "0",
        "-attach", str(folder / "font.ttf"), "-metadata:s:t:0",
        "mimetype=application/x-truetype-font", str(out)],
        check=True, timeout=120)
    return out
