"""No stalls when a peer dies: the trio shell re-queues a dead peer's chunks within seconds.

The rule is the core's (tests/test_linkcore.py); these check that the shell feeds it:
``JobServer`` with ``coordinator._watch`` ticking under ``MockClock`` for silence, and a real
node on 127.0.0.1 for an upload whose connection breaks.
"""

from __future__ import annotations

import socket
import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import trio
import trio.testing

from chunker.commands import VideoPlan
from chunker.plan import plan_chunks
from chunker.probe import VideoInfo
from chunker.tools import find_ffmpeg
from media import FFMPEG
from peer import media as steps
from peer.coordinator import _watch
from peer.jobserver import JobServer
from peer.node import Node, NodeConfig
from peer.options import EncodeOptions, JobIntent, NetworkSettings, Tuning
from profiles import load_profile
from swarm.config import Timings
from swarm.events import ChunkRequeued, JobEvent
from swarm.job import DROP_GRACE_S, Grant

TIMINGS = Timings(lease_s=15.0, silent_s=3.0, tick_s=0.5)


def _server(events: list[tuple[float, JobEvent]], workdir: str = "/nonexistent",
            both_back: trio.Event | None = None) -> tuple[JobServer, EncodeOptions]:
    if both_back is None:
        both_back = trio.Event()
    done = both_back
    tb = Fraction(1, 25 * 512)
    video = VideoInfo(codec="h264", width=640, height=360, sar=Fraction(1), rotation=0,
                      time_base=tb, pts=tuple(i * 512 for i in range(200)),
                      keyframes=tuple(range(0, 200, 25)), last_duration=512)
    opts = EncodeOptions(JobIntent("in.mp4", "out.mp4", load_profile("hd")),
                         net=NetworkSettings(enabled=True, discover=False, name="alpha"),
                         tuning=Tuning(timings=TIMINGS))

    def emit(e: JobEvent) -> None:
        events.append((trio.current_time(), e))
        if len(_requeued(events)) >= 2:
            done.set()

    # The job's bookkeeping and its HTTP routes run; no source is read, no ffmpeg started.
    server = JobServer(job_id="job-live-1", opts=opts, ffmpeg=cast(Any, None),
                       info=cast(Any, None), plans=plan_chunks(video, 0.0, 1.0),
                       vplan=VideoPlan(640, 360, 50), workdir=workdir, emit=emit,
                       local_key="local")
    return server, opts


def _requeued(events: list[tuple[float, JobEvent]]) -> list[tuple[float, ChunkRequeued]]:
    return [(t, e) for t, e in events if isinstance(e, ChunkRequeued)]


def test_a_silent_peer_loses_held_and_prefetched_chunks_3_s_after_its_last_report() -> None:
    """The issue's case: the peer reported at 1 s and 2 s, then was SIGKILLed. Both its
    chunks come back at 5 s (not at its 15 s lease); the local slot's chunk, which has had
    no progress line yet, stays (our own slots owe no heartbeat)."""
    events: list[tuple[float, JobEvent]] = []

    async def main() -> None:
        server, opts = _server(events)
        t0 = trio.current_time()
        server.job.add_peer("local", 1.0, t0, heartbeat=False)
        held = server.claim_remote("n1", t0)
        queued = server.claim_remote("n1", t0, prefetch=True)
        mine = server.claim("local", t0)
        assert isinstance(mine, Grant)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch, server, 1, opts)
            for t in (1.0, 2.0):
                await trio.sleep_until(t0 + t)
                assert server.progress_remote(held.attempt, held.chunk, int(10 * t), 10.0,
                                              trio.current_time())
            await trio.sleep_until(t0 + 2.0 + TIMINGS.silent_s + 1.0)
            nursery.cancel_scope.cancel()
        back = _requeued(events)
        assert sorted(e.chunk for _, e in back) == sorted([held.chunk, queued.chunk])
        for t, e in back:
            # _watch wakes at the deadline itself, not up to a tick after it.
            assert abs((t - t0) - (2.0 + TIMINGS.silent_s)) < 1e-6, (t - t0, e)
            assert e.reason.startswith("peer silent"), e
        assert server.job.attempts[mine.attempt].running
        # The dead peer's held chunk is the next one handed out.
        again = server.claim("local", trio.current_time())
        assert isinstance(again, Grant) and again.chunk == held.chunk

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_any_request_naming_an_attempt_counts_as_a_sign_of_life() -> None:
    """A peer whose encoder has not printed a progress line yet, but whose ffmpeg keeps
    fetching the source, is alive: the silence rule waits for that, too."""
    events: list[tuple[float, JobEvent]] = []

    async def main() -> None:
        server, opts = _server(events)
        t0 = trio.current_time()
        held = server.claim_remote("n1", t0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch, server, 0, opts)
            for t in (2.0, 4.0, 6.0):
                await trio.sleep_until(t0 + t)
                server.heard(held.attempt, trio.current_time())
            await trio.sleep_until(t0 + 6.0 + TIMINGS.silent_s - 0.01)
            assert not _requeued(events)
            await trio.sleep_until(t0 + 6.0 + TIMINGS.silent_s + 0.01)
            nursery.cancel_scope.cancel()
        [(t, e)] = _requeued(events)
        assert e.chunk == held.chunk and abs(t - t0 - 6.0 - TIMINGS.silent_s) < 1e-6

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_coordinator_that_did_not_run_reads_its_sockets_before_judging_silence() -> None:
    """On a machine loaded past its cores the coordinator itself may not run for seconds;
    the reports peers sent meanwhile wait in its sockets. Waking late, it reads them first
    instead of taking a live peer's chunks for a silence that was its own."""
    events: list[tuple[float, JobEvent]] = []

    async def main() -> None:
        clock = trio.lowlevel.current_clock()
        assert isinstance(clock, trio.testing.MockClock)
        server, opts = _server(events)
        t0 = trio.current_time()
        held = server.claim_remote("n1", t0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch, server, 0, opts)
            await trio.sleep_until(t0 + 1.0)
            assert server.progress_remote(held.attempt, held.chunk, 10, 10.0,
                                          trio.current_time())
            await trio.sleep(0.1)
            clock.jump(TIMINGS.silent_s + 2.0)  # nothing here ran for 5 s
            await trio.sleep(0.05)  # then the report that came meanwhile is read
            assert server.progress_remote(held.attempt, held.chunk, 50, 10.0,
                                          trio.current_time())
            await trio.sleep(2.0)
            nursery.cancel_scope.cancel()
        assert not _requeued(events)
        assert server.job.attempts[held.attempt].running

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def _cut_upload(port: int, target: str) -> None:
    """A PUT whose body stops halfway and whose connection then closes, as a SIGKILLed
    peer's upload does."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"PUT {target} HTTP/1.1\r\nhost: x\r\ncontent-type: application/octet-stream"
                  "\r\ncontent-length: 100000\r\n\r\n".encode() + b"\0" * 5000)


def test_a_broken_upload_requeues_its_chunk_at_once_and_the_prefetch_after_the_grace(
        tmp_path: Path) -> None:
    events: list[tuple[float, JobEvent]] = []

    async def main() -> None:
        both_back = trio.Event()
        server, opts = _server(events, str(tmp_path), both_back)
        node = Node(NodeConfig(name="alpha", port=0, host="127.0.0.1", advertise=False,
                               serve_pyz=False), cast(Any, None), coordinator=True)
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
                node.jobs[server.job_id] = server
                t0 = trio.current_time()
                held = server.claim_remote("n1", t0)
                queued = server.claim_remote("n1", t0, prefetch=True)
                nursery.start_soon(_watch, server, 0, opts)
                target = (f"/v1/jobs/{server.job_id}/chunks/{held.chunk}/result"
                          f"?attempt={held.attempt}")
                cut = trio.current_time()
                await trio.to_thread.run_sync(_cut_upload, node.port, target)
                await both_back.wait()
                nursery.cancel_scope.cancel()
        (t1, first), (t2, second) = _requeued(events)
        assert (first.chunk, first.reason) == (held.chunk, "connection lost")
        assert t1 - cut < 1.0, t1 - cut
        assert second.chunk == queued.chunk and second.reason.startswith("peer silent")
        assert DROP_GRACE_S - 0.05 <= t2 - t1 <= DROP_GRACE_S + 0.5, t2 - t1
        assert server.job.failures == {}  # a dead peer is not a failing encoder

    trio.run(main)
    assert not list(tmp_path.iterdir())  # the partial upload is gone


def test_the_coordinator_learns_a_peers_link_from_the_source_it_sends(tmp_path: Path
                                                                      ) -> None:
    """A prefetch download (its attempt queued, not started) sets the link estimate; the
    scheduler then counts each chunk's transfer time from it."""
    src = tmp_path / "src.mp4"
    subprocess.run([FFMPEG, "-nostdin", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=640x360:rate=25:duration=4", "-c:v", "libx264",
                    "-preset", "ultrafast", "-qp", "10", "-g", "25", str(src)],
                   check=True, timeout=60)

    async def main() -> None:
        ffmpeg = await trio.to_thread.run_sync(find_ffmpeg, ["libx264"])
        info = await steps.probe(ffmpeg, str(src))
        opts = EncodeOptions(JobIntent(str(src), str(tmp_path / "out.mp4"),
                                       load_profile("480p")),
                             net=NetworkSettings(enabled=True, discover=False, name="c"),
                             tuning=Tuning(timings=TIMINGS))
        plans = plan_chunks(info.video, info.format_start_s, 1.0)
        server = JobServer(job_id="job-live-link", opts=opts, ffmpeg=ffmpeg, info=info,
                           plans=plans, vplan=VideoPlan(640, 360, 50),
                           workdir=str(tmp_path), emit=lambda e: None, local_key="local")
        # The scheduler is told what each chunk weighs: its share of the file.
        assert sum(server.job.scheduler.bytes) == pytest.approx(info.size)
        node = Node(NodeConfig(name="c", port=0, host="127.0.0.1", advertise=False,
                               serve_pyz=False), ffmpeg, coordinator=True)
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
                node.jobs[server.job_id] = server
                t0 = trio.current_time()
                server.claim_remote("n1", t0)
                queued = server.claim_remote("n1", t0, prefetch=True)
                assert queued.prefetch_bytes is not None
                assert queued.prefetch_bytes <= server.job.scheduler.bytes[queued.chunk]
                assert server.job.link("n1") is None
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.port}"
                                             ) as client:
                    n = info.size // 2
                    resp = await client.get(f"{server.source_path}?attempt={queued.attempt}",
                                            headers={"range": f"bytes=0-{n - 1}"})
                    assert resp.status_code == 206 and len(resp.content) == n
                nursery.cancel_scope.cancel()
        link = server.job.link("n1")
        assert link is not None and link > 1e6  # loopback: far above a megabyte a second
        a = server.job.attempts[queued.attempt]
        # A prefetch cannot be expected to finish before its source is in.
        assert a.est_finish >= a.started + server.job.scheduler.bytes[a.chunk] / link

    trio.run(main)
