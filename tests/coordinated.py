"""A real coordinator for tests that drive a real peer slot (``peer.worker.work_slot``)
against it: the ``JobServer`` of a two-chunk job (480p, 3 s chunks, no local slot), built
from the probed source as ``peer.coordinator`` builds one, and a node to serve it on
127.0.0.1. Only the job's HTTP side runs: no recruiting, no merge."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from chunker.commands import VideoPlan, video_plan
from chunker.plan import plan_chunks
from chunker.tools import FFmpeg, find_ffmpeg
from peer import media as steps
from peer.jobserver import JobServer
from peer.node import PEER_GONE_S, Node, NodeConfig
from peer.options import EncodeOptions, JobIntent, LocalSettings, NetworkSettings, Tuning
from peer.worker import JobTerms
from profiles import Profile, load_profile
from swarm.config import Timings

__all__ = ["TwoChunkJob", "two_chunk_job"]


@dataclass(frozen=True)
class TwoChunkJob:
    ffmpeg: FFmpeg
    server: JobServer
    node: Node
    profile: Profile
    vplan: VideoPlan

    def terms(self, url: str) -> JobTerms:
        """What a slot is told of the job, with the coordinator at ``url``."""
        return JobTerms(self.server.job_id, url, self.profile, self.vplan)


async def two_chunk_job(src: Path, folder: Path, job_id: str, *,
                        emit: Callable[[Any], None] = lambda e: None,
                        timings: Timings | None = None,
                        peer_gone_s: float = PEER_GONE_S) -> TwoChunkJob:
    """The job of ``src`` (which must plan to two chunks of 3 s), its work directory in
    ``folder``; start ``node.run`` and add the server to ``node.jobs`` to serve it."""
    ffmpeg = await trio.to_thread.run_sync(find_ffmpeg, ["libx264"])
    info = await steps.probe(ffmpeg, str(src))
    profile = load_profile("480p")
    tuning = Tuning(timings=timings) if timings is not None else Tuning()
    opts = EncodeOptions(JobIntent(str(src), str(folder / "out.mp4"), profile),
                         LocalSettings(no_local=True),
                         NetworkSettings(enabled=True, discover=False, name="coord"), tuning)
    v = info.video
    plans = plan_chunks(v, info.format_start_s, 3.0)
    assert len(plans) == 2
    vplan = video_plan(profile, *v.display_size, v.frames / info.duration_s, False,
                       v.time_base)
    workdir = trio.Path(folder / "coord")
    await workdir.mkdir()
    server = JobServer(job_id=job_id, opts=opts, ffmpeg=ffmpeg, info=info, plans=plans,
                       vplan=vplan, workdir=str(workdir), emit=emit, local_key="local")
    node = Node(NodeConfig(name="coord", port=0, host="127.0.0.1", advertise=False,
                           serve_pyz=False, peer_gone_s=peer_gone_s), ffmpeg,
                coordinator=True)
    return TwoChunkJob(ffmpeg, server, node, profile, vplan)
