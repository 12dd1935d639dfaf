"""This device's own encoder slots, and the audio encode that runs beside them.

A local slot claims from ``JobServer`` like a peer does, but encodes straight from the input
file into the work directory and hands the file to ``JobServer.accept``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import trio

from chunker.commands import encode_chunk_argv
from swarm.batch import only_duplicates_left
from swarm.errors import EncodeError
from swarm.events import AudioDone, AudioStart
from swarm.job import Finished, Grant, Retry

from . import media
from .gate import Share
from .jobserver import JobServer
from .proc import niced, run_ffmpeg
from .transfer import unlink

__all__ = ["LOCAL_NICE", "audio_when_idle", "ffmpeg_to_file", "local_slot"]

log = logging.getLogger(__name__)

# Encoded output is written to the chunk file in pieces of this size (see _encode_local).
WRITE_BATCH = 1 << 20
# A coordinator's own encoders run this much nicer than it: serving the source to its
# peers and checking their results must not wait for them. Peers wait on both; on a 0.3-CPU
# coordinator (bench/lan) a result's checks took 20 s behind the local x264's threads while
# its peer sat idle, waiting for the verdict.
LOCAL_NICE = 10


async def local_slot(server: JobServer, slot: int, threads: int, share: Share | None = None
                     ) -> None:
    """One local encoder slot: claim, encode to a file, hand it to the server; until done.

    The slot claims its next chunk while the last one is being verified: the check (a full
    decode, ~5 % of the encode's CPU) would otherwise leave a core idle after every chunk.
    In a batch (``share``) the slot holds a token of the batch's gate from its claim to the
    end of its chunk, and lets an earlier file's slot go first between chunks.
    """
    job = server.job
    holding = False
    try:
        async with trio.open_nursery() as checks:
            while True:
                if (share is not None and share.next_ready.is_set()
                        and only_duplicates_left(job)):
                    # Only a duplicate of a running chunk left here: the next file's fresh
                    # chunks are worth more. A chunk requeued later is pending again.
                    server.core_idle.set()
                    if holding:
                        holding = False
                        share.release()
                    await trio.sleep(job.retry_after_s)
                    continue
                if share is not None and not holding:
                    await share.acquire()
                    holding = True
                action = server.claim(server.local_key, trio.current_time())
                if isinstance(action, Finished):
                    return
                if isinstance(action, Retry):
                    server.core_idle.set()
                    if server.local_key in job.benched:
                        return
                    if share is not None:
                        holding = False
                        share.release()  # nothing to do here: another file may use it
                    await trio.sleep(action.retry_after_s)
                    continue
                encoded = await _encode_local(server, action, threads)
                if encoded is not None:
                    checks.start_soon(server.accept, action.attempt, *encoded)
                if share is not None:
                    holding = False
                    await share.yield_to_earlier()
                    holding = True
    finally:
        if holding and share is not None:
            share.release()


async def audio_when_idle(server: JobServer, out: str, share: Share | None = None) -> None:
    """Encode the audio beside the chunks once a core is free, so that the merge after the
    last chunk only copies (on one node the tail leaves a core idle for about a chunk).
    In a batch the audio also starts when the gate gives it a token, which it holds while
    it runs: then it overlaps an earlier file's tail."""
    holding = False
    try:
        if share is None:
            await server.core_idle.wait()
        else:
            async with trio.open_nursery() as race:

                async def via_gate() -> None:
                    nonlocal holding
                    await share.acquire()
                    holding = True
                    race.cancel_scope.cancel()

                async def via_idle() -> None:
                    await server.core_idle.wait()
                    race.cancel_scope.cancel()

                race.start_soon(via_gate)
                race.start_soon(via_idle)
        await _encode_audio(server, out)
    finally:
        if holding and share is not None:
            share.release()


async def _encode_audio(server: JobServer, out: str) -> None:
    server.emit(AudioStart())
    t = trio.current_time()
    await media.encode_audio(server.ffmpeg, server.info, server.opts.job.profile, server.tracks,
                             out)
    server.audio_s = trio.current_time() - t
    server.audio_done.set()
    server.emit(AudioDone(round(server.audio_s, 3)))


async def ffmpeg_to_file(argv: list[str], name: str, *,
                         on_progress: Callable[[int], None], what: str) -> None:
    """Run ``argv`` (writing to pipe:1) into the file ``name``.

    Through a pipe, not straight into the file: if we are SIGKILLed the encoder dies of
    SIGPIPE at its next write instead of running on as an orphan. EncodeError if it fails;
    the file is then the caller's to remove."""
    async with await trio.open_file(name, "wb") as fh:
        pending = bytearray()

        async def sink(data: bytes) -> None:
            # ffmpeg writes a packet at a time (a few KiB): one thread hop per write cost
            # the coordinator 0.4 s of CPU per job; batch them.
            pending.extend(data)
            if len(pending) >= WRITE_BATCH:
                await fh.write(pending)
                pending.clear()

        await run_ffmpeg(argv, stdout_sink=sink, on_progress=on_progress, what=what)
        await fh.write(pending)


async def _encode_local(server: JobServer, a: Grant, threads: int) -> tuple[str, int] | None:
    """Encode one chunk to a file in the work directory; returns (file, source bytes) to
    verify and accept, or None if the attempt failed or is no longer wanted."""
    plan = server.plans[a.chunk]
    name = os.path.join(server.workdir, f"recv_{a.attempt}.nut")
    argv = niced(encode_chunk_argv(server.ffmpeg.path, server.opts.job.profile,
                                   server.vplan_of(a.chunk),
                                   server.opts.job.input, plan.seek_s, plan.trim_s,
                                   plan.frames, threads=threads,
                                   keyframes_s=server.keyframes_s(a.chunk)), LOCAL_NICE)
    with trio.CancelScope() as scope:

        def progress(frames: int) -> None:
            if not server.progress(a.attempt, frames, trio.current_time()):
                scope.cancel()  # replaced (lease lost) or already done elsewhere

        try:
            await ffmpeg_to_file(argv, name, on_progress=progress, what=f"chunk {a.chunk}")
        except EncodeError as exc:
            log.warning("chunk %d attempt %s failed: %s", a.chunk, a.attempt, exc)
            server.fail(a.attempt, str(exc))
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(unlink, name)
            return None
        # Local slots read the file directly; attribute source bytes by frame share.
        return name, server.info.size * plan.frames // max(1, server.info.video.frames)
    await trio.to_thread.run_sync(unlink, name)
    return None
