"""What one `swarm encode` asks for (``EncodeOptions``), as the CLI passes it down."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from profiles import Profile
from swarm.config import Timings

__all__ = ["EncodeOptions"]


@dataclass(slots=True)
class EncodeOptions:
    input: str
    output: str
    profile: Profile
    chunk_seconds: float | None = None
    workers: int = 0  # local encoder slots; 0: default_workers()
    threads: int = 0  # encoder threads per local slot; 0: cores / slots
    name: str = field(default_factory=socket.gethostname)
    upscale: bool = False
    no_local: bool = False
    network: bool = False  # run a node and recruit remote peers
    discover: bool = True  # find peers with mDNS (with network)
    peers: list[str] = field(default_factory=list)  # HOST:PORT named explicitly
    secret: str | None = None
    port: int = 0
    interfaces: list[str] | None = None
    policy: str = "swarm"  # scheduler: "swarm", or the benchmark baselines "fifo", "equal"
    fresh: bool = False  # ignore a journal left by a crashed run of the same job
    force: bool = False  # replace an existing output (see _refuse_overwrite)
    audio: str = "all"  # audio tracks kept: "all", "first" or "none" (chunker.tracks)
    subtitles: str = "copy"  # "copy" where the container can hold them, or "none"
    timings: Timings = field(default_factory=Timings)  # leases, ticks, stall and gone limits
