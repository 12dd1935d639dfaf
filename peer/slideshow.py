"""`swarm slideshow`: still images to one video, the chunks (runs of images) rendered in
parallel on this device's slots, then joined with the music.

The plan and every argv are ``chunker.slides``'; this module checks the images, runs the
chunk renders, verifies each chunk's frame count, merges, and verifies the output. Its work
directory (``.<output>.slides/`` beside the output) goes on success, failure and Ctrl-C; the
output appears only whole and verified.

Not done yet (issue 16): remote peers. A chunk reads only its own images and the next
chunk's first one, so a peer would fetch just those; the wire protocol has no assignment
for image runs yet.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from chunker.commands import write_concat_list
from chunker.slides import SlidePlan, plan_slides, slide_argv, slide_runs, soundtrack_args
from chunker.tools import FFmpeg, find_ffmpeg
from profiles import Profile
from swarm.errors import EncodeError, UsageError, VerifyError
from swarm.events import ChunkDone, ChunkStart, ImageSkipped, SlideEvent

from . import media
from .host import default_workers
from .proc import run_ffmpeg

__all__ = ["SlideshowOptions", "check_image", "run_slideshow"]

# A decoded image's error output kept for the message that names it.
_WHY_CHARS = 160
# The music may end up to an AAC frame (1024 samples, 23 ms at 44.1 kHz) off the video's
# end, plus the muxer's rounding: a few frames is a loss, not rounding.
MUSIC_SLACK_S = 0.05


@dataclass(frozen=True, slots=True)
class SlideshowOptions:
    images: tuple[str, ...]  # absolute paths, in show order
    output: str
    profile: Profile
    seconds_per_image: float = 3.0
    fade_s: float = 0.5
    audio: str | None = None
    bad_images: str = "skip"  # or "refuse": a bad image fails the job before it starts
    workers: int = 0  # local slots; 0: host.default_workers()
    force: bool = False
    ffmpeg: str | None = None  # SWARM_FFMPEG (swarm.config.Environment), passed down by cli.py


async def check_image(ffmpeg: FFmpeg, path: str) -> str | None:
    """Why ``path`` cannot be shown (empty, not an image, truncated), or None."""
    try:
        size = (await trio.Path(path).stat()).st_size
    except OSError as exc:
        return exc.strerror or str(exc)
    if size == 0:
        return "empty file"
    res = await run_ffmpeg([ffmpeg.path, "-nostdin", "-hide_banner", "-v", "error", "-i",
                            path, "-frames:v", "1", "-f", "null", "-"], check=False,
                           what="image check")
    if res.returncode != 0 or res.stderr.strip():
        lines = res.stderr.strip().splitlines()
        first = lines[0] if lines else f"ffmpeg exited {res.returncode}"
        return re.sub(r"^\[[^\]]* @ 0x[0-9a-f]+\] ", "", first)[:_WHY_CHARS]
    return None


def _check_output(opts: SlideshowOptions) -> Path:
    """Refuses what cannot be written; returns the work directory beside the output."""
    out = Path(opts.output)
    if out.suffix.lower() not in (".mp4", ".mov", ".mkv", ".m4v"):
        raise UsageError(f"output {opts.output}: use .mp4, .mov or .mkv")
    if not out.resolve().parent.is_dir():
        raise UsageError(f"output directory {out.resolve().parent} does not exist")
    if out.is_dir():
        raise UsageError(f"{opts.output} is a directory")
    if os.path.lexists(out) and not opts.force:
        raise UsageError(f"{opts.output} exists; use --force to replace it")
    if opts.audio is not None and not os.path.isfile(opts.audio):
        raise UsageError(f"--audio {opts.audio}: no such file")
    return out.resolve().parent / f".{out.name}.slides"


async def run_slideshow(opts: SlideshowOptions,
                        emit: Callable[[SlideEvent], None] = lambda e: None) -> dict[str, Any]:
    """Render the slideshow; returns a small report. Raises SwarmError subclasses."""
    t0 = trio.current_time()
    workdir = _check_output(opts)
    need = [opts.profile.video.codec] + ([opts.profile.audio.codec] if opts.audio else [])
    ffmpeg = await trio.to_thread.run_sync(find_ffmpeg, need, opts.ffmpeg)
    if opts.audio is not None:
        res = await run_ffmpeg([ffmpeg.path, "-nostdin", "-v", "error", "-i", opts.audio,
                                "-map", "0:a:0", "-t", "0.5", "-f", "null", "-"], check=False,
                               what="music check")
        if res.returncode != 0:
            why = (res.stderr.strip().splitlines() or ["no audio stream"])[-1]
            raise UsageError(f"--audio {opts.audio}: {why[:_WHY_CHARS]}")
    bad: dict[str, str] = {}
    limit = trio.CapacityLimiter(max(2, os.cpu_count() or 1))

    async def check(path: str) -> None:
        async with limit:
            why = await check_image(ffmpeg, path)
        if why is not None:
            bad[path] = why

    async with trio.open_nursery() as n:
        for path in opts.images:
            n.start_soon(check, path)
    if bad and opts.bad_images == "refuse":
        listed = "; ".join(f"{p}: {why}" for p, why in sorted(bad.items()))
        raise UsageError(f"{len(bad)} bad image(s): {listed}")
    for path in opts.images:
        if path in bad:
            emit(ImageSkipped(path, bad[path]))
    images = [p for p in opts.images if p not in bad]
    try:
        plan = plan_slides(images, opts.seconds_per_image, opts.fade_s, opts.profile)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    workers = opts.workers or default_workers()
    runs = slide_runs(len(images), workers)
    try:
        await trio.Path(workdir).mkdir(exist_ok=True)
        files = await _render(ffmpeg, plan, runs, opts.profile, str(workdir), workers, emit)
        tmp_out = str(workdir / ("output" + Path(opts.output).suffix.lower()))
        await _merge(ffmpeg, plan, runs, files, opts, str(workdir), tmp_out)
        os.replace(tmp_out, opts.output)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(shutil.rmtree, workdir, True)
    return {"output": opts.output, "images": len(images), "frames": plan.frames,
            "duration_s": round(plan.duration_s, 6), "chunks": len(runs),
            "skipped": [{"image": p, "reason": why} for p, why in sorted(bad.items())],
            "audio": opts.audio, "wall_s": round(trio.current_time() - t0, 3)}


async def _render(ffmpeg: FFmpeg, plan: SlidePlan, runs: list[tuple[int, int]],
                  profile: Profile, workdir: str, workers: int,
                  emit: Callable[[SlideEvent], None]) -> list[str]:
    slots = trio.CapacityLimiter(workers)
    threads = max(1, (os.cpu_count() or 1) // workers)
    files = [os.path.join(workdir, f"chunk_{i:05d}.nut") for i in range(len(runs))]
    done = 0

    async def one(i: int, first: int, count: int) -> None:
        nonlocal done
        async with slots:
            t = trio.current_time()
            frames = count * plan.per_image
            emit(ChunkStart(i, f"c{i:05d}a001", "local", frames, False))
            await run_ffmpeg(slide_argv(ffmpeg.path, plan, first, count, profile, files[i],
                                        threads=threads), what=f"slide chunk {i}")
            got = (await media.probe(ffmpeg, files[i])).video.frames
            if got != frames:
                raise VerifyError(f"slide chunk {i}: {got} frames, expected {frames}")
            done += frames
            emit(ChunkDone(i, f"c{i:05d}a001", "local", round(trio.current_time() - t, 3),
                           frames, done))

    async with trio.open_nursery() as n:
        for i, (first, count) in enumerate(runs):
            n.start_soon(one, i, first, count)
    return files


async def _merge(ffmpeg: FFmpeg, plan: SlidePlan, runs: list[tuple[int, int]],
                 files: list[str], opts: SlideshowOptions, workdir: str, out: str) -> None:
    concat = os.path.join(workdir, "chunks.ffconcat")
    spans: list[float | None] = [count * plan.per_image / plan.fps for _, count in runs]
    await trio.to_thread.run_sync(write_concat_list, concat, files, spans)
    fmt = {".mkv": "matroska", ".mov": "mov"}.get(Path(out).suffix.lower(), "mp4")
    argv = [ffmpeg.path, "-nostdin", "-hide_banner", "-loglevel", "error", "-f", "concat",
            "-safe", "0", "-i", concat, *soundtrack_args(opts.audio, plan.duration_s,
                                                         opts.profile),
            "-map", "0:v", "-c:v", "copy", "-f", fmt, "-y", out]
    if fmt != "matroska":
        argv[-4:-4] = ["-movflags", "+faststart"]
    try:
        await run_ffmpeg(argv, what="slideshow merge")
    except EncodeError as exc:
        raise EncodeError(f"merging the slideshow: {exc}") from exc
    info = await media.probe(ffmpeg, out)
    if info.video.frames != plan.frames:
        raise VerifyError(f"slideshow has {info.video.frames} frames, expected {plan.frames}")
    if opts.audio is not None:
        if not info.audios:
            raise VerifyError("slideshow lost its music")
        span = info.audios[0].end_s - info.video.start_s
        if abs(span - plan.duration_s) > MUSIC_SLACK_S:
            raise VerifyError(f"music lasts {span:.2f} s, the video {plan.duration_s:.2f} s")
