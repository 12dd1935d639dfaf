"""Device benchmark: this machine's starting speed per profile, for the scheduler.

The scheduler needs a speed per peer and profile before any chunk has been encoded (then an
average of what the peer actually achieved takes over). ``measure`` encodes a synthetic
lavfi source with exactly the arguments a real chunk gets (``encode_chunk_argv``: same
codec options, scale filter, NUT on a pipe, same threads as a default local worker) for a
fixed wall-time budget, and turns the encoder's output rate into work per second, the unit
the scheduler uses for a chunk (frames x output pixels).

What can go wrong, and what we do about it:

* Encoder latency. x264 at ``slow`` or ``veryslow`` buffers 50-70 frames of lookahead, and
  x265 and SVT-AV1 buffer too, before the first packet comes out; at 1080p and up, on the
  two threads a default worker gets, that alone can take longer than the whole budget
  (measured here: 4K ``veryslow`` wrote nothing for more than 8 s). Only output frames are
  counted (``-progress`` reports packets written; counting frames fed in would measure the
  lookahead filling, several times faster than the encoder), so a run that has written
  nothing by about half the budget is stopped and the profile measured again at half the
  width and height, with the bitrate scaled to keep bits per pixel. That proxy's work per
  second came within 15% of the full-size figure here for x264; the running average
  corrects it after the first real chunk.
* A slow device (a Pi, or a peer held to 0.15 CPU in bench/hetero) may write nothing steady
  within the budget at all: ffmpeg's start and the lookahead alone took more than 2 s
  there. The half-size run is then given more time, up to ``MAX_EXTEND`` budgets, and ends
  as soon as it has a steady window. Without that, bench/hetero's slowest peer scored 0.02
  of the fastest instead of 0.33.
* Nothing measurable at all: the score is a pessimistic guess (one frame, or the frames
  seen, over the elapsed time) and a warning is logged; pessimism keeps a slow peer off the
  last chunk, which is the mistake that costs the most.
* A busy machine gives a low score: the benchmark measures this machine as it is now.

Scores are cached per ffmpeg binary and version, CPU model and core count (``cache_key``)
in one JSON file; a corrupt or foreign file reads as missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import platform
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import trio

from chunker.commands import VideoPlan, encode_chunk_argv, video_plan
from chunker.tools import FFmpeg
from profiles import Profile
from swarm.errors import EncodeError, UsageError

from .host import default_workers
from .proc import run_ffmpeg

__all__ = [
    "bench_argv",
    "cache_key",
    "cache_path",
    "default_threads",
    "ensure_scores",
    "load_scores",
    "measure",
    "profile_fingerprint",
    "run_benchmark",
    "save_scores",
    "steady_rate",
]

log = logging.getLogger(__name__)

DEFAULT_BUDGET_S = 2.0
# Process start, encoder init and the first burst of packets are not steady state.
WARMUP_S = 0.3
# Progress comes every SAMPLE_PERIOD_S; a rate needs a few reports' worth of steady output.
SAMPLE_PERIOD_S = 0.1
MIN_WINDOW_S = 0.3
# A full-size run that has written no packet by this fraction of the budget is stopped, and
# the profile measured at half the width and height for the rest. At 0.55, full size gets
# 1.1 s of a 2 s budget: here (2 threads, a loaded machine) the first packet came after
# 0.2-0.7 s for 480p and 720p, and after about 1.1 s for the 1080p CRF, x265 and AV1
# profiles; the half-size run still gets 0.9 s.
GIVE_UP_FRACTION = 0.55
# Full size, then half of each side. A further quarter-side try was dropped: per-frame
# overheads made x265 and SVT-AV1 look 2-3x slower there than at full size.
MAX_STAGES = 2
# How many budgets a device that has shown no steady output may take in all (see above).
MAX_EXTEND = 8.0
MIN_SIDE = 64
# The source's nominal rate only sets the GOP length in frames, as a real source's would.
SOURCE_FPS = 30.0
# testsrc2 alone has flat areas an encoder skips for free; light temporal noise prevents
# that. At 4 levels CRF 21 at 720p (medium) takes 4.5 Mb/s, plausible for detailed footage;
# at 10 the encoder spends its time coding noise (56 Mb/s at ultrafast).
NOISE_STRENGTH = 4
# The run ends by time, never by frame count.
_ENDLESS_FRAMES = 10_000_000
CACHE_FORMAT = 1
CACHE_FILE = "bench.json"

Sample = tuple[float, int]  # (trio time, frames written so far)


# -- pure helpers --------------------------------------------------------------------------


def default_threads() -> int:
    """Encoder threads of one default local worker (as ``peer.coordinator.run_encode``)."""
    return max(1, (os.cpu_count() or 1) // default_workers())


def source_graph(width: int, height: int) -> str:
    return (f"testsrc2=size={width}x{height}:rate={SOURCE_FPS:g},"
            f"noise=alls={NOISE_STRENGTH}:allf=t")


def scaled_profile(profile: Profile, width: int, height: int) -> Profile:
    """The profile for a proxy of ``width`` x ``height``: same bits per pixel.

    A fixed bitrate over fewer pixels would mean more bits per pixel, hence more
    coefficients to code and a slower encoder than the real size.
    """
    v = profile.video
    if not v.bitrate_k:
        return profile  # crf targets quality, which does not depend on size
    ratio = (width * height) / (v.width * v.height)

    def scale(k: int) -> int:
        return max(1, round(k * ratio))

    video = dataclasses.replace(v, bitrate_k=scale(v.bitrate_k), maxrate_k=scale(v.maxrate_k),
                                bufsize_k=scale(v.bufsize_k))
    return dataclasses.replace(profile, video=video)


def bench_argv(ffmpeg: str, profile: Profile, plan: VideoPlan, threads: int) -> list[str]:
    """The real chunk argv, reading an endless lavfi source instead of a file."""
    argv = encode_chunk_argv(ffmpeg, profile, plan, source_graph(plan.width, plan.height),
                             None, None, _ENDLESS_FRAMES, threads=threads)
    # encode_chunk_argv names no input format; a lavfi graph needs one. Both edits fail
    # loudly (ValueError) if the argv's shape changes, rather than benchmark something else.
    i = argv.index("-i")
    argv[i:i] = ["-f", "lavfi"]
    p = argv.index("-stats_period")
    argv[p + 1] = f"{SAMPLE_PERIOD_S:g}"
    return argv


def steady_rate(samples: Sequence[Sample], start: float, *, warmup_s: float = WARMUP_S,
                min_window_s: float = MIN_WINDOW_S) -> float | None:
    """Frames per second between the first report after warm-up with output and the last.

    None when that window is shorter than ``min_window_s`` or saw no new frame.
    """
    window = [(t, n) for t, n in samples if t >= start + warmup_s and n > 0]
    if len(window) < 2:
        return None
    (t0, n0), (t1, n1) = window[0], window[-1]
    if t1 - t0 < min_window_s or n1 <= n0:
        return None
    return (n1 - n0) / (t1 - t0)


def _stage_sizes(width: int, height: int) -> list[tuple[int, int]]:
    sizes = []
    for k in range(MAX_STAGES):
        w, h = width >> k, height >> k
        if min(w, h) < MIN_SIDE and k:
            break
        sizes.append((max(2, w - w % 2), max(2, h - h % 2)))
    return sizes


def profile_fingerprint(profile: Profile) -> str:
    """Changes whenever the video settings do, so a renamed-alike profile is remeasured."""
    blob = json.dumps(dataclasses.asdict(profile.video), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            info = fh.read()
    except OSError:
        info = ""
    # x86 says "model name"; many ARM kernels (Raspberry Pi) only "Model" or "Hardware".
    for field in ("model name", "Model", "Hardware", "cpu model"):
        for line in info.splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() == field and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def cache_key(ffmpeg: FFmpeg) -> str:
    """Scores hold for one ffmpeg build on one kind of machine, and nothing else."""
    return (f"ffmpeg {ffmpeg.version} at {ffmpeg.path}; cpu {_cpu_model()}"
            f" x{os.cpu_count() or 1}")


def cache_path(cache_dir: Path) -> Path:
    """The scores file in ``cache_dir`` (``swarm.config.Environment.cache_dir``)."""
    return cache_dir / CACHE_FILE


def _valid_score(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _parse_cache(text: str, key: str) -> dict[str, tuple[float, str]] | None:
    """name -> (score, fingerprint), or None for a corrupt or foreign file."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if (not isinstance(data, dict) or data.get("format") != CACHE_FORMAT
            or data.get("key") != key):
        return None
    scores, prints = data.get("scores"), data.get("profiles", {})
    if not isinstance(scores, dict) or not isinstance(prints, dict):
        return None
    out: dict[str, tuple[float, str]] = {}
    for name, score in scores.items():
        fp = prints.get(name, "")
        if _valid_score(score) and isinstance(fp, str):
            out[name] = (float(score), fp)
    return out


def _render_cache(key: str, entries: Mapping[str, tuple[float, str]]) -> str:
    return json.dumps({
        "format": CACHE_FORMAT,
        "key": key,
        "scores": {n: s for n, (s, _) in sorted(entries.items())},
        "profiles": {n: fp for n, (_, fp) in sorted(entries.items()) if fp},
    }, indent=2) + "\n"


# -- cache file ----------------------------------------------------------------------------


def _load_entries(ffmpeg: FFmpeg, cache_dir: Path | None
                  ) -> dict[str, tuple[float, str]] | None:
    if cache_dir is None:
        return None
    try:
        text = cache_path(cache_dir).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return _parse_cache(text, cache_key(ffmpeg))


def load_scores(ffmpeg: FFmpeg, cache_dir: Path | None) -> dict[str, float] | None:
    """Cached scores for this ffmpeg and machine; None if absent, corrupt or foreign (or if
    there is no ``cache_dir``)."""
    entries = _load_entries(ffmpeg, cache_dir)
    return None if entries is None else {n: s for n, (s, _) in entries.items()}


def save_scores(ffmpeg: FFmpeg, cache_dir: Path | None, scores: Mapping[str, float],
                profiles: Iterable[Profile] = ()) -> None:
    """Merge ``scores`` into the cache, atomically; raises OSError if it cannot be written.
    Without a ``cache_dir`` nothing is kept.

    ``profiles`` (optional) records each one's fingerprint so a changed profile of the same
    name is measured again; a score saved without one is trusted by name.
    """
    key = cache_key(ffmpeg)
    prints = {p.name: profile_fingerprint(p) for p in profiles}
    entries = _load_entries(ffmpeg, cache_dir) or {}
    for name, score in scores.items():
        if not _valid_score(score):
            raise ValueError(f"score for {name!r} must be a positive number, not {score!r}")
        entries[name] = (float(score), prints.get(name, ""))
    if cache_dir is None:
        return
    path = cache_path(cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A reader (another swarm process) sees the old file or the new one, never half of one.
    fd, tmp = tempfile.mkstemp(prefix=f".{CACHE_FILE}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(_render_cache(key, entries))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# -- measuring -----------------------------------------------------------------------------


async def _discard(_data: bytes) -> None:
    pass


async def _run_stage(argv: list[str], what: str, *, give_up_at: float,
                     stop_at: float, hard_end: float) -> list[Sample]:
    """Run until ``stop_at``, or until ``give_up_at`` if no packet has been written by then;
    output that begins late gets a steady window's worth of time, up to ``hard_end``."""
    samples: list[Sample] = []
    with trio.move_on_at(give_up_at) as scope:

        def on_progress(frames: int) -> None:
            now = trio.current_time()
            if frames > 0 and (not samples or samples[-1][1] == 0):
                # Output has begun: the rest of the budget is ours, and at least a window.
                window = now + WARMUP_S + MIN_WINDOW_S + 2 * SAMPLE_PERIOD_S
                scope.deadline = min(hard_end, max(stop_at, window))
            samples.append((now, frames))

        await run_ffmpeg(argv, stdout_sink=_discard, on_progress=on_progress, what=what)
    if not scope.cancelled_caught:
        raise EncodeError(f"{what}: ffmpeg stopped on its own reading an endless source")
    return samples


async def measure(ffmpeg: FFmpeg, profile: Profile, *, budget_s: float = DEFAULT_BUDGET_S,
                  threads: int | None = None) -> float:
    """This machine's speed for ``profile``, in work units per second.

    A work unit is one output pixel of one frame (frames x width x height, as the
    scheduler counts a chunk's work), so the score is the pixel rate one default local
    worker (``threads`` encoder threads, by default what ``run_encode`` gives each worker)
    sustains on noisy synthetic footage at the profile's output size. A node running
    several workers gets roughly that much per worker. Takes ``budget_s`` of wall time
    (plus the moment it takes to kill ffmpeg), more on a device too slow to show steady
    output by then (at most ``MAX_EXTEND`` times as much). Raises UsageError if this
    ffmpeg lacks the profile's encoder, EncodeError if ffmpeg fails.
    """
    if not ffmpeg.has(profile.video.codec):
        raise UsageError(f"{ffmpeg.path} has no {profile.video.codec} encoder")
    if not budget_s > 0:
        raise ValueError("budget_s must be positive")
    threads = threads or default_threads()
    full = video_plan(profile, profile.video.width, profile.video.height, SOURCE_FPS, False)
    sizes = _stage_sizes(full.width, full.height)
    t0 = trio.current_time()
    end = t0 + budget_s
    hard_end = t0 + budget_s * MAX_EXTEND
    samples: list[Sample] = []
    w, h = full.width, full.height
    for k, (w, h) in enumerate(sizes):
        t0 = trio.current_time()
        last = k == len(sizes) - 1
        give_up = hard_end if last else t0 + (end - t0) * GIVE_UP_FRACTION
        plan = dataclasses.replace(full, width=w, height=h)
        argv = bench_argv(ffmpeg.path, scaled_profile(profile, w, h), plan, threads)
        samples = await _run_stage(argv, f"benchmark {profile.name} at {w}x{h}",
                                   give_up_at=give_up, stop_at=end, hard_end=hard_end)
        rate = steady_rate(samples, t0)
        first = next((t - t0 for t, n in samples if n > 0), None)
        log.debug("benchmark %s at %dx%d: first packet at %s s, %d frames in %.2f s",
                  profile.name, w, h, "-" if first is None else f"{first:.2f}",
                  max([n for _, n in samples], default=0), trio.current_time() - t0)
        if rate is not None:
            if k:
                log.info("benchmark %s: encoder latency exceeds the budget at full size; "
                         "measured at %dx%d instead", profile.name, w, h)
            return rate * w * h
        if trio.current_time() >= hard_end:
            break
    # Nothing steady to measure: guess low rather than high (see the module docstring).
    elapsed = max((samples[-1][0] if samples else trio.current_time()) - t0, SAMPLE_PERIOD_S)
    frames = max([n for _, n in samples], default=0)
    score = max(frames, 1) / elapsed * w * h
    log.warning("benchmark %s: no steady output within %.1f s (encoder latency); "
                "using a pessimistic %.3g work/s", profile.name, budget_s * MAX_EXTEND, score)
    return score


async def run_benchmark(ffmpeg: FFmpeg, profiles: list[Profile], *,
                        budget_s: float = DEFAULT_BUDGET_S) -> dict[str, float]:
    """Measure each profile in turn (one at a time: they would share the CPU otherwise).

    Profiles whose encoder this ffmpeg lacks, or whose encode fails, are left out with a
    warning: this peer cannot take their chunks, and the others still get their scores.
    """
    scores: dict[str, float] = {}
    for profile in profiles:
        if not ffmpeg.has(profile.video.codec):
            log.warning("benchmark: skipping %s, %s has no %s", profile.name, ffmpeg.path,
                        profile.video.codec)
            continue
        try:
            scores[profile.name] = await measure(ffmpeg, profile, budget_s=budget_s)
        except EncodeError as exc:
            log.warning("benchmark: skipping %s: %s", profile.name, exc)
            continue
        log.info("benchmark %s: %.4g work/s", profile.name, scores[profile.name])
    return scores


async def ensure_scores(ffmpeg: FFmpeg, profiles: list[Profile], *, cache_dir: Path | None,
                        force: bool = False, budget_s: float = DEFAULT_BUDGET_S
                        ) -> tuple[dict[str, float], bool]:
    """Scores for ``profiles``, from the cache where it has them; True if nothing was measured.

    Missing (or changed, or with ``force`` all) profiles are measured and merged into the
    cache. A cache that cannot be written costs a warning, not the scores.
    """
    cached: dict[str, tuple[float, str]] | None = None
    if not force:
        cached = await trio.to_thread.run_sync(_load_entries, ffmpeg, cache_dir)
    cached = cached or {}
    scores: dict[str, float] = {}
    todo: list[Profile] = []
    for p in profiles:
        hit = cached.get(p.name)
        if hit is not None and hit[1] in ("", profile_fingerprint(p)):
            scores[p.name] = hit[0]
        elif ffmpeg.has(p.video.codec) and p not in todo:
            todo.append(p)
    if not todo:
        return scores, True
    measured = await run_benchmark(ffmpeg, todo, budget_s=budget_s)
    scores.update(measured)
    if measured:
        try:
            await trio.to_thread.run_sync(save_scores, ffmpeg, cache_dir, measured, todo)
        except OSError as exc:
            log.warning("benchmark: cannot write the cache in %s: %s", cache_dir, exc)
    return {p.name: scores[p.name] for p in profiles if p.name in scores}, False
