"""When repeated failures end a job, and how a left-out peer is explained (pure, no I/O)."""

from __future__ import annotations

from swarm.job import Grant, Job
from swarm.verdict import (
    BENCH_GRACE_S,
    SAME_FAILURES,
    hopeless_chunk,
    left_out,
    nobody_left,
    reason_key,
)

VFR = "verification: frame {} at 0.041667 s, expected 0.033333 s"


def _fail(job: Job, peer: str, now: float, reason: str) -> int:
    a = job.claim(peer, now)
    assert isinstance(a, Grant), a
    job.failed(a.attempt, now + 0.5, reason)
    return a.chunk


def test_reason_key_blanks_numbers_only() -> None:
    assert reason_key(VFR.format(1)) == reason_key(VFR.format(2))
    assert reason_key("chunk 0 failed: x265 [error]") == reason_key("chunk 7 failed: x265 "
                                                                    "[error]")
    assert reason_key("[out#0/nut @ 0x55e5d7b0e180] Nothing") == reason_key(
        "[out#0/nut @ 0x55f43e681180] Nothing")
    assert reason_key("upload: body too large") != reason_key("upload: connection reset")


def test_a_chunk_failing_the_same_way_on_a_one_node_job_ends_it_on_the_third_attempt() -> None:
    job = Job([10, 10], policy="fifo")
    job.add_peer("local", None, 0.0, slots=2)
    for n in range(1, SAME_FAILURES):
        assert _fail(job, "local", float(n), VFR.format(n)) == 0
        assert hopeless_chunk(job, 0, float(n) + 1) is None
    assert _fail(job, "local", 5.0, VFR.format(1)) == 0
    assert hopeless_chunk(job, 0, 6.0) == (
        "chunk 0 failed verification on all 3 attempts: frame 1 at 0.041667 s, "
        "expected 0.033333 s")
    assert hopeless_chunk(job, 1, 6.0) is None  # never tried


def test_a_peer_that_has_not_tried_the_chunk_keeps_the_job_alive() -> None:
    job = Job([10, 10], policy="fifo", max_failures=10)
    job.add_peer("local", None, 0.0, slots=2)
    job.add_peer("bravo", None, 0.0)
    for n in range(3):
        _fail(job, "local", float(n), "chunk 0 failed: ffmpeg exited 1")
    # bravo (another ffmpeg, another machine) may well encode it.
    assert hopeless_chunk(job, 0, 3.0) is None
    # ... unless bravo vanished without a word for longer than a lease.
    assert hopeless_chunk(job, 0, 3.0 + job.lease_s + 1) is not None
    assert _fail(job, "bravo", 4.0, "chunk 0 failed: ffmpeg exited 1") == 0
    assert hopeless_chunk(job, 0, 5.0) == "chunk 0 failed on all 4 attempts: ffmpeg exited 1"


def test_different_reasons_running_attempts_and_awaited_peers_are_not_hopeless() -> None:
    job = Job([10, 10], policy="fifo", max_failures=10)
    job.add_peer("local", None, 0.0, slots=2)
    for n, why in enumerate(("upload: connection reset", VFR.format(1), "upload: timed out")):
        _fail(job, "local", float(n), why)
    assert hopeless_chunk(job, 0, 5.0) is None  # three failures, no three the same way
    _fail(job, "local", 5.0, "upload: connection reset")
    assert hopeless_chunk(job, 0, 6.0) is None
    _fail(job, "local", 6.0, "upload: connection reset")
    assert hopeless_chunk(job, 0, 7.0) == ("chunk 0 failed upload on 3 of 5 attempts: "
                                           "connection reset")
    assert hopeless_chunk(job, 0, 7.0, waiting_for={"bravo"}) is None  # invited, not yet in
    job2 = Job([10], policy="fifo", max_failures=10)
    job2.add_peer("local", None, 0.0, slots=2)
    for n in range(3):
        _fail(job2, "local", float(n), "broken")
    running = job2.claim("local", 4.0)
    assert isinstance(running, Grant)
    assert hopeless_chunk(job2, 0, 4.5) is None  # the fourth try may still succeed


def test_a_benched_peer_is_named_with_its_reason_and_an_empty_swarm_ends_after_grace() -> None:
    job = Job([10, 10, 10, 10], policy="fifo", max_failures=3)
    job.add_peer("n1", None, 0.0)
    ok = job.claim("n1", 0.0)
    assert isinstance(ok, Grant) and job.succeeded(ok.attempt, 1.0)
    for n in range(3):
        _fail(job, "n1", 2.0 + n, f"chunk {n + 1} failed: x265 [error]: picture dimensions "
                                  "are out of range for specified level")
    assert "n1" in job.benched and job.benched_at["n1"] == 4.5
    why = left_out(job, "n1", {"n1": "bravo"})
    assert why == ("bravo left out after 3 failed attempts (all the same way; 1 chunk "
                   "done): chunk 3 failed: x265 [error]: picture dimensions are out of "
                   "range for specified level")
    assert nobody_left(job, 5.0) is None  # a peer invited meanwhile may still claim
    end = nobody_left(job, 4.5 + BENCH_GRACE_S, {"n1": "bravo"})
    assert end == f"every encoder failed: {why}"
    assert nobody_left(job, 5.0, grace_s=0.0) is not None  # nobody else can come
    job.add_peer("n2", None, 6.0)
    assert nobody_left(job, 100.0) is None  # a working peer is left


def test_a_peer_benched_on_its_first_failure_is_named_in_the_singular() -> None:
    # Another encoder's parameter sets bench a peer at once (Job.failed(bench=True)).
    job = Job([10, 10], policy="fifo")
    job.add_peer("n1", None, 0.0)
    g = job.claim("n1", 0.0)
    assert isinstance(g, Grant)
    job.failed(g.attempt, 1.0, "decoding parameter sets differ", bench=True)
    assert left_out(job, "n1") == ("n1 left out after 1 failed attempt (0 chunks done): "
                                   "decoding parameter sets differ")
