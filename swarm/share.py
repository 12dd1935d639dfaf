"""Which job a node's free slot works for next, when it holds invites from several coordinators.

Sans-I/O: the shell (``peer.turns``) says when a slot of a job asks for a turn and when a
turn ends, passing the time in, and asks ``grant`` who gets a free slot.

The rule has two levels, as an OS scheduler's real-time classes sit above its fair one:

- **Priority first.** A free slot goes to a job of the highest priority that asks
  (``--priority low|normal|high``): a high job's chunks are taken first, a low job gets a
  slot only when no normal or high job wants one. A fair weighting instead (this module
  once gave high 4, normal 2, low 1) cannot make a high job finish clearly sooner: two
  equal jobs sharing at 2:1 end at 0.75 and 1 of the makespan at best, and a turn already
  running or claimed ahead for the other job shaves that further (``bench/share`` saw 0.99).
  Strict order ends the high one at 0.5. Nothing starves for good: a job's chunks are
  finite, and the higher job's tail, when its coordinator answers Wait, hands the slots on.
- **Fair within a priority**: fair queueing in slot-seconds, as a CPU scheduler
  shares a core (Linux CFS's virtual runtime): each job's *virtual time* is the
  slot-seconds it has held (finished turns, and running ones up to now), and a free slot
  goes to the asking job with the least. So over any stretch where jobs keep asking, each
  gets the same slot time, give or take one turn (a turn is a chunk: it is never cut
  short for fairness).

What can go wrong, and the answer here:

- A job that was absent (joined late), idle (its slots asked nothing) or held (its
  coordinator said Wait) would come back far behind the others and then take every slot
  until it caught up. It banks no credit instead: on coming back it is lifted to the least
  virtual time among the jobs of its priority that kept competing (never lowered).
- A coordinator that answers Wait has nothing for that slot now: the slot's request is
  skipped until the retry time it gave, and the slot goes to the next job in turn (the
  job's other slots, asked separately, may still have work). One that answers Done is
  skipped until it leaves.
- Two slots asking at the same instant would both go to the job first in order (a turn
  that just started has cost nothing yet): ties go to the job holding fewer turns, then to
  the one that joined first.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Final

from swarm.errors import LocalProtocolError

__all__ = ["PRIORITIES", "SlotShare", "Turn"]

# Rank per priority: a free slot goes to an asking job of the highest rank.
PRIORITIES: Final = {"low": 0, "normal": 1, "high": 2}


@dataclass(frozen=True, slots=True)
class Turn:
    """One slot held by one job, from ``grant`` until ``end`` / ``wait`` / ``done``;
    ``asker`` is the key its request was made with (the shell's handle on the slot)."""

    job_id: str
    number: int
    asker: Hashable


@dataclass(slots=True)
class _Job:
    rank: int
    order: int
    used: float = 0.0  # slot-seconds of finished turns
    running: dict[int, float] = field(default_factory=dict)  # turn number -> start time
    asking: dict[Hashable, float] = field(default_factory=dict)  # asker -> not before
    finished: bool = False  # its coordinator said Done: skipped until it leaves
    # Not competing since its last turn (new, held, or asked nothing): lifted to the
    # others' virtual time before it competes again.
    idle: bool = True

    def virtual(self, now: float) -> float:
        return self.used + self._running(now)

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
        rank = PRIORITIES.get(priority)
        if rank is None:
            raise LocalProtocolError(f"priority {priority!r}: one of {', '.join(PRIORITIES)}")
        self._jobs.setdefault(job_id, _Job(rank, next(self._order)))

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
        """Whether another job of this one's priority or higher asks for a slot (or will,
        once its Wait runs out). A slot should not claim a chunk ahead for this job then:
        the chunk would sit queued at its coordinator, holding a lease, while the other job
        takes the slot's next turn. A lower job asking does not count: it gets no turn
        while this one has chunks, so a chunk claimed ahead only saves the download."""
        rank = self._jobs[job_id].rank if job_id in self._jobs else 0
        return any(j.asking and not j.finished and j.rank >= rank
                   for k, j in self._jobs.items() if k != job_id)

    def virtual_time(self, job_id: str, now: float) -> float:
        return self._jobs[job_id].virtual(now)

    # -- the turns -----------------------------------------------------------------------
    def want(self, job_id: str, asker: Hashable, not_before: float = 0.0, *,
             now: float | None = None) -> None:
        """A slot of this job asks for a turn (``grant`` decides when it gets one);
        ``asker``: a key unique to the slot, handed back in its Turn. ``now``: a job that
        comes back is lifted as of now; without it, at its next grant, which would also
        charge it the turns others ran while it waited (a job joining during another's
        turn would then tie with that job instead of going next)."""
        job = self._jobs[job_id]
        if not job.asking and not job.running:
            job.idle = True  # it asked nothing, so it competed for nothing meanwhile
        job.asking[asker] = not_before
        if now is not None and job.idle and not_before <= now and not job.finished:
            self._lift([job], job.rank, now)

    def withdraw(self, job_id: str, asker: Hashable) -> None:
        """A slot that asked gives up before its turn came (its job was cancelled)."""
        job = self._jobs.get(job_id)
        if job is not None:
            job.asking.pop(asker, None)

    def grant(self, now: float) -> Turn | None:
        """Give a free slot to the asking job of the highest priority, and among those to
        the one with the least virtual time; None if no slot is free or nobody may have one
        now (see ``next_change``)."""
        if sum(len(j.running) for j in self._jobs.values()) >= self.slots:
            return None
        ready = {k: j for k, j in self._jobs.items() if j.ready(now)}
        if not ready:
            return None
        top = max(j.rank for j in ready.values())
        ready = {k: j for k, j in ready.items() if j.rank == top}
        self._lift(list(ready.values()), top, now)
        job_id = min(ready, key=lambda k: (ready[k].virtual(now), len(ready[k].running),
                                           ready[k].order))
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

    def _lift(self, ready: list[_Job], rank: int, now: float) -> None:
        """No banked credit: a job coming back from idle starts at the least virtual time
        of those of its priority that kept competing."""
        back = [j for j in ready if j.idle]
        if not back:
            return
        competing = [j.virtual(now) for j in self._jobs.values()
                     if j.rank == rank and not j.idle and j.competing(now)]
        for job in back:
            job.idle = False
            if competing:
                job.used = max(job.used, min(competing) - job._running(now))
