"""Failures that repeat end a job at once with their reason (a real encoder, a real process).

The failure is genuine: H.265 level 3.0 allows at most 552,960 luma samples a picture
(ITU-T H.265 table A.8), so a profile with that level cannot hold a 1280x720 source, and
x265 refuses every chunk with "picture dimensions are out of range for specified level".
Before the job judged its failures, it waited for other peers for 60 s (Timings.stall_s) and then
blamed "none found, or all failed".
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import pytest
import trio

from chunker.commands import VideoPlan
from chunker.plan import plan_chunks
from chunker.probe import VideoInfo
from media import FFMPEG
from peer.jobserver import JobServer, PeerRecord
from peer.options import EncodeOptions, JobIntent, NetworkSettings, Tuning
from profiles import load_profile
from screens.sinks import Plain
from swarm.events import ChunkFailed, JobEvent
from swarm.job import Grant

REPO = Path(__file__).resolve().parent.parent
SWARM = [sys.executable, "-c", "import cli; cli.main()"]
X265_ERROR = "x265 [error]: picture dimensions are out of range for specified level"
PROFILE = """description = "H.265 at level 3.0: too small a level for 720p"
[video]
codec = "libx265"
width = 1280
height = 720
profile = "main"
level = "3.0"
preset = "ultrafast"
crf = 28
[audio]
codec = "aac"
bitrate_k = 64
sample_rate = 48000
channels = 2
"""
# The same failure took 60 s before; a few seconds leave room for a loaded machine.
QUICK_S = 20.0


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("fail")
    subprocess.run([FFMPEG, "-nostdin", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=1280x720:rate=25:duration=2", "-c:v", "libx264",
                    "-preset", "ultrafast", "-g", "25", str(d / "src.mp4")],
                   check=True, timeout=60)
    (d / "level3.toml").write_text(PROFILE, encoding="utf-8")
    return d


def _encode(d: Path, *args: str, env: dict[str, str] | None = None
            ) -> tuple[subprocess.CompletedProcess[str], float]:
    env = env or os.environ | {"PYTHONPATH": str(REPO)}
    t = time.monotonic()
    # Networking on (the default) without mDNS or --peer: a coordinator that could be
    # waiting for peers, as a user's would be.
    res = subprocess.run([*SWARM, "encode", "src.mp4", "-p", "level3.toml", "-o", "out.mp4",
                          "--no-mdns", "--chunk-seconds", "1", "--name", "alpha", *args],
                         cwd=d, capture_output=True, text=True, timeout=120, env=env)
    return res, time.monotonic() - t


def _error_lines(res: subprocess.CompletedProcess[str]) -> list[str]:
    return [ln for ln in res.stderr.splitlines() if ln.startswith("swarm: error:")]


def test_a_chunk_failing_the_same_way_every_time_ends_the_job_with_its_reason(job: Path
                                                                              ) -> None:
    res, took = _encode(job, "-w", "1")
    assert res.returncode == 1, res.stderr
    assert took < QUICK_S, (took, res.stderr)
    assert _error_lines(res) == [
        f"swarm: error: chunk 0 failed on all 3 attempts: {X265_ERROR}"], res.stderr
    assert res.stderr.splitlines()[-1].startswith("swarm: error:")
    assert not (job / "out.mp4").exists() and not list(job.glob(".*.swarm"))


def test_a_peer_failing_every_chunk_is_named_with_why_it_was_left_out(job: Path) -> None:
    # Two slots fail two chunks at once: no chunk reaches three failures before this
    # device is benched (three failures in all), so it is the peer that is given up.
    res, took = _encode(job, "-w", "2")
    assert res.returncode == 1, res.stderr
    assert took < QUICK_S, (took, res.stderr)
    shown = [ln for ln in res.stderr.splitlines() if ln.startswith("swarm: alpha left out")]
    assert len(shown) == 1 and X265_ERROR in shown[0], res.stderr
    (err,) = _error_lines(res)
    assert X265_ERROR in err, err
    assert ("alpha left out after" in err and "all the same way; 0 chunks done" in err) or (
        err.startswith("swarm: error: chunk ") and "failed on all" in err), err


def test_a_chunk_failing_the_same_way_here_and_on_a_peer_ends_the_job(job: Path) -> None:
    """The peer says why its encoder failed, so its failure and ours are seen as one."""
    env = os.environ | {"PYTHONPATH": str(REPO), "SWARM_SECRET": "failures-test-secret"}
    events = job / "join.jsonl"  # a file, not a pipe nobody drains
    with open(events, "w") as out:
        peer = subprocess.Popen([*SWARM, "join", "--no-bench", "--port", "0", "--name",
                                 "bravo", "--json"], cwd=job, env=env, stdout=out,
                                stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not events.read_text():
            assert time.monotonic() < deadline and peer.poll() is None, "join did not start"
            time.sleep(0.1)
        up = json.loads(events.read_text().splitlines()[0])
        assert up["event"] == "node_up", up
        res, took = _encode(job, "-w", "1", "--peer", f"127.0.0.1:{up['port']}",
                            env=env)
    finally:
        peer.terminate()
        peer.wait(timeout=30)
    assert res.returncode == 1, res.stderr
    assert took < QUICK_S, (took, res.stderr)
    assert f"chunk 0 failed on bravo (chunk 0 failed: {X265_ERROR})" in res.stderr
    (err,) = _error_lines(res)
    assert re.fullmatch(rf"swarm: error: chunk 0 failed on all [4-9] attempts: "
                        rf"{re.escape(X265_ERROR)}", err), err


# -- what is said about a chunk whose attempt ended -------------------------------------------
def _server(events: list[JobEvent]) -> JobServer:
    tb = Fraction(1, 25 * 512)
    video = VideoInfo(codec="h264", width=640, height=360, sar=Fraction(1), rotation=0,
                      time_base=tb, pts=tuple(i * 512 for i in range(100)),
                      keyframes=tuple(range(0, 100, 25)), last_duration=512)
    opts = EncodeOptions(JobIntent("in.mp4", "out.mp4", load_profile("hd")),
                         net=NetworkSettings(name="alpha"), tuning=Tuning(policy="fifo"))
    # Only the job's bookkeeping runs here: no file is read, no ffmpeg started.
    return JobServer(job_id="j", opts=opts, ffmpeg=cast(Any, None), info=cast(Any, None),
                     plans=plan_chunks(video, 0.0, 1.0), vplan=VideoPlan(640, 360, 50),
                     workdir="/nonexistent", emit=events.append, local_key="local")


def test_an_upload_broken_by_a_peer_leaving_is_not_reported_as_a_dropped_chunk(
        capsys: pytest.CaptureFixture[str]) -> None:
    events: list[JobEvent] = []

    async def main() -> None:
        server = _server(events)
        now = trio.current_time()
        server.peers["n1"] = PeerRecord("bravo")
        server.job.add_peer("n1", None, now)
        server.job.add_peer("local", None, now)
        a = server.claim("n1", now)
        assert isinstance(a, Grant) and a.chunk == 0
        server.peer_left("n1", now)  # chunk 0 goes back to the queue
        server.fail(a.attempt, "upload: body ended early")  # its upload then broke
        b = server.claim("local", now)
        assert isinstance(b, Grant) and b.chunk == 0  # re-encoded here
        server.fail(b.attempt, "chunk 0 failed: killed")

    trio.run(main)
    plain = Plain()
    for e in events:
        plain(e)
    err = capsys.readouterr().err
    assert "dropped" not in err, err
    assert "chunk 0 requeued from bravo (peer left)" in err, err
    assert "chunk 0 failed on alpha (chunk 0 failed: killed); requeued" in err, err
    failed = [e for e in events if isinstance(e, ChunkFailed)]
    assert [e.peer for e in failed] == ["alpha"]
