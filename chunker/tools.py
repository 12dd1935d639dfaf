"""Which ffmpeg binary swarm runs, and what it can do.

Order of preference: ``SWARM_FFMPEG`` if set; a system ``ffmpeg`` on PATH when it has the
encoders the job needs (distribution builds are often tuned for the machine, and users expect
it); otherwise the static build that imageio-ffmpeg ships, so that ``pip install`` alone is
enough. That bundled build has no ffprobe, which is why probing uses ffmpeg itself.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

from swarm.errors import UsageError

__all__ = ["FFmpeg", "ffmpeg_info", "find_ffmpeg"]

# Querying a binary takes ~50 ms; a node asks once per binary.
_QUERY_TIMEOUT_S = 20.0


@dataclass(frozen=True, slots=True)
class FFmpeg:
    path: str
    version: str
    encoders: frozenset[str]
    filters: frozenset[str]

    def has(self, *encoders: str) -> bool:
        return all(e in self.encoders for e in encoders)


@functools.lru_cache(maxsize=8)
def ffmpeg_info(path: str) -> FFmpeg:
    """Ask one ffmpeg binary for its version, encoders and filters."""
    try:
        ver = subprocess.run(
            [path, "-hide_banner", "-version"],
            capture_output=True, text=True, timeout=_QUERY_TIMEOUT_S, check=True,
        ).stdout
        enc = subprocess.run(
            [path, "-hide_banner", "-encoders"],
            capture_output=True, text=True, timeout=_QUERY_TIMEOUT_S, check=True,
        ).stdout
        fil = subprocess.run(
            [path, "-hide_banner", "-filters"],
            capture_output=True, text=True, timeout=_QUERY_TIMEOUT_S, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise UsageError(f"cannot run ffmpeg at {path}: {exc}") from exc
    m = re.match(r"ffmpeg version (\S+)", ver)
    version = m.group(1) if m else "unknown"
    # Encoder lines look like " V....D libx264   libx264 H.264 ..."; skip the legend above "------".
    encoders = frozenset(
        line.split()[1]
        for line in enc.split("------", 1)[-1].splitlines()
        if len(line.split()) >= 2
    )
    filters = frozenset(
        line.split()[1]
        for line in fil.splitlines()
        if len(line.split()) >= 3 and "->" in line.split()[2]
    )
    return FFmpeg(path=path, version=version, encoders=encoders, filters=filters)


def _bundled() -> str | None:
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    try:
        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except RuntimeError:
        return None


def find_ffmpeg(required: Iterable[str] = ()) -> FFmpeg:
    """Choose the ffmpeg binary; ``required`` names encoders the job cannot do without."""
    need = tuple(required)
    override = os.environ.get("SWARM_FFMPEG")
    if override:
        info = ffmpeg_info(override)
        if not info.has(*need):
            missing = ", ".join(e for e in need if e not in info.encoders)
            raise UsageError(f"SWARM_FFMPEG={override} lacks encoder(s): {missing}")
        return info
    candidates = [p for p in (shutil.which("ffmpeg"), _bundled()) if p]
    if not candidates:
        raise UsageError("no ffmpeg found: install imageio-ffmpeg or set SWARM_FFMPEG")
    for path in candidates:
        info = ffmpeg_info(path)
        if info.has(*need):
            return info
    raise UsageError(f"no ffmpeg here has the encoder(s) {', '.join(need)}")
