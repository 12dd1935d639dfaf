"""The peer side of a job: pull chunks from a coordinator, encode, stream results back.

Per slot: claim -> ffmpeg reads the source range from the coordinator's URL -> its stdout
streams straight into the result upload (no temp file, no chunk held whole in memory),
while progress reports renew the lease. A cancelled attempt (ProgressAck keep=False) or a
coordinator that stopped answering for ``Timings.coordinator_gone_s`` (the rule is
``swarm.liveness.Silence``) ends the work at once. That silence is the job's, kept across
its slots and their attempts: a new attempt, or another slot's call, does not restart the
clock on a coordinator that has not answered, and the first slot to find it gone drops the
whole job (``on_gone``).

While a chunk encodes, the slot asks for its next one (a prefetch claim): the next chunk
then starts without a claim round trip, and an idle faster peer may steal it until it has
started (the slot checks with a progress report before it starts a queued chunk). Its
source is fetched meanwhile into the slot's work directory (``peer.prefetch``), so the
transfer overlaps the encode; every report names the queued attempt, and one the answer
says is gone (stolen, or its chunk done elsewhere) is dropped with its file at once.

Once a chunk's encoder has finished and its output is all sent, the slot goes on to its
next chunk while the coordinator checks that result (a full decode and maybe a spot check:
seconds of a busy coordinator's CPU, bench/lan); the upload waits for its verdict in the
slot's background, reporting meanwhile, and tells it as a ``SlotEnd``. At most
``MAX_UNANSWERED`` results of a slot wait so: a peer whose results are refused does not run
far ahead of its verdicts.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from fractions import Fraction

import httpx
import trio

from chunker.commands import VideoPlan, encode_chunk_argv
from chunker.tools import FFmpeg
from profiles import Profile, parse_rung
from profiles.profile import MAX_BOX
from swarm import auth
from swarm.config import DEFAULT_TIMINGS, Timings
from swarm.errors import (
    CoordinatorGone,
    EncodeError,
    PeerError,
    ProfileError,
    RemoteProtocolError,
    TransportError,
)
from swarm.events import NodeEvent, SlotEnd, SlotProgress, SlotStart
from swarm.liveness import Silence
from swarm.protocol import (
    MAX_REASON,
    Assignment,
    AttemptFailed,
    ClaimRequest,
    Invite,
    JobDone,
    Progress,
    ProgressAck,
    ResultAck,
    Wait,
    decode,
)
from swarm.share import Turn

from .client import call, signed_headers, transport_errors
from .prefetch import PREFETCH_DIR_PREFIX, Prefetch, sweep_stale_dirs
from .proc import run_ffmpeg
from .slidework import fetch_run, render_argv, slide_run_of
from .turns import Turns

__all__ = ["JobTerms", "accept_invite", "work_slot"]

log = logging.getLogger(__name__)

# Bytes of ffmpeg output buffered between the encoder and the upload (a few pipe reads).
UPLOAD_QUEUE = 16
# The TCP receive buffer of ffmpeg's source connection (Linux doubles it): what it holds
# when ffmpeg closes the connection is wasted (autotuned, megabytes per chunk with ffmpeg
# 7 and 9, which read ahead in threads); 256 kB in flight still carries 400 Mbit/s at a
# 5 ms round trip (Wi-Fi), more than a coordinator's uplink gives one peer.
RECV_BUFFER = 128 * 1024
MAX_GOP = 1200
# Results of one slot waiting for their verdict while it encodes the next chunk: one hides
# the coordinator's check behind the next encode (a check costs it less than the encode);
# more would only let a refused peer run further ahead of its verdicts.
MAX_UNANSWERED = 1
# A time base as the coordinator writes it ("1/90000"); ffmpeg keeps both terms in an int.
_TIME_BASE = re.compile(r"([1-9][0-9]{0,8})/([1-9][0-9]{0,8})")


@dataclass(frozen=True, slots=True)
class JobTerms:
    """What an invite asks for, validated: nothing here is a raw string from the network."""

    job_id: str
    coordinator_url: str
    profile: Profile
    plan: VideoPlan
    # Encoder threads per slot for what this node renders itself (slideshow chunks): its
    # cores shared among its slots, as a coordinator's local slots share them. 0: ffmpeg's.
    threads: int = 0
    # Where ffmpeg reads the source from, when not the coordinator's URL: a TLS coordinator's
    # source comes through this process's loopback tunnel (peer.tunnel). "": the URL itself.
    source_base: str = ""


def accept_invite(invite: Invite) -> JobTerms:
    """Validate the profile fields and output plan of an invite; ProfileError if bad."""
    fields = dict(invite.profile)
    try:
        w, h, gop = fields.pop("out_width"), fields.pop("out_height"), fields.pop("out_gop")
    except KeyError as exc:
        raise ProfileError(f"invite: missing {exc.args[0]}") from exc
    for name, value, hi in (("out_width", w, MAX_BOX), ("out_height", h, MAX_BOX),
                            ("out_gop", gop, MAX_GOP)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= hi:
            raise ProfileError(f"invite: {name} must be an integer from 1 to {hi}")
    if w % 2 or h % 2:
        raise ProfileError("invite: output sides must be even")
    time_base = None
    if "out_time_base" in fields:
        text = fields.pop("out_time_base")
        m = _TIME_BASE.fullmatch(text) if isinstance(text, str) else None
        if m is None:
            raise ProfileError("invite: out_time_base must look like 1/90000")
        time_base = Fraction(int(m.group(1)), int(m.group(2)))
    profile = Profile.from_mapping(fields, "invite")
    assert isinstance(w, int) and isinstance(h, int) and isinstance(gop, int)
    rungs = tuple(parse_rung(r, profile.video.codec) for r in invite.ladder)
    if rungs and (rungs[0].width, rungs[0].height) != (w, h):
        raise ProfileError("invite: the ladder's first rung is not out_width x out_height")
    if len({(r.width, r.height) for r in rungs}) != len(rungs):
        raise ProfileError("invite: two ladder rungs of the same size")
    return JobTerms(invite.job_id, invite.coordinator_url.rstrip("/"), profile,
                    VideoPlan(w, h, gop, time_base, rungs))


async def work_slot(terms: JobTerms, *, node_id: str, slot: int, secret: auth.Credential,
                    ffmpeg: FFmpeg, client: httpx.AsyncClient,
                    on_event: Callable[[NodeEvent], None] = lambda e: None,
                    timings: Timings = DEFAULT_TIMINGS, turns: Turns | None = None,
                    silence: Silence | None = None,
                    on_gone: Callable[[], None] = lambda: None) -> None:
    """Pull and encode chunks until the job is done or its coordinator is gone.

    ``turns``: the node's slots shared among the jobs it holds (``peer.turns``); each
    claim waits for a turn there. None: this job has the slot to itself. ``silence``: when
    the job's coordinator last answered any of its slots (None: this slot's own);
    ``on_gone`` is called when this slot finds it gone, before it returns."""
    if silence is None:
        silence = Silence(timings.coordinator_gone_s, trio.current_time())
    if turns is None:
        turns = Turns(1)
        turns.join(terms.job_id)
    workdir = _Workdir(f"{PREFETCH_DIR_PREFIX}{os.getpid()}-{terms.job_id[:16]}-{slot}-")
    try:
        async with trio.open_nursery() as downloads:
            await _work_slot(terms, node_id=node_id, slot=slot, secret=secret, ffmpeg=ffmpeg,
                             client=client, on_event=on_event, timings=timings,
                             workdir=workdir, downloads=downloads, turns=turns,
                             silence=silence, on_gone=on_gone)
            downloads.cancel_scope.cancel()  # a prefetch of a chunk we will not encode
    finally:
        if workdir.path is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(shutil.rmtree, workdir.path, True)


class _Workdir:
    """The slot's private directory for prefetched sources, made on first use (most jobs
    on a fast peer never prefetch) and removed with everything in it when the slot ends."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.path: str | None = None

    def get(self) -> str:
        if self.path is None:
            # A few syscalls: not worth a thread hop (none is made under a test's MockClock).
            sweep_stale_dirs(tempfile.gettempdir())
            self.path = tempfile.mkdtemp(prefix=self.prefix)
        return self.path


class _Queued:
    """The slot's prefetched chunk, and its source being fetched ahead (if it is)."""

    def __init__(self) -> None:
        self.assignment: Assignment | None = None
        self.fetch: Prefetch | None = None

    def take(self) -> tuple[Assignment, Prefetch | None] | None:
        if self.assignment is None:
            return None
        out = self.assignment, self.fetch
        self.assignment = self.fetch = None
        return out

    async def drop(self) -> None:
        """The queued attempt is gone (taken over, or its chunk done): free its file now."""
        fetch = self.fetch
        self.assignment = self.fetch = None
        if fetch is not None:
            await fetch.close()


async def _work_slot(terms: JobTerms, *, node_id: str, slot: int, secret: auth.Credential,
                     ffmpeg: FFmpeg, client: httpx.AsyncClient,
                     on_event: Callable[[NodeEvent], None], timings: Timings,
                     workdir: _Workdir, downloads: trio.Nursery, turns: Turns,
                     silence: Silence, on_gone: Callable[[], None]) -> None:
    seat = _Seat(turns, await turns.first(terms.job_id))
    try:
        if await _claim_loop(terms, node_id=node_id, slot=slot, secret=secret, ffmpeg=ffmpeg,
                             client=client, on_event=on_event, timings=timings,
                             workdir=workdir, downloads=downloads, seat=seat,
                             silence=silence) == "gone":
            on_gone()
    finally:
        seat.release()


class _Seat:
    """The slot's turn at the node (``peer.turns``); ``turn`` None once the job is over
    for us. Held from a claim to the end of its chunk, and on through a chunk claimed
    ahead (that is only done while no other job asks for the slot)."""

    def __init__(self, turns: Turns, turn: Turn | None) -> None:
        self.turns = turns
        self.turn = turn

    @property
    def job_over(self) -> bool:
        return self.turn is None

    async def next(self) -> None:
        """The chunk ended: the next turn goes to whichever job's it is."""
        turn, self.turn = self.turn, None
        assert turn is not None
        self.turn = await self.turns.next(turn)

    async def wait(self, retry_after_s: float) -> None:
        turn, self.turn = self.turn, None
        assert turn is not None
        self.turn = await self.turns.wait(turn, retry_after_s)

    def done(self) -> None:
        if self.turn is not None:
            self.turns.done(self.turn)
            self.turn = None

    def release(self) -> None:
        if self.turn is not None:
            self.turns.release(self.turn)
            self.turn = None

    def may_prefetch(self) -> bool:
        return self.turn is not None and self.turns.may_prefetch(self.turn.job_id)


async def _claim_loop(terms: JobTerms, *, node_id: str, slot: int, secret: auth.Credential,
                      ffmpeg: FFmpeg, client: httpx.AsyncClient,
                      on_event: Callable[[NodeEvent], None], timings: Timings,
                      workdir: _Workdir, downloads: trio.Nursery, seat: _Seat,
                      silence: Silence) -> str:
    """Claim and encode until the job is over for this slot: "done", "refused" (the
    coordinator said no) or "gone" (it stopped answering)."""
    claim_path = f"/v1/jobs/{terms.job_id}/claim"
    queued = _Queued()

    async def prefetch(stop: trio.Event) -> None:
        """Claim the next chunk ahead while one encodes, and start fetching its source. A
        request in flight is never cancelled: an assignment the coordinator made must reach
        us."""
        while not stop.is_set() and seat.may_prefetch():
            try:
                reply = await call(client, secret, "POST", claim_path,
                                   ClaimRequest(node_id, slot, True), (Assignment, Wait, JobDone))
                silence.heard(trio.current_time())
            except PeerError:
                return  # the plain claim after this chunk will sort it out
            if isinstance(reply, Assignment):
                queued.assignment = reply
                # Only a chunk that seeks can be copied exactly (see copy_source_argv).
                if (reply.prefetch_bytes is not None and reply.seek_s is not None
                        and reply.trim_s is not None):
                    queued.fetch = Prefetch(reply, ffmpeg.path, _source_url(terms, reply, secret),
                                            workdir.get(), recv_buffer=RECV_BUFFER)
                    downloads.start_soon(queued.fetch.run)
                return
            if isinstance(reply, JobDone):
                return
            with trio.move_on_after(reply.retry_after_s):
                await stop.wait()

    # A slot's encode and its unanswered results each hold one: the next chunk is claimed
    # (or a queued one started) only while at most MAX_UNANSWERED results wait.
    room = trio.Semaphore(MAX_UNANSWERED + 1)
    lost = False  # a result's wait for its verdict found the coordinator gone

    async def attempt(a: Assignment, fetched: Prefetch | None, claiming: trio.CancelScope, *,
                      task_status: trio.TaskStatus[str | None] = trio.TASK_STATUS_IGNORED
                      ) -> None:
        """Run ``a``; started with None once its output is all sent (the verdict then comes
        in the background), or with the outcome of an attempt over before that."""
        sent = False

        def all_sent() -> None:
            nonlocal sent
            sent = True
            task_status.started(None)

        try:
            try:
                outcome = await _attempt(terms, a, node_id=node_id, secret=secret,
                                         ffmpeg=ffmpeg, client=client, on_event=on_event,
                                         timings=timings, fetched=fetched, queued=queued,
                                         silence=silence, all_sent=all_sent)
            except CoordinatorGone:
                if not sent:
                    raise
                nonlocal lost
                lost = True
                claiming.cancel()
                return
            # The chunk's frames: progress reports come every second, so the last one may
            # have counted a third of a short chunk.
            on_event(SlotEnd(a.chunk, outcome, a.frames, terms.job_id))
            if not sent:
                task_status.started(outcome)
        finally:
            if sent:  # else the claim loop still holds the room
                room.release()

    async def claims(verdicts: trio.Nursery, claiming: trio.CancelScope) -> str:
        while not seat.job_over:
            await room.acquire()
            handed = False  # a result waits for its verdict: it releases the room then
            try:
                outcome = await claim_one(verdicts, claiming)
                handed = outcome == "pending"
            finally:
                if not handed:
                    room.release()
            if outcome in ("done", "refused", "gone"):
                return outcome
        return "done"

    async def claim_one(verdicts: trio.Nursery, claiming: trio.CancelScope) -> str:
        """One claim, and the attempt it gives: "none" if none started, "ended" if it is
        over, "pending" if its result waits for its verdict, or how the job is over for
        this slot."""
        fetched: Prefetch | None = None
        if (next_one := queued.take()) is not None:
            held, fetched = next_one
            try:
                wanted = await _still_wanted(held, client, secret, silence)
            except CoordinatorGone as exc:
                if fetched is not None:
                    await fetched.close()
                log.warning("job %s: %s; dropping it", terms.job_id, exc)
                return "gone"
            if fetched is not None and (not wanted or fetched.error is not None):
                # A copy that failed (the network, a refused range) costs nothing yet:
                # the chunk streams from the source as if it had never been fetched.
                await fetched.close()
                fetched = None
            if not wanted:
                return "none"  # stolen by a faster peer before it started
            reply: Assignment | Wait | JobDone = held
        else:
            try:
                reply = await call(client, secret, "POST", claim_path,
                                   ClaimRequest(node_id, slot, False),
                                   (Assignment, Wait, JobDone))
                silence.heard(trio.current_time())
            except PeerError as exc:
                if isinstance(exc, RemoteProtocolError) and exc.status_code in (401, 404, 410):
                    log.warning("job %s: coordinator refused us: %s", terms.job_id, exc)
                    return "refused"
                if silence.gone(trio.current_time()):
                    log.warning("job %s: coordinator gone (%s); dropping it", terms.job_id, exc)
                    return "gone"
                await seat.wait(0.5)  # another job may have the slot meanwhile
                return "none"
        if isinstance(reply, JobDone):
            seat.done()
            return "done"
        if isinstance(reply, Wait):
            await seat.wait(reply.retry_after_s)
            return "none"
        assert isinstance(reply, Assignment)
        on_event(SlotStart(reply.chunk, reply.attempt, terms.job_id))
        stop = trio.Event()
        outcome: str | None = "gone"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(prefetch, stop)
            try:
                outcome = await verdicts.start(attempt, reply, fetched, claiming)
            except CoordinatorGone:
                nursery.cancel_scope.cancel()
            finally:
                stop.set()
                if fetched is not None:
                    await fetched.close()
        if outcome == "gone":
            log.warning("job %s: coordinator gone; dropping it", terms.job_id)
            return "gone"
        if queued.assignment is None:
            await seat.next()
        return "pending" if outcome is None else "ended"

    outcome = "gone"
    async with trio.open_nursery() as verdicts:
        with trio.CancelScope() as claiming:
            outcome = await claims(verdicts, claiming)
        if lost:
            log.warning("job %s: coordinator gone; dropping it", terms.job_id)
            outcome = "gone"
        if outcome == "gone":
            verdicts.cancel_scope.cancel()
    return outcome


async def _still_wanted(a: Assignment, client: httpx.AsyncClient, secret: auth.Credential,
                        silence: Silence) -> bool:
    """Report a queued chunk as starting; False if it was taken over or the job ended.
    Raises CoordinatorGone if this call failed past the job's silence limit: a call that
    hung to its timeout must not be followed by an attempt whose first report hangs too."""
    try:
        ack = await call(client, secret, "POST", f"/v1/jobs/{a.job_id}/progress",
                         Progress(a.job_id, a.chunk, a.attempt, 0, 0.0), (ProgressAck,))
        silence.heard(trio.current_time())
    except PeerError as exc:
        if silence.gone(trio.current_time()):
            raise CoordinatorGone(f"coordinator gone ({exc})") from exc
        return True  # let the attempt itself find out (the silence goes on counting)
    assert isinstance(ack, ProgressAck)
    return ack.keep


# Saying why an attempt failed is a courtesy: the broken upload tells the coordinator anyway.
TELL_FAILED_S = 3.0


async def _tell_failed(client: httpx.AsyncClient, secret: auth.Credential, a: Assignment,
                       reason: str) -> None:
    """Tell the coordinator why the encoder failed, before the upload is cut off."""
    text = "".join(c if c.isprintable() else " " for c in reason)[:MAX_REASON] or "failed"
    with trio.move_on_after(TELL_FAILED_S):
        try:
            await call(client, secret, "POST", f"/v1/jobs/{a.job_id}/failed",
                       AttemptFailed(a.job_id, a.chunk, a.attempt, text), (ResultAck,))
        except PeerError as exc:
            log.debug("chunk %d: could not report the failure: %s", a.chunk, exc)


def _source_url(terms: JobTerms, a: Assignment, secret: auth.Credential) -> str:
    base = terms.source_base or terms.coordinator_url
    return f"{base}{a.source_path}?{auth.url_query(secret, a.source_path, a.attempt)}"


async def _attempt(terms: JobTerms, a: Assignment, *, node_id: str, secret: auth.Credential,
                   ffmpeg: FFmpeg, client: httpx.AsyncClient,
                   on_event: Callable[[NodeEvent], None], timings: Timings,
                   fetched: Prefetch | None = None, queued: _Queued | None = None,
                   silence: Silence, slide_dir: str | None = None,
                   all_sent: Callable[[], None] = lambda: None) -> str:
    """Encode one chunk and stream it back; ``fetched``: its source copied ahead (read
    from there, through a pipe), else ffmpeg reads the coordinator's URL itself.
    ``queued``: the slot's next chunk, named in every report so that a stolen one is
    dropped at once. A slideshow chunk (``a.slides``) fetches its images into
    ``slide_dir`` (peer.slidework), a directory that goes with the attempt. ``silence``:
    the job's (see the module's docstring). ``all_sent`` is called once the encoder has
    finished and its output is all handed to the upload, before the verdict is awaited."""
    if a.slides is not None and slide_dir is None:
        prefix = f"{PREFETCH_DIR_PREFIX}{os.getpid()}-slides-"
        with tempfile.TemporaryDirectory(prefix=prefix) as images:
            return await _attempt(terms, a, node_id=node_id, secret=secret, ffmpeg=ffmpeg,
                                  client=client, on_event=on_event, timings=timings,
                                  queued=queued, slide_dir=images, silence=silence,
                                  all_sent=all_sent)
    try:  # a parted ladder chunk: only some of the invite's rungs (swarm.scheduler, item 5)
        plan: VideoPlan | None = terms.plan.part(a.rungs)
    except ValueError:
        plan = None  # refused below, as a failed attempt
    if a.slides is not None or plan is None:
        argv: list[str] = []  # built once its images are here
    elif fetched is not None:
        argv = encode_chunk_argv(ffmpeg.path, terms.profile, plan, "pipe:0", a.seek_s,
                                 a.trim_s, a.frames, copied=True, keyframes_s=a.keyframes_s)
    else:
        argv = encode_chunk_argv(ffmpeg.path, terms.profile, plan,
                                 _source_url(terms, a, secret), a.seek_s, a.trim_s, a.frames,
                                 recv_buffer=RECV_BUFFER, keyframes_s=a.keyframes_s)
    result_path = f"/v1/jobs/{a.job_id}/chunks/{a.chunk}/result?attempt={a.attempt}"
    send, recv = trio.open_memory_channel[bytes](UPLOAD_QUEUE)
    frames = 0
    started = trio.current_time()
    outcome = "cancelled"
    gone = False
    ended: float | None = None  # when the encoder finished
    answered = trio.Event()  # the upload is over: answered, failed or cancelled

    def progress(n: int) -> None:
        nonlocal frames
        frames = n

    async def body() -> AsyncIterator[bytes]:
        async with recv:
            async for data in recv:
                yield data

    async def upload(attempt_scope: trio.CancelScope) -> None:
        nonlocal outcome
        headers = signed_headers(secret, "PUT", result_path, auth.streamed_digest(a.attempt))
        headers["content-type"] = "application/octet-stream"
        try:
            with transport_errors():
                # A long read: the verdict waits for the coordinator's checks, which a busy
                # one may take minutes over; the reporter watches the link meanwhile.
                resp = await client.put(result_path, content=body(), headers=headers,
                                        timeout=httpx.Timeout(30.0, read=300.0))
        except TransportError as exc:
            outcome = f"upload failed: {exc}"
            attempt_scope.cancel()  # nobody takes the output: stop the encoder
            return
        finally:
            answered.set()
        silence.heard(trio.current_time())
        if resp.status_code == 200:
            ack = decode(resp.content, ResultAck)
            outcome = "done" if ack.accepted else f"refused: {ack.reason}"
        else:
            outcome = f"refused: {resp.status_code}"

    async def reporter(attempt_scope: trio.CancelScope) -> None:
        """Report progress while the encoder runs; after it, until the upload's verdict
        comes, go on reporting its final figures: the coordinator may take a while to
        check the result, and without these calls nothing here would notice a link cut
        in the meantime (the upload's own wait for an answer is long, see ``upload``)."""
        path = f"/v1/jobs/{a.job_id}/progress"
        while True:
            await trio.sleep(timings.progress_every_s)
            elapsed = max(1e-3, (trio.current_time() if ended is None else ended) - started)
            ahead = queued.assignment if queued is not None else None
            try:
                ack = await call(client, secret, "POST", path,
                                 Progress(a.job_id, a.chunk, a.attempt, frames, frames / elapsed,
                                          queued=ahead.attempt if ahead else None),
                                 (ProgressAck,))
                silence.heard(trio.current_time())
            except PeerError:
                if silence.gone(trio.current_time()):
                    nonlocal gone
                    gone = True
                    attempt_scope.cancel()
                    return
                continue
            on_event(SlotProgress(a.chunk, frames, frames / elapsed, a.job_id))
            assert isinstance(ack, ProgressAck)
            if (not ack.queued_keep and queued is not None and ahead is not None
                    and queued.assignment is ahead):
                await queued.drop()
            if not ack.keep and ended is None:
                attempt_scope.cancel()  # replaced or the job is over: stop encoding now
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(upload, nursery.cancel_scope)
        reporting = trio.CancelScope()

        async def report_until_done() -> None:
            with reporting:
                await reporter(nursery.cancel_scope)

        nursery.start_soon(report_until_done)
        try:
            if plan is None:
                raise EncodeError(f"rungs {list(a.rungs)} are not rungs of the invite's ladder")
            if slide_dir is not None:
                # Inside the attempt, so that its reports keep the lease while it fetches.
                run = slide_run_of(a, terms.plan.width, terms.plan.height)
                paths = await fetch_run(client, secret, a, run, slide_dir)
                argv = render_argv(ffmpeg.path, run, paths, terms.profile, terms.threads)
            await run_ffmpeg(argv, stdout_sink=send.send, on_progress=progress,
                             stdin_feed=fetched.feed if fetched is not None else None,
                             what=f"chunk {a.chunk}")
        except EncodeError as exc:
            # Abort the upload (the channel stays open) so the coordinator sees a broken
            # body rather than a complete-looking short chunk.
            log.warning("chunk %d: %s", a.chunk, exc)
            outcome = "failed"
            await _tell_failed(client, secret, a, str(exc))
            nursery.cancel_scope.cancel()
        else:
            await send.aclose()
            ended = trio.current_time()
            all_sent()
            await answered.wait()
        reporting.cancel()
    if gone:
        raise CoordinatorGone(f"job {terms.job_id}: no answer for "
                              f"{timings.coordinator_gone_s:g} s")
    return outcome
