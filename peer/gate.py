"""This device's encoder slots shared by the files of a batch, the earlier file first.

Two files of a batch run at once while the first one finishes (``swarm.batch.Lookahead``).
Each has its local slots (``peer.local``); without a gate both files' slots would encode
together and the machine would run twice as many ffmpeg as it has room for. A slot holds
one of the gate's tokens from its claim to its chunk's end; the lower ``rank`` (the earlier
file) is served first, and a slot of a later file hands its token back after each chunk
when an earlier file waits (a chunk requeued in its tail), so an earlier file never waits
for more than one chunk. The audio encode of a file takes a token too: it is CPU work
that replaces a chunk encode instead of competing with one.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

import trio

__all__ = ["Share", "SlotGate"]


class SlotGate:
    """``slots`` tokens; waiters are served by rank, then in arrival order."""

    def __init__(self, slots: int) -> None:
        self.free = slots
        self._waiters: list[tuple[int, int, trio.Event]] = []
        self._seq = itertools.count()

    async def acquire(self, rank: int) -> None:
        if self.free > 0 and not self._waiters:
            self.free -= 1
            await trio.lowlevel.checkpoint()
            return
        entry = (rank, next(self._seq), trio.Event())
        heapq.heappush(self._waiters, entry)
        try:
            await entry[2].wait()
        except trio.Cancelled:
            if entry[2].is_set():  # the token was handed over as we were cancelled
                self.release()
            else:
                self._waiters.remove(entry)
                heapq.heapify(self._waiters)
            raise

    def release(self) -> None:
        if self._waiters:
            heapq.heappop(self._waiters)[2].set()  # the token passes straight on
        else:
            self.free += 1

    def wanted_before(self, rank: int) -> bool:
        """Whether a waiter of an earlier file (lower rank) is queued."""
        return bool(self._waiters) and self._waiters[0][0] < rank


@dataclass(frozen=True, slots=True)
class Share:
    """One file's place at the gate; ``next_ready`` is set once the next file of the batch
    is planned and recruiting (then this file's idle peers are better used there)."""

    gate: SlotGate
    rank: int
    next_ready: trio.Event = field(default_factory=trio.Event)

    async def acquire(self) -> None:
        await self.gate.acquire(self.rank)

    def release(self) -> None:
        self.gate.release()

    async def yield_to_earlier(self) -> None:
        """Between two chunks: let an earlier file's waiting slot go first."""
        if self.gate.wanted_before(self.rank):
            self.gate.release()
            await self.gate.acquire(self.rank)
