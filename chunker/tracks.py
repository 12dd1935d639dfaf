"""Which of a source's tracks the output keeps, how, and what it drops and why. Pure.

The video is encoded in chunks; everything else is decided here once per job: every audio
track is encoded once over the whole file (``--audio``), subtitles are copied where the
output container can hold them (``--subtitles``), chapters and the file's tags go along,
and whatever cannot is named with the reason and the option that changes it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .probe import MediaInfo
from .streams import StreamInfo

__all__ = [
    "AUDIO_MODES",
    "SUBTITLE_MODES",
    "Dropped",
    "Kept",
    "TrackPlan",
    "ffmetadata_text",
    "plan_tracks",
]

AUDIO_MODES = ("all", "first", "none")
SUBTITLE_MODES = ("copy", "none")

# Text subtitles each container takes as they are, and the codec the others become there:
# mp4/mov hold only 3GPP timed text (mov_text); Matroska holds neither mov_text nor raw text.
_TEXT = frozenset({"subrip", "ass", "ssa", "webvtt", "mov_text", "text"})
_KEEP_AS = {
    "mp4": {"mov_text": "copy"},
    "mov": {"mov_text": "copy"},
    "matroska": {"subrip": "copy", "ass": "copy", "ssa": "copy", "webvtt": "copy",
                 "dvd_subtitle": "copy", "hdmv_pgs_subtitle": "copy", "dvb_subtitle": "copy"},
}
_TEXT_TARGET = {"mp4": "mov_text", "mov": "mov_text", "matroska": "srt"}
_IMAGE = frozenset({"dvd_subtitle", "hdmv_pgs_subtitle", "dvb_subtitle", "xsub"})
# Global tags the output writes for itself; copying the source's would be wrong there.
_OWN_TAGS = frozenset({"encoder", "major_brand", "minor_version", "compatible_brands",
                       "duration"})
_CONTAINER_NAME = {"mp4": "mp4", "mov": "mov", "matroska": "mkv"}


@dataclass(frozen=True, slots=True)
class Kept:
    """One output track besides the video: where it comes from and how it is written."""

    kind: str  # audio, subtitle or attachment
    track: int  # its number among the source's tracks of its kind (ffmpeg's 0:a:N)
    stream: int  # its index in the source file
    codec: str  # "copy", or the encoder ("srt", "mov_text"; audio: the profile's)
    language: str
    title: str
    dispositions: tuple[str, ...]
    channels: int = 0  # audio: what it is encoded to (never more than the source had)

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "track": self.track + 1, "stream": self.stream,
                "codec": self.codec, "language": self.language, "title": self.title,
                "dispositions": list(self.dispositions),
                **({"channels": self.channels} if self.kind == "audio" else {})}


@dataclass(frozen=True, slots=True)
class Dropped:
    kind: str
    track: int  # 1-based among the source's tracks of its kind, as players number them
    stream: int
    codec: str
    language: str
    title: str
    reason: str  # why it is not in the output
    hint: str  # what keeps it (or silences this), "" if nothing does
    chosen: bool  # dropped because an option asked for it: said in the report only

    @property
    def message(self) -> str:
        what = ", ".join(x for x in (self.codec, self.language if self.language != "und"
                                     else "", f'"{self.title}"' if self.title else "") if x)
        text = f"{self.kind} track {self.track} ({what}) dropped: {self.reason}"
        return f"{text}; {self.hint}" if self.hint else text

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "track": self.track, "stream": self.stream,
                "codec": self.codec, "language": self.language, "title": self.title,
                "reason": self.reason, "hint": self.hint, "chosen": self.chosen,
                "message": self.message}


@dataclass(frozen=True, slots=True)
class TrackPlan:
    audio: tuple[Kept, ...] = ()
    subtitles: tuple[Kept, ...] = ()
    attachments: tuple[Kept, ...] = ()
    chapters: int = 0  # how many chapters go along
    tags: tuple[tuple[str, str], ...] = ()  # the source's global tags that go along
    dropped: tuple[Dropped, ...] = ()

    @property
    def needs_source(self) -> bool:
        """Whether the merge reads streams from the source (beside the encoded audio)."""
        return bool(self.subtitles or self.attachments)

    def as_dict(self) -> dict[str, object]:
        return {"audio": [k.as_dict() for k in self.audio],
                "subtitles": [k.as_dict() for k in self.subtitles],
                "attachments": [k.as_dict() for k in self.attachments],
                "chapters": self.chapters, "tags": dict(self.tags),
                "dropped": [d.as_dict() for d in self.dropped]}


def _kept(st: StreamInfo, kind: str, track: int, codec: str, channels: int = 0) -> Kept:
    return Kept(kind=kind, track=track, stream=st.index, codec=codec, language=st.language,
                title=st.title, dispositions=st.dispositions, channels=channels)


def plan_tracks(info: MediaInfo, container: str, profile_channels: int, audio_codec: str,
                audio: str = "all", subtitles: str = "copy", mkv_name: str = "out.mkv"
                ) -> TrackPlan:
    """Decide every track of ``info`` for an output in ``container`` (mp4, mov, matroska).

    ``mkv_name`` is the output's name with .mkv, for the hint that keeps what mp4 cannot.
    """
    if audio not in AUDIO_MODES:
        raise ValueError(f"audio mode {audio!r}")
    if subtitles not in SUBTITLE_MODES:
        raise ValueError(f"subtitle mode {subtitles!r}")
    box = _CONTAINER_NAME[container]
    dropped: list[Dropped] = []

    def drop(st: StreamInfo, kind: str, track: int, reason: str, hint: str = "",
             chosen: bool = False) -> None:
        codec = st.codec if st.codec != "none" else st.codec_tag or st.codec
        dropped.append(Dropped(kind=kind, track=track + 1, stream=st.index, codec=codec,
                               language=st.language, title=st.title, reason=reason,
                               hint=hint, chosen=chosen))

    # Video: the first real video track is the one encoded; pictures and others go.
    encoded = False
    for n, st in enumerate(info.dump.of_kind("video")):
        if st.cover:
            drop(st, "picture", n, "cover pictures are not carried over")
        elif encoded:
            drop(st, "video", n, "only the first video track is encoded")
        encoded = encoded or not st.cover

    kept_audio: list[Kept] = []
    with_packets = {a.track: a for a in info.audios}
    for n, st in enumerate(info.dump.of_kind("audio")):
        a = with_packets.get(n)
        if audio == "none":
            drop(st, "audio", n, "--audio none", "--audio all keeps it", chosen=True)
        elif audio == "first" and kept_audio:
            drop(st, "audio", n, "--audio first", "--audio all keeps it", chosen=True)
        elif a is None:
            drop(st, "audio", n, "it holds no audio")
        elif st.codec == "none":
            drop(st, "audio", n, "ffmpeg cannot decode it")
        else:
            kept_audio.append(_kept(st, "audio", n, audio_codec,
                                    min(a.channels, profile_channels)))

    kept_subs: list[Kept] = []
    for n, st in enumerate(info.dump.of_kind("subtitle")):
        if subtitles == "none":
            drop(st, "subtitle", n, "--subtitles none", "--subtitles copy keeps it",
                 chosen=True)
            continue
        codec = _KEEP_AS[container].get(st.codec)
        if codec is None and st.codec in _TEXT:
            codec = _TEXT_TARGET[container]
        if codec is not None:
            kept_subs.append(_kept(st, "subtitle", n, codec))
        elif st.codec in _IMAGE and container != "matroska":
            drop(st, "subtitle", n, f"{box} cannot hold image subtitles",
                 f"use -o {mkv_name} to keep it, or --subtitles none to silence this")
        else:
            drop(st, "subtitle", n, f"{box} output cannot hold {st.codec} subtitles",
                 "--subtitles none silences this")

    kept_attached: list[Kept] = []
    for n, st in enumerate(info.dump.of_kind("attachment")):
        if container == "matroska":
            kept_attached.append(_kept(st, "attachment", n, "copy"))
        else:
            name = st.tag("filename")
            drop(st, "attachment", n, f"{box} cannot hold attachments"
                 + (f" ({name})" if name else ""), f"use -o {mkv_name} to keep it")

    chapters = len(info.dump.chapters)
    for n, st in enumerate(info.dump.of_kind("data")):
        if chapters and st.codec_tag == "text":
            continue  # mp4 keeps its chapters in a text track: they go along as chapters
        drop(st, "data", n, "data streams (timecodes, sensor data) are not carried over")
    for n, st in enumerate(info.dump.of_kind("unknown")):
        drop(st, "stream", n, "ffmpeg does not know this kind of stream")

    tags = tuple((k, v) for k, v in info.dump.tags if k.lower() not in _OWN_TAGS)
    return TrackPlan(audio=tuple(kept_audio), subtitles=tuple(kept_subs),
                     attachments=tuple(kept_attached), chapters=chapters, tags=tags,
                     dropped=tuple(dropped))


def _escape(text: str) -> str:
    # ffmetadata: '=', ';', '#', '\' and newlines are escaped with a backslash.
    out = []
    for ch in text:
        if ch in "=;#\\\n":
            out.append("\\")
        out.append(ch)
    return "".join(out)


def ffmetadata_text(info: MediaInfo, plan: TrackPlan, shift_s: float) -> str:
    """The source's chapters and global tags as an ffmetadata file for the merge.

    Written from the probe rather than read from the source by the merge: ffmpeg 5.1 reads
    an input to its end even when only its tags are used (the whole source again, for a
    copy-only merge; measured: 116 MB read for a 116 MB input, 9.0 reads 0.5 MB).
    Chapters move with the streams: ``shift_s`` is what the merge subtracts from the
    source's timestamps (its start time).
    """
    lines = [";FFMETADATA1"]
    lines += [f"{_escape(k)}={_escape(v)}" for k, v in plan.tags]
    for ch in info.dump.chapters[:plan.chapters]:
        start = max(0, round((ch.start_s - shift_s) * 1_000_000))
        end = max(start, round((ch.end_s - shift_s) * 1_000_000))
        lines += ["", "[CHAPTER]", "TIMEBASE=1/1000000", f"START={start}", f"END={end}"]
        lines += [f"{_escape(k)}={_escape(v)}" for k, v in ch.tags]
    return "\n".join(lines) + "\n"
