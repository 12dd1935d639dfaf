"""Encoding profiles as validated data.

A profile is a TOML file (the built-in ones sit beside this module). The same fields travel
to peers in an invite, flattened to ``video_*`` / ``audio_*`` keys; ``Profile.from_mapping``
validates both forms alike, so a peer builds its ffmpeg arguments only from values that passed
the allow-lists and ranges below. A bad field raises ProfileError naming the field.
"""

from __future__ import annotations

import math
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from swarm.errors import ProfileError

__all__ = ["MAX_RUNGS", "AudioSpec", "Profile", "Rung", "VideoSpec", "builtin_names", "fit_box",
           "ladder_order", "load_profile", "parse_rung"]

VIDEO_CODECS = ("libx264", "libx265", "libsvtav1")
AUDIO_CODECS = ("aac", "ac3", "libopus")
X26X_PRESETS = (
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
    "veryslow", "placebo",
)
H264_PROFILES = ("baseline", "main", "high")
H265_PROFILES = ("main",)
# H.264 (A.3) and H.265 (A.4) level names; a peer passes only one of these to -level.
LEVELS = ("3.0", "3.1", "3.2", "4.0", "4.1", "4.2", "5.0", "5.1", "5.2", "6.0", "6.1", "6.2")
SAMPLE_RATES = (22050, 32000, 44100, 48000)
# AC-3 allows at most 5.1 and these rates (ATSC A/52); Opus resamples to 48 kHz internally.
AC3_RATES = (32000, 44100, 48000)
MAX_BOX = 8192  # 8K; larger boxes are almost certainly typos
# The built-in profiles are about 400 bytes; 64 KiB leaves room for any amount of comments,
# and a file larger than that (a video passed as -p by mistake) is refused unread.
MAX_PROFILE_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class VideoSpec:
    codec: str
    width: int
    height: int
    preset: str  # x264/x265 preset name, or SVT-AV1 preset number as text
    profile: str = ""  # H.264/H.265 profile; "" for AV1
    level: str = ""
    bitrate_k: int = 0  # target; 0 means quality-targeted (crf)
    maxrate_k: int = 0
    bufsize_k: int = 0
    crf: float = 0.0
    gop_s: float = 2.0  # keyframe interval inside a chunk (every chunk also starts with one)


@dataclass(frozen=True, slots=True)
class AudioSpec:
    codec: str
    bitrate_k: int
    sample_rate: int
    channels: int


@dataclass(frozen=True, slots=True)
class Rung:
    """One rendition of a ladder: its short side, and its rate control (all zero: the
    profile's own, an average bitrate scaled by the rung's pixels). ``width`` is 0 in a
    profile and set from the source's aspect when a job is planned."""

    height: int
    width: int = 0
    bitrate_k: int = 0
    maxrate_k: int = 0
    bufsize_k: int = 0
    crf: float = 0.0

    def wire(self) -> str:
        """The invite's form: ``1280x720:crf=23`` or ``1280x720:b=2000:m=3000:s=4000``."""
        rate = (f"b={self.bitrate_k}:m={self.maxrate_k}:s={self.bufsize_k}" if self.bitrate_k
                else f"crf={self.crf:g}")
        return f"{self.width}x{self.height}:{rate}"


_RUNG = re.compile(r"([1-9][0-9]{1,3})x([1-9][0-9]{1,3}):(?:crf=([0-9]{1,2}(?:\.[0-9]{1,3})?)"
                   r"|b=([1-9][0-9]{0,5}):m=([1-9][0-9]{0,5}):s=([1-9][0-9]{0,6}))")


def parse_rung(text: str, codec: str) -> Rung:
    """A rung as ``Rung.wire`` writes it, every number checked as a profile's would be."""
    m = _RUNG.fullmatch(text)
    if m is None:
        raise ProfileError(f"ladder rung {text[:40]!r}: expected WxH:crf=N or WxH:b=K:m=K:s=K")
    w, h = int(m.group(1)), int(m.group(2))
    if w % 2 or h % 2 or not 16 <= min(w, h) or max(w, h) > MAX_BOX:
        raise ProfileError(f"ladder rung {text}: sides must be even, 16 to {MAX_BOX}")
    if m.group(3) is not None:
        crf = float(m.group(3))
        if not 0 < crf <= (63 if codec == "libsvtav1" else 51):
            raise ProfileError(f"ladder rung {text}: crf out of range")
        return Rung(h, w, crf=crf)
    b, mx, buf = int(m.group(4)), int(m.group(5)), int(m.group(6))
    if b > 400_000 or mx > 800_000 or buf > 1_600_000 or mx < b:
        raise ProfileError(f"ladder rung {text}: rates out of range")
    return Rung(h, w, bitrate_k=b, maxrate_k=mx, bufsize_k=buf)


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    description: str
    video: VideoSpec
    audio: AudioSpec
    # Renditions made from the same chunks (``[[ladder]]`` tables; ``--ladder``), tallest
    # first. Not part of ``to_wire``: an invite carries the job's rungs, sized, by itself.
    ladder: tuple[Rung, ...] = ()

    @property
    def rate_label(self) -> str:
        v = self.video
        return f"{v.bitrate_k}k" if v.bitrate_k else f"crf {v.crf:g}"

    def to_wire(self) -> dict[str, str | int | float | bool]:
        """Flat form for invites: keys [a-z0-9_], scalar values."""
        out: dict[str, str | int | float | bool] = {"name": self.name}
        out.update({f"video_{k}": v for k, v in asdict(self.video).items()})
        out.update({f"audio_{k}": v for k, v in asdict(self.audio).items()})
        return out

    def rung_rate(self, rung: Rung) -> Rung:
        """``rung`` with its rate control set: its own, or the profile's (an average
        bitrate scaled by the rung's pixels against the profile's box)."""
        if rung.bitrate_k or rung.crf:
            return rung
        v = self.video
        if not v.bitrate_k:
            return replace(rung, crf=v.crf)
        share = rung.width * rung.height / (v.width * v.height) if rung.width else 1.0
        return replace(rung, bitrate_k=max(1, round(v.bitrate_k * share)),
                       maxrate_k=max(1, round(v.maxrate_k * share)),
                       bufsize_k=max(1, round(v.bufsize_k * share)))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "profile") -> Profile:
        """Validate a nested (TOML) or flat (wire) mapping; raises ProfileError."""
        if "video" in data or "audio" in data:
            unknown = set(data) - {"name", "description", "video", "audio", "ladder"}
            video = data.get("video", {})
            audio = data.get("audio", {})
        else:
            video = {k[6:]: v for k, v in data.items() if k.startswith("video_")}
            audio = {k[6:]: v for k, v in data.items() if k.startswith("audio_")}
            unknown = {k for k in data if not k.startswith(("video_", "audio_"))} - {
                "name", "description"}
        if unknown:
            raise ProfileError(f"{source}: unknown field {sorted(unknown)[0]!r}")
        if not isinstance(video, Mapping) or not isinstance(audio, Mapping):
            raise ProfileError(f"{source}: [video] and [audio] must be tables")
        name = data.get("name", "")
        if not isinstance(name, str) or not (1 <= len(name) <= 32) or not all(
            c.isalnum() or c in "-_." for c in name
        ):
            raise ProfileError(f"{source}: name must be 1-32 letters, digits, '-', '_' or '.'")
        desc = data.get("description", "")
        if not isinstance(desc, str) or len(desc) > 128:
            raise ProfileError(f"{source}: description must be text of at most 128 characters")
        v = _video(video, source)
        return cls(name=name, description=desc, video=v, audio=_audio(audio, source),
                   ladder=_ladder(data.get("ladder", []), v, source))


class _Fields:
    """Reads typed fields from one table and rejects the ones nobody asked for."""

    def __init__(self, table: Mapping[str, Any], prefix: str) -> None:
        self.table = dict(table)
        self.prefix = prefix
        self.seen: set[str] = set()

    def _get(self, key: str, default: Any) -> Any:
        self.seen.add(key)
        return self.table.get(key, default)

    def fail(self, key: str, why: str) -> ProfileError:
        return ProfileError(f"{self.prefix}.{key}: {why}")

    def choice(self, key: str, options: tuple[str, ...], default: str | None = None) -> str:
        value = self._get(key, default)
        if value is None:
            raise self.fail(key, "missing")
        if not isinstance(value, str) or value not in options:
            raise self.fail(key, f"must be one of {', '.join(options)} (got {value!r})")
        return value

    def integer(self, key: str, lo: int, hi: int, default: int | None = None) -> int:
        value = self._get(key, default)
        if value is None:
            raise self.fail(key, "missing")
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self.fail(key, f"must be an integer from {lo} to {hi} (got {value!r})")
        return value

    def number(self, key: str, lo: float, hi: float, default: float | None = None) -> float:
        value = self._get(key, default)
        if value is None:
            raise self.fail(key, "missing")
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not math.isfinite(value) or not lo <= value <= hi):
            raise self.fail(key, f"must be a number from {lo:g} to {hi:g} (got {value!r})")
        return float(value)

    def done(self) -> None:
        extra = set(self.table) - self.seen
        if extra:
            raise self.fail(sorted(extra)[0], "unknown field")


def _video(table: Mapping[str, Any], source: str) -> VideoSpec:
    f = _Fields(table, f"{source}: video")
    codec = f.choice("codec", VIDEO_CODECS)
    width = f.integer("width", 16, MAX_BOX)
    height = f.integer("height", 16, MAX_BOX)
    if codec == "libsvtav1":
        preset = str(f.integer("preset", 0, 13, 8)) if not isinstance(
            table.get("preset"), str) else f.choice("preset", tuple(str(i) for i in range(14)))
        profile, level = "", ""
        f.seen.update({"profile", "level"})
        if table.get("profile") or table.get("level"):
            raise f.fail("profile", "AV1 profiles and levels are chosen by the encoder")
    else:
        preset = f.choice("preset", X26X_PRESETS, "medium")
        profile = f.choice("profile", H264_PROFILES if codec == "libx264" else H265_PROFILES,
                           "high" if codec == "libx264" else "main")
        level = f.choice("level", LEVELS, "4.1")
    bitrate = f.integer("bitrate_k", 0, 400_000, 0)
    crf_max = 63 if codec == "libsvtav1" else 51
    crf = f.number("crf", 0, crf_max, 0)
    if bool(bitrate) == bool(crf):
        raise f.fail("bitrate_k", "set exactly one of bitrate_k and crf")
    maxrate = f.integer("maxrate_k", 0, 800_000, 0)
    bufsize = f.integer("bufsize_k", 0, 1_600_000, 0)
    if bitrate:
        # Without a VBV constraint every chunk drifts around the average on its own.
        maxrate = maxrate or bitrate * 3 // 2
        bufsize = bufsize or bitrate * 2
        if maxrate < bitrate:
            raise f.fail("maxrate_k", "must be at least bitrate_k")
    gop = f.number("gop_s", 0.1, 20.0, 2.0)
    f.done()
    return VideoSpec(codec=codec, width=width, height=height, preset=preset, profile=profile,
                     level=level, bitrate_k=bitrate, maxrate_k=maxrate, bufsize_k=bufsize,
                     crf=crf, gop_s=gop)


MAX_RUNGS = 8  # a ladder of more renditions than this is a typo, and 8 encoders per chunk


def _ladder(tables: Any, video: VideoSpec, source: str) -> tuple[Rung, ...]:
    """``[[ladder]]`` tables: ``height`` and optionally their own ``crf`` or ``bitrate_k``
    (``maxrate_k``, ``bufsize_k``); tallest first, heights distinct."""
    if not isinstance(tables, list) or len(tables) > MAX_RUNGS:
        raise ProfileError(f"{source}: ladder must be at most {MAX_RUNGS} [[ladder]] tables")
    rungs = []
    for i, t in enumerate(tables):
        if not isinstance(t, Mapping):
            raise ProfileError(f"{source}: ladder[{i}] must be a table")
        f = _Fields(t, f"{source}: ladder[{i}]")
        h = f.integer("height", 16, MAX_BOX)
        crf = f.number("crf", 0, 63 if video.codec == "libsvtav1" else 51, 0)
        b = f.integer("bitrate_k", 0, 400_000, 0)
        mx = f.integer("maxrate_k", 0, 800_000, 0)
        buf = f.integer("bufsize_k", 0, 1_600_000, 0)
        f.done()
        if h % 2:
            raise f.fail("height", "must be even")
        if b and crf:
            raise f.fail("bitrate_k", "set at most one of bitrate_k and crf")
        if b:
            mx, buf = mx or b * 3 // 2, buf or b * 2
            if mx < b:
                raise f.fail("maxrate_k", "must be at least bitrate_k")
        rungs.append(Rung(h, bitrate_k=b, maxrate_k=mx if b else 0, bufsize_k=buf if b else 0,
                          crf=crf))
    return ladder_order(rungs, source)


def ladder_order(rungs: list[Rung], source: str) -> tuple[Rung, ...]:
    heights = [r.height for r in rungs]
    if len(set(heights)) != len(heights):
        raise ProfileError(f"{source}: ladder heights must differ")
    return tuple(sorted(rungs, key=lambda r: -r.height))


def _audio(table: Mapping[str, Any], source: str) -> AudioSpec:
    f = _Fields(table, f"{source}: audio")
    codec = f.choice("codec", AUDIO_CODECS)
    bitrate = f.integer("bitrate_k", 16, 1024)
    if codec == "ac3":
        rate = f.integer("sample_rate", 32000, 48000)
        if rate not in AC3_RATES:
            raise f.fail("sample_rate", f"AC-3 needs one of {AC3_RATES}")
        channels = f.integer("channels", 1, 6)
        if bitrate > 640:
            raise f.fail("bitrate_k", "AC-3 allows at most 640")
    else:
        rate = f.integer("sample_rate", 8000, 48000, 48000)
        if rate not in SAMPLE_RATES:
            raise f.fail("sample_rate", f"must be one of {SAMPLE_RATES}")
        channels = f.integer("channels", 1, 8)
    if codec == "libopus" and rate != 48000:
        raise f.fail("sample_rate", "Opus runs at 48000")
    f.done()
    return AudioSpec(codec=codec, bitrate_k=bitrate, sample_rate=rate, channels=channels)


def builtin_names() -> list[str]:
    files = resources.files(__package__)
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".toml"))


def _read_profile_file(spec: str) -> str:
    """The text of a profile file: a regular file of at most MAX_PROFILE_BYTES, in UTF-8.

    Opened without blocking and checked on the open descriptor, so a FIFO or a device
    (``-p /dev/zero``) is refused instead of read forever, whatever the path pointed to
    when it was named.
    """
    try:
        fd = os.open(spec, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ProfileError(f"profile {spec}: {exc.strerror or exc}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ProfileError(f"profile {spec}: not a regular file")
        data = b""
        while len(data) <= MAX_PROFILE_BYTES:
            block = os.read(fd, MAX_PROFILE_BYTES + 1 - len(data))
            if not block:
                break
            data += block
    except OSError as exc:
        raise ProfileError(f"profile {spec}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    if len(data) > MAX_PROFILE_BYTES:
        raise ProfileError(f"profile {spec}: larger than {MAX_PROFILE_BYTES // 1024} KiB; "
                           "a profile is a short TOML file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProfileError(f"profile {spec}: not UTF-8 text (byte 0x{data[exc.start]:02x} "
                           f"at offset {exc.start})") from exc


def load_profile(spec: str) -> Profile:
    """A built-in name (``hd``) or a path to a TOML file (``./mine.toml``)."""
    if spec.endswith(".toml") or "/" in spec:
        path = Path(spec)
        text = _read_profile_file(spec)
        source = str(path)
    else:
        if spec not in builtin_names():
            raise ProfileError(
                f"unknown profile {spec!r}; built-in ones: {', '.join(builtin_names())}")
        text = resources.files(__package__).joinpath(f"{spec}.toml").read_text("utf-8")
        source = spec
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{source}: not valid TOML ({exc})") from exc
    if "name" not in data:
        data["name"] = Path(source).stem
    return Profile.from_mapping(data, source)


def _even(x: float) -> int:
    return max(2, round(x / 2) * 2)


def fit_box(display_w: float, display_h: float, box_w: int, box_h: int,
            upscale: bool = False) -> tuple[int, int]:
    """Output size for a picture shown at display_w x display_h.

    The box bounds the long and the short side, whatever the orientation (a 720p profile
    gives 720x1280 for portrait phone video); the aspect ratio is kept, pixels are square,
    sides even, and nothing is enlarged unless ``upscale``.
    """
    long_box, short_box = max(box_w, box_h), min(box_w, box_h)
    if display_w >= display_h:
        bw, bh = long_box, short_box
    else:
        bw, bh = short_box, long_box
    scale = min(bw / display_w, bh / display_h)
    if not upscale:
        scale = min(scale, 1.0)
    w, h = _even(display_w * scale), _even(display_h * scale)
    # Rounding to even may step past the box, or past an odd source side, by one pixel.
    lim_w, lim_h = bw, bh
    if not upscale:
        lim_w, lim_h = min(bw, int(display_w)), min(bh, int(display_h))
    return max(2, min(w, lim_w - lim_w % 2)), max(2, min(h, lim_h - lim_h % 2))
