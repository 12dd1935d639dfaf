"""What the web page shows, as a pure model: the swarm's devices and the node's jobs.

The shell (``peer.web``) feeds it the events it already has (a job's ``JobEvent`` from
``run_encode``, the node's own ``NodeEvent``, the mDNS ``PeerRecord`` it browsed) with the
current time, and sends ``snapshot(now)`` to each page over server-sent events whenever
``version`` moved. Nothing here reads a clock or a socket, so the chunk map, the progress
and the ETA are tested with plain calls (tests/test_board.py).

Bounded by construction: at most ``MAX_DEVICES`` devices and ``MAX_JOBS`` jobs are kept
(finished jobs go first), so a LAN full of advertisements cannot grow the page without end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from swarm.events import (
    ChunkDone,
    ChunkFailed,
    ChunkLost,
    ChunkParted,
    ChunkProgress,
    ChunkRequeued,
    ChunkSplit,
    ChunkStart,
    Event,
    HlsEnd,
    HlsSegment,
    JobEnd,
    JobJoined,
    JobLeft,
    JobResumed,
    JobStart,
    Merge,
    PeerForeign,
    PeerJoined,
    PeerLeft,
    SlotEnd,
    SlotProgress,
    SlotStart,
)

__all__ = ["MAX_DEVICES", "MAX_JOBS", "Board", "ChunkState", "Device", "JobCard"]

# A home LAN has a handful of devices; 64 leaves room for a classroom and bounds the page.
MAX_DEVICES = 64
# Queued, running and the most recent finished jobs; older finished ones drop off the page.
MAX_JOBS = 16
# An ETA needs some progress to stand on: before this share of the frames it is not shown.
ETA_MIN_SHARE = 0.02

ChunkState = Literal["pending", "running", "done"]
JobState = Literal["queued", "running", "merging", "done", "failed"]
# The chunk map as one letter a chunk: compact enough to resend whole on every change.
_LETTER: dict[ChunkState, str] = {"pending": ".", "running": "r", "done": "d"}


@dataclass(frozen=True, slots=True)
class Device:
    key: str  # node id, or the mDNS service name
    name: str
    arch: str
    speed: float  # benchmark score for the default profile; 0.0: unknown
    state: str  # "idle" / "busy" / "gone"
    paired: bool  # same secret as this node (there is no other pairing yet)
    here: bool = False  # this node itself


@dataclass(slots=True)
class JobCard:
    job_id: str
    title: str  # the input's name as the user gave it (never a path of ours)
    profile: str
    role: Literal["coordinator", "peer"] = "coordinator"
    state: JobState = "queued"
    submitted_at: float = 0.0
    started_at: float | None = None
    ended_at: float | None = None
    frames: int = 0
    chunks: list[ChunkState] = field(default_factory=list)
    chunk_frames: list[int] = field(default_factory=list)  # planned frames per chunk
    running_frames: dict[int, int] = field(default_factory=dict)  # chunk -> frames so far
    frames_done: int = 0  # in verified chunks
    peers: set[str] = field(default_factory=set)
    hls_segments: int = 0
    hls_ended: bool = False
    hls: bool = False  # the job publishes a stream the page can play
    download: bool = False  # its result can be downloaded from this node
    error: str = ""
    done_chunks: int = 0  # a peer's count of the chunks it delivered

    def progress(self) -> float:
        if self.state == "done":
            return 1.0
        if self.frames <= 0:
            return 0.0
        running = sum(self.running_frames.values())
        return min(1.0, (self.frames_done + running) / self.frames)

    def eta_s(self, now: float) -> float | None:
        """Remaining seconds at the rate so far; None until there is a rate to trust."""
        if self.state != "running" or self.started_at is None:
            return None
        share = self.progress()
        elapsed = now - self.started_at
        if share < ETA_MIN_SHARE or elapsed <= 0:
            return None
        return max(0.0, elapsed * (1.0 - share) / share)

    def as_json(self, now: float) -> dict[str, object]:
        eta = self.eta_s(now)
        return {
            "id": self.job_id, "title": self.title, "profile": self.profile,
            "role": self.role, "state": self.state,
            "chunks": "".join(_LETTER[c] for c in self.chunks),
            "progress": round(self.progress(), 4),
            "eta_s": None if eta is None else round(eta, 1),
            "elapsed_s": round((self.ended_at or now) - self.started_at, 1)
            if self.started_at is not None else 0.0,
            "frames": self.frames, "frames_done": self.frames_done,
            "peers": sorted(self.peers), "hls": self.hls and self.hls_segments > 0,
            "hls_segments": self.hls_segments, "hls_ended": self.hls_ended,
            "download": self.download and self.state == "done", "error": self.error,
            "done_chunks": self.done_chunks,
        }


class Board:
    """The page's state. Every change bumps ``version``; the shell pushes on a new one."""

    def __init__(self, here: Device, *, secret: bool) -> None:
        self.secret = secret
        self.version = 0
        self._devices: dict[str, Device] = {here.key: here}
        self._here = here.key
        self._jobs: dict[str, JobCard] = {}

    # -- devices ----------------------------------------------------------------------
    def device(self, dev: Device) -> None:
        """A device seen (or seen again); the first MAX_DEVICES keys are kept."""
        if dev.key not in self._devices and len(self._devices) >= MAX_DEVICES:
            return
        if self._devices.get(dev.key) != dev:
            self._devices[dev.key] = dev
            self.version += 1

    def device_gone(self, key: str) -> None:
        if key != self._here and self._devices.pop(key, None) is not None:
            self.version += 1

    def set_here(self, here: Device) -> None:
        """This node, once it is known (a coordinator's node starts after its job does)."""
        del self._devices[self._here]
        self._here = here.key
        self._devices[here.key] = here
        self.version += 1

    def set_here_state(self, state: str) -> None:
        here = self._devices[self._here]
        if here.state != state:
            self._devices[self._here] = Device(here.key, here.name, here.arch, here.speed,
                                               state, here.paired, here=True)
            self.version += 1

    def devices(self) -> list[Device]:
        return sorted(self._devices.values(), key=lambda d: (not d.here, d.name, d.key))

    # -- jobs -------------------------------------------------------------------------
    def job(self, job_id: str) -> JobCard | None:
        return self._jobs.get(job_id)

    def jobs(self) -> list[JobCard]:
        return list(self._jobs.values())

    def queued(self, job_id: str, title: str, profile: str, now: float, *,
               hls: bool = False, download: bool = False) -> JobCard:
        card = JobCard(job_id, title, profile, submitted_at=now, hls=hls, download=download)
        self._add(card)
        return card

    def failed(self, job_id: str, reason: str, now: float) -> None:
        card = self._jobs.get(job_id)
        if card is not None:
            card.state, card.error, card.ended_at = "failed", reason[:300], now
            card.running_frames.clear()
            self.version += 1

    def _add(self, card: JobCard) -> None:
        self._jobs[card.job_id] = card
        while len(self._jobs) > MAX_JOBS:
            ended = [j for j in self._jobs.values() if j.state in ("done", "failed")]
            victim = min(ended or self._jobs.values(),
                         key=lambda j: j.ended_at or j.submitted_at)
            del self._jobs[victim.job_id]
        self.version += 1

    def job_event(self, job_id: str, e: Event, now: float) -> None:
        """An event of the job ``job_id`` (as ``run_encode`` emits it), or a device it met."""
        card = self._jobs.get(job_id)
        if card is None:
            return
        match e:
            case PeerJoined(peer=peer, arch=arch, score=score):
                card.peers.add(peer)
                self.device(Device(f"peer:{peer}", peer, arch, score, "busy", True))
            case PeerLeft(peer=peer):
                card.peers.discard(peer)
            case PeerForeign(peer=peer):
                self.device(Device(f"peer:{peer}", peer, "", 0.0, "foreign", False))
            case _:
                if not self._chunk_event(card, e, now):
                    return
        self.version += 1

    def _chunk_event(self, card: JobCard, e: Event, now: float) -> bool:
        match e:
            case JobStart(frames=frames, chunks=chunks, profile=profile):
                card.state, card.started_at = "running", now
                card.frames, card.profile = frames, profile or card.profile
                card.chunks = ["pending"] * chunks
                card.chunk_frames = [0] * chunks
            case JobResumed(chunks=kept, frames_done=frames_done):
                for n in kept:
                    self._grow(card, n)
                    card.chunks[n] = "done"
                card.frames_done = frames_done
            case ChunkStart(chunk=n, frames=frames):
                self._grow(card, n)
                if card.chunks[n] != "done":
                    card.chunks[n] = "running"
                    card.chunk_frames[n] = frames
                    card.running_frames.setdefault(n, 0)
            case ChunkProgress(chunk=n, frames=frames):
                if n < len(card.chunks) and card.chunks[n] == "running":
                    card.running_frames[n] = max(card.running_frames.get(n, 0), frames)
            case ChunkDone(chunk=n, frames_done=frames_done):
                self._grow(card, n)
                card.chunks[n] = "done"
                card.running_frames.pop(n, None)
                card.frames_done = frames_done
            case ChunkRequeued(chunk=n) | ChunkLost(chunk=n):
                self._back(card, n)
            case ChunkFailed(chunk=n, requeued=requeued):
                if requeued:
                    self._back(card, n)
            case ChunkSplit(rest=rest) | ChunkParted(rest=rest):
                self._grow(card, rest)
            case HlsSegment():
                card.hls_segments += 1
            case HlsEnd():
                card.hls_ended = True
            case Merge():
                card.state = "merging"
                card.running_frames.clear()
            case JobEnd():
                card.state, card.ended_at = "done", now
                card.chunks = ["done"] * len(card.chunks)
                card.frames_done = card.frames
                card.running_frames.clear()
            case _:
                return False
        return True

    @staticmethod
    def _grow(card: JobCard, n: int) -> None:
        # A split adds chunks after the plan; the map grows to hold them.
        while len(card.chunks) <= n:
            card.chunks.append("pending")
            card.chunk_frames.append(0)

    @staticmethod
    def _back(card: JobCard, n: int) -> None:
        if n < len(card.chunks) and card.chunks[n] != "done":
            card.chunks[n] = "pending"
            card.running_frames.pop(n, None)

    def node_event(self, e: Event, now: float) -> None:
        """This node's own events as a peer of another coordinator's job."""
        match e:
            case JobJoined(job_id=job_id, coordinator=url):
                card = JobCard(job_id, f"for {url}"[:120], "", role="peer", state="running",
                               submitted_at=now, started_at=now)
                self._add(card)
                self.set_here_state("busy")
                return
            case JobLeft(job_id=job_id):
                left = self._jobs.get(job_id)
                if left is not None and left.role == "peer":
                    left.state, left.ended_at = "done", now
                    left.running_frames.clear()
                self.set_here_state("idle")
            case SlotStart(chunk=n) | SlotProgress(chunk=n) | SlotEnd(chunk=n):
                mine = self._peer_card()
                if mine is None:
                    return
                if isinstance(e, SlotStart):
                    mine.running_frames[n] = 0
                elif isinstance(e, SlotProgress):
                    mine.running_frames[n] = e.frames
                else:
                    mine.running_frames.pop(n, None)
                    mine.done_chunks += e.outcome == "done"
            case _:
                return
        self.version += 1

    def _peer_card(self) -> JobCard | None:
        for card in reversed(self._jobs.values()):
            if card.role == "peer" and card.state == "running":
                return card
        return None

    def snapshot(self, now: float) -> dict[str, object]:
        """Everything the page draws, as plain JSON values."""
        return {
            "version": self.version, "secret": self.secret,
            "devices": [{"name": d.name, "arch": d.arch, "speed": round(d.speed, 2),
                         "state": d.state, "paired": d.paired, "here": d.here}
                        for d in self.devices()],
            "jobs": [c.as_json(now) for c in self._jobs.values()],
        }
