"""The content spot check's ffmpeg run, built and read here; nothing runs. Pure.

A result's frame count and timestamps are verified in full (chunker.verify); what its frames
show is checked on a few of them: each sampled frame of the chunk is compared with the
source frame at the same timestamp and with the source's frames just before and after it,
the source decoded exactly as the encode decoded it (``encode_chunk_argv``'s seek, trim and
scale). Both sides are then reduced to ``WIDTH`` pixels wide the same way: what an encoder
is allowed to lose (grain, fine texture) mostly goes, what a wrong picture changes (shapes,
colours, positions) stays, and the comparison costs almost nothing beside the decodes. The
comparison is PSNR per tile of a ``GRID`` x ``GRID`` grid, so that a small altered region
weighs on one tile instead of vanishing in the frame's average. The verdict on the numbers
is ``swarm.spotcheck``'s.

The chunk's sampled frames come out of its verification's decode
(``sampled_verify_argv``); then one ffmpeg process per check decodes the source once per
sample, seeking to the keyframe before the sample exactly as the encode did
(``plans_from_cuts`` gives that seek and trim), so the cost is a few short decodes from a
keyframe, not the chunk's whole range.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .commands import VideoPlan, verify_chunk_argv
from .plan import plans_from_cuts
from .probe import MediaInfo
from .slides import SlidePlan, slide_graph
from .tools import FFmpeg

__all__ = ["GRID", "WIDTH", "Compared", "neighbours", "parse_compared", "sampled_verify_argv",
           "slide_check_argv", "spot_check_argv"]

# 8 x 8 tiles of a picture 192 pixels wide (tiles of 24 x 13 at 16:9): measured with
# bench/spotcheck (README "What is checked"). A box over 1/64 of the frame covers at least
# a quarter of some tile wherever it is drawn; at this size the grain of a noisy source
# averages out, and a frame's decodes are what the check costs, not its comparison.
GRID = 8
WIDTH = 192
_QUIET = ("-nostdin", "-hide_banner", "-loglevel", "error")
_STATS = re.compile(r"\bmse_avg:(\S+)")
# A frame-threaded decoder works ahead on frames nobody wants once the one frame we take is
# out: one thread per input costs 10 % less CPU (measured on 720p, 3 samples).
_ONE_THREAD = ("-threads", "1")


@dataclass(frozen=True, slots=True)
class Compared:
    """One sampled frame's tile PSNRs (dB, ``inf`` for identical tiles): against its own
    source frame, and against each neighbouring source frame (before, after; one at either
    end of the source); and its source frame's against each of those neighbours."""

    own: list[float]
    others: list[list[float]]
    changes: list[list[float]]  # the source frame against each neighbour, as in others


def neighbours(at: int, frames: int) -> list[int]:
    """The source frames a sample at source frame ``at`` is compared with, in order: the one
    before it, itself, the one after it (those that exist)."""
    return [i for i in (at - 1, at, at + 1) if 0 <= i < frames]


def reduced_size(plan: VideoPlan | SlidePlan, grid: int = GRID) -> tuple[int, int]:
    """The compared picture's size: ``WIDTH`` wide (never wider than the output), the
    output's aspect, whole tiles of even sides (4:2:0 chroma)."""
    w = min(WIDTH, plan.width)
    h = max(1, round(w * plan.height / plan.width))
    step = 2 * grid
    return max(step, w - w % step), max(step, h - h % step)


def _reduce(plan: VideoPlan | SlidePlan, grid: int) -> str:
    """The same reduction on both sides, from the output's size: area averaging, as a
    camera's or encoder's loss of fine detail would be judged by eye from afar."""
    rw, rh = reduced_size(plan, grid)
    return f"setsar=1,scale={rw}:{rh}:flags=area,format=yuv420p"


def sampled_verify_argv(ffmpeg: FFmpeg, chunk_path: str, plan: VideoPlan,
                        samples: Sequence[int], samples_path: str, stream: int = 0,
                        grid: int = GRID) -> list[str]:
    """``verify_chunk_argv`` (its listing on stdout), whose decode also writes the chunk's
    frames ``samples`` (indices, ascending), reduced for the comparison, to
    ``samples_path``: raw yuv420p pictures of ``reduced_size``, for ``spot_check_argv``.
    A checked result is so decoded once, not twice (bench/lan: the check's own decodes of
    the chunk were a quarter of its 1.16 CPU s). The frames are taken by index, which is
    what the verification checks them by: the k-th frame must carry source frame
    first+k's timestamp. Its stderr stays the chunk's decode's alone (the sources' would
    not be clean: an open GOP's leading frames after a seek)."""
    if not samples or list(samples) != sorted(set(samples)) or samples[0] < 0:
        raise ValueError("samples must be distinct ascending frame indices")
    argv = verify_chunk_argv(ffmpeg, chunk_path, stream)
    at = argv.index("-i") + 2
    pick = "+".join(f"eq(n\\,{k})" for k in samples)
    # Passthrough keeps the decoder's timestamps: no frame is dropped or repeated.
    return [*argv[:at],
            "-filter_complex", f"[0:v:{stream}]select={pick},{_reduce(plan, grid)}[picked]",
            *argv[at:],
            "-map", "[picked]", "-fps_mode", "passthrough", "-c:v", "rawvideo",
            "-f", "rawvideo", "-y", samples_path]


def spot_check_argv(ffmpeg: FFmpeg, samples_path: str, source: MediaInfo, plan: VideoPlan,
                    first: int, samples: Sequence[int], grid: int = GRID) -> list[str]:
    """Compare the chunk's frames ``samples`` (indices within the chunk, ascending), as
    ``sampled_verify_argv`` wrote them to ``samples_path``, with the source's frames
    ``neighbours(first + k)``; per-tile PSNR statistics on stdout, one line per tile,
    comparison after comparison (``parse_compared``)."""
    if not samples or list(samples) != sorted(set(samples)) or samples[0] < 0:
        raise ValueError("samples must be distinct ascending frame indices")
    v = source.video
    rw, rh = reduced_size(plan, grid)
    argv = [ffmpeg.path, *_QUIET, "-copyts", "-f", "rawvideo", "-pix_fmt", "yuv420p",
            "-video_size", f"{rw}x{rh}", "-i", samples_path]
    reduce = _reduce(plan, grid)
    common = f"untile={grid}x{grid},settb=AVTB,setpts=N"
    n = len(samples)
    graph = [f"[0:v:0]split={n}" + "".join(f"[x{i}]" for i in range(n))]
    nears = [neighbours(first + k, v.frames) for k in samples]
    # The source: seeked as the encode of a chunk starting at the keyframe at or before
    # the first of a sample's neighbours would be, then trimmed to start at that neighbour.
    # (Not seeked for the neighbour itself: the -ss of a frame between an open GOP's
    # keyframe and its leading B-frames lands on that keyframe, past the frame.) Samples
    # whose decodes would start at the same keyframe share one: a GOP is decoded once.
    groups: list[tuple[int, list[int]]] = []  # (keyframe, the samples decoded from it)
    for i, near in enumerate(nears):
        key = max((f for f in v.keyframes if f <= near[0]), default=0)
        if groups and groups[-1][0] == key:
            groups[-1][1].append(i)
        else:
            groups.append((key, [i]))
    branch: dict[int, str] = {}  # each sample's source frames, reduced
    for g, (key, members) in enumerate(groups):
        base = nears[members[0]][0]
        if key > 0:
            seek = plans_from_cuts(v, source.format_start_s, [0, key],
                                   keyframe_seek=source.keyframe_seek)[1].seek_s
            argv += ["-ss", f"{seek:.6f}", "-noaccurate_seek"]
        argv += [*_ONE_THREAD, "-i", source.path]
        keep = ""
        if base > 0:
            trim = plans_from_cuts(v, source.format_start_s, [0, base],
                                   keyframe_seek=source.keyframe_seek)[1].trim_s
            keep = f"trim=start={trim:.6f},"
        outs = "".join(f"[g{i}]" for i in members)
        graph.append(f"[{g + 1}:V:0]{keep}trim=end_frame={nears[members[-1]][-1] + 1 - base},"
                     f"scale={plan.width}:{plan.height}:flags=bicubic,{reduce},"
                     f"split={len(members)}{outs}")
        for i in members:
            lo = nears[i][0] - base
            graph.append(f"[g{i}]trim=start_frame={lo}:end_frame={lo + len(nears[i])}[r{i}]")
            branch[i] = f"[r{i}]"
    chunks, refs, self_main, self_ref = [], [], [], []
    for i, k in enumerate(samples):
        at = first + k
        near = nears[i]
        # The i-th picture (the trim ends its branch there), shown once per source frame
        # it is compared with.
        again = f",loop=loop={len(near) - 1}:size=1:start=0" if len(near) > 1 else ""
        graph.append(f"[x{i}]select=eq(n\\,{i}),trim=end_frame=1{again}[c{i}]")
        own = near.index(at)
        graph.append(f"{branch[i]}split=3[s{i}][o{i}][n{i}]")
        chunks.append(f"[c{i}]")
        refs.append(f"[s{i}]")
        if len(near) > 1:
            # Then the source frame against its neighbours: how much the picture changes
            # from one frame to the next, the scale a correct encode's loss is judged on.
            graph.append(f"[o{i}]select=eq(n\\,{own}),loop=loop={len(near) - 2}:size=1:start=0"
                         f"[so{i}]")
            graph.append(f"[n{i}]select=not(eq(n\\,{own}))[sn{i}]")
            self_main.append(f"[so{i}]")
            self_ref.append(f"[sn{i}]")
        else:
            graph.append(f"[o{i}]nullsink;[n{i}]nullsink")
    chunks, refs = chunks + self_main, refs + self_ref
    joined = f"concat=n={len(chunks)}:v=1:a=0," if len(chunks) > 1 else ""
    graph.append(f"{''.join(chunks)}{joined}{common}[chunk]")
    graph.append(f"{''.join(refs)}{joined}{common}[ref]")
    graph.append("[chunk][ref]psnr=stats_file=-[out]")
    return [*argv, "-filter_complex", ";".join(graph), "-map", "[out]", "-f", "null", "-"]


def slide_check_argv(ffmpeg: FFmpeg, chunk_path: str, plan: SlidePlan, first: int,
                     count: int, samples: Sequence[int], grid: int = GRID) -> list[str]:
    """A slideshow chunk's check: its frames ``samples`` (indices within the chunk of the
    ``count`` images from ``first``) against the same frames rendered here from our own
    image files by the graph the peer ran (``chunker.slides.slide_graph``: the render is
    exact, so it is the reference a source decode is for a video), and against the
    rendered frames just before and after, within the chunk. The statistics come out as
    ``spot_check_argv``'s: ``parse_compared(stats, 0, samples, count * plan.per_image)``.

    Each sample is rendered from a run of its own: from the start of the image its
    neighbour before it shows, to the frame after it (a run renders the same frames
    wherever it starts, which is what lets chunks be joined). None is encoded. Rendering
    the chunk up to its last sample instead cost 45 % of the chunk's render and encode
    (its fades' per-pixel blends): 19 CPU s for a 250-frame 1080p chunk, on a coordinator
    that renders too.
    """
    frames = count * plan.per_image
    if (not samples or list(samples) != sorted(set(samples)) or samples[0] < 0
            or samples[-1] >= frames):
        raise ValueError("samples must be distinct ascending frame indices of the chunk")
    argv = [ffmpeg.path, *_QUIET]
    graph: list[str] = []
    reads: list[str] = []
    starts: list[int] = []  # each sample's run: its first frame's index in the chunk
    for i, k in enumerate(samples):
        near = neighbours(k, frames)
        lo, hi = near[0] // plan.per_image, near[-1] // plan.per_image
        run_reads, render = slide_graph(plan, first + lo, hi - lo + 1, f"p{i}_", len(reads))
        reads += run_reads
        starts.append(lo * plan.per_image)
        graph += [render, f"[p{i}_v]trim=end_frame={near[-1] + 1 - starts[i]}[r{i}]"]
    for path in reads:  # inputs 0.. as the runs number them; the chunk comes last
        argv += ["-i", path]
    argv += [*_ONE_THREAD, "-i", chunk_path]
    reduce = _reduce(plan, grid)
    common = f"untile={grid}x{grid},settb=AVTB,setpts=N"
    n = len(samples)
    graph.append(f"[{len(reads)}:v:0]split={n}" + "".join(f"[x{i}]" for i in range(n)))
    chunks, refs, self_main, self_ref = [], [], [], []
    for i, k in enumerate(samples):
        near = neighbours(k, frames)
        own = near.index(k)
        again = f",loop=loop={len(near) - 1}:size=1:start=0" if len(near) > 1 else ""
        graph.append(f"[x{i}]select=eq(n\\,{k}),{reduce}{again}[c{i}]")
        graph.append(f"[r{i}]select=between(n\\,{near[0] - starts[i]}\\,"
                     f"{near[-1] - starts[i]}),{reduce},split=3[s{i}][o{i}][n{i}]")
        chunks.append(f"[c{i}]")
        refs.append(f"[s{i}]")
        if len(near) > 1:
            graph.append(f"[o{i}]select=eq(n\\,{own}),loop=loop={len(near) - 2}:size=1:start=0"
                         f"[so{i}]")
            graph.append(f"[n{i}]select=not(eq(n\\,{own}))[sn{i}]")
            self_main.append(f"[so{i}]")
            self_ref.append(f"[sn{i}]")
        else:
            graph.append(f"[o{i}]nullsink;[n{i}]nullsink")
    chunks, refs = chunks + self_main, refs + self_ref
    joined = f"concat=n={len(chunks)}:v=1:a=0," if len(chunks) > 1 else ""
    graph.append(f"{''.join(chunks)}{joined}{common}[chunk]")
    graph.append(f"{''.join(refs)}{joined}{common}[ref]")
    graph.append("[chunk][ref]psnr=stats_file=-[out]")
    return [*argv, "-filter_complex", ";".join(graph), "-map", "[out]", "-f", "null", "-"]


def parse_compared(stats: str, first: int, samples: Sequence[int], source_frames: int,
                   grid: int = GRID) -> list[Compared]:
    """Each sample's comparisons, from the psnr filter's statistics of ``spot_check_argv``.

    PSNR from the mean squared error over all planes, so that a change of colour counts as
    much as a change of brightness. Raises ValueError unless there is exactly one line per
    tile of every comparison: a frame that is missing on either side is not a pass.
    """
    values = []
    for line in stats.splitlines():
        m = _STATS.search(line)
        if m is None:
            continue
        mse = float(m.group(1))
        if not mse >= 0:  # NaN or negative: not a measurement
            raise ValueError(f"unreadable psnr statistics: {line[:80]!r}")
        values.append(math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse))
    per = grid * grid
    nears = [neighbours(first + k, source_frames) for k in samples]
    expected = per * sum(2 * len(n) - 1 for n in nears)
    if len(values) != expected:
        raise ValueError(f"{len(values)} tiles compared, expected {expected}")
    tiles = [values[j:j + per] for j in range(0, len(values), per)]
    # In the order of spot_check_argv's concatenation: each sample's chunk frame against
    # its neighbours, then each sample's source frame against the others.
    compared, pos = [], 0
    for k, near in zip(samples, nears, strict=True):
        own = near.index(first + k)
        mine = tiles[pos:pos + len(near)]
        pos += len(near)
        compared.append((own, mine))
    out = []
    for (own, mine), near in zip(compared, nears, strict=True):
        changes = tiles[pos:pos + len(near) - 1]
        pos += len(near) - 1
        out.append(Compared(mine[own], [t for j, t in enumerate(mine) if j != own], changes))
    return out
