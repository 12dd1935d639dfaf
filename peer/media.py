"""Media steps of a job run as trio-cancellable ffmpeg children.

The argv builders and the checks are pure (chunker/); this module only runs them.
"""

from __future__ import annotations

import os
from pathlib import Path

import trio

from chunker.commands import (
    VideoPlan,
    audio_argv,
    merge_argv,
    verify_chunk_argv,
    write_concat_list,
)
from chunker.probe import MediaInfo, check_probe_run, input_size, interpret_probe, probe_argv
from chunker.slides import SlidePlan
from chunker.spotcheck import (
    Compared,
    parse_compared,
    sampled_verify_argv,
    slide_check_argv,
    spot_check_argv,
)
from chunker.tools import FFmpeg
from chunker.tracks import TrackPlan, ffmetadata_text
from chunker.verify import check_chunk_listing, check_output
from profiles import Profile
from swarm.errors import ProbeError, VerifyError

from .proc import run_ffmpeg
from .transfer import unlink

# The probe's stderr is its stream dump: a few lines per stream and chapter. A file with
# hundreds of chapters or tags still fits; what a bigger one loses is its dump's tail.
PROBE_STDERR_LINES = 20_000

__all__ = [
    "encode_audio",
    "merge",
    "probe",
    "verify_and_spot_check",
    "verify_chunk",
    "verify_output",
]


async def probe(ffmpeg: FFmpeg, path: str) -> MediaInfo:
    size = input_size(path)
    res = await run_ffmpeg(probe_argv(ffmpeg, path), check=False, what="probe",
                           stderr_lines=PROBE_STDERR_LINES)
    check_probe_run(path, res.returncode, res.stderr)
    return interpret_probe(path, size, res.stdout.decode("utf-8", "replace"), res.stderr)


async def verify_chunk(ffmpeg: FFmpeg, path: str, source: MediaInfo, first: int,
                       frames: int, rung: int = 0) -> float:
    """Decode the chunk's video stream ``rung`` fully; raises VerifyError unless frames and
    times are as planned. Returns the chunk's first timestamp (``check_chunk_listing``)."""
    res = await run_ffmpeg(verify_chunk_argv(ffmpeg, path, rung), check=False, what="verify")
    if res.returncode != 0:
        where = f" (rung {rung})" if rung else ""
        raise VerifyError(f"chunk does not decode{where}: {res.stderr.strip()[-200:]}")
    return check_chunk_listing(res.stdout.decode("utf-8", "replace"), res.stderr, source, first,
                               frames)


async def verify_and_spot_check(ffmpeg: FFmpeg, path: str, scratch: str, source: MediaInfo,
                                plan: VideoPlan, first: int, frames: int, samples: list[int]
                                ) -> list[Compared] | str:
    """``verify_chunk`` (of the chunk's first video stream), whose decode also gives its
    frames ``samples`` (written to ``scratch``, removed here), then their tile PSNRs against
    the source's frames there and around (chunker.spotcheck). VerifyError if the chunk
    fails verification; why, if it passed but the comparison could not be made (a frame
    missing on either side)."""
    try:
        argv = sampled_verify_argv(ffmpeg, path, plan, samples, scratch)
        res = await run_ffmpeg(argv, check=False, what="verify")
        if res.returncode != 0:
            raise VerifyError(f"chunk does not decode: {res.stderr.strip()[-200:]}")
        check_chunk_listing(res.stdout.decode("utf-8", "replace"), res.stderr, source, first,
                            frames)
        argv = spot_check_argv(ffmpeg, scratch, source, plan, first, samples)
        res = await run_ffmpeg(argv, check=False, what="content check")
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(unlink, scratch)
    if res.returncode != 0:
        return f"content check failed to run: {res.stderr.strip()[-200:]}"
    try:
        return parse_compared(res.stdout.decode("utf-8", "replace"), first, samples,
                              source.video.frames)
    except ValueError as exc:
        return f"content check: {exc}"


async def slide_check(ffmpeg: FFmpeg, path: str, plan: SlidePlan, first: int, count: int,
                      samples: list[int]) -> list[Compared]:
    """Tile PSNRs of a slideshow chunk's frames ``samples`` against our own render of them
    and around (chunker.spotcheck.slide_check_argv); VerifyError as for ``spot_check``."""
    argv = slide_check_argv(ffmpeg, path, plan, first, count, samples)
    res = await run_ffmpeg(argv, check=False, what="content check")
    if res.returncode != 0:
        raise VerifyError(f"content check failed to run: {res.stderr.strip()[-200:]}")
    try:
        return parse_compared(res.stdout.decode("utf-8", "replace"), 0, samples,
                              count * plan.per_image)
    except ValueError as exc:
        raise VerifyError(f"content check: {exc}") from exc


async def encode_audio(ffmpeg: FFmpeg, source: MediaInfo, profile: Profile,
                       tracks: TrackPlan, out: str) -> None:
    """Encode every kept audio track into ``out`` for ``merge(audio_file=out)``."""
    if not tracks.audio:
        raise ValueError("no audio track to encode")
    await run_ffmpeg(audio_argv(ffmpeg.path, source.path, profile, tracks.audio, out),
                     what="audio")


async def merge(ffmpeg: FFmpeg, workdir: str, chunk_files: list[str],
                spans: list[float | None], source: MediaInfo, profile: Profile,
                tracks: TrackPlan, out: str, container: str,
                audio_file: str | None = None, rung: int = 0) -> None:
    """Concatenate verified chunks with the kept tracks, into ``out``: the audio is encoded
    here unless ``audio_file`` holds it already."""
    concat = os.path.join(workdir, f"chunks{rung or ''}.ffconcat")
    await trio.to_thread.run_sync(write_concat_list, concat, chunk_files, spans)
    first_stream = min([source.video.start_s, *(a.start_s for a in source.audios)])
    meta = None
    if tracks.tags or tracks.chapters:
        meta = os.path.join(workdir, "tags.ffmeta")
        # The output's zero is the first stream's start, in the source's own clock.
        text = ffmetadata_text(source, tracks, source.format_start_s + first_stream)
        await trio.to_thread.run_sync(Path(meta).write_text, text, "utf-8")
    videos = [s for s in source.dump.of_kind("video") if not s.cover]
    await run_ffmpeg(
        merge_argv(ffmpeg.path, concat, source.path, profile, tracks,
                   source.video.start_s - first_stream, source.video.time_base, out,
                   container, audio_file, source_start_s=source.format_start_s,
                   metadata_file=meta, video=videos[0] if videos else None, rung=rung),
        what="merge",
    )


async def verify_output(ffmpeg: FFmpeg, path: str, source: MediaInfo,
                        tracks: TrackPlan) -> MediaInfo:
    """Frame count and timestamps equal the source's; every kept track is there."""
    try:
        out = await probe(ffmpeg, path)
    except ProbeError as exc:
        raise VerifyError(f"merged output unreadable: {exc}") from exc
    check_output(out, source, tracks)
    return out
