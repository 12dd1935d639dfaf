"""Which job a node's free slot works for next, when it holds invites from several coordinators.

Sans-I/O: the shell (``peer.turns``) says when a slot of a job asks for a turn and when a
turn ends, passing the time in, and asks ``grant`` who gets a free slot.

The rule is weighted fair queueing in slot-seconds, as a CPU scheduler shares a core
(Linux CFS's virtual runtime): each job's *virtual time* is the slot-seconds it has held
(finished turns, and running ones up to now) divided by its priority's weight (low 1,
normal 2, high 4), and a free slot goes to the asking job with the least. So over any
stretch where jobs keep asking, each gets slot time in proportion to its weight, give or
take one turn (a turn is a chunk: it is never cut short for fairness).

What can go wrong, and the answer here:

- A job that was absent (joined late), idle (its slots asked nothing) or held (its
  coordinator said Wait) would come back far behind the others and then take every slot
  until it caught up. It banks no credit instead: on coming back it is lifted to the least
  virtual time among the jobs that kept competing (never lowered).
- A coordinator that answers Wait has nothing for that slot now: the slot's request is
  skipped until the retry time it gave, and the slot goes to the next job in turn (the
  job's other slots, asked separately, may still have work). One that answers Done is
  skipped until it leaves.
- Two slots asking at the same instant would both go to the job first in order (a turn
  that just started has cost nothing yet): ties go to the job holding fewer turns per
  weight, then to the heavier job, then to the one that joined first.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Final

from swarm.errors import LocalProtocolError

__all__ = ["PRIORITIES", "SlotShare", "Turn"]

# Weights per priority: a high job gets twice a normal one's slot time, a low one half.
# Powers of two keep the shares easy to state ("twice as fast"); a wider spread would let a
# "high" job starve a "low" one in all but name.
PRIORITIES: Final = {"low": 1, "normal": 2, "high": 4}


@dataclass(frozen=True, slots=True)
class Turn:
    """One slot held by one job, from ``grant`` until ``end`` / ``wait`` / ``done``;
    ``asker`` is the key its request was made with (the shell's handle on the slot)."""

    job_id: str
    number: int
    asker: Hashable


@dataclass(slots=True)
class _Job:
    weight: int
    order: int
    used: float = 0.0  # slot-seconds of finished turns
    running: dict[int, float] = field(default_factory=dict)  # turn number -> start time
    asking: dict[Hashable, float] = field(default_factory=dict)  # asker -> not before
    finished: bool = False  # its coordinator said Done: skipped until it leaves
    # Not competing since its last turn (new, held, or asked nothing): lifted to the
    # others' virtual time before it competes again.
    idle: bool = True

    def virtual(self, now: float) -> float:
        return (self.used + self._running(now)) / self.weight

    def _running(self, now: float) -> float:
        return sum(now - s for s in self.running.values())

    def ready(self, now: float) -> bool:
        return not self.finished and any(t <= now for t in self.asking.values())

    def competing(self, now: float) -> bool:
        return not self.finished and (bool(self.running) or self.ready(now))


class SlotShare:
    """The turns of one node's ``slots`` encoder slots among the jobs it holds."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise LocalProtocolError(f"a node has at least one slot, not {slots}")
        self.slots = slots
        self._jobs: dict[str, _Job] = {}
        self._order = itertools.count()
        self._numbers = itertools.count()

    # -- the jobs ------------------------------------------------------------------------
    def join(self, job_id: str, priority: str = "normal") -> None:
        """A job this node accepted an invite for; joining twice changes nothing."""
        weight = PRIORITIES.get(priority)
        if weight is None:
            raise LocalProtocolError(f"priority {priority!r}: one of {', '.join(PRIORITIES)}")
        self._jobs.setdefault(job_id, _Job(weight, next(self._order)))

    def leave(self, job_id: str) -> None:
        """The job is over for this node (done, deleted, its coordinator gone)."""
        self._jobs.pop(job_id, None)

    @property
    def jobs(self) -> list[str]:
        return list(self._jobs)

    def finished(self, job_id: str) -> bool:
        """True once its coordinator said Done (or it left): its slots should stop asking."""
        job = self._jobs.get(job_id)
        return job is None or job.finished

    def running(self, job_id: str) -> int:
        job = self._jobs.get(job_id)
        return len(job.running) if job is not None else 0

    def others_waiting(self, job_id: str) -> bool:
        """Whether another job asks for a slot (or will, once its Wait runs out). A slot
        should not claim a chunk ahead for this job then: the chunk would sit queued at
        its coordinator, holding a lease, while the other job takes the slot's next turn."""
        return any(j.asking and not j.finished for k, j in self._jobs.items() if k != job_id)

    def virtual_time(self, job_id: str, now: float) -> float:
        return self._jobs[job_id].virtual(now)

    # -- the turns -----------------------------------------------------------------------
    def want(self, job_id: str, asker: Hashable, not_before: float = 0.0) -> None:
        """A slot of this job asks for a turn (``grant`` decides when it gets one);
        ``asker``: a key unique to the slot, handed back in its Turn."""
        job = self._jobs[job_id]
        if not job.asking and not job.running:
            job.idle = True  # it asked nothing, so it competed for nothing meanwhile
        job.asking[asker] = not_before

    def withdraw(self, job_id: str, asker: Hashable) -> None:
        """A slot that asked gives up before its turn came (its job was cancelled)."""
        job = self._jobs.get(job_id)
        if job is not None:
            job.asking.pop(asker, None)

    def grant(self, now: float) -> Turn | None:
        """Give a free slot to the asking job with the least virtual time; None if no slot
        is free or nobody may have one now (see ``next_change``)."""
        if sum(len(j.running) for j in self._jobs.values()) >= self.slots:
            return None
        ready = {k: j for k, j in self._jobs.items() if j.ready(now)}
        if not ready:
            return None
        self._lift(ready, now)
        job_id = min(ready, key=lambda k: (ready[k].virtual(now),
                                           len(ready[k].running) / ready[k].weight,
                                           -ready[k].weight, ready[k].order))
        job = ready[job_id]
        # The longest-waiting ready asker of the job (requests keep their order).
        asker = next(a for a, t in job.asking.items() if t <= now)
        del job.asking[asker]
        number = next(self._numbers)
        job.running[number] = now
        return Turn(job_id, number, asker)

    def end(self, turn: Turn, now: float, *, again: bool = True) -> None:
        """The turn's chunk ended; ``again``: the same slot asks for its next turn at once
        (so the job does not count as idle in between)."""
        job = self._charge(turn, now)
        if job is not None and again and not job.finished:
            job.asking[turn.asker] = now

    def wait(self, turn: Turn, now: float, retry_after_s: float) -> None:
        """Its coordinator told this slot to wait: the slot asks again, skipped until then;
        a job left with nothing to do meanwhile comes back banking nothing for it."""
        job = self._charge(turn, now)
        if job is not None and not job.finished:
            job.asking[turn.asker] = now + retry_after_s
            if not job.competing(now):
                job.idle = True

    def done(self, turn: Turn, now: float) -> list[Hashable]:
        """Its coordinator said Done: no slot of this job gets a turn again. Returns the
        job's other askers, which the shell tells to stop."""
        job = self._charge(turn, now)
        if job is None:
            return []
        job.finished = True
        askers = list(job.asking)
        job.asking.clear()
        return askers

    def next_change(self, now: float) -> float | None:
        """When a held request may have a slot: the time to call ``grant`` again if nothing
        else happens before."""
        times = [t for j in self._jobs.values() if not j.finished
                 for t in j.asking.values() if t > now]
        return min(times, default=None)

    # -- inside --------------------------------------------------------------------------
    def _charge(self, turn: Turn, now: float) -> _Job | None:
        job = self._jobs.get(turn.job_id)
        if job is None:
            return None  # it left while the chunk ran
        start = job.running.pop(turn.number, None)
        if start is not None:
            job.used += max(0.0, now - start)
        return job

    def _lift(self, ready: dict[str, _Job], now: float) -> None:
        """No banked credit: a job coming back from idle starts at the least virtual time
        of those that kept competing."""
        back = [j for j in ready.values() if j.idle]
        if not back:
            return
        competing = [j.virtual(now) for j in self._jobs.values()
                     if not j.idle and j.competing(now)]
        for job in back:
            job.idle = False
            if competing:
                job.used = max(job.used, min(competing) * job.weight - job._running(now))
