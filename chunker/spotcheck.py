"""The content spot check's ffmpeg run, built and read here; nothing runs. Pure.

A result's frame count and timestamps are verified in full (chunker.verify); what its frames
show is checked on a few of them: each sampled frame of the chunk is compared with the
source frame at the same timestamp, decoded and scaled exactly as the encode scaled it
(``encode_chunk_argv``'s seek, trim and scale). The comparison is PSNR per tile: each frame
is cut into ``GRID`` x ``GRID`` tiles, so that a small altered region (a box drawn over 1/16
of the frame) weighs on one tile's PSNR instead of vanishing in the frame's average. The
verdict on the numbers is ``swarm.spotcheck``'s.

One ffmpeg process per check, reading the chunk and the source once per sample, each
seeking to the keyframe before the sample (for the source exactly as the encode did:
``plans_from_cuts`` gives that seek and trim), so the cost is a few short decodes from a
keyframe, not the chunk's whole range.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from .commands import VideoPlan
from .plan import plans_from_cuts
from .probe import MediaInfo
from .tools import FFmpeg

__all__ = ["GRID", "parse_tile_psnr", "spot_check_argv"]

# 4 x 4 tiles: measured (bench/spotcheck) to separate a box over 1/16 of the frame from
# every correct encode of the built-in profiles; finer grids make flat tiles of noisy
# content the weakest link of a correct encode.
GRID = 4
_QUIET = ("-nostdin", "-hide_banner", "-loglevel", "error")
_STATS = re.compile(r"\bmse_avg:(\S+)")
# Past a frame's time by less than any frame interval, above the 1 us rounding of -ss.
_SEEK_PAST_S = 0.0005
# A frame-threaded decoder works ahead on frames nobody wants once the one frame we take is
# out: one thread per input costs 10 % less CPU (measured on 720p, 3 samples).
_ONE_THREAD = ("-threads", "1")


def spot_check_argv(ffmpeg: FFmpeg, chunk_path: str, chunk_start_s: float,
                    source: MediaInfo, plan: VideoPlan, first: int, samples: Sequence[int],
                    grid: int = GRID) -> list[str]:
    """Compare frames ``samples`` (indices within the chunk, ascending) of the chunk file
    with the source's frames ``first + k``; per-tile PSNR statistics on stdout, one line per
    tile, sample after sample (``parse_tile_psnr``).

    ``chunk_start_s`` is the chunk's first timestamp as its verification listed it: the
    chunk's frames are found by their time after it, which verification checked against
    the source's. (Not by the source's own timestamps: a chunk of an MPEG-TS whose clock
    wraps starts at another time than the source frame it encodes.)
    """
    if not samples or list(samples) != sorted(set(samples)) or samples[0] < 0:
        raise ValueError("samples must be distinct ascending frame indices")
    v = source.video
    argv = [ffmpeg.path, *_QUIET, "-copyts"]
    # Crop both sides to whole tiles (even tile sides, for 4:2:0 chroma).
    cw, ch = plan.width - plan.width % (2 * grid), plan.height - plan.height % (2 * grid)
    common = f"format=yuv420p,crop={cw}:{ch}:0:0,untile={grid}x{grid},settb=AVTB,setpts=N"
    graph, chunks, refs = [], [], []
    base = v.seconds(first)
    for i, k in enumerate(samples):
        at = first + k
        # The chunk: seek (from its start, to the keyframe at or before the frame: a little
        # past the frame's time, so that a keyframe there is not skipped back from), then
        # keep frames from halfway after the previous one.
        keep = ""
        if k > 0:
            rel = v.seconds(at) - base
            argv += ["-ss", f"{rel + _SEEK_PAST_S:.6f}", "-noaccurate_seek"]
            mid = (v.seconds(at - 1) + v.seconds(at)) / 2 - base
            keep = f"trim=start={chunk_start_s + mid:.6f},"
        argv += [*_ONE_THREAD, "-i", chunk_path]
        graph.append(f"[{2 * i}:v:0]{keep}trim=end_frame=1[c{i}]")
        # The source: exactly as the encode seeked and trimmed to start at that frame.
        seek = trim = None
        if at > 0:
            cut = plans_from_cuts(v, source.format_start_s, [0, at],
                                  keyframe_seek=source.keyframe_seek)[1]
            seek, trim = cut.seek_s, cut.trim_s
        if seek is not None:
            argv += ["-ss", f"{seek:.6f}", "-noaccurate_seek"]
        argv += [*_ONE_THREAD, "-i", source.path]
        keep = f"trim=start={trim:.6f}," if trim is not None else ""
        graph.append(f"[{2 * i + 1}:V:0]{keep}trim=end_frame=1,"
                     f"scale={plan.width}:{plan.height}:flags=bicubic,setsar=1[s{i}]")
        chunks.append(f"[c{i}]")
        refs.append(f"[s{i}]")
    joined = f"concat=n={len(samples)}:v=1:a=0," if len(samples) > 1 else ""
    graph.append(f"{''.join(chunks)}{joined}{common}[chunk]")
    graph.append(f"{''.join(refs)}{joined}{common}[ref]")
    graph.append("[chunk][ref]psnr=stats_file=-[out]")
    return [*argv, "-filter_complex", ";".join(graph), "-map", "[out]", "-f", "null", "-"]


def parse_tile_psnr(stats: str, samples: int, grid: int = GRID) -> list[list[float]]:
    """Per-tile PSNR (dB; ``inf`` for identical tiles) of each sample, from the psnr
    filter's statistics.

    Computed from the mean squared error over all planes, so that a change of colour
    counts as much as a change of brightness. Raises ValueError unless there is exactly one
    line per tile of every sample: a frame that is missing on either side is not a pass.
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
    if len(values) != samples * grid * grid:
        raise ValueError(f"{len(values)} tiles compared, expected {samples * grid * grid}")
    per = grid * grid
    return [values[i * per:(i + 1) * per] for i in range(samples)]
