"""The state of one encoding job: chunks, attempts, leases. Sans-I/O.

Nothing here reads a clock or touches a process or socket: the trio shell passes ``now``
in and carries out what comes back. That is what lets a test drive hundreds of simulated
peers in virtual time.

A chunk's life, in one table (``TRANSITIONS``)::

    PENDING --claim--> ASSIGNED --first progress--> ENCODING --verified result--> DONE
       ^                  |                            |
       +---- lease expired, attempt failed, peer gone -+

An attempt is one peer's try at one chunk; it ends once (ok, failed, expired, cancelled).
A chunk may have several running attempts (a tail duplicate); it goes back to PENDING only
when the last of them is lost. A chunk is DONE exactly once: the first verified result wins,
the other attempts are cancelled at once, and a late or replaced result is refused.

Two clocks take work back from a peer that can no longer do it:

- the **lease** (``lease_s``): an attempt not renewed by a report for that long expires;
- **silence** (``silent_s``, off unless given; the shell uses ``SILENT_S``): a peer that
  promised to report at least every second (``add_peer(heartbeat=True)``, the default) and
  has not been heard from for ``silent_s`` loses *every* attempt it holds, running or
  prefetched, at the next ``tick``. A dead peer's unstarted prefetch must not wait out the
  whole lease while other slots idle (issue 14: a 3-4 s job took 20 s).
  A dropped connection (``connection_lost``) ends that attempt at once and shortens the
  peer's grace to ``DROP_GRACE_S``. While a result is being verified (``delivering``) the
  peer owes no reports and the leases of its attempts do not run (the delivered one's, and
  the one it prefetched, waiting behind it): the coordinator is the one working. A
  slideshow chunk's check on a coordinator that also renders took 24 s, past the 15 s
  lease, and the chunk was rendered twice (bench/slides).

Which chunk a claim gets is ``swarm.scheduler``'s decision (policy "swarm", or the
benchmark baselines "fifo" and "equal"); the shell feeds it speeds with ``add_peer`` /
``set_speed``, and ``succeeded`` teaches it what each peer really achieves;
``observe_transfer`` teaches it each peer's link, and ``source_bytes`` what a chunk weighs.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from .errors import LocalProtocolError
from .scheduler import POLICIES, PickKind, Scheduler, make_scheduler

__all__ = [
    "POLICIES",
    "Attempt",
    "AttemptOutcome",
    "Chunk",
    "ChunkState",
    "Finished",
    "Grant",
    "Job",
    "Requeued",
    "Retry",
]


class ChunkState(enum.Enum):
    PENDING = "pending"
    ASSIGNED = "assigned"
    ENCODING = "encoding"
    DONE = "done"


TRANSITIONS: dict[ChunkState, frozenset[ChunkState]] = {
    # PENDING -> DONE only through ``restore``: a verified result kept from an earlier run.
    ChunkState.PENDING: frozenset({ChunkState.ASSIGNED, ChunkState.DONE}),
    # A short chunk may finish before its first progress report arrives.
    ChunkState.ASSIGNED: frozenset({ChunkState.ENCODING, ChunkState.PENDING, ChunkState.DONE}),
    ChunkState.ENCODING: frozenset({ChunkState.DONE, ChunkState.PENDING}),
    ChunkState.DONE: frozenset(),
}


class AttemptOutcome(enum.Enum):
    RUNNING = "running"
    OK = "ok"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


@dataclass(slots=True)
class Attempt:
    id: str
    chunk: int
    peer: str
    started: float  # when it was handed out
    lease_until: float
    outcome: AttemptOutcome = AttemptOutcome.RUNNING
    frames_done: int = 0
    ended: float | None = None
    reason: str = ""
    work: float = 0.0  # frames x output pixels
    queued: bool = False  # prefetched: runs after what the peer already held
    first_progress: float | None = None  # "started" encoding, in scheduler terms
    last_progress: float = 0.0
    rate_from: tuple[float, int] | None = None  # the report its rate counts from
    est_finish: float = 0.0  # the scheduler's current guess
    delivered: bool = False  # its result is in hand and being verified

    @property
    def running(self) -> bool:
        return self.outcome is AttemptOutcome.RUNNING


@dataclass(slots=True)
class Chunk:
    index: int
    frames: int
    first: int = 0  # its first frame, counted from the job's first (chunks may be cut)
    state: ChunkState = ChunkState.PENDING
    attempts: list[str] = field(default_factory=list)
    winner: str | None = None

    def move(self, to: ChunkState) -> None:
        if to not in TRANSITIONS[self.state]:
            raise LocalProtocolError(f"chunk {self.index}: {self.state.value} -> {to.value}")
        self.state = to


@dataclass(frozen=True, slots=True)
class Grant:
    """A claim answered with a chunk (on the wire: ``protocol.Assignment``)."""

    attempt: str
    chunk: int
    peer: str
    lease_s: float
    # Prefetched: start it once what the peer holds is done (download it meanwhile).
    queued: bool = False
    # A second attempt at an in-flight chunk: the first valid result wins.
    duplicate: bool = False
    # The unstarted attempt this one took the chunk from (now cancelled).
    replaces: str | None = None
    # The chunk was cut to this peer's share: this new chunk holds the rest of its frames;
    # with ``rungs`` (the ones this peer encodes), parted: the new chunk holds the others.
    split: int | None = None
    rungs: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class Retry:
    """A claim answered with nothing yet: ask again later (on the wire: ``protocol.Wait``)."""

    retry_after_s: float


@dataclass(frozen=True, slots=True)
class Finished:
    """Nothing left to hand out: every chunk is done."""


@dataclass(frozen=True, slots=True)
class Requeued:
    chunk: int
    attempt: str
    reason: str


# A peer polls again this soon when everything is handed out but not yet done.
RETRY_AFTER_S = 0.5
# Silence after which a peer that reports every second (peer/worker.py PROGRESS_EVERY_S)
# is taken for dead: three missed reports, so one late report under load is not enough.
SILENT_S = 3.0
# After a dropped connection a live peer is heard within a report period (its other slot
# reports, or it claims again); a dead one never is.
DROP_GRACE_S = 1.5


class Job:
    """Chunks and attempts of one job; who gets what is ``scheduler``'s call.

    ``policy``: "swarm" (foresight, prefetch, tail duplication), or the benchmark baselines
    "fifo" and "equal" (see ``swarm.scheduler``). Work of a chunk is ``work_per_chunk[i]``,
    else frames x ``pixels``; peer speeds are in the same unit per second.
    ``source_bytes[i]``: the bytes a peer receives for chunk ``i`` (from the plan; None: no
    transfer cost is counted). ``silent_s``: see the module docstring (None: lease only).

    ``cuts[i]``: frame offsets inside chunk ``i`` where the swarm policy may cut it to the
    claimer's share (``swarm.scheduler``, item 4), each piece at least ``min_piece`` frames;
    ``expected_slots``: how many encoder slots the plan was made for. A cut chunk keeps its
    index and its first frames; the rest becomes a new chunk at the end of ``chunks``
    (``Grant.split`` names it), so chunks are in source order by ``first``, not by index.
    ``pipeline_frames``: frames an encoder takes in before its output starts, which its
    progress reports count as done (x264's lookahead): an attempt's finish is estimated
    that much later, or a prefetch is sized as if its slot were free seconds early.
    """

    def __init__(self, frames_per_chunk: Iterable[int], *, lease_s: float = 30.0,
                 max_failures: int = 3, work_per_chunk: Iterable[float] | None = None,
                 pixels: int = 1, policy: str = "swarm",
                 retry_after_s: float = RETRY_AFTER_S,
                 source_bytes: Iterable[float] | None = None,
                 silent_s: float | None = None,
                 cuts: Iterable[Iterable[int]] | None = None, min_piece: int = 1,
                 expected_slots: int = 1, pipeline_frames: int = 0,
                 rung_shares: Iterable[float] | None = None) -> None:
        self.chunks = []
        first = 0
        for i, n in enumerate(frames_per_chunk):
            self.chunks.append(Chunk(i, n, first))
            first += n
        if not self.chunks:
            raise LocalProtocolError("a job needs at least one chunk")
        work = (list(work_per_chunk) if work_per_chunk is not None
                else [float(c.frames * pixels) for c in self.chunks])
        if len(work) != len(self.chunks) or any(w <= 0 for w in work):
            raise LocalProtocolError("work_per_chunk: one positive value per chunk")
        if silent_s is not None and silent_s <= 0:
            raise LocalProtocolError("silent_s must be positive")
        self.silent_s = silent_s
        self._unwatched: set[str] = set()  # peers exempt from the silence rule
        self._dropped: dict[str, float] = {}  # peer -> when a connection of it dropped
        self.lease_s = lease_s
        self.max_failures = max_failures
        self.retry_after_s = retry_after_s
        self.attempts: dict[str, Attempt] = {}
        self.failures: dict[str, int] = {}
        self.benched: set[str] = set()
        self.benched_at: dict[str, float] = {}  # when each benched peer was benched
        self.scheduler: Scheduler = make_scheduler(
            policy, work, [c.frames for c in self.chunks], self.attempts, absent_s=lease_s,
            source_bytes=list(source_bytes) if source_bytes is not None else None,
            cuts=[list(c) for c in cuts] if cuts is not None else None, min_piece=min_piece,
            expected_slots=expected_slots,
            rung_shares=list(rung_shares) if rung_shares is not None else None)
        self.scheduler.pipeline_frames = max(0, pipeline_frames)
        self._running: dict[str, None] = {}  # an ordered set: deterministic iteration
        self._done = 0
        self._frames_done = 0

    @property
    def part_of(self) -> dict[int, int]:
        """Parted ladder chunks (``Grant.rungs``): each part's index -> the chunk it was
        parted from first (the scheduler's record)."""
        return self.scheduler.parted_from

    @property
    def parts(self) -> dict[int, list[int]]:
        """A parted chunk -> all its parts (itself too); its frames count as done once
        every part is."""
        return self.scheduler.parts

    @property
    def policy(self) -> str:
        return self.scheduler.policy

    @property
    def work(self) -> list[float]:
        """Work of each chunk (the scheduler's list: it changes when a chunk is cut)."""
        return self.scheduler.work

    def in_order(self) -> list[Chunk]:
        """The chunks in source order (what a merge concatenates)."""
        return sorted(self.chunks, key=lambda c: c.first)

    # -- peers -------------------------------------------------------------------------
    def add_peer(self, peer: str, speed: float | None, now: float, *, slots: int = 1,
                 heartbeat: bool = True) -> None:
        """Announce a peer with its benchmark speed (work/s per slot; None: unknown).

        ``heartbeat``: it reports at least every second while it holds work, so silence
        means it died. False for the coordinator's own slots (they die with it, and
        ffmpeg's first progress line may take longer than ``silent_s`` on a big seek)."""
        self.scheduler.add_peer(peer, speed, now, slots)
        if heartbeat:
            self._unwatched.discard(peer)
        else:
            self._unwatched.add(peer)

    def set_speed(self, peer: str, work_per_s: float, now: float = 0.0) -> None:
        """Overwrite a peer's speed estimate (e.g. a fresh benchmark)."""
        self.scheduler.set_speed(peer, work_per_s, now)

    def observe(self, peer: str, work: float, seconds: float, now: float = 0.0) -> None:
        """Fold an achieved rate into a peer's speed; ``succeeded`` already does this."""
        self.scheduler.observe(peer, work, seconds, now)

    def observe_transfer(self, peer: str, nbytes: float, seconds: float, now: float = 0.0,
                         *, saturated: bool = True) -> None:
        """A transfer of ``nbytes`` of source to ``peer`` took ``seconds``: learn its link.

        ``saturated=False`` for a source streamed into the peer's encoder (the encoder set
        the pace, so the rate is only a floor); True for a prefetch download."""
        self.scheduler.observe_transfer(peer, nbytes, seconds, now, saturated)

    def heard(self, peer: str, now: float) -> None:
        """Any sign of life from ``peer`` not tied to an attempt; claims and reports count
        already."""
        self.scheduler.heard(peer, now)
        self._dropped.pop(peer, None)

    def speed(self, peer: str) -> float | None:
        ps = self.scheduler.peers.get(peer)
        return ps.speed if ps is not None else None

    def link(self, peer: str) -> float | None:
        """The peer's learnt throughput in source bytes/s (None: not measured yet)."""
        ps = self.scheduler.peers.get(peer)
        return ps.link if ps is not None else None

    # -- queries -----------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self._done == len(self.chunks)

    @property
    def frames_done(self) -> int:
        return self._frames_done

    def running(self) -> list[Attempt]:
        return [self.attempts[x] for x in self._running]

    def whole_done(self, index: int) -> int | None:
        """The chunk ``index`` is or was parted from, if it and all its parts are done
        (``index`` itself for a chunk never parted, once done); else None."""
        root = self.part_of.get(index, index)
        family = self.parts.get(root, [root])
        if all(self.chunks[i].state is ChunkState.DONE for i in family):
            return root
        return None

    def attempt(self, attempt_id: str) -> Attempt:
        try:
            return self.attempts[attempt_id]
        except KeyError:
            raise LocalProtocolError(f"unknown attempt {attempt_id!r}") from None

    # -- events ------------------------------------------------------------------------
    def restore(self, index: int) -> None:
        """Count a chunk as done without encoding it: a resumed job kept its verified file.

        Only before the first claim, so no scheduler decision has counted on the chunk.
        """
        if self.attempts:
            raise LocalProtocolError("restore chunks before handing any out")
        chunk = self.chunks[index]
        if chunk.state is ChunkState.DONE:
            return
        chunk.move(ChunkState.DONE)
        self.scheduler.drop(index)
        self._done += 1
        self._frames_done += chunk.frames

    def claim(self, peer: str, now: float, *, prefetch: bool = False
              ) -> Grant | Retry | Finished:
        """A peer asks for work. ``prefetch``: it is still busy and wants its next chunk
        queued (at most one unstarted at a time); otherwise it has a free slot now."""
        if self.done:
            return Finished()
        if peer in self.benched:
            return Retry(self.retry_after_s)
        self._dropped.pop(peer, None)
        pick = self.scheduler.pick(peer, now, prefetch)
        if pick is None:
            return Retry(max(self.retry_after_s, self.scheduler.hold))
        chunk = self.chunks[pick.chunk]
        if pick.victim is not None:
            self._end(self.attempts[pick.victim], AttemptOutcome.CANCELLED, now,
                      f"taken over by {peer}")
        if pick.split is not None and pick.rungs is not None:
            assert pick.split == len(self.chunks)
            self.chunks.append(Chunk(pick.split, chunk.frames, chunk.first))
        elif pick.split is not None:
            chunk.frames = self.scheduler.frames[pick.chunk]
            rest = Chunk(pick.split, self.scheduler.frames[pick.split],
                         chunk.first + chunk.frames)
            assert rest.index == len(self.chunks)
            self.chunks.append(rest)
        if chunk.state is ChunkState.PENDING:
            chunk.move(ChunkState.ASSIGNED)
        attempt_id = f"c{pick.chunk:05d}a{len(chunk.attempts) + 1:03d}"
        chunk.attempts.append(attempt_id)
        a = Attempt(attempt_id, pick.chunk, peer, now, now + self.lease_s,
                    work=self.work[pick.chunk], queued=pick.queued)
        self.attempts[attempt_id] = a
        self._running[attempt_id] = None
        self.scheduler.assigned(a, now)
        return Grant(attempt_id, pick.chunk, peer, self.lease_s, queued=pick.queued,
                     duplicate=pick.kind is PickKind.DUPLICATE, replaces=pick.victim,
                     split=pick.split, rungs=pick.rungs)

    def progress(self, attempt_id: str, frames_done: int, now: float) -> bool:
        """Renew the lease; False means the attempt is no longer wanted (stop it).

        Any report renews all the peer's attempts: a prefetched chunk waiting behind the
        one being encoded must not expire while its peer is visibly alive."""
        a = self.attempts.get(attempt_id)
        if a is None or not a.running:
            return False
        chunk = self.chunks[a.chunk]
        if chunk.state is ChunkState.ASSIGNED:
            chunk.move(ChunkState.ENCODING)
        a.frames_done = max(a.frames_done, min(frames_done, chunk.frames))
        ps = self.scheduler.peers.get(a.peer)
        for other in ps.attempts if ps is not None else [attempt_id]:
            self.attempts[other].lease_until = now + self.lease_s
        a.lease_until = now + self.lease_s
        self._dropped.pop(a.peer, None)
        self.scheduler.progressed(a, now)
        return True

    def delivering(self, attempt_id: str, now: float) -> None:
        """The attempt's result has arrived whole and is being verified: until it is
        accepted or refused, its peer owes no reports (it is waiting for the answer)."""
        a = self.attempts.get(attempt_id)
        if a is not None and a.running:
            a.delivered = True
            self.scheduler.heard(a.peer, now)

    def succeeded(self, attempt_id: str, now: float) -> bool:
        """A verified result arrived. False: refused (stale attempt or chunk already done).

        The first valid result wins; any other running attempt at the chunk is cancelled
        now, so its next ``progress`` says stop."""
        a = self.attempts.get(attempt_id)
        if a is None or not a.running:
            return False
        chunk = self.chunks[a.chunk]
        if chunk.state is ChunkState.DONE:
            self._end(a, AttemptOutcome.CANCELLED, now, "chunk already done")
            return False
        chunk.move(ChunkState.DONE)
        self.scheduler.heard(a.peer, now)  # it is being answered now
        chunk.winner = attempt_id
        self._done += 1
        if self.whole_done(a.chunk) is not None:
            self._frames_done += chunk.frames
        a.frames_done = chunk.frames
        self._end(a, AttemptOutcome.OK, now, "")
        for other in chunk.attempts:
            if self.attempts[other].running:
                self._end(self.attempts[other], AttemptOutcome.CANCELLED, now,
                          "another attempt finished first")
        return True

    def failed(self, attempt_id: str, now: float, reason: str, *, bench: bool = False
               ) -> list[Requeued]:
        """``bench``: the peer can never succeed on this job (its encoder's output cannot
        join the others', or its pictures were wrong), so it is left out at once instead of
        after ``max_failures``, and the other chunks it holds go back now: none of its
        results could be kept (a slot that goes on while its last result is checked holds
        up to three, peer.worker). A peer left out after ``max_failures`` keeps what it
        holds: those results may still be good."""
        a = self.attempts.get(attempt_id)
        if a is None or not a.running:
            return []
        self._end(a, AttemptOutcome.FAILED, now, reason)
        if a.delivered:
            self.scheduler.heard(a.peer, now)  # it is being answered now
        self.failures[a.peer] = self.failures.get(a.peer, 0) + 1
        hopeless = bench or self.failures[a.peer] >= self.max_failures
        if hopeless and a.peer not in self.benched:
            self.benched.add(a.peer)
            self.benched_at[a.peer] = now
            self.scheduler.bench(a.peer, now)
        out = self._requeue(a, reason, gone=a.peer in self.benched)
        if bench:
            out += self._take_all(a.peer, now, "its peer was left out")
        return out

    def _take_all(self, peer: str, now: float, reason: str) -> list[Requeued]:
        """End every running attempt of ``peer`` and give its chunks back."""
        out: list[Requeued] = []
        for a in self.running():
            if a.peer == peer:
                self._end(a, AttemptOutcome.CANCELLED, now, reason)
                out += self._requeue(a, reason, gone=True)
        return out

    def peer_left(self, peer: str, now: float) -> list[Requeued]:
        out = self._take_all(peer, now, "peer left")
        self.scheduler.remove_peer(peer, now)
        return out

    def connection_lost(self, attempt_id: str, now: float) -> list[Requeued]:
        """A connection carrying the attempt (its source or its result) broke before the
        result was in: the attempt is lost, though not by the peer's fault (no failure is
        counted). The peer's other attempts go too unless it is heard from within
        DROP_GRACE_S (a SIGKILLed peer drops all its connections at once)."""
        a = self.attempts.get(attempt_id)
        if a is None or not a.running:
            return []
        self._dropped[a.peer] = now
        self._end(a, AttemptOutcome.EXPIRED, now, "connection lost")
        return self._requeue(a, "connection lost", gone=False)

    def tick(self, now: float) -> list[Requeued]:
        """Expire leases that saw no progress in time, and take the work of silent peers."""
        out: list[Requeued] = []
        waiting = self._delivering_peers()
        for a in self.running():
            if now >= a.lease_until and a.peer not in waiting:
                self._end(a, AttemptOutcome.EXPIRED, now, "lease expired")
                out += self._requeue(a, "lease expired", gone=True)
        for peer, deadline in self._silence_deadlines():
            if now < deadline:
                continue
            ps = self.scheduler.peers[peer]
            why = f"peer silent for {now - ps.seen:.1f} s"
            # Latest first: each goes to the queue's front, so the held chunk leads.
            for aid in reversed(ps.attempts[:]):
                a = self.attempts[aid]
                if a.running:
                    self._end(a, AttemptOutcome.EXPIRED, now, why)
                    out += self._requeue(a, why, gone=True)
            ps.silent = True  # not counted on by foresight until heard again
            self._dropped.pop(peer, None)
        return out

    def next_deadline(self) -> float | None:
        """When ``tick`` has something to do next, at the earliest (None: nothing held)."""
        waiting = self._delivering_peers()
        times = [a.lease_until for a in self.running() if a.peer not in waiting]
        times += [d for _, d in self._silence_deadlines()]
        return min(times) if times else None

    def _silence_deadlines(self) -> list[tuple[str, float]]:
        """(peer, when its silence takes its attempts) for every watched peer holding work."""
        if self.silent_s is None:
            return []
        out = []
        waiting = self._delivering_peers()
        for peer, ps in self.scheduler.peers.items():
            if not ps.attempts or peer in self._unwatched or peer in waiting:
                continue
            deadline = ps.seen + self.silent_s
            dropped = self._dropped.get(peer)
            if dropped is not None:
                deadline = min(deadline, dropped + DROP_GRACE_S)
            out.append((peer, deadline))
        return out

    def _delivering_peers(self) -> set[str]:
        """Peers with a result being verified: none of their attempts' leases runs (their
        prefetched chunk waits behind the one whose answer they wait for)."""
        return {a.peer for a in self.running() if a.delivered}

    # -- internals ---------------------------------------------------------------------
    def _end(self, a: Attempt, outcome: AttemptOutcome, now: float, reason: str) -> None:
        a.outcome, a.ended, a.reason = outcome, now, reason
        self._running.pop(a.id, None)
        self.scheduler.ended(a, now, ok=outcome is AttemptOutcome.OK)

    def _requeue(self, a: Attempt, reason: str, *, gone: bool) -> list[Requeued]:
        chunk = self.chunks[a.chunk]
        others = [x for x in chunk.attempts if x != a.id and self.attempts[x].running]
        if chunk.state is ChunkState.DONE or others:
            return []
        chunk.move(ChunkState.PENDING)
        self.scheduler.requeue(chunk.index, a.peer, gone, a.ended or 0.0)
        return [Requeued(chunk.index, a.id, reason)]
