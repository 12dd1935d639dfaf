"""Checks that an encoded chunk or the merged output keeps the promises. Pure comparisons.

The runs that produce the listings are in peer.media; these functions only compare what
ffmpeg listed against what the probe of the source says.
"""

from __future__ import annotations

from fractions import Fraction

from swarm.errors import VerifyError

from .probe import MediaInfo, parse_framecrc
from .tracks import TrackPlan

__all__ = ["TIMESTAMP_TOLERANCE_S", "check_chunk_listing", "check_output"]

# The promise: every frame within 1 ms of the source's time, relative to the first frame.
TIMESTAMP_TOLERANCE_S = 0.001


def _video_pts(listing: str) -> tuple[list[int], Fraction]:
    streams = parse_framecrc(listing)
    video = next((s for s in streams.values() if s.media_type == "video"), None)
    if video is None or not video.packets:
        raise VerifyError("no video frames")
    return sorted(p for p, _, _ in video.packets), video.tb


def _compare(got: list[float], want: list[float], what: str) -> None:
    """Both lists are seconds relative to their own first frame."""
    if len(got) != len(want):
        raise VerifyError(f"{what}: {len(got)} frames, expected {len(want)}")
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if abs(g - w) > TIMESTAMP_TOLERANCE_S:
            raise VerifyError(f"{what}: frame {i} at {g:.6f} s, expected {w:.6f} s")


def check_chunk_listing(listing: str, stderr: str, source: MediaInfo, first: int,
                        frames: int) -> float:
    """A chunk decoded without a message, has the planned frames at the planned times.

    Returns the chunk's first timestamp (s, its own clock), which the content spot check
    seeks from."""
    if stderr.strip():
        raise VerifyError(f"chunk does not decode cleanly: {stderr.strip().splitlines()[0]}")
    got, tb = _video_pts(listing)
    v = source.video
    base = v.seconds(first)
    want = [v.seconds(i) - base for i in range(first, first + frames)]
    _compare([float((g - got[0]) * tb) for g in got], want, "chunk")
    return float(got[0] * tb)


def check_output(out: MediaInfo, source: MediaInfo, tracks: TrackPlan | None = None) -> None:
    """The merged output has exactly the source's frames at the source's times, and every
    track the plan kept (without a plan: audio iff the source had it)."""
    v, o = source.video, out.video
    base, obase = v.seconds(0), o.seconds(0)
    want = [v.seconds(i) - base for i in range(v.frames)]
    got = [o.seconds(i) - obase for i in range(o.frames)]
    _compare(got, want, "output")
    if tracks is None:
        if (out.audio is None) != (source.audio is None):
            raise VerifyError("output lost or gained an audio track")
        return
    if not out.dump.streams:
        # The counts below would all read 0; say what really went wrong.
        raise VerifyError("ffmpeg's stream list of the output could not be read")
    kinds = [("video", 1), ("audio", len(tracks.audio)), ("subtitle", len(tracks.subtitles)),
             ("attachment", len(tracks.attachments))]
    for kind, expected in kinds:
        found = len([s for s in out.dump.of_kind(kind) if not s.cover])
        if found != expected:
            raise VerifyError(f"output has {found} {kind} track(s), expected {expected}")
    if len(out.audios) != len(tracks.audio):
        raise VerifyError(f"output has {len(out.audios)} audio track(s) with sound, "
                          f"expected {len(tracks.audio)}")
    if len(out.dump.chapters) != tracks.chapters:
        raise VerifyError(f"output has {len(out.dump.chapters)} chapter(s), "
                          f"expected {tracks.chapters}")
