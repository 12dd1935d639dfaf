"""The coordinator of one job: probe, plan, hand out chunks, merge, verify.

Decisions (which chunk to whom, leases, requeues) are ``swarm.job.Job``'s; this module is
the trio shell around it. ``JobServer`` is one job's state as both local encoder slots and
remote peers (through ``peer.node``'s HTTP routes) see it; ``run_encode`` drives a whole
job: it starts a node, recruits peers (mDNS and ``--peer``), runs local slots, ticks
leases, and merges. Everything it writes lives in one work directory beside the output
(same filesystem, so the final rename is atomic), removed on success, failure and Ctrl-C.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from chunker.commands import AUDIO_COPY_EXACT, VideoPlan, encode_chunk_argv, video_plan
from chunker.paramsets import ENCODER_CODECS, HEADER_BYTES, mismatch, nut_codec_data, parameter_sets
from chunker.plan import ChunkPlan, default_chunk_seconds, plan_chunks, plans_from_cuts
from chunker.probe import MediaInfo
from chunker.tools import FFmpeg, find_ffmpeg
from chunker.tracks import AUDIO_MODES, SUBTITLE_MODES, TrackPlan, plan_tracks
from profiles import Profile
from swarm.errors import EncodeError, UsageError, VerifyError
from swarm.events import (
    AudioDone,
    AudioStart,
    ChunkDone,
    ChunkDuplicate,
    ChunkFailed,
    ChunkLost,
    ChunkProgress,
    ChunkRequeued,
    ChunkStart,
    ChunkUpload,
    JobEnd,
    JobEvent,
    JobResumed,
    JobStart,
    Listening,
    Merge,
    PeerBenched,
    Tracks,
)
from swarm.job import Assign, AttemptOutcome, Finished, Job, Wait
from swarm.protocol import Assignment as AssignmentMsg
from swarm.protocol import JobDone
from swarm.protocol import Wait as WaitMsg
from swarm.verdict import BENCH_GRACE_S, hopeless_chunk, left_out, nobody_left

from . import media
from .http import HTTPError, Receive, Request, Send, iter_body, respond
from .journal import (
    MERGED_KEY,
    InputIdentity,
    Journal,
    file_digest,
    input_identity,
    output_is_ours,
    output_stamp,
    work_dir_for,
)
from .node import Node, NodeConfig
from .proc import run_ffmpeg
from .recruit import census, free_port, recruit

__all__ = ["EncodeOptions", "JobServer", "output_container", "run_encode"]

log = logging.getLogger(__name__)

_CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
# A peer reports progress every second; three missed reports plus a slow start is a loss.
LEASE_S = 15.0
TICK_S = 0.5
# With nothing encoding anywhere for this long, the job cannot finish: fail it clearly.
STALL_S = 60.0
SOURCE_PIECE = 256 * 1024
RESPONSE_GRACE_S = 0.3
# Encoded output is written to the chunk file in pieces of this size (see _encode_local).
WRITE_BATCH = 1 << 20

def tracks_event(t: TrackPlan) -> Tracks:
    return Tracks(audio=tuple(k.as_dict() for k in t.audio),
                  subtitles=tuple(k.as_dict() for k in t.subtitles),
                  attachments=tuple(k.as_dict() for k in t.attachments),
                  chapters=t.chapters, tags=dict(t.tags),
                  dropped=tuple(d.as_dict() for d in t.dropped))


def output_container(path: str) -> str:
    ext = Path(path).suffix.lower()
    if ext not in _CONTAINERS:
        raise UsageError(f"output {path}: use one of {', '.join(_CONTAINERS)} as extension")
    return _CONTAINERS[ext]


def default_workers() -> int:
    """Local encoder slots: one per two cores, but at least two. On 2 cores, 2 single-
    threaded slots beat or matched 1 two-threaded slot in all three bench/overhead sweeps
    (chunk parallelism hides each chunk's start-up and the verification decode)."""
    return max(2, (os.cpu_count() or 1) // 2)


@dataclass(slots=True)
class EncodeOptions:
    input: str
    output: str
    profile: Profile
    chunk_seconds: float | None = None
    workers: int = 0  # local encoder slots; 0: default_workers()
    threads: int = 0  # encoder threads per local slot; 0: cores / slots
    name: str = field(default_factory=socket.gethostname)
    upscale: bool = False
    no_local: bool = False
    network: bool = False  # run a node and recruit remote peers
    discover: bool = True  # find peers with mDNS (with network)
    peers: list[str] = field(default_factory=list)  # HOST:PORT named explicitly
    secret: str | None = None
    port: int = 0
    interfaces: list[str] | None = None
    lease_s: float = LEASE_S
    policy: str = "swarm"  # scheduler: "swarm", or the benchmark baselines "fifo", "equal"
    fresh: bool = False  # ignore a journal left by a crashed run of the same job
    force: bool = False  # replace an existing output (see _refuse_overwrite)
    audio: str = "all"  # audio tracks kept: "all", "first" or "none" (chunker.tracks)
    subtitles: str = "copy"  # "copy" where the container can hold them, or "none"


@dataclass(slots=True)
class _ChunkRecord:
    plan: ChunkPlan
    peer: str = ""
    encode_s: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0
    file: str = ""


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class JobServer:
    """One job as its encoders see it: claims, progress, source bytes, verified results."""

    def __init__(self, *, job_id: str, opts: EncodeOptions, ffmpeg: FFmpeg, info: MediaInfo,
                 plans: list[ChunkPlan], vplan: VideoPlan, workdir: str,
                 emit: Callable[[JobEvent], None], local_key: str,
                 journal: Journal | None = None, tracks: TrackPlan | None = None) -> None:
        self.job_id = job_id
        self.opts = opts
        self.ffmpeg = ffmpeg
        self.info = info
        self.plans = plans
        self.vplan = vplan
        self.workdir = workdir
        self.emit = emit
        self.local_key = local_key
        self.job = Job([p.frames for p in plans], lease_s=opts.lease_s,
                       pixels=vplan.width * vplan.height, policy=opts.policy)
        self.journal = journal
        self.tracks = tracks if tracks is not None else TrackPlan()
        self.restored: list[int] = []
        self.scores: dict[str, float] = {}  # benchmark work/s per slot, from /v1/info
        self.slots: dict[str, int] = {}
        self.claimed_by: set[str] = set()
        self.invited_at: dict[str, float] = {}  # node id -> when its invite was accepted
        # Why the job cannot succeed (set by ``fail``; ``_watch`` raises it), and the peers
        # benched for failing, by name, with the reason (shown and reported).
        self.fatal: str | None = None
        self.left_out: dict[str, str] = {}
        self.unreachable: dict[str, str] = {}  # --peer HOST:PORT -> why, reported once
        self.records = [_ChunkRecord(p) for p in plans]
        self.names: dict[str, str] = {local_key: opts.name}
        # Each encoder's ffmpeg version (peers report theirs in /v1/info), for messages.
        self.ffmpegs: dict[str, str] = {}
        # The decoding parameter sets every chunk of the output must share (one avcC/hvcC/
        # av1C per mp4 track): the first checked chunk's; ``param_sets_kept`` once a chunk
        # with them is kept, before which a failed reference chunk gives way to the next.
        self.param_sets: tuple[bytes, ...] | None = None
        self.param_sets_from = ""
        self.param_sets_kept = False
        self.served: dict[str, int] = {}
        self.started: dict[str, float] = {}
        self.finished = trio.Event()
        # Set when a local slot finds nothing to claim (or there are none): a core is free
        # for the audio encode, which then costs the chunk encodes nothing.
        self.core_idle = trio.Event()
        self.peers_seen = 0
        self.chunk_s = 0.0
        self.audio_s: float | None = None
        self.last_done_remote = False  # the chunk that finished the job came from a peer
        self.last_activity = trio.current_time()
        # Attempt times in the report are relative to this (trio clock, like the attempts').
        self.t0 = trio.current_time()
        self.source_path = f"/v1/jobs/{job_id}/source"

    # -- hand-out ------------------------------------------------------------------------
    def claim(self, peer: str, now: float, prefetch: bool = False) -> Assign | Wait | Finished:
        action = self.job.claim(peer, now, prefetch=prefetch)
        if isinstance(action, Assign):
            if not action.queued:  # a queued one's clock starts with its first report
                self.started[action.attempt] = time.monotonic()
            self.last_activity = now
            if self.journal is not None:
                self.journal.attempt_started(action.attempt, action.chunk,
                                             self.names.get(peer, peer), now - self.t0)
            self.emit(ChunkStart(action.chunk, action.attempt, self.names.get(peer, peer),
                                 self.plans[action.chunk].frames, peer != self.local_key))
        return action

    def claim_remote(self, node_id: str, now: float, prefetch: bool = False
                     ) -> AssignmentMsg | WaitMsg | JobDone:
        self.names.setdefault(node_id, f"node-{node_id[:6]}")
        if node_id not in self.job.scheduler.peers:
            # Counted as capacity from its first claim, not its invite: an invited node that
            # never claims (it dropped the job) must not make others wait for it.
            self.job.add_peer(node_id, self.scores.get(node_id), now,
                              slots=self.slots.get(node_id, 1))
        self.claimed_by.add(node_id)
        action = self.claim(node_id, now, prefetch)
        if isinstance(action, Finished):
            return JobDone(self.job_id)
        if isinstance(action, Wait):
            return WaitMsg(max(0.05, action.retry_after_s))
        p = self.plans[action.chunk]
        return AssignmentMsg(
            job_id=self.job_id, chunk=action.chunk, attempt=action.attempt,
            lease_s=action.lease_s, start_s=max(0.0, p.start_s), frames=p.frames,
            source_path=self.source_path, seek_s=p.seek_s, trim_s=p.trim_s)

    def progress(self, attempt: str, frames: int, now: float, fps: float | None = None
                 ) -> bool:
        keep = self.job.progress(attempt, frames, now)
        if keep:
            self.started.setdefault(attempt, time.monotonic())
            self.last_activity = now
            a = self.job.attempts[attempt]
            if fps is None:  # a local slot: its rate since the claim
                fps = a.frames_done / max(1e-3, time.monotonic() - self.started[attempt])
            self.emit(ChunkProgress(a.chunk, a.frames_done, attempt,
                                    self.names.get(a.peer, a.peer), round(fps, 2)))
        return keep

    def progress_remote(self, attempt: str, chunk: int, frames: int, fps: float,
                        now: float) -> bool:
        a = self.job.attempts.get(attempt)
        if a is None or a.chunk != chunk:
            return False
        return self.progress(attempt, frames, now, fps)

    def fail(self, attempt: str, reason: str, *, bench: bool = False) -> None:
        a = self.job.attempts.get(attempt)
        if a is None or not a.running:
            # Already ended (its peer left, its lease expired, another attempt won): that
            # was said when it happened, and the chunk's fate does not change now.
            return
        now = trio.current_time()
        requeued = self.job.failed(attempt, now, reason, bench=bench)
        self._journal_ended(attempt)
        name = self.names.get(a.peer, a.peer)
        chunk = self.job.chunks[a.chunk]
        if requeued:
            fate = "requeued"
        elif any(self.job.attempts[x].running for x in chunk.attempts):
            fate = "another attempt continues"
        else:
            fate = "already done"
        self.emit(ChunkFailed(a.chunk, attempt, name, reason, bool(requeued), fate,
                              a.peer in self.job.benched))
        if a.peer in self.job.benched and name not in self.left_out:
            why = left_out(self.job, a.peer, self.names)
            self.left_out[name] = why
            self.emit(PeerBenched(name, why))
        verdict = hopeless_chunk(self.job, a.chunk, now, self.awaited(now))
        if verdict is not None and self.fatal is None:
            self.fatal = verdict
            self.finished.set()  # wakes ``_watch``, which raises it

    def awaited(self, now: float) -> set[str]:
        """Peers invited within a lease that have not claimed yet: they may still try."""
        return {p for p, t in self.invited_at.items()
                if p not in self.claimed_by and now - t < self.opts.lease_s}

    def _journal_ended(self, *attempts: str) -> None:
        if self.journal is None:
            return
        for x in attempts:
            a = self.job.attempts.get(x)
            if a is not None and a.ended is not None:
                self.journal.attempt_ended(x, a.outcome.value, a.reason, a.ended - self.t0)

    def tick(self, now: float) -> None:
        for r in self.job.tick(now):
            self._journal_ended(r.attempt)
            a = self.job.attempts[r.attempt]
            self.emit(ChunkRequeued(r.chunk, r.attempt, self.names.get(a.peer, a.peer),
                                    r.reason))

    def peer_left(self, peer: str, now: float) -> None:
        for r in self.job.peer_left(peer, now):
            self._journal_ended(r.attempt)
            self.emit(ChunkRequeued(r.chunk, r.attempt, self.names.get(peer, peer),
                                    r.reason))

    def running_attempt(self, attempt: str, chunk: int | None = None) -> bool:
        a = self.job.attempts.get(attempt)
        return (a is not None and a.outcome is AttemptOutcome.RUNNING
                and (chunk is None or a.chunk == chunk))

    # -- results -------------------------------------------------------------------------
    async def accept(self, attempt: str, path: str, bytes_in: int) -> tuple[bool, str]:
        """Verify a received chunk file; keep it if it is the first valid one."""
        a = self.job.attempts.get(attempt)
        if a is None or not self.running_attempt(attempt):
            await trio.to_thread.run_sync(_unlink, path)
            return False, "attempt no longer wanted"
        rec = self.records[a.chunk]
        sets = await trio.to_thread.run_sync(self._param_sets_of, path)
        if (why := self._param_sets_mismatch(attempt, sets)) is not None:
            await trio.to_thread.run_sync(_unlink, path)
            peer = self.names.get(a.peer, a.peer)
            version = self.ffmpegs.get(a.peer)
            reason = (f"cannot join the output: {why}"
                      f"{f' (ffmpeg {version} on {peer})' if version else ''}")
            self.fail(attempt, reason, bench=True)
            return False, reason
        try:
            await media.verify_chunk(self.ffmpeg, path, self.info, rec.plan.first,
                                     rec.plan.frames)
        except VerifyError as exc:
            await trio.to_thread.run_sync(_unlink, path)
            if self.param_sets_from == attempt and not self.param_sets_kept:
                self.param_sets = None  # a broken chunk must not set the job's reference
            self.fail(attempt, f"verification: {exc}")
            return False, f"verification failed: {exc}"
        digest = await trio.to_thread.run_sync(file_digest, path)
        if not self.job.succeeded(attempt, trio.current_time()):
            await trio.to_thread.run_sync(_unlink, path)
            self.emit(ChunkDuplicate(a.chunk, attempt, self.names.get(a.peer, a.peer)))
            return False, "chunk already done"
        final = os.path.join(self.workdir, f"chunk_{a.chunk:05d}.nut")
        os.replace(path, final)
        self.param_sets_kept = True
        rec.peer = self.names.get(a.peer, a.peer)
        rec.encode_s = time.monotonic() - self.started.get(attempt, time.monotonic())
        rec.bytes_out = (await trio.Path(final).stat()).st_size
        rec.bytes_in = bytes_in
        rec.file = final
        if self.journal is not None:
            # Journalled before the peer hears "accepted" and before anything is merged.
            self.journal.chunk_done(a.chunk, final, digest, rec.bytes_out, bytes_in, rec.peer,
                                    rec.encode_s)
            self._journal_ended(*self.job.chunks[a.chunk].attempts)
        self.emit(ChunkDone(a.chunk, attempt, rec.peer, rec.encode_s, rec.plan.frames,
                            self.job.frames_done))
        if self.job.done:
            self.last_done_remote = a.peer != self.local_key
            self.finished.set()
        return True, ""

    def _param_sets_of(self, path: str) -> tuple[bytes, ...] | None:
        """The chunk's decoding parameter sets; None if its header does not parse (the
        verification that follows then says what is wrong with it)."""
        codec = ENCODER_CODECS.get(self.opts.profile.video.codec, self.opts.profile.video.codec)
        try:
            with open(path, "rb") as fh:
                head = fh.read(HEADER_BYTES)
            return parameter_sets(codec, min(nut_codec_data(head).items())[1])
        except (OSError, ValueError):
            return None

    def _param_sets_mismatch(self, attempt: str, sets: tuple[bytes, ...] | None
                             ) -> str | None:
        if sets is None:
            return None
        if self.param_sets is None:
            self.param_sets, self.param_sets_from = sets, attempt
            return None
        codec = ENCODER_CODECS.get(self.opts.profile.video.codec, self.opts.profile.video.codec)
        return mismatch(codec, self.param_sets, sets)

    def _result_limit(self, chunk: int) -> int:
        # Encoded video is far smaller than raw 4:2:0 frames; anything bigger is not ours.
        raw = self.plans[chunk].frames * self.vplan.width * self.vplan.height * 3 // 2
        return raw + (1 << 20)

    async def receive_result(self, attempt: str, chunk: int, request: Request,
                             receive: Receive) -> tuple[bool, str]:
        if not self.running_attempt(attempt, chunk):
            raise HTTPError("no such running attempt for this chunk", status_code=409)
        # The attempt id is one of ours (checked above), so it is safe in a file name.
        path = os.path.join(self.workdir, f"recv_{attempt}.nut")
        a = self.job.attempts[attempt]
        self.emit(ChunkUpload(chunk, attempt, self.names.get(a.peer, a.peer)))
        try:
            async with await trio.open_file(path, "wb") as fh:
                async for piece in iter_body(receive, self._result_limit(chunk)):
                    await fh.write(piece)
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_unlink, path)
            if isinstance(exc, HTTPError):
                self.fail(attempt, f"upload: {exc}")
            raise
        return await self.accept(attempt, path, self.served.get(attempt, 0))

    async def serve_source(self, attempt: str, request: Request, send: Send,
                           head: bool) -> None:
        """The source file, Range-capable, to the ffmpeg of a running attempt."""
        if not self.running_attempt(attempt):
            raise HTTPError("attempt is not running", status_code=410)
        size = self.info.size
        start, end = 0, size - 1
        status = 200
        rng = request.headers.get("range")
        if rng is not None:
            try:
                unit, _, spec = rng.partition("=")
                first, _, last = spec.strip().partition("-")
                if unit.strip() != "bytes" or "," in spec:
                    raise ValueError
                start = int(first) if first else size - int(last)
                end = int(last) if (first and last) else size - 1
            except ValueError:
                raise HTTPError("bad Range header", status_code=416) from None
            if not 0 <= start < size or end < start:
                await respond(send, 416, headers=[(b"content-range", f"bytes */{size}".encode())])
                return
            end = min(end, size - 1)
            status = 206
        length = end - start + 1
        headers = [(b"content-type", b"application/octet-stream"),
                   (b"content-length", str(length).encode()), (b"accept-ranges", b"bytes")]
        if status == 206:
            headers.append((b"content-range", f"bytes {start}-{end}/{size}".encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if head:
            await send({"type": "http.response.body", "body": b""})
            return
        async with await trio.open_file(self.info.path, "rb") as fh:
            await fh.seek(start)
            left = length
            while left > 0:
                data = await fh.read(min(SOURCE_PIECE, left))
                if not data:
                    break
                left -= len(data)
                self.served[attempt] = self.served.get(attempt, 0) + len(data)
                await send({"type": "http.response.body", "body": data, "more_body": left > 0})
        if left > 0:
            await send({"type": "http.response.body", "body": b""})

    async def restore_from_journal(self) -> None:
        """Count as done every journalled chunk whose file still has its recorded digest;
        anything missing or altered is re-encoded, never trusted."""
        assert self.journal is not None
        for idx, name, digest, rec in list(self.journal.done_chunks()):
            path = os.path.join(self.workdir, name)
            ok = (idx < len(self.plans) and name == f"chunk_{idx:05d}.nut"
                  and await trio.to_thread.run_sync(_digest_or_none, path) == digest)
            if not ok:
                self.journal.chunk_lost(idx)
                await trio.to_thread.run_sync(_unlink, path)
                self.emit(ChunkLost(idx, "journalled file missing or altered"))
                continue
            self.job.restore(idx)
            if self.param_sets is None:
                self.param_sets = await trio.to_thread.run_sync(self._param_sets_of, path)
                self.param_sets_kept = self.param_sets is not None
            r = self.records[idx]
            r.file, r.peer, r.bytes_out = path, rec["peer"], rec["bytes_out"]
            r.bytes_in, r.encode_s = rec["bytes_in"], rec["encode_s"]
            self.restored.append(idx)
        if self.job.done:
            self.finished.set()

    # -- invite --------------------------------------------------------------------------
    def invite_fields(self) -> dict[str, str | int | float | bool]:
        fields = self.opts.profile.to_wire()
        fields.update({"out_width": self.vplan.width, "out_height": self.vplan.height,
                       "out_gop": self.vplan.gop_frames})
        if self.vplan.time_base is not None:
            tb = self.vplan.time_base
            fields["out_time_base"] = f"{tb.numerator}/{tb.denominator}"
        return fields


def _digest_or_none(path: str) -> str | None:
    try:
        return file_digest(path)
    except OSError:
        return None


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


def _refuse_overwrite(opts: EncodeOptions, ours: str | None = None) -> str | None:
    """An existing output is replaced only with --force, or if a crashed run of this job
    renamed it there (then a rerun finishes that job). Checked at the start, so a mistake
    costs nothing, and again just before the rename (``ours``: what the first check
    returned, the stamp of the file it allowed), for a file that appeared meanwhile."""
    if os.path.isdir(opts.output):
        raise UsageError(f"{opts.output} is a directory")
    if not os.path.lexists(opts.output) or opts.force:
        return None
    try:
        stamp = output_stamp(opts.output)
    except OSError:  # a dangling symlink
        stamp = None
    if stamp is None or (stamp != ours and not output_is_ours(opts.output)):
        raise UsageError(f"{opts.output} exists; use --force to replace it")
    return stamp


async def run_encode(opts: EncodeOptions, emit: Callable[[JobEvent], None] = lambda e: None
                     ) -> dict[str, Any]:
    """Encode one file; returns the report. Raises SwarmError subclasses on failure."""
    t_start = time.monotonic()
    container, outdir = _check_paths(opts)
    ours = _refuse_overwrite(opts)
    if opts.no_local and not opts.network:
        raise UsageError("--no-local needs peers: leave networking on")
    if opts.audio not in AUDIO_MODES or opts.subtitles not in SUBTITLE_MODES:
        raise UsageError(f"--audio {opts.audio} --subtitles {opts.subtitles}: use "
                         f"{'|'.join(AUDIO_MODES)} and {'|'.join(SUBTITLE_MODES)}")
    need = [opts.profile.video.codec, opts.profile.audio.codec]
    seen = 0

    async def count_peers() -> None:
        nonlocal seen
        seen = await census(opts)

    async with trio.open_nursery() as nursery:
        # The chunk count follows the swarm: listen for peers while finding and probing.
        if opts.network and opts.discover and opts.chunk_seconds is None:
            nursery.start_soon(count_peers)
        ffmpeg = await trio.to_thread.run_sync(find_ffmpeg, need)
        info = await media.probe(ffmpeg, opts.input)
    workers = 0 if opts.no_local else (opts.workers or default_workers())
    threads = opts.threads or max(1, (os.cpu_count() or 1) // max(1, workers))
    # Peers count one slot each (a `join` node's default); named ones count too.
    slots = max(2, workers + seen + len(opts.peers))
    chunk_s = opts.chunk_seconds or default_chunk_seconds(info.duration_s, slots)
    plans = plan_chunks(info.video, info.format_start_s, chunk_s,
                        keyframe_seek=info.keyframe_seek)
    frames = info.video.frames
    fps = frames / info.duration_s if info.duration_s > 0 else 30.0
    dw, dh = info.video.display_size
    vplan = video_plan(opts.profile, dw, dh, fps, opts.upscale, info.video.time_base)
    tracks = plan_tracks(info, container, opts.profile.audio.channels,
                         opts.profile.audio.codec, opts.audio, opts.subtitles,
                         mkv_name=Path(opts.output).with_suffix(".mkv").name)
    workdir_path = work_dir_for(opts.output)
    try:
        identity = await trio.to_thread.run_sync(input_identity, opts.input)
        workdir_path.mkdir(exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot write in {outdir}: {exc.strerror}") from exc
    workdir = str(workdir_path)
    journal = Journal(workdir_path)  # UsageError if another encode holds it
    try:
        plans, job_id, resuming = await _open_plan(journal, opts, info, identity, plans,
                                                   workdir)
        server = JobServer(job_id=job_id, opts=opts, ffmpeg=ffmpeg, info=info, plans=plans,
                           vplan=vplan, workdir=workdir, emit=emit, local_key="local",
                           journal=journal, tracks=tracks)
        server.peers_seen, server.chunk_s = seen, chunk_s
        if workers:
            server.ffmpegs[server.local_key] = ffmpeg.short_version
            server.job.add_peer("local", _local_score(ffmpeg, opts.profile), server.t0,
                                slots=workers)
        emit(JobStart(input=opts.input, output=opts.output, profile=opts.profile.name,
                      frames=frames, chunks=len(plans), duration_s=info.duration_s,
                      width=vplan.width, height=vplan.height, workers=workers,
                      ffmpeg=ffmpeg.version, job_id=job_id, secret=opts.secret is not None,
                      network=opts.network, name=opts.name, policy=server.job.policy,
                      peers_seen=seen, chunk_s=round(chunk_s, 3)))
        # What the output will hold besides the video, and what it cannot (said once).
        emit(tracks_event(tracks))
        if resuming:
            await server.restore_from_journal()
            emit(JobResumed(len(server.restored), tuple(sorted(server.restored)), len(plans),
                            server.job.frames_done))
        audio_file = None
        if tracks.audio and opts.profile.audio.codec in AUDIO_COPY_EXACT:
            audio_file = os.path.join(workdir, "audio.mp4")
        async with trio.open_nursery() as audio_nursery:
            if audio_file is not None:
                audio_nursery.start_soon(_audio_when_idle, server, audio_file)
            if not workers:
                server.core_idle.set()
            async with trio.open_nursery() as nursery:
                if opts.network:
                    # The coordinator only browses: peers learn its URL from the invite.
                    node = Node(NodeConfig(name=opts.name, port=free_port(opts.port),
                                           secret=opts.secret, advertise=False,
                                           interfaces=opts.interfaces,
                                           peer_gone_s=2 * opts.lease_s),
                                ffmpeg, coordinator=True)
                    await nursery.start(node.run)
                    node.jobs[job_id] = server
                    emit(Listening(node.port))
                    nursery.start_soon(recruit, server, node, opts, emit)
                for slot in range(workers):
                    nursery.start_soon(_local_worker, server, slot, threads)
                await _watch(server, workers, opts)
                if opts.network and server.last_done_remote:
                    # Let the reply to the last result reach its peer before the server stops.
                    await trio.sleep(RESPONSE_GRACE_S)
                nursery.cancel_scope.cancel()
            # Whatever is still to do (the audio) now has the machine to itself.
            server.core_idle.set()
        journal.set("state", "merging")
        emit(Merge())
        tmp_out = os.path.join(workdir, "output" + Path(opts.output).suffix.lower())
        await media.merge(ffmpeg, workdir, [r.file for r in server.records],
                          [p.span_s for p in plans], info, opts.profile, tracks, tmp_out,
                          container, audio_file)
        await media.verify_output(ffmpeg, tmp_out, info, tracks)
        _refuse_overwrite(opts, ours)
        journal.set(MERGED_KEY, output_stamp(tmp_out))
        os.replace(tmp_out, opts.output)
        report = _report(server, time.monotonic() - t_start)
        emit(JobEnd(opts.output, report["wall_s"]))
        return report
    finally:
        # Success, failure and Ctrl-C all end here and leave nothing; only a crash (SIGKILL,
        # power loss) skips this, and then the journal and its chunks are there to resume.
        journal.close()
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(shutil.rmtree, workdir, True)


def _local_score(ffmpeg: FFmpeg, profile: Profile) -> float | None:
    """This device's benchmark for the profile (work/s per slot), if measured before."""
    from .benchmark import load_scores

    try:
        scores = load_scores(ffmpeg) or {}
    except Exception:  # a broken cache must never stop a job
        return None
    score = scores.get(profile.name)
    return score if score and score > 0 else None


async def _open_plan(journal: Journal, opts: EncodeOptions, info: MediaInfo,
                     identity: InputIdentity, plans: list[ChunkPlan], workdir: str
                     ) -> tuple[list[ChunkPlan], str, bool]:
    """Resume the journalled job if it is this one (same input file, same settings), else
    start the journal afresh. Returns the plan, the job id and whether we resume."""
    settings = json.dumps(opts.profile.to_wire() | {"upscale": opts.upscale,
                                                     "audio": opts.audio,
                                                     "subtitles": opts.subtitles},
                          sort_keys=True)
    old = journal.get("input")
    if (not opts.fresh and old is not None and journal.get("settings") == settings
            and InputIdentity.from_json(old).same_file(identity)):
        cuts = [first for first, _ in journal.plan()]
        try:
            resumed = plans_from_cuts(info.video, info.format_start_s, cuts,
                                      keyframe_seek=info.keyframe_seek)
        except ValueError:
            resumed = []
        job_id = journal.get("job_id") or ""
        if resumed and [p.frames for p in resumed] == [n for _, n in journal.plan()] and job_id:
            return resumed, job_id, True
    # A fresh start: whatever an older run left here is not ours to trust.
    for entry in await trio.to_thread.run_sync(os.listdir, workdir):
        if entry.endswith(".nut") or entry.startswith("output") or entry.endswith(".ffconcat"):
            await trio.to_thread.run_sync(_unlink, os.path.join(workdir, entry))
    journal.reset()
    job_id = secrets.token_urlsafe(12)
    for key, value in (("input", identity.to_json()), ("settings", settings),
                       ("output", str(journal.workdir.parent / Path(opts.output).name)),
                       ("job_id", job_id),
                       ("state", "encoding")):
        journal.set(key, value)
    journal.write_plan([(p.first, p.frames) for p in plans])
    return plans, job_id, False


async def _watch(server: JobServer, workers: int, opts: EncodeOptions) -> None:
    """Tick leases until the job is done; fail it if nothing can make progress any more."""
    job = server.job
    # With no way for another encoder to come (no network, or no mDNS and no --peer), end
    # as soon as the last one is out.
    grace = BENCH_GRACE_S if opts.network and (opts.discover or opts.peers) else 0.0
    while not server.finished.is_set() or server.fatal is not None:
        if server.fatal is not None:
            raise EncodeError(server.fatal)
        now = trio.current_time()
        server.tick(now)
        why = nobody_left(job, now, server.names, grace)
        if why is not None:
            raise EncodeError(why)
        local_alive = workers > 0 and server.local_key not in job.benched
        if not job.running() and not local_alive:
            if not opts.network:
                raise EncodeError("every local worker failed; see the messages above")
            if now - server.last_activity > STALL_S:
                raise EncodeError(f"no peer took any work for {STALL_S:.0f} s "
                                  "(none found, or all failed)")
        with trio.move_on_after(TICK_S):
            await server.finished.wait()


async def _local_worker(server: JobServer, slot: int, threads: int) -> None:
    """One local encoder slot: claim, encode to a file, hand it to the server; until done.

    The slot claims its next chunk while the last one is being verified: the check (a full
    decode, ~5 % of the encode's CPU) would otherwise leave a core idle after every chunk.
    """
    job = server.job
    async with trio.open_nursery() as checks:
        while True:
            action = server.claim(server.local_key, trio.current_time())
            if isinstance(action, Finished):
                return
            if isinstance(action, Wait):
                server.core_idle.set()
                if server.local_key in job.benched:
                    return
                await trio.sleep(action.retry_after_s)
                continue
            encoded = await _encode_local(server, action, threads)
            if encoded is not None:
                checks.start_soon(server.accept, action.attempt, *encoded)


async def _audio_when_idle(server: JobServer, out: str) -> None:
    """Encode the audio beside the chunks once a core is free, so that the merge after the
    last chunk only copies (on one node the tail leaves a core idle for about a chunk)."""
    await server.core_idle.wait()
    server.emit(AudioStart())
    t = time.monotonic()
    await media.encode_audio(server.ffmpeg, server.info, server.opts.profile, server.tracks,
                             out)
    server.audio_s = time.monotonic() - t
    server.emit(AudioDone(round(server.audio_s, 3)))


async def _encode_local(server: JobServer, a: Assign, threads: int) -> tuple[str, int] | None:
    """Encode one chunk to a file in the work directory; returns (file, source bytes) to
    verify and accept, or None if the attempt failed or is no longer wanted."""
    plan = server.plans[a.chunk]
    name = os.path.join(server.workdir, f"recv_{a.attempt}.nut")
    argv = encode_chunk_argv(server.ffmpeg.path, server.opts.profile, server.vplan,
                             server.opts.input, plan.seek_s, plan.trim_s, plan.frames,
                             threads=threads)
    with trio.CancelScope() as scope:

        def progress(frames: int) -> None:
            if not server.progress(a.attempt, frames, trio.current_time()):
                scope.cancel()  # replaced (lease lost) or already done elsewhere

        try:
            # Through a pipe, not straight into the file: if we are SIGKILLed the encoder
            # dies of SIGPIPE at its next write instead of running on as an orphan.
            async with await trio.open_file(name, "wb") as fh:
                pending = bytearray()

                async def sink(data: bytes) -> None:
                    # ffmpeg writes a packet at a time (a few KiB): one thread hop per
                    # write cost the coordinator 0.4 s of CPU per job; batch them.
                    pending.extend(data)
                    if len(pending) >= WRITE_BATCH:
                        await fh.write(pending)
                        pending.clear()

                await run_ffmpeg(argv, stdout_sink=sink, on_progress=progress,
                                 what=f"chunk {a.chunk}")
                await fh.write(pending)
        except EncodeError as exc:
            log.warning("chunk %d attempt %s failed: %s", a.chunk, a.attempt, exc)
            server.fail(a.attempt, str(exc))
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_unlink, name)
            return None
        # Local slots read the file directly; attribute source bytes by frame share.
        return name, server.info.size * plan.frames // max(1, server.info.video.frames)
    await trio.to_thread.run_sync(_unlink, name)
    return None


def _report(server: JobServer, wall_s: float) -> dict[str, Any]:
    chunks = []
    peers: dict[str, dict[str, Any]] = {}
    for rec in server.records:
        c = server.job.chunks[rec.plan.index]
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
    # Per-attempt detail (added later; every key above keeps its meaning). Times are seconds
    # since the job's start; an attempt still running at the end (a duplicate that lost)
    # ends at the report's time.
    now = trio.current_time()
    attempts = []
    for a in sorted(server.job.attempts.values(), key=lambda a: (a.started, a.id)):
        end = a.ended if a.ended is not None else now
        attempts.append({
            "id": a.id, "chunk": a.chunk, "peer": server.names.get(a.peer, a.peer),
            "start_s": round(a.started - server.t0, 3), "end_s": round(end - server.t0, 3),
            "outcome": a.outcome.value, "reason": a.reason, "frames": a.frames_done,
            # Prefetched: claimed while the peer's slot was still busy; it ran after that.
            "queued": a.queued,
        })
    earlier: list[dict[str, Any]] = []
    if server.journal is not None:
        # Attempts of crashed earlier runs of this job, from the journal (times relative to
        # that run's start), so the report tells the whole story after a resume. Kept apart
        # from "attempts", whose times share this run's clock (the timeline draws them).
        run = server.journal.run
        earlier = [{"id": r["id"].split(":", 1)[1], "chunk": r["chunk"], "peer": r["peer"],
                    "start_s": round(r["started"], 3),
                    "end_s": round(r["ended"], 3) if r["ended"] is not None else None,
                    "outcome": "lost" if r["outcome"] == "running" else r["outcome"],
                    "reason": r["reason"] or "coordinator crashed", "frames": 0,
                    "run": r["run"]}
                   for r in server.journal.attempts() if r["run"] < run]
    info = server.info
    return {
        "input": server.opts.input,
        "output": server.opts.output,
        "profile": server.opts.profile.name,
        "frames": info.video.frames,
        "duration_s": round(info.duration_s, 6),
        "wall_s": round(wall_s, 3),
        # How the chunk length was chosen: idle peers that answered mDNS before planning.
        "peers_seen": server.peers_seen, "chunk_s": round(server.chunk_s, 3),
        "width": server.vplan.width,
        "height": server.vplan.height,
        "job_id": server.job_id,
        "chunks": chunks,
        "peers": list(peers.values()),
        "attempts": attempts,
        "earlier_attempts": earlier,
        "retries": sum(max(0, len(c.attempts) - 1) for c in server.job.chunks),
        "duplicates": sum(1 for a in attempts if a["reason"] == "chunk already done"),
        "policy": server.job.policy,
        # The ffmpeg version of each encoder that took part (peers report theirs).
        "ffmpegs": {server.names.get(k, k): v for k, v in sorted(server.ffmpegs.items())
                    if k in server.job.scheduler.peers},
        # Seconds of the audio encode run beside the chunks; null: encoded in the merge.
        "audio_encode_s": None if server.audio_s is None else round(server.audio_s, 3),
        # Chunks kept from a crashed earlier run of this job (their files re-verified).
        "resumed_chunks": sorted(server.restored),
        # Peers given no more work after repeated failures, and named peers never reached.
        "left_out": [{"peer": p, "reason": why} for p, why in server.left_out.items()],
        "unreachable": [{"peer": p, "reason": why} for p, why in server.unreachable.items()],
        # Every track of the output besides the video, and what was left out and why.
        "tracks": server.tracks.as_dict(),
        "journal": _journal_stats(server.journal),
    }


def _journal_stats(journal: Journal | None) -> dict[str, Any]:
    if journal is None or not journal.writes:
        return {"writes": 0}
    return {"writes": journal.writes, "run": journal.run,
            "mean_write_ms": round(1000 * journal.write_s / journal.writes, 3)}
