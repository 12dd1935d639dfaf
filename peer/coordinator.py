"""The coordinator of one job: probe, plan, hand out chunks, merge, verify.

Decisions (which chunk to whom, leases, requeues) are ``swarm.job.Job``'s; the job's state
as encoders see it is ``peer.jobserver.JobServer``. ``run_encode`` drives a whole job: it
starts a node, recruits peers (``peer.recruit``), runs local slots (``peer.local``), ticks
leases, merges, and writes the report (``peer.report``). Everything it writes lives in one
work directory beside the output (same filesystem, so the final rename is atomic), removed
on success, failure and Ctrl-C.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

from chunker.commands import AUDIO_COPY_EXACT, VideoPlan, ladder_plan, video_plan
from chunker.plan import (
    ChunkPlan,
    cut_offsets,
    default_chunk_seconds,
    min_piece_frames,
    plan_chunks,
    plans_from_rows,
)
from chunker.probe import MediaInfo
from chunker.tools import FFmpeg, find_ffmpeg
from chunker.tracks import AUDIO_MODES, SUBTITLE_MODES, TrackPlan, plan_tracks
from profiles import Profile, Rung, ladder_order
from swarm.errors import EncodeError, UsageError
from swarm.events import JobEnd, JobEvent, JobResumed, JobStart, Listening, Merge, Tracks
from swarm.liveness import stalled
from swarm.verdict import BENCH_GRACE_S, nobody_left

from . import media
from .gate import Share
from .hls import HLS_CHUNK_S, HlsPublisher, check_hls_dir, hls_publisher
from .hls import publish as publish_hls
from .host import default_workers
from .jobserver import JobServer
from .journal import (
    MERGED_KEY,
    InputIdentity,
    Journal,
    input_identity,
    output_is_ours,
    output_stamp,
    work_dir_for,
)
from .local import audio_when_idle, local_slot
from .node import Node, NodeConfig
from .options import EncodeOptions
from .recruit import census, recruit
from .report import build_report
from .transfer import unlink

__all__ = ["EncodeOptions", "ladder_outputs", "output_container", "planned_video", "run_encode",
           "verify_rendition", "with_ladder"]

log = logging.getLogger(__name__)

_CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}

def tracks_event(t: TrackPlan) -> Tracks:
    return Tracks(audio=tuple(k.as_dict() for k in t.audio),
                  subtitles=tuple(k.as_dict() for k in t.subtitles),
                  attachments=tuple(k.as_dict() for k in t.attachments),
                  chapters=t.chapters, tags=dict(t.tags),
                  dropped=tuple(d.as_dict() for d in t.dropped))


def output_container(path: str) -> str:
    ext = Path(path).suffix.lower()
    if ext not in _CONTAINERS:
        raise UsageError(f"output {path}: use one of {', '.join(_CONTAINERS)} as extension")
    return _CONTAINERS[ext]


def _check_paths(opts: EncodeOptions) -> tuple[str, str]:
    """Returns the output container and the output's directory."""
    src = Path(opts.job.input)
    if not src.exists():
        raise UsageError(f"{opts.job.input}: no such file")
    if not src.is_file():
        raise UsageError(f"{opts.job.input}: not a file")
    if not os.access(src, os.R_OK):
        raise UsageError(f"{opts.job.input}: not readable")
    container = output_container(opts.job.output)
    outdir = Path(opts.job.output).resolve().parent
    if not outdir.is_dir():
        raise UsageError(f"output directory {outdir} does not exist")
    if not os.access(outdir, os.W_OK | os.X_OK):
        raise UsageError(f"output directory {outdir} is not writable")
    if Path(opts.job.output).resolve() == src.resolve():
        raise UsageError("output would overwrite the input")
    return container, str(outdir)


def _refuse_overwrite(opts: EncodeOptions, ours: str | None = None) -> str | None:
    """An existing output is replaced only with --force, or if a crashed run of this job
    renamed it there (then a rerun finishes that job). Checked at the start, so a mistake
    costs nothing, and again just before the rename (``ours``: what the first check
    returned, the stamp of the file it allowed), for a file that appeared meanwhile."""
    if os.path.isdir(opts.job.output):
        raise UsageError(f"{opts.job.output} is a directory")
    if not os.path.lexists(opts.job.output) or opts.job.force:
        return None
    try:
        stamp = output_stamp(opts.job.output)
    except OSError:  # a dangling symlink
        stamp = None
    if stamp is None or (stamp != ours and not output_is_ours(opts.job.output)):
        raise UsageError(f"{opts.job.output} exists; use --force to replace it")
    return stamp


def with_ladder(opts: EncodeOptions) -> EncodeOptions:
    """``--ladder`` heights put into the profile; with a ladder and ``-o DIR/``, the output
    named for the first rendition inside DIR (``ladder_outputs`` names the others)."""
    job = opts.job
    if job.ladder:
        rungs = ladder_order([Rung(h) for h in job.ladder], "--ladder")
        job = replace(job, profile=replace(job.profile, ladder=rungs))
    if job.profile.ladder and (job.output.endswith(os.sep) or os.path.isdir(job.output)):
        out_dir = Path(job.output)
        if not out_dir.is_dir():
            try:
                out_dir.mkdir()
            except OSError as exc:
                raise UsageError(f"-o {job.output}: {exc.strerror or exc}") from exc
        top = job.profile.ladder[0].height
        job = replace(job, output=str(out_dir / f"{Path(job.input).stem}.{top}p.mp4"))
    return replace(opts, job=job)


def planned_video(opts: EncodeOptions, info: MediaInfo) -> VideoPlan:
    """The output's size and GOP, with every rung of a ladder sized for this source.
    ``opts`` as ``with_ladder`` left them. UsageError for a rung taller than the source."""
    fps = info.video.frames / info.duration_s if info.duration_s > 0 else 30.0
    dw, dh = info.video.display_size
    vplan = video_plan(opts.job.profile, dw, dh, fps, opts.job.upscale, info.video.time_base)
    return ladder_plan(opts.job.profile, vplan, dw, dh, opts.job.upscale)


def ladder_outputs(output: str, plan: VideoPlan) -> list[str]:
    """Where each rendition after the first is written: beside the output, named for its
    height (``clip.720p.mp4`` next to ``clip.1080p.mp4``; ``out.480p.mp4`` next to
    ``out.mp4``)."""
    p = Path(output)
    stem = p.stem
    if plan.rungs and stem.endswith(f".{min(plan.width, plan.height)}p"):
        stem = stem.rsplit(".", 1)[0]
    return [str(p.with_name(f"{stem}.{min(r.width, r.height)}p{p.suffix}"))
            for r in plan.rungs[1:]]


def _refuse_extra(paths: list[str], force: bool) -> None:
    for path in paths:
        if os.path.lexists(path) and not force:
            raise UsageError(f"{path} exists; use --force to replace it")


async def run_encode(opts: EncodeOptions, emit: Callable[[JobEvent], None] = lambda e: None,
                     share: Share | None = None) -> dict[str, Any]:
    """Encode one file; returns the report. Raises SwarmError subclasses on failure.
    ``share``: this file's place at a batch's gate for the local slots (``peer.batch``)."""
    t_start = trio.current_time()
    opts = with_ladder(opts)
    container, outdir = _check_paths(opts)
    ours = _refuse_overwrite(opts)
    if opts.job.hls is not None:
        # A crashed run of this job left its journal, and maybe its stream: rerunning
        # resumes both (the stream is rebuilt from the kept chunks).
        check_hls_dir(opts.job.hls, opts.job.force or work_dir_for(opts.job.output).exists())
    if opts.local.no_local and not opts.net.enabled:
        raise UsageError("--no-local needs peers: leave networking on")
    if opts.job.audio not in AUDIO_MODES or opts.job.subtitles not in SUBTITLE_MODES:
        raise UsageError(f"--audio {opts.job.audio} --subtitles {opts.job.subtitles}: use "
                         f"{'|'.join(AUDIO_MODES)} and {'|'.join(SUBTITLE_MODES)}")
    need = [opts.job.profile.video.codec, opts.job.profile.audio.codec]
    seen = 0

    async def count_peers() -> None:
        nonlocal seen
        seen = await census(opts)

    async with trio.open_nursery() as nursery:
        # The chunk count follows the swarm: listen for peers while finding and probing.
        if opts.net.enabled and opts.net.discover and opts.job.chunk_seconds is None:
            nursery.start_soon(count_peers)
        ffmpeg = await trio.to_thread.run_sync(find_ffmpeg, need, opts.local.ffmpeg)
        info = await media.probe(ffmpeg, opts.job.input)
    workers = 0 if opts.local.no_local else (opts.local.workers or default_workers())
    threads = opts.local.threads or max(1, (os.cpu_count() or 1) // max(1, workers))
    # Peers count one slot each (a `join` node's default); named ones count too.
    slots = max(2, workers + seen + len(opts.net.peers))
    chunk_s = opts.job.chunk_seconds or default_chunk_seconds(info.duration_s, slots)
    if opts.job.hls is not None and opts.job.chunk_seconds is None:
        # A stream is playable once its first chunk is in: shorter chunks, at the size cost
        # bench/quality measures (4 s: 3.7 % against 2.2 % at 8 s).
        chunk_s = min(chunk_s, HLS_CHUNK_S)
    plans = plan_chunks(info.video, info.format_start_s, chunk_s,
                        keyframe_seek=info.keyframe_seek)
    frames = info.video.frames
    fps = frames / info.duration_s if info.duration_s > 0 else 30.0
    vplan = planned_video(opts, info)
    extra_outputs = ladder_outputs(opts.job.output, vplan)
    _refuse_extra(extra_outputs, opts.job.force)
    tracks = plan_tracks(info, container, opts.job.profile.audio.channels,
                         opts.job.profile.audio.codec, opts.job.audio, opts.job.subtitles,
                         mkv_name=Path(opts.job.output).with_suffix(".mkv").name)
    workdir_path = work_dir_for(opts.job.output)
    try:
        identity = await trio.to_thread.run_sync(input_identity, opts.job.input)
        workdir_path.mkdir(exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot write in {outdir}: {exc.strerror}") from exc
    workdir = str(workdir_path)
    journal = Journal(workdir_path)  # UsageError if another encode holds it
    hls: HlsPublisher | None = None
    done = False
    try:
        plans, job_id, resuming = await _open_plan(journal, opts, info, identity, plans,
                                                   workdir)
        # The default plan follows the swarm: the scheduler may cut a chunk at its
        # keyframes to fit a claimer's share (swarm.scheduler, item 4). A length the user
        # chose is kept, and so is an --hls plan: its publisher fixes the segments (their
        # indices, starts and spans) from the plan before the first chunk is in.
        cuts = ([cut_offsets(info.video, p) for p in plans]
                if opts.job.chunk_seconds is None and opts.job.hls is None else None)
        server = JobServer(job_id=job_id, opts=opts, ffmpeg=ffmpeg, info=info, plans=plans,
                           vplan=vplan, workdir=workdir, emit=emit, local_key="local",
                           journal=journal, tracks=tracks, cuts=cuts,
                           min_piece=min_piece_frames(fps),
                           # Not the plan's floor of 2: one local slot expects nobody else.
                           expected_slots=max(1, workers + seen + len(opts.net.peers)))
        server.peers_seen, server.chunk_s = seen, chunk_s
        if opts.job.hls is not None:
            server.segment_s = opts.job.segment_s
        if share is not None:
            server.next_file_ready = share.next_ready.is_set
        if workers:
            server.add_local(_local_score(ffmpeg, opts.job.profile, opts.local.cache_dir),
                             workers, ffmpeg.short_version)
        emit(JobStart(input=opts.job.input, output=opts.job.output,
                      profile=opts.job.profile.name,
                      frames=frames, chunks=len(plans), duration_s=info.duration_s,
                      width=vplan.width, height=vplan.height, workers=workers,
                      ffmpeg=ffmpeg.version, job_id=job_id,
                      secret=opts.net.secret is not None or opts.net.closed,
                      network=opts.net.enabled, name=opts.net.name, policy=server.job.policy,
                      peers_seen=seen, chunk_s=round(chunk_s, 3)))
        # What the output will hold besides the video, and what it cannot (said once).
        emit(tracks_event(tracks))
        if resuming:
            await server.restore_from_journal()
            emit(JobResumed(len(server.restored), tuple(sorted(server.restored)), len(plans),
                            server.job.frames_done))
        audio_file = None
        if tracks.audio and opts.job.profile.audio.codec in AUDIO_COPY_EXACT:
            audio_file = os.path.join(workdir, "audio.mp4")
        if opts.job.hls is not None:
            hls = hls_publisher(opts, ffmpeg, info, plans, vplan, tracks, emit, t_start,
                                replace=opts.job.force or resuming)
        # The job's services: the audio (it waits for a free core: ``server.core_idle``),
        # the --hls publisher and the encoders, while the watch runs here until every chunk
        # is in.
        async with trio.open_nursery() as services:
            if audio_file is not None:
                services.start_soon(audio_when_idle, server, audio_file, share)
            if hls is not None:
                services.start_soon(publish_hls, hls, server, audio_file,
                                    opts.job.profile.audio.codec)
                # A stream needs its audio from the first segment on: encode it at once.
                server.core_idle.set()
            encoders: trio.CancelScope = await services.start(
                _encoders, server, opts, ffmpeg, emit, workers, threads, share)
            await _watch(server, workers, opts)
            if opts.net.enabled and server.last_done_remote:
                # Let the reply to the last result reach its peer before the server stops.
                await trio.sleep(opts.tuning.timings.response_grace_s)
            encoders.cancel()
            # Whatever is still to do (the audio) now has the machine to itself.
            server.core_idle.set()
        journal.set("state", "merging")
        emit(Merge())
        tmp_out = os.path.join(workdir, "output" + Path(opts.job.output).suffix.lower())
        ordered = server.in_order()
        await media.merge(ffmpeg, workdir, [r.file for r in ordered],
                          [r.plan.span_s for r in ordered], info, opts.job.profile, tracks,
                          tmp_out, container, audio_file)
        await verify_rendition(ffmpeg, tmp_out, info, tracks, vplan.width, vplan.height)
        # The other renditions: the same chunks' other video streams, the same audio.
        extra_tmp = []
        for i, path in enumerate(extra_outputs, start=1):
            tmp = os.path.join(workdir, f"output{i}" + Path(path).suffix.lower())
            await media.merge(ffmpeg, workdir, [r.file for r in ordered],
                              [r.plan.span_s for r in ordered], info, opts.job.profile, tracks,
                              tmp, output_container(path), audio_file, rung=i)
            await verify_rendition(ffmpeg, tmp, info, tracks, vplan.rungs[i].width,
                                    vplan.rungs[i].height)
            extra_tmp.append(tmp)
        _refuse_overwrite(opts, ours)
        journal.set(MERGED_KEY, output_stamp(tmp_out))
        for tmp, path in zip(extra_tmp, extra_outputs, strict=True):
            os.replace(tmp, path)
        os.replace(tmp_out, opts.job.output)
        report = build_report(server, trio.current_time() - t_start)
        if extra_outputs:
            report["renditions"] = [
                {"output": path, "width": r.width, "height": r.height}
                for path, r in zip([opts.job.output, *extra_outputs], vplan.rungs, strict=True)]
        if hls is not None:
            report["hls"] = hls.report()
        emit(JobEnd(opts.job.output, report["wall_s"]))
        done = True
        return report
    finally:
        # Success, failure and Ctrl-C all end here and leave nothing; only a crash (SIGKILL,
        # power loss) skips this, and then the journal and its chunks are there to resume.
        journal.close()
        if hls is not None and not done:
            hls.remove()  # a stream that will never end is not left behind
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(shutil.rmtree, workdir, True)


async def verify_rendition(ffmpeg: FFmpeg, path: str, info: MediaInfo, tracks: TrackPlan,
                           width: int, height: int) -> None:
    out = await media.verify_output(ffmpeg, path, info, tracks)
    if (out.video.width, out.video.height) != (width, height):
        raise EncodeError(f"{path}: {out.video.width}x{out.video.height}, "
                          f"planned {width}x{height}")


async def _encoders(server: JobServer, opts: EncodeOptions, ffmpeg: FFmpeg,
                    emit: Callable[[JobEvent], None], workers: int, threads: int,
                    share: Share | None, *,
                    task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED
                    ) -> None:
    """Everything that encodes chunks: with networking, this job's node (peers claim from
    it) and the recruiting of peers; and the local slots. Reports, once the node listens,
    the scope that ends them all (the job is over when ``_watch`` returns)."""
    if not workers:
        server.core_idle.set()  # no local slot will ever free a core: the audio may start
    async with trio.open_nursery() as nursery:
        if opts.net.enabled:
            node = Node(NodeConfig.coordinating(opts.net, opts.tuning.timings,
                                                opts.local.cache_dir), ffmpeg,
                        coordinator=True)
            if opts.net.page is not None:
                node.web = opts.net.page(node)
            await nursery.start(node.run)
            node.jobs[server.job_id] = server
            emit(Listening(node.port))
            nursery.start_soon(recruit, server, node, opts, emit)
        for slot in range(workers):
            nursery.start_soon(local_slot, server, slot, threads, share)
        task_status.started(nursery.cancel_scope)


def _local_score(ffmpeg: FFmpeg, profile: Profile, cache_dir: Path | None) -> float | None:
    """This device's benchmark for the profile (work/s per slot), if measured before."""
    from .benchmark import load_scores

    try:
        scores = load_scores(ffmpeg, cache_dir) or {}
    except Exception:  # a broken cache must never stop a job
        return None
    score = scores.get(profile.name)
    return score if score and score > 0 else None


async def _open_plan(journal: Journal, opts: EncodeOptions, info: MediaInfo,
                     identity: InputIdentity, plans: list[ChunkPlan], workdir: str
                     ) -> tuple[list[ChunkPlan], str, bool]:
    """Resume the journalled job if it is this one (same input file, same settings), else
    start the journal afresh. Returns the plan, the job id and whether we resume."""
    extra: dict[str, object] = {}
    if opts.job.profile.ladder:  # chunks of another ladder hold other streams
        extra["ladder"] = [[r.height, r.bitrate_k, r.crf] for r in opts.job.profile.ladder]
    if opts.job.hls is not None:  # nor are their keyframes where these segments start
        extra["segment_s"] = opts.job.segment_s
    settings = json.dumps(opts.job.profile.to_wire() | {"upscale": opts.job.upscale,
                                                     "audio": opts.job.audio,
                                                     "subtitles": opts.job.subtitles} | extra,
                          sort_keys=True)
    old = journal.get("input")
    if (not opts.job.fresh and old is not None and journal.get("settings") == settings
            and InputIdentity.from_json(old).same_file(identity)):
        try:
            # Chunks the scheduler cut keep their journalled pieces and indices.
            resumed = plans_from_rows(info.video, info.format_start_s, journal.plan(),
                                      keyframe_seek=info.keyframe_seek)
        except ValueError:
            resumed = []
        job_id = journal.get("job_id") or ""
        if resumed and job_id:
            return resumed, job_id, True
    # A fresh start: whatever an older run left here is not ours to trust.
    for entry in await trio.to_thread.run_sync(os.listdir, workdir):
        if entry.endswith(".nut") or entry.startswith("output") or entry.endswith(".ffconcat"):
            await trio.to_thread.run_sync(unlink, os.path.join(workdir, entry))
    journal.reset()
    job_id = secrets.token_urlsafe(12)
    for key, value in (("input", identity.to_json()), ("settings", settings),
                       ("output", str(journal.workdir.parent / Path(opts.job.output).name)),
                       ("job_id", job_id),
                       ("state", "encoding")):
        journal.set(key, value)
    journal.write_plan([(p.first, p.frames) for p in plans])
    return plans, job_id, False


async def _watch(server: JobServer, workers: int, opts: EncodeOptions) -> None:
    """Tick leases until the job is done; fail it if nothing can make progress any more."""
    job = server.job
    # With no way for another encoder to come (no network, or no mDNS and no --peer), end
    # as soon as the last one is out.
    grace = BENCH_GRACE_S if opts.net.enabled and (opts.net.discover or opts.net.peers) else 0.0
    tick_s = opts.tuning.timings.tick_s
    woke_by: float | None = None  # when this loop meant to be awake again, at the latest
    while not server.finished.is_set() or server.fatal is not None:
        if server.fatal is not None:
            raise EncodeError(server.fatal)
        now = trio.current_time()
        if woke_by is not None and now - woke_by > tick_s:
            # This process itself did not run (a machine loaded far past its cores): what
            # peers sent meanwhile waits unread in our sockets. Read it before anyone is
            # judged silent, rather than take the chunks of live peers.
            woke_by = None
            with trio.move_on_after(tick_s):
                await server.finished.wait()
            continue
        server.tick(now)
        why = nobody_left(job, now, server.names, grace)
        if why is not None:
            raise EncodeError(why)
        why = stalled(running=bool(job.running()),
                      local_alive=workers > 0 and server.local_key not in job.benched,
                      network=opts.net.enabled, idle_s=now - server.last_activity,
                      stall_s=opts.tuning.timings.stall_s)
        if why is not None:
            if opts.net.enabled:
                why = f"{why}; {server.census.summary()}"  # what was there, and why unused
            raise EncodeError(why)
        # Wake for the next lease or silence deadline too, so a dead peer's chunks go back
        # when the rule says, not up to a tick later.
        wait = tick_s
        if (deadline := job.next_deadline()) is not None:
            wait = max(0.0, min(wait, deadline - trio.current_time()))
        woke_by = trio.current_time() + wait
        with trio.move_on_after(wait):
            await server.finished.wait()

