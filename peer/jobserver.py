"""One job as its encoders see it: claims, progress, source bytes, verified results.

``JobServer`` adapts ``swarm.job.Job`` (which decides: who gets which chunk, leases,
requeues) to the two kinds of encoder: local slots (``peer.local``) call ``claim`` and
``progress``; remote peers reach ``claim_remote``, ``progress_remote``, ``fail``,
``serve_source`` and ``receive_result`` through ``peer.node``'s routes (``JobEndpoints``).
Every result is verified before it counts, and journalled before the peer hears
"accepted". It reports what happens as ``swarm.events``; time is trio's clock throughout.
What it knows beside the Job is kept once: a ``PeerRecord`` per encoder (name, ffmpeg,
benchmark, slots, invite, first claim), an ``_AttemptRecord`` per attempt (start, source
bytes served) and a ``_ChunkRecord`` per chunk (the accepted result).
"""

from __future__ import annotations

import os
import random
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import trio

from chunker.commands import VideoPlan, join_parts_argv, packet_listing_argv
from chunker.mp4index import Layout, read_layout
from chunker.paramsets import ENCODER_CODECS, HEADER_BYTES, mismatch, nut_codec_data, parameter_sets
from chunker.plan import ChunkPlan, split_plan
from chunker.probe import MediaInfo
from chunker.tools import FFmpeg
from chunker.tracks import TrackPlan
from swarm.batch import release_to_next
from swarm.errors import EncodeError, VerifyError
from swarm.events import (
    ChunkDone,
    ChunkDuplicate,
    ChunkFailed,
    ChunkLost,
    ChunkParted,
    ChunkProgress,
    ChunkRequeued,
    ChunkSplit,
    ChunkStart,
    ChunkUpload,
    JobEvent,
    PeerBenched,
)
from swarm.hls import segment_cuts
from swarm.job import AttemptOutcome, Finished, Grant, Job, Retry
from swarm.protocol import (
    MAX_PREFETCH_BYTES,
    MAX_RETRY_AFTER_S,
    MIN_RETRY_AFTER_S,
    Assignment,
    JobDone,
    Wait,
)
from swarm.spotcheck import check_result, sample_frames
from swarm.spotcheck import verdict as spot_verdict
from swarm.trust import Census
from swarm.verdict import hopeless_chunk, left_out

from . import media, transfer
from .http import ClientGone, HTTPError, Receive, Request, Send
from .journal import Journal, file_digest
from .options import EncodeOptions
from .proc import run_ffmpeg
from .transfer import unlink

__all__ = ["JobServer", "PeerRecord", "joined_unchanged", "output_pixels"]


@dataclass(slots=True)
class PeerRecord:
    """What the job knows of one encoder (a peer's node id, or the local key)."""

    name: str  # as reports and messages show it
    ffmpeg: str | None = None  # its ffmpeg version (peers report theirs in /v1/info)
    score: float | None = None  # benchmark work/s per slot, from /v1/info
    slots: int = 1
    invited_at: float | None = None  # when it accepted our invite
    # Counted as capacity from its first claim, not its invite: an invited node that never
    # claims (it dropped the job) must not make others wait for it.
    claimed: bool = False


@dataclass(slots=True)
class _AttemptRecord:
    started: float | None = None  # the claim; a queued one's clock starts at its first report
    served: int = 0  # source bytes its connections really took (peer.transfer.send_file)
    uploaded: int = 0  # result bytes received


# Frames an encoder holds before its first output, which ffmpeg's progress counts as done:
# x264's rc-lookahead is 40 at "medium" (30-60 across our presets; x265 and SVT-AV1 hold
# similar). bench/hetero: a 0.15-CPU peer's chunk ended 5-7 s after its reports reached
# its last frame, and a prefetch sized on those reports ran alone at the end.
ENCODER_PIPELINE_FRAMES = 40

# Share of a queued chunk's estimated source bytes its peer fetches ahead (see
# _prefetch_bytes): the estimate is the chunk's share of the file by frames, and a chunk
# of simpler pictures weighs less than that.
PREFETCH_SHARE = 0.8


@dataclass(slots=True)
class _ChunkRecord:
    plan: ChunkPlan
    peer: str = ""
    encode_s: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0
    file: str = ""



def output_pixels(vplan: VideoPlan) -> int:
    """Pixels a chunk's frame is encoded to: every rung's, for a ladder. A chunk's work (and
    so its time on a peer of a given speed) is frames x this: a 1080/720/480 ladder is 1.64x
    its top rung's work, not 1x (one decode feeds all three encodes)."""
    return (sum(r.width * r.height for r in vplan.rungs) if vplan.rungs
            else vplan.width * vplan.height)

class JobServer:
    """One job as its encoders see it: claims, progress, source bytes, verified results."""

    def __init__(self, *, job_id: str, opts: EncodeOptions, ffmpeg: FFmpeg, info: MediaInfo,
                 plans: list[ChunkPlan], vplan: VideoPlan, workdir: str,
                 emit: Callable[[JobEvent], None], local_key: str,
                 journal: Journal | None = None, tracks: TrackPlan | None = None,
                 cuts: list[list[int]] | None = None, min_piece: int = 1,
                 expected_slots: int = 1) -> None:
        """``cuts``, ``min_piece`` (frames) and ``expected_slots``: where the scheduler may
        cut chunks to its claimers' shares (``swarm.job.Job``); None: as planned."""
        self.job_id = job_id
        self.opts = opts
        self.ffmpeg = ffmpeg
        self.info = info
        self.plans = plans
        self.planned_chunks = len(plans)  # before any is cut to a claimer's share
        self.vplan = vplan
        self.workdir = workdir
        self.emit = emit
        self.local_key = local_key
        timings = opts.tuning.timings
        # A ladder's chunks may be parted by rendition at the tail where they cannot be cut
        # in time (swarm.scheduler, item 5): each rung's share of a chunk's encode.
        pixels = [r.width * r.height for r in vplan.rungs]
        shares = ([p / sum(pixels) for p in pixels]
                  if len(pixels) > 1 and cuts is None and opts.tuning.part_renditions
                  else None)
        # Without a network every encoder is one of our slots, and they owe no heartbeat.
        self.job = Job([p.frames for p in plans], lease_s=timings.lease_s,
                       pixels=output_pixels(vplan), policy=opts.tuning.policy,
                       source_bytes=_chunk_bytes(info, plans),
                       silent_s=timings.silent_s if opts.net.enabled else None,
                       cuts=cuts, min_piece=min_piece, expected_slots=expected_slots,
                       pipeline_frames=ENCODER_PIPELINE_FRAMES, rung_shares=shares)
        # A parted chunk's verified parts (index -> file) until all are in and joined into
        # the chunk's file (``_join``); they are never journalled, so a resumed job encodes
        # a chunk not yet joined again, whole.
        self.part_files: dict[int, str] = {}
        # A joined chunk's parts, for the report: (peer, share of the chunk's work, encode s).
        self.part_credits: dict[int, list[tuple[str, float, float]]] = {}
        self.journal = journal
        self.tracks = tracks if tracks is not None else TrackPlan()
        self.restored: list[int] = []
        # One record per encoder, per attempt (besides the Job's own) and per chunk.
        self.peers: dict[str, PeerRecord] = {local_key: PeerRecord(opts.net.name)}
        self.attempt_records: dict[str, _AttemptRecord] = {}
        # Why the job cannot succeed (set by ``fail``; ``_watch`` raises it), and the peers
        # benched for failing, by name, with the reason (shown and reported).
        self.fatal: str | None = None
        self.left_out: dict[str, str] = {}
        self.unreachable: dict[str, str] = {}  # --peer HOST:PORT -> why, reported once
        # Every device recruiting found, and what it is (peer.recruit).
        self.census = Census(closed=opts.net.closed)
        self.records = [_ChunkRecord(p) for p in plans]
        # Which results and frames are content-checked (swarm.spotcheck): a generator per
        # job, seeded from the OS's randomness, so that no peer can predict them.
        self.spot_rng = random.Random(secrets.randbits(128))
        self.spot_seen: dict[str, int] = {}  # results each peer delivered, checked or not
        # The decoding parameter sets every chunk of the output must share (one avcC/hvcC/
        # av1C per mp4 track): the first checked chunk's; ``param_sets_kept`` once a chunk
        # with them is kept, before which a failed reference chunk gives way to the next.
        self.param_sets: tuple[tuple[bytes, ...], ...] | None = None  # one per rendition
        self.param_sets_from = ""
        self.param_sets_kept = False
        self.source_read = 0  # all that serving read from the file: source_bytes_read
        # Where each chunk's bytes lie in an MP4 source, read on the first source request
        # (None: not an MP4 we understand, served uncapped). A chunk whose attempt failed
        # is served uncapped from then on: a wrong cap must cost bytes, never the job.
        self.layout: Layout | None = None
        self.layout_read = False
        self.layout_lock = trio.Lock()
        self.uncapped: set[int] = set()
        self.finished = trio.Event()
        # Set when a local slot finds nothing to claim (or there are none): a core is free
        # for the audio encode, which then costs the chunk encodes nothing.
        self.core_idle = trio.Event()
        self.peers_seen = 0
        self.chunk_s = 0.0
        self.audio_s: float | None = None
        self.audio_done = trio.Event()  # the audio file is complete (audio_when_idle)
        # Told each chunk index once it is verified and kept (the --hls publisher).
        self.on_verified: Callable[[int], None] | None = None
        self.last_done_remote = False  # the chunk that finished the job came from a peer
        self.last_activity = trio.current_time()
        # Attempt times in the report are relative to this (trio clock, like the attempts').
        self.t0 = trio.current_time()
        self.source_path = f"/v1/jobs/{job_id}/source"
        # In a batch (peer.batch): whether the next file is up and recruiting, so a peer
        # with nothing left to do here is better used there.
        self.next_file_ready: Callable[[], bool] = lambda: False
        # --hls: the segment length; each chunk longer than it gets keyframes forced where
        # its segments start (swarm.hls.segment_cuts). None: nothing is forced.
        self.segment_s: float | None = None

    # -- who encodes ----------------------------------------------------------------------
    def name_of(self, peer: str) -> str:
        rec = self.peers.get(peer)
        return rec.name if rec is not None else peer

    @property
    def names(self) -> Mapping[str, str]:
        """Encoder key -> name, for the verdicts' messages."""
        return {k: r.name for k, r in self.peers.items()}

    def add_local(self, score: float | None, slots: int, ffmpeg: str) -> None:
        """This device's slots take part, with its benchmark (work/s per slot) if known."""
        self.peers[self.local_key].ffmpeg = ffmpeg
        # No heartbeat: the local slots die with us, and a big seek may delay ffmpeg's
        # first progress line past the silence limit.
        self.job.add_peer(self.local_key, score, self.t0, slots=slots, heartbeat=False)

    def _attempt(self, attempt: str) -> _AttemptRecord:
        return self.attempt_records.setdefault(attempt, _AttemptRecord())

    # -- hand-out ------------------------------------------------------------------------
    def claim(self, peer: str, now: float, prefetch: bool = False) -> Grant | Retry | Finished:
        if peer == self.local_key and peer not in self.job.scheduler.peers:
            # Our own slots die with us and owe no heartbeat (run_encode announces them;
            # a caller that did not gets them at the default speed, one slot).
            self.job.add_peer(peer, None, now, heartbeat=False)
        if self.job.scheduler.rung_shares:  # only parting counts on them
            self.job.scheduler.awaited = len(self.awaited(now))
        action = self.job.claim(peer, now, prefetch=prefetch)
        if isinstance(action, Grant) and action.split is not None:
            if action.rungs is not None:
                self._part(action.chunk, action.split)
            else:
                self._split(action.chunk, action.split)
        if isinstance(action, Grant):
            if not action.queued:  # a queued one's clock starts with its first report
                self._attempt(action.attempt).started = now
            self.last_activity = now
            if self.journal is not None:
                self.journal.attempt_started(action.attempt, action.chunk,
                                             self.name_of(peer), now - self.t0)
            self.emit(ChunkStart(action.chunk, action.attempt, self.name_of(peer),
                                 self.plans[action.chunk].frames, peer != self.local_key))
        return action

    def _split(self, chunk: int, rest: int) -> None:
        """The scheduler cut ``chunk`` before handing it out: plan both pieces (journalled
        before anyone hears of them, so a resumed job has the same chunks)."""
        head, tail = split_plan(self.info.video, self.info.format_start_s, self.plans[chunk],
                                self.job.chunks[chunk].frames, rest,
                                keyframe_seek=self.info.keyframe_seek)
        assert rest == len(self.plans) and tail.frames == self.job.chunks[rest].frames
        self.plans[chunk] = head
        self.plans.append(tail)
        self.records[chunk].plan = head
        self.records.append(_ChunkRecord(tail))
        if self.journal is not None:
            self.journal.chunk_split(chunk, head.frames, rest, tail.first, tail.frames)
        self.emit(ChunkSplit(chunk, head.frames, rest, tail.frames))

    def _part(self, chunk: int, rest: int) -> None:
        """The scheduler parted ``chunk``'s renditions before handing it out: ``rest``, a
        new chunk of the same frames, holds the rungs the claimer does not encode."""
        assert rest == len(self.plans)
        self.plans.append(self.plans[chunk])
        self.records.append(_ChunkRecord(self.plans[chunk]))
        self.emit(ChunkParted(chunk, self._rung_names(chunk), rest, self._rung_names(rest)))

    def rungs_of(self, chunk: int) -> tuple[int, ...]:
        """The ladder rungs a parted chunk (or part) holds; () for a whole chunk."""
        return self.job.scheduler.groups[chunk] if chunk in self.job.part_of else ()

    def vplan_of(self, chunk: int) -> VideoPlan:
        """What chunk ``chunk`` is encoded to: the job's plan, or a part's rungs of it."""
        return self.vplan.part(self.rungs_of(chunk))

    def _rung_names(self, chunk: int) -> tuple[str, ...]:
        return tuple(f"{r.height}p" for r in self.vplan_of(chunk).rungs)

    def credits(self, chunk: int) -> list[tuple[str, float, float]]:
        """Who encoded a kept chunk: (peer, share of its work, encode s), one per part."""
        rec = self.records[chunk]
        return self.part_credits.get(chunk, [(rec.peer, 1.0, rec.encode_s)])

    def in_order(self) -> list[_ChunkRecord]:
        """Every chunk's record in source order (cut chunks' rests come last by index);
        a parted chunk's, which holds the joined file, but not its other parts'."""
        whole = [r for i, r in enumerate(self.records) if self.job.part_of.get(i, i) == i]
        return sorted(whole, key=lambda r: r.plan.first)

    def claim_remote(self, node_id: str, now: float, prefetch: bool = False
                     ) -> Assignment | Wait | JobDone:
        rec = self.peers.setdefault(node_id, PeerRecord(f"node-{node_id[:6]}"))
        self.job.heard(node_id, now)
        if node_id not in self.job.scheduler.peers:
            self.job.add_peer(node_id, rec.score, now, slots=rec.slots)
        rec.claimed = True
        action = self.claim(node_id, now, prefetch)
        if isinstance(action, Finished):
            return JobDone(self.job_id)
        if isinstance(action, Retry):
            if not prefetch and self.next_file_ready() and release_to_next(
                    self.job, node_id, self.local_key):
                self.peer_left(node_id, now)  # not counted on by the scheduler any more
                return JobDone(self.job_id)
            # The wire bounds a wait (MAX_RETRY_AFTER_S), the scheduler's hold not on every
            # path: a hold of 2e7 s (test_swarm_netns, on a machine at load 20) made each
            # claim of that peer a 500 until the job timed out.
            return Wait(min(MAX_RETRY_AFTER_S, max(MIN_RETRY_AFTER_S, action.retry_after_s)))
        p = self.plans[action.chunk]
        return Assignment(
            job_id=self.job_id, chunk=action.chunk, attempt=action.attempt,
            lease_s=action.lease_s, start_s=max(0.0, p.start_s), frames=p.frames,
            source_path=self.source_path, seek_s=p.seek_s, trim_s=p.trim_s,
            prefetch_bytes=self._prefetch_bytes(action.chunk) if action.queued else None,
            keyframes_s=self.keyframes_s(action.chunk), rungs=self.rungs_of(action.chunk))

    def keyframes_s(self, chunk: int) -> tuple[float, ...]:
        """Where chunk ``chunk``'s HLS segments after its first start, as source timestamps
        (the trim's clock); a millisecond early, so that rounding cannot move the keyframe
        to the frame after."""
        if self.segment_s is None:
            return ()
        p = self.plans[chunk]
        span = p.span_s if p.span_s is not None else self.info.duration_s - p.start_s
        base = self.info.video.seconds(p.first) + self.info.format_start_s
        return tuple(round(base + c - 0.001, 6) for c in segment_cuts(span, self.segment_s))

    def _prefetch_bytes(self, chunk: int) -> int | None:
        """How much of a queued chunk's source its peer may fetch ahead.

        Where the source is served capped to what the chunk needs (``_source_cap``), all
        of it: the copy ends by itself at the cap. A budget below that holds the copy's
        download still for as long as the peer's current chunk takes, and this node's
        kernel cuts a connection held still longer than its TCP_USER_TIMEOUT (two leases;
        bench/lan's 0.3-CPU peers, 30-40 s a chunk, lost every prefetched chunk so: their
        copies ended there as if at the source's end, and the encodes came out short).
        Uncapped, most of the chunk's share of the file, so that a chunk lighter than its
        share is not fetched far past its end (the rest streams once the chunk starts)."""
        if self.layout is not None and chunk not in self.uncapped:
            return MAX_PREFETCH_BYTES
        share = self.job.scheduler.bytes[chunk]
        return max(1, int(PREFETCH_SHARE * share)) if share > 0 else None

    def progress(self, attempt: str, frames: int, now: float, fps: float | None = None
                 ) -> bool:
        keep = self.job.progress(attempt, frames, now)
        if keep:
            run = self._attempt(attempt)
            if run.started is None:
                run.started = now
            self.last_activity = now
            a = self.job.attempts[attempt]
            if fps is None:  # a local slot: its rate since the claim
                fps = a.frames_done / max(1e-3, now - run.started)
            self.emit(ChunkProgress(a.chunk, a.frames_done, attempt, self.name_of(a.peer),
                                    round(fps, 2)))
        return keep

    def progress_remote(self, attempt: str, chunk: int, frames: int, fps: float,
                        now: float) -> bool:
        a = self.job.attempts.get(attempt)
        if a is None or a.chunk != chunk:
            return False
        return self.progress(attempt, frames, now, fps)

    def queued_wanted(self, reporting: str, queued: str) -> bool:
        """Whether ``queued``, the prefetched attempt named in a report on ``reporting``,
        is still wanted from that same peer (not stolen, its chunk not done elsewhere)."""
        a, q = self.job.attempts.get(reporting), self.job.attempts.get(queued)
        return a is not None and q is not None and q.peer == a.peer and q.running

    def heard(self, attempt: str, now: float) -> None:
        """A request naming ``attempt`` came from its peer: that peer is alive, whatever
        the request (its reports are what the silence rule waits for, but any sign counts)."""
        a = self.job.attempts.get(attempt)
        if a is not None:
            self.job.heard(a.peer, now)

    def fail(self, attempt: str, reason: str, *, bench: bool = False) -> None:
        a = self.job.attempts.get(attempt)
        if a is None or not a.running:
            # Already ended (its peer left, its lease expired, another attempt won): that
            # was said when it happened, and the chunk's fate does not change now.
            return
        now = trio.current_time()
        requeued = self.job.failed(attempt, now, reason, bench=bench)
        mine = [r for r in requeued if r.attempt == attempt]
        self.uncapped.add(a.chunk)
        self._journal_ended(attempt)
        name = self.name_of(a.peer)
        chunk = self.job.chunks[a.chunk]
        if mine:
            fate = "requeued"
        elif any(self.job.attempts[x].running for x in chunk.attempts):
            fate = "another attempt continues"
        else:
            fate = "already done"
        self.emit(ChunkFailed(a.chunk, attempt, name, reason, bool(mine), fate,
                              a.peer in self.job.benched))
        for r in requeued:  # a peer left out for good loses the other chunks it holds
            if r.attempt != attempt:
                self._journal_ended(r.attempt)
                self.emit(ChunkRequeued(r.chunk, r.attempt, name, r.reason))
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
        return {p for p, r in self.peers.items()
                if r.invited_at is not None and not r.claimed
                and now - r.invited_at < self.opts.tuning.timings.lease_s}

    # -- recruiting (peer.recruit tells the job about the peers it invites) ---------------
    def peer_invited(self, node_id: str, name: str, score: float | None, slots: int,
                     ffmpeg: str, now: float) -> None:
        """A peer accepted our invite: its name, benchmark (work/s per slot), slots and
        ffmpeg version."""
        rec = self.peers.setdefault(node_id, PeerRecord(name))
        rec.name, rec.ffmpeg, rec.invited_at, rec.slots = name, ffmpeg, now, slots
        if score and score > 0:
            rec.score = score

    def has_claimed(self, node_id: str) -> bool:
        rec = self.peers.get(node_id)
        return rec is not None and rec.claimed

    def named_peer_unreachable(self, spec: str, why: str) -> None:
        """A ``--peer HOST:PORT`` did not answer (reported unless it comes up later)."""
        self.unreachable[spec] = why

    def named_peer_reached(self, spec: str) -> None:
        self.unreachable.pop(spec, None)

    def device_seen(self, node_id: str, name: str, verdict: str) -> None:
        """Recruiting found a device and judged it (a swarm.trust.KINDS verdict)."""
        self.census.saw(node_id, name, verdict)

    def device_gone(self, node_id: str) -> None:
        self.census.forget(node_id)

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
            self.emit(ChunkRequeued(r.chunk, r.attempt, self.name_of(a.peer), r.reason))

    def connection_lost(self, attempt: str) -> None:
        now = trio.current_time()
        for r in self.job.connection_lost(attempt, now):
            self._journal_ended(r.attempt)
            a = self.job.attempts[r.attempt]
            self.emit(ChunkRequeued(r.chunk, r.attempt, self.name_of(a.peer), r.reason))

    def peer_left(self, peer: str, now: float) -> None:
        for r in self.job.peer_left(peer, now):
            self._journal_ended(r.attempt)
            self.emit(ChunkRequeued(r.chunk, r.attempt, self.name_of(peer), r.reason))

    def running_attempt(self, attempt: str, chunk: int | None = None) -> bool:
        a = self.job.attempts.get(attempt)
        return (a is not None and a.outcome is AttemptOutcome.RUNNING
                and (chunk is None or a.chunk == chunk))

    # -- results -------------------------------------------------------------------------
    async def accept(self, attempt: str, path: str, bytes_in: int) -> tuple[bool, str]:
        """Verify a received chunk file; keep it if it is the first valid one."""
        a = self.job.attempts.get(attempt)
        if a is None or not self.running_attempt(attempt):
            await trio.to_thread.run_sync(unlink, path)
            return False, "attempt no longer wanted"
        rec = self.records[a.chunk]
        # The result is in; its peer waits for our answer and owes no reports meanwhile,
        # however long the check takes on a slow coordinator.
        self.job.delivering(attempt, trio.current_time())
        rungs = self.rungs_of(a.chunk) or tuple(range(self.vplan.renditions))
        sets = await trio.to_thread.run_sync(self._param_sets_of, path, len(rungs))
        if (why := self._param_sets_mismatch(attempt, sets, rungs)) is not None:
            await trio.to_thread.run_sync(unlink, path)
            peer = self.name_of(a.peer)
            version = self.peers[a.peer].ffmpeg if a.peer in self.peers else None
            reason = (f"cannot join the output: {why}"
                      f"{f' (ffmpeg {version} on {peer})' if version else ''}")
            self.fail(attempt, reason, bench=True)
            return False, reason
        checked = a.peer != self.local_key and self._spot_check_due(a.peer)
        wrong: str | None = None  # what its content check found
        try:
            if checked:
                wrong = await self._verify_and_check(rec.plan, path, self.vplan_of(a.chunk))
            else:
                await media.verify_chunk(self.ffmpeg, path, self.info, rec.plan.first,
                                         rec.plan.frames)
            # Every rung of a ladder holds the same frames at the same times.
            for rung in range(1, len(rungs)):
                await media.verify_chunk(self.ffmpeg, path, self.info, rec.plan.first,
                                         rec.plan.frames, rung)
        except VerifyError as exc:
            await trio.to_thread.run_sync(unlink, path)
            if checked:
                self.spot_seen[a.peer] -= 1  # a broken result is not one of its checked ones
            if self.param_sets_from == attempt and not self.param_sets_kept:
                self.param_sets = None  # a broken chunk must not set the job's reference
            self.fail(attempt, f"verification: {exc}")
            return False, f"verification failed: {exc}"
        if wrong:
            await trio.to_thread.run_sync(unlink, path)
            if self.param_sets_from == attempt and not self.param_sets_kept:
                self.param_sets = None
            self.fail(attempt, wrong, bench=True)  # wrong pictures are no accident: bench now
            return False, wrong
        root = self.job.part_of.get(a.chunk)  # a parted chunk's: the one it was parted from
        parted = root is not None
        # A part is never journalled: only its chunk's joined file (``_join``) is digested.
        digest = None if parted else await trio.to_thread.run_sync(file_digest, path)
        if not self.job.succeeded(attempt, trio.current_time()):
            await trio.to_thread.run_sync(unlink, path)
            self.emit(ChunkDuplicate(a.chunk, attempt, self.name_of(a.peer)))
            return False, "chunk already done"
        final = os.path.join(self.workdir, f"{'part' if parted else 'chunk'}_{a.chunk:05d}.nut")
        os.replace(path, final)
        self.param_sets_kept = self.param_sets_kept or not parted
        rec.peer = self.name_of(a.peer)
        now = trio.current_time()
        started = self._attempt(attempt).started
        rec.encode_s = encode_s = now - (started if started is not None else now)
        rec.bytes_in = bytes_in
        if root is not None:
            # Before any await: two parts accepted at once must not both think them last;
            # the one in last joins them.
            self.part_files[a.chunk] = final
            last = all(i in self.part_files for i in self.job.parts[root])
        rec.bytes_out = (await trio.Path(final).stat()).st_size
        if root is not None:
            if last:
                await self._join(root, attempt)
        else:
            assert digest is not None
            rec.file = final
            if self.journal is not None:
                # Journalled before the peer hears "accepted" and before anything is merged.
                self.journal.chunk_done(a.chunk, final, digest, rec.bytes_out, bytes_in,
                                        rec.peer, rec.encode_s)
                self._journal_ended(*self.job.chunks[a.chunk].attempts)
            if self.on_verified is not None:
                self.on_verified(a.chunk)
        # This attempt's peer and time (a parted chunk's record now holds its parts' all).
        self.emit(ChunkDone(a.chunk, attempt, self.name_of(a.peer), encode_s, rec.plan.frames,
                            self.job.frames_done))
        # Done once every chunk's file is in: a parted chunk's last part may still be in
        # its join when the other's acceptance gets here.
        if self.job.done and all(r.file for r in self.in_order()) and not self.finished.is_set():
            self.last_done_remote = a.peer != self.local_key
            self.finished.set()
        return True, ""

    async def _join(self, root: int, attempt: str) -> None:
        """Every part of the parted chunk ``root`` is verified: join them into its chunk
        file, every rung in order, and keep that as if one peer had encoded it whole. The
        join copies packets; it is checked to have kept every one of them unchanged. A
        failure here is ours, not a peer's, and ends the job."""
        family = sorted(self.job.parts[root], key=lambda i: self.rungs_of(i)[0])
        parts = [(self.part_files[i], len(self.rungs_of(i))) for i in family]
        final = os.path.join(self.workdir, f"chunk_{root:05d}.nut")
        try:
            await run_ffmpeg(join_parts_argv(self.ffmpeg.path, parts, final),
                             what=f"join chunk {root}")
            # The parts' streams are numbered 0..R-1 in rung order, the joined file's R..2R-1.
            listing = await run_ffmpeg(
                packet_listing_argv(self.ffmpeg.path, [p for p, _ in parts] + [final]),
                what="packet listing")
        except EncodeError as exc:
            self._join_failed(root, str(exc))
            return
        if not joined_unchanged(listing.stdout, self.vplan.renditions):
            self._join_failed(root, "the joined file does not hold the parts' packets")
            return
        sets = await trio.to_thread.run_sync(self._param_sets_of, final, self.vplan.renditions)
        if (why := self._param_sets_mismatch(attempt, sets,
                                             tuple(range(self.vplan.renditions)))) is not None:
            self._join_failed(root, why)
            return
        self.param_sets_kept = True
        for i in family:
            await trio.to_thread.run_sync(unlink, self.part_files.pop(i))
        recs = [self.records[i] for i in family]
        work = [self.job.scheduler.work[i] for i in family]
        self.part_credits[root] = [(r.peer, w / sum(work), r.encode_s)
                                   for r, w in zip(recs, work, strict=True)]
        rec = self.records[root]
        rec.peer = " + ".join(dict.fromkeys(r.peer for r in recs))
        rec.encode_s = max(r.encode_s for r in recs)
        rec.bytes_in = sum(r.bytes_in for r in recs)
        rec.bytes_out = (await trio.Path(final).stat()).st_size
        rec.file = final
        if self.journal is not None:
            digest = await trio.to_thread.run_sync(file_digest, final)
            self.journal.chunk_done(root, final, digest, rec.bytes_out, rec.bytes_in, rec.peer,
                                    rec.encode_s)
            self._journal_ended(*(x for i in family for x in self.job.chunks[i].attempts))
        if self.on_verified is not None:
            self.on_verified(root)

    def _join_failed(self, root: int, why: str) -> None:
        if self.fatal is None:
            self.fatal = f"chunk {root}: its renditions could not be joined: {why}"
            self.finished.set()

    def _spot_check_due(self, peer: str) -> bool:
        """Whether this result of ``peer`` is content-checked: its first ones, then a share
        drawn at random (swarm.spotcheck.check_result)."""
        before = self.spot_seen.get(peer, 0)
        self.spot_seen[peer] = before + 1
        return check_result(before, self.spot_rng)

    async def _verify_and_check(self, plan: ChunkPlan, path: str, vplan: VideoPlan
                                ) -> str | None:
        """Verify a peer's chunk and compare it with the source on a few frames it could not
        predict (swarm.spotcheck), in one decode: what is wrong with its content, or None.
        VerifyError if it fails verification. (Our own slots' results are our own work and
        are only verified.)"""
        samples = sample_frames(plan.frames, self.spot_rng)
        compared = await media.verify_and_spot_check(
            self.ffmpeg, path, f"{path}.samples", self.info, vplan, plan.first, plan.frames,
            samples)
        if isinstance(compared, str):
            return compared
        return spot_verdict(samples, [(c.own, c.others, c.changes) for c in compared])

    def _param_sets_of(self, path: str, streams: int
                       ) -> tuple[tuple[bytes, ...], ...] | None:
        """The chunk's decoding parameter sets, one tuple per stream (a ladder's rung, in
        rung order; each rung is a track of its own output, which holds one set) of its first
        ``streams``; None if its header does not parse (the verification that follows then
        says what is wrong with it)."""
        encoder = self.opts.job.profile.video.codec
        codec = ENCODER_CODECS.get(encoder, encoder)
        try:
            with open(path, "rb") as fh:
                head = fh.read(HEADER_BYTES)
            found = sorted(nut_codec_data(head).items())
            if len(found) < streams:
                return None
            return tuple(tuple(parameter_sets(codec, data)) for _, data in found[:streams])
        except (OSError, ValueError):
            return None

    def _param_sets_mismatch(self, attempt: str, sets: tuple[tuple[bytes, ...], ...] | None,
                             rungs: tuple[int, ...]) -> str | None:
        """Why ``sets`` (those of ``rungs``) cannot join the output's, or None. The first
        whole chunk's are the reference; a part's are checked against it once it is set,
        and its chunk's joined file again."""
        if sets is None:
            return None
        if self.param_sets is None:
            if len(rungs) == self.vplan.renditions:
                self.param_sets, self.param_sets_from = sets, attempt
            return None
        encoder = self.opts.job.profile.video.codec
        codec = ENCODER_CODECS.get(encoder, encoder)
        for i, theirs in zip(rungs, sets, strict=True):
            ours = self.param_sets[i]
            if (why := mismatch(codec, ours, theirs)) is not None:
                if not self.vplan.rungs:
                    return why
                rung = self.vplan.rungs[i]
                return f"rendition {rung.width}x{rung.height}: {why}"
        return None

    def _result_limit(self, chunk: int) -> int:
        # Encoded video is far smaller than raw 4:2:0 frames; anything bigger is not ours.
        return self.plans[chunk].frames * output_pixels(self.vplan) * 3 // 2 + (1 << 20)

    async def receive_result(self, attempt: str, chunk: int, request: Request,
                             receive: Receive) -> tuple[bool, str]:
        """A peer's encoded chunk, streamed into the work directory, then verified."""
        if not self.running_attempt(attempt, chunk):
            raise HTTPError("no such running attempt for this chunk", status_code=409)
        # The attempt id is one of ours (checked above), so it is safe in a file name.
        path = os.path.join(self.workdir, f"recv_{attempt}.nut")
        a = self.job.attempts[attempt]
        self.emit(ChunkUpload(chunk, attempt, self.name_of(a.peer)))
        self.heard(attempt, trio.current_time())
        try:
            def received(n: int) -> None:
                self._attempt(attempt).uploaded += n

            await transfer.receive_file(receive, path, self._result_limit(chunk), received)
        except ClientGone:
            # The connection broke mid-body: the peer died or lost the network (no fault
            # of its encoder). The chunk goes back now, and the rest it holds soon unless
            # it shows it is alive (swarm.job.DROP_GRACE_S).
            self.connection_lost(attempt)
            raise
        except HTTPError as exc:
            self.fail(attempt, f"upload: {exc}")
            raise
        try:
            return await self.accept(attempt, path, self._attempt(attempt).served)
        finally:
            # The peer waited for this answer (however long the check took), and gets it
            # now: its other chunks are not to be taken for silence meanwhile.
            self.heard(attempt, trio.current_time())

    async def serve_source(self, attempt: str, request: Request, send: Send,
                           receive: Receive, head: bool) -> None:
        """The source file, Range-capable, to the ffmpeg of a running attempt."""
        if not self.running_attempt(attempt):
            raise HTTPError("attempt is not running", status_code=410)
        self.heard(attempt, trio.current_time())
        a = self.job.attempts[attempt]
        # What each response carries teaches the scheduler the peer's link. Bytes sent to a
        # prefetch (its attempt queued, not started) go as fast as the link lets them until
        # the peer has its budget and stops reading; once the chunk is encoding, the
        # encoder sets the pace and the rate is only a floor. Timed from the first piece's
        # send to the last's of each kind (so a stalled prefetch's wait is not counted).
        fetched: list[float] = [0, 0.0, 0.0]  # bytes, first and last send, not started
        streamed: list[float] = [0, 0.0, 0.0]

        run = self._attempt(attempt)

        def sent(n: int) -> None:
            run.served += n
            now = trio.current_time()
            kind = fetched if a.queued and a.first_progress is None else streamed
            if not kind[0]:
                kind[1] = now
            kind[0] += n
            kind[2] = now

        def read(n: int) -> None:
            self.source_read += n

        try:
            await transfer.send_file(send, receive, self.info.path, self.info.size,
                                     request.headers.get("range"), head, sent, read,
                                     cap=await self._source_cap(a.chunk))
        finally:
            now = trio.current_time()
            for (nbytes, first, last), saturated in ((fetched, True), (streamed, False)):
                self.job.observe_transfer(a.peer, nbytes, last - first, now,
                                          saturated=saturated)

    async def serve_image(self, attempt: str, index: int, request: Request, send: Send,
                          receive: Receive, head: bool) -> None:
        """A slideshow's images (``peer.slideshow.SlideServer``); a video job has none."""
        raise HTTPError("this job is not a slideshow", status_code=404)

    async def read_layout(self) -> None:
        """Index the source (``layout``) once; every caller waits for that one read. The
        node calls it before a prefetch claim too, whose budget depends on it."""
        async with self.layout_lock:  # one read, and no request served before it is in
            if not self.layout_read:
                self.layout = await trio.to_thread.run_sync(
                    _layout_of, self.info.path, self.info.size, self.info.video.frames)
                self.layout_read = True

    async def _source_cap(self, chunk: int) -> Callable[[int], int | None] | None:
        """How far a request of an attempt at ``chunk`` may be answered, by its start
        (``chunker.mp4index.Layout.cap``); None: to the end of what it asks."""
        await self.read_layout()
        layout, plan = self.layout, self.plans[chunk]
        if layout is None or chunk in self.uncapped:
            return None
        return lambda start: layout.cap(start, plan.first, plan.frames)

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
                await trio.to_thread.run_sync(unlink, path)
                self.emit(ChunkLost(idx, "journalled file missing or altered"))
                continue
            self.job.restore(idx)
            if self.param_sets is None:
                self.param_sets = await trio.to_thread.run_sync(self._param_sets_of, path,
                                                                self.vplan.renditions)
                self.param_sets_kept = self.param_sets is not None
            r = self.records[idx]
            r.file, r.peer, r.bytes_out = path, rec["peer"], rec["bytes_out"]
            r.bytes_in, r.encode_s = rec["bytes_in"], rec["encode_s"]
            self.restored.append(idx)
        if self.job.done:
            self.finished.set()

    # -- invite --------------------------------------------------------------------------
    def invite_ladder(self) -> tuple[str, ...]:
        return tuple(r.wire() for r in self.vplan.rungs)

    def invite_fields(self) -> dict[str, str | int | float | bool]:
        fields = self.opts.job.profile.to_wire()
        fields.update({"out_width": self.vplan.width, "out_height": self.vplan.height,
                       "out_gop": self.vplan.gop_frames})
        if self.vplan.time_base is not None:
            tb = self.vplan.time_base
            fields["out_time_base"] = f"{tb.numerator}/{tb.denominator}"
        return fields


def _chunk_bytes(info: MediaInfo | None, plans: list[ChunkPlan]) -> list[float] | None:
    """What a peer receives per chunk, as the scheduler counts transfer time: the chunk's
    share of the file by frames (what a local slot is credited with, too). None without
    media (bookkeeping that reads no file): no transfer cost is counted."""
    if info is None:
        return None
    total = max(1, info.video.frames)
    return [info.size * p.frames / total for p in plans]


def joined_unchanged(listing: bytes, rungs: int) -> bool:
    """Whether a packet listing (``packet_listing_argv`` of a parted chunk's parts, then of
    their joined file) shows the joined file's ``rungs`` streams holding exactly the parts'
    packets, stream by stream: same timestamps, sizes and checksums, none lost or added."""
    parts: list[tuple[int, str]] = []
    joined: list[tuple[int, str]] = []
    for line in listing.decode("ascii", "replace").splitlines():
        if line and not line.startswith("#"):
            stream, _, packet = line.partition(",")
            n = int(stream)
            (parts if n < rungs else joined).append((n % rungs, packet))
    return bool(parts) and sorted(parts) == sorted(joined)


def _layout_of(path: str, size: int, frames: int) -> Layout | None:
    try:
        with open(path, "rb") as fh:
            return read_layout(fh, size, frames)
    except OSError:
        return None


def _digest_or_none(path: str) -> str | None:
    try:
        return file_digest(path)
    except OSError:
        return None


