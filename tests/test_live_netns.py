"""No stalls when a peer dies, for real: a peer SIGKILLed 0.5 s after its ffmpeg started.

Issue 14 measured it before: the dead peer's prefetched chunk waited out the whole 15 s
lease while the coordinator's own slots sat idle, and a 3-4 s job took 20 s. Here the
coordinator (with its local slots, the default lease) and one `swarm join` peer run in
namespace hosts (tests/netns.py); the test kills the peer and reads, from the coordinator's
`--json` events and its `--report`, when each chunk the peer held came back.

The coordinator's event times count from its own start; the test maps them onto its clock
(both are CLOCK_MONOTONIC) from the earliest line it saw appear, which can only make the
measured delays longer than they were.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from swarm_hosts import Swarm, SwarmProcess

from media import FFMPEG, decode_errors, media_info
from netns import lan, requires_netns
from peer.prefetch import sweep_stale_dirs

pytestmark = [pytest.mark.netns, pytest.mark.slow, requires_netns]

SOURCE_S = 12
FPS = 25
BUDGET_S = 120
# SILENT_S (3 s) after the peer's last sign of life, which came before the kill; plus the
# machine's load (two cores shared by several test runs).
REQUEUED_WITHIN_S = 3.5
KILL_AFTER_S = 0.5


def _make(path: Path) -> Path:
    subprocess.run(
        [FFMPEG, "-nostdin", "-v", "error", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size=640x360:rate={FPS}:duration={SOURCE_S}",
         "-f", "lavfi", "-i", f"sine=frequency=440:duration={SOURCE_S}",
         "-c:v", "libx264", "-preset", "veryfast", "-g", str(FPS), "-bf", "2",
         "-c:a", "aac", "-shortest", str(path)],
        check=True, timeout=60)
    return path


class _Events:
    """The coordinator's --json lines as they appear, with when the test first saw each."""

    def __init__(self, proc: SwarmProcess) -> None:
        self.path = proc.stdout_path
        self.lines: list[dict[str, Any]] = []
        self.t0_at_most = float("inf")  # the coordinator's t = 0 on our monotonic clock

    def poll(self) -> list[dict[str, Any]]:
        seen = time.monotonic()
        text = self.path.read_text()
        complete = text.splitlines()[: text.count("\n")]
        for raw in complete[len(self.lines):]:
            line = json.loads(raw)
            self.lines.append(line)
            self.t0_at_most = min(self.t0_at_most, seen - line["t"])
        return self.lines


def _encoder(peer: SwarmProcess) -> int | None:
    """The pid of the peer's chunk encoder (not a prefetch copy: that one only copies)."""
    for pid, argv in peer.children():
        if "libx264" in argv:
            return pid
    return None


# Known defect (closing note of 2026-12-02): on an idle machine alpha can finish its chunk
# within the 0.5 s, or the harness sees its prefetch copy's ffmpeg as "its encoder", and then
# it holds nothing at the kill. The rule itself is tested deterministically in test_live.
@pytest.mark.xfail(strict=False, reason="timing of the kill against alpha's chunk is not "
                   "controlled (passes under load, can hold nothing at the kill when idle)")
def test_a_peer_killed_half_a_second_into_its_chunk_stalls_nothing(tmp_path: Path) -> None:
    src = _make(tmp_path / "src.mp4")
    out, rep = tmp_path / "out" / "out.mp4", tmp_path / "out" / "report.json"
    out.parent.mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()
    with lan(2, prefix="live") as net, Swarm(net, logs, BUDGET_S) as sw:
        alpha = sw.join(net[1], "alpha")
        alpha.wait_for("ready on port")
        enc = sw.encode(net[0], src, out, "--name", "coord", "-p", "480p",
                        "--chunk-seconds", "1", "--no-mdns", "--peer",
                        f"{net[1].address}:7800", "--json", "--report", str(rep))
        events = _Events(enc)
        pid = sw.deadline.until("alpha to start encoding", lambda: events.poll() and
                                _encoder(alpha), 60)
        time.sleep(KILL_AFTER_S)
        held = [c for c in alpha.children() if c[0] != pid]  # a prefetch copy, if any
        events.poll()
        alpha.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        alpha.wait(10)
        # Orphaned, its ffmpegs die as soon as they write to the dead node's pipes.
        for p, _argv in [(pid, []), *held]:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert enc.wait() == 0, enc.stderr()
        lines = events.poll()
    report = json.loads(rep.read_text())
    killed_at = killed - events.t0_at_most  # in the coordinator's times, or later
    queued = {a["id"] for a in report["attempts"] if a["queued"]}
    done = {e["attempt"] for e in lines if e["event"] == "chunk_done"}
    lost = [e["attempt"] for e in lines
            if e["event"] == "chunk_start" and e["peer"] == "alpha"
            and e["attempt"] not in done]
    requeued = {e["attempt"]: e for e in lines
                if e["event"] == "chunk_requeued" and e["peer"] == "alpha"}
    # Everything alpha held at its death came back, each within seconds of it.
    assert lost and set(lost) <= set(requeued), (lost, requeued)
    for attempt in lost:
        e = requeued[attempt]
        assert e["t"] - killed_at <= REQUEUED_WITHIN_S, (e, killed_at)
        assert e["reason"] == "connection lost" or e["reason"].startswith("peer silent"), e
    # The prefetched one too, the case that waited out the 15 s lease before, when alpha held
    # one at its death: whether it had claimed it 0.5 s into its chunk depends on the
    # machine's speed (a prefetch waits for a trusted rate). tests/test_live.py covers it
    # deterministically, under MockClock.
    held_queued = queued & {a["id"] for a in report["attempts"] if a["peer"] == "alpha"}
    assert held_queued <= set(lost) | done, (lost, report["attempts"])
    # And the coordinator's own slots took them over first, before any fresh chunk: the
    # next slot to free up encodes them, instead of waiting out a lease.
    done_by = {e["chunk"]: e["peer"] for e in lines if e["event"] == "chunk_done"}
    lost_chunks = {requeued[x]["chunk"] for x in lost}
    for attempt in lost:
        back = requeued[attempt]
        assert done_by[back["chunk"]] == "coord", (back, done_by)
        later = [e for e in lines if e["event"] == "chunk_start" and e["t"] >= back["t"]]
        retry = next(e for e in later if e["chunk"] == back["chunk"])
        fresh = [e["t"] for e in later if e["chunk"] not in lost_chunks]
        assert not fresh or retry["t"] <= min(fresh), (retry, fresh)
    # Frame-exact, whole, and nothing left behind.
    assert media_info(out).video.frames == media_info(src).video.frames == SOURCE_S * FPS
    assert decode_errors(out) == ""
    assert sorted(c["index"] for c in report["chunks"]) == list(range(len(report["chunks"])))
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.mp4", "report.json"]
    # The killed peer could not remove its prefetch directory; the next node to prefetch
    # on this machine sweeps it (as it does here).
    sweep_stale_dirs(tempfile.gettempdir())
    assert not list(Path(tempfile.gettempdir()).glob(f"swarm-prefetch-{alpha.pid}-*"))
