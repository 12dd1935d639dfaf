"""Scheduling policies over the real Job, and simulated swarms in virtual time."""

from __future__ import annotations

import itertools

import pytest

from swarm.errors import LocalProtocolError
from swarm.job import AttemptOutcome, Finished, Grant, Job, Retry
from swarm.scheduler import SPLIT_SETTLE_S
from swarm.simulate import make_scenario, run


def _assign(action: Grant | Retry | Finished) -> Grant:
    assert isinstance(action, Grant), action
    return action


# -- swarm policy -----------------------------------------------------------------------
def test_slow_peer_waits_when_a_fast_one_will_be_free_sooner() -> None:
    job = Job([100, 100])
    job.add_peer("fast", 10.0, 0.0)
    job.add_peer("pi", 1.0, 0.0)
    _assign(job.claim("fast", 0.0))  # busy until t=10
    held = job.claim("pi", 0.0)  # pi: t=100; fast: t=20
    assert isinstance(held, Retry)
    assert held.retry_after_s > job.retry_after_s  # no point polling twice a second
    second = _assign(job.claim("fast", 0.0, prefetch=True))
    assert second.chunk == 1 and second.queued


def test_slow_peer_works_while_there_is_plenty() -> None:
    job = Job([100] * 20)
    job.add_peer("fast", 10.0, 0.0)
    job.add_peer("pi", 1.0, 0.0)
    _assign(job.claim("fast", 0.0))
    # Fast alone needs 190 s for the other 19 chunks; pi's one takes 100 s.
    assert _assign(job.claim("pi", 0.0)).chunk == 1


def test_tail_duplicate_wins_and_the_loser_is_cancelled() -> None:
    job = Job([100])
    job.add_peer("pi", 1.0, 0.0)
    slow = _assign(job.claim("pi", 0.0))
    assert job.progress(slow.attempt, 5, 5.0)
    job.add_peer("fast", 10.0, 6.0)
    dup = _assign(job.claim("fast", 6.0))
    assert dup.duplicate and dup.chunk == slow.chunk and dup.attempt != slow.attempt
    assert job.succeeded(dup.attempt, 16.0)
    assert job.attempts[slow.attempt].outcome is AttemptOutcome.CANCELLED
    assert not job.progress(slow.attempt, 20, 17.0)  # the shell stops the encode
    assert not job.succeeded(slow.attempt, 100.0)
    assert job.done and job.frames_done == 100
    assert isinstance(job.claim("pi", 101.0), Finished)


def test_no_duplicate_when_it_would_not_finish_sooner() -> None:
    job = Job([100])
    job.add_peer("a", 10.0, 0.0)
    _assign(job.claim("a", 0.0))
    job.add_peer("b", 10.0, 1.0)
    assert isinstance(job.claim("b", 1.0), Retry)


def test_idle_peer_steals_a_prefetched_unstarted_chunk() -> None:
    job = Job([100, 100])
    job.add_peer("pi", 1.0, 0.0)
    first = _assign(job.claim("pi", 0.0))
    queued = _assign(job.claim("pi", 0.0, prefetch=True))
    assert queued.queued and queued.chunk == 1
    assert isinstance(job.claim("pi", 0.0, prefetch=True), Retry)  # one prefetch at a time
    job.add_peer("fast", 10.0, 1.0)
    stolen = _assign(job.claim("fast", 1.0))
    assert stolen.chunk == 1 and stolen.replaces == queued.attempt and not stolen.duplicate
    assert job.attempts[queued.attempt].outcome is AttemptOutcome.CANCELLED
    assert not job.progress(queued.attempt, 0, 100.0)  # pi finds out when it gets to it
    assert job.progress(first.attempt, 50, 50.0)


def test_prefetched_chunk_keeps_its_lease_while_the_peer_reports() -> None:
    job = Job([10, 10], lease_s=10)
    a = _assign(job.claim("p", 0.0))
    b = _assign(job.claim("p", 0.0, prefetch=True))
    for t in (5.0, 10.0, 15.0):
        assert job.progress(a.attempt, int(t), t)
    assert job.tick(19.0) == []
    assert job.attempts[b.attempt].running


def test_speed_follows_achieved_rates() -> None:
    job = Job([100] * 6)
    job.add_peer("p", 10.0, 0.0)  # the benchmark says 10 work/s; it really does 2
    t = 0.0
    for _ in range(6):
        a = _assign(job.claim("p", t))
        t += 50.0
        assert job.succeeded(a.attempt, t)
    # The first result replaces the benchmark; later ones are averaged in.
    assert job.speed("p") == pytest.approx(2.0)


def test_a_slower_live_rate_is_believed_before_the_chunk_ends() -> None:
    job = Job([100, 100])
    job.add_peer("p", 10.0, 0.0)
    a = _assign(job.claim("p", 0.0))
    job.progress(a.attempt, 0, 0.0)
    job.progress(a.attempt, 20, 10.0)  # the rate counts from here (see _rate)
    assert job.speed("p") == 10.0
    job.progress(a.attempt, 40, 20.0)  # 2 frames/s, not 10
    assert job.speed("p") == pytest.approx(2.0)
    job.set_speed("p", 7.0)
    assert job.speed("p") == 7.0


def test_work_is_frames_times_pixels() -> None:
    job = Job([10, 20], pixels=1920 * 1080)
    assert job.work == [10 * 1920 * 1080, 20 * 1920 * 1080]
    with pytest.raises(LocalProtocolError):
        Job([10], work_per_chunk=[1.0, 2.0])
    with pytest.raises(LocalProtocolError):
        Job([10], policy="lottery")


# -- baselines --------------------------------------------------------------------------
def test_fifo_gives_the_last_chunk_to_whoever_asks_and_never_duplicates() -> None:
    job = Job([100, 100], policy="fifo")
    job.add_peer("fast", 10.0, 0.0)
    job.add_peer("pi", 1.0, 0.0)
    _assign(job.claim("fast", 0.0))
    assert _assign(job.claim("pi", 0.0)).chunk == 1
    assert isinstance(job.claim("fast", 10.0), Retry)


def test_equal_splits_round_robin_and_shares_out_the_departed() -> None:
    job = Job([1] * 6, policy="equal")
    job.add_peer("a", 1.0, 0.0)
    # The split waits SPLIT_SETTLE_S after the first claim for the peers invited with "a".
    first = job.claim("a", 0.0)
    assert isinstance(first, Retry) and first.retry_after_s == pytest.approx(SPLIT_SETTLE_S)
    job.add_peer("b", 1.0, 0.5)
    t = SPLIT_SETTLE_S
    got_a = [_assign(job.claim("a", t)).chunk for _ in range(2)]
    assert got_a == [0, 2]
    assert isinstance(job.claim("late", t), Retry)  # not known at the split
    b = _assign(job.claim("b", t))
    assert b.chunk == 1
    assert [r.chunk for r in job.peer_left("b", t + 1.0)] == [1]
    rest = [_assign(job.claim("a", t + 2.0)).chunk for _ in range(4)]
    assert sorted(rest) == [1, 3, 4, 5]
    assert isinstance(job.claim("a", t + 2.0), Retry)


def test_equal_requeues_an_expired_lease_to_the_others() -> None:
    job = Job([1] * 4, policy="equal", lease_s=5)
    for p in ("a", "b"):
        job.add_peer(p, 1.0, 0.0)
    job.claim("b", 0.0)
    lost = _assign(job.claim("b", SPLIT_SETTLE_S))
    assert [r.chunk for r in job.tick(SPLIT_SETTLE_S + 5.0)] == [lost.chunk]
    got = [_assign(job.claim("a", 7.0)).chunk for _ in range(4)]
    assert sorted(got) == [0, 1, 2, 3]


@pytest.mark.parametrize("policy", ["swarm", "fifo"])
def test_a_retried_chunk_goes_ahead_of_new_ones(policy: str) -> None:
    # The seed's job queue: FIFO, with a raised priority for retries. A chunk whose attempt
    # failed (or whose lease expired) is the next one handed out, before chunks 3..9.
    job = Job([100] * 10, policy=policy, lease_s=5)
    for p in ("a", "b"):
        job.add_peer(p, 10.0, 0.0)
    t = SPLIT_SETTLE_S
    first = _assign(job.claim("a", t))
    second = _assign(job.claim("b", t))
    assert job.failed(first.attempt, t + 1.0, "encoder crashed")
    again = _assign(job.claim("a", t + 1.0))
    assert again.chunk == first.chunk and again.attempt != first.attempt
    assert job.progress(again.attempt, 10, t + 5.0)
    expired = job.tick(t + 6.0)  # b never reported: its lease ran out
    assert [r.chunk for r in expired] == [second.chunk]
    assert _assign(job.claim("a", t + 6.0)).chunk == second.chunk


# -- simulated swarms -------------------------------------------------------------------
@pytest.mark.parametrize("traits", [
    {},
    {"wifi": 0.3},
    {"wrong_bench": 0.2},
    {"late": 0.1, "leave": 0.1, "die": 0.1},
])
def test_swarm_is_near_the_bound_and_beats_the_baselines(traits: dict[str, float]) -> None:
    sc = make_scenario("t", 40, chunks_per_peer=16, **traits)  # type: ignore[arg-type]
    results = {p: run(sc, p) for p in ("swarm", "fifo", "equal")}
    assert all(r.finished for r in results.values())
    assert results["swarm"].ratio <= 1.10
    assert results["swarm"].makespan < results["fifo"].makespan
    assert results["swarm"].makespan < results["equal"].makespan


def test_simulated_chunks_complete_exactly_once() -> None:
    sc = make_scenario("t", 30, chunks_per_peer=6, late=0.2, leave=0.1, die=0.1,
                       wrong_bench=0.2, seed=3)
    captured: list[Job] = []
    import swarm.simulate as simulate

    class Spy(Job):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            captured.append(self)

    orig = simulate.Job
    simulate.Job = Spy  # type: ignore[misc]
    try:
        assert run(sc, "swarm").finished
    finally:
        simulate.Job = orig  # type: ignore[misc]
    job = captured[0]
    for c in job.chunks:
        ok = [x for x in c.attempts if job.attempts[x].outcome is AttemptOutcome.OK]
        assert ok == [c.winner]
    assert job.frames_done == sum(sc.frames) and not job.running()


def test_unmeasured_peer_with_a_pessimistic_benchmark_still_gets_a_chunk() -> None:
    """bench/hetero: a quota-bound peer's benchmark came out 15x too low; held back by
    foresight it never encoded a chunk, so its estimate never improved."""
    from swarm.job import Grant, Job

    job = Job([100] * 20, pixels=1000)
    job.add_peer("fast", 1e6, 0.0)
    job.add_peer("slow", 1e3, 0.0)  # the (wrong) guess: 1000x slower
    assert isinstance(job.claim("fast", 0.0), Grant)
    first = job.claim("slow", 0.0)
    assert isinstance(first, Grant)  # explores once while plenty is pending
    assert job.succeeded(first.attempt, 1.0)  # it was in fact quick
    assert job.speed("slow") is not None and job.speed("slow") > 1e3


# -- pieces: chunks cut to the claimer's share (swarm.scheduler, item 4) ---------------------
def _tiles(job: Job) -> list[tuple[int, int]]:
    """(first, frames) of every chunk in source order; asserts they tile the job exactly."""
    order = job.in_order()
    for a, b in itertools.pairwise(order):
        assert a.first + a.frames == b.first
    assert order[0].first == 0
    return [(c.first, c.frames) for c in order]


def test_a_slow_peer_gets_a_piece_cut_to_its_share() -> None:
    # bench/hetero's 15 s clip: three 5 s chunks of 150 frames, keyframes every 30.
    job = Job([150] * 3, cuts=[[30, 60, 90, 120]] * 3, min_piece=60, expected_slots=3)
    for peer, speed in (("slow", 1.0), ("mid", 2.0), ("fast", 3.0)):
        job.add_peer(peer, speed, 0.0)
        job.observe(peer, speed * 10, 10.0)  # measured at that speed: no hedging
    fast = _assign(job.claim("fast", 0.0))
    mid = _assign(job.claim("mid", 0.0))
    slow = _assign(job.claim("slow", 0.0))
    # Fluid shares of 450 frames at 1:2:3 are 75 / 150 / 225 frames.
    assert job.chunks[fast.chunk].frames == 150 and fast.split is None
    assert job.chunks[mid.chunk].frames == 150 and mid.split is None
    assert slow.split is not None and job.chunks[slow.chunk].frames == 60
    rest = job.chunks[slow.split]
    assert rest.frames == 90 and rest.first == job.chunks[slow.chunk].first + 60
    assert job.work[slow.chunk] + job.work[slow.split] == 150  # work shared by frames
    assert _tiles(job) == [(0, 150), (150, 150), (300, 60), (360, 90)]


def test_unmeasured_devices_take_small_pieces_and_prefetch_once_reports_are_trusted() -> None:
    """Benchmarks taken on a busy machine came out 3-15x too high, and unevenly: until a
    device has a result, among others it takes at most W / (2 x slots)."""
    job = Job([150] * 3, cuts=[[30, 60, 90, 120]] * 3, min_piece=60, expected_slots=3)
    for peer, speed in (("slow", 1.0), ("mid", 2.0), ("fast", 3.0)):
        job.add_peer(peer, speed, 0.0)
    fast = _assign(job.claim("fast", 0.0))
    assert job.chunks[fast.chunk].frames == 60  # <= 450 / 6
    # It should be free at 20 s by its benchmark (3 frames/s), but nothing confirms that.
    assert isinstance(job.claim("fast", 18.0, prefetch=True), Retry)
    assert job.progress(fast.attempt, 0, 1.0) and job.progress(fast.attempt, 15, 6.0)
    assert isinstance(job.claim("fast", 6.0, prefetch=True), Retry)  # one report is no rate
    assert job.progress(fast.attempt, 51, 18.0)  # 3 frames/s since 6 s: free at 21 s
    assert _assign(job.claim("fast", 18.0, prefetch=True)).queued  # reports agree
    # One device's slots are alike: alone, it is not hedged.
    alone = Job([150] * 3, cuts=[[30, 60, 90, 120]] * 3, min_piece=60, expected_slots=2)
    alone.add_peer("local", 1.0, 0.0, slots=2)
    assert _assign(alone.claim("local", 0.0)).split is None


def test_equal_peers_keep_the_planned_chunks() -> None:
    job = Job([150] * 4, cuts=[[30, 60, 90, 120]] * 4, min_piece=60, expected_slots=2)
    for peer in ("a", "b"):
        job.add_peer(peer, 1.0, 0.0)
        job.observe(peer, 10.0, 10.0)  # measured alike
    grants = [_assign(job.claim(p, 0.0)) for p in ("a", "b")]
    assert all(g.split is None for g in grants) and len(job.chunks) == 4


def test_no_piece_is_shorter_than_min_piece() -> None:
    job = Job([100], cuts=[[10, 20, 50, 90]], min_piece=30, expected_slots=2)
    job.add_peer("fast", 2.0, 0.0)
    job.add_peer("slow", 1.0, 0.0)
    g = _assign(job.claim("slow", 0.0))  # its share: a third of the work, 33 frames
    assert g.split is not None and job.chunks[g.chunk].frames == 50  # not 10 or 20
    assert isinstance(job.claim("fast", 0.0), Grant)
    assert _tiles(job) == [(0, 50), (50, 50)]
    with pytest.raises(LocalProtocolError):
        job.scheduler.split(1, 10)  # would leave a 10-frame piece


def test_the_opening_round_hedges_a_slow_peer_that_claims_first() -> None:
    """Only the slow peer has claimed: the others the plan expects count at its speed, a
    piece is at most a sixth of the work, and no prefetch is sized before they come."""
    job = Job([150] * 3, cuts=[[30, 60, 90, 120]] * 3, min_piece=60, expected_slots=3)
    job.add_peer("slow", 1.0, 0.0)
    g = _assign(job.claim("slow", 0.0))
    assert job.chunks[g.chunk].frames == 60  # <= 450 / 6, at a keyframe
    assert isinstance(job.claim("slow", 0.0, prefetch=True), Retry)
    # Without cut points the plan is kept as it was: whole chunks, prefetch as before.
    plain = Job([150] * 3, expected_slots=3)
    plain.add_peer("slow", 1.0, 0.0)
    assert _assign(plain.claim("slow", 0.0)).split is None
    assert _assign(plain.claim("slow", 0.0, prefetch=True)).queued


def test_a_prefetch_is_sized_shortly_before_its_slot_is_free() -> None:
    from swarm.scheduler import PREFETCH_LEAD_S

    job = Job([300] * 4, cuts=[list(range(30, 300, 30))] * 4, min_piece=60,
              expected_slots=1)
    job.add_peer("p", 10.0, 0.0)
    job.observe("p", 100.0, 10.0)  # measured: its estimates are its own
    first = _assign(job.claim("p", 0.0))  # its slot is busy for 30 s
    early = job.claim("p", 1.0, prefetch=True)
    assert isinstance(early, Retry)
    ready = job.attempts[first.attempt].est_finish
    assert early.retry_after_s == pytest.approx(ready - 1.0 - PREFETCH_LEAD_S)
    late = _assign(job.claim("p", ready - PREFETCH_LEAD_S + 0.1, prefetch=True))
    assert late.queued


def test_a_slow_peer_waits_when_even_the_smallest_piece_would_end_last() -> None:
    job = Job([120], cuts=[[30, 60, 90]], min_piece=60, expected_slots=2)
    for peer, speed in (("fast", 10.0), ("slow", 0.5)):
        job.add_peer(peer, speed, 0.0)
        job.observe(peer, speed * 10, 10.0)  # measured: no exploring chunk, no hedging
    held = job.claim("slow", 0.0)  # 60 frames take it 120 s; fast does all 120 in 12 s
    assert isinstance(held, Retry)
    g = _assign(job.claim("fast", 0.0))
    assert g.split is None and job.chunks[g.chunk].frames == 120


def test_cut_pieces_complete_exactly_once_and_beat_the_whole_chunks() -> None:
    """bench/hetero's swarm in virtual time (swarm.simulate.hetero_scenario): every frame
    is encoded exactly once, the pieces tile the source, and the efficiency on the 15 s
    clip is what whole 5 s chunks cannot reach."""
    import inspect

    import swarm.simulate as simulate
    from swarm.simulate import hetero_efficiency, hetero_scenario

    captured: list[Job] = []

    class Spy(Job):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            captured.append(self)

    Spy.__signature__ = inspect.signature(Job)  # type: ignore[attr-defined]
    orig = simulate.Job
    simulate.Job = Spy  # type: ignore[misc]
    try:
        sc = hetero_scenario("15 s", 15.0, cut=True)
        assert simulate.run(sc, "swarm").finished
    finally:
        simulate.Job = orig  # type: ignore[misc]
    job = captured[0]
    assert len(job.chunks) > len(sc.frames)  # it did cut
    assert sum(f for _, f in _tiles(job)) == sum(sc.frames) == job.frames_done
    for c in job.chunks:
        ok = [x for x in c.attempts if job.attempts[x].outcome is AttemptOutcome.OK]
        assert ok == [c.winner]
        assert c.frames >= sc.min_piece or c.frames == min(sc.frames)
    for seconds in (15.0, 60.0):
        cut, whole = (hetero_efficiency(seconds, cut=x) for x in (True, False))
        assert cut >= 0.9 and cut > whole


def test_finish_estimates_count_the_frames_the_encoder_still_holds() -> None:
    """ffmpeg counts a frame done when it enters the encoder: x264's lookahead takes ~40 at
    once, which come out only at the end."""
    for pipeline, finish in ((0, 15.0), (40, 19.0)):
        job = Job([200], pipeline_frames=pipeline)
        job.add_peer("p", 10.0, 0.0)
        a = _assign(job.claim("p", 0.0))
        job.progress(a.attempt, 60, 1.0)  # the lookahead's burst: the rate counts from here
        job.progress(a.attempt, 80, 3.0)  # 10 frames/s
        assert job.attempts[a.attempt].est_finish == pytest.approx(finish)


# -- a ladder's renditions parted at the tail (swarm.scheduler, item 5) --------------------
LADDER = (0.6, 0.27, 0.13)  # 1080p, 720p and 480p's shares of a chunk's encode
N = 300  # frames a chunk (10 s at 30 fps): PART_FIXED_FRAMES is small against it


def _ladder_job(chunks: int, peers: list[str]) -> Job:
    job = Job([N] * chunks, rung_shares=LADDER)
    for p in peers:
        job.add_peer(p, 1.0, 0.0)
    return job


def test_the_last_ladder_chunk_is_parted_between_two_idle_peers() -> None:
    job = _ladder_job(1, ["a", "b"])
    g = _assign(job.claim("a", 0.0))
    assert g.rungs == (0,) and g.split == 1  # the top rung; the two others stay pending
    h = _assign(job.claim("b", 0.0))
    assert h.chunk == 1 and h.rungs is None
    groups = job.scheduler.groups
    assert groups[0] == (0,) and groups[1] == (1, 2)
    assert job.chunks[1].frames == job.chunks[0].frames == N
    assert job.chunks[1].first == job.chunks[0].first == 0
    # Each part pays its own decode: together more than the whole chunk, each less.
    work = job.scheduler.work
    assert max(work[0], work[1]) < N < work[0] + work[1]
    assert job.succeeded(g.attempt, 76.0)
    assert job.whole_done(0) is None and job.frames_done == 0 and not job.done
    assert job.succeeded(h.attempt, 64.0)
    assert job.whole_done(0) == job.whole_done(1) == 0
    assert job.frames_done == N and job.done


def test_a_failed_part_comes_back_with_its_rungs() -> None:
    job = _ladder_job(1, ["a", "b"])
    g = _assign(job.claim("a", 0.0))
    job.failed(g.attempt, 1.0, "broken")
    again = _assign(job.claim("a", 2.0))
    assert again.chunk == 0 and job.scheduler.groups[0] == (0,)
    assert job.scheduler.groups[1] == (1, 2)  # still pending: the other part


def test_ladder_chunks_stay_whole_while_every_slot_has_one() -> None:
    job = _ladder_job(3, ["a", "b"])
    first = [_assign(job.claim(p, 0.0)) for p in ("a", "b")]
    assert all(g.rungs is None and g.split is None for g in first)
    for g in first:
        job.succeeded(g.attempt, 300.0)
    last = _assign(job.claim("a", 300.0))  # one chunk, two idle slots: the tail
    assert last.rungs is not None


def test_two_ladder_chunks_for_three_peers_stay_whole() -> None:
    """Parting one of them would not end the job sooner: the other takes as long whole."""
    job = _ladder_job(2, ["a", "b", "c"])
    grants = [job.claim(p, 0.0) for p in ("a", "b", "c")]
    assert [g.rungs for g in grants if isinstance(g, Grant)] == [None, None]
    assert len(job.chunks) == 2


def test_without_a_ladder_no_chunk_is_parted() -> None:
    job = Job([N])
    for p in ("a", "b"):
        job.add_peer(p, 1.0, 0.0)
    g = _assign(job.claim("a", 0.0))
    assert g.rungs is None and g.split is None and len(job.chunks) == 1
    with pytest.raises(LocalProtocolError):
        Job([100], rung_shares=(1.0,))


def test_a_prefetch_parts_the_last_ladder_chunk() -> None:
    """With prefetching the tail's last chunk is claimed ahead, by a busy peer."""
    job = _ladder_job(3, ["a", "b"])
    first = [_assign(job.claim(p, 0.0)) for p in ("a", "b")]
    for g in first:
        job.progress(g.attempt, 50, 50.0)
    ahead = _assign(job.claim("a", 50.0, prefetch=True))
    assert ahead.queued and ahead.chunk == 2 and ahead.rungs == (0,)
    rest = _assign(job.claim("b", 50.0, prefetch=True))
    assert rest.queued and rest.chunk == 3 and job.scheduler.groups[3] == (1, 2)


def test_a_peer_that_accepted_the_job_counts_for_parting() -> None:
    job = _ladder_job(1, ["a"])
    job.scheduler.awaited = 1  # "b" accepted its invite and has not claimed yet
    g = _assign(job.claim("a", 0.0))
    assert g.rungs == (0,) and g.split == 1
    job.add_peer("b", 1.0, 0.5)
    assert _assign(job.claim("b", 0.5)).chunk == 1
    lone = _ladder_job(1, ["a"])
    assert _assign(lone.claim("a", 0.0)).rungs is None  # nobody else to take a part


def test_the_slots_of_one_device_do_not_part_a_chunk() -> None:
    """They share its cores: a part would only add a decode (bench/parting)."""
    job = Job([N], rung_shares=LADDER, expected_slots=2)
    job.add_peer("local", 1.0, 0.0, slots=2)
    g = _assign(job.claim("local", 0.0))
    assert g.rungs is None and g.split is None


def test_the_opening_round_parts_for_the_peers_the_plan_expects() -> None:
    job = Job([N], rung_shares=LADDER, expected_slots=2)  # two --peer named
    job.add_peer("a", 1.0, 0.0)
    assert _assign(job.claim("a", 0.0)).rungs == (0,)


def test_a_peer_does_not_prefetch_the_other_part_of_its_chunk() -> None:
    job = Job([N], rung_shares=LADDER, expected_slots=2)
    job.add_peer("a", 1.0, 0.0)
    g = _assign(job.claim("a", 0.0))
    job.progress(g.attempt, 50, 50.0)
    assert isinstance(job.claim("a", 50.0, prefetch=True), Retry)  # left for "b"
    job.succeeded(g.attempt, 76.0)
    assert _assign(job.claim("a", 76.0)).chunk == 1  # "b" never came: idle, it takes it


def test_a_short_chunk_is_not_parted() -> None:
    """A part's fixed cost (one more result to check) outweighs what 2 s would save."""
    job = Job([60], rung_shares=LADDER)
    for p in ("a", "b"):
        job.add_peer(p, 1.0, 0.0)
    assert _assign(job.claim("a", 0.0)).rungs is None
