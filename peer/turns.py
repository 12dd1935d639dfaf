"""The trio side of ``swarm.share``: a node's slots wait here for their turn at a job.

Every job a node holds runs one task per node slot (``peer.worker.work_slot``); before
each claim the task asks for a turn, and only ``slots`` turns run at once across all jobs,
granted in the order ``swarm.share.SlotShare`` decides. With one job this is the old
behaviour: its slots never wait for one another.
"""

from __future__ import annotations

import math

import trio

from swarm.share import SlotShare, Turn

__all__ = ["Turns"]


class _Asker:
    """One slot's request: set with the turn it was granted, or with None (job over)."""

    __slots__ = ("event", "turn")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.turn: Turn | None = None


class Turns:
    def __init__(self, slots: int) -> None:
        self.share = SlotShare(max(1, slots))
        self._askers: dict[_Asker, str] = {}

    def join(self, job_id: str, priority: str = "normal") -> None:
        self.share.join(job_id, priority)

    def leave(self, job_id: str) -> None:
        """The job's tasks are gone (or going): nothing of it waits or runs any more."""
        self.share.leave(job_id)
        for asker, job in list(self._askers.items()):
            if job == job_id:
                self._answer(asker, None)
        self._dispatch()

    def may_prefetch(self, job_id: str) -> bool:
        """Claim ahead only while no other job asks (``SlotShare.others_waiting``)."""
        return not self.share.others_waiting(job_id)

    async def first(self, job_id: str) -> Turn | None:
        """Ask for a slot; None once the job is over (Done, or it left)."""
        if self.share.finished(job_id):
            return None
        asker = _Asker()
        self.share.want(job_id, asker, now=trio.current_time())
        return await self._granted(job_id, asker)

    async def next(self, turn: Turn) -> Turn | None:
        """The chunk of ``turn`` ended: ask for the slot's next turn at once."""
        self.share.end(turn, trio.current_time())
        return await self._after(turn)

    async def wait(self, turn: Turn, retry_after_s: float) -> Turn | None:
        """The coordinator said Wait: let other jobs have the slot meanwhile."""
        self.share.wait(turn, trio.current_time(), retry_after_s)
        return await self._after(turn)

    def done(self, turn: Turn) -> None:
        """The coordinator said Done: the job's other slots stop asking."""
        for asker in self.share.done(turn, trio.current_time()):
            assert isinstance(asker, _Asker)
            self._answer(asker, None)
        self._dispatch()

    def release(self, turn: Turn) -> None:
        """The slot's task ends (cancelled, failed) holding a turn: free it."""
        self.share.end(turn, trio.current_time(), again=False)
        self._dispatch()

    async def _after(self, turn: Turn) -> Turn | None:
        asker = turn.asker
        assert isinstance(asker, _Asker)
        if self.share.finished(turn.job_id):
            self._dispatch()
            return None
        asker.event = trio.Event()
        asker.turn = None
        return await self._granted(turn.job_id, asker)

    async def _granted(self, job_id: str, asker: _Asker) -> Turn | None:
        self._askers[asker] = job_id
        try:
            self._dispatch()
            while not asker.event.is_set():
                # A held request (Wait) becomes grantable at its time without any event:
                # whoever waits wakes then and deals the turns again.
                wake = self.share.next_change(trio.current_time())
                with trio.move_on_at(math.inf if wake is None else wake):
                    await asker.event.wait()
                self._dispatch()
        except BaseException:
            if asker.turn is not None:  # granted as we were cancelled: give it back
                self.share.end(asker.turn, trio.current_time(), again=False)
            else:
                self.share.withdraw(job_id, asker)
            self._askers.pop(asker, None)
            self._dispatch()
            raise
        return asker.turn

    def _answer(self, asker: _Asker, turn: Turn | None) -> None:
        self._askers.pop(asker, None)
        asker.turn = turn
        asker.event.set()

    def _dispatch(self) -> None:
        now = trio.current_time()
        while (turn := self.share.grant(now)) is not None:
            asker = turn.asker
            assert isinstance(asker, _Asker)
            if asker not in self._askers:  # its task is gone: the slot is free again
                self.share.end(turn, now, again=False)
                continue
            self._answer(asker, turn)
