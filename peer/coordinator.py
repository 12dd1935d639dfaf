"""The coordinator of one job on this node: probe, plan, hand out chunks, merge, verify.

The decisions (which chunk to whom, leases, requeues) are ``swarm.job.Job``'s; this module
is the trio shell that runs ffmpeg and moves files. Everything it writes lives in one work
directory beside the output (same filesystem, so the final rename is atomic) and that
directory is removed on success, failure and cancellation alike.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from chunker.commands import VideoPlan, encode_chunk_argv, video_plan
from chunker.plan import ChunkPlan, default_chunk_seconds, plan_chunks
from chunker.probe import MediaInfo
from chunker.tools import FFmpeg, find_ffmpeg
from profiles import Profile
from swarm.errors import EncodeError, UsageError, VerifyError
from swarm.job import Assign, Finished, Job, Wait

from . import media
from .proc import run_ffmpeg

__all__ = ["EncodeOptions", "output_container", "run_encode"]

log = logging.getLogger(__name__)

_CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
# Local slots never vanish, so their lease only guards against a hung ffmpeg.
LOCAL_LEASE_S = 120.0

Event = dict[str, Any]


def output_container(path: str) -> str:
    ext = Path(path).suffix.lower()
    if ext not in _CONTAINERS:
        raise UsageError(f"output {path}: use one of {', '.join(_CONTAINERS)} as extension")
    return _CONTAINERS[ext]


@dataclass(slots=True)
class EncodeOptions:
    input: str
    output: str
    profile: Profile
    chunk_seconds: float | None = None
    workers: int = 0  # 0: one per two cores, at least one (see README for the measurement)
    threads: int = 0  # encoder threads per worker; 0: cores / workers
    name: str = field(default_factory=socket.gethostname)
    upscale: bool = False


def default_workers() -> int:
    return max(1, (os.cpu_count() or 1) // 2)


@dataclass(slots=True)
class _ChunkRecord:
    plan: ChunkPlan
    peer: str = ""
    encode_s: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0
    file: str = ""


@dataclass(slots=True)
class _Run:
    opts: EncodeOptions
    ffmpeg: FFmpeg
    info: MediaInfo
    vplan: VideoPlan
    plans: list[ChunkPlan]
    job: Job
    workdir: str
    emit: Callable[[Event], None]
    records: list[_ChunkRecord] = field(default_factory=list)


def _check_paths(opts: EncodeOptions) -> tuple[str, str]:
    """Returns the output container and the output's directory."""
    src = Path(opts.input)
    if not src.exists():
        raise UsageError(f"{opts.input}: no such file")
    if not src.is_file():
        raise UsageError(f"{opts.input}: not a file")
    if not os.access(src, os.R_OK):
        raise UsageError(f"{opts.input}: not readable")
    container = output_container(opts.output)
    outdir = Path(opts.output).resolve().parent
    if not outdir.is_dir():
        raise UsageError(f"output directory {outdir} does not exist")
    if not os.access(outdir, os.W_OK | os.X_OK):
        raise UsageError(f"output directory {outdir} is not writable")
    if Path(opts.output).resolve() == src.resolve():
        raise UsageError("output would overwrite the input")
    return container, str(outdir)


async def run_encode(opts: EncodeOptions, emit: Callable[[Event], None] = lambda e: None
                     ) -> dict[str, Any]:
    """Encode one file; returns the report. Raises SwarmError subclasses on failure."""
    t_start = time.monotonic()
    container, outdir = _check_paths(opts)
    need = [opts.profile.video.codec, opts.profile.audio.codec]
    ffmpeg = await trio.to_thread.run_sync(find_ffmpeg, need)
    info = await media.probe(ffmpeg, opts.input)
    workers = opts.workers or default_workers()
    threads = opts.threads or max(1, (os.cpu_count() or 1) // workers)
    chunk_s = opts.chunk_seconds or default_chunk_seconds(info.duration_s, workers)
    plans = plan_chunks(info.video, info.format_start_s, chunk_s)
    frames = info.video.frames
    fps = frames / info.duration_s if info.duration_s > 0 else 30.0
    dw, dh = info.video.display_size
    vplan = video_plan(opts.profile, dw, dh, fps, opts.upscale)
    try:
        workdir = tempfile.mkdtemp(prefix=f".{Path(opts.output).name}.swarm-", dir=outdir)
    except OSError as exc:
        raise UsageError(f"cannot write in {outdir}: {exc.strerror}") from exc
    try:
        job = Job([p.frames for p in plans], lease_s=LOCAL_LEASE_S)
        run = _Run(opts, ffmpeg, info, vplan, plans, job, workdir, emit,
                   [_ChunkRecord(p) for p in plans])
        emit({"event": "job_start", "input": opts.input, "output": opts.output,
              "profile": opts.profile.name, "frames": frames, "chunks": len(plans),
              "duration_s": info.duration_s, "width": vplan.width, "height": vplan.height,
              "workers": workers, "ffmpeg": ffmpeg.version})
        async with trio.open_nursery() as nursery:
            for slot in range(workers):
                nursery.start_soon(_local_worker, run, f"{opts.name}/{slot}", threads)
        if not job.done:
            raise EncodeError("some chunks could not be encoded on any worker")
        emit({"event": "merge"})
        tmp_out = os.path.join(workdir, "output" + Path(opts.output).suffix.lower())
        await media.merge(ffmpeg, workdir, [r.file for r in run.records],
                          [p.span_s for p in plans], info, opts.profile, tmp_out, container)
        await media.verify_output(ffmpeg, tmp_out, info)
        os.replace(tmp_out, opts.output)
        report = _report(run, time.monotonic() - t_start)
        emit({"event": "job_end", "output": opts.output, "wall_s": report["wall_s"]})
        return report
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(shutil.rmtree, workdir, True)


async def _local_worker(run: _Run, peer: str, threads: int) -> None:
    """One local encoder slot: claim, encode to a file, verify, report; until finished."""
    job = run.job
    while True:
        action = job.claim(peer, trio.current_time())
        if isinstance(action, Finished):
            return
        if isinstance(action, Wait):
            if not job.running() and not job.done:
                return  # nothing in flight and nothing for us: we are benched
            await trio.sleep(action.retry_after_s)
            continue
        await _encode_one(run, action, threads)


async def _encode_one(run: _Run, a: Assign, threads: int) -> None:
    job, rec = run.job, run.records[a.chunk]
    plan = rec.plan
    name = os.path.join(run.workdir, f"chunk_{a.chunk:05d}.{a.attempt}.nut")
    argv = encode_chunk_argv(run.ffmpeg.path, run.opts.profile, run.vplan, run.opts.input,
                             plan.seek_s, plan.trim_s, plan.frames, threads=threads)
    run.emit({"event": "chunk_start", "chunk": a.chunk, "attempt": a.attempt, "peer": a.peer})
    t0 = time.monotonic()

    def progress(frames: int) -> None:
        job.progress(a.attempt, frames, trio.current_time())
        run.emit({"event": "chunk_progress", "chunk": a.chunk, "frames": frames})

    try:
        fh = await trio.to_thread.run_sync(open, name, "wb")
        with fh:
            await run_ffmpeg(argv, stdout=fh, on_progress=progress, what=f"chunk {a.chunk}")
        await media.verify_chunk(run.ffmpeg, name, run.info, plan.first, plan.frames)
    except (EncodeError, VerifyError) as exc:
        log.warning("chunk %d attempt %s failed: %s", a.chunk, a.attempt, exc)
        requeued = job.failed(a.attempt, trio.current_time(), str(exc))
        run.emit({"event": "chunk_failed", "chunk": a.chunk, "attempt": a.attempt,
                  "reason": str(exc), "requeued": bool(requeued)})
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_unlink, name)
        return
    if not job.succeeded(a.attempt, trio.current_time()):
        await trio.to_thread.run_sync(_unlink, name)
        return
    final = os.path.join(run.workdir, f"chunk_{a.chunk:05d}.nut")
    os.replace(name, final)
    rec.peer = a.peer.rsplit("/", 1)[0]
    rec.encode_s = time.monotonic() - t0
    rec.bytes_out = (await trio.Path(final).stat()).st_size
    # Local slots read the file directly; attribute source bytes by frame share.
    rec.bytes_in = run.info.size * plan.frames // max(1, run.info.video.frames)
    rec.file = final
    run.emit({"event": "chunk_done", "chunk": a.chunk, "attempt": a.attempt, "peer": rec.peer,
              "encode_s": rec.encode_s, "frames_done": job.frames_done})


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _report(run: _Run, wall_s: float) -> dict[str, Any]:
    chunks = []
    peers: dict[str, dict[str, Any]] = {}
    for rec in run.records:
        c = run.job.chunks[rec.plan.index]
        chunks.append({
            "index": rec.plan.index, "start_s": round(rec.plan.start_s, 6),
            "frames": rec.plan.frames, "peer": rec.peer, "attempts": len(c.attempts),
            "encode_s": round(rec.encode_s, 3), "bytes_in": rec.bytes_in,
            "bytes_out": rec.bytes_out,
        })
        p = peers.setdefault(rec.peer, {"name": rec.peer, "chunks": 0, "frames": 0,
                                        "encode_s": 0.0})
        p["chunks"] += 1
        p["frames"] += rec.plan.frames
        p["encode_s"] = round(p["encode_s"] + rec.encode_s, 3)
    info = run.info
    return {
        "input": run.opts.input,
        "output": run.opts.output,
        "profile": run.opts.profile.name,
        "frames": info.video.frames,
        "duration_s": round(info.duration_s, 6),
        "wall_s": round(wall_s, 3),
        "width": run.vplan.width,
        "height": run.vplan.height,
        "chunks": chunks,
        "peers": list(peers.values()),
    }

