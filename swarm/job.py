"""The state of one encoding job: chunks, attempts, leases. Sans-I/O.

Nothing here reads a clock or touches a process or socket: the trio shell passes ``now``
in and carries out what comes back. That is what lets a test drive hundreds of simulated
peers in virtual time.

A chunk's life, in one table (``TRANSITIONS``)::

    PENDING --claim--> ASSIGNED --first progress--> ENCODING --verified result--> DONE
       ^                  |                            |
       +---- lease expired, attempt failed, peer gone -+

An attempt is one peer's try at one chunk; it ends once (ok, failed, expired, cancelled).
A chunk is DONE exactly once: a second result, or one for a replaced attempt, is refused.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from .errors import LocalProtocolError

__all__ = [
    "Assign",
    "Attempt",
    "AttemptOutcome",
    "Chunk",
    "ChunkState",
    "Finished",
    "Job",
    "Requeued",
    "Wait",
]


class ChunkState(enum.Enum):
    PENDING = "pending"
    ASSIGNED = "assigned"
    ENCODING = "encoding"
    DONE = "done"


TRANSITIONS: dict[ChunkState, frozenset[ChunkState]] = {
    ChunkState.PENDING: frozenset({ChunkState.ASSIGNED}),
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
    started: float
    lease_until: float
    outcome: AttemptOutcome = AttemptOutcome.RUNNING
    frames_done: int = 0
    ended: float | None = None
    reason: str = ""


@dataclass(slots=True)
class Chunk:
    index: int
    frames: int
    state: ChunkState = ChunkState.PENDING
    attempts: list[str] = field(default_factory=list)
    winner: str | None = None

    def move(self, to: ChunkState) -> None:
        if to not in TRANSITIONS[self.state]:
            raise LocalProtocolError(f"chunk {self.index}: {self.state.value} -> {to.value}")
        self.state = to


@dataclass(frozen=True, slots=True)
class Assign:
    attempt: str
    chunk: int
    peer: str
    lease_s: float


@dataclass(frozen=True, slots=True)
class Wait:
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


class Job:
    """Chunks and attempts of one job, with FIFO hand-out and requeue-first on loss."""

    def __init__(self, frames_per_chunk: Iterable[int], *, lease_s: float = 30.0,
                 max_failures: int = 3) -> None:
        self.chunks = [Chunk(i, n) for i, n in enumerate(frames_per_chunk)]
        if not self.chunks:
            raise LocalProtocolError("a job needs at least one chunk")
        self.lease_s = lease_s
        self.max_failures = max_failures
        self.attempts: dict[str, Attempt] = {}
        self.failures: dict[str, int] = {}
        self.benched: set[str] = set()
        # Requeued chunks go to the front: they are the ones already late.
        self._pending: deque[int] = deque(range(len(self.chunks)))

    # -- queries -----------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return all(c.state is ChunkState.DONE for c in self.chunks)

    @property
    def frames_done(self) -> int:
        return sum(c.frames for c in self.chunks if c.state is ChunkState.DONE)

    def running(self) -> list[Attempt]:
        return [a for a in self.attempts.values() if a.outcome is AttemptOutcome.RUNNING]

    def attempt(self, attempt_id: str) -> Attempt:
        try:
            return self.attempts[attempt_id]
        except KeyError:
            raise LocalProtocolError(f"unknown attempt {attempt_id!r}") from None

    # -- events ------------------------------------------------------------------------
    def claim(self, peer: str, now: float) -> Assign | Wait | Finished:
        if self.done:
            return Finished()
        if peer in self.benched or not self._pending:
            return Wait(RETRY_AFTER_S)
        index = self._pending.popleft()
        chunk = self.chunks[index]
        chunk.move(ChunkState.ASSIGNED)
        attempt_id = f"c{index:05d}a{len(chunk.attempts) + 1:03d}"
        chunk.attempts.append(attempt_id)
        self.attempts[attempt_id] = Attempt(attempt_id, index, peer, now, now + self.lease_s)
        return Assign(attempt_id, index, peer, self.lease_s)

    def progress(self, attempt_id: str, frames_done: int, now: float) -> bool:
        """Renew the lease; False means the attempt is no longer wanted (stop it)."""
        a = self.attempts.get(attempt_id)
        if a is None or a.outcome is not AttemptOutcome.RUNNING:
            return False
        chunk = self.chunks[a.chunk]
        if chunk.state is ChunkState.ASSIGNED:
            chunk.move(ChunkState.ENCODING)
        a.frames_done = max(a.frames_done, min(frames_done, chunk.frames))
        a.lease_until = now + self.lease_s
        return True

    def succeeded(self, attempt_id: str, now: float) -> bool:
        """A verified result arrived. False: refused (stale attempt or chunk already done)."""
        a = self.attempts.get(attempt_id)
        if a is None or a.outcome is not AttemptOutcome.RUNNING:
            return False
        chunk = self.chunks[a.chunk]
        if chunk.state is ChunkState.DONE:
            self._end(a, AttemptOutcome.CANCELLED, now, "chunk already done")
            return False
        chunk.move(ChunkState.DONE)
        chunk.winner = attempt_id
        a.frames_done = chunk.frames
        self._end(a, AttemptOutcome.OK, now, "")
        return True

    def failed(self, attempt_id: str, now: float, reason: str) -> list[Requeued]:
        a = self.attempts.get(attempt_id)
        if a is None or a.outcome is not AttemptOutcome.RUNNING:
            return []
        self._end(a, AttemptOutcome.FAILED, now, reason)
        self.failures[a.peer] = self.failures.get(a.peer, 0) + 1
        if self.failures[a.peer] >= self.max_failures:
            self.benched.add(a.peer)
        return self._requeue(a, reason)

    def peer_left(self, peer: str, now: float) -> list[Requeued]:
        out: list[Requeued] = []
        for a in self.running():
            if a.peer == peer:
                self._end(a, AttemptOutcome.CANCELLED, now, "peer left")
                out += self._requeue(a, "peer left")
        return out

    def tick(self, now: float) -> list[Requeued]:
        """Expire leases that saw no progress in time."""
        out: list[Requeued] = []
        for a in self.running():
            if now >= a.lease_until:
                self._end(a, AttemptOutcome.EXPIRED, now, "lease expired")
                out += self._requeue(a, "lease expired")
        return out

    def next_deadline(self) -> float | None:
        leases = [a.lease_until for a in self.running()]
        return min(leases) if leases else None

    # -- internals ---------------------------------------------------------------------
    def _end(self, a: Attempt, outcome: AttemptOutcome, now: float, reason: str) -> None:
        a.outcome, a.ended, a.reason = outcome, now, reason

    def _requeue(self, a: Attempt, reason: str) -> list[Requeued]:
        chunk = self.chunks[a.chunk]
        others = [x for x in chunk.attempts if x != a.id
                  and self.attempts[x].outcome is AttemptOutcome.RUNNING]
        if chunk.state is ChunkState.DONE or others:
            return []
        chunk.move(ChunkState.PENDING)
        self._pending.appendleft(chunk.index)
        return [Requeued(chunk.index, a.id, reason)]
