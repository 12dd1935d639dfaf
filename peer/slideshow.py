"""`swarm slideshow`: still images to one video, the chunks (runs of images) rendered in
parallel on this device's slots and on peers, then joined with the music.

The plan and every argv are ``chunker.slides``'; this module checks the images, hands the
chunks out through the same machinery as ``swarm encode`` (``SlideServer``, a
``peer.jobserver.JobServer``: claims, leases, retries, recruiting), verifies each chunk,
merges, and verifies the output. A peer's assignment describes its run
(``swarm.protocol.SlideRun``); it fetches only that run's images, by index, from
``/v1/jobs/ID/images/<k>`` while its attempt runs (``peer.slidework``). The work directory
(``.<output>.slides/`` beside the output) goes on success, failure and Ctrl-C; the output
appears only whole and verified.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import trio

from chunker.commands import VideoPlan, write_concat_list
from chunker.plan import ChunkPlan
from chunker.probe import MediaInfo
from chunker.slides import SlidePlan, plan_slides, slide_argv, slide_runs, soundtrack_args
from chunker.tools import FFmpeg, find_ffmpeg
from profiles import Profile
from swarm.errors import EncodeError, UsageError, VerifyError
from swarm.events import ChunkDone, ChunkDuplicate, ImageSkipped, Listening, SlideEvent
from swarm.job import Finished, Grant, Retry
from swarm.protocol import Assignment, JobDone, SlideRun, Wait
from swarm.spotcheck import sample_frames
from swarm.spotcheck import verdict as spot_verdict

from . import media, transfer
from .coordinator import _watch
from .host import default_workers
from .http import HTTPError, Receive, Request, Send
from .jobserver import JobServer
from .local import LOCAL_NICE, ffmpeg_to_file
from .node import Node, NodeConfig
from .options import EncodeOptions, JobIntent, LocalSettings, NetworkSettings, Tuning
from .proc import niced, run_ffmpeg
from .recruit import census, recruit
from .slidework import image_kind
from .transfer import unlink

__all__ = ["SlideshowOptions", "check_image", "run_slideshow"]

# A decoded image's error output kept for the message that names it.
_WHY_CHARS = 160
# The music may end up to an AAC frame (1024 samples, 23 ms at 44.1 kHz) off the video's
# end, plus the muxer's rounding: a few frames is a loss, not rounding.
MUSIC_SLACK_S = 0.05


@dataclass(frozen=True, slots=True)
class SlideshowOptions:
    images: tuple[str, ...]  # absolute paths, in show order
    output: str
    profile: Profile
    seconds_per_image: float = 3.0
    fade_s: float = 0.5
    audio: str | None = None
    bad_images: str = "skip"  # or "refuse": a bad image fails the job before it starts
    workers: int = 0  # local slots; 0: host.default_workers()
    force: bool = False
    ffmpeg: str | None = None  # SWARM_FFMPEG (swarm.config.Environment), passed down by cli.py
    no_local: bool = False  # only coordinate peers
    # Peers as for `swarm encode` (--peer, mDNS, --secret); disabled: this device only.
    net: NetworkSettings = field(default_factory=NetworkSettings)
    tuning: Tuning = field(default_factory=Tuning)


async def check_image(ffmpeg: FFmpeg, path: str) -> str | None:
    """Why ``path`` cannot be shown (empty, not an image, truncated), or None."""
    try:
        size = (await trio.Path(path).stat()).st_size
    except OSError as exc:
        return exc.strerror or str(exc)
    if size == 0:
        return "empty file"
    try:
        async with await trio.open_file(path, "rb") as fh:
            head = await fh.read(16)
    except OSError as exc:
        return exc.strerror or str(exc)
    if image_kind(head) is None:
        # What a peer would refuse to render (peer.slidework): the same show everywhere.
        return "not a JPEG, PNG, WebP, BMP or TIFF image"
    res = await run_ffmpeg([ffmpeg.path, "-nostdin", "-hide_banner", "-v", "error", "-i",
                            path, "-frames:v", "1", "-f", "null", "-"], check=False,
                           what="image check")
    if res.returncode != 0 or res.stderr.strip():
        lines = res.stderr.strip().splitlines()
        first = lines[0] if lines else f"ffmpeg exited {res.returncode}"
        return re.sub(r"^\[[^\]]* @ 0x[0-9a-f]+\] ", "", first)[:_WHY_CHARS]
    return None


def _check_output(opts: SlideshowOptions) -> Path:
    """Refuses what cannot be written; returns the work directory beside the output."""
    out = Path(opts.output)
    if out.suffix.lower() not in (".mp4", ".mov", ".mkv", ".m4v"):
        raise UsageError(f"output {opts.output}: use .mp4, .mov or .mkv")
    if not out.resolve().parent.is_dir():
        raise UsageError(f"output directory {out.resolve().parent} does not exist")
    if out.is_dir():
        raise UsageError(f"{opts.output} is a directory")
    if os.path.lexists(out) and not opts.force:
        raise UsageError(f"{opts.output} exists; use --force to replace it")
    if opts.audio is not None and not os.path.isfile(opts.audio):
        raise UsageError(f"--audio {opts.audio}: no such file")
    return out.resolve().parent / f".{out.name}.slides"


async def run_slideshow(opts: SlideshowOptions,
                        emit: Callable[[SlideEvent], None] = lambda e: None) -> dict[str, Any]:
    """Render the slideshow; returns a small report. Raises SwarmError subclasses."""
    t0 = trio.current_time()
    workdir = _check_output(opts)
    need = [opts.profile.video.codec] + ([opts.profile.audio.codec] if opts.audio else [])
    ffmpeg = await trio.to_thread.run_sync(find_ffmpeg, need, opts.ffmpeg)
    if opts.audio is not None:
        res = await run_ffmpeg([ffmpeg.path, "-nostdin", "-v", "error", "-i", opts.audio,
                                "-map", "0:a:0", "-t", "0.5", "-f", "null", "-"], check=False,
                               what="music check")
        if res.returncode != 0:
            why = (res.stderr.strip().splitlines() or ["no audio stream"])[-1]
            raise UsageError(f"--audio {opts.audio}: {why[:_WHY_CHARS]}")
    bad: dict[str, str] = {}
    limit = trio.CapacityLimiter(max(2, os.cpu_count() or 1))

    async def check(path: str) -> None:
        async with limit:
            why = await check_image(ffmpeg, path)
        if why is not None:
            bad[path] = why

    async with trio.open_nursery() as n:
        for path in opts.images:
            n.start_soon(check, path)
    if bad and opts.bad_images == "refuse":
        listed = "; ".join(f"{p}: {why}" for p, why in sorted(bad.items()))
        raise UsageError(f"{len(bad)} bad image(s): {listed}")
    for path in opts.images:
        if path in bad:
            emit(ImageSkipped(path, bad[path]))
    images = [p for p in opts.images if p not in bad]
    try:
        plan = plan_slides(images, opts.seconds_per_image, opts.fade_s, opts.profile)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if opts.no_local and not opts.net.enabled:
        raise UsageError("--no-local needs peers: leave networking on")
    workers = 0 if opts.no_local else (opts.workers or default_workers())
    eopts = EncodeOptions(JobIntent(images[0], opts.output, opts.profile, force=opts.force),
                          LocalSettings(workers=workers, no_local=opts.no_local,
                                        ffmpeg=opts.ffmpeg),
                          opts.net, opts.tuning)
    # The chunks follow the swarm, as for a video: peers that answer now count a slot each.
    seen = await census(eopts) if opts.net.enabled and opts.net.discover else 0
    runs = slide_runs(len(images), max(1, workers + seen + len(opts.net.peers)))
    # What a peer checks each image it fetches against (only peers fetch them).
    described = (await trio.to_thread.run_sync(_describe, images) if opts.net.enabled
                 else [])
    try:
        await trio.Path(workdir).mkdir(exist_ok=True)
        server = SlideServer(job_id=secrets.token_urlsafe(12), opts=eopts, ffmpeg=ffmpeg,
                             plan=plan, runs=runs, described=described, workdir=str(workdir),
                             emit=emit, expected_slots=max(1, workers + seen))
        if workers:
            server.add_local(None, workers, ffmpeg.short_version)
        await _render(server, eopts, workers)
        tmp_out = str(workdir / ("output" + Path(opts.output).suffix.lower()))
        files = [r.file for r in server.records]
        await _merge(ffmpeg, plan, runs, files, opts, str(workdir), tmp_out)
        os.replace(tmp_out, opts.output)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(shutil.rmtree, workdir, True)
    return {"output": opts.output, "images": len(images), "frames": plan.frames,
            "duration_s": round(plan.duration_s, 6), "chunks": len(runs),
            "skipped": [{"image": p, "reason": why} for p, why in sorted(bad.items())],
            "audio": opts.audio, "wall_s": round(trio.current_time() - t0, 3),
            "rendered": server.rendered(), "left_out": dict(server.left_out)}


def _describe(paths: list[str]) -> list[tuple[int, str]]:
    """Each image's size and SHA-256, read once."""
    out = []
    for path in paths:
        sha = hashlib.sha256()
        size = 0
        with open(path, "rb") as fh:
            while piece := fh.read(1 << 20):
                sha.update(piece)
                size += len(piece)
        out.append((size, sha.hexdigest()))
    return out


class SlideServer(JobServer):
    """A slideshow as its encoders see it: the JobServer of a job whose chunks are runs of
    images. Claims, leases, retries and recruiting are the JobServer's; what differs is
    what a peer is told (its run, ``Assignment.slides``), what it may fetch (the run's
    images, by index, while its attempt runs) and how a chunk is checked (its frames and
    box, a clean decode, and for some of a peer's results, pictures against our render)."""

    def __init__(self, *, job_id: str, opts: EncodeOptions, ffmpeg: FFmpeg, plan: SlidePlan,
                 runs: list[tuple[int, int]], described: list[tuple[int, str]], workdir: str,
                 emit: Callable[[Any], None], expected_slots: int) -> None:
        per, fps = plan.per_image, plan.fps
        plans = [ChunkPlan(i, first * per, count * per, None, None, first * per / fps,
                           count * per / fps, True) for i, (first, count) in enumerate(runs)]
        gop = max(1, round(opts.job.profile.video.gop_s * fps))
        # No source video: the JobServer's uses of ``info`` (seeking, cutting chunks,
        # serving the source, the video checks) are all replaced here or never reached
        # (no cuts are offered).
        super().__init__(job_id=job_id, opts=opts, ffmpeg=ffmpeg, info=cast(MediaInfo, None),
                         plans=plans, vplan=VideoPlan(plan.width, plan.height, gop),
                         workdir=workdir, emit=emit, local_key="local",
                         expected_slots=expected_slots)
        self.slides = plan
        self.runs = runs
        self.described = described
        self.images_path = f"/v1/jobs/{job_id}/images"
        self.served: dict[int, set[int]] = {}  # chunk -> images its peers fetched

    def reads(self, chunk: int) -> list[int]:
        """The images a chunk's render reads: its own, and the next one it fades into."""
        first, count = self.runs[chunk]
        end = first + count + (self.slides.fade > 0)
        return list(range(first, min(end, len(self.slides.images))))

    async def read_layout(self) -> None:
        """No source video to index: a run's images are fetched when it starts."""

    def claim_remote(self, node_id: str, now: float, prefetch: bool = False
                     ) -> Assignment | Wait | JobDone:
        reply = super().claim_remote(node_id, now, prefetch)
        if not isinstance(reply, Assignment):
            return reply
        reads = self.reads(reply.chunk)
        run = SlideRun(images=self.runs[reply.chunk][1], per_image=self.slides.per_image,
                       fade=self.slides.fade, width=self.slides.width,
                       height=self.slides.height,
                       sizes=tuple(self.described[i][0] for i in reads),
                       sha256=tuple(self.described[i][1] for i in reads))
        return dataclasses.replace(reply, source_path=self.images_path, seek_s=None,
                                   trim_s=None, prefetch_bytes=None, slides=run)

    async def serve_image(self, attempt: str, index: int, request: Request, send: Send,
                          receive: Receive, head: bool) -> None:
        """The ``index``-th image of the attempt's run, to the peer rendering it."""
        if not self.running_attempt(attempt) or attempt not in self.job.attempts:
            raise HTTPError("attempt is not running", status_code=410)
        a = self.job.attempts[attempt]
        reads = self.reads(a.chunk)
        if index >= len(reads):
            raise HTTPError("no such image in this chunk", status_code=404)
        self.heard(attempt, trio.current_time())
        image = reads[index]
        size = self.described[image][0]
        path = self.slides.images[image]
        try:
            now_size = (await trio.Path(path).stat()).st_size
        except OSError:
            now_size = -1
        if now_size != size:
            raise HTTPError("the image changed since the show was planned", status_code=409)
        self.served.setdefault(a.chunk, set()).add(image)
        run = self._attempt(attempt)

        def sent(n: int) -> None:
            run.served += n

        await transfer.send_file(send, receive, path, size, request.headers.get("range"),
                                 head, sent)

    async def serve_source(self, attempt: str, request: Request, send: Send,
                           receive: Receive, head: bool) -> None:
        raise HTTPError("a slideshow has no source video; fetch its images", status_code=404)

    async def accept(self, attempt: str, path: str, bytes_in: int) -> tuple[bool, str]:
        """Verify a rendered chunk (frames, box, decoding parameters, a clean decode for a
        peer's); keep it if it is the first valid one."""
        a = self.job.attempts.get(attempt)
        if a is None or not self.running_attempt(attempt):
            await trio.to_thread.run_sync(unlink, path)
            return False, "attempt no longer wanted"
        self.job.delivering(attempt, trio.current_time())
        rec = self.records[a.chunk]
        sets = await trio.to_thread.run_sync(self._param_sets_of, path, 1)
        why = self._param_sets_mismatch(attempt, sets, (0,))
        if why is None:
            try:
                await self._verify(path, rec.plan.frames, a.peer != self.local_key)
            except VerifyError as exc:
                why = f"verification: {exc}"
        if why is None and a.peer != self.local_key and self._spot_check_due(a.peer):
            # Right frames and box but other pictures: a lie, benched like a video's.
            why = await self._slide_content_problem(a.chunk, path)
        if why is not None:
            if self.param_sets_from == attempt and not self.param_sets_kept:
                self.param_sets = None  # a rejected chunk must not set the job's reference
            await trio.to_thread.run_sync(unlink, path)
            self.fail(attempt, why, bench=a.peer != self.local_key)
            return False, why
        if not self.job.succeeded(attempt, trio.current_time()):
            await trio.to_thread.run_sync(unlink, path)
            self.emit(ChunkDuplicate(a.chunk, attempt, self.name_of(a.peer)))
            return False, "chunk already done"
        final = os.path.join(self.workdir, f"chunk_{a.chunk:05d}.nut")
        os.replace(path, final)
        self.param_sets_kept = True
        now = trio.current_time()
        started = self._attempt(attempt).started
        rec.peer, rec.file, rec.bytes_in = self.name_of(a.peer), final, bytes_in
        rec.encode_s = now - (started if started is not None else now)
        rec.bytes_out = (await trio.Path(final).stat()).st_size
        self.emit(ChunkDone(a.chunk, attempt, rec.peer, round(rec.encode_s, 3),
                            rec.plan.frames, self.job.frames_done))
        if self.job.done:
            self.last_done_remote = a.peer != self.local_key
            self.finished.set()
        return True, ""

    async def _slide_content_problem(self, chunk: int, path: str) -> str | None:
        """A peer's chunk against our own render of a few of its frames that it could not
        predict (swarm.spotcheck, as for a video's chunks; chunker.spotcheck)."""
        first, count = self.runs[chunk]
        samples = sample_frames(count * self.slides.per_image, self.spot_rng)
        try:
            compared = await media.slide_check(self.ffmpeg, path, self.slides, first, count,
                                               samples)
        except VerifyError as exc:
            return str(exc)
        return spot_verdict(samples, [(c.own, c.others, c.changes) for c in compared])

    async def _verify(self, path: str, frames: int, decode: bool) -> None:
        info = await media.probe(self.ffmpeg, path)
        if info.video.frames != frames:
            raise VerifyError(f"{info.video.frames} frames, expected {frames}")
        box = (info.video.width, info.video.height)
        if box != (self.slides.width, self.slides.height):
            raise VerifyError(f"{box[0]}x{box[1]}, expected "
                              f"{self.slides.width}x{self.slides.height}")
        if decode:  # a peer's file: every frame must decode (ours come from our ffmpeg)
            res = await run_ffmpeg([self.ffmpeg.path, "-nostdin", "-v", "error", "-i", path,
                                    "-f", "null", "-"], check=False, what="chunk decode")
            if res.returncode != 0 or res.stderr.strip():
                first = (res.stderr.strip().splitlines() or ["decoding failed"])[0]
                raise VerifyError(first[:_WHY_CHARS])

    def rendered(self) -> list[dict[str, Any]]:
        """Who rendered each chunk, and which images its peers fetched (the report)."""
        return [{"chunk": i, "first_image": first, "images": count,
                 "peer": self.records[i].peer,
                 "fetched": sorted(self.served.get(i, ())),
                 "encode_s": round(self.records[i].encode_s, 3)}
                for i, (first, count) in enumerate(self.runs)]


async def _render(server: SlideServer, opts: EncodeOptions, workers: int) -> None:
    """This device's slots, and with networking a node that peers claim from and the
    recruiting of peers, until every chunk is in (the watch is ``swarm encode``'s)."""
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    async with trio.open_nursery() as nursery:
        if opts.net.enabled:
            node = Node(NodeConfig.coordinating(opts.net, opts.tuning.timings,
                                                opts.local.cache_dir), server.ffmpeg,
                        coordinator=True)
            await nursery.start(node.run)
            node.jobs[server.job_id] = server
            server.emit(Listening(node.port))
            nursery.start_soon(recruit, server, node, opts, server.emit)
        for _ in range(workers):
            nursery.start_soon(_slide_slot, server, threads)
        await _watch(server, workers, opts)
        if opts.net.enabled and server.last_done_remote:
            # Let the reply to the last result reach its peer before the server stops.
            await trio.sleep(opts.tuning.timings.response_grace_s)
        nursery.cancel_scope.cancel()


async def _slide_slot(server: SlideServer, threads: int) -> None:
    """One local slot: claim a chunk, render it into the work directory, hand it over."""
    while True:
        action = server.claim(server.local_key, trio.current_time())
        if isinstance(action, Finished):
            return
        if isinstance(action, Retry):
            if server.local_key in server.job.benched:
                return
            await trio.sleep(action.retry_after_s)
            continue
        name = await _render_local(server, action, threads)
        if name is not None:
            await server.accept(action.attempt, name, 0)


async def _render_local(server: SlideServer, a: Grant, threads: int) -> str | None:
    """Render one chunk into the work directory; its file, or None if the attempt failed
    or is no longer wanted."""
    first, count = server.runs[a.chunk]
    name = os.path.join(server.workdir, f"recv_{a.attempt}.nut")
    argv = niced(slide_argv(server.ffmpeg.path, server.slides, first, count,
                            server.opts.job.profile, "pipe:1", threads=threads, progress=True),
                 LOCAL_NICE)  # the peers' images and checks first, as for a video
    done = 0
    with trio.CancelScope() as scope:

        def progress(frames: int) -> None:
            nonlocal done
            done = frames
            if not server.progress(a.attempt, frames, trio.current_time()):
                scope.cancel()  # done elsewhere, or its lease lost

        async def alive() -> None:
            # Our slot is alive while its ffmpeg runs: a 1080p render on a slow device
            # reported nothing for over a lease (15 s) before its first frame and after
            # its last (x264's lookahead), and lost its chunk every time (bench/slides).
            while True:
                await trio.sleep(server.opts.tuning.timings.lease_s / 3)
                progress(done)

        try:
            async with trio.open_nursery() as keep:
                keep.start_soon(alive)
                await ffmpeg_to_file(argv, name, on_progress=progress,
                                     what=f"slide chunk {a.chunk}")
                keep.cancel_scope.cancel()
            return name
        except EncodeError as exc:
            server.fail(a.attempt, str(exc))
    with trio.CancelScope(shield=True):
        await trio.to_thread.run_sync(unlink, name)
    return None


async def _merge(ffmpeg: FFmpeg, plan: SlidePlan, runs: list[tuple[int, int]],
                 files: list[str], opts: SlideshowOptions, workdir: str, out: str) -> None:
    concat = os.path.join(workdir, "chunks.ffconcat")
    spans: list[float | None] = [count * plan.per_image / plan.fps for _, count in runs]
    await trio.to_thread.run_sync(write_concat_list, concat, files, spans)
    fmt = {".mkv": "matroska", ".mov": "mov"}.get(Path(out).suffix.lower(), "mp4")
    argv = [ffmpeg.path, "-nostdin", "-hide_banner", "-loglevel", "error", "-f", "concat",
            "-safe", "0", "-i", concat, *soundtrack_args(opts.audio, plan.duration_s,
                                                         opts.profile),
            "-map", "0:v", "-c:v", "copy", "-f", fmt, "-y", out]
    if fmt != "matroska":
        argv[-4:-4] = ["-movflags", "+faststart"]
    try:
        await run_ffmpeg(argv, what="slideshow merge")
    except EncodeError as exc:
        raise EncodeError(f"merging the slideshow: {exc}") from exc
    info = await media.probe(ffmpeg, out)
    if info.video.frames != plan.frames:
        raise VerifyError(f"slideshow has {info.video.frames} frames, expected {plan.frames}")
    if opts.audio is not None:
        if not info.audios:
            raise VerifyError("slideshow lost its music")
        span = info.audios[0].end_s - info.video.start_s
        if abs(span - plan.duration_s) > MUSIC_SLACK_S:
            raise VerifyError(f"music lasts {span:.2f} s, the video {plan.duration_s:.2f} s")
