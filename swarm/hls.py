"""Progressive HLS: what to publish, when, and the playlists' text. Pure: no I/O.

A chunked encode's chunks are segments waiting to be published: segment N may go out as soon
as chunks 0..N are verified, because a player reads a playlist in order. The media playlists
are EVENT playlists, so the only change ever made to one is an append (RFC 8216 6.2.1); the
text appended for each segment is built here, and the shell appends it in one write.
``#EXT-X-TARGETDURATION`` must hold for every segment and may not change once a client has
read it, so it is fixed from the plan before the first publish.

Audio is encoded once over the whole file (per-chunk audio clicks at every joint), so it is a
separate rendition whose fragments are published in step with the video: an audio segment
goes out when the published video reaches its end, so a player never waits on audio that
exists but is unpublished.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["HLS_VERSION", "InOrder", "MediaPlaylist", "Variant", "audio_groups", "avc_codec",
           "behind_live", "group_segments", "master_playlist", "segment_cuts", "segment_pieces",
           "target_duration"]

# fMP4 segments (EXT-X-MAP in a media playlist without I-frames only) need version 7.
HLS_VERSION = 7


def target_duration(spans: Sequence[float]) -> int:
    """The playlists' target duration for segments no longer than the longest of ``spans``
    (seconds): an integer, rounded up as RFC 8216 4.3.3.1 requires, at least 1."""
    return max(1, math.ceil(max(spans, default=1.0) - 1e-6))


def segment_cuts(span_s: float, seconds: float) -> list[float]:
    """Where a chunk of ``span_s`` seconds is cut into segments after its first, as offsets
    from its first frame: every ``seconds``, but none that would leave a last segment
    shorter than a quarter of that (it goes to the one before)."""
    if seconds <= 0:
        raise ValueError("segment length must be positive")
    cuts: list[float] = []
    k = 1
    while k * seconds < span_s - seconds / 4 - 1e-9:
        cuts.append(k * seconds)
        k += 1
    return cuts


def segment_pieces(span_s: float, seconds: float) -> list[float]:
    """The lengths of a chunk's segments (for the target duration, before any is made)."""
    edges = [0.0, *segment_cuts(span_s, seconds), span_s]
    return [b - a for a, b in itertools.pairwise(edges)]


def group_segments(starts_s: Sequence[float], cuts: Sequence[float], frame_s: float
                   ) -> list[int]:
    """Indices into a chunk's fragments (``starts_s``: each one's first presentation time,
    from the chunk's first frame; a fragment starts at each keyframe) where each segment
    starts: the first fragment, then the first one at each cut (keyframes are forced there;
    half a frame of rounding allowed). A cut without a keyframe before the next cut (an
    encoder that did not force it) is left out: that segment runs on to the next."""
    out = [0]
    for j, cut in enumerate(cuts):
        after = cuts[j + 1] if j + 1 < len(cuts) else math.inf
        at = next((i for i, t in enumerate(starts_s)
                   if i > out[-1] and t >= cut - frame_s / 2), None)
        if at is not None and starts_s[at] < after - frame_s / 2:
            out.append(at)
    return out


@dataclass
class InOrder:
    """Which chunks may be published: the verified ones that follow, without a gap, the
    ones already published."""

    chunks: int
    published: int = 0  # chunks 0..published-1 are out
    _verified: set[int] = field(default_factory=set)

    def verified(self, index: int) -> list[int]:
        """Chunk ``index`` was verified: the chunks that can be published now, in order."""
        if not 0 <= index < self.chunks:
            raise ValueError(f"chunk {index} outside 0..{self.chunks - 1}")
        self._verified.add(index)
        out: list[int] = []
        while self.published in self._verified:
            out.append(self.published)
            self.published += 1
        return out

    @property
    def done(self) -> bool:
        return self.published == self.chunks


@dataclass
class MediaPlaylist:
    """An EVENT media playlist, as the text to append, one segment at a time."""

    target_s: int
    map_uri: str | None = None  # the init segment now in force
    segments: int = 0
    ended: bool = False

    def header(self) -> str:
        return (f"#EXTM3U\n#EXT-X-VERSION:{HLS_VERSION}\n#EXT-X-TARGETDURATION:{self.target_s}\n"
                "#EXT-X-PLAYLIST-TYPE:EVENT\n#EXT-X-INDEPENDENT-SEGMENTS\n")

    def segment(self, uri: str, duration_s: float, map_uri: str) -> str:
        """The lines that publish one segment. A segment whose init differs from the one in
        force (another encoder build's parameter sets) comes after a discontinuity, with
        its own map."""
        if self.ended:
            raise ValueError("the playlist has ended")
        if duration_s > self.target_s + 0.5:
            # RFC 8216 4.3.3.1: EXTINF rounded to an integer may not exceed the target.
            raise ValueError(f"segment of {duration_s:.3f} s > target {self.target_s} s")
        text = ""
        if map_uri != self.map_uri:
            if self.map_uri is not None:
                text += "#EXT-X-DISCONTINUITY\n"
            text += f'#EXT-X-MAP:URI="{map_uri}"\n'
            self.map_uri = map_uri
        self.segments += 1
        return text + f"#EXTINF:{duration_s:.6f},\n{uri}\n"

    def end(self) -> str:
        self.ended = True
        return "#EXT-X-ENDLIST\n"


def behind_live(media_s: float, since_first_s: float, lead_s: float) -> bool:
    """Whether a viewer who pressed play at the first segment has caught up with the live
    edge: the stream grows slower than real time. ``lead_s``: the first segment's length,
    which such a viewer had in hand at the start."""
    return since_first_s > media_s - lead_s + 1e-6 and since_first_s > 0


def audio_groups(ends: Sequence[float], start: int, until: float | None) -> int:
    """How many of the audio fragments from ``start`` on (``ends``: each fragment's end on
    the output timeline, in seconds) to publish now that the video is out up to ``until``
    (None: the video is complete, so all of them)."""
    if until is None:
        return len(ends) - start
    n = start
    while n < len(ends) and ends[n] <= until + 1e-6:
        n += 1
    return n - start


def avc_codec(avcc: bytes) -> str:
    """RFC 6381 codec string of an H.264 track from its ``avcC`` payload: profile,
    constraint flags and level, as the SPS carries them."""
    if len(avcc) < 4 or avcc[0] != 1:
        raise ValueError("not an avcC record")
    return f"avc1.{avcc[1]:02x}{avcc[2]:02x}{avcc[3]:02x}"


@dataclass(frozen=True, slots=True)
class Variant:
    """One video rendition of the master playlist. ``bandwidth`` and ``average``: bits per
    second of its segments, the audio's included (RFC 8216 4.3.4.2: the peak segment bit
    rate of the variant, all its renditions)."""

    uri: str
    bandwidth: int
    average: int | None
    codecs: str | None
    width: int
    height: int


def master_playlist(variants: Sequence[Variant], audio_uri: str | None = None) -> str:
    """The master playlist: each video rendition, tallest first (players start with the
    first listed), and the audio once, as its own rendition every variant shares."""
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{HLS_VERSION}", "#EXT-X-INDEPENDENT-SEGMENTS"]
    if audio_uri is not None:
        lines.append(f'#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="audio",NAME="audio",DEFAULT=YES,'
                     f'AUTOSELECT=YES,URI="{audio_uri}"')
    for v in variants:
        attrs = [f"BANDWIDTH={max(1, v.bandwidth)}"]
        if v.average is not None:
            attrs.append(f"AVERAGE-BANDWIDTH={max(1, v.average)}")
        if v.codecs:
            attrs.append(f'CODECS="{v.codecs}"')
        attrs.append(f"RESOLUTION={v.width}x{v.height}")
        if audio_uri is not None:
            attrs.append('AUDIO="audio"')
        lines += ["#EXT-X-STREAM-INF:" + ",".join(attrs), v.uri]
    return "\n".join(lines) + "\n"
