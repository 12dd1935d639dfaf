"""The web page's board (swarm.board) and session cookie (swarm.websession), pure: events in,
snapshot out, time passed in."""

from __future__ import annotations

import json

import pytest

from swarm.board import MAX_DEVICES, MAX_JOBS, Board, Device
from swarm.events import (
    ChunkDone,
    ChunkFailed,
    ChunkParted,
    ChunkProgress,
    ChunkRequeued,
    ChunkSplit,
    ChunkStart,
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
    SlotEnd,
    SlotProgress,
    SlotStart,
)
from swarm.websession import (
    COOKIE,
    SESSION_S,
    check_session,
    new_session,
    secret_matches,
    session_from_header,
)

HERE = Device("n1", "laptop", "x86_64", 1.5, "idle", True, here=True)


def _start(frames: int = 400, chunks: int = 4) -> JobStart:
    return JobStart(input="/x/in.mp4", output="/x/out.mp4", profile="480p", frames=frames,
                    chunks=chunks, duration_s=16.0, width=640, height=480, workers=1,
                    ffmpeg="9", job_id="job12345", secret=False, network=True, name="laptop",
                    policy="swarm", peers_seen=0, chunk_s=4.0)


def _job(board: Board) -> dict[str, object]:
    jobs = board.snapshot(0.0)["jobs"]
    assert isinstance(jobs, list)
    return dict(jobs[0])


def test_a_job_from_queue_to_done_draws_its_chunk_map_progress_and_eta() -> None:
    board = Board(HERE, secret=False)
    board.queued("job12345", "in.mp4", "480p", 10.0, hls=True, download=True)
    assert _job(board)["state"] == "queued" and _job(board)["chunks"] == ""
    board.job_event("job12345", _start(), 10.0)
    assert _job(board)["chunks"] == "...."
    board.job_event("job12345", ChunkStart(0, "a0", "laptop", 100, False), 10.5)
    board.job_event("job12345", ChunkStart(2, "a1", "pi", 100, True), 10.5)
    assert _job(board)["chunks"] == "r.r."
    board.job_event("job12345", ChunkProgress(0, 50, "a0", "laptop", 25.0), 12.0)
    board.job_event("job12345", ChunkDone(2, "a1", "pi", 2.0, 100, 100), 12.0)
    snap = board.snapshot(12.0)
    job = dict(snap["jobs"][0])  # type: ignore[index]
    assert job["chunks"] == "r.d."
    assert job["progress"] == pytest.approx(150 / 400)
    # 2 s for 150 of 400 frames: 250 more at that rate.
    assert job["eta_s"] == pytest.approx(2.0 * 250 / 150, abs=0.1)
    assert job["hls"] is False  # nothing to play before the first segment
    board.job_event("job12345", HlsSegment(0, 4.0, 2.0), 12.1)
    assert _job(board)["hls"] is True
    board.job_event("job12345", Merge(), 14.0)
    assert _job(board)["state"] == "merging" and _job(board)["eta_s"] is None
    assert _job(board)["download"] is False  # not before it is done
    board.job_event("job12345", HlsEnd("/x/hls", 4, 2.0, 14.0), 14.0)
    board.job_event("job12345", JobEnd("/x/out.mp4", 4.0), 14.5)
    job = _job(board)
    assert (job["state"], job["chunks"], job["progress"], job["download"],
            job["hls_ended"]) == ("done", "dddd", 1.0, True, True)
    json.dumps(board.snapshot(15.0))  # what the page gets is plain JSON


def test_lost_and_failed_attempts_put_the_chunk_back_and_splits_grow_the_map() -> None:
    board = Board(HERE, secret=False)
    board.queued("job12345", "in.mp4", "480p", 0.0)
    board.job_event("job12345", _start(chunks=2), 0.0)
    board.job_event("job12345", ChunkStart(1, "a0", "pi", 200, True), 1.0)
    board.job_event("job12345", ChunkRequeued(1, "a0", "pi", "lease expired"), 2.0)
    assert _job(board)["chunks"] == ".."
    board.job_event("job12345", ChunkStart(1, "a1", "pi", 200, True), 3.0)
    board.job_event("job12345", ChunkFailed(1, "a1", "pi", "bad", False,
                                            "another attempt continues", False), 3.5)
    assert _job(board)["chunks"] == ".r"  # another attempt still holds it
    board.job_event("job12345", ChunkFailed(1, "a1", "pi", "bad", True, "requeued", True), 4)
    board.job_event("job12345", ChunkSplit(0, 100, 2, 100), 4.0)
    assert _job(board)["chunks"] == "..."
    board.job_event("job12345", ChunkDone(2, "a2", "x", 1.0, 100, 100), 5.0)
    board.job_event("job12345", ChunkStart(2, "a3", "y", 100, False), 5.0)  # a late duplicate
    assert _job(board)["chunks"] == "..d"
    board.job_event("job12345", ChunkParted(0, ("1080p",), 3, ("720p", "480p")), 6.0)
    assert _job(board)["chunks"] == "..d."  # the part holding the other rungs


def test_a_resumed_job_starts_with_its_kept_chunks_done() -> None:
    board = Board(HERE, secret=False)
    board.queued("job12345", "in.mp4", "480p", 0.0)
    board.job_event("job12345", _start(), 0.0)
    board.job_event("job12345", JobResumed(2, (0, 3), 4, 200), 0.0)
    assert _job(board)["chunks"] == "d..d" and _job(board)["progress"] == 0.5


def test_no_eta_before_progress_and_failures_keep_their_reason() -> None:
    board = Board(HERE, secret=False)
    board.queued("job12345", "in.mp4", "480p", 0.0)
    board.job_event("job12345", _start(), 0.0)
    assert _job(board)["eta_s"] is None
    board.failed("job12345", "x" * 1000, 3.0)
    job = _job(board)
    assert job["state"] == "failed" and len(str(job["error"])) == 300


def test_events_of_unknown_jobs_change_nothing_and_changes_bump_the_version() -> None:
    board = Board(HERE, secret=False)
    v = board.version
    board.job_event("nope5678", _start(), 0.0)
    assert board.version == v and board.snapshot(0)["jobs"] == []
    board.queued("job12345", "in.mp4", "480p", 0.0)
    assert board.version > v


def test_devices_are_bounded_listed_here_first_and_paired_by_secret() -> None:
    board = Board(HERE, secret=True)
    board.device(Device("svc-b", "b-pi", "aarch64", 0.3, "idle", True))
    board.device(Device("svc-a", "a-other", "x86_64", 2.0, "idle", False))
    names = [(d.name, d.paired) for d in board.devices()]
    assert names == [("laptop", True), ("a-other", False), ("b-pi", True)]
    for i in range(2 * MAX_DEVICES):
        board.device(Device(f"k{i}", f"n{i}", "x", 0.0, "idle", True))
    assert len(board.devices()) == MAX_DEVICES
    board.device_gone("svc-a")
    board.device_gone("n1")  # this node never leaves its own page
    assert "a-other" not in {d.name for d in board.devices()}
    assert board.devices()[0].here
    board.queued("job12345", "in.mp4", "480p", 0.0)
    board.job_event("job12345", PeerJoined("pi4", "10.0.0.2:7800", "aarch64", "5.1", 4, 0.4),
                    0.0)
    board.job_event("job12345", PeerForeign("stranger", "another swarm"), 0.0)
    seen = {d.name: d for d in board.devices()}
    assert seen["pi4"].paired and seen["pi4"].arch == "aarch64"
    assert _job(board)["peers"] == ["pi4"]


def test_jobs_are_bounded_and_finished_ones_go_first() -> None:
    board = Board(HERE, secret=False)
    board.queued("running1", "keep.mp4", "480p", 0.0)
    board.job_event("running1", _start(), 0.0)
    for i in range(MAX_JOBS + 5):
        board.queued(f"done{i:04d}", "x.mp4", "480p", float(i + 1))
        board.job_event(f"done{i:04d}", JobEnd("o", 1.0), float(i + 1))
    ids = [j.job_id for j in board.jobs()]
    assert len(ids) == MAX_JOBS and "running1" in ids
    assert f"done{MAX_JOBS + 4:04d}" in ids and "done0000" not in ids


def test_a_peer_node_shows_the_job_it_works_on() -> None:
    board = Board(HERE, secret=False)
    board.node_event(JobJoined("jobabcdef", "http://10.0.0.1:7800"), 0.0)
    assert board.devices()[0].state == "busy"
    board.node_event(SlotStart(3, "a"), 1.0)
    board.node_event(SlotProgress(3, 40, 20.0), 2.0)
    assert dict(board.snapshot(2.0)["jobs"][0])["role"] == "peer"  # type: ignore[index]
    board.node_event(SlotEnd(3, "done", 100), 3.0)
    board.node_event(JobLeft("jobabcdef"), 4.0)
    job = _job(board)
    assert (job["state"], job["done_chunks"]) == ("done", 1)
    assert board.devices()[0].state == "idle"


def test_session_cookies_hold_for_their_secret_until_they_expire() -> None:
    now = 1_800_000_000.0
    value = new_session("s3cret", now)
    assert check_session("s3cret", value, now + 10)
    assert not check_session("s3cret", value, now + SESSION_S + 1)
    assert not check_session("other", value, now)
    expiry, mac = value.split(".")
    assert not check_session("s3cret", f"{int(expiry) + 1}.{mac}", now)
    assert not check_session("s3cret", f"{expiry}.{'0' * 64}", now)
    for junk in ("", "x", f"{expiry}.{mac}x", f"+{expiry}.{mac}", f"{expiry}. {mac}"):
        assert not check_session("s3cret", junk, now)
    assert not check_session("s3cret", None, now)
    assert check_session(None, None, now)  # an open swarm asks nobody
    # One made far in the future (a forged expiry) is refused even with a valid MAC.
    assert not check_session("s3cret", new_session("s3cret", now + 10 * SESSION_S), now)
    assert session_from_header(f"a=1; {COOKIE}={value}; b=2") == value
    assert session_from_header("a=1") is None and session_from_header("x" * 5000) is None
    assert secret_matches("s3cret", "s3cret") and not secret_matches("s3cret", "s3cre")
