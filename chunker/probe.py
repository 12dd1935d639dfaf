"""Probe a media file with ffmpeg itself: every video frame's timestamp, keyframes, audio span.

Why ffmpeg and not PyAV: the bundled ffmpeg has no ffprobe, and the frame list we plan with
must be the one the encoding ffmpeg will see. PyAV links its own libavformat, whose version
(and edit-list and timestamp handling) can differ from the binary that encodes; one binary for
both removes that class of mismatch and a 30+ MB dependency. The cost is one demux pass
(``-c copy -f framecrc``), measured at well under a second for 30 s of 1080p (see README).

``parse_framecrc`` is pure so that tests can feed it text.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
from dataclasses import dataclass, field
from fractions import Fraction

from swarm.errors import ProbeError

from .streams import StreamDump, StreamInfo, parse_stream_dump
from .tools import FFmpeg

__all__ = [
    "AudioInfo",
    "MediaInfo",
    "StreamInfo",
    "VideoInfo",
    "check_probe_run",
    "input_size",
    "interpret_probe",
    "parse_framecrc",
    "probe",
    "probe_argv",
]

# A probe reads packet headers only; minutes of 4K still finish well inside this.
PROBE_TIMEOUT_S = 300.0

_LAYOUT_CHANNELS = {
    "mono": 1, "stereo": 2, "2.1": 3, "3.0": 3, "3.0(back)": 3, "4.0": 4, "quad": 4,
    "quad(side)": 4, "3.1": 4, "5.0": 5, "5.0(side)": 5, "4.1": 5, "5.1": 6, "5.1(side)": 6,
    "6.0": 6, "6.0(front)": 6, "hexagonal": 6, "6.1": 7, "6.1(back)": 7, "6.1(front)": 7,
    "7.0": 7, "7.0(front)": 7, "7.1": 8, "7.1(wide)": 8, "7.1(wide-side)": 8, "octagonal": 8,
    "downmix": 2,
}


@dataclass(frozen=True, slots=True)
class VideoInfo:
    codec: str
    width: int
    height: int
    sar: Fraction
    rotation: int  # degrees clockwise the player turns the picture: 0, 90, 180, 270
    time_base: Fraction
    pts: tuple[int, ...]  # every frame, in presentation order, in time_base units
    keyframes: tuple[int, ...]  # indices into pts of frames flagged as keyframes
    last_duration: int  # duration of the last frame in time_base units (0 if unknown)
    reorder: int = 0  # most that a frame's pts runs ahead of its dts (B-frames), time_base units

    @property
    def frames(self) -> int:
        return len(self.pts)

    def seconds(self, i: int) -> float:
        return float(self.pts[i] * self.time_base)

    @property
    def start_s(self) -> float:
        return self.seconds(0)

    @property
    def end_s(self) -> float:
        return float((self.pts[-1] + self.last_duration) * self.time_base)

    @property
    def display_size(self) -> tuple[float, float]:
        """Width and height as shown: SAR applied, rotation applied."""
        w = self.width * float(self.sar or 1)
        h = float(self.height)
        return (h, w) if self.rotation in (90, 270) else (w, h)


@dataclass(frozen=True, slots=True)
class AudioInfo:
    track: int  # which audio track of the file (ffmpeg's 0:a:N)
    codec: str
    channels: int
    sample_rate: int
    time_base: Fraction
    start: int
    end: int  # pts + duration of the last packet

    @property
    def start_s(self) -> float:
        return float(self.start * self.time_base)

    @property
    def end_s(self) -> float:
        return float(self.end * self.time_base)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True, slots=True)
class MediaInfo:
    path: str
    size: int
    format_start_s: float  # the container's start time, which ffmpeg's -ss is relative to
    video: VideoInfo
    audio: AudioInfo | None  # the first audio track
    audios: tuple[AudioInfo, ...] = ()  # every audio track that holds packets, in order
    dump: StreamDump = field(default_factory=StreamDump)  # every stream, chapter and global tag
    # -ss lands on the keyframe at or before its target (the container has a keyframe index);
    # otherwise it lands on any frame, by bisecting timestamps. See chunker/plan.py.
    keyframe_seek: bool = True

    @property
    def duration_s(self) -> float:
        return self.video.end_s - self.video.start_s

    @property
    def streams(self) -> tuple[StreamInfo, ...]:
        return self.dump.streams

    def audio_stream(self, audio: AudioInfo) -> StreamInfo | None:
        """The stream (language, title, dispositions) an audio track was read from."""
        tracks = self.dump.of_kind("audio")
        return tracks[audio.track] if audio.track < len(tracks) else None


@dataclass(slots=True)
class _Stream:
    media_type: str = ""
    codec: str = ""
    tb: Fraction = Fraction(1, 1)
    width: int = 0
    height: int = 0
    sar: Fraction = Fraction(1, 1)
    sample_rate: int = 0
    channels: int = 0
    packets: list[tuple[int, int, bool]] | None = None  # (pts, duration, key)
    reorder: int = 0  # max(pts - dts) over the packets


def _fraction(text: str) -> Fraction:
    num, _, den = text.strip().partition("/")
    n, d = int(num), int(den or 1)
    return Fraction(n, d) if d else Fraction(0)


# AV_PKT_FLAG_DISCARD: the decoder drops the frame after decoding it.
_DISCARD = 0x4
# A timestamp this far from zero is AV_NOPTS_VALUE (-2^63) printed as a number.
_NOPTS_LIMIT = 1 << 62


def parse_framecrc(text: str) -> dict[int, _Stream]:
    """Parse ffmpeg's framecrc muxer output (headers, then one line per packet)."""
    streams: dict[int, _Stream] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            header, sep, value = line[1:].partition(":")
            if not sep:
                continue
            name, _, idx = header.rpartition(" ")
            if not idx.isdigit():
                continue
            st = streams.setdefault(int(idx), _Stream(packets=[]))
            value = value.strip()
            if name == "tb":
                st.tb = _fraction(value)
            elif name == "media_type":
                st.media_type = value
            elif name == "codec_id":
                st.codec = value
            elif name == "dimensions":
                w, _, h = value.partition("x")
                st.width, st.height = int(w), int(h)
            elif name == "sar":
                st.sar = _fraction(value)
            elif name == "sample_rate":
                st.sample_rate = int(value)
            elif name == "channel_layout_name":
                m = re.match(r"(\d+) channels", value)
                st.channels = int(m.group(1)) if m else _LAYOUT_CHANNELS.get(value, 0)
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 6 or not fields[0].isdigit():
            continue
        st = streams.setdefault(int(fields[0]), _Stream(packets=[]))
        # Flags are printed only when they differ from "keyframe" (F=0x1).
        flags = int(next((f for f in fields[6:] if f.startswith("F=")), "F=0x1")[2:], 16)
        if flags & _DISCARD and st.media_type == "video":
            # Decoded only as a reference and never shown: frames before an mp4 edit list's
            # start (a stream-copy cut inside a GOP). Counting them planned frames that no
            # chunk can produce, and put the hidden frames into the output.
            continue
        key = bool(flags & 1)
        assert st.packets is not None
        dts, pts = int(fields[1]), int(fields[2])
        if abs(dts) < _NOPTS_LIMIT and abs(pts) < _NOPTS_LIMIT:
            st.reorder = max(st.reorder, pts - dts)
        st.packets.append((pts, int(fields[3]), key))
    return streams


_FORMAT = re.compile(r"Input #0, (.+?), from '")
# Demuxers of single pictures: image2 (a file named .jpg, .bmp, .tiff ...), *_pipe (probed by
# content: png_pipe, jpeg_pipe, webp_pipe ...).
_IMAGE_FORMATS = ("image2",)


def _still_image(path: str, codec: str, err: str) -> str:
    """Why a one-frame input without sound is refused: a photo, or a video of one frame,
    gives nothing to split and a 1-frame "video" nobody wanted. One picture over a sound
    track (some music videos) is kept: its sound is worth encoding. An animated GIF, APNG or
    an MJPEG camera clip has many frames and is a video like any other."""
    m = _FORMAT.search(err)
    fmt = m.group(1) if m else ""
    if fmt in _IMAGE_FORMATS or fmt.endswith("_pipe"):
        kind = {"mjpeg": "jpeg"}.get(codec, codec)
        return f"{path}: a still image ({kind}), not a video"
    return f"{path}: only one video frame ({codec}); a still image is not a video to encode"


_ROTATION = re.compile(r"rotation of (-?[\d.]+) degrees")
# Demuxers whose seek uses an index of real keyframes (mov/mp4 sync samples, Matroska cues
# or clusters, NUT syncpoints, AVI idx1). MPEG-TS and PS bisect on timestamps and mark every
# packet a keyframe in the index they build ("FIXME keyframe?" in libavformat/mpegts.c).
_KEYFRAME_SEEK = frozenset({"mov", "matroska", "nut", "avi"})
_START = re.compile(r"Duration: [^,]+, start: (-?[\d.]+)")
_CHANNELS = re.compile(r"Audio: .*?, \d+ Hz, ([^,]+),")


def probe_argv(ffmpeg: FFmpeg, path: str, *, audio: bool = True) -> list[str]:
    """The demux-only pass: packet timestamps and flags, no decoding."""
    # Capital V: a cover picture in an audio file is not a video stream. Every audio track
    # is listed: each is kept, and its span is checked, on its own.
    return [
        ffmpeg.path, "-nostdin", "-hide_banner", "-loglevel", "level+info",
        "-i", path, "-map", "0:V:0?", *(["-map", "0:a?"] if audio else []),
        "-c", "copy", "-f", "framecrc", "-",
    ]


def check_probe_run(path: str, returncode: int, stderr: str) -> None:
    """Turn a failed or noisy probe run into one clear ProbeError line."""
    if returncode < 0:
        # Killed by a signal: the binary's fault, not the file's. imageio-ffmpeg's static
        # 7.0.2 dies so on opening any MPEG-TS (in reading its service table, the SDT).
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        raise ProbeError(f"{path}: ffmpeg crashed reading it ({name}); another ffmpeg build "
                         "may read it (set SWARM_FFMPEG)")
    if returncode != 0:
        raise ProbeError(f"{path}: not a readable video ({_first_error(stderr)})")
    errors = [ln for ln in stderr.splitlines() if "[error]" in ln or "[fatal]" in ln]
    if errors:
        raise ProbeError(f"{path}: damaged or truncated ({_clean(errors[0])})")


def _clean(line: str) -> str:
    # Drop ffmpeg's "[in#0 @ 0x55...]" and "[error]" prefixes; keep the message.
    return re.sub(r"\[[^\]]*\]\s*", "", line).strip()


def _first_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if "[error]" in ln or "[fatal]" in ln]
    if lines:
        return _clean(lines[0])
    return _clean(err.strip().splitlines()[-1]) if err.strip() else "no output"


def probe(ffmpeg: FFmpeg, path: str) -> MediaInfo:
    """Blocking probe, for scripts and tests; the node uses peer.media.probe."""
    size = input_size(path)
    try:
        proc = subprocess.run(probe_argv(ffmpeg, path), capture_output=True,
                              timeout=PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ProbeError(f"{path}: probing took longer than {PROBE_TIMEOUT_S:.0f} s") from exc
    err = proc.stderr.decode("utf-8", "replace")
    check_probe_run(path, proc.returncode, err)
    return interpret_probe(path, size, proc.stdout.decode("utf-8", "replace"), err)


def input_size(path: str) -> int:
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise ProbeError(f"{path}: {exc.strerror}") from exc
    if size == 0:
        raise ProbeError(f"{path}: empty file")
    return size


def _priming_end(format_start_s: float, first_duration: int, tb: Fraction) -> int:
    """Where an audio track's priming ends in the probe's (start-shifted) time base."""
    if 0 < -format_start_s <= float(first_duration * tb):
        return math.ceil(-format_start_s / tb)
    return 0


def interpret_probe(path: str, size: int, framecrc: str, err: str) -> MediaInfo:
    """Build MediaInfo from the probe pass's output; raises ProbeError if it is no video."""
    streams = parse_framecrc(framecrc)
    video = next((s for s in streams.values() if s.media_type == "video"), None)
    if video is None or not video.packets:
        raise ProbeError(f"{path}: no video stream")
    if video.width <= 0 or video.height <= 0:
        raise ProbeError(f"{path}: video stream has no picture size")
    packets = sorted(video.packets)
    audio = next((s for s in streams.values() if s.media_type == "audio"), None)
    if len(packets) == 1 and (audio is None or not audio.packets):
        raise ProbeError(_still_image(path, video.codec, err))
    pts = tuple(p for p, _, _ in packets)
    if len(set(pts)) != len(pts):
        raise ProbeError(f"{path}: video frames with duplicate timestamps are not supported")
    keyframes = tuple(i for i, (_, _, key) in enumerate(packets) if key)
    if not keyframes or keyframes[0] != 0:
        # A stream whose first presented frame is not a keyframe still decodes from the first
        # keyframe in decode order; treating frame 0 as a cut point keeps planning simple.
        keyframes = (0, *[k for k in keyframes if k != 0])
    m = _ROTATION.search(err)
    rotation = round(-float(m.group(1))) % 360 if m else 0
    if rotation not in (0, 90, 180, 270):
        rotation = 0
    m = _START.search(err)
    # Without a start time ffmpeg subtracts nothing, from the probe's timestamps or from -ss.
    format_start = float(m.group(1)) if m else 0.0
    m = _FORMAT.search(err)
    keyframe_seek = m is not None and m.group(1).split(",")[0] in _KEYFRAME_SEEK
    vinfo = VideoInfo(
        codec=video.codec, width=video.width, height=video.height, sar=video.sar or Fraction(1),
        rotation=rotation, time_base=video.tb, pts=pts, keyframes=keyframes,
        last_duration=packets[-1][1], reorder=video.reorder,
    )
    dump = parse_stream_dump(err)
    layouts = [st.layout for st in dump.of_kind("audio")]
    # The framecrc lists the video, then the audio tracks in the file's order.
    audios: list[AudioInfo] = []
    tracks = [st for _, st in sorted(streams.items()) if st.media_type == "audio"]
    for track, audio in enumerate(tracks):
        if not audio.packets:
            continue
        channels = audio.channels
        if not channels:
            layout = layouts[track] if track < len(layouts) else ""
            if not layout:
                m = _CHANNELS.search(err)
                layout = m.group(1).strip() if m else ""
            channels = _LAYOUT_CHANNELS.get(layout, 2)
        apk = sorted(audio.packets)
        audios.append(AudioInfo(
            track=track, codec=audio.codec, channels=channels, sample_rate=audio.sample_rate,
            # A negative first pts is encoder priming that players skip, not early audio.
            # 5.1 and 7.0 take Matroska's start time from that priming (-0.023 s, where 9.0
            # reads 0) and shift the listing by it: a start no earlier than one packet of
            # this track is still its priming.
            time_base=audio.tb, start=max(apk[0][0], _priming_end(format_start, apk[0][1],
                                                                  audio.tb)),
            end=apk[-1][0] + apk[-1][1],
        ))
    return MediaInfo(path=path, size=size, format_start_s=format_start, video=vinfo,
                     audio=audios[0] if audios else None, audios=tuple(audios), dump=dump,
                     keyframe_seek=keyframe_seek)
