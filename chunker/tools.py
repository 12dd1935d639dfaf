"""Which ffmpeg binary swarm runs, and what it can do.

Order of preference: ``SWARM_FFMPEG`` if set; a system ``ffmpeg`` on PATH when it can do what
the job needs (distribution builds are often tuned for the machine, and users expect it);
otherwise the static build that imageio-ffmpeg ships, so that ``pip install`` alone is
enough. That bundled build has no ffprobe, which is why probing uses ffmpeg itself.

What a binary can do is asked of the binary, never inferred from its version string: the
devices ship 5.1 (Debian 12, Raspberry Pi OS bookworm), 6.1, 7.x and the bundled 9.x, and
distributions patch and configure them differently. ``ffmpeg_info`` lists its encoders,
filters and formats and tries, on a one-frame lavfi input, the option spellings the argv
builders choose between; the record is cached per binary for the life of the process.
"""

from __future__ import annotations

import functools
import logging
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

from swarm.errors import UsageError

__all__ = ["BASE_FORMATS", "FFmpeg", "ffmpeg_info", "find_ffmpeg", "short_version"]

log = logging.getLogger(__name__)

# Querying a binary takes ~50 ms per question (asked in parallel); a node asks once per binary.
_QUERY_TIMEOUT_S = 20.0
# Formats every job uses: chunks travel as NUT, verification and probing list frames as
# framecrc, the merge reads an ffconcat script.
BASE_FORMATS = frozenset({"nut", "framecrc", "concat"})
# How `-enc_time_base` says "keep the demuxer's time base": 5.1 knows only -1, 7.0 both (-1
# deprecated), 8.0 and later only "demux". Tried in this order.
_DEMUX_TIME_BASE_SPELLINGS = ("demux", "-1")
_TRIAL_INPUT = ["-f", "lavfi", "-i", "nullsrc=size=16x16:rate=25:duration=0.04"]


@dataclass(frozen=True, slots=True)
class FFmpeg:
    """One binary's capability record (see ``ffmpeg_info``)."""

    path: str
    version: str
    encoders: frozenset[str]
    filters: frozenset[str] = frozenset()
    formats: frozenset[str] = frozenset()  # muxers and demuxers, by short name
    # The -enc_time_base value meaning "the demuxer's time base" (verification needs it to
    # list every frame's own timestamp); None: this binary accepts none we know.
    demux_time_base: str | None = "demux"

    def has(self, *encoders: str) -> bool:
        return all(e in self.encoders for e in encoders)

    def lacks(self, required: Iterable[str] = ()) -> list[str]:
        """What this binary cannot do of what a job needs (``required`` names encoders),
        each as a short phrase for a message; empty when it can do all of it."""
        missing = [e for e in required if e not in self.encoders]
        missing += [f"the {f} format" for f in sorted(BASE_FORMATS - self.formats)]
        if self.demux_time_base is None:
            missing.append("-fps_mode passthrough with -enc_time_base demux (or -1)")
        return missing

    @property
    def short_version(self) -> str:
        return short_version(self.version)

    def describe(self) -> str:
        return f"ffmpeg {self.short_version} at {self.path}"


def short_version(version: str) -> str:
    """"5.1.9" of "5.1.9-0+deb12u1", "9.0.2" of "n9.0.2-17-g2a571b6068-20260930"."""
    m = re.match(r"n?(\d+(?:\.\d+)*)", version)
    return m.group(1) if m else version


def _names(listing: str) -> frozenset[str]:
    """Names from an -encoders/-muxers/-demuxers listing.

    Each entry is a flags field, a space and the name (demuxers list aliases "mov,mp4");
    the legend above the "--" line gives the field's width, which 7.0 widened by a device
    flag that may be blank (" D d lavfi" and " DE  mov").
    """
    legend, *rest = re.split(r"^\s*-{2,}\s*$", listing, maxsplit=1, flags=re.M)
    body = rest[0] if rest else ""
    m = re.search(r"^ (\S+) = ", legend, flags=re.M)
    start = len(m.group(1)) + 2 if m else 0
    out: set[str] = set()
    for line in body.splitlines():
        parts = line[start:].split()
        if parts:
            out.update(parts[0].split(","))
    return frozenset(out)


def _trial_argv(path: str, spelling: str) -> list[str]:
    # The very options verify_chunk_argv passes, on one frame, to a null output.
    return [path, "-nostdin", "-hide_banner", "-loglevel", "error", *_TRIAL_INPUT,
            "-fps_mode", "passthrough", "-enc_time_base:v", spelling,
            "-c:v", "wrapped_avframe", "-f", "null", "-"]


@functools.lru_cache(maxsize=8)
def ffmpeg_info(path: str) -> FFmpeg:
    """Ask one ffmpeg binary what it can do; UsageError if it does not run at all."""
    queries = {
        "version": [path, "-hide_banner", "-version"],
        "encoders": [path, "-hide_banner", "-encoders"],
        "filters": [path, "-hide_banner", "-filters"],
        "muxers": [path, "-hide_banner", "-muxers"],
        "demuxers": [path, "-hide_banner", "-demuxers"],
        **{s: _trial_argv(path, s) for s in _DEMUX_TIME_BASE_SPELLINGS},
    }
    out: dict[str, str] = {}
    ok: dict[str, bool] = {}
    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        # In parallel: a slow device pays one process start-up, not seven.
        for k, argv in queries.items():
            procs[k] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True)
        for k, p in procs.items():
            out[k], _ = p.communicate(timeout=_QUERY_TIMEOUT_S)
            ok[k] = p.returncode == 0
    except (OSError, subprocess.SubprocessError) as exc:
        raise UsageError(f"cannot run ffmpeg at {path}: {exc}") from exc
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    m = re.match(r"ffmpeg version (\S+)", out["version"])
    if not ok["version"] or not ok["encoders"] or m is None:
        raise UsageError(f"cannot run ffmpeg at {path}: it does not answer -version as "
                         "ffmpeg does")
    filters = frozenset(
        line.split()[1]
        for line in out["filters"].splitlines()
        if len(line.split()) >= 3 and "->" in line.split()[2]
    )
    return FFmpeg(
        path=path, version=m.group(1),
        encoders=_names(out["encoders"]), filters=filters,
        formats=_names(out["muxers"]) | _names(out["demuxers"]),
        demux_time_base=next((s for s in _DEMUX_TIME_BASE_SPELLINGS if ok[s]), None),
    )


def _bundled() -> str | None:
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    try:
        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except RuntimeError:
        return None


# Each "X lacks Y; using Z" is said once per process, however often a binary is chosen.
_said: set[str] = set()


def _say_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        log.warning("%s", message)


def find_ffmpeg(required: Iterable[str] = (), override: str | None = None) -> FFmpeg:
    """Choose the ffmpeg binary; ``required`` names encoders the job cannot do without.

    ``override`` is the binary ``SWARM_FFMPEG`` names (``swarm.config.Environment``), taken
    as it is or refused. Without it, a system ffmpeg that cannot do the job is passed over
    with one warning naming what it lacks; if no binary can, UsageError says what to do,
    before any chunk is attempted.
    """
    need = tuple(required)
    if override:
        info = ffmpeg_info(override)
        if missing := info.lacks(need):
            raise UsageError(f"SWARM_FFMPEG={override} (ffmpeg {info.short_version}) lacks "
                             f"{', '.join(missing)}: point it at an ffmpeg that has them, "
                             "or unset it")
        return info
    bundled = _bundled()
    candidates = list(dict.fromkeys(p for p in (shutil.which("ffmpeg"), bundled) if p))
    if not candidates:
        raise UsageError("no ffmpeg found: install imageio-ffmpeg or set SWARM_FFMPEG")
    passed_over: list[str] = []
    for path in candidates:
        try:
            info = ffmpeg_info(path)
        except UsageError as exc:
            passed_over.append(str(exc))
            continue
        if missing := info.lacks(need):
            passed_over.append(f"{info.describe()} lacks {', '.join(missing)}")
            continue
        if passed_over:
            using = (f"the bundled ffmpeg {info.short_version}" if path == bundled
                     else info.describe())
            _say_once(f"{'; '.join(passed_over)}; using {using}")
        return info
    hint = ("set SWARM_FFMPEG to an ffmpeg that has them" if bundled
            else "pip install imageio-ffmpeg, or set SWARM_FFMPEG to an ffmpeg that has them")
    raise UsageError(f"{'; '.join(passed_over)}: {hint}")
