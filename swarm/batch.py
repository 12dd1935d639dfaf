"""The decisions of a batch (`swarm encode a.mp4 b.mov dir/`), as pure code.

- Which files the walk of a directory keeps (``plan``): a video by its extension, not
  hidden, not an output of this batch, not named like an output of the profile. A file
  named on the command line is always tried: the probe decides.
- Where each output goes (``output_for``): beside its input, or under ``-o DIR/`` keeping
  the path relative to the directory argument it was found under. With a ladder, that is
  the tallest rendition's file (``a.hd.1080p.mp4``); the others go beside it
  (``peer.coordinator.ladder_outputs``: ``a.hd.720p.mp4``).
- When the next file may start (``Lookahead``): once the running one has handed out all
  but one round of its chunks, so its probe, audio and first chunks overlap that file's
  tail and merge instead of following them.
- The overall ETA (``batch_eta``): input bytes left over the rate at which bytes got done.

Paths are strings the shell (``peer.batch``) made absolute; nothing here touches a disk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePath

from .events import (
    ChunkParted,
    ChunkSplit,
    ChunkStart,
    JobEvent,
    JobResumed,
    JobStart,
    PeerJoined,
    PeerLeft,
)
from .job import ChunkState, Job

__all__ = ["MAX_IN_FLIGHT", "VIDEO_EXTENSIONS", "Found", "Lookahead", "Planned", "batch_eta",
           "only_duplicates_left", "output_for", "plan", "release_to_next"]

# What a walk counts as a video, by name; the probe then decides. The containers ffmpeg
# reads that cameras, phones, screen recorders, DVDs and broadcast captures write.
VIDEO_EXTENSIONS = frozenset({
    ".3g2", ".3gp", ".asf", ".avi", ".divx", ".dv", ".f4v", ".flv", ".m2t", ".m2ts", ".m2v",
    ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg", ".mts", ".mxf", ".nut", ".ogv", ".rm",
    ".rmvb", ".ts", ".vob", ".webm", ".wmv", ".y4m",
})
# Files in flight at once: the one finishing its merge, the one encoding, the next one
# starting. A file of a chunk per slot lets the next start at once: without a bound, a
# folder of short clips would start them all together (a work directory and, with peers,
# a node each).
MAX_IN_FLIGHT = 3
# Below this share of the batch done, the rate is mostly start-up: no ETA yet.
ETA_MIN_DONE = 0.02


@dataclass(frozen=True, slots=True)
class Found:
    """A file the command line named (``root`` None) or a walk of ``root`` found."""

    path: str
    root: str | None = None


@dataclass(frozen=True, slots=True)
class Planned:
    input: str
    output: str
    named: bool  # on the command line: a probe failure is a failure, never a skip
    clash: str = ""  # another input already has this output: this one fails with it


def output_for(found: Found, profile_stem: str, out_dir: str | None, top: int = 0) -> str:
    """``<stem>.<profile>.mp4`` beside the input, or under ``out_dir`` at the input's path
    relative to the directory argument it was found under. ``top``: a ladder's tallest
    rung, named in the file (``<stem>.<profile>.<top>p.mp4``) as the others will be."""
    src = PurePath(found.path)
    name = f"{src.stem}.{profile_stem}{f'.{top}p' if top else ''}.mp4"
    if out_dir is None:
        return str(src.with_name(name))
    if found.root is None:
        return str(PurePath(out_dir) / name)
    rel = src.parent.relative_to(found.root)
    return str(PurePath(out_dir) / rel / name)


def plan(found: list[Found], profile_stem: str, out_dir: str | None, top: int = 0
         ) -> tuple[list[Planned], list[tuple[str, str]]]:
    """The files to encode, in order, and the walked ones left out with why.

    Files named on the command line come first, in their order; walked ones follow sorted
    by path, so a rerun takes them in the same order. ``top``: a ladder's tallest rung
    (``output_for``); a walk leaves out the renditions of a ladder of this profile too.
    """
    seen: set[str] = set()
    named = [f for f in found if f.root is None]
    walked = sorted((f for f in found if f.root is not None), key=lambda f: f.path)
    candidates = []
    for f in named + walked:
        if f.path not in seen:
            seen.add(f.path)
            candidates.append(f)
    outputs = {output_for(f, profile_stem, out_dir, top) for f in candidates}
    out_root = PurePath(out_dir) if out_dir is not None else None
    # ``a.hd.mp4``, and a ladder's ``a.hd.720p.mp4``: not "concert.1080p.mp4".
    ours = re.compile(rf"\.{re.escape(profile_stem)}(\.\d+p)?\.mp4$")
    kept: list[Planned] = []
    skipped: list[tuple[str, str]] = []
    by_output: dict[str, str] = {}
    for f in candidates:
        if f.root is not None:
            p = PurePath(f.path)
            why = ""
            if p.suffix.lower() not in VIDEO_EXTENSIONS:
                why = "not a video by its name"
            elif f.path in outputs:
                why = "an output of this batch"
            elif ours.search(p.name):
                why = f"named like an output of profile {profile_stem}"
            elif out_root is not None and out_root in p.parents:
                why = "inside the output directory"
            if why:
                skipped.append((f.path, why))
                continue
        out = output_for(f, profile_stem, out_dir, top)
        clash = f"same output as {by_output[out]}" if out in by_output else ""
        by_output.setdefault(out, f.path)
        kept.append(Planned(f.path, out, f.root is None, clash))
    return kept, skipped


@dataclass(slots=True)
class Lookahead:
    """Fed one file's events: says when the next file may start.

    That is once every chunk but one round (one per encoder slot: local workers and
    joined peers) has been handed out or kept from a crashed run. From then on this file
    only has its last chunks and its merge ahead, which leave slots idle; the next file's
    probe and setup take about a second, so starting it one round early has its chunks
    ready when the first slot frees up.
    """

    chunks: int | None = None
    slots: int = 0
    handed: set[int] = field(default_factory=set)
    peers: set[str] = field(default_factory=set)

    def feed(self, e: JobEvent) -> None:
        match e:
            case JobStart():
                self.chunks, self.slots = e.chunks, e.workers
            case JobResumed():
                self.handed.update(e.chunks)
            case ChunkStart():
                self.handed.add(e.chunk)
            case ChunkSplit() | ChunkParted() if self.chunks is not None:
                # The cut (or parted) chunk's rest is a new chunk still to hand out.
                self.chunks = max(self.chunks, e.rest + 1)
            case PeerJoined():
                self.peers.add(e.peer)
            case PeerLeft():
                self.peers.discard(e.peer)

    @property
    def next_may_start(self) -> bool:
        if self.chunks is None:
            return False
        return self.chunks - len(self.handed) <= max(1, self.slots + len(self.peers))


def only_duplicates_left(job: Job) -> bool:
    """Nothing pending, not done: all a claim could get is a duplicate of a running chunk.
    In a batch whose next file is up, a slot is better used on that file's fresh chunks."""
    return not job.done and all(c.state is not ChunkState.PENDING for c in job.chunks)


def release_to_next(job: Job, peer: str, local: str) -> bool:
    """Whether a remote ``peer`` that finds nothing to claim here goes to the next file of
    the batch (told the job is done for it) rather than waiting out this file's tail.

    When no chunk is pending and the peer holds none of this job's (a peer of several
    slots may still encode one). Only while this device's slots are in the job and
    unbenched: a chunk requeued later (a lost lease, a failed verify) is then still encoded
    here. Without local slots a peer is kept: it may be the only encoder left.
    """
    if local not in job.scheduler.peers or local in job.benched:
        return False
    return only_duplicates_left(job) and not any(a.peer == peer for a in job.running())


def batch_eta(elapsed_s: float, sizes: list[int], done: list[float]) -> float | None:
    """Seconds left for the whole batch: the input bytes left at the rate bytes got done.

    ``done[i]``: the fraction of file ``i`` encoded (1.0 when written, 0.0 queued); files
    skipped or failed are left out by the caller. None until a few percent are done, when
    a rate means something.
    """
    total = sum(sizes)
    finished = sum(s * min(1.0, max(0.0, d)) for s, d in zip(sizes, done, strict=True))
    if total <= 0 or elapsed_s <= 0 or finished < ETA_MIN_DONE * total:
        return None
    return elapsed_s * (total - finished) / finished
