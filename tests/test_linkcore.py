"""Links and silence in the sans-I/O core: plain synchronous tests in virtual time."""

from __future__ import annotations

import dataclasses

import pytest

from swarm.errors import LocalProtocolError
from swarm.job import DROP_GRACE_S, SILENT_S, AttemptOutcome, Finished, Grant, Job, Retry
from swarm.simulate import (
    FHD,
    MBIT,
    PeerSpec,
    Scenario,
    _share,
    lan_scenarios,
    lower_bound,
    make_scenario,
    run,
)


def _assign(action: Grant | Retry | Finished) -> Grant:
    assert isinstance(action, Grant), action
    return action


# -- no stalls when a peer dies -----------------------------------------------------------
def test_a_silent_peer_loses_held_and_prefetched_chunks_within_silent_s() -> None:
    """A peer SIGKILLed while it held one chunk and had prefetched the next: both come back
    SILENT_S after its last report, not after the lease (15 s in the shell)."""
    job = Job([100] * 3, lease_s=15.0, silent_s=SILENT_S)
    job.add_peer("peer", 10.0, 0.0)
    held = _assign(job.claim("peer", 0.0))
    queued = _assign(job.claim("peer", 0.0, prefetch=True))
    assert queued.queued
    for t in (1.0, 2.0, 3.0):
        assert job.progress(held.attempt, int(10 * t), t)
    # Killed at 3.5 s: nothing more is heard.
    assert job.next_deadline() == pytest.approx(3.0 + SILENT_S)
    assert job.tick(3.0 + SILENT_S - 0.01) == []
    back = job.tick(3.0 + SILENT_S)
    assert sorted(r.chunk for r in back) == [held.chunk, queued.chunk]
    assert all(r.reason.startswith("peer silent") for r in back)
    for x in (held.attempt, queued.attempt):
        assert job.attempts[x].outcome is AttemptOutcome.EXPIRED
    assert job.failures == {}  # dying is not failing: no bench
    # The requeued chunks go out at once, the held one first.
    job.add_peer("other", 10.0, 6.0)
    assert _assign(job.claim("other", 6.0)).chunk == held.chunk
    # A late report from the dead attempt is told to stop.
    assert not job.progress(held.attempt, 50, 6.5)


def test_silence_needs_opting_in_and_spares_the_coordinators_own_slots() -> None:
    # Without silent_s only the lease counts (the behaviour existing callers rely on).
    job = Job([10, 10], lease_s=10.0)
    a = _assign(job.claim("p", 0.0))
    assert job.tick(9.9) == [] and job.attempts[a.attempt].running
    # heartbeat=False: a local slot's first ffmpeg progress line may come late.
    job = Job([10, 10], lease_s=10.0, silent_s=SILENT_S)
    job.add_peer("local", 1.0, 0.0, heartbeat=False)
    a = _assign(job.claim("local", 0.0))
    assert job.tick(9.9) == []
    assert [r.chunk for r in job.tick(10.0)] == [a.chunk]  # the lease still holds


def test_no_silence_while_the_coordinator_verifies_a_result() -> None:
    job = Job([10, 10], silent_s=SILENT_S)
    a = _assign(job.claim("p", 0.0))
    b = _assign(job.claim("p", 0.0, prefetch=True))
    job.progress(a.attempt, 5, 1.0)
    job.delivering(a.attempt, 1.5)  # the upload is in; the peer waits for the answer
    assert job.tick(10.0) == []  # a slow check on a Pi must not cost the chunk
    assert job.succeeded(a.attempt, 10.0)
    # The peer gets its answer now, and from now on owes reports again.
    assert job.tick(10.0 + SILENT_S - 0.01) == []
    assert [r.chunk for r in job.tick(10.0 + SILENT_S)] == [b.chunk]


def test_a_result_being_verified_outlives_its_lease() -> None:
    """The coordinator's check of a result can take longer than the lease (a slideshow
    chunk re-rendered for its spot check beside a local slot): the chunk is not handed to
    someone else meanwhile, and its result still counts."""
    job = Job([10, 10, 10], lease_s=15.0, silent_s=SILENT_S)
    a = _assign(job.claim("p", 0.0))
    queued = _assign(job.claim("p", 0.0, prefetch=True))
    assert job.progress(a.attempt, 10, 20.0)
    job.delivering(a.attempt, 21.0)
    assert job.next_deadline() is None  # nothing of p's can expire while it is checked
    assert job.tick(60.0) == [] and job.attempts[a.attempt].running
    assert job.attempts[queued.attempt].running  # its prefetched chunk waits with it
    assert job.succeeded(a.attempt, 60.0)
    assert job.progress(queued.attempt, 1, 60.5)
    assert job.succeeded(queued.attempt, 61.0)
    # Without a delivery, the same silence of reports expires the lease as before.
    b = _assign(job.claim("p", 60.0))
    assert job.progress(b.attempt, 1, 61.0)
    job.silent_s = None
    assert [r.reason for r in job.tick(61.0 + 15.0)] == ["lease expired"]


def test_a_dropped_connection_loses_the_attempt_and_shortens_the_grace() -> None:
    job = Job([10] * 4, silent_s=SILENT_S, max_failures=1)
    a = _assign(job.claim("p", 0.0))
    b = _assign(job.claim("p", 0.0, prefetch=True))
    job.progress(a.attempt, 1, 1.0)
    assert [r.chunk for r in job.connection_lost(a.attempt, 1.2)] == [a.chunk]
    assert job.attempts[a.attempt].reason == "connection lost"
    assert "p" not in job.benched  # not the peer's fault
    assert job.next_deadline() == pytest.approx(1.2 + DROP_GRACE_S)
    assert [r.chunk for r in job.tick(1.2 + DROP_GRACE_S)] == [b.chunk]
    # A live peer says so within the grace (it claims again, or another slot reports).
    job = Job([10] * 4, silent_s=SILENT_S)
    a = _assign(job.claim("p", 0.0))
    b = _assign(job.claim("p", 0.0, prefetch=True))
    job.connection_lost(a.attempt, 1.0)
    assert job.progress(b.attempt, 0, 1.5)
    assert job.tick(1.0 + DROP_GRACE_S) == [] and job.attempts[b.attempt].running


def test_silence_and_delivering_hold_for_pieces_cut_to_a_share() -> None:
    """A chunk cut to its claimer's share (Grant.split): the piece it holds goes back when
    it falls silent, its rest (never handed out) stays pending, each with its share of the
    chunk's source bytes; a piece being verified is spared like any chunk."""
    job = Job([150] * 3, cuts=[[30, 60, 90, 120]] * 3, min_piece=60, expected_slots=3,
              silent_s=SILENT_S, source_bytes=[3000.0] * 3)
    for peer, speed in (("slow", 1.0), ("mid", 2.0), ("fast", 3.0)):
        job.add_peer(peer, speed, 0.0)
        job.observe(peer, speed * 10, 10.0)
    fast = _assign(job.claim("fast", 0.0))
    mid = _assign(job.claim("mid", 0.0))
    slow = _assign(job.claim("slow", 0.0))
    assert slow.split is not None and job.chunks[slow.chunk].frames == 60
    assert job.scheduler.bytes[slow.chunk] == pytest.approx(1200.0)
    assert job.scheduler.bytes[slow.split] == pytest.approx(1800.0)
    for t in (1.0, 2.0):
        assert job.progress(fast.attempt, int(3 * t), t)
        assert job.progress(mid.attempt, int(2 * t), t)
    assert job.progress(slow.attempt, 1, 1.0)
    job.delivering(mid.attempt, 2.0)  # mid's result is in and being checked
    # slow is SIGKILLed after 1 s; fast reports on, mid waits for its answer.
    assert job.tick(1.0 + SILENT_S - 0.01) == []
    for t in (3.0, 4.0):
        assert job.progress(fast.attempt, int(3 * t), t)
    back = job.tick(1.0 + SILENT_S)
    assert [r.chunk for r in back] == [slow.chunk]
    assert back[0].reason.startswith("peer silent")
    assert job.attempts[mid.attempt].running and job.attempts[fast.attempt].running
    assert job.tick(6.5) == []  # mid, silent since 2 s, is being verified: owes nothing
    # The piece and its rest both go out again, each whole as cut.
    assert job.succeeded(mid.attempt, 6.5)
    again = _assign(job.claim("mid", 6.5))
    assert again.chunk in (slow.chunk, slow.split) and again.split is None


def test_foresight_stops_counting_on_a_silent_peer() -> None:
    """The dead fast peer must not keep the live slow one waiting for it."""
    job = Job([100] * 3, silent_s=SILENT_S, lease_s=15.0)
    job.add_peer("fast", 100.0, 0.0)
    job.add_peer("slow", 10.0, 0.0)
    job.observe("slow", 100.0, 10.0)  # measured: no exploring chunk for it
    _assign(job.claim("fast", 0.0))
    _assign(job.claim("fast", 0.0, prefetch=True))
    assert isinstance(job.claim("slow", 0.0), Retry)  # fast would do everything first
    assert len(job.tick(SILENT_S)) == 2  # fast died at once
    assert isinstance(job.claim("slow", SILENT_S), Grant)


# -- the scheduler knows each link --------------------------------------------------------
def test_link_is_learnt_from_transfers() -> None:
    job = Job([10], source_bytes=[1000])
    job.add_peer("p", 1.0, 0.0)
    assert job.link("p") is None
    job.observe_transfer("p", 1000, 10.0, 1.0)  # 100 B/s
    assert job.link("p") == pytest.approx(100.0)
    job.observe_transfer("p", 1000, 5.0, 2.0)  # faster: a link is at least that fast
    assert job.link("p") == pytest.approx(200.0)
    job.observe_transfer("p", 1000, 20.0, 3.0, saturated=False)  # paced by the encoder
    assert job.link("p") == pytest.approx(200.0)
    job.observe_transfer("p", 1000, 10.0, 4.0)  # a slower download: EWMA down
    assert job.link("p") == pytest.approx(150.0)
    job.observe_transfer("p", 0, 0.0, 5.0)  # nothing measured: ignored
    assert job.link("p") == pytest.approx(150.0)


def test_a_prefetch_whose_download_outlasts_the_others_work_is_held_back() -> None:
    """A phone on a slow link: its prefetch would arrive long after the PC is done with
    everything, so it is told to wait (without link knowledge it took the chunk)."""
    job = Job([100] * 3, source_bytes=[100] * 3)
    job.add_peer("pc", 10.0, 0.0)
    job.add_peer("phone", 10.0, 0.0)
    _assign(job.claim("pc", 0.0))
    _assign(job.claim("phone", 0.0))
    job.observe_transfer("phone", 100, 100.0, 0.5)  # 1 B/s: 100 s per chunk
    assert isinstance(job.claim("phone", 0.5, prefetch=True), Retry)
    last = _assign(job.claim("pc", 0.5, prefetch=True))
    assert last.queued
    # A fast link changes nothing: the same prefetch is granted.
    job = Job([100] * 3, source_bytes=[100] * 3)
    job.add_peer("pc", 10.0, 0.0)
    job.add_peer("phone", 10.0, 0.0)
    _assign(job.claim("pc", 0.0))
    _assign(job.claim("phone", 0.0))
    job.observe_transfer("phone", 100, 0.1, 0.5)
    assert _assign(job.claim("phone", 0.5, prefetch=True)).queued


def test_prefetch_estimate_waits_for_its_download() -> None:
    job = Job([100, 100], source_bytes=[1000, 1000])
    job.add_peer("p", 10.0, 0.0)
    job.observe_transfer("p", 1000, 50.0, 0.0)  # 20 B/s: 50 s per chunk
    a = _assign(job.claim("p", 0.0))
    b = _assign(job.claim("p", 0.0, prefetch=True))
    # Streamed: the achieved speed says it all; the prefetch cannot start before its
    # source is in (50 s), then encodes for 10 s at the latest.
    assert job.attempts[a.attempt].est_finish == pytest.approx(10.0)
    assert job.attempts[b.attempt].est_finish == pytest.approx(50.0)
    with pytest.raises(LocalProtocolError):
        Job([1, 1], source_bytes=[1])


# -- the simulated LAN --------------------------------------------------------------------
def test_fair_share_is_max_min() -> None:
    assert _share(10.0, [1.0, 100.0, 100.0]) == [1.0, 4.5, 4.5]
    assert _share(10.0, [2.0, 3.0]) == [2.0, 3.0]
    assert _share(10.0, []) == []


def test_lower_bound_counts_the_uplink_but_not_the_local_disk() -> None:
    fast = PeerSpec("r", speed=1e12, bench=1e12, bandwidth=1e9)
    sc = Scenario("t", (fast,), frames=(100,) * 10, pixels=1, bytes_per_frame=1000,
                  uplink=10 * MBIT)
    assert lower_bound(sc) == pytest.approx(1e6 / (10 * MBIT))  # 1 MB through 10 Mbit/s
    local = PeerSpec("l", speed=1e12, bench=1e12, bandwidth=1e9, local=True)
    assert lower_bound(Scenario("t", (local,), frames=(100,) * 10, pixels=1,
                                bytes_per_frame=1000, uplink=10 * MBIT)) < 1e-2


def test_lan_scenarios_stay_near_the_bandwidth_bound() -> None:
    phones = lan_scenarios()[0]
    r = run(phones, "swarm")
    assert r.finished and r.ratio <= 1.10
    assert r.bytes_sent >= sum(phones.source_bytes)


def test_simulated_peer_killed_after_claiming_costs_seconds_not_a_lease() -> None:
    """The issue's case in virtual time: a peer dies 0.5 s in, holding one chunk and a
    prefetched one; the other peer takes both over once the silence rule fires."""
    peers = (PeerSpec("a", 60 * FHD, 60 * FHD, 100e6),
             PeerSpec("b", 60 * FHD, 60 * FHD, 100e6, die=0.5))
    sc = Scenario("killed", peers, frames=(60,) * 4, lease_s=15.0)
    fast = run(sc, "swarm")
    slow = run(dataclasses.replace(sc, silent_s=None), "swarm")  # the lease alone
    assert fast.finished and slow.finished
    # b's last sign of life is its claim at 0: its chunks are back at SILENT_S (+ a tick).
    assert fast.makespan <= SILENT_S + 2 * 1.0 + 0.5
    assert slow.makespan >= fast.makespan + 3.0


def test_a_scenario_without_source_bytes_is_bound_by_the_cpus_alone() -> None:
    """A source of no bytes (a generated one, say) never waits on a link: the run finishes
    with the same makespan as with a negligible source, against the CPU-only bound."""
    sc = make_scenario("nobytes", 10)
    none = dataclasses.replace(sc, bytes_per_frame=0.0)
    tiny = dataclasses.replace(sc, bytes_per_frame=1e-6)
    a, b = run(none, "swarm"), run(tiny, "swarm")
    assert a.finished and b.finished
    assert a.makespan == b.makespan
    assert lower_bound(none) == lower_bound(tiny)
    assert a.makespan >= a.lower_bound
