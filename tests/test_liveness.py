"""The shell's rules as pure functions, and the timings that act on them in virtual time.

Pure: when a coordinator counts as gone (``Silence``), when a job is stalled, when to stop
inviting a peer, which bytes a Range header asks for, what the environment may set. Then
the shell under ``trio.testing.MockClock(autojump_threshold=0)``: a peer whose coordinator
refuses every connection drops the job just after ``coordinator_gone_s``, and one whose
coordinator answers stays, whatever the time; a lease expires after ``lease_s`` without
progress, and progress renews it, with ``_watch`` ticking; a job nobody encodes fails after
``stall_s``. Minutes
of protocol time pass in milliseconds, and the limits are checked to the tick. Last, for
real, a slot and a coordinator node on 127.0.0.1 through a relay that is cut like a cable.
"""

from __future__ import annotations

import subprocess
from collections.abc import Awaitable, Callable
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import trio
import trio.testing
from coordinated import two_chunk_job

from chunker.commands import VideoPlan
from chunker.plan import plan_chunks
from chunker.probe import VideoInfo
from media import FFMPEG
from peer.coordinator import _watch
from peer.jobserver import JobServer
from peer.options import EncodeOptions, JobIntent, NetworkSettings, Tuning
from peer.worker import JobTerms, work_slot
from procs import ffmpeg_children
from profiles import load_profile
from swarm.config import Environment, Timings
from swarm.errors import EncodeError, RemoteProtocolError, UsageError
from swarm.events import ChunkRequeued, JobEvent
from swarm.job import Grant
from swarm.liveness import Silence, stalled
from swarm.presence import MAX_FRUITLESS_INVITES, fruitless
from swarm.protocol import CONTENT_TYPE, ClaimRequest, Wait, decode, encode
from swarm.ranges import ByteRange, parse_range


# -- pure rules ----------------------------------------------------------------------------
def test_silence_is_gone_only_past_its_limit() -> None:
    s = Silence(6.0, last_ok=10.0)
    assert not s.gone(16.0) and s.gone(16.01)
    s.heard(15.0)
    assert not s.gone(21.0) and s.gone(21.5)


def test_stall_rule() -> None:
    quiet = {"running": False, "local_alive": False}
    assert stalled(**quiet, network=False, idle_s=0.0, stall_s=60) == (
        "every local worker failed; see the messages above")
    assert stalled(**quiet, network=True, idle_s=60.0, stall_s=60) is None
    assert "no peer took any work for 60 s" in (
        stalled(**quiet, network=True, idle_s=60.5, stall_s=60) or "")
    assert stalled(running=True, local_alive=False, network=True, idle_s=1e9,
                   stall_s=60) is None
    assert stalled(running=False, local_alive=True, network=False, idle_s=1e9,
                   stall_s=60) is None


def test_stop_inviting_a_peer_that_never_claims() -> None:
    assert fruitless(MAX_FRUITLESS_INVITES - 1, claimed=False) is None
    assert "never claims" in (fruitless(MAX_FRUITLESS_INVITES, claimed=False) or "")
    assert fruitless(10, claimed=True) is None


@pytest.mark.parametrize(("header", "want"), [
    (None, ByteRange(0, 999, partial=False)),
    ("bytes=0-", ByteRange(0, 999, partial=True)),
    ("bytes=100-199", ByteRange(100, 199, partial=True)),
    ("bytes=900-5000", ByteRange(900, 999, partial=True)),  # clipped to the file
    ("bytes=-100", ByteRange(900, 999, partial=True)),  # the last 100 bytes
    (" bytes = 5-5", ByteRange(5, 5, partial=True)),
    ("bytes=1000-", None),  # past the end: 416 with bytes */1000
    ("bytes=200-100", None),
    ("bytes=-2000", None),
])
def test_range_parsing(header: str | None, want: ByteRange | None) -> None:
    assert parse_range(header, 1000) == want


@pytest.mark.parametrize("header", ["items=0-1", "bytes=0-1,5-6", "bytes=a-b", "bytes=-",
                                    "bytes", "bytes=1-x"])
def test_a_range_we_do_not_read_is_a_416(header: str) -> None:
    with pytest.raises(RemoteProtocolError) as exc:
        parse_range(header, 1000)
    assert exc.value.status_code == 416


def test_environment_is_read_in_one_place() -> None:
    env = Environment.from_environ({"SWARM_SCHEDULER": "fifo", "SWARM_LEASE_S": "4"})
    assert env.scheduler == "fifo"
    # No timing comes from the environment (`swarm encode --lease-seconds` is the test knob).
    assert env == Environment(scheduler="fifo")
    assert Environment.from_environ({"SWARM_LEASE_S": "soon"}) == Environment()
    with pytest.raises(UsageError, match="SWARM_SCHEDULER=best"):
        Environment.from_environ({"SWARM_SCHEDULER": "best"})


def test_the_environment_names_the_ffmpeg_the_cache_and_the_terminal() -> None:
    env = Environment.from_environ({"SWARM_FFMPEG": "/opt/ff", "TERM": "xterm",
                                    "HOME": "/home/u"})
    assert (env.ffmpeg, env.term) == ("/opt/ff", "xterm")
    assert str(env.cache_dir) == "/home/u/.cache/swarm"
    bare = Environment.from_environ({"SWARM_FFMPEG": ""})
    assert bare.ffmpeg is None and bare.cache_dir is None and bare.term == ""


# -- timings in virtual time ---------------------------------------------------------------
def _virtual(fn: Any) -> None:
    trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_peer_drops_a_coordinator_that_stays_silent_for_the_gone_limit() -> None:
    timings = Timings(coordinator_gone_s=6.0)
    tries: list[float] = []

    async def refuse(request: httpx.Request) -> httpx.Response:
        tries.append(trio.current_time())
        raise httpx.ConnectError("connection refused", request=request)

    async def main() -> None:
        terms = JobTerms("gonejob1", "http://coordinator", load_profile("hd"),
                         VideoPlan(640, 360, 50))
        async with httpx.AsyncClient(transport=httpx.MockTransport(refuse),
                                     base_url="http://coordinator") as client:
            t0 = trio.current_time()
            with trio.fail_after(60):
                await work_slot(terms, node_id="ab12cd34ef56ab12", slot=0, secret=None,
                                ffmpeg=cast(Any, None), client=client, timings=timings)
            took = trio.current_time() - t0
        # It kept asking (every 0.5 s) and gave up at the first refusal past the limit.
        assert timings.coordinator_gone_s < took <= timings.coordinator_gone_s + 0.5, took
        assert len(tries) >= 12

    _virtual(main)


def test_a_coordinator_that_answers_keeps_its_peer_past_the_gone_limit() -> None:
    """Every answer resets the silence: the peer stays three gone-limits while the
    coordinator answers "wait", then drops it coordinator_gone_s after the last answer."""
    timings = Timings(coordinator_gone_s=6.0)
    answering_s = 3 * timings.coordinator_gone_s
    start = 0.0
    last_answer: list[float] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        now = trio.current_time()
        if now - start < answering_s:
            last_answer.append(now)
            return httpx.Response(200, content=encode(Wait(1.0)),
                                  headers={"content-type": CONTENT_TYPE})
        raise httpx.ConnectError("connection refused", request=request)

    async def main() -> None:
        nonlocal start
        terms = JobTerms("gonejob2", "http://coordinator", load_profile("hd"),
                         VideoPlan(640, 360, 50))
        async with httpx.AsyncClient(transport=httpx.MockTransport(handle),
                                     base_url="http://coordinator") as client:
            start = trio.current_time()
            with trio.fail_after(120):
                await work_slot(terms, node_id="ab12cd34ef56ab12", slot=0, secret=None,
                                ffmpeg=cast(Any, None), client=client, timings=timings)
            ended = trio.current_time()
        assert len(last_answer) >= answering_s - 1  # it kept asking, once a second
        silent = ended - last_answer[-1]
        assert timings.coordinator_gone_s < silent <= timings.coordinator_gone_s + 0.5, silent

    _virtual(main)


def test_the_silence_is_the_jobs_and_the_first_slot_to_find_it_gone_drops_the_job() -> None:
    """Two slots of one job. After the coordinator's last answer, one slot's calls hang to
    the client's timeout (a keep-alive connection to a host that vanished) and the other's
    are refused at once: the refused slot finds the job's silence over the limit and drops
    the whole job then, not when the hanging call times out (the CI failure of
    test_peer_cut_off_mid_chunk_loses_its_lease_and_drops_the_job)."""
    timings = Timings(coordinator_gone_s=6.0)
    answering_s, hang_s = 3.0, 10.0
    start = 0.0
    answers: list[float] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        now = trio.current_time()
        if now - start < answering_s:
            answers.append(now)
            return httpx.Response(200, content=encode(Wait(1.0)),
                                  headers={"content-type": CONTENT_TYPE})
        if decode(request.content, ClaimRequest).slot == 0:
            await trio.sleep(hang_s)
            raise httpx.ReadTimeout("timed out", request=request)
        raise httpx.ConnectError("network is unreachable", request=request)

    async def main() -> None:
        nonlocal start
        terms = JobTerms("gonejob3", "http://coordinator", load_profile("hd"),
                         VideoPlan(640, 360, 50))
        async with httpx.AsyncClient(transport=httpx.MockTransport(handle),
                                     base_url="http://coordinator") as client:
            start = trio.current_time()
            silence = Silence(timings.coordinator_gone_s, start)
            with trio.fail_after(120):
                async with trio.open_nursery() as slots:
                    for slot in (0, 1):
                        slots.start_soon(partial(
                            work_slot, terms, node_id="ab12cd34ef56ab12", slot=slot,
                            secret=None, ffmpeg=cast(Any, None), client=client,
                            timings=timings, silence=silence,
                            on_gone=slots.cancel_scope.cancel))
            ended = trio.current_time()
        silent = ended - answers[-1]
        assert timings.coordinator_gone_s < silent <= timings.coordinator_gone_s + 0.5, silent

    _virtual(main)


def _server(events: list[JobEvent], timings: Timings, *, network: bool = False
            ) -> tuple[JobServer, EncodeOptions]:
    tb = Fraction(1, 25 * 512)
    video = VideoInfo(codec="h264", width=640, height=360, sar=Fraction(1), rotation=0,
                      time_base=tb, pts=tuple(i * 512 for i in range(100)),
                      keyframes=tuple(range(0, 100, 25)), last_duration=512)
    opts = EncodeOptions(JobIntent("in.mp4", "out.mp4", load_profile("hd")),
                         net=NetworkSettings(enabled=network, name="alpha"),
                         tuning=Tuning(policy="fifo", timings=timings))
    # Only the job's bookkeeping runs here: no file is read, no ffmpeg started.
    server = JobServer(job_id="j", opts=opts, ffmpeg=cast(Any, None), info=cast(Any, None),
                       plans=plan_chunks(video, 0.0, 1.0), vplan=VideoPlan(640, 360, 50),
                       workdir="/nonexistent", emit=events.append, local_key="local")
    return server, opts


def test_a_lease_without_progress_expires_after_lease_s() -> None:
    timings = Timings(lease_s=15.0)
    events: list[JobEvent] = []

    async def main() -> None:
        server, _ = _server(events, timings)
        now = trio.current_time()
        server.job.add_peer("n1", None, now)
        a = server.claim("n1", now)
        assert isinstance(a, Grant)
        await trio.sleep(timings.lease_s - 0.1)
        server.tick(trio.current_time())
        assert not [e for e in events if isinstance(e, ChunkRequeued)]
        await trio.sleep(0.2)
        server.tick(trio.current_time())
        [lost] = [e for e in events if isinstance(e, ChunkRequeued)]
        assert (lost.chunk, lost.attempt, lost.reason) == (a.chunk, a.attempt,
                                                           "lease expired")

    _virtual(main)


def test_a_job_nobody_encodes_fails_after_stall_s() -> None:
    timings = Timings(stall_s=60.0, tick_s=0.5)

    async def main() -> None:
        server, opts = _server([], timings, network=True)
        t0 = trio.current_time()
        with pytest.raises(EncodeError, match="no peer took any work for 60 s"):
            await _watch(server, 0, opts)
        took = trio.current_time() - t0
        assert timings.stall_s < took <= timings.stall_s + timings.tick_s, took

    _virtual(main)


def test_reports_renew_the_lease_and_the_watch_requeues_after_lease_s_without_one() -> None:
    """The shell's own loop (``_watch``, ticking every tick_s) against the lease: a peer
    reporting every second keeps its chunk for three leases; silent, it loses it after
    lease_s, to the tick."""
    # The silence rule (silent_s) would requeue sooner: held off, so the lease is what acts.
    timings = Timings(lease_s=15.0, tick_s=0.5, stall_s=600.0, silent_s=600.0)
    lost_lease = trio.Event()

    class Events(list[JobEvent]):
        def append(self, e: JobEvent) -> None:
            super().append(e)
            if isinstance(e, ChunkRequeued):
                lost_lease.set()

    events = Events()

    def requeued() -> list[ChunkRequeued]:
        return [e for e in events if isinstance(e, ChunkRequeued)]

    async def main() -> None:
        server, opts = _server(events, timings, network=True)
        now = trio.current_time()
        server.job.add_peer("n1", None, now)
        a = server.claim("n1", now)
        assert isinstance(a, Grant)
        with trio.fail_after(600):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch, server, 0, opts)
                for frames in range(1, int(3 * timings.lease_s) + 1):
                    await trio.sleep(1.0)
                    assert server.progress(a.attempt, frames, trio.current_time())
                assert not requeued()
                last_report = trio.current_time()
                await lost_lease.wait()
                silent = trio.current_time() - last_report
                nursery.cancel_scope.cancel()
        assert timings.lease_s <= silent <= timings.lease_s + timings.tick_s, silent
        [lost] = requeued()
        assert (lost.chunk, lost.attempt, lost.reason) == (a.chunk, a.attempt, "lease expired")

    _virtual(main)


# -- for real: a slot and a coordinator node on 127.0.0.1 ----------------------------------
class _Cable:
    """A TCP relay to the coordinator that can be cut like a cable pulled out: after the
    cut it forwards nothing either way and closes nothing, so the slot's calls hang to
    their timeouts as on a LAN. It cuts itself around the upload's verdict: "before" just
    as the coordinator answers an upload (the result's bytes all arrived, its verdict never
    does); "after" at the first call that follows a verdict."""

    def __init__(self, target_port: int, when: str) -> None:
        self.target_port = target_port
        self.when = when
        self.port = 0
        self.verdict_seen = False
        self.cut_at: float | None = None

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._relay, listeners)

    def _cut(self) -> None:
        if self.cut_at is None:
            self.cut_at = trio.current_time()

    async def _relay(self, client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        uploading = False

        async def outward() -> None:
            nonlocal uploading
            async for data in client:
                uploading = uploading or data.startswith(b"PUT ")
                if self.when == "after" and self.verdict_seen and data.startswith(b"POST "):
                    self._cut()
                if self.cut_at is None:
                    await server.send_all(data)

        async def back() -> None:
            async for data in server:
                if uploading:
                    if self.when == "before":
                        self._cut()
                    self.verdict_seen = True
                if self.cut_at is None:
                    await client.send_all(data)

        async def then_close(direction: Callable[[], Awaitable[None]],
                             scope: trio.CancelScope) -> None:
            try:
                await direction()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # one end went: so does the relay (a cut one never ends, see above)
            scope.cancel()

        async with client, server, trio.open_nursery() as nursery:
            nursery.start_soon(then_close, outward, nursery.cancel_scope)
            nursery.start_soon(then_close, back, nursery.cancel_scope)


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_link_cut_around_an_uploads_verdict_drops_the_job_at_the_silence_limit(
        tmp_path: Path, when: str) -> None:
    """A slot encodes the first of two chunks while it holds the second, prefetched. The
    link is cut "before" the upload's verdict arrives, or "after" it, at the call that says
    the prefetched chunk starts. Either way the job's silence drops it at the first call
    that fails past the limit. Before, the upload waited out its long wait for a verdict
    (300 s: the checks may take that long) with nothing else watching the link; after, the
    call hung to its timeout and then the next chunk's first report did too (the CI
    failures of test_peer_cut_off_mid_chunk_loses_its_lease_and_drops_the_job)."""
    src = tmp_path / "src.mp4"
    subprocess.run([FFMPEG, "-nostdin", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=640x360:rate=25:duration=6", "-c:v", "libx264",
                    "-preset", "ultrafast", "-g", "25", str(src)], check=True, timeout=60)
    timings = Timings(coordinator_gone_s=2.0, progress_every_s=0.5)
    call_timeout_s = 3.0

    async def main() -> None:
        job = await two_chunk_job(src, tmp_path, f"job-verdict-{when}")
        server, node, ffmpeg = job.server, job.node, job.ffmpeg
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            node.jobs[server.job_id] = server
            cable = _Cable(node.port, when)
            await nursery.start(cable.serve)
            url = f"http://127.0.0.1:{cable.port}"
            terms = job.terms(url)
            async with httpx.AsyncClient(base_url=url,
                                         timeout=httpx.Timeout(call_timeout_s)) as client:
                with trio.fail_after(60):  # the upload alone would wait 300 s
                    await work_slot(terms, node_id="ab12cd34ef56ab12", slot=0, secret=None,
                                    ffmpeg=ffmpeg, client=client, timings=timings)
            assert cable.cut_at is not None, "the slot ended before the cut"
            after_cut = trio.current_time() - cable.cut_at
            nursery.cancel_scope.cancel()
        # The slot did hold the second chunk, claimed ahead while the first encoded.
        [second] = server.job.chunks[1].attempts
        assert server.job.attempts[second].peer == "ab12cd34ef56ab12"
        if when == "before":  # found at its first report past the limit
            limit = timings.coordinator_gone_s + timings.progress_every_s + call_timeout_s
        else:  # found when the call that hung fails (not one report later)
            limit = call_timeout_s + timings.progress_every_s
        assert after_cut <= limit + 0.5, after_cut
        assert not ffmpeg_children()

    trio.run(main)
