"""A batch: `swarm encode a.mp4 b.mov dir/`, one ``run_encode`` per file, kept overlapping.

``find_inputs`` walks the arguments; ``swarm.batch.plan`` decides what is encoded and where
each output goes. ``run_batch`` then runs the files in order, starting the next one while
the running one finishes (``swarm.batch.Lookahead``): its probe, audio and first chunks
fill the slots the tail and merge of the previous one leave idle. The local slots of the
files in flight share one ``peer.gate.SlotGate``, the earlier file first, so the machine
never runs more encodes than it has slots. Remote peers work for one coordinator at a time:
they move to the next file once the previous one has all its chunks (its merge overlaps).

A file that fails is reported and the others go on; one whose output exists and verifies
against its input is skipped (a rerun), and one a crash left a journal for resumes
(``run_encode`` does that). ``--force`` re-encodes everything.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from chunker.tools import find_ffmpeg
from chunker.tracks import plan_tracks
from swarm.batch import MAX_IN_FLIGHT, Found, Lookahead, Planned
from swarm.errors import EncodeError, ProbeError, SwarmError, UsageError, VerifyError
from swarm.events import (
    BatchEvent,
    FileDone,
    FileFailed,
    FileSkipped,
    FileStart,
    InFile,
    JobEvent,
    JobStart,
)

from . import media
from .coordinator import (
    ladder_outputs,
    output_container,
    planned_video,
    run_encode,
    verify_rendition,
    with_ladder,
)
from .gate import Share, SlotGate
from .journal import work_dir_for
from .options import EncodeOptions

__all__ = ["FileResult", "find_inputs", "run_batch"]


@dataclass(slots=True)
class FileResult:
    index: int
    input: str
    output: str
    status: str  # "done", "skipped" or "failed"
    reason: str = ""
    report: dict[str, Any] | None = None  # run_encode's, for a file encoded


def find_inputs(args: list[str]) -> list[Found]:
    """Each argument as a file, or every file under it if it is a directory (recursively,
    not following symlinked directories, leaving out hidden ones: a job's work directory
    ``.<output>.swarm/`` is one). Raises UsageError for an argument that does not exist."""
    found: list[Found] = []
    for arg in args:
        path = os.path.abspath(arg)
        if os.path.isdir(path):
            for top, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [Found(os.path.join(top, f), path) for f in sorted(files)
                          if not f.startswith(".")]
        elif os.path.lexists(path):
            found.append(Found(path))
        else:
            raise UsageError(f"{arg}: no such file or directory")
    return found


def _expected(exc: BaseException) -> BaseException | None:
    """The failure we expect (the most telling leaf of a group: a usage error, then any
    swarm error, then an OS error), or None for anything else, which then propagates."""
    leaves = [exc]
    while any(isinstance(e, BaseExceptionGroup) for e in leaves):
        leaves = [x for e in leaves for x in (e.exceptions if isinstance(e, BaseExceptionGroup)
                                               else (e,))]
    for kind in (UsageError, SwarmError, OSError):
        found = next((e for e in leaves if isinstance(e, kind)), None)
        if found is not None:
            return found
    return None


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


async def existing_output(opts: EncodeOptions) -> str | None:
    """Why this file needs no encode (its output, and with a ladder every rendition's file,
    exists and verifies against the input), or None to encode it. An output that exists and
    does not verify, or a ladder with some renditions missing, is refused, as a single
    encode refuses to overwrite without ``--force``."""
    opts = with_ladder(opts)
    out, src = opts.job.output, opts.job.input
    there = await trio.to_thread.run_sync(os.path.lexists, out)
    if opts.job.force or not there or await trio.Path(work_dir_for(out)).exists():
        return None  # nothing there, --force, or a crashed run that run_encode resumes
    ffmpeg = await trio.to_thread.run_sync(find_ffmpeg, [opts.job.profile.video.codec],
                                            opts.local.ffmpeg)
    info = await media.probe(ffmpeg, src)
    vplan = planned_video(opts, info)
    paths = [out, *ladder_outputs(out, vplan)]
    missing = [p for p in paths if not await trio.to_thread.run_sync(os.path.lexists, p)]
    if missing:
        raise UsageError(f"{out} exists but {', '.join(missing)} does not; use --force to "
                         "encode the ladder again")
    sizes = [(r.width, r.height) for r in vplan.rungs] or [(vplan.width, vplan.height)]
    for path, (width, height) in zip(paths, sizes, strict=True):
        tracks = plan_tracks(info, output_container(path), opts.job.profile.audio.channels,
                             opts.job.profile.audio.codec, opts.job.audio, opts.job.subtitles,
                             mkv_name=Path(path).with_suffix(".mkv").name)
        try:
            await verify_rendition(ffmpeg, path, info, tracks, width, height)
        except (VerifyError, EncodeError) as exc:
            raise UsageError(f"{path} exists and does not verify against {src} ({exc}); "
                             "use --force to replace it") from exc
    return "output exists and verified"


async def run_batch(planned: list[Planned], make_opts: Callable[[Planned], EncodeOptions],
                    emit: Callable[[BatchEvent], None], *, workers: int,
                    overlap: bool = True) -> list[FileResult]:
    """Encode ``planned`` in order; returns one result per file, in that order.

    ``workers``: local slots, shared by the files in flight. ``overlap`` False runs one
    file after the other, as separate commands would (bench/queue compares the two).
    """
    gate = SlotGate(workers) if overlap and workers > 0 else None
    results: list[FileResult | None] = [None] * len(planned)
    in_flight = trio.Semaphore(MAX_IN_FLIGHT)
    shares = [Share(gate, i) for i in range(len(planned))] if gate is not None else []

    async def one(i: int, item: Planned, go_next: trio.Event) -> None:
        res = FileResult(i, item.input, item.output, "failed")
        await in_flight.acquire()
        try:
            if item.clash:
                raise UsageError(item.clash)
            opts = make_opts(item)
            why = await existing_output(opts)
            if why is not None:
                res.status, res.reason = "skipped", why
                emit(FileSkipped(i, item.input, item.output, why))
                return
            emit(FileStart(i, item.input, item.output))
            ahead = Lookahead()

            def file_emit(e: JobEvent) -> None:
                ahead.feed(e)
                if isinstance(e, JobStart) and shares and i > 0:
                    shares[i - 1].next_ready.set()
                emit(InFile(i, e))
                if overlap and ahead.next_may_start:
                    go_next.set()

            t0 = trio.current_time()
            res.report = await run_encode(opts, file_emit, shares[i] if shares else None)
            res.status = "done"
            emit(FileDone(i, item.input, item.output, round(trio.current_time() - t0, 3)))
        except (SwarmError, OSError, ExceptionGroup) as exc:
            leaf = _expected(exc)
            if leaf is None:
                raise
            res.reason = _message(leaf).removeprefix(f"{item.input}: ")
            if isinstance(leaf, ProbeError) and res.reason == "no video stream" \
                    and not item.named:
                # Found by a walk (audio in a video container): left out, not a failure.
                res.status, res.reason = "skipped", "no video stream"
                emit(FileSkipped(i, item.input, item.output, res.reason))
                return
            emit(FileFailed(i, item.input, item.output, res.reason))
        finally:
            in_flight.release()
            results[i] = res
            go_next.set()

    async with trio.open_nursery() as nursery:
        for i, item in enumerate(planned):
            go_next = trio.Event()
            nursery.start_soon(one, i, item, go_next)
            await go_next.wait()
    return [r for r in results if r is not None]
