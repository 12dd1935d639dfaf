"""Durable jobs: the journal, resuming after a coordinator is SIGKILLed, `swarm jobs`."""

from __future__ import annotations

import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from media import FFMPEG, decode_errors, media_info
from peer.journal import Journal, find_journals, input_identity, work_dir_for
from swarm.errors import UsageError

REPO = Path(__file__).resolve().parent.parent
SWARM = [sys.executable, "-c", "import cli; cli.main()"]
ENV = os.environ | {"PYTHONPATH": str(REPO)}


def test_journal_lock_is_exclusive_and_summary_reads_it(tmp_path: Path) -> None:
    wd = tmp_path / ".out.mp4.swarm"
    wd.mkdir()
    j = Journal(wd)
    j.set("output", str(tmp_path / "out.mp4"))
    j.write_plan([(0, 10), (10, 10)])
    j.chunk_done(0, "chunk_00000.nut", "ab" * 32, 1, 2, "alpha", 0.5)
    with pytest.raises(UsageError, match="locked"):
        Journal(wd)
    [s] = find_journals(str(tmp_path))
    assert (s.chunks, s.done, s.state, s.locked) == (2, 1, "running", True)
    j.close()
    j2 = Journal(wd)  # the lock went with the first one
    assert j2.run == 2 and j2.plan() == [(0, 10), (10, 10)]
    assert [c[0] for c in j2.done_chunks()] == [0]
    j2.close()


def test_input_identity_sees_a_rewrite_with_the_same_size_and_mtime(tmp_path: Path) -> None:
    f = tmp_path / "in.bin"
    f.write_bytes(b"a" * 5000)
    a = input_identity(str(f))
    st = f.stat()
    f.write_bytes(b"b" * 5000)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    b = input_identity(str(f))
    assert (a.size, a.mtime_ns) == (b.size, b.mtime_ns) and not a.same_file(b)


def _source(tmp: Path, seconds: int = 12) -> Path:
    src = tmp / "in.mp4"
    subprocess.run([FFMPEG, "-v", "error", "-f", "lavfi", "-i",
                    f"testsrc2=size=640x360:rate=25:duration={seconds}", "-f", "lavfi", "-i",
                    f"sine=duration={seconds}", "-c:v", "libx264", "-preset", "veryfast",
                    "-g", "25", "-c:a", "aac", str(src)], check=True, timeout=120)
    return src


def _encode_until(tmp: Path, stop: str, count: int) -> None:
    """Run the encode; SIGKILL it once ``count`` events of kind ``stop`` were printed."""
    proc = subprocess.Popen(
        [*SWARM, "encode", "in.mp4", "-o", "out.mp4", "--local-only", "--chunk-seconds",
         "1", "-w", "2", "--json"], cwd=tmp, env=ENV, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen = 0
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            if json.loads(line).get("event") == stop:
                seen += 1
                if seen >= count:
                    os.killpg(proc.pid, signal.SIGKILL)  # the coordinator and its ffmpegs
                    proc.wait()
                    return
            assert time.monotonic() < deadline
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _rerun(tmp: Path, *extra: str) -> tuple[dict, list[dict]]:
    res = subprocess.run([*SWARM, "encode", "in.mp4", "-o", "out.mp4", "--local-only",
                          "--chunk-seconds", "1", "-w", "2", "--json", "--report", "r.json",
                          *extra], cwd=tmp, env=ENV, capture_output=True, text=True,
                         timeout=180)
    assert res.returncode == 0, res.stderr
    events = [json.loads(x) for x in res.stdout.splitlines()]
    return json.loads((tmp / "r.json").read_text()), events


def _check_output(tmp: Path, src: Path) -> None:
    assert media_info(tmp / "out.mp4").video.frames == media_info(src).video.frames
    assert decode_errors(tmp / "out.mp4") == ""
    assert not work_dir_for(str(tmp / "out.mp4")).exists()


def test_sigkill_mid_encode_then_rerun_keeps_every_verified_chunk(tmp_path: Path) -> None:
    src = _source(tmp_path)
    _encode_until(tmp_path, "chunk_done", 5)
    wd = work_dir_for(str(tmp_path / "out.mp4"))
    [summary] = find_journals(str(tmp_path))
    # Nobody holds its lock: crashed, told apart from a running job ("running").
    assert summary.state == "crashed" and not summary.locked and summary.done >= 5
    kept_before = summary.done
    listed = subprocess.run([*SWARM, "jobs", "--json"], cwd=tmp_path, env=ENV,
                            capture_output=True, text=True, timeout=60)
    assert json.loads(listed.stdout)[0]["done"] == kept_before
    assert json.loads(listed.stdout)[0]["state"] == "crashed"
    listed = subprocess.run([*SWARM, "jobs"], cwd=tmp_path, env=ENV, capture_output=True,
                            text=True, timeout=60)
    assert "crashed (run the same swarm encode to resume)" in listed.stdout, listed.stdout
    report, events = _rerun(tmp_path)
    # Every chunk the journal had verified is reused; only the rest is encoded again.
    assert len(report["resumed_chunks"]) == kept_before
    [resumed] = [e for e in events if e["event"] == "job_resumed"]
    assert resumed["chunks"] == report["resumed_chunks"] and resumed["of"] == len(
        report["chunks"])
    started = {e["chunk"] for e in events if e["event"] == "chunk_start"}
    assert not started & set(report["resumed_chunks"])
    assert started | set(report["resumed_chunks"]) == set(range(len(report["chunks"])))
    assert report["journal"]["run"] == 2
    # The report keeps the crashed run's attempts, from the journal.
    earlier = report["earlier_attempts"]
    assert {a["run"] for a in earlier} == {1}
    assert sum(1 for a in earlier if a["outcome"] == "ok") == kept_before
    _check_output(tmp_path, src)
    assert not wd.exists()


def test_corrupt_chunk_and_journal_row_are_re_encoded(tmp_path: Path) -> None:
    src = _source(tmp_path)
    _encode_until(tmp_path, "chunk_done", 6)
    wd = work_dir_for(str(tmp_path / "out.mp4"))
    db = sqlite3.connect(wd / "journal.sqlite")
    done = [r[0] for r in db.execute("SELECT idx FROM chunks WHERE state = 'done' ORDER BY idx")]
    assert len(done) >= 6
    bad_file, bad_row = done[1], done[3]
    with open(wd / f"chunk_{bad_file:05d}.nut", "r+b") as fh:  # flip bytes in one chunk
        fh.seek(200)
        fh.write(b"\xff" * 64)
    db.execute("UPDATE chunks SET digest = 'deadbeef' WHERE idx = ?", (bad_row,))
    db.commit()
    db.close()
    report, events = _rerun(tmp_path)
    lost = {e["chunk"] for e in events if e["event"] == "chunk_lost"}
    assert lost == {bad_file, bad_row}
    assert set(report["resumed_chunks"]) == set(done) - lost
    started = {e["chunk"] for e in events if e["event"] == "chunk_start"}
    assert {bad_file, bad_row} <= started
    _check_output(tmp_path, src)


def test_sigkill_during_merge_then_rerun_encodes_nothing(tmp_path: Path) -> None:
    src = _source(tmp_path, seconds=8)
    _encode_until(tmp_path, "merge", 1)
    report, events = _rerun(tmp_path)
    assert len(report["resumed_chunks"]) == len(report["chunks"])
    assert not [e for e in events if e["event"] == "chunk_start"]
    _check_output(tmp_path, src)


def test_sigkill_at_start_then_rerun_starts_fresh(tmp_path: Path) -> None:
    src = _source(tmp_path, seconds=6)
    _encode_until(tmp_path, "job_start", 1)
    report, _ = _rerun(tmp_path)
    assert report["frames"] == media_info(src).video.frames
    _check_output(tmp_path, src)


def test_fresh_ignores_the_journal_and_jobs_clean_removes_it(tmp_path: Path) -> None:
    src = _source(tmp_path, seconds=8)
    _encode_until(tmp_path, "chunk_done", 3)
    res = subprocess.run([*SWARM, "jobs", "--clean", "--json"], cwd=tmp_path, env=ENV,
                         capture_output=True, text=True, timeout=60)
    assert json.loads(res.stdout)[0]["removed"] is True
    assert not work_dir_for(str(tmp_path / "out.mp4")).exists()
    _encode_until(tmp_path, "chunk_done", 3)
    report, _ = _rerun(tmp_path, "--fresh")
    assert report["resumed_chunks"] == [] and report["journal"]["run"] >= 1
    _check_output(tmp_path, src)


def test_cut_chunks_are_journalled_merged_in_order_and_resumed(tmp_path: Path) -> None:
    """The default plan lets the scheduler cut chunks at keyframes (here in the opening
    round: the plan counted a --peer that never comes, so the first claims take at most a
    sixth of the work each). Each piece is planned, verified and journalled; the merge
    puts them in source order; a SIGKILLed run resumes with the journalled pieces."""
    src = tmp_path / "in.mp4"
    subprocess.run([FFMPEG, "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=320x180:rate=25:duration=24", "-f", "lavfi", "-i",
                    "sine=duration=24", "-c:v", "libx264", "-preset", "veryfast", "-g", "25",
                    "-c:a", "aac", str(src)], check=True, timeout=120)
    # Port 1 on loopback: nobody listens; the job counts it as a slot all the same.
    cmd = [*SWARM, "encode", "in.mp4", "-o", "out.mp4", "-p", "480p", "-w", "2",
           "--no-mdns", "--peer", "127.0.0.1:1", "--json", "--report", "r.json"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    planned, done = 0, 0
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            e = json.loads(line)
            planned = e["chunks"] if e["event"] == "job_start" else planned
            done += e["event"] == "chunk_done"
            if done >= 2:
                os.killpg(proc.pid, signal.SIGKILL)
                break
            assert time.monotonic() < deadline
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    wd = work_dir_for(str(tmp_path / "out.mp4"))
    db = sqlite3.connect(wd / "journal.sqlite")
    rows = db.execute("SELECT idx, first, frames, state FROM chunks ORDER BY first").fetchall()
    db.close()
    assert planned == 3 and len(rows) > planned  # cut, and the pieces journalled
    assert [r[1] for r in rows] == [0, *itertools.accumulate(r[2] for r in rows[:-1])]
    assert sum(r[2] for r in rows) == 600
    assert min(r[2] for r in rows) >= 45  # MIN_PIECE_S at 25 fps, less its slack
    kept = {r[0] for r in rows if r[3] == "done"}
    assert len(kept) >= 2
    res = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True,
                         timeout=180)
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert set(report["resumed_chunks"]) == kept
    chunks = report["chunks"]  # in source order
    assert [c["start_s"] for c in chunks] == sorted(c["start_s"] for c in chunks)
    assert sum(c["frames"] for c in chunks) == 600 and len(chunks) >= len(rows)
    _check_output(tmp_path, src)
