"""What one `swarm encode` asks for, in four parts, as the CLI passes it down.

- ``JobIntent``: what the user wants of the output (the file, the profile, the tracks);
  the journal keys a resumable job on these.
- ``LocalSettings``: this device's share of the encoding.
- ``NetworkSettings``: whether and how to find peers, and how to be found.
- ``Tuning``: what tests and benchmarks change, users never: the scheduler policy and the
  shell's ``Timings``.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from profiles import Profile
from swarm.config import DEFAULT_TIMINGS, Timings

__all__ = ["EncodeOptions", "JobIntent", "LocalSettings", "NetworkSettings", "Tuning"]


@dataclass(frozen=True, slots=True)
class JobIntent:
    input: str
    output: str
    profile: Profile
    chunk_seconds: float | None = None  # None: sized for the encoders present
    upscale: bool = False
    audio: str = "all"  # audio tracks kept: "all", "first" or "none" (chunker.tracks)
    subtitles: str = "copy"  # "copy" where the container can hold them, or "none"
    fresh: bool = False  # ignore a journal left by a crashed run of the same job
    force: bool = False  # replace an existing output (see _refuse_overwrite)
    hls: str | None = None  # also publish fMP4 HLS into this directory while encoding
    # HLS segment length: chunks longer than it are cut at keyframes forced every this
    # many seconds (swarm.hls.segment_cuts).
    segment_s: float = 4.0
    # --ladder: rendition heights replacing the profile's [[ladder]] (its rate control for
    # each, scaled by pixels); empty: the profile's own ladder, if any.
    ladder: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class LocalSettings:
    workers: int = 0  # local encoder slots; 0: host.default_workers()
    threads: int = 0  # encoder threads per local slot; 0: cores / slots
    no_local: bool = False  # only coordinate peers
    ffmpeg: str | None = None  # this binary (SWARM_FFMPEG), not the one find_ffmpeg picks
    cache_dir: Path | None = None  # benchmark scores, pyz builds; None: nothing is kept


@dataclass(frozen=True, slots=True)
class NetworkSettings:
    enabled: bool = False  # run a node and recruit remote peers
    discover: bool = True  # find peers with mDNS (when enabled)
    peers: tuple[str, ...] = ()  # HOST:PORT named explicitly (--peer)
    secret: str | None = None
    port: int = 0  # where the coordinator serves; taken or 0: any free port
    interfaces: tuple[str, ...] | None = None  # IPv4 addresses for mDNS; None: all
    name: str = field(default_factory=socket.gethostname)  # this device, as peers see it
    # The web page of this job's node, given the node (peer.web.Web.attach); None: no page.
    page: Callable[[Any], Any] | None = None
    # How this job shares peers that serve several coordinators: "low", "normal", "high"
    # (swarm.share.PRIORITIES); it travels in the invite.
    priority: str = "normal"
    # Closed (the CLI's default without --secret or --open): only devices paired with this
    # one are invited, and their requests must be signed with the pairing. ``pairing``
    # (peer.pairing.PairingService) holds this device's identity and pinned keys.
    closed: bool = False
    pairing: Any = None


@dataclass(frozen=True, slots=True)
class Tuning:
    policy: str = "swarm"  # scheduler: "swarm", or the benchmark baselines "fifo", "equal"
    timings: Timings = DEFAULT_TIMINGS  # leases, ticks, stall and gone limits
    # A ladder chunk's renditions may go to different peers at the tail (swarm.scheduler,
    # item 5); False keeps every chunk whole (benchmarks compare the two).
    part_renditions: bool = True


@dataclass(frozen=True, slots=True)
class EncodeOptions:
    job: JobIntent
    local: LocalSettings = LocalSettings()
    net: NetworkSettings = field(default_factory=NetworkSettings)
    tuning: Tuning = Tuning()
