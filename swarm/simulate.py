"""Many peers in virtual time over the real ``Job`` and scheduler. Pure: no clock, no I/O.

A discrete-event loop plays peers that claim, download a chunk's source (at their own
bandwidth), encode it (at their true speed, which their benchmark may misstate), report
progress and results; they may join late, leave (``peer_left``) or die silently (their
lease expires). Wait answers make them poll again after ``retry_after_s``. Under the
"swarm" policy a peer also prefetches its next chunk as soon as it starts encoding.

``lower_bound`` is the fluid bound: the time by which the peers present could do all the
work at their sustained rates (speed, or bandwidth if that is lower), and no earlier than
the largest chunk on the fastest peer. For a static swarm this is max(total work / total
speed, largest chunk / fastest speed).

Only wall-clock *cost* measurement needs a real clock: pass ``timer`` (``bench/simulate``
passes ``time.perf_counter``); the simulation itself never reads one.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .job import Assign, Finished, Job

__all__ = ["PeerSpec", "Result", "Scenario", "lower_bound", "make_scenario", "run",
           "standard_scenarios"]

FHD = 1920 * 1080
# A 1080p H.264 source at ~8 Mbit/s and 24 fps: about 42 kB a frame.
SOURCE_BYTES_PER_FRAME = 42_000
# Coordinator lease tick, as in the shell.
TICK_S = 1.0
# Stop a run that goes on this long past its lower bound: a policy that stalls is a result.
STALL_FACTOR = 20.0


@dataclass(frozen=True, slots=True)
class PeerSpec:
    name: str
    speed: float  # true work/s
    bench: float  # what its benchmark said (work/s)
    bandwidth: float  # source bytes/s it can download
    join: float = 0.0
    leave: float | None = None  # says goodbye: peer_left
    die: float | None = None  # goes silent: its lease expires

    @property
    def end(self) -> float:
        return min(x for x in (self.leave, self.die, math.inf) if x is not None)


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    peers: tuple[PeerSpec, ...]
    frames: tuple[int, ...]
    pixels: int = FHD
    bytes_per_frame: float = SOURCE_BYTES_PER_FRAME
    lease_s: float = 30.0
    retry_after_s: float = 0.5
    progress_s: float = 2.0  # how often an encoding peer reports progress

    @property
    def work(self) -> list[float]:
        return [float(f * self.pixels) for f in self.frames]


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

    @property
    def ratio(self) -> float:
        return self.makespan / self.lower_bound


def lower_bound(sc: Scenario) -> float:
    def rate(p: PeerSpec) -> float:
        # Prefetch can hide downloads, never beat them: sustained rate is the slower one.
        return min(p.speed, p.bandwidth * sc.pixels / sc.bytes_per_frame)

    total = sum(sc.work)
    # Piecewise-constant capacity between joins and departures.
    times = sorted({0.0, *(p.join for p in sc.peers),
                    *(p.end for p in sc.peers if p.end < math.inf)})
    done, fluid = 0.0, math.inf
    for i, t in enumerate(times):
        cap = sum(rate(p) for p in sc.peers if p.join <= t < p.end)
        nxt = times[i + 1] if i + 1 < len(times) else math.inf
        if cap > 0 and done + cap * (nxt - t) >= total:
            fluid = t + (total - done) / cap
            break
        done += cap * (nxt - t) if cap > 0 else 0.0
    fastest = max(rate(p) for p in sc.peers)
    return max(fluid, max(sc.work) / fastest)


@dataclass(slots=True)
class _Peer:
    spec: PeerSpec
    alive: bool = False
    queue: list[str] = field(default_factory=list)  # held attempts, in order
    arrived: set[str] = field(default_factory=set)  # downloads complete
    link_free: float = 0.0
    encoding: str | None = None
    enc_start: float = 0.0
    enc_end: float = 0.0
    poll_token: int = 0
    finished: bool = False


def run(sc: Scenario, policy: str, *, baseline_prefetch: bool = False,
        timer: Callable[[], float] | None = None) -> Result:
    """Play ``sc`` under ``policy``; returns the makespan and what the scheduler did."""
    job = Job(sc.frames, work_per_chunk=sc.work, lease_s=sc.lease_s, policy=policy,
              retry_after_s=sc.retry_after_s)
    prefetching = policy == "swarm" or baseline_prefetch
    peers = [_Peer(p) for p in sc.peers]
    events: list[tuple[float, int, str, int, str | int]] = []
    seq = 0
    claims, claim_s, duplicates, steals = 0, 0.0, 0, 0
    bound = lower_bound(sc)

    def at(t: float, kind: str, who: int, arg: str | int = "") -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, who, arg))

    def poll(i: int, t: float, prefetch: bool) -> None:
        p = peers[i]
        p.poll_token += 1
        at(t, "poll_prefetch" if prefetch else "poll", i, p.poll_token)

    def try_start(i: int, t: float) -> None:
        p = peers[i]
        while p.encoding is None and p.queue and p.queue[0] in p.arrived:
            aid = p.queue.pop(0)
            if not job.progress(aid, 0, t):
                continue  # stolen or already done elsewhere: drop it
            a = job.attempts[aid]
            p.encoding, p.enc_start = aid, t
            p.enc_end = t + a.work / p.spec.speed
            at(p.enc_end, "done", i, aid)
            at(t + sc.progress_s, "progress", i, aid)
            if prefetching and not p.queue:
                poll(i, t, prefetch=True)
        if p.encoding is None and not p.queue:
            poll(i, t, prefetch=False)

    for i, spec in enumerate(sc.peers):
        at(spec.join, "join", i)
        if spec.leave is not None:
            at(spec.leave, "leave", i)
        if spec.die is not None:
            at(spec.die, "die", i)
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
            p.alive = False
            if kind == "leave":
                job.peer_left(p.spec.name, now)
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
            elif isinstance(action, Assign):
                duplicates += action.duplicate
                steals += action.replaces is not None
                p.queue.append(action.attempt)
                start = max(now, p.link_free)
                p.link_free = start + (job.chunks[action.chunk].frames * sc.bytes_per_frame
                                       / p.spec.bandwidth)
                at(p.link_free, "arrived", i, action.attempt)
            else:
                poll(i, now + action.retry_after_s, prefetch)
        elif kind == "arrived":
            assert isinstance(arg, str)
            p.arrived.add(arg)
            try_start(i, now)
        elif kind == "progress":
            if p.encoding != arg or not isinstance(arg, str):
                continue
            frames = job.chunks[job.attempts[arg].chunk].frames
            done = int(frames * (now - p.enc_start) / (p.enc_end - p.enc_start))
            if job.progress(arg, done, now):
                at(now + sc.progress_s, "progress", i, arg)
            else:
                p.encoding = None  # lost the race or was replaced: stop encoding
                try_start(i, now)
        elif kind == "done":
            if p.encoding != arg:
                continue
            assert isinstance(arg, str)
            job.succeeded(arg, now)
            p.encoding = None
            try_start(i, now)
    return Result(sc.name, policy, now, bound, claims, claim_s, duplicates, steals, job.done)


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
