"""Which chunk goes to which peer, and when. Sans-I/O: ``Job`` asks, this answers.

Three policies share one interface (``Scheduler.pick``); ``Job`` owns chunk and attempt
state and calls the hooks below whenever an attempt is handed out, reports progress or ends.

``swarm`` (the one we ship) does, per claim:

1. **Pull with foresight.** The next pending chunk goes to the asking peer unless the other
   peers, at their estimated speeds and from their estimated free times, would finish *all*
   pending chunks before this peer finished this one (then it is told to wait). That is what
   keeps a slow Pi off the last chunk while still letting it work when there is plenty.
2. **Prefetch.** A busy peer may hold one queued, not yet started chunk, so its download
   overlaps its encode; the same foresight applies from the time it will be free.
3. **Tail.** With nothing pending, an idle peer takes the in-flight chunk expected to finish
   last, if it would finish it clearly sooner: a queued-but-unstarted one is stolen (its
   attempt cancelled), a started one is duplicated (first valid result wins).
4. **Pieces sized for the claimer.** Where the plan allows it (``cuts``: frame offsets
   inside a chunk where it may be cut, at least ``min_piece`` frames from any other cut),
   the head chunk is cut so that the claimer gets about its *fluid share*: the work it can
   do from when it is free until the time E by which all peers together, each from its own
   free time, would finish everything pending. The rest stays pending at the front. So the
   chunks stay as planned while there is plenty and the peers are alike, and shrink where
   they are not: a slow peer's piece ends with the fast peers' instead of after them, and a
   fast peer is not held back behind a chunk too large for anyone else (bench/hetero: three
   5 s chunks of a 15 s clip cannot be shared 1:2:3; pieces of 2-8 s can). Until the first
   result only the peers that have claimed are known, so the opening round counts the slots
   the plan expected (``expected_slots``) at the mean known speed, and a claim then takes
   at most W / (2 x slots) of the pending work W: a slow peer that happens to claim first
   must not take a third of a short job. So does a peer not measured yet among others
   (benchmarks can be far off) until its reports give its rate, which its prefetch waits
   for.
5. **A ladder's renditions parted.** Where a chunk cannot be cut in time (an ``--hls`` plan,
   a chunk length the user chose) and fewer chunks are pending than there are slots to take
   them (the tail), a ladder chunk (``rung_shares``) may be parted instead: the claimer gets
   some of its rungs (``split_rungs``), the other rungs stay pending as a chunk of their
   own, for another peer. Each part decodes the source again, so a part's work counts that
   decode (``RUNG_DECODE_SHARE``), and a chunk is parted only where that ends the pending
   work at least ``PART_GAIN`` sooner than whole chunks would: one chunk left for two idle
   peers, not two chunks for three (``_parting``).

Speeds are work units (frames x output pixels) per second, first from the peer's benchmark,
then an EWMA of what its finished attempts achieved. In-flight estimates use progress reports.

**Links.** Each peer's throughput (source bytes/s) is learnt from the transfers the shell
reports (``observe_transfer``), as its speed is from its encodes; until the first one a
transfer is taken to cost nothing (the behaviour before links were known). A chunk's source
size comes from the plan (``source_bytes``; none given: no transfer cost). How transfer and
encode combine, explicitly:

- a chunk claimed by an idle peer is *streamed*: its ffmpeg reads the source while it
  encodes, so it ends at ``start + max(transfer, encode)``. That is exactly what the peer's
  achieved speed measures (it is learnt from such chunks, and live reports slow it down at
  once), so the estimate is ``start + work / speed``;
- a *prefetched* chunk downloads from its claim on, while the peer encodes what it holds,
  and its encode starts when the encoder is free (streaming whatever has not arrived yet),
  so it ends at ``max(encoder free + work / speed, claim + transfer)``.

A peer whose transfer would cost more than its encoding gains thus looks as slow as it is:
foresight holds it back while the others can finish the pending work sooner (less work, or
none), and an idle faster peer steals its unstarted prefetch or copies its late chunk at the
tail: a slow link costs the swarm at most the chunk it holds, never the job (bench/simulate
prints each LAN swarm's makespan against the coordinator's alone).

The link estimate rises at once to any faster transfer and falls (EWMA) only with slower
*prefetch* downloads: a streamed source goes at its encoder's pace, and behind a shared
uplink a slow transfer mostly measures the crowd of the moment, which the achieved speed
already counts. Adding that crowd's share to streamed estimates as well made the tail
estimates pessimistic once the uplink frees up (bench/simulate, LAN scenarios: 1.069 and
1.070 instead of 1.053 and 1.057).

``fifo`` (a RabbitMQ-style worker pool) and ``equal`` (round-robin pre-split, Docker Swarm /
Akka style) exist only as baselines for ``bench/simulate``.

Cost: a claim is O(1) while plenty is pending (a capacity bound settles it), O(peers) only
near the end, and O(log attempts) for the tail via a lazily invalidated heap.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .errors import LocalProtocolError

__all__ = [
    "POLICIES",
    "EqualScheduler",
    "FifoScheduler",
    "PeerState",
    "Pick",
    "PickKind",
    "Scheduler",
    "SwarmScheduler",
    "make_scheduler",
]


class Attempt(Protocol):
    """An attempt as the scheduler sees it; ``swarm.job.Attempt`` records have this shape.

    The Job owns the records and the table (the scheduler never adds or removes one). The
    scheduler reads the first group of fields and owns the last four: when progress first
    and last came, the report its rate counts from, and its finish estimate. Declared here,
    so the scheduler needs nothing from ``swarm.job`` (which builds on it) and the two do
    not import each other.
    """

    id: str
    chunk: int
    peer: str
    started: float
    queued: bool
    frames_done: int
    work: float
    # Written by the scheduler only:
    first_progress: float | None
    last_progress: float
    rate_from: tuple[float, int] | None  # (time, frames) of the first trusted report
    est_finish: float

POLICIES = ("swarm", "fifo", "equal")

# Weight of the newest finished chunk in a peer's speed from the second on (the first
# replaces the benchmark): half, so the estimate follows a peer that slows down or speeds up
# within a few chunks.
EWMA_ALPHA = 0.5
# A peer waits only if the others would beat it by this much. Small: a chunk that ends after
# the projected makespan stretches it one for one, but two equal peers must not both wait.
WAIT_MARGIN = 0.02
# A duplicate must be expected to finish at least this share of the remaining time sooner;
# below that the copy mostly burns the duplicating peer's power.
DUP_MARGIN = 0.15
# Progress-based rates are trusted once this share of a chunk is done (earlier ones are
# dominated by ffmpeg start-up).
PROGRESS_TRUST = 0.1
# At most this many attempts at one chunk run at once: a faster peer freed later may still
# overtake a duplicate, but the copies cost the swarm power.
MAX_ATTEMPTS = 3
# An in-flight chunk this far past its expected finish is presumed lost (a silent peer, a
# stalled download); at the tail it is copied at once rather than after its lease (30 s).
OVERDUE_S = 5.0
# Equal: a share holder silent this long with nothing in hand is taken for down.
ABSENT_S = 30.0
# The equal split waits this long after the first claim, so that every peer invited at the
# start of the job is in it (invites go out one by one; the first peer to answer would
# otherwise hold every chunk). An orchestrator schedules over the nodes it has, not over
# whichever registered first.
SPLIT_SETTLE_S = 1.0
# A peer held back by foresight polls again after this share of its would-be chunk time,
# within [the job's retry_after_s, MAX_HOLD_S]: ten times fewer claims from slow peers near
# the end, at the price of starting at most MAX_HOLD_S late when others falter (a tail copy
# or an expired lease covers that case anyway).
HOLD_SHARE = 0.1
MAX_HOLD_S = 5.0
# Speed for a peer that claims without announcing one: the mean of the known ones, or this.
DEFAULT_SPEED = 1.0
# Weight of a slower prefetch download in a peer's link estimate, as for speeds.
LINK_ALPHA = 0.5
# A chunk is cut only if the claimer's share is this much below it: a cut costs an ffmpeg
# start and a fresh rate control (bench/quality), not worth a few percent of balance.
SPLIT_SLACK = 0.1
# A piece may run this far past the claimer's share rather than take the next cut down.
SHARE_OVERSHOOT = 0.1
# How many pending chunks a claim looks at for the piece that fits its share best.
LOOK_AHEAD = 4
# Where chunks can be cut, a prefetch is sized at most this long before its slot is free
# (or twice its transfer time, if longer): early enough to hide the claim and the download.
PREFETCH_LEAD_S = 3.0
# In the opening round a claim takes at most pending / (this x expected slots).
OPENING_SHARE = 2.0
# A chunk is parted by rendition (item 5) only if that ends the pending work at least this
# share of the time sooner: a part costs the swarm a second decode of the source.
PART_GAIN = 0.05
# Share of a ladder chunk's work that is the decode of its source, which each part of a
# parted chunk (item 5) does again. bench/ladder (the shipped ladder, veryfast, a grainy 25
# Mb/s 1080p source): one decode cost 0.22 of three separate encodes, about 0.45 of the one
# split encode of all three rungs; cleaner sources and slower presets cost less. Set high,
# so that a part is never thought cheaper than it is.
RUNG_DECODE_SHARE = 0.4
# A part is also one more result for the coordinator to verify and content-check, a cost
# that does not shrink with the chunk: counted as this many frames more of the chunk's work
# on each part. bench/parting (1080p ladder, two 0.6-CPU peers): parting 2 s chunks was a
# wash (wall 0.98-1.02, the coordinator +2-3 CPU s a part), 6 s chunks ended 0.83-0.88x.
PART_FIXED_FRAMES = 20


class PickKind(enum.Enum):
    NEW = "new"  # a pending chunk
    DUPLICATE = "duplicate"  # a second attempt at a started in-flight chunk
    STEAL = "steal"  # a queued, unstarted chunk taken from a slower peer


@dataclass(frozen=True, slots=True)
class Pick:
    chunk: int
    kind: PickKind = PickKind.NEW
    victim: str | None = None  # the attempt to cancel (STEAL only)
    queued: bool = False  # a prefetch: the peer starts it after what it holds
    # The chunk was cut (``Scheduler.split``): this new chunk holds the rest of its frames;
    # or, with ``rungs``, parted (``Scheduler.split_rungs``): it holds the other rungs.
    split: int | None = None
    rungs: tuple[int, ...] | None = None  # a parted chunk: the rungs the claimer encodes


@dataclass(slots=True)
class PeerState:
    name: str
    speed: float  # work units per second per slot
    slots: int = 1
    seen: float = 0.0  # last claim or progress
    observed: int = 0  # finished attempts folded into ``speed``
    free_since: float = 0.0  # when its last attempt ended
    benched: bool = False
    attempts: list[str] = field(default_factory=list)  # running, in hand-out order
    ready: float = 0.0  # expected time it finishes everything it holds
    link: float | None = None  # source bytes/s it receives (None: not measured yet)
    silent: bool = False  # lost its attempts to silence and not heard from since


class Scheduler:
    """Peer registry, speed learning and hooks; subclasses decide ``pick``."""

    policy = ""

    def __init__(self, work: Sequence[float], frames: Sequence[int],
                 attempts: Mapping[str, Attempt],
                 source_bytes: Sequence[float] | None = None,
                 cuts: Sequence[Sequence[int]] | None = None, min_piece: int = 1,
                 expected_slots: int = 1, rung_shares: Sequence[float] | None = None
                 ) -> None:
        self.work = list(work)
        self.frames = list(frames)
        # Where each chunk may be cut (frame offsets inside it, ascending); a cut leaves at
        # least ``min_piece`` frames on either side. None: chunks are never cut.
        if min_piece < 1 or expected_slots < 1:
            raise LocalProtocolError("min_piece and expected_slots must be at least 1")
        self.min_piece = min_piece
        self.expected_slots = expected_slots
        # Frames an encoder takes in before its output starts (``Job``'s pipeline_frames).
        self.pipeline_frames = 0
        if cuts is not None and len(cuts) != len(self.work):
            raise LocalProtocolError("cuts: one list per chunk")
        self.cuts = [sorted(o for o in c if 0 < o < n)
                     for c, n in zip(cuts, self.frames, strict=True)
                     ] if cuts is not None else [[] for _ in self.work]
        # Once, not per claim: a scan of 16 000 chunks' cut lists made claims 6x dearer.
        self._can_cut = any(self.cuts)
        # A ladder (item 5): each rung's share of a chunk's encode (its pixels), and per
        # chunk the rungs it holds and the work it would be with all of them.
        shares = tuple(rung_shares or ())
        if shares and (len(shares) < 2 or min(shares) <= 0
                       or not math.isclose(sum(shares), 1.0)):
            raise LocalProtocolError("rung_shares: two or more shares > 0 that sum to 1")
        self.rung_shares = shares
        self.groups: list[tuple[int, ...]] = [tuple(range(len(shares)))] * len(self.work)
        self.whole = list(self.work)
        # Parted chunks: each part -> the chunk first parted, and that chunk -> every part
        # (itself too).
        self.parted_from: dict[int, int] = {}
        self.parts: dict[int, list[int]] = {}
        # Source bytes a peer must receive per chunk (0: unknown, no transfer cost counted).
        self.bytes = [float(b) for b in source_bytes] if source_bytes is not None else (
            [0.0] * len(self.work))
        if len(self.bytes) != len(self.work) or any(b < 0 for b in self.bytes):
            raise LocalProtocolError("source_bytes: one value >= 0 per chunk")
        self.attempts = attempts  # the Job's table (see Attempt for who writes what)
        self.peers: dict[str, PeerState] = {}
        self._speed_sum = 0.0  # sum of speed x slots over registered, unbenched peers
        self._chunk_running: dict[int, list[str]] = {}
        self.hold = 0.0  # after pick() returned None: a suggested retry delay, 0 = default
        # Peers that accepted the job but have not claimed yet (set by the shell before a
        # claim): parting a chunk (item 5) counts on them, nothing else does.
        self.awaited = 0

    def drop(self, chunk: int) -> None:
        """Forget a chunk that needs no encoding (restored before the first claim)."""
        raise NotImplementedError


    def split(self, chunk: int, at: int) -> int:
        """Cut ``chunk`` at frame offset ``at``: it keeps its first ``at`` frames and a new
        chunk (the returned index) the rest, with the cuts beyond. Work and source bytes
        are shared in proportion to frames. Only for a chunk no attempt has started."""
        n = self.frames[chunk]
        if not self.min_piece <= at <= n - self.min_piece:
            raise LocalProtocolError(f"chunk {chunk}: cannot cut {n} frames at {at}")
        new = len(self.work)
        share = at / n
        for values in (self.work, self.bytes):
            values.append(values[chunk] * (1 - share))
            values[chunk] *= share
        self.whole.append(self.whole[chunk] * (1 - share))
        self.whole[chunk] *= share
        self.groups.append(self.groups[chunk])
        self.frames[chunk] = at
        self.frames.append(n - at)
        cuts = self.cuts[chunk]
        self.cuts[chunk] = [o for o in cuts if o < at]
        self.cuts.append([o - at for o in cuts if o > at])
        return new

    def part_work(self, chunk: int, rungs: Sequence[int]) -> float:
        """The work of encoding only ``rungs`` of ``chunk``: its decode, then their share."""
        return self.whole[chunk] * (RUNG_DECODE_SHARE + (1 - RUNG_DECODE_SHARE)
                                    * sum(self.rung_shares[r] for r in rungs))

    def split_rungs(self, chunk: int, take: tuple[int, ...]) -> int:
        """Part ``chunk`` (item 5): it keeps the rungs ``take``, a new chunk (the returned
        index) gets its other rungs, the same frames and source bytes; neither is cut in time
        later (both must hold the same frames). Only for a chunk no attempt has started."""
        group = self.groups[chunk]
        rest = tuple(r for r in group if r not in take)
        if not take or not rest or not set(take) <= set(group):
            raise LocalProtocolError(f"chunk {chunk}: cannot part rungs {group} as {take}")
        new = len(self.work)
        self.work[chunk], kept = self.part_work(chunk, take), self.part_work(chunk, rest)
        self.work.append(kept)
        self.whole.append(self.whole[chunk])
        self.bytes.append(self.bytes[chunk])
        self.frames.append(self.frames[chunk])
        self.cuts[chunk] = []
        self.cuts.append([])
        self.groups[chunk] = take
        self.groups.append(rest)
        root = self.parted_from[chunk] = self.parted_from[new] = self.parted_from.get(chunk,
                                                                                   chunk)
        self.parts.setdefault(root, [root]).append(new)
        return new

    def holds_part_of(self, ps: PeerState, chunk: int) -> bool:
        """Does ``ps`` hold another part of the chunk ``chunk`` was parted from?"""
        root = self.parted_from.get(chunk)
        return root is not None and any(
            self.parted_from.get(self.attempts[x].chunk) == root for x in ps.attempts)

    def _partings(self, chunk: int) -> list[tuple[int, ...]]:
        """The rungs a claimer may take of ``chunk``: every run of them from either end."""
        group = self.groups[chunk]
        return [p for k in range(1, len(group)) for p in (group[:k], group[k:])]

    # -- peers ---------------------------------------------------------------------------
    def add_peer(self, peer: str, speed: float | None, now: float, slots: int = 1) -> PeerState:
        if speed is not None and speed <= 0:
            raise LocalProtocolError(f"peer {peer!r}: speed must be positive, not {speed}")
        if slots < 1:
            raise LocalProtocolError(f"peer {peer!r}: needs at least one slot")
        ps = self.peers.get(peer)
        if ps is None:
            ps = PeerState(peer, speed or self.default_speed(), slots, now, free_since=now)
            self.peers[peer] = ps
            if not ps.benched:
                self._speed_sum += ps.speed * ps.slots
            self._peer_changed(ps, now)
            return ps
        self.set_speed(peer, speed or ps.speed, now)
        ps.seen = max(ps.seen, now)
        return ps

    def default_speed(self) -> float:
        live = [p for p in self.peers.values() if not p.benched]
        return self._speed_sum / sum(p.slots for p in live) if live else DEFAULT_SPEED

    def peer(self, peer: str, now: float) -> PeerState:
        return self.peers.get(peer) or self.add_peer(peer, None, now)

    def set_speed(self, peer: str, speed: float, now: float) -> None:
        if speed <= 0:
            raise LocalProtocolError(f"peer {peer!r}: speed must be positive, not {speed}")
        ps = self.peer(peer, now)
        if not ps.benched:
            self._speed_sum += (speed - ps.speed) * ps.slots
        ps.speed = speed
        self._peer_changed(ps, now)

    def observe(self, peer: str, work: float, seconds: float, now: float) -> None:
        """Fold one achieved rate into the peer's speed (EWMA, recent chunks weigh most)."""
        if work <= 0 or seconds <= 0:
            return
        ps = self.peer(peer, now)
        # The first result replaces the benchmark: on a busy machine benchmarks were off by
        # 2-15x, and half of that left a 0.15-CPU peer looking 7x too fast (bench/hetero).
        alpha = EWMA_ALPHA if ps.observed else 1.0
        self.set_speed(peer, alpha * (work / seconds) + (1 - alpha) * ps.speed, now)
        ps.observed += 1

    def observe_transfer(self, peer: str, nbytes: float, seconds: float, now: float,
                         saturated: bool = True) -> None:
        """Fold one transfer into the peer's link estimate: up at once, down by EWMA.

        ``saturated``: the transfer ran as fast as the network let it (a prefetch download).
        A streamed source is paced by the encoder reading it, so its rate is only a floor:
        it may raise the estimate, never lower it (see the module docstring).
        """
        if nbytes <= 0 or seconds <= 0:
            return
        ps = self.peer(peer, now)
        rate = nbytes / seconds
        if ps.link is None or rate >= ps.link:
            ps.link = rate  # a link is at least as fast as it was seen to be
        elif saturated:
            ps.link = LINK_ALPHA * rate + (1 - LINK_ALPHA) * ps.link
        else:
            return
        self._peer_changed(ps, now)

    def transfer_s(self, ps: PeerState, chunk: int) -> float:
        """Expected seconds for ``ps`` to receive ``chunk``'s source (0: unknown)."""
        return self.bytes[chunk] / ps.link if ps.link else 0.0

    def heard(self, peer: str, now: float) -> None:
        """A sign of life from ``peer`` (a claim, a report, an answered request)."""
        ps = self.peers.get(peer)
        if ps is not None:
            ps.seen = max(ps.seen, now)
            ps.silent = False

    def bench(self, peer: str, now: float) -> None:
        ps = self.peer(peer, now)
        if not ps.benched:
            ps.benched = True
            self._speed_sum -= ps.speed * ps.slots

    def remove_peer(self, peer: str, now: float) -> None:
        ps = self.peers.pop(peer, None)
        if ps is not None and not ps.benched:
            self._speed_sum -= ps.speed * ps.slots

    # -- hand-out (policy) ---------------------------------------------------------------
    def pick(self, peer: str, now: float, prefetch: bool) -> Pick | None:
        """The chunk for ``peer``, or None: wait (``hold`` > 0: at least that long)."""
        raise NotImplementedError

    def requeue(self, chunk: int, peer: str, gone: bool, now: float) -> None:
        """Give a lost chunk back; ``gone``: its peer is dead, left or benched."""
        raise NotImplementedError

    # -- hooks from Job ------------------------------------------------------------------
    def assigned(self, a: Attempt, now: float) -> None:
        ps = self.peer(a.peer, now)
        ps.attempts.append(a.id)
        ps.seen, ps.silent = now, False
        self._chunk_running.setdefault(a.chunk, []).append(a.id)
        self._peer_changed(ps, now)

    def progressed(self, a: Attempt, now: float) -> None:
        if a.first_progress is None:
            a.first_progress = now
        a.last_progress = now
        ps = self.peers.get(a.peer)
        if ps is None:
            return
        ps.seen, ps.silent = now, False
        frames = self.frames[a.chunk]
        if a.rate_from is None and a.frames_done >= PROGRESS_TRUST * frames:
            a.rate_from = (now, a.frames_done)
        rate = self._rate(a)
        if rate is not None:
            live = rate * a.work / frames
            if live < ps.speed:
                # Slower than believed (a benchmark 3x too kind, a throttled phone): act on
                # it now rather than after the chunk; faster only counts once finished.
                self.set_speed(a.peer, live, now)
        self._peer_changed(ps, now)

    def ended(self, a: Attempt, now: float, ok: bool) -> None:
        running = self._chunk_running.get(a.chunk, [])
        if a.id in running:
            running.remove(a.id)
        if not running:
            self._chunk_running.pop(a.chunk, None)
        ps = self.peers.get(a.peer)
        if ps is None:
            return
        if a.id in ps.attempts:
            ps.attempts.remove(a.id)
        if ok:
            # A queued attempt's clock starts when the one before it freed the encoder.
            began = max(a.started, ps.free_since) if a.queued else a.started
            self.observe(a.peer, a.work, now - began, now)
        ps.free_since = now
        self._peer_changed(ps, now)
        for other in running:
            self._attempt_changed(self.attempts[other], now)

    def _peer_changed(self, ps: PeerState, now: float) -> None:
        """Estimates of this peer's attempts may have moved."""

    @staticmethod
    def _rate(a: Attempt) -> float | None:
        """Frames/s from ``a``'s reports, counted from its first report past PROGRESS_TRUST
        (None until a later one). Not from its start: ffmpeg counts a frame as done when
        it enters the encoder, and x264's lookahead takes its first 40-odd frames at once,
        so rates from the start came out twice too fast early in a chunk (bench/hetero: a
        prefetch was sized 16 s before its slot was free)."""
        if a.rate_from is None or a.last_progress <= a.rate_from[0]:
            return None
        t, n = a.rate_from
        return max(0, a.frames_done - n) / (a.last_progress - t) or None

    def _attempt_changed(self, a: Attempt, now: float) -> None:
        """The chunk of ``a`` may have become single-attempt again."""


class FifoScheduler(Scheduler):
    """Plain pull: the next pending chunk to whoever asks (a RabbitMQ worker pool)."""

    policy = "fifo"

    def __init__(self, work: Sequence[float], frames: Sequence[int],
                 attempts: Mapping[str, Attempt],
                 source_bytes: Sequence[float] | None = None) -> None:
        super().__init__(work, frames, attempts, source_bytes)
        self._pending: deque[int] = deque(range(len(self.work)))

    def pick(self, peer: str, now: float, prefetch: bool) -> Pick | None:
        self.heard(self.peer(peer, now).name, now)
        if not self._pending:
            return None
        return Pick(self._pending.popleft(), queued=prefetch and bool(self.peers[peer].attempts))

    def requeue(self, chunk: int, peer: str, gone: bool, now: float) -> None:
        self._pending.appendleft(chunk)

    def drop(self, chunk: int) -> None:
        self._pending.remove(chunk)


class EqualScheduler(Scheduler):
    """Round-robin pre-split into equal shares over the peers known SPLIT_SETTLE_S after
    the first claim.

    A peer only ever gets chunks of its own share; late peers get nothing. A chunk lost by a
    live peer goes back to the front of its share; when a peer is gone (left, lease expired,
    benched) its whole share is dealt round-robin to the remaining holders, and only when no
    holder is left may anyone take the orphans, so the job still ends.
    """

    policy = "equal"

    def __init__(self, work: Sequence[float], frames: Sequence[int],
                 attempts: Mapping[str, Attempt],
                 source_bytes: Sequence[float] | None = None) -> None:
        super().__init__(work, frames, attempts, source_bytes)
        self._shares: dict[str, deque[int]] | None = None
        self._orphans: deque[int] = deque(range(len(self.work)))
        self._deal = 0  # rotates where redistribution starts
        self._next_reap = 0.0
        self._first_claim: float | None = None

    def drop(self, chunk: int) -> None:
        self._orphans.remove(chunk)  # before the first claim, every chunk is an orphan

    def _reap(self, now: float) -> None:
        """Like a heartbeat-based orchestrator: a holder silent for ABSENT_S with nothing
        in hand is down, and its share goes to the others (checked once a second)."""
        assert self._shares is not None
        self._next_reap = now + 1.0
        for h in list(self._shares):
            ps = self.peers.get(h)
            if ps is None or (not ps.attempts and ps.seen < now - ABSENT_S):
                self._redistribute(h, [], now)

    def _split(self, claimer: str) -> dict[str, deque[int]]:
        holders = [p.name for p in self.peers.values() if not p.benched] or [claimer]
        shares: dict[str, deque[int]] = {h: deque() for h in holders}
        for i, c in enumerate(self._orphans):
            shares[holders[i % len(holders)]].append(c)
        self._orphans.clear()
        return shares

    def pick(self, peer: str, now: float, prefetch: bool) -> Pick | None:
        ps = self.peer(peer, now)
        self.heard(peer, now)
        if self._shares is None:
            if self._first_claim is None:
                self._first_claim = now
            if now < self._first_claim + SPLIT_SETTLE_S:
                self.hold = self._first_claim + SPLIT_SETTLE_S - now
                return None
            self.hold = 0.0
            self._shares = self._split(peer)
        if now >= self._next_reap:
            self._reap(now)
        share = self._shares.get(peer)
        queued = prefetch and bool(ps.attempts)
        if share:
            return Pick(share.popleft(), queued=queued)
        if not self._shares and self._orphans:
            return Pick(self._orphans.popleft(), queued=queued)
        return None

    def requeue(self, chunk: int, peer: str, gone: bool, now: float) -> None:
        if self._shares is None:
            self._orphans.appendleft(chunk)
            return
        if not gone and peer in self._shares:
            self._shares[peer].appendleft(chunk)
            return
        self._redistribute(peer, [chunk], now)

    def bench(self, peer: str, now: float) -> None:
        super().bench(peer, now)
        self._redistribute(peer, [], now)

    def remove_peer(self, peer: str, now: float) -> None:
        super().remove_peer(peer, now)
        self._redistribute(peer, [], now)

    def _redistribute(self, peer: str, extra: list[int], now: float) -> None:
        if self._shares is None:
            return
        items = extra + list(self._shares.pop(peer, ()))
        holders = list(self._shares)
        if not holders:
            self._orphans.extend(items)
            return
        for c in items:
            self._shares[holders[self._deal % len(holders)]].append(c)
            self._deal += 1


class SwarmScheduler(Scheduler):
    """Pull with foresight, one prefetch per peer, steal or duplicate at the tail, and
    pieces cut to the claimer's share."""

    policy = "swarm"

    def __init__(self, work: Sequence[float], frames: Sequence[int],
                 attempts: Mapping[str, Attempt], absent_s: float = 30.0,
                 source_bytes: Sequence[float] | None = None,
                 cuts: Sequence[Sequence[int]] | None = None, min_piece: int = 1,
                 expected_slots: int = 1, rung_shares: Sequence[float] | None = None
                 ) -> None:
        super().__init__(work, frames, attempts, source_bytes, cuts, min_piece,
                         expected_slots, rung_shares)
        # Requeued chunks go to the front: they are the ones already late.
        self._pending: deque[int] = deque(range(len(self.work)))
        self._pending_work = float(sum(self.work))
        # Peers unseen this long with nothing in hand are not counted on to take work.
        self.absent_s = absent_s
        # Max-heap of in-flight chunks by soonest expected finish: (-finish, version, chunk);
        # an entry goes stale when its chunk is re-published and is dropped when met.
        self._heap: list[tuple[float, int, int]] = []
        self._overdue: list[tuple[float, int, int]] = []  # same entries, soonest first
        self._chunk_version: dict[int, int] = {}

    def requeue(self, chunk: int, peer: str, gone: bool, now: float) -> None:
        self._pending.appendleft(chunk)
        self._pending_work += self.work[chunk]

    def drop(self, chunk: int) -> None:
        self._pending.remove(chunk)
        self._pending_work -= self.work[chunk]

    def pick(self, peer: str, now: float, prefetch: bool) -> Pick | None:
        ps = self.peer(peer, now)
        self.heard(peer, now)
        self.hold = 0.0
        queued = prefetch and bool(ps.attempts)
        if queued and any(self.attempts[x].queued and self.attempts[x].first_progress is None
                          for x in ps.attempts):
            return None  # one prefetched chunk per peer is enough to hide a download
        ready = max(ps.ready, now) if queued else now
        if queued and self._pending and self.holds_part_of(ps, self._pending[0]):
            # A part is for another device: this one would only decode the chunk twice.
            # It takes the part itself once it is idle, if nobody else has by then.
            return None
        if queued and self._opening():
            # Whom it would compete with is not known yet: a prefetch sized now could make
            # a slow peer that claimed first hold a second piece it cannot finish in time.
            return None
        if self._pending and queued and self._cuttable():
            # A piece sized now for a slot free only much later is sized on stale guesses
            # (its speed, the others'); closer to that time the share is known better. Early
            # enough to hide the download and the claim is all a prefetch is for.
            lead = max(PREFETCH_LEAD_S, 2 * self.transfer_s(ps, self._pending[0]))
            if ready - now > lead:
                self.hold = ready - now - lead
                return None
            if ps.observed == 0 and not any(self._trusted(self.attempts[x])
                                            for x in ps.attempts):
                return None  # when it is free is a benchmark's guess until reports come
        if self._pending:
            chunk, at, take, without = self._choose(ps, ready, now)
            share = 1.0 if at is None else at / self.frames[chunk]
            piece = self.work[chunk] * share if take is None else self.part_work(chunk, take)
            finish = ready + piece / ps.speed
            if queued:  # downloads from now on, encodes once the encoder is free
                finish = max(finish, now + self.transfer_s(ps, chunk) * share)
            # A peer never measured gets one chunk while plenty remain: its benchmark may be
            # far too low (measured on a loaded device, or a guess), and held back it would
            # never show its real speed (bench/hetero: a 0.15-CPU peer got nothing).
            explore = (ps.observed == 0 and not ps.attempts
                       and len(self._pending) > len(self.peers))
            # Even the smallest piece would end after the others, without this slot, would
            # have done everything pending: leave it to them (the fluid rule's foresight).
            late = finish > now + (without - now) * (1 + WAIT_MARGIN)
            if not explore and (late or self._others_finish_first(ps, now, finish)):
                # Told off by foresight: its chance comes only if the others falter, which
                # takes a while to show; polling at the default rate would just cost claims.
                self.hold = min(MAX_HOLD_S, (finish - now) * HOLD_SHARE)
                return None
            if chunk == self._pending[0]:
                self._pending.popleft()
            else:
                self._pending.remove(chunk)  # one of the first LOOK_AHEAD
            self._pending_work -= self.work[chunk]
            rest = None
            if take is not None:
                rest = self.split_rungs(chunk, take)
            elif at is not None:
                rest = self.split(chunk, at)
            if rest is not None:
                self._pending.appendleft(rest)  # next in line
                self._pending_work += self.work[rest]
            return Pick(chunk, queued=queued, split=rest, rungs=take)
        return None if queued else self._tail(ps, now)

    def _known(self, ps: PeerState) -> bool:
        """Is ``ps``'s speed its own: a result, or reports that give a rate?"""
        return ps.observed > 0 or any(self._trusted(self.attempts[x]) for x in ps.attempts)

    def _trusted(self, a: Attempt) -> bool:
        """Do ``a``'s progress reports give its rate (see PROGRESS_TRUST)?"""
        return self._rate(a) is not None

    def _cuttable(self) -> bool:
        """Can any of the chunks next in line be cut?"""
        return any(self.cuts[c] for c in itertools.islice(self._pending, LOOK_AHEAD))

    def _opening(self) -> bool:
        """Fewer slots have claimed than the plan expects, and none has a result yet."""
        if not self._can_cut:
            return False  # nothing will be cut: the plan as it was
        live = [q for q in self.peers.values() if not q.benched]
        return (sum(q.slots for q in live) < self.expected_slots
                and not any(q.observed for q in live))

    def _choose(self, ps: PeerState, ready: float, now: float
                ) -> tuple[int, int | None, tuple[int, ...] | None, float]:
        """The pending chunk for ``ps`` (free at ``ready``) and where to cut it (None: take
        it whole) or which of its rungs to part off for it (item 5; None: all): of the first
        LOOK_AHEAD pending chunks, the piece closest to its share, the largest one within
        it, else the smallest one beyond it. Looking past the head matters when the head is
        a remainder that cannot be cut again (a 3 s rest where a slow peer's share is 2 s)
        while the next chunk can."""
        head = self._pending[0]
        window = list(itertools.islice(self._pending, LOOK_AHEAD))
        if (parting := self._parting(ps, ready, now, window)) is not None:
            return parting[0], None, parting[1], math.inf
        if not any(self.cuts[c] for c in window):
            return head, None, None, math.inf
        share, without = self._share(ps, ready, now)
        limit = share * (1 + SHARE_OVERSHOOT)
        best: tuple[tuple[bool, float], int, int | None] | None = None
        for c in window:
            n, w = self.frames[c], self.work[c]
            at: int | None = None
            piece = w
            if share < w * (1 - SPLIT_SLACK):
                # Every cut leaves min_piece frames on both sides, so every piece keeps that.
                cuts = [o for o in self.cuts[c] if self.min_piece <= o <= n - self.min_piece]
                fit = [o for o in cuts if o * w / n <= limit]
                at = fit[-1] if fit else (cuts[0] if cuts else None)
                piece = w if at is None else at * w / n
            over = piece > limit
            key = (over, piece if over else -piece)
            if best is None or key < best[0]:
                best = (key, c, at)
        assert best is not None
        # Only a piece beyond the share can end after the others would without it.
        return best[1], best[2], None, without if best[0][0] else math.inf

    def _parting(self, ps: PeerState, ready: float, now: float, window: list[int]
                 ) -> tuple[int, tuple[int, ...]] | None:
        """Which chunk of ``window`` to part for ``ps``'s idle slot, and the rungs it takes
        (item 5), if that ends the pending work clearly sooner than whole chunks would:
        only at the tail (fewer chunks pending than live slots), for ladder chunks that
        cannot be cut in time. Both ways are list-scheduled onto the slots as they come
        free (the largest piece first to the slot that ends it soonest), the claimer's slot
        taking its part once it is free (a prefetch parts too: the tail's last chunk is
        usually claimed ahead); a part's work counts its own decode and the check of one
        more result (PART_FIXED_FRAMES)."""
        if not self.rung_shares:
            return None
        lanes = self._lanes(ps, ready, now)
        if len(self._pending) >= len(lanes):
            return None
        partable = [c for c in window if len(self.groups[c]) > 1 and not self.cuts[c]]
        if not partable:
            return None
        pending = list(self._pending)
        whole = _makespan([self.work[c] for c in pending], lanes)
        best: tuple[float, int, tuple[int, ...]] | None = None
        for c in partable:
            others = [self.work[x] for x in pending if x != c]
            fixed = self.whole[c] / self.frames[c] * PART_FIXED_FRAMES
            for take in self._partings(c):
                rest = tuple(r for r in self.groups[c] if r not in take)
                mine = (ready + (self.part_work(c, take) + fixed) / ps.speed, ps.speed)
                end = _makespan([*others, self.part_work(c, rest) + fixed],
                                [mine, *lanes[1:]])
                if best is None or end < best[0]:
                    best = (end, c, take)
        if best is None or best[0] - now > (whole - now) * (1 - PART_GAIN):
            return None
        return best[1], best[2]

    def _lanes(self, ps: PeerState, ready: float, now: float) -> list[tuple[float, float]]:
        """One lane (free from, work/s) per live device, the claimer's slot first: the
        slots of one device share its cores, and a ladder's split encode already keeps
        them busy (bench/parting: two local slots on 2 cores took 1.10x as long parted).
        Then the devices still to come, free now at the mean speed: the ``awaited`` ones
        and, in the opening round (no result yet), the slots the plan expected beyond the
        ones that claimed (as ``_share`` counts them)."""
        stale = now - self.absent_s
        lanes = [(ready, ps.speed)]
        slots = ps.slots
        for q in self.peers.values():
            if q is ps or not self._counted(q, ps, stale):
                continue
            lanes.append((max(q.ready, now) if q.attempts else now, q.speed))
            slots += q.slots
        coming = self.awaited
        if not any(q.observed for q in self.peers.values()):
            coming = max(coming, self.expected_slots - slots)
        return lanes + [(now, self.default_speed())] * coming

    @staticmethod
    def _counted(q: PeerState, ps: PeerState, stale: float) -> bool:
        """Is ``q`` counted on to take work now (``ps`` claims; peers unseen since ``stale``
        with nothing in hand are not)?"""
        return not (q.benched or q.silent or (not q.attempts and q.seen < stale and q is not ps))

    def _share(self, ps: PeerState, ready: float, now: float) -> tuple[float, float]:
        """The work ``ps``'s claiming slot can do from ``ready`` until E, the time at which
        all live peers, each from when it is free, would finish the pending work (a fluid
        bound: each at its speed, work divisible at will); and when the others would finish
        it without this slot."""
        stale = now - self.absent_s
        # (free from, work/s, seconds of its smallest piece); the claimer's slot first.
        head = self._pending[0]
        smallest = self.work[head] / self.frames[head] * self.min_piece
        mine = (ready, ps.speed, 0.0)
        lanes = [mine]
        slots = 1
        devices = 1
        measured = ps.observed > 0
        guessed = False  # some other slot's speed is only a benchmark's (or a phantom's)
        for q in self.peers.values():
            if not self._counted(q, ps, stale):
                continue
            free = max(q.ready, now) if q.attempts else now
            n = q.slots - 1 if q is ps else q.slots
            if n > 0:
                lanes.append((free, q.speed * n, smallest / q.speed))
            slots += n
            measured = measured or q.observed > 0
            devices += q is not ps
            guessed = guessed or (q is not ps and not self._known(q))
        opening = not measured and slots < self.expected_slots
        guessed = guessed or opening
        if opening:
            # The opening round: peers invited with this one may not have claimed yet.
            speed = self.default_speed()
            lanes.append((now, speed * (self.expected_slots - slots), smallest / speed))
        while True:
            end, rate = self._fluid(lanes)
            # A slot that could not finish even the smallest piece by then takes no part:
            # work is divisible only down to min_piece.
            keep = [x for x in lanes if x is mine or x[0] + x[2] <= end]
            if len(keep) == len(lanes):
                break
            lanes = keep
        share = ps.speed * max(0.0, end - ready)
        # Without this slot the others would end later by its share over their rate at E.
        others = rate - (ps.speed if ready < end else 0.0)
        # Never held back for slots whose speed is a guess: on a busy machine a 0.15-CPU
        # peer's benchmark said 2x the 0.45-CPU one's, and it held both others idle.
        without = end + share / others if others > 0 and not guessed else math.inf
        if opening or (not self._known(ps) and devices > 1):
            # Its speed against the others' is not known yet (benchmarks taken on a busy
            # machine came out 2-15x too high, and unevenly): hedge (see item 4). Once its
            # reports give a rate, a slower one is believed (``progressed``). The slots of
            # one device are alike, so one device alone is not hedged.
            share = min(share, self._pending_work
                        / (OPENING_SHARE * max(slots, self.expected_slots)))
        return share, without

    def _fluid(self, lanes: list[tuple[float, float, float]]) -> tuple[float, float]:
        """When ``lanes`` (free from, work/s, _) finish the pending work together, each from
        when it is free; and their summed rate then."""
        work, rate, weighted = self._pending_work, 0.0, 0.0
        end = 0.0
        ordered = sorted(lanes)
        for i, (free, r, _) in enumerate(ordered):
            rate += r
            weighted += r * free
            end = (work + weighted) / rate
            if i + 1 == len(ordered) or end <= ordered[i + 1][0]:
                break
        return end, rate

    def _others_finish_first(self, ps: PeerState, now: float, finish: float) -> bool:
        """Could the other peers finish every pending chunk before ``ps`` finishes one?"""
        n = len(self._pending)
        horizon = now + (finish - now) * (1 - WAIT_MARGIN)
        span = horizon - now
        others = self._speed_sum - (0.0 if ps.benched else ps.speed * ps.slots)
        if self._pending_work > others * span:
            return False  # even flat out from now on they could not: the common case
        mean = self._pending_work / n
        stale = now - self.absent_s
        capacity = 0
        # Where chunks can be cut, a wrong guess costs a small piece, not a whole chunk:
        # then nobody waits for peers whose speed is a benchmark's guess (see ``_share``).
        known_only = self._cuttable()
        for q in self.peers.values():
            if (q is ps or q.benched or q.silent
                    or (not q.attempts and q.seen < stale)
                    or (known_only and not self._known(q))):
                continue
            free = max(q.ready, now) if q.attempts else now
            if free < horizon:
                # Whole chunks only: a fast peer that could do 0.9 of one does not help.
                capacity += int(q.speed * (horizon - free) / mean) * q.slots
                if capacity >= n:
                    return True
        return False

    def _top(self, heap: list[tuple[float, int, int]]) -> tuple[float, int] | None:
        while heap:
            key, version, chunk = heap[0]
            if self._chunk_version.get(chunk) == version and chunk in self._chunk_running:
                return key, chunk
            heapq.heappop(heap)
        return None

    def _tail(self, ps: PeerState, now: float) -> Pick | None:
        # First a chunk presumed lost, then the one expected to finish last.
        late = self._top(self._overdue)
        if late is not None and now - late[0] > OVERDUE_S:
            pick = self._copy(ps, late[1], None, now)
            if pick is not None:
                return pick
        top = self._top(self._heap)
        return None if top is None else self._copy(ps, top[1], -top[0], now)

    def _copy(self, ps: PeerState, chunk: int, theirs: float | None, now: float
              ) -> Pick | None:
        """Steal or duplicate ``chunk`` if ``ps`` would finish it clearly before ``theirs``
        (None: never, as far as we know)."""
        running = [self.attempts[x] for x in self._chunk_running[chunk]]
        if any(a.peer == ps.name for a in running):
            return None
        if theirs is not None:
            mine = now + self.work[chunk] / ps.speed  # a copy is streamed
            if mine > now + (max(theirs, now) - now) * (1 - DUP_MARGIN):
                return None
        a = running[0]
        if len(running) == 1 and a.queued and a.first_progress is None:
            return Pick(chunk, PickKind.STEAL, victim=a.id)
        if len(running) >= MAX_ATTEMPTS:
            # Slow peers idle first at the tail and fill the copies; a faster latecomer
            # replaces the copy expected to finish last.
            worst = max(running, key=lambda x: x.est_finish)
            return Pick(chunk, PickKind.DUPLICATE, victim=worst.id)
        return Pick(chunk, PickKind.DUPLICATE)

    # -- estimates -----------------------------------------------------------------------
    def _peer_changed(self, ps: PeerState, now: float) -> None:
        end = now if not ps.attempts else float("-inf")
        for aid in ps.attempts:
            a = self.attempts[aid]
            est = self._estimate(a, ps, end)
            if est != a.est_finish:
                a.est_finish = est
                self._publish(a.chunk, now)
            end = max(end, est)
        ps.ready = end

    def _estimate(self, a: Attempt, ps: PeerState, prev_end: float) -> float:
        """Expected finish: the encode from when it starts at the achieved speed, and for a
        prefetch never before its source has arrived (downloaded from the claim on). Once
        reports are trusted they say it all: they count both limits."""
        frames = self.frames[a.chunk]
        rate = self._rate(a)
        if rate is not None:
            # Reports count the frames the encoder holds (its lookahead) as done already.
            left = frames - max(0, a.frames_done - self.pipeline_frames)
            return a.last_progress + left / rate
        if a.first_progress is not None:
            start = a.first_progress
        elif a.queued:
            start = max(a.started, prev_end)
        else:
            start = a.started
        end = start + a.work / ps.speed
        return max(end, a.started + self.transfer_s(ps, a.chunk)) if a.queued else end

    def _attempt_changed(self, a: Attempt, now: float) -> None:
        self._publish(a.chunk, now)

    def _publish(self, chunk: int, now: float) -> None:
        """Re-key a chunk in the tail heaps by its soonest credible expected finish."""
        running = self._chunk_running.get(chunk)
        if not running:
            return
        version = self._chunk_version.get(chunk, 0) + 1
        self._chunk_version[chunk] = version
        ests = [self.attempts[x].est_finish for x in running]
        # An attempt already overdue says nothing about when the chunk will be done.
        best = min([e for e in ests if e >= now - OVERDUE_S] or ests)
        heapq.heappush(self._heap, (-best, version, chunk))
        heapq.heappush(self._overdue, (best, version, chunk))
        if len(self._heap) > 4 * len(self._chunk_running) + 256:
            self._heap, self._overdue = self._live(self._heap), self._live(self._overdue)

    def _live(self, heap: list[tuple[float, int, int]]) -> list[tuple[float, int, int]]:
        live = [e for e in heap
                if self._chunk_version.get(e[2]) == e[1] and e[2] in self._chunk_running]
        heapq.heapify(live)
        return live


def _makespan(works: Sequence[float], lanes: Sequence[tuple[float, float]]) -> float:
    """When ``works`` end on ``lanes`` (free from, work/s), list-scheduled: the largest
    first, each to the lane that ends it soonest; the latest lane's end, busy ones included."""
    ends = [(free, speed) for free, speed in lanes]
    for w in sorted(works, reverse=True):
        i = min(range(len(ends)), key=lambda k: ends[k][0] + w / ends[k][1])
        ends[i] = (ends[i][0] + w / ends[i][1], ends[i][1])
    return max(free for free, _ in ends)


def make_scheduler(policy: str, work: Sequence[float], frames: Sequence[int],
                   attempts: Mapping[str, Attempt], absent_s: float = 30.0,
                   source_bytes: Sequence[float] | None = None,
                   cuts: Sequence[Sequence[int]] | None = None, min_piece: int = 1,
                   expected_slots: int = 1, rung_shares: Sequence[float] | None = None
                   ) -> Scheduler:
    """``cuts``, ``min_piece``, ``expected_slots`` and ``rung_shares`` are the swarm
    policy's (the baselines hand out the chunks as planned)."""
    if policy == "swarm":
        return SwarmScheduler(work, frames, attempts, absent_s, source_bytes, cuts,
                              min_piece, expected_slots, rung_shares)
    if policy == "fifo":
        return FifoScheduler(work, frames, attempts, source_bytes)
    if policy == "equal":
        return EqualScheduler(work, frames, attempts, source_bytes)
    raise LocalProtocolError(f"unknown scheduling policy {policy!r}; one of {POLICIES}")
