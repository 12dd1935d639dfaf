"""The node's turns among several coordinators' jobs (swarm.share), in virtual time."""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from swarm.errors import LocalProtocolError
from swarm.share import SlotShare, Turn
from swarm.simulate import SharedJob, run_shared


@dataclass
class _Sim:
    """A node's slots in virtual time: every granted turn holds its slot for the chunk
    length its job draws, then asks again (or is told Wait / Done by ``reply``)."""

    share: SlotShare
    chunk_s: dict[str, Callable[[], float]]
    reply: Callable[[str, float], str | float] = lambda job, now: "chunk"
    now: float = 0.0
    held: dict[str, float] = field(default_factory=dict)  # slot-seconds per job
    order: list[str] = field(default_factory=list)  # grants, in order
    _ends: list[tuple[float, int, Turn, float]] = field(default_factory=list)

    def add(self, job: str, priority: str = "normal", slots: int = 1) -> None:
        self.share.join(job, priority)
        for i in range(slots):
            self.share.want(job, (job, i))

    def run_until(self, until: float, on_window: tuple[float, float] | None = None) -> None:
        while True:
            while (turn := self.share.grant(self.now)) is not None:
                what = self.reply(turn.job_id, self.now)
                if what == "done":
                    self.share.done(turn, self.now)
                    continue
                if isinstance(what, float):  # Wait that long
                    self.share.wait(turn, self.now, what)
                    continue
                self.order.append(turn.job_id)
                length = self.chunk_s[turn.job_id]()
                heapq.heappush(self._ends, (self.now + length, turn.number, turn, self.now))
            wake = [t for t in (self.share.next_change(self.now),) if t is not None]
            if self._ends:
                wake.append(self._ends[0][0])
            if not wake or min(wake) > until:
                self.now = until
                return
            self.now = min(wake)
            while self._ends and self._ends[0][0] <= self.now:
                end, _, turn, start = heapq.heappop(self._ends)
                lo, hi = on_window if on_window else (-1.0, float("inf"))
                self.held[turn.job_id] = (self.held.get(turn.job_id, 0.0)
                                          + max(0.0, min(end, hi) - max(start, lo)))
                self.share.end(turn, end)


def _fixed(s: float) -> Callable[[], float]:
    return lambda: s


def test_one_slot_alternates_between_two_coordinators() -> None:
    sim = _Sim(SlotShare(1), {"a": _fixed(10.0), "b": _fixed(10.0)})
    sim.add("a")
    sim.add("b")
    sim.run_until(95.0)
    assert sim.order == ["a", "b"] * 5


def test_two_slots_hold_a_chunk_of_each_job() -> None:
    sim = _Sim(SlotShare(2), {"a": _fixed(10.0), "b": _fixed(10.0)})
    sim.add("a", slots=2)
    sim.add("b", slots=2)
    sim.run_until(1.0)
    assert sorted(sim.order) == ["a", "b"]


def test_turns_are_fair_in_slot_seconds_not_in_chunks() -> None:
    # b's chunks are five times longer: it gets a fifth as many turns, the same slot time.
    sim = _Sim(SlotShare(1), {"a": _fixed(2.0), "b": _fixed(10.0)})
    sim.add("a")
    sim.add("b")
    sim.run_until(1000.0, on_window=(0.0, 1000.0))
    assert sim.held["a"] == pytest.approx(sim.held["b"], abs=10.0)
    assert sim.order.count("a") == pytest.approx(5 * sim.order.count("b"), abs=5)


@pytest.mark.parametrize("slots", [1, 3, 8])
def test_many_jobs_of_one_priority_get_equal_slot_time(slots: int) -> None:
    rng = random.Random(slots)
    jobs = [f"job{i}" for i in range(8)]
    # Chunks of 1-20 s, each job its own mean: fairness must not depend on chunk length.
    means = {j: rng.uniform(1.0, 20.0) for j in jobs}
    def draw(mean: float) -> Callable[[], float]:
        return lambda: rng.uniform(0.5 * mean, 1.5 * mean)

    sim = _Sim(SlotShare(slots), {j: draw(means[j]) for j in jobs})
    for j in jobs:
        sim.add(j, "low" if slots == 3 else "normal", slots=slots)
    window = (200.0, 20_200.0)
    sim.run_until(window[1], on_window=window)
    total = sum(sim.held.values())
    assert total == pytest.approx(slots * (window[1] - window[0]), rel=0.01)  # never idle
    for j in jobs:
        # One turn of slack per slot, at most 30 s (1.5 x the longest mean): over 20,000 s
        # that is within a few percent of an equal share.
        assert sim.held[j] == pytest.approx(total / 8, abs=slots * 30.0 + 0.02 * total / 8), j


@pytest.mark.parametrize("slots", [1, 2])
def test_a_higher_priority_takes_every_turn_it_asks_for(slots: int) -> None:
    sim = _Sim(SlotShare(slots), {j: _fixed(3.0) for j in ("lo", "n1", "n2", "hi")})
    sim.add("lo", "low", slots=slots)
    sim.add("n1", "normal", slots=slots)
    sim.run_until(30.0)
    assert set(sim.order) == {"n1"}  # low waits behind normal
    sim.add("hi", "high", slots=slots)
    sim.add("n2", "normal", slots=slots)
    sim.order.clear()
    sim.run_until(300.0)
    # Once the running turns end (one per slot), only the high job gets turns.
    assert set(sim.order[slots:]) == {"hi"}
    assert sim.share.others_waiting("hi") is False  # lower jobs do not stop its prefetch
    assert sim.share.others_waiting("n1") is True and sim.share.others_waiting("lo") is True


def test_a_lower_job_has_the_slot_while_the_higher_one_waits() -> None:
    waits = {"hi": 1}  # the high job's coordinator has nothing for one claim (its tail)

    def reply(job: str, now: float) -> str | float:
        if job == "hi" and now >= 12.0 and waits["hi"] > 0:
            waits["hi"] -= 1
            return 5.0
        return "chunk"

    sim = _Sim(SlotShare(1), {"hi": _fixed(3.0), "lo": _fixed(3.0)}, reply=reply)
    sim.add("hi", "high")
    sim.add("lo", "low")
    sim.run_until(40.0)
    # hi at 0, 3, 6, 9; told Wait 5 s at 12: lo at 12 and 15; hi again from 18 on.
    assert sim.order[:7] == ["hi"] * 4 + ["lo"] * 2 + ["hi"]
    assert set(sim.order[7:]) == {"hi"}


def test_a_job_joining_during_anothers_turn_goes_next() -> None:
    share = SlotShare(1)
    share.join("a")
    share.want("a", "slot-a", now=0.0)
    turn = share.grant(0.0)
    assert turn is not None and turn.job_id == "a"
    share.join("b")
    share.want("b", "slot-b", now=0.5)  # b asks half a second into a's turn
    share.end(turn, 4.0)
    nxt = share.grant(4.0)
    # b competed from 0.5: it is owed the slot, not lifted to a's 4 s and tied with it.
    assert nxt is not None and nxt.job_id == "b"


def _finish_ratio(anna: str, anna_start: float = 0.0, chunks: int = 12) -> float:
    """anna's time to finish (from her start) over ben's, two jobs of ``chunks`` one-second
    chunks sharing two one-slot peers (swarm.simulate.run_shared: real Jobs, real shares)."""
    done = run_shared([SharedJob("anna", chunks, anna, anna_start),
                       SharedJob("ben", chunks, "normal", 0.0)], [1.0, 1.0])
    return (done["anna"] - anna_start) / done["ben"]


@pytest.mark.parametrize("anna_start", [0.0, 0.5, 2.0])
def test_a_high_job_finishes_at_about_half_the_normal_ones_time(anna_start: float) -> None:
    # Even arriving after ben has started on both peers: his running turns end, then the
    # peers are hers until her tail (the old 2:1 weighting ended her at 0.75 at best).
    assert _finish_ratio("high", anna_start) <= 0.55
    # At the same priority neither is ahead by more than the last round of chunks.
    assert 0.85 <= _finish_ratio("normal", anna_start) <= 1.15
    assert _finish_ratio("low", anna_start) >= 1.5  # low waits for ben's chunks


def test_a_shared_swarm_is_never_idle_while_a_job_has_chunks() -> None:
    # Whatever the priorities, the last chunk comes in when the work is done: the
    # makespan of both jobs is their 48 chunk-seconds over two peers, plus claims.
    for anna in ("low", "normal", "high"):
        done = run_shared([SharedJob("anna", 24, anna), SharedJob("ben", 24)], [1.0, 1.0],
                          claim_s=0.0)
        assert max(done.values()) == pytest.approx(24.0, abs=1.0), anna


def test_a_job_that_was_away_banks_no_credit() -> None:
    sim = _Sim(SlotShare(1), {"a": _fixed(5.0), "b": _fixed(5.0)})
    sim.add("a")
    sim.run_until(500.0)  # a alone for 500 s: b, absent, must not be owed 500 s
    sim.add("b")
    sim.order.clear()
    sim.run_until(600.0)
    assert sim.order[:6] in (["b", "a"] * 3, ["a", "b"] * 3)
    assert sim.order.count("b") <= sim.order.count("a") + 1


def test_a_job_told_to_wait_is_skipped_for_that_turn_and_not_owed_it() -> None:
    waits = {"b": 3}  # b's coordinator has nothing for its first three claims

    def reply(job: str, now: float) -> str | float:
        if waits.get(job, 0) > 0:
            waits[job] -= 1
            return 4.0
        return "chunk"

    sim = _Sim(SlotShare(1), {"a": _fixed(5.0), "b": _fixed(5.0)}, reply=reply)
    sim.add("a")
    sim.add("b")
    sim.run_until(200.0)
    # While b waited, a took the slot; afterwards the two alternate, with no burst of b.
    first_b = sim.order.index("b")
    assert first_b > 0 and set(sim.order[:first_b]) == {"a"}
    later = sim.order[first_b:]
    assert all(x != y for x, y in itertools.pairwise(later))


def test_a_job_whose_coordinator_is_done_gets_no_more_turns() -> None:
    def reply(job: str, now: float) -> str | float:
        return "done" if job == "b" and now >= 20.0 else "chunk"

    sim = _Sim(SlotShare(2), {"a": _fixed(5.0), "b": _fixed(5.0)}, reply=reply)
    sim.add("a", slots=2)
    sim.add("b", slots=2)
    sim.run_until(100.0)
    assert sim.share.finished("b") and not sim.share.finished("a")
    assert sim.share.running("b") == 0 and sim.share.next_change(sim.now) is None
    tail = sim.order[-10:]
    assert tail == ["a"] * 10  # both slots serve a now


def test_a_job_that_leaves_mid_turn_frees_its_slot() -> None:
    share = SlotShare(1)
    share.join("a")
    share.join("b")
    share.want("a", "slot-a")
    share.want("b", "slot-b")
    turn = share.grant(0.0)
    assert turn is not None and turn.job_id == "a" and share.grant(0.0) is None
    share.leave("a")
    share.end(turn, 3.0)  # the chunk's end after its job left: nothing to charge
    nxt = share.grant(3.0)
    assert nxt is not None and nxt == Turn("b", nxt.number, "slot-b")
    assert share.others_waiting("b") is False


def test_bad_priority_and_slots_are_refused() -> None:
    with pytest.raises(LocalProtocolError):
        SlotShare(0)
    with pytest.raises(LocalProtocolError):
        SlotShare(1).join("a", "urgent")


def test_a_wait_told_to_one_slot_does_not_hold_the_jobs_other_slots() -> None:
    share = SlotShare(2)
    share.join("a")
    share.want("a", 0)
    share.want("a", 1)
    t0, t1 = share.grant(0.0), share.grant(0.0)
    assert t0 is not None and t1 is not None and {t0.asker, t1.asker} == {0, 1}
    share.wait(t0, 1.0, 5.0)  # the coordinator's foresight: not this slot, not yet
    share.end(t1, 2.0)
    again = share.grant(2.0)
    assert again is not None and again.asker == t1.asker  # the other slot carries on
    assert share.grant(2.0) is None and share.next_change(2.0) == 6.0
    share.end(again, 3.0, again=False)
    held = share.grant(6.0)
    assert held is not None and held.asker == t0.asker
    assert share.done(held, 7.0) == [] and share.finished("a")
