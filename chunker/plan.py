"""Planning the cut: which source frames each chunk encodes. Pure; no ffmpeg runs here.

Each chunk is a run of frames in presentation order. A peer decodes its run straight from
the source with an input seek (``-ss`` before ``-i``) and stops after exactly ``frames``
frames; because it decodes from the keyframe at or before the cut, an open GOP's leading
frames and any B-frame reordering are handled by the decoder, not by us (a stream-copy split
at keyframes lost 87 % of the frames of an open-GOP source in the seed measurements).
Seeking and cutting are separate: ``-ss`` (with ``-noaccurate_seek``) only positions the
demuxer on the keyframe at or before the cut, and a ``trim`` filter drops every frame before
a point half a frame ahead of the chunk's first frame, so rounding in ffmpeg's microsecond
arithmetic can never move a frame across the cut. A cut on a keyframe seeks just past that
keyframe's time (seeking to the midpoint would land on the previous keyframe and decode a
whole extra GOP: 0.2 s of CPU per chunk for 2 s GOPs of 1080p, measured).
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
from dataclasses import dataclass

from .probe import VideoInfo

__all__ = [
    "MAX_CHUNK_S",
    "MIN_CHUNK_S",
    "MIN_PIECE_S",
    "MIN_PIECE_SLACK",
    "MIN_SPLIT_S",
    "ChunkPlan",
    "cut_offsets",
    "default_chunk_seconds",
    "min_piece_frames",
    "plan_chunks",
    "plans_from_cuts",
    "plans_from_rows",
    "split_plan",
]

# A chunk's fixed cost: ffmpeg start and seek, decoding from the previous keyframe, an IDR
# frame, and a fresh rate control. bench/quality on 30 s of 1080p -> hd, at equal rate
# against one single encode: 2 s chunks cost 0.39 VMAF or 4.0 % size, 4 s 0.35 or 3.7 %,
# 8 s 0.21 or 2.2 % (the goal is 0.5 and 3 %); bench/overhead ran 1.03-1.07 with 7.5 s
# chunks against 1.09-1.10 with 4 s (same runs, alternated).
MIN_CHUNK_S = 6.0
# The shortest piece the scheduler may cut a planned chunk into, to fit a claimer's share
# (swarm.scheduler, item 4; only where the plan is the default one). bench/quality's
# shortest length: 2 s chunks cost 0.40 VMAF at equal rate (the goal is 0.5) against 0.35
# for 4 s and 0.34 for the default 7.5 s, and 4.1 % size against 3.6 and 3.5 %; a job's
# cost is that of its frames' pieces, and pieces this short are only made at the end of a
# job with unequal peers (bench/hetero prints the seconds in each length).
MIN_PIECE_S = 2.0
# Keyframes do not sit on an exact grid (x264 also places them at scene cuts: 26 to 30
# frames apart in bench/hetero's 1 s GOPs), so a piece may fall short of MIN_PIECE_S by
# this share rather than leave a 4.7 s chunk that cannot be cut in two at all.
MIN_PIECE_SLACK = 0.1
# Never shorter than this to give every slot a chunk: a very short clip is simply cut into
# fewer chunks than there are slots.
MIN_SPLIT_S = 1.0
# Above ~30 s a lost chunk costs too much re-encoding and balance suffers on short jobs.
MAX_CHUNK_S = 30.0
# How far past a keyframe's time a seek aims: above the 1 us rounding of -ss and of the
# container start ffmpeg prints, far below any frame interval.
_SEEK_PAST_S = 0.0005
# How far before a keyframe's decode time a bisecting seek aims: the -ss value's and the
# container start's 1 us rounding, with room to spare; a frame or two of extra demuxing.
_SEEK_BEFORE_S = 0.05
# Enough chunks per encoder slot that a slow slot's last chunk is a small part of the job.
CHUNKS_PER_SLOT = 4


@dataclass(frozen=True, slots=True)
class ChunkPlan:
    index: int
    first: int  # index of the first frame (presentation order)
    frames: int
    seek_s: float | None  # value for -ss (relative to the container start); None = no seek
    # Drop decoded frames before this source time (the stream's own timestamps, as -copyts
    # passes them: the container start plus the probe's time).
    trim_s: float | None
    start_s: float  # first frame's time, relative to the first frame of the source
    span_s: float | None  # time from this chunk's first frame to the next chunk's; None last
    keyframe: bool  # the cut falls on a source keyframe (no extra decoding before it)


def default_chunk_seconds(duration_s: float, slots: int) -> float:
    """Target chunk length for ``slots`` encoders (local workers plus peers).

    CHUNKS_PER_SLOT chunks per slot when they can be MIN_CHUNK_S long (at most
    MAX_CHUNK_S); on shorter files as many MIN_CHUNK_S chunks as fit, rounded down to a
    whole number per slot so that equal slots finish together, and never fewer than one per
    slot (then shorter: every slot gets work).
    """
    slots = max(1, slots)
    per = duration_s / (CHUNKS_PER_SLOT * slots)
    if per >= MIN_CHUNK_S:
        return min(MAX_CHUNK_S, per)
    n = int(duration_s // MIN_CHUNK_S)
    n = max(slots, n - n % slots)
    return max(duration_s / n, MIN_SPLIT_S)


def _cut_points(video: VideoInfo, chunk_s: float) -> list[int]:
    """Frame indices where chunks start: keyframes near each target, any frame otherwise."""
    times = [video.seconds(i) for i in range(video.frames)]
    keys = list(video.keyframes)
    key_times = [times[k] for k in keys]
    end = video.end_s
    cuts = [0]
    while True:
        start = times[cuts[-1]]
        # Targets on a fixed grid, so snapping to keyframes does not drift the count away
        # from duration / chunk_s (a whole number per slot is what the default asks for).
        ideal = times[0] + len(cuts) * chunk_s
        if ideal >= end - chunk_s / 2:
            break
        lo, hi = max(ideal - chunk_s / 2, start + chunk_s / 2), ideal + chunk_s / 2
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


def plan_chunks(video: VideoInfo, format_start_s: float, chunk_s: float, *,
                keyframe_seek: bool = True) -> list[ChunkPlan]:
    if chunk_s <= 0:
        raise ValueError("chunk length must be positive")
    return plans_from_cuts(video, format_start_s, _cut_points(video, chunk_s),
                           keyframe_seek=keyframe_seek)


def plans_from_cuts(video: VideoInfo, format_start_s: float, cuts: list[int], *,
                    keyframe_seek: bool = True) -> list[ChunkPlan]:
    """Chunks starting at the given frame indices (ascending, the first 0): how a resumed
    job rebuilds exactly the plan its journal recorded.

    ``keyframe_seek`` is MediaInfo's: False for containers (MPEG-TS) where -ss lands on
    whatever frame bisecting the timestamps finds, and the decoder then waits for the next
    keyframe. There each seek aims at the decode time of the keyframe before the cut, so it
    lands at or before that keyframe; aiming at the cut skipped to the keyframe after it.
    """
    ascending = all(b > a for a, b in itertools.pairwise(cuts))
    if not cuts or cuts[0] != 0 or not ascending or cuts[-1] >= video.frames:
        raise ValueError("cut points must start at 0, ascend and stay inside the video")
    bounds = [*cuts, video.frames]
    return [_plan(video, format_start_s, n, first, last, keyframe_seek=keyframe_seek)
            for n, (first, last) in enumerate(itertools.pairwise(bounds))]


def plans_from_rows(video: VideoInfo, format_start_s: float, rows: list[tuple[int, int]], *,
                    keyframe_seek: bool = True) -> list[ChunkPlan]:
    """The journal's chunks, ``(first, frames)`` by index, planned again: index order is
    source order only until a chunk has been cut (its rest is appended), so they are
    planned in source order and keep their indices, which name their files. ValueError if
    they do not tile the video exactly."""
    planned = plans_from_cuts(video, format_start_s, sorted(first for first, _ in rows),
                              keyframe_seek=keyframe_seek)
    by_first = {p.first: p for p in planned}
    plans = [dataclasses.replace(by_first[first], index=i) for i, (first, _) in enumerate(rows)]
    if [p.frames for p in plans] != [n for _, n in rows]:
        raise ValueError("journalled chunks do not tile the video")
    return plans


def split_plan(video: VideoInfo, format_start_s: float, plan: ChunkPlan, at: int,
               index: int, *, keyframe_seek: bool = True) -> tuple[ChunkPlan, ChunkPlan]:
    """``plan`` cut ``at`` frames in: the chunk keeps its index and its first ``at``
    frames, and a new chunk ``index`` takes the rest (the scheduler cut it to a claimer's
    share). Both are planned as ``plans_from_cuts`` plans every chunk, so they are
    frame-exact on open GOP as any chunk is."""
    if not 0 < at < plan.frames:
        raise ValueError(f"chunk {plan.index}: cannot cut {plan.frames} frames at {at}")
    end = plan.first + plan.frames
    cut = plan.first + at
    return (_plan(video, format_start_s, plan.index, plan.first, cut,
                  keyframe_seek=keyframe_seek),
            _plan(video, format_start_s, index, cut, end, keyframe_seek=keyframe_seek))


def min_piece_frames(fps: float) -> int:
    """The shortest piece, in frames, the scheduler may cut (MIN_PIECE_S less its slack)."""
    return max(1, round(MIN_PIECE_S * (1 - MIN_PIECE_SLACK) * fps))


def cut_offsets(video: VideoInfo, plan: ChunkPlan) -> list[int]:
    """Where the scheduler may cut ``plan``: its source keyframes (frame offsets inside
    it), so that a piece costs no decoding before its first frame. A chunk without a
    keyframe inside stays whole. The scheduler keeps every piece at least its
    ``min_piece`` long."""
    lo, hi = plan.first, plan.first + plan.frames
    keys = video.keyframes
    i = bisect.bisect_right(keys, lo)
    j = bisect.bisect_left(keys, hi)
    return [k - lo for k in keys[i:j]]


def _plan(video: VideoInfo, format_start_s: float, n: int, first: int, last: int, *,
          keyframe_seek: bool) -> ChunkPlan:
    """Chunk ``n``: frames ``first`` to ``last`` (exclusive)."""
    keyset = set(video.keyframes)
    keys = list(video.keyframes)
    reorder_s = float(video.reorder * video.time_base)
    t0 = video.seconds(0)
    if first == 0:
        seek = trim = None
    else:
        mid = (video.seconds(first - 1) + video.seconds(first)) / 2
        at = video.seconds(first)
        # Past the keyframe by less than a quarter frame: still before the next frame.
        if not keyframe_seek:
            key = keys[bisect.bisect_right(keys, first) - 1]
            target = video.seconds(key) - reorder_s - _SEEK_BEFORE_S
        elif first in keyset and first + 1 < video.frames:
            target = at + min(_SEEK_PAST_S, (video.seconds(first + 1) - at) / 4)
        else:
            target = mid
        # The probe's times already count from the container start (ffmpeg subtracts
        # it), as -ss does. But the encode runs with -copyts, so its trim sees the
        # source's own timestamps. Both were off by the start for MPEG-TS (1.4 s, or
        # negative once the 33-bit clock wraps): chunks began early, or came out empty.
        seek = max(0.0, target)
        trim = mid + format_start_s
    span = video.seconds(last) - video.seconds(first) if last < video.frames else None
    return ChunkPlan(
        index=n, first=first, frames=last - first, seek_s=seek, trim_s=trim,
        start_s=video.seconds(first) - t0, span_s=span, keyframe=first in keyset,
    )
