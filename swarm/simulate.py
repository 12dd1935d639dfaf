"""Many peers in virtual time over the real ``Job`` and scheduler. Pure: no clock, no I/O.

A discrete-event loop plays peers that claim, receive a chunk's source, encode it (at their
true speed, which their benchmark may misstate), report progress and results; they may join
late, leave (``peer_left``) or die silently (the silence rule or their lease catches it).
Retry answers make them poll again after ``retry_after_s``. Under the "swarm" policy a peer
also prefetches its next chunk as soon as it starts encoding.

The network, explicitly (the same model ``swarm.scheduler`` estimates with):

- every source transfer is a flow; the coordinator's ``uplink`` (bytes/s, None: unlimited)
  is shared by all concurrent remote flows, and each peer's ``bandwidth`` by its own flows,
  max-min fair (water-filling; with per-peer links under one uplink, filling each peer's
  link and then the uplink gives the exact max-min rates). A ``local`` peer (the
  coordinator's own slots) reads its disk at ``bandwidth`` and takes no uplink;
- a chunk claimed by an idle peer is *streamed*: its ffmpeg reads as it encodes, so the
  flow is capped at the encoder's pace (bytes / encode time) and the encode ends when both
  the encoder and the flow are through;
- a *prefetched* chunk downloads at whatever rate it gets from its claim on; when the
  encoder frees it starts, streaming what has not arrived yet;
- a Wi-Fi link with ``jitter`` j changes every ``JITTER_S`` to bandwidth x U(1-j, 1+j);
- the shell reports each finished transfer (``Job.observe_transfer``; a streamed one as a
  floor), as it will once wired.

``lower_bound`` counts bandwidth; it is max(F, C):

- F, the fluid bound: the time by which the peers present could do all the work at their
  sustained rates, each min(speed, link x work per byte), with the remote peers' sum capped
  at uplink x work per byte (what the coordinator can feed them); piecewise over joins,
  departures and link changes;
- C, the longest chunk: no earlier than the largest chunk on the peer that would finish it
  first from its join, max(encode, transfer at min(link, uplink)) (a transfer can start at
  the claim at best, and the encode cannot end before the source has arrived).

For the swarms without an uplink this is the bound of earlier versions, max(total work /
total sustained speed, largest chunk / fastest sustained speed).

Only wall-clock *cost* measurement needs a real clock: pass ``timer`` (``bench/simulate``
passes ``time.perf_counter``); the simulation itself never reads one.
"""

from __future__ import annotations

import heapq
import inspect
import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .job import Finished, Grant, Job
from .share import SlotShare, Turn

__all__ = ["PeerSpec", "Result", "Scenario", "SharedJob", "lan_scenarios", "lower_bound",
           "make_scenario", "run", "run_shared", "standard_scenarios"]

FHD = 1920 * 1080
# A 1080p H.264 source at ~8 Mbit/s and 24 fps: about 42 kB a frame.
SOURCE_BYTES_PER_FRAME = 42_000
# Coordinator lease tick, as in the shell.
TICK_S = 1.0
# Stop a run that goes on this long past its lower bound: a policy that stalls is a result.
STALL_FACTOR = 20.0
# A Wi-Fi link's rate holds this long before it changes (fading, other traffic).
JITTER_S = 5.0
# The silence rule the shell will use (swarm.job.SILENT_S; the old Job has none).
SILENT_S = 3.0
MBIT = 1e6 / 8  # bytes/s


@dataclass(frozen=True, slots=True)
class PeerSpec:
    name: str
    speed: float  # true work/s
    bench: float  # what its benchmark said (work/s)
    bandwidth: float  # source bytes/s its link carries
    join: float = 0.0
    leave: float | None = None  # says goodbye: peer_left
    die: float | None = None  # goes silent: the silence rule or its lease catches it
    jitter: float = 0.0  # share by which the link varies (Wi-Fi)
    local: bool = False  # the coordinator's own slots: disk, not the uplink
    start_s: float = 0.0  # fixed cost of every chunk it encodes (ffmpeg start, seek, lookahead)

    @property
    def end(self) -> float:
        return min(x for x in (self.leave, self.die, math.inf) if x is not None)

    def link(self, t: float) -> float:
        """Link rate at ``t``: constant, or piecewise over JITTER_S periods (seeded by name
        and period, so a run and its bound see the same link)."""
        if not self.jitter:
            return self.bandwidth
        k = int(t // JITTER_S)
        return self.bandwidth * random.Random(f"{self.name}/{k}").uniform(
            1 - self.jitter, 1 + self.jitter)


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    peers: tuple[PeerSpec, ...]
    frames: tuple[int, ...]
    pixels: int = FHD
    bytes_per_frame: float = SOURCE_BYTES_PER_FRAME
    lease_s: float = 30.0
    retry_after_s: float = 0.5
    progress_s: float = 1.0  # how often an encoding peer reports progress (as the shell)
    uplink: float | None = None  # the coordinator's uplink, bytes/s (None: unlimited)
    silent_s: float | None = SILENT_S
    # Where each chunk may be cut to a claimer's share (Job's ``cuts``; None: never).
    cuts: tuple[tuple[int, ...], ...] | None = None
    min_piece: int = 1
    expected_slots: int = 1

    @property
    def work(self) -> list[float]:
        return [float(f * self.pixels) for f in self.frames]

    @property
    def source_bytes(self) -> list[float]:
        return [f * self.bytes_per_frame for f in self.frames]


@dataclass(frozen=True, slots=True)
class Result:
    scenario: str
    policy: str
    makespan: float
    lower_bound: float
    claims: int
    claim_s: float  # wall time spent in Job.claim (0 without a timer)
    duplicates: int
    steals: int
    finished: bool
    bytes_sent: float = 0.0  # source bytes that crossed the uplink or a disk

    @property
    def ratio(self) -> float:
        return self.makespan / self.lower_bound


def lower_bound(sc: Scenario) -> float:
    """max(F, C) of the module docstring."""
    # Work per source byte; a scenario without source bytes is bound by the CPUs alone.
    wpb = sc.pixels / sc.bytes_per_frame if sc.bytes_per_frame > 0 else math.inf
    uplink = sc.uplink if sc.uplink is not None else math.inf

    def rate(p: PeerSpec, t: float) -> float:
        # Prefetch can hide transfers, never beat them: the sustained rate is the slower.
        return p.speed if wpb == math.inf else min(p.speed, p.link(t) * wpb)

    total = sum(sc.work)
    jittery = any(p.jitter for p in sc.peers)
    cuts = sorted({0.0, *(p.join for p in sc.peers),
                   *(p.end for p in sc.peers if p.end < math.inf)})
    done, t, i = 0.0, 0.0, 0
    fluid = math.inf
    while True:
        nxt_cut = cuts[i + 1] if i + 1 < len(cuts) else math.inf
        nxt = min(nxt_cut, (math.floor(t / JITTER_S) + 1) * JITTER_S) if jittery else nxt_cut
        present = [p for p in sc.peers if p.join <= t < p.end]
        local = sum(rate(p, t) for p in present if p.local)
        remote = min(sum(rate(p, t) for p in present if not p.local), uplink * wpb)
        cap = local + remote
        if cap > 0 and done + cap * (nxt - t) >= total:
            fluid = t + (total - done) / cap
            break
        if nxt == math.inf:
            break  # nobody left: the work cannot be done (a bound of infinity)
        done += cap * (nxt - t)
        t = nxt
        if t >= nxt_cut:
            i += 1
    # The largest piece no cut can make smaller (a whole chunk, where it has no cuts).
    atoms = [max(b - a for a, b in itertools.pairwise([0, *cuts, n]))
             for n, cuts in zip(sc.frames, sc.cuts or [()] * len(sc.frames), strict=True)]
    big = max(range(len(sc.frames)), key=lambda c: atoms[c])
    w = sc.work[big] * atoms[big] / sc.frames[big]
    b = sc.source_bytes[big] * atoms[big] / sc.frames[big]

    def first(p: PeerSpec) -> float:
        peak = p.bandwidth * (1 + p.jitter)
        link = peak if p.local else min(peak, uplink)
        return p.join + max(w / p.speed, b / link)

    return max(fluid, min(first(p) for p in sc.peers))


def _share(capacity: float, caps: Sequence[float]) -> list[float]:
    """Max-min fair split of ``capacity`` among flows that each take at most their cap."""
    out = [0.0] * len(caps)
    left, n = capacity, len(caps)
    for k, j in enumerate(sorted(range(n), key=lambda x: caps[x])):
        give = min(caps[j], left / (n - k))
        out[j] = give
        left -= give
    return out


@dataclass(slots=True)
class _Flow:
    attempt: str
    peer: int
    nbytes: float
    remaining: float
    started: float
    t: float  # when ``remaining`` was last settled
    rate: float = 0.0
    cap: float = math.inf  # a streamed flow goes at its encoder's pace
    streamed: bool = False
    version: int = 0


@dataclass(slots=True)
class _Peer:
    spec: PeerSpec
    alive: bool = False
    queue: list[str] = field(default_factory=list)  # held attempts, in order
    flows: dict[str, _Flow] = field(default_factory=dict)
    encoding: str | None = None
    enc_start: float = 0.0
    enc_end: float = 0.0
    poll_token: int = 0
    finished: bool = False


def _make_job(sc: Scenario, policy: str) -> Job:
    """The Job of the package this module was loaded from; an older one (bench/simulate
    --against) may not know links or silence, so only what it accepts is passed."""
    # Any: which keywords go is decided at run time, by the signature of the Job loaded.
    kwargs: dict[str, Any] = {"work_per_chunk": sc.work, "lease_s": sc.lease_s,
                              "policy": policy, "retry_after_s": sc.retry_after_s,
                              "source_bytes": sc.source_bytes, "silent_s": sc.silent_s}
    if sc.cuts is not None:
        kwargs |= {"cuts": sc.cuts, "min_piece": sc.min_piece,
                   "expected_slots": sc.expected_slots}
    known = inspect.signature(Job).parameters
    return Job(sc.frames, **{k: v for k, v in kwargs.items() if k in known})


def run(sc: Scenario, policy: str, *, baseline_prefetch: bool = False,
        timer: Callable[[], float] | None = None) -> Result:
    """Play ``sc`` under ``policy``; returns the makespan and what the scheduler did."""
    job = _make_job(sc, policy)
    observe_transfer = getattr(job, "observe_transfer", None)
    prefetching = policy == "swarm" or baseline_prefetch
    peers = [_Peer(p) for p in sc.peers]
    events: list[tuple[float, int, str, int, str | int]] = []
    seq = 0
    claims, claim_s, duplicates, steals = 0, 0.0, 0, 0
    sent = 0.0
    bound = lower_bound(sc)
    uplink = sc.uplink
    source_bytes = sc.source_bytes  # a property: computed once
    flows: dict[str, _Flow] = {}  # every live transfer, by attempt

    def at(t: float, kind: str, who: int, arg: str | int = "") -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, who, arg))

    def poll(i: int, t: float, prefetch: bool) -> None:
        p = peers[i]
        p.poll_token += 1
        at(t, "poll_prefetch" if prefetch else "poll", i, p.poll_token)

    # -- the network -------------------------------------------------------------------
    def settle(f: _Flow, t: float) -> None:
        f.remaining = max(0.0, f.remaining - f.rate * (t - f.t))
        f.t = t

    def reschedule(f: _Flow, rate: float, t: float) -> None:
        if rate == f.rate and f.version:
            return
        f.rate = rate
        f.version += 1
        if rate > 0:
            at(t + f.remaining / rate, "flow", f.peer, f"{f.attempt}/{f.version}")

    def peer_caps(i: int, t: float) -> dict[str, float]:
        p = peers[i]
        fs = list(p.flows.values())
        shares = _share(p.spec.link(t), [f.cap for f in fs])
        return {f.attempt: r for f, r in zip(fs, shares, strict=True)}

    def rebalance(i: int, t: float) -> None:
        """Recompute rates after a change at peer ``i`` (all remote flows if the uplink is
        shared, since every fair share moves)."""
        if uplink is None or peers[i].spec.local:
            for f in peers[i].flows.values():
                settle(f, t)
            for aid, r in peer_caps(i, t).items():
                reschedule(peers[i].flows[aid], r, t)
            return
        remote = [f for f in flows.values() if not peers[f.peer].spec.local]
        for f in remote:
            settle(f, t)
        caps: dict[str, float] = {}
        for j in {f.peer for f in remote}:
            caps.update(peer_caps(j, t))
        for f, r in zip(remote, _share(uplink, [caps[f.attempt] for f in remote]),
                        strict=True):
            reschedule(f, r, t)

    def open_flow(i: int, aid: str, nbytes: float, t: float) -> None:
        if nbytes <= 0:
            return  # nothing to send: the attempt never waits on the link
        f = _Flow(aid, i, nbytes, nbytes, t, t)
        flows[aid] = f
        peers[i].flows[aid] = f
        rebalance(i, t)

    def close_flow(aid: str, t: float) -> None:
        """The transfer ends early: the attempt is over (the coordinator closes it)."""
        f = flows.pop(aid, None)
        if f is not None:
            nonlocal sent
            settle(f, t)
            sent += f.nbytes - f.remaining
            del peers[f.peer].flows[aid]
            rebalance(f.peer, t)

    # -- the peer ----------------------------------------------------------------------
    def start(i: int, aid: str, t: float) -> None:
        p = peers[i]
        a = job.attempts[aid]
        p.encoding, p.enc_start = aid, t
        p.enc_end = t + p.spec.start_s + a.work / p.spec.speed
        f = flows.get(aid)
        if f is not None:  # not all here yet: the encoder streams the rest
            f.streamed = True
            f.cap = f.nbytes / (p.enc_end - t)
            rebalance(i, t)
        at(p.enc_end, "encoded", i, aid)
        at(t + sc.progress_s, "progress", i, aid)

    def finish(i: int, aid: str, t: float) -> None:
        p = peers[i]
        job.succeeded(aid, t)
        p.encoding = None
        try_start(i, t)

    def try_start(i: int, t: float) -> None:
        p = peers[i]
        while p.encoding is None and p.queue:
            aid = p.queue.pop(0)
            if not job.progress(aid, 0, t):
                close_flow(aid, t)
                continue  # stolen or already done elsewhere: drop it
            start(i, aid, t)
            if prefetching and not p.queue:
                poll(i, t, prefetch=True)
        if p.encoding is None and not p.queue:
            poll(i, t, prefetch=False)

    def stop(i: int, t: float) -> None:
        p = peers[i]
        p.alive = False
        for aid in list(p.flows):
            close_flow(aid, t)

    for i, spec in enumerate(sc.peers):
        at(spec.join, "join", i)
        if spec.leave is not None:
            at(spec.leave, "leave", i)
        if spec.die is not None:
            at(spec.die, "die", i)
        if spec.jitter:
            at((math.floor(spec.join / JITTER_S) + 1) * JITTER_S, "link", i)
    at(TICK_S, "tick", -1)

    now = 0.0
    while events and not job.done:
        now, _, kind, i, arg = heapq.heappop(events)
        if now > STALL_FACTOR * bound:
            break
        if kind == "tick":
            job.tick(now)
            at(now + TICK_S, "tick", -1)
            continue
        p = peers[i]
        if kind == "join":
            p.alive = True
            job.add_peer(p.spec.name, p.spec.bench, now)
            poll(i, now, prefetch=False)
            continue
        if not p.alive or p.finished:
            continue
        if kind in ("leave", "die"):
            stop(i, now)
            if kind == "leave":
                job.peer_left(p.spec.name, now)
        elif kind == "link":
            rebalance(i, now)
            at(now + JITTER_S, "link", i)
        elif kind in ("poll", "poll_prefetch"):
            if arg != p.poll_token:
                continue  # superseded by a newer poll
            prefetch = kind == "poll_prefetch"
            if prefetch and (p.encoding is None or p.queue):
                continue
            t0 = timer() if timer else 0.0
            action = job.claim(p.spec.name, now, prefetch=prefetch)
            if timer:
                claim_s += timer() - t0
            claims += 1
            if isinstance(action, Finished):
                p.finished = True
            elif isinstance(action, Grant):
                duplicates += action.duplicate
                if action.replaces is not None:
                    steals += 1
                    close_flow(action.replaces, now)  # the victim's download is cut
                p.queue.append(action.attempt)
                # A cut chunk's bytes are the scheduler's (an older Job never cuts).
                nbytes = (source_bytes[action.chunk] if sc.cuts is None
                          else job.scheduler.bytes[action.chunk])
                open_flow(i, action.attempt, nbytes, now)
                try_start(i, now)
            else:
                poll(i, now + action.retry_after_s, prefetch)
        elif kind == "flow":
            assert isinstance(arg, str)
            aid, version = arg.rsplit("/", 1)
            f = flows.get(aid)
            if f is None or f.version != int(version):
                continue
            settle(f, now)
            f.remaining = 0.0
            close_flow(aid, now)
            if observe_transfer is not None:
                observe_transfer(p.spec.name, f.nbytes, now - f.started, now,
                                 saturated=not f.streamed)
            if p.encoding == aid and now >= p.enc_end:
                finish(i, aid, now)  # the encoder was waiting for these bytes
        elif kind == "encoded":
            if p.encoding == arg and arg not in flows:
                assert isinstance(arg, str)
                finish(i, arg, now)
        elif kind == "progress":
            if p.encoding != arg or not isinstance(arg, str):
                continue
            frames = job.chunks[job.attempts[arg].chunk].frames
            share = (now - p.enc_start) / (p.enc_end - p.enc_start)
            f = flows.get(arg)
            if f is not None:
                settle(f, now)
                share = min(share, 1 - f.remaining / f.nbytes)
            if job.progress(arg, int(frames * min(1.0, share)), now):
                at(now + sc.progress_s, "progress", i, arg)
            else:
                close_flow(arg, now)
                p.encoding = None  # lost the race or was replaced: stop encoding
                try_start(i, now)
    return Result(sc.name, policy, now, bound, claims, claim_s, duplicates, steals, job.done,
                  sent)


def make_scenario(name: str, n_peers: int, *, chunks_per_peer: float = 8.0,
                  spread: float = 30.0, wifi: float = 0.0, late: float = 0.0,
                  leave: float = 0.0, die: float = 0.0, wrong_bench: float = 0.0,
                  chunk_frames: int = 240, seed: int = 1) -> Scenario:
    """A swarm of ``n_peers``; the float knobs are shares of peers with that trait.

    Speeds are log-uniform over ``spread`` (4 to 120 fps of 1080p at 30x); Wi-Fi peers
    download at 1-4 MB/s, wired ones at 50-110 MB/s. Late peers join in the first half of
    the ideal run, leavers and dying peers go in its middle. A wrong benchmark claims 3x
    the real speed (a thermally throttled phone, a busy laptop).
    """
    rng = random.Random(seed)
    n_chunks = max(1, round(n_peers * chunks_per_peer))
    frames = tuple(max(24, round(chunk_frames * rng.uniform(0.8, 1.2)))
                   for _ in range(n_chunks))
    fps = [120.0 / spread * spread ** rng.random() for _ in range(n_peers)]
    speeds = [f * FHD for f in fps]
    ideal = sum(frames) * FHD / sum(speeds)
    order = list(range(n_peers))
    rng.shuffle(order)

    def pick(share: float) -> set[int]:
        k = round(share * n_peers)
        chosen = set(order[:k])
        del order[:k]
        return chosen

    wifi_set, late_set, leave_set, die_set, wrong_set = (
        pick(wifi), pick(late), pick(leave), pick(die), pick(wrong_bench))
    peers = []
    for i in range(n_peers):
        bw = rng.uniform(1e6, 4e6) if i in wifi_set else rng.uniform(50e6, 110e6)
        peers.append(PeerSpec(
            name=f"p{i:04d}", speed=speeds[i],
            bench=speeds[i] * (3.0 if i in wrong_set else rng.uniform(0.9, 1.1)),
            bandwidth=bw,
            join=rng.uniform(0.05, 0.5) * ideal if i in late_set else 0.0,
            leave=rng.uniform(0.3, 0.7) * ideal if i in leave_set else None,
            die=rng.uniform(0.3, 0.7) * ideal if i in die_set else None))
    return Scenario(name, tuple(peers), frames)


def standard_scenarios(sizes: Sequence[int] = (2, 10, 100, 1000), seed: int = 1
                       ) -> list[Scenario]:
    """The table ``bench/simulate`` prints: each size plain, then with real-world trouble."""
    out: list[Scenario] = []
    for n in sizes:
        cpp = 20.0 if n <= 10 else 16.0
        out.append(make_scenario(f"{n} peers, 30x speeds", n, chunks_per_peer=cpp, seed=seed))
        if n >= 10:
            out.append(make_scenario(f"{n} peers, 30% on Wi-Fi", n, chunks_per_peer=cpp,
                                     wifi=0.3, seed=seed))
            out.append(make_scenario(f"{n} peers, 20% bench 3x optimistic", n,
                                     chunks_per_peer=cpp, wrong_bench=0.2, seed=seed))
            out.append(make_scenario(f"{n} peers, churn (join/leave/die 10% each)", n,
                                     chunks_per_peer=cpp, late=0.1, leave=0.1, die=0.1,
                                     seed=seed))
    return out


def make_lan_scenario(name: str, n_peers: int, *, fps: tuple[float, float],
                      links: Sequence[float], uplink: float, local_fps: float,
                      jitter: float = 0.0, chunks_per_peer: float = 16.0,
                      chunk_frames: int = 240, seed: int = 1) -> Scenario:
    """The coordinator encoding too (``local_fps`` of 1080p, from its disk) and
    ``n_peers`` remote peers, speeds log-uniform over ``fps``, links dealt round-robin
    from ``links`` (bytes/s), all behind one ``uplink`` (bytes/s)."""
    rng = random.Random(seed)
    n_chunks = max(1, round((n_peers + 1) * chunks_per_peer))
    frames = tuple(max(24, round(chunk_frames * rng.uniform(0.8, 1.2)))
                   for _ in range(n_chunks))
    lo, hi = fps
    peers = [PeerSpec("local", local_fps * FHD, local_fps * FHD, 400e6, local=True)]
    for i in range(n_peers):
        speed = lo * (hi / lo) ** rng.random() * FHD
        peers.append(PeerSpec(f"p{i:04d}", speed, speed * rng.uniform(0.9, 1.1),
                              links[i % len(links)], jitter=jitter))
    return Scenario(name, tuple(peers), frames, uplink=uplink)


def lan_scenarios(seed: int = 1) -> list[Scenario]:
    """Where the network, not the encoders, is the limit (issue 14): phones on Wi-Fi behind
    a Fast Ethernet coordinator, and a hundred wired peers behind a gigabit one."""
    return [
        make_lan_scenario("24 Wi-Fi phones (20 Mbit/s ±50%), 100 Mbit/s up", 24,
                          fps=(6.0, 30.0), links=[20 * MBIT], jitter=0.5,
                          uplink=100 * MBIT, local_fps=40.0, seed=seed),
        make_lan_scenario("100 peers (100 Mbit/1 Gbit), 1 Gbit/s up", 100,
                          fps=(4.0, 120.0), links=[100 * MBIT, 1000 * MBIT],
                          uplink=1000 * MBIT, local_fps=60.0, seed=seed),
    ]


# bench/hetero's swarm: three peers held to 0.15 / 0.30 / 0.45 CPU, a 640x360 source at
# 30 fps with 1 s GOPs. Speeds in frames/s of that source under x264 "medium" on this
# machine's cores; the benchmark scores came out 0.37 / 0.73 / 1.00 of the fastest. Every
# chunk costs the peer an ffmpeg start, a seek and x264's lookahead (START_CPU_S of CPU).
HETERO_PIXELS = 640 * 360
HETERO_FPS = 30
HETERO_CPUS = (("slow", 0.15, 0.37), ("mid", 0.30, 0.73), ("fast", 0.45, 1.00))
HETERO_FPS_PER_CPU = 60.0
START_CPU_S = 0.15


def hetero_scenario(name: str, seconds: float, *, cut: bool, fastest_only: bool = False,
                    order: Sequence[str] = ("slow", "mid", "fast"),
                    min_piece_s: float = 2.0,
                    optimism: Sequence[float] = (1.0, 1.0, 1.0)) -> Scenario:
    """bench/hetero in virtual time: the default plan for three slots (chunks of
    ``swarm.job``-independent length: as ``chunker.plan.default_chunk_seconds`` gives), cut
    points at every keyframe when ``cut``; peers join 50 ms apart in ``order``."""
    # The default plan for 3 slots (chunker.plan: 4 per slot of >= 6 s, else whole 6 s
    # chunks per slot, at least one per slot); kept here so the core needs no chunker.
    slots = 3
    per = seconds / (4 * slots)
    if per >= 6.0:
        n = round(seconds / min(30.0, per))
    else:
        n = int(seconds // 6.0)
        n = max(slots, n - n % slots)
    total = round(seconds * HETERO_FPS)
    bounds = [round(total * k / n / HETERO_FPS) * HETERO_FPS for k in range(n)] + [total]
    frames = tuple(b - a for a, b in itertools.pairwise(bounds))
    cuts = tuple(tuple(range(HETERO_FPS, f, HETERO_FPS)) for f in frames) if cut else None
    peers = []
    for k, who in enumerate(order):
        _, cpus, score = next(p for p in HETERO_CPUS if p[0] == who)
        if fastest_only and who != "fast":
            continue
        speed = cpus * HETERO_FPS_PER_CPU * HETERO_PIXELS
        bench = (score * HETERO_CPUS[-1][1] * HETERO_FPS_PER_CPU * HETERO_PIXELS
                 * optimism[[p[0] for p in HETERO_CPUS].index(who)])
        peers.append(PeerSpec(who, speed, bench, 100e6, join=0.05 * k,
                              start_s=START_CPU_S / cpus))
    return Scenario(name, tuple(peers), frames, pixels=HETERO_PIXELS, bytes_per_frame=5_000,
                    cuts=cuts, min_piece=round(min_piece_s * HETERO_FPS),
                    expected_slots=slots)


def hetero_efficiency(seconds: float, *, cut: bool, order: Sequence[str] = ("slow", "mid",
                                                                             "fast"),
                      optimism: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """bench/hetero's figure in virtual time: T(fastest alone) / T(all three) / 2.0.
    ``optimism``: how many times its true speed each peer's benchmark claims (slow, mid,
    fast; a loaded machine's benchmarks came out 15x, 6x and 3x)."""
    alone = run(hetero_scenario("alone", seconds, cut=cut, fastest_only=True,
                                optimism=optimism), "swarm")
    together = run(hetero_scenario("all", seconds, cut=cut, order=order, optimism=optimism),
                   "swarm")
    ideal = sum(c for _, c, _ in HETERO_CPUS) / max(c for _, c, _ in HETERO_CPUS)
    return alone.makespan / together.makespan / ideal


# -- several coordinators sharing peers ---------------------------------------------------
@dataclass(frozen=True, slots=True)
class SharedJob:
    """One coordinator's job in ``run_shared``: ``chunks`` of equal work, its invites
    reaching every peer at ``start``."""

    name: str
    chunks: int
    priority: str = "normal"
    start: float = 0.0


def run_shared(jobs: Sequence[SharedJob], speeds: Sequence[float], *, slots: int = 1,
               claim_s: float = 0.05) -> dict[str, float]:
    """Coordinators' jobs (each the real ``Job``, policy "swarm") on peers of ``speeds``
    (chunks/s per slot) whose slots take turns by the real ``SlotShare``; returns when each
    job's last chunk came in. The shell's loop (``peer.worker``): a slot granted a turn
    claims from its job, holds the turn for the claim's round trip (``claim_s``) and the
    encode, and asks again; Wait and Done go back to the share. No prefetch: a slot claims
    ahead only while no other job asks (``SlotShare.others_waiting``), which with two jobs
    holding the peer is almost never."""
    shares = [SlotShare(slots) for _ in speeds]
    coordinators = {j.name: Job([1] * j.chunks, expected_slots=len(speeds) * slots)
                    for j in jobs}
    finished: dict[str, float] = {}
    # (time, order, peer, what: a job joining, a turn's chunk ending, or None: a wake-up)
    events: list[tuple[float, int, int, Turn | SharedJob | None, str]] = []
    seq = itertools.count()
    wakes: list[set[float]] = [set() for _ in speeds]

    def at(t: float, peer: int, what: Turn | SharedJob | None = None, attempt: str = ""
           ) -> None:
        heapq.heappush(events, (t, next(seq), peer, what, attempt))

    def dispatch(peer: int, now: float) -> None:
        share = shares[peer]
        while (turn := share.grant(now)) is not None:
            job = coordinators[turn.job_id]
            reply = job.claim(f"p{peer}", now)
            if isinstance(reply, Grant):
                at(now + claim_s + 1.0 / speeds[peer], peer, turn, reply.attempt)
            elif isinstance(reply, Finished):
                share.done(turn, now)
            else:
                share.wait(turn, now, reply.retry_after_s)
        wake = share.next_change(now)
        if wake is not None and wake not in wakes[peer]:
            wakes[peer].add(wake)
            at(wake, peer)

    for j in jobs:
        for peer in range(len(speeds)):
            at(j.start, peer, j)
    limit = 100.0 * (max(j.start for j in jobs) + sum(j.chunks for j in jobs) / min(speeds))
    while events and len(finished) < len(jobs):
        now, _, peer, what, attempt = heapq.heappop(events)
        if now > limit:
            raise RuntimeError(f"run_shared: stalled at {now:.1f} s")  # a bug, not a result
        if isinstance(what, SharedJob):
            shares[peer].join(what.name, what.priority)
            coordinators[what.name].add_peer(f"p{peer}", speeds[peer], now, slots=slots)
            for slot in range(slots):
                shares[peer].want(what.name, (what.name, slot), now=now)
        elif isinstance(what, Turn):
            job = coordinators[what.job_id]
            job.succeeded(attempt, now)
            if job.done and what.job_id not in finished:
                finished[what.job_id] = now
            shares[peer].end(what, now)
        dispatch(peer, now)
    return finished
