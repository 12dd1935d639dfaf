"""Every stream, chapter and global tag of a file, read from ffmpeg's own input dump.

The bundled ffmpeg has no ffprobe, so the probe pass's stderr (``-loglevel level+info``) is
the only place that names every stream. Its layout has shifted between releases, all seen
on captured runs (tests/data/streams-*.txt):
- 5.1 indents a stream's "Metadata:" by 4 spaces, 7.0 by 6; keys are padded to 16 columns,
  so a 16-character key meets its colon ("service_provider: FFmpeg").
- 9.0 lists streams that share a "Stream group" (an mp4 timecode track and its video)
  inside that group, ahead of the others: the dump is not in index order.
- 9.0 prints the encoder name in parentheses after some codecs ("subrip (srt)"), which
  reads like a disposition; only known disposition names count as one.
- Each av_log call gets its "[info] " prefix, but a multi-line tag value continues on lines
  without it (an empty key, then ": more").
- ffmpeg prints at most 255 characters of a tag value per line: longer values arrive cut.

``parse_stream_dump`` is pure so that tests feed it those captures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

__all__ = ["DISPOSITIONS", "Chapter", "StreamDump", "StreamInfo", "parse_stream_dump"]

# ffmpeg's names for dispositions (as -disposition spells them), all known to 5.1. The dump
# prints them with spaces ("hearing impaired"); later releases add a few ("multilayer").
DISPOSITIONS = frozenset({
    "default", "dub", "original", "comment", "lyrics", "karaoke", "forced",
    "hearing_impaired", "visual_impaired", "clean_effects", "attached_pic",
    "timed_thumbnails", "captions", "descriptions", "metadata", "dependent", "still_image",
    "non_diegetic", "multilayer",
})

_KINDS = {"Video": "video", "Audio": "audio", "Subtitle": "subtitle", "Data": "data",
          "Attachment": "attachment", "Unknown": "unknown"}
_PREFIX = re.compile(r"^(?:\[[a-z]+\] )+")
_INPUT = re.compile(r"^Input #(\d+), ")
_END = re.compile(r"^(?:Output #\d+|Stream mapping:)")
_STREAM = re.compile(r"^(\s*)Stream #\d+:(\d+)(?:\[[^\]]*\])?(?:\(([^)]*)\))?: "
                     r"(Video|Audio|Subtitle|Data|Attachment|Unknown): (.*)$")
_CHAPTER = re.compile(r"^\s*Chapter #\d+:\d+: start (-?[\d.]+), end (-?[\d.]+)")
_HEADER = re.compile(r"^(\s*)[A-Z][A-Za-z ]*:\s*$")  # "Metadata:", "Side data:", "Chapters:"
_TAG = re.compile(r"^(\s+)(\S(?:[^:]*\S)?)\s*: ?(.*)$")
_CONTINUED = re.compile(r"^\s+: ?(.*)$")
_CODEC_TAG = re.compile(r"\(([^()/]+?) / 0x[0-9A-Fa-f]+\)")
_PARENS = re.compile(r"\(([a-z ]+)\)")
_LAYOUT = re.compile(r", \d+ Hz, ([^,]+)")

Tags = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class StreamInfo:
    index: int  # the stream's index in the file (ffmpeg's #0:N)
    kind: str  # video, audio, subtitle, data, attachment or unknown
    codec: str  # ffmpeg's codec name: "subrip", "hdmv_pgs_subtitle", "ttf", "none"
    language: str = ""  # as the container says it ("und" in mp4 when unset)
    dispositions: tuple[str, ...] = ()
    tags: Tags = ()
    codec_tag: str = ""  # the container's fourcc when ffmpeg prints it ("tmcd", "text")
    layout: str = ""  # audio channel layout as printed ("stereo", "5.1(side)")

    def tag(self, key: str) -> str:
        low = key.lower()
        return next((v for k, v in self.tags if k.lower() == low), "")

    @property
    def title(self) -> str:
        # mp4 stores a track title as "name" and ffmpeg 9 reads it back under that key.
        return self.tag("title") or self.tag("name")

    @property
    def cover(self) -> bool:
        """A picture attached to the file (album art, a thumbnail), not a video track."""
        return self.kind == "video" and bool({"attached_pic", "timed_thumbnails",
                                              "still_image"} & set(self.dispositions))


@dataclass(frozen=True, slots=True)
class Chapter:
    start_s: float
    end_s: float
    tags: Tags = ()

    @property
    def title(self) -> str:
        return next((v for k, v in self.tags if k.lower() == "title"), "")


@dataclass(frozen=True, slots=True)
class StreamDump:
    streams: tuple[StreamInfo, ...] = ()  # in index order
    chapters: tuple[Chapter, ...] = ()
    tags: Tags = ()  # the file's global metadata

    def of_kind(self, kind: str) -> list[StreamInfo]:
        return [s for s in self.streams if s.kind == kind]


_T = TypeVar("_T", StreamInfo, Chapter, None)


@dataclass(slots=True)
class _Open(Generic[_T]):
    """A stream, chapter or the file itself while its lines are being read."""

    tags: list[tuple[str, str]]
    item: _T  # all but its tags, which follow on later lines (None for the file)


def _stream_info(m: re.Match[str]) -> StreamInfo:
    rest = m.group(5)
    codec = rest.split(",", 1)[0].split(" ", 1)[0]
    tag = _CODEC_TAG.search(rest)
    layout = _LAYOUT.search(rest)
    disps = [d.replace(" ", "_") for d in _PARENS.findall(rest)]
    return StreamInfo(index=int(m.group(2)), kind=_KINDS[m.group(4)], codec=codec,
                      language=m.group(3) or "",
                      dispositions=tuple(d for d in disps if d in DISPOSITIONS),
                      codec_tag=tag.group(1).strip() if tag else "",
                      layout=layout.group(1).strip() if layout else "")


def parse_stream_dump(stderr: str) -> StreamDump:
    """Read input #0's dump from an ffmpeg run's stderr; unknown lines are skipped."""
    file = _Open[None]([], None)
    streams: list[_Open[StreamInfo]] = []
    chapters: list[_Open[Chapter]] = []
    # whose tags the next "Metadata:" block holds
    current: _Open[StreamInfo] | _Open[Chapter] | _Open[None] | None = None
    tags_indent: int | None = None  # indent of the open "Metadata:" line
    inside = False
    for raw in stderr.splitlines():
        line = _PREFIX.sub("", raw.rstrip("\r"))
        if not inside:
            m = _INPUT.match(line)
            if m and m.group(1) == "0":
                inside, current = True, file
            continue
        if _END.match(line) or _INPUT.match(line):
            break
        indent = len(line) - len(line.lstrip(" "))
        if tags_indent is not None and indent > tags_indent and current is not None:
            c = _CONTINUED.match(line)
            if c and current.tags:
                key, value = current.tags[-1]
                current.tags[-1] = (key, f"{value}\n{c.group(1)}")
                continue
            t = _TAG.match(line)
            if t:
                current.tags.append((t.group(2), t.group(3).strip()))
                continue
        tags_indent = None
        if m := _STREAM.match(line):
            stream = _Open([], _stream_info(m))
            streams.append(stream)
            current = stream
        elif m := _CHAPTER.match(line):
            chapter = _Open([], Chapter(start_s=float(m.group(1)), end_s=float(m.group(2))))
            chapters.append(chapter)
            current = chapter
        elif m := _HEADER.match(line):
            if line.strip() == "Metadata:":
                tags_indent = indent
        elif line.lstrip().startswith(("Program ", "No Program", "Stream group")):
            current = None  # a program's or group's own tags are not the file's
    seen: dict[int, StreamInfo] = {}
    for s in streams:
        info = replace(s.item, tags=tuple(s.tags))
        seen.setdefault(info.index, info)  # a stream listed twice (in a group) counts once
    return StreamDump(
        streams=tuple(seen[i] for i in sorted(seen)),
        chapters=tuple(replace(c.item, tags=tuple(c.tags)) for c in chapters),
        tags=tuple(file.tags))
