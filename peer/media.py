"""Media steps of a job run as trio-cancellable ffmpeg children.

The argv builders and the checks are pure (chunker/); this module only runs them.
"""

from __future__ import annotations

import os

import trio

from chunker.commands import audio_argv, merge_argv, verify_chunk_argv, write_concat_list
from chunker.probe import MediaInfo, check_probe_run, input_size, interpret_probe, probe_argv
from chunker.tools import FFmpeg
from chunker.verify import check_chunk_listing, check_output
from profiles import Profile
from swarm.errors import ProbeError, VerifyError

from .proc import run_ffmpeg

__all__ = [
    "audio_channels",
    "encode_audio",
    "merge",
    "probe",
    "verify_chunk",
    "verify_output",
]


async def probe(ffmpeg: FFmpeg, path: str) -> MediaInfo:
    size = input_size(path)
    res = await run_ffmpeg(probe_argv(ffmpeg, path), check=False, what="probe")
    check_probe_run(path, res.returncode, res.stderr)
    return interpret_probe(path, size, res.stdout.decode("utf-8", "replace"), res.stderr)


async def verify_chunk(ffmpeg: FFmpeg, path: str, source: MediaInfo, first: int,
                       frames: int) -> None:
    """Decode the chunk fully; raises VerifyError unless frames and times are as planned."""
    res = await run_ffmpeg(verify_chunk_argv(ffmpeg, path), check=False, what="verify")
    if res.returncode != 0:
        raise VerifyError(f"chunk does not decode: {res.stderr.strip()[-200:]}")
    check_chunk_listing(res.stdout.decode("utf-8", "replace"), res.stderr, source, first, frames)


def audio_channels(source: MediaInfo, profile: Profile) -> int | None:
    """Never upmix: the profile's channel count is a bound."""
    return (min(source.audio.channels, profile.audio.channels)
            if source.audio is not None else None)


async def encode_audio(ffmpeg: FFmpeg, source: MediaInfo, profile: Profile, out: str) -> None:
    """Encode the whole audio track into ``out`` for ``merge(audio_file=out)``."""
    channels = audio_channels(source, profile)
    if channels is None:
        raise ValueError("the source has no audio")
    await run_ffmpeg(audio_argv(ffmpeg.path, source.path, profile, channels, out),
                     what="audio")


async def merge(ffmpeg: FFmpeg, workdir: str, chunk_files: list[str],
                spans: list[float | None], source: MediaInfo, profile: Profile, out: str,
                container: str, audio_file: str | None = None) -> None:
    """Concatenate verified chunks with the audio, into ``out``: the audio is encoded here
    unless ``audio_file`` holds it already."""
    concat = os.path.join(workdir, "chunks.ffconcat")
    await trio.to_thread.run_sync(write_concat_list, concat, chunk_files, spans)
    channels = audio_channels(source, profile)
    first_stream = min(source.video.start_s,
                       source.audio.start_s if source.audio else source.video.start_s)
    await run_ffmpeg(
        merge_argv(ffmpeg.path, concat, source.path, profile, channels,
                   source.video.start_s - first_stream, source.video.time_base, out,
                   container, audio_file),
        what="merge",
    )


async def verify_output(ffmpeg: FFmpeg, path: str, source: MediaInfo) -> MediaInfo:
    """Frame count and timestamps equal the source's; audio present iff the source had it."""
    try:
        out = await probe(ffmpeg, path)
    except ProbeError as exc:
        raise VerifyError(f"merged output unreadable: {exc}") from exc
    check_output(out, source)
    return out
