"""What a job and a node report as they run: one frozen dataclass per kind of event.

Producers (``peer.jobserver``, ``peer.encode``, ``peer.recruit``, ``peer.node``,
``peer.worker``) build these; consumers (the dashboards, the plain and JSON sinks of
``cli.py``) ``match`` on them. ``kind`` is the name the JSON lines of ``--json`` carry as
``"event"``; ``as_json`` gives exactly the fields, in the order, that those lines always had.

A coordinator and a peer both report a chunk starting and progressing, with what each
knows: the coordinator knows who holds it (``ChunkStart``, ``ChunkProgress``), a peer's
slot only its own work (``SlotStart``, ``SlotProgress``, ``SlotEnd``). They share the
``kind`` names of the JSON lines but are different events.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

__all__ = [
    "AudioDone", "AudioStart", "BatchEnd", "BatchEvent", "BatchStart", "ChunkDone",
    "ChunkDuplicate", "ChunkFailed", "ChunkLost", "ChunkParted", "ChunkProgress",
    "ChunkRequeued",
    "ChunkSplit", "ChunkStart", "ChunkUpload", "FileDone", "FileFailed", "FileSkipped",
    "FileStart", "HlsBehind", "HlsEnd", "HlsSegment", "ImageSkipped", "InFile", "JobEnd",
    "JobEvent",
    "JobJoined", "JobLeft", "JobResumed", "JobStart", "Listening", "Merge", "NoPeers",
    "NodeEvent", "NodeUp", "PeerBenched", "PeerForeign", "PeerJoined", "PeerLeft",
    "PeerUnreachable", "PyzReady",
    "SlideEvent", "SlotEnd", "SlotProgress", "SlotStart", "Tracks", "as_json",
]

# A track as ``chunker.tracks`` describes it for the report (plain JSON values).
TrackFields = dict[str, object]


# -- a job, as its coordinator sees it -----------------------------------------------------
@dataclass(frozen=True, slots=True)
class JobStart:
    kind: ClassVar[str] = "job_start"
    input: str
    output: str
    profile: str
    frames: int
    chunks: int
    duration_s: float
    width: int
    height: int
    workers: int  # local encoder slots
    ffmpeg: str  # its version
    job_id: str
    secret: bool  # whether the swarm is closed
    network: bool
    name: str  # this device's name
    policy: str
    peers_seen: int  # idle peers that answered mDNS before the plan
    chunk_s: float


@dataclass(frozen=True, slots=True)
class Tracks:
    """Every track of the output besides the video, and what is left out (``TrackPlan``)."""

    kind: ClassVar[str] = "tracks"
    audio: tuple[TrackFields, ...]
    subtitles: tuple[TrackFields, ...]
    attachments: tuple[TrackFields, ...]
    chapters: int
    tags: dict[str, str]
    dropped: tuple[TrackFields, ...]  # each with "chosen" and "message"


@dataclass(frozen=True, slots=True)
class JobResumed:
    kind: ClassVar[str] = "job_resumed"
    chunks_kept: int
    chunks: tuple[int, ...]  # the kept ones
    of: int
    frames_done: int


@dataclass(frozen=True, slots=True)
class Listening:
    kind: ClassVar[str] = "listening"
    port: int


@dataclass(frozen=True, slots=True)
class ChunkStart:
    """A chunk handed to an encoder (a local slot, or a peer when ``remote``)."""

    kind: ClassVar[str] = "chunk_start"
    chunk: int
    attempt: str
    peer: str
    frames: int
    remote: bool


@dataclass(frozen=True, slots=True)
class ChunkProgress:
    kind: ClassVar[str] = "chunk_progress"
    chunk: int
    frames: int  # encoded so far
    attempt: str
    peer: str
    fps: float


@dataclass(frozen=True, slots=True)
class ChunkUpload:
    """A peer started sending the encoded chunk back."""

    kind: ClassVar[str] = "chunk_upload"
    chunk: int
    attempt: str
    peer: str


@dataclass(frozen=True, slots=True)
class ChunkDone:
    """A chunk verified and kept."""

    kind: ClassVar[str] = "chunk_done"
    chunk: int
    attempt: str
    peer: str
    encode_s: float
    frames: int
    frames_done: int  # in the whole job


@dataclass(frozen=True, slots=True)
class ChunkFailed:
    kind: ClassVar[str] = "chunk_failed"
    chunk: int
    attempt: str
    peer: str
    reason: str
    requeued: bool
    fate: str  # "requeued", "another attempt continues" or "already done"
    benched: bool  # the peer gets no more work


@dataclass(frozen=True, slots=True)
class ChunkRequeued:
    """An attempt lost (lease expired, its peer left): the chunk goes back to the queue."""

    kind: ClassVar[str] = "chunk_requeued"
    chunk: int
    attempt: str
    peer: str
    reason: str


@dataclass(frozen=True, slots=True)
class ChunkSplit:
    """A pending chunk cut to its claimer's share (``swarm.scheduler``, item 4): it keeps
    its first ``frames``; a new chunk ``rest`` holds the other ``rest_frames``."""

    kind: ClassVar[str] = "chunk_split"
    chunk: int
    frames: int
    rest: int
    rest_frames: int


@dataclass(frozen=True, slots=True)
class ChunkParted:
    """A pending ladder chunk's renditions parted at the tail (``swarm.scheduler``, item
    5): it keeps the ``renditions`` (like "720p") its claimer encodes; a new chunk ``rest``
    of the same frames holds the ``rest_renditions``. Both are joined once verified."""

    kind: ClassVar[str] = "chunk_parted"
    chunk: int
    renditions: tuple[str, ...]
    rest: int
    rest_renditions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ChunkDuplicate:
    """A valid result for a chunk another attempt already delivered: dropped."""

    kind: ClassVar[str] = "chunk_duplicate"
    chunk: int
    attempt: str
    peer: str


@dataclass(frozen=True, slots=True)
class ChunkLost:
    """A journalled chunk of a crashed run whose file no longer verifies: encoded again."""

    kind: ClassVar[str] = "chunk_lost"
    chunk: int
    reason: str


@dataclass(frozen=True, slots=True)
class PeerBenched:
    kind: ClassVar[str] = "peer_benched"
    peer: str
    reason: str


@dataclass(frozen=True, slots=True)
class PeerJoined:
    kind: ClassVar[str] = "peer_joined"
    peer: str
    address: str
    arch: str
    ffmpeg: str  # its version, as its /v1/info says
    cpus: int
    score: float  # for the job's profile; 0.0: not benchmarked


@dataclass(frozen=True, slots=True)
class PeerLeft:
    kind: ClassVar[str] = "peer_left"
    peer: str


@dataclass(frozen=True, slots=True)
class PeerForeign:
    """A peer seen but not used (another swarm, lacks the codec, never claims...)."""

    kind: ClassVar[str] = "peer_foreign"
    peer: str
    why: str


@dataclass(frozen=True, slots=True)
class PeerUnreachable:
    """A ``--peer HOST:PORT`` that did not answer (said once; it is still tried)."""

    kind: ClassVar[str] = "peer_unreachable"
    peer: str
    why: str


@dataclass(frozen=True, slots=True)
class AudioStart:
    kind: ClassVar[str] = "audio_start"


@dataclass(frozen=True, slots=True)
class AudioDone:
    kind: ClassVar[str] = "audio_done"
    encode_s: float


@dataclass(frozen=True, slots=True)
class Merge:
    kind: ClassVar[str] = "merge"


@dataclass(frozen=True, slots=True)
class HlsSegment:
    """A segment of the ``--hls`` stream was published (chunks 0..chunk are out)."""

    kind: ClassVar[str] = "hls_segment"
    chunk: int
    duration_s: float
    at_s: float  # since the job started


@dataclass(frozen=True, slots=True)
class HlsBehind:
    """The stream grows slower than real time: a viewer who started at the first segment
    reaches the live edge and waits (said once)."""

    kind: ClassVar[str] = "hls_behind"
    media_s: float  # published so far
    wall_s: float  # since the first segment


@dataclass(frozen=True, slots=True)
class HlsEnd:
    """The ``--hls`` playlists are complete (``#EXT-X-ENDLIST``)."""

    kind: ClassVar[str] = "hls_end"
    directory: str
    segments: int
    first_segment_s: float  # from the job's start to the first playable segment
    published_s: float  # from the job's start to the end tag


@dataclass(frozen=True, slots=True)
class NoPeers:
    """No peer took part after ``after_s``: how to add a device (fetch swarm.pyz from us)."""

    kind: ClassVar[str] = "no_peers"
    after_s: float
    address: str  # HOST:PORT of this node on the LAN
    bootstrap: str  # the command line to run on the other device
    sha256: str  # of the swarm.pyz it fetches


@dataclass(frozen=True, slots=True)
class JobEnd:
    """The merged output verified and in place."""

    kind: ClassVar[str] = "job_end"
    output: str
    wall_s: float


JobEvent = (JobStart | Tracks | JobResumed | Listening | ChunkStart | ChunkProgress
            | ChunkUpload | ChunkDone | ChunkFailed | ChunkRequeued | ChunkSplit | ChunkParted
            | ChunkDuplicate | ChunkLost | PeerBenched | PeerJoined | PeerLeft | PeerForeign
            | PeerUnreachable | NoPeers | AudioStart | AudioDone | HlsSegment | HlsBehind
            | HlsEnd | Merge | JobEnd)


# -- a batch: `swarm encode` of several files (peer.batch) ------------------------------------
@dataclass(frozen=True, slots=True)
class BatchStart:
    """The files of a batch in the order they run; ``skipped``: what the walk left out,
    each ``[path, why]`` (not a video by its name, an output of this batch...)."""

    kind: ClassVar[str] = "batch_start"
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    sizes: tuple[int, ...]  # of the inputs, in bytes: what the overall ETA weighs by
    skipped: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class FileStart:
    kind: ClassVar[str] = "file_start"
    file: int  # its index in BatchStart.inputs
    input: str
    output: str


@dataclass(frozen=True, slots=True)
class InFile:
    """An event of one file of a batch; its JSON line is the event's own with ``file``."""

    kind: ClassVar[str] = "in_file"
    file: int
    event: JobEvent


@dataclass(frozen=True, slots=True)
class FileSkipped:
    """Not encoded: its output exists and verified (a rerun), or it has no video."""

    kind: ClassVar[str] = "file_skipped"
    file: int
    input: str
    output: str
    reason: str


@dataclass(frozen=True, slots=True)
class FileDone:
    kind: ClassVar[str] = "file_done"
    file: int
    input: str
    output: str
    wall_s: float


@dataclass(frozen=True, slots=True)
class FileFailed:
    kind: ClassVar[str] = "file_failed"
    file: int
    input: str
    output: str
    reason: str


@dataclass(frozen=True, slots=True)
class BatchEnd:
    kind: ClassVar[str] = "batch_end"
    done: int
    skipped: int
    failed: int
    wall_s: float


BatchEvent = BatchStart | FileStart | InFile | FileSkipped | FileDone | FileFailed | BatchEnd


# -- a slideshow (peer.slideshow) -------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ImageSkipped:
    """An image that cannot be shown (empty, not an image, truncated), left out."""

    kind: ClassVar[str] = "image_skipped"
    image: str
    reason: str


SlideEvent = ImageSkipped | JobEvent  # a slideshow is a job of images


# -- a node, as `swarm join` sees it --------------------------------------------------------
@dataclass(frozen=True, slots=True)
class NodeUp:
    kind: ClassVar[str] = "node_up"
    port: int
    name: str
    node_id: str
    address: str  # HOST:PORT as other devices on the LAN reach it


@dataclass(frozen=True, slots=True)
class PyzReady:
    """This node serves swarm.pyz (GET /swarm.pyz): how another device joins."""

    kind: ClassVar[str] = "pyz_ready"
    sha256: str
    size: int
    address: str
    bootstrap: str


@dataclass(frozen=True, slots=True)
class JobJoined:
    kind: ClassVar[str] = "job_joined"
    job_id: str
    coordinator: str  # its URL


@dataclass(frozen=True, slots=True)
class JobLeft:
    kind: ClassVar[str] = "job_left"
    job_id: str


@dataclass(frozen=True, slots=True)
class SlotStart:
    """One of this node's slots started a chunk."""

    kind: ClassVar[str] = "chunk_start"
    chunk: int
    attempt: str
    job_id: str = ""  # whose: a node may work for several coordinators at once


@dataclass(frozen=True, slots=True)
class SlotProgress:
    kind: ClassVar[str] = "chunk_progress"
    chunk: int
    frames: int
    fps: float
    job_id: str = ""


@dataclass(frozen=True, slots=True)
class SlotEnd:
    kind: ClassVar[str] = "chunk_end"
    chunk: int
    outcome: str  # "done", "failed", "cancelled", "refused: ...", "upload failed: ..."
    frames: int  # the chunk's own count (the last progress report may be older)
    job_id: str = ""


NodeEvent = NodeUp | PyzReady | JobJoined | JobLeft | SlotStart | SlotProgress | SlotEnd

Event = JobEvent | NodeEvent | BatchEvent | ImageSkipped


def as_json(event: Event, t: float) -> dict[str, object]:
    """The JSON line of ``--json``: ``event`` (the kind), ``t``, then the fields in order.
    A batch file's event is its own line with ``file`` (its index) after ``t``."""
    if isinstance(event, InFile):
        return {"event": event.event.kind, "t": t, "file": event.file} | asdict(event.event)
    return {"event": event.kind, "t": t} | asdict(event)
