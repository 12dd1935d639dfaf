"""The shell's settings in one frozen, typed place, and what the environment may set.

``Timings`` holds every wait the trio shell makes, with the unit in each name, so a test
can shrink them (or run them under trio's ``MockClock``) instead of patching globals; it is
passed down in ``Tuning`` (in-process tests build their own), and a `swarm encode` process
takes a shorter lease from its hidden ``--lease-seconds`` (the multi-host tests), never from
the environment.
``Environment`` is everything the program takes from environment variables; ``cli.py`` reads
it once, from ``os.environ``, and passes the values down as arguments: no other module reads
the environment (``tests/test_architecture.py`` fails if one does).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError
from .job import SILENT_S

__all__ = ["DEFAULT_TIMINGS", "POLICIES", "Environment", "Timings"]

# Scheduler policies: ours, and the baselines the benchmarks compare it with.
POLICIES = ("swarm", "fifo", "equal")


@dataclass(frozen=True, slots=True)
class Timings:
    # A peer reports progress every second; three missed reports plus a slow start is a loss.
    lease_s: float = 15.0
    # A peer that reports every second and has not been heard from for this long has died:
    # everything it holds, running or prefetched, is re-queued (swarm.job.SILENT_S).
    silent_s: float = SILENT_S
    # How often the coordinator checks leases and whether the job can still finish.
    tick_s: float = 0.5
    # With nothing encoding anywhere for this long, the job cannot finish: fail it clearly.
    stall_s: float = 60.0
    # How long a coordinator may stay silent before a peer drops its job: long enough to
    # ride out a Wi-Fi hiccup, short enough that the peer is idle again "within seconds".
    coordinator_gone_s: float = 6.0
    progress_every_s: float = 1.0
    recruit_every_s: float = 1.0
    # A job with no peer after this long says how to add one (the line that fetches
    # swarm.pyz from us): long enough for mDNS answers and --peer hellos, short enough to
    # be read early.
    no_peer_hint_s: float = 5.0
    recheck_invited_s: float = 5.0
    # Lets the reply to the last result reach its peer before the server stops.
    response_grace_s: float = 0.3


DEFAULT_TIMINGS = Timings()


@dataclass(frozen=True, slots=True)
class Environment:
    """What the environment says, parsed (``SWARM_SECRET`` is typer's ``envvar`` on the
    options that take it)."""

    # SWARM_SCHEDULER: benchmarks compare our scheduler with the baselines.
    scheduler: str = "swarm"
    # SWARM_PART_RENDITIONS=0: benchmarks compare a ladder's tail with and without its
    # chunks' renditions parted across peers (swarm.scheduler, item 5).
    part_renditions: bool = True
    # SWARM_FFMPEG: this ffmpeg binary, instead of the one chunker.tools.find_ffmpeg picks.
    ffmpeg: str | None = None
    # Where benchmark scores and swarm.pyz builds are kept: SWARM_CACHE_DIR, else
    # $XDG_CACHE_HOME/swarm, else $HOME/.cache/swarm; None (no HOME): nothing is kept.
    cache_dir: Path | None = None
    # TERM: "dumb" (or none) gets plain lines instead of the live dashboard.
    term: str = ""
    # SWARM_SECRET exactly as set, "" included: click reads an empty variable as unset
    # (an open swarm), so cli.py refuses an empty one from this instead.
    secret: str | None = None
    # This device's identity and paired devices (peer.identity): SWARM_CONFIG_DIR, else
    # $XDG_CONFIG_HOME/swarm, else $HOME/.config/swarm; None (no HOME): pairing unavailable.
    config_dir: Path | None = None

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> Environment:
        policy = env.get("SWARM_SCHEDULER", "swarm")
        if policy not in POLICIES:
            raise UsageError(f"SWARM_SCHEDULER={policy}: use swarm, fifo or equal")
        parting = env.get("SWARM_PART_RENDITIONS", "1")
        if parting not in ("0", "1"):
            raise UsageError(f"SWARM_PART_RENDITIONS={parting}: use 1 (the default) or 0")
        return cls(scheduler=policy, part_renditions=parting == "1",
                   ffmpeg=env.get("SWARM_FFMPEG") or None,
                   cache_dir=_cache_dir(env), term=env.get("TERM", ""),
                   secret=env.get("SWARM_SECRET"), config_dir=_config_dir(env))


def _config_dir(env: Mapping[str, str]) -> Path | None:
    if own := env.get("SWARM_CONFIG_DIR"):
        return Path(own)
    xdg = env.get("XDG_CONFIG_HOME")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "swarm"
    home = env.get("HOME")
    return Path(home) / ".config" / "swarm" if home else None


def _cache_dir(env: Mapping[str, str]) -> Path | None:
    if own := env.get("SWARM_CACHE_DIR"):
        return Path(own)
    xdg = env.get("XDG_CACHE_HOME")
    # The XDG spec says to ignore a relative value.
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "swarm"
    home = env.get("HOME")
    return Path(home) / ".cache" / "swarm" if home else None
