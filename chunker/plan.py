"""Planning the cut: which source frames each chunk encodes. Pure; no ffmpeg runs here.

Each chunk is a run of frames in presentation order. A peer decodes its run straight from
the source with an input seek (``-ss`` before ``-i``) and stops after exactly ``frames``
frames; because it decodes from the keyframe at or before the cut, an open GOP's leading
frames and any B-frame reordering are handled by the decoder, not by us (a stream-copy split
at keyframes lost 87 % of the frames of an open-GOP source in the seed measurements).
The seek target sits half a frame before the chunk's first frame, so rounding in ffmpeg's
microsecond arithmetic can never move a frame across the cut.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from .probe import VideoInfo

__all__ = ["MAX_CHUNK_S", "MIN_CHUNK_S", "ChunkPlan", "default_chunk_seconds", "plan_chunks"]

# Below ~4 s the fixed cost of a chunk (ffmpeg start, seek, decoding from the previous
# keyframe, an extra IDR frame) grows past a few percent; see bench/quality and README.
MIN_CHUNK_S = 4.0
# Above ~30 s a lost chunk costs too much re-encoding and balance suffers on short jobs.
MAX_CHUNK_S = 30.0
# Enough chunks per encoder slot that a slow slot's last chunk is a small part of the job.
CHUNKS_PER_SLOT = 4


@dataclass(frozen=True, slots=True)
class ChunkPlan:
    index: int
    first: int  # index of the first frame (presentation order)
    frames: int
    seek_s: float | None  # value for -ss (relative to the container start); None = no seek
    start_s: float  # first frame's time, relative to the first frame of the source
    span_s: float | None  # time from this chunk's first frame to the next chunk's; None last
    keyframe: bool  # the cut falls on a source keyframe (no extra decoding before it)


def default_chunk_seconds(duration_s: float, slots: int) -> float:
    per = duration_s / max(1, CHUNKS_PER_SLOT * slots)
    return min(MAX_CHUNK_S, max(MIN_CHUNK_S, per))


def _cut_points(video: VideoInfo, chunk_s: float) -> list[int]:
    """Frame indices where chunks start: keyframes near each target, any frame otherwise."""
    times = [video.seconds(i) for i in range(video.frames)]
    keys = list(video.keyframes)
    key_times = [times[k] for k in keys]
    end = video.end_s
    cuts = [0]
    while True:
        start = times[cuts[-1]]
        ideal = start + chunk_s
        if ideal >= end - chunk_s / 2:
            break
        lo, hi = start + chunk_s / 2, start + chunk_s * 1.5
        i = bisect.bisect_left(key_times, lo)
        j = bisect.bisect_right(key_times, hi)
        if i < j:
            cut = min(keys[i:j], key=lambda k: abs(times[k] - ideal))
        else:
            cut = bisect.bisect_left(times, ideal)
        if cut <= cuts[-1] or cut >= video.frames:
            break
        cuts.append(cut)
    return cuts


def plan_chunks(video: VideoInfo, format_start_s: float, chunk_s: float) -> list[ChunkPlan]:
    if chunk_s <= 0:
        raise ValueError("chunk length must be positive")
    cuts = _cut_points(video, chunk_s)
    keyset = set(video.keyframes)
    t0 = video.seconds(0)
    plans = []
    for n, first in enumerate(cuts):
        last = cuts[n + 1] if n + 1 < len(cuts) else video.frames
        if first == 0:
            seek = None
        else:
            mid = (video.seconds(first - 1) + video.seconds(first)) / 2
            seek = max(0.0, mid - format_start_s)
        span = video.seconds(last) - video.seconds(first) if last < video.frames else None
        plans.append(ChunkPlan(
            index=n, first=first, frames=last - first, seek_s=seek,
            start_s=video.seconds(first) - t0, span_s=span, keyframe=first in keyset,
        ))
    return plans
