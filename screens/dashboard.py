"""What the terminal shows during `swarm encode` and `swarm join`, and the end-of-job summary.

Only ``cli.py`` imports this module (it pulls in rich). The views are plain state machines
fed the events ``run_encode`` and ``Node`` emit, with the time passed in, and ``render``
is a pure function of that state and the terminal size: tests feed recorded event
sequences and render into a recording console, with no clock and no terminal.

Layout budget: everything must fit 80 columns and a 24-line terminal, so the peers table
and the event list shrink (with a "+N more" line) before anything wraps, and every line is
cropped rather than wrapped (a wrapped line would make rich's Live scroll and flicker).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from swarm.events import (
    AudioDone,
    AudioStart,
    ChunkDone,
    ChunkDuplicate,
    ChunkFailed,
    ChunkLost,
    ChunkParted,
    ChunkProgress,
    ChunkRequeued,
    ChunkSplit,
    ChunkStart,
    ChunkUpload,
    HlsBehind,
    HlsEnd,
    HlsSegment,
    JobEnd,
    JobEvent,
    JobJoined,
    JobLeft,
    JobResumed,
    JobStart,
    Listening,
    Merge,
    NodeEvent,
    NodeUp,
    NoPeers,
    PeerBenched,
    PeerForeign,
    PeerJoined,
    PeerLeft,
    PeerUnreachable,
    PyzReady,
    SlotEnd,
    SlotProgress,
    SlotStart,
    Tracks,
)

__all__ = ["JobView", "JoinView", "fmt_duration", "summarize", "summary_table"]

# Peers get a letter (chunk map) and a colour in order of appearance; the 27th peer on
# wraps around, which only costs the map its colour distinction, never the letter's.
PEER_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
PEER_COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "red", "bright_cyan",
                "bright_magenta", "bright_green", "bright_yellow", "bright_blue", "bright_red")
# Lines the dashboard always takes besides the peers rows, the map and the events:
# header (2), bar (1), peers title/head/rule (2), map title and legend (2).
_FIXED_LINES = 7
EVENTS_SHOWN = 4
# A score is output pixels per second (peer.benchmark); shown in millions.
MPX = 1e6
# The ETA divides what is left by the rate of the last few seconds: the rate since the start
# counts the probe and every encoder's start-up, and at 3 s of a 9 s job said "ETA 0:17".
ETA_WINDOW_S = 5.0
# A rate over less than this is mostly the granularity of progress reports (every 0.5-1 s).
ETA_MIN_SPAN_S = 1.0
# A benchmark at the profile's box says nothing about a much smaller output: per-frame
# costs weigh more there, and a 320x240 job ran far below the 720p pixel rate.
SPEEDUP_MIN_BOX_SHARE = 0.5


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "-"
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}:{s % 60:02d}"


def _score(score: float | None) -> str:
    return f"{score / MPX:.1f}" if score else "-"


@dataclass(slots=True)
class PeerRow:
    name: str
    letter: str
    colour: str
    arch: str = ""
    score: float | None = None
    local: bool = False
    remote: bool = True
    gone: bool = False
    benched: bool = False
    done: int = 0
    failed: int = 0
    frames: int = 0
    # attempt id -> (chunk, frames so far, fps, phase) for what it holds now
    running: dict[str, tuple[int, int, float, str]] = field(default_factory=dict)

    @property
    def state(self) -> str:
        if self.gone:
            return "gone"
        if self.benched:
            return "benched"
        if not self.running:
            return "idle"
        phases = {p for *_, p in self.running.values()}
        for phase in ("encoding", "uploading", "downloading"):
            if phase in phases:
                return phase
        return "encoding"

    @property
    def fps(self) -> float:
        return sum(fps for _, _, fps, _ in self.running.values())


class JobView:
    """The coordinator's dashboard state, built from ``run_encode`` events."""

    def __init__(self, *, local_arch: str = "", local_score: float | None = None) -> None:
        self.local_arch = local_arch
        self.local_score = local_score
        self.input = self.output = self.profile = ""
        self.frames = self.width = self.height = 0
        self.started: float | None = None
        self.ended: float | None = None
        self.phase = "starting"
        self.chunk_state: list[str] = []  # pending / running / done / retry
        self.chunk_peer: list[str] = []
        self.chunk_frames: list[int] = []
        self.frames_done = 0
        self.kept = self.kept_frames = 0  # what a resumed job kept from its crashed run
        self.failures = 0
        self.retries = 0
        self.rate_samples: deque[tuple[float, int]] = deque()  # (time, live frames)
        self.peers: dict[str, PeerRow] = {}
        self.events: deque[str] = deque(maxlen=EVENTS_SHOWN)
        self.bootstrap = ""  # shown while no peer has joined: how to add a device

    # -- state --------------------------------------------------------------------------
    def peer(self, name: str) -> PeerRow:
        row = self.peers.get(name)
        if row is None:
            i = len(self.peers)
            row = PeerRow(name, PEER_LETTERS[i % len(PEER_LETTERS)],
                          PEER_COLOURS[i % len(PEER_COLOURS)])
            self.peers[name] = row
        return row

    def _release(self, peer: str, attempt: str) -> PeerRow | None:
        row = self.peers.get(peer)
        if row is not None:
            row.running.pop(attempt, None)
        return row

    def feed(self, e: JobEvent, now: float) -> None:
        row: PeerRow | None
        match e:
            case JobStart():
                self.started = now
                self.phase = "encoding"
                self.input, self.output, self.profile = e.input, e.output, e.profile
                self.frames, self.width, self.height = e.frames, e.width, e.height
                n = e.chunks
                self.chunk_state, self.chunk_peer = ["pending"] * n, [""] * n
                self.chunk_frames = [0] * n
                if e.workers > 0:
                    me = self.peer(e.name or "this device")
                    me.local, me.remote = True, False
                    me.arch, me.score = self.local_arch, self.local_score
            case PeerJoined():
                joined = self.peer(e.peer)
                joined.gone = False
                joined.arch, joined.score = e.arch, e.score or None
                self._log(now, f"{e.peer} joined ({e.address})")
            case PeerLeft():
                if e.peer in self.peers:
                    self.peers[e.peer].gone = True
                self._log(now, f"{e.peer} left")
            case PeerForeign():
                self._log(now, f"{e.peer} not used: {e.why}")
            case PeerUnreachable():
                self._log(now, f"{e.peer} unreachable: {e.why}")
            case PeerBenched():
                self.peer(e.peer).benched = True
                self._log(now, e.reason)
            case NoPeers():
                self.bootstrap = f"{e.bootstrap}  # sha256 {e.sha256}"
            case JobResumed():
                for c in e.chunks:
                    if c < len(self.chunk_state):
                        self.chunk_state[c] = "kept"
                self.kept = e.chunks_kept
                self.frames_done = self.kept_frames = e.frames_done
                self._log(now, f"resumed: {self.kept} of {len(self.chunk_state)} chunks kept")
            case ChunkSplit() | ChunkParted():
                # One cell per chunk: the cut (or parted) chunk's rest gets its own, pending.
                grow = e.rest + 1 - len(self.chunk_state)
                if grow > 0:
                    self.chunk_state += ["pending"] * grow
                    self.chunk_peer += [""] * grow
                    self.chunk_frames += [0] * grow
            case ChunkStart(chunk=c):
                holder = self.peer(e.peer)
                holder.remote = e.remote
                # A remote peer's ffmpeg fetches the source first; its first progress report
                # says it is encoding.
                holder.running[e.attempt] = (c, 0, 0.0,
                                             "downloading" if holder.remote else "encoding")
                if c < len(self.chunk_state):
                    self.chunk_state[c], self.chunk_peer[c] = "running", e.peer
                    self.chunk_frames[c] = 0
            case ChunkProgress(chunk=c):
                if c < len(self.chunk_frames) and self.chunk_state[c] == "running":
                    self.chunk_frames[c] = e.frames
                row = self.peers.get(e.peer)
                if row is not None and e.attempt in row.running:
                    row.running[e.attempt] = (c, e.frames, e.fps, "encoding")
            case ChunkUpload():
                row = self.peers.get(e.peer)
                if row is not None and e.attempt in row.running:
                    c, f, _, _ = row.running[e.attempt]
                    row.running[e.attempt] = (c, f, 0.0, "uploading")
            case ChunkDone(chunk=c):
                row = self._release(e.peer, e.attempt)
                if row is not None:
                    row.done += 1
                    row.frames += e.frames
                if c < len(self.chunk_state):
                    self.chunk_state[c], self.chunk_peer[c] = "done", e.peer
                    self.chunk_frames[c] = 0
                self.frames_done = e.frames_done
            case ChunkFailed(chunk=c):
                row = self._release(e.peer, e.attempt)
                self.failures += 1
                if row is not None:
                    row.failed += 1
                    row.benched = row.benched or e.benched
                self._lost(c, e.requeued)
                self._log(now, f"chunk {c} failed on {e.peer}: {e.reason}; {e.fate}")
            case ChunkRequeued(chunk=c):
                self._release(e.peer, e.attempt)
                self._lost(c, True)
                self._log(now, f"chunk {c} lost on {e.peer}: {e.reason}; requeued")
            case ChunkDuplicate():
                self._log(now, f"chunk {e.chunk} from {e.peer}: already done, dropped")
            case Listening():
                self._log(now, f"serving peers and the web page on port {e.port}")
            case AudioStart():
                self._log(now, "encoding the audio beside the chunks")
            case AudioDone():
                self._log(now, f"audio encoded in {e.encode_s:.1f} s")
            case Merge():
                self.phase = "merging"
                for row in self.peers.values():
                    row.running.clear()
                self._log(now, "all chunks in; merging and verifying")
            case JobEnd():
                self.phase = "done"
                self.ended = now
            case HlsSegment():
                if e.chunk == 0:
                    self._log(now, f"HLS: first segment playable at {e.at_s:.1f} s")
            case HlsBehind():
                self._log(now, f"HLS: slower than real time ({e.media_s:.1f} s of video in "
                          f"{e.wall_s:.1f} s); viewers will wait")
            case HlsEnd():
                self._log(now, f"HLS: {e.segments} segments complete in {e.directory}")
            case Tracks() | ChunkLost():
                pass
        if isinstance(e, ChunkProgress | ChunkDone | JobResumed):
            self._sample(now)

    def _lost(self, c: int, requeued: bool) -> None:
        """Chunk ``c``'s attempt ended without a result; ``requeued``: it waits again."""
        if c < len(self.chunk_state) and self.chunk_state[c] != "done":
            if requeued:
                self.retries += 1
                self.chunk_state[c], self.chunk_peer[c] = "retry", ""
            self.chunk_frames[c] = 0

    def _sample(self, now: float) -> None:
        self.rate_samples.append((now, self.live_frames()))
        while len(self.rate_samples) > 2 and now - self.rate_samples[1][0] >= ETA_WINDOW_S:
            self.rate_samples.popleft()

    def _log(self, now: float, text: str) -> None:
        t = now - self.started if self.started is not None else 0.0
        self.events.append(f"{fmt_duration(t)} {text}")

    # -- derived numbers ----------------------------------------------------------------
    def live_frames(self) -> int:
        return min(self.frames, self.frames_done + sum(self.chunk_frames))

    def elapsed(self, now: float) -> float:
        if self.started is None:
            return 0.0
        return (self.ended if self.ended is not None else now) - self.started

    def fps(self, now: float) -> float:
        t = self.elapsed(now)
        return (self.live_frames() - self.kept_frames) / t if t > 0.5 else 0.0

    def recent_fps(self) -> float | None:
        """Frames per second over the last ``ETA_WINDOW_S``; None until a rate is known."""
        if len(self.rate_samples) < 2:
            return None
        (t0, f0), (t1, f1) = self.rate_samples[0], self.rate_samples[-1]
        if t1 - t0 < ETA_MIN_SPAN_S or f1 <= f0:
            return None
        return (f1 - f0) / (t1 - t0)

    def eta(self, now: float) -> float | None:
        fps = self.recent_fps()
        if self.phase != "encoding" or fps is None:
            return None
        return (self.frames - self.live_frames()) / fps

    def shown_frames(self) -> int:
        """What the bar shows: one frame short of all until the merged output verified,
        since encoded frames still have to be checked and merged."""
        live = self.live_frames()
        return live if self.phase == "done" else min(live, max(0, self.frames - 1))

    # -- rendering ----------------------------------------------------------------------
    def render(self, now: float, width: int, height: int = 24) -> RenderableType:
        width = max(40, width)
        shown = self.shown_frames()
        pct = 100 * shown / self.frames if self.frames else 0.0
        head1 = Text(no_wrap=True, overflow="ellipsis")
        head1.append("swarm ", style="bold")
        head1.append(f"{self.input} -> {self.output}", style="bold")
        head1.append(f"  [{self.profile or '?'}]")
        head2 = Text(no_wrap=True, overflow="ellipsis")
        head2.append(f"{self.phase:<9}", style="bold green" if self.phase == "done" else "")
        head2.append(f" elapsed {fmt_duration(self.elapsed(now))}"
                     f"  ETA {fmt_duration(self.eta(now))}"
                     f"  {self.fps(now):.1f} fps")
        bar = Table.grid(padding=(0, 1))
        bar.add_column(no_wrap=True)
        bar.add_column(ratio=1)
        bar.add_column(no_wrap=True)
        bar.add_row(f"{pct:5.1f}%",
                    ProgressBar(total=max(1, self.frames), completed=shown),
                    f"{shown}/{self.frames} fr")

        map_lines = max(1, math.ceil(len(self.chunk_state) / width))
        free = height - _FIXED_LINES - EVENTS_SHOWN - 1
        # The peers table matters more than the map: the map gets at most half the room.
        map_lines = max(1, min(map_lines, free // 2))
        peer_rows = max(1, free - map_lines)
        parts: list[RenderableType] = [head1, head2, bar, self._peers_table(width, peer_rows)]
        parts += self._chunk_map(width, map_lines)
        if self.bootstrap and not any(r.remote for r in self.peers.values()):
            # Folded, never cut: the line is meant to be pasted on another device.
            parts += [Text("no peers yet; to add a device, run there:", style="bold"),
                      Text(self.bootstrap, overflow="fold")]
        parts.append(Text("events: " if self.events else "", style="dim", no_wrap=True))
        parts += [Text(line, no_wrap=True, overflow="ellipsis") for line in self.events]
        return Group(*parts)

    def _peers_table(self, width: int, rows: int) -> Table:
        # Wider than ~100 columns the table only gains blank space: keep it compact.
        t = Table(box=box.SIMPLE_HEAD, width=min(width, 100), padding=(0, 1), show_edge=False,
                  pad_edge=False)
        t.add_column("", no_wrap=True, width=1)
        t.add_column("peer", no_wrap=True, ratio=1, min_width=6, overflow="ellipsis")
        t.add_column("arch", no_wrap=True, max_width=8, overflow="ellipsis")
        t.add_column("Mpx/s", no_wrap=True, justify="right")
        t.add_column("state", no_wrap=True, min_width=11)
        t.add_column("chunk", no_wrap=True, justify="right", max_width=9, overflow="ellipsis")
        t.add_column("fps", no_wrap=True, justify="right")
        t.add_column("done", no_wrap=True, justify="right")
        t.add_column("fail", no_wrap=True, justify="right")
        peers = sorted(self.peers.values(), key=lambda r: (r.gone, not r.local, r.name))
        shown = peers if len(peers) <= rows else peers[: rows - 1]
        for r in shown:
            st = r.state
            style = {"gone": "dim", "benched": "red", "idle": "yellow"}.get(st, "")
            chunks = ",".join(str(c) for c, *_ in sorted(r.running.values())) or "-"
            name = r.name + (" (here)" if r.local else "")
            t.add_row(Text(r.letter, style=f"bold {r.colour}"), name, r.arch or "-",
                      _score(r.score), Text(st, style=style), chunks,
                      f"{r.fps:.0f}" if r.running else "-", str(r.done),
                      Text(str(r.failed), style="red" if r.failed else ""))
        if len(shown) < len(peers):
            t.add_row("", Text(f"+{len(peers) - len(shown)} more", style="dim"))
        if not peers:
            t.add_row("", Text("waiting for encoders", style="dim"))
        return t

    def _chunk_map(self, width: int, lines: int) -> list[RenderableType]:
        done = sum(s in ("done", "kept") for s in self.chunk_state)
        title = Text(no_wrap=True, overflow="ellipsis")
        title.append(f"chunks {done}/{len(self.chunk_state)} done", style="bold")
        title.append(f"  failures {self.failures}  retries {self.retries}")
        cells = Text(no_wrap=True, overflow="crop")
        room = width * lines
        states = list(zip(self.chunk_state, self.chunk_peer, strict=True))
        clipped = len(states) > room
        if clipped:
            states = states[: room - 1]
        for i, (state, peer) in enumerate(states):
            row = self.peers.get(peer)
            if state == "running" and row is not None:
                cells.append(row.letter, style=f"bold reverse {row.colour}")
            elif state == "done" and row is not None:
                cells.append(row.letter.lower(), style=row.colour)
            elif state == "retry":
                cells.append("x", style="bold red")
            elif state == "kept":
                cells.append("=", style="green")
            else:
                cells.append(".", style="dim")
            if (i + 1) % width == 0 and i + 1 < len(states):
                cells.append("\n")
        if clipped:
            cells.append("…")
        legend = Text(no_wrap=True, overflow="ellipsis", style="dim")
        legend.append(". pending  A held by peer A  a done by A  ")
        legend.append("x", style="bold red")
        legend.append(" requeued")
        if self.kept:
            legend.append("  = kept")
        return [title, cells, legend]


class JoinView:
    """A peer's own dashboard during `swarm join`, built from ``Node`` events."""

    def __init__(self, *, address: str = "", score: float | None = None,
                 score_profile: str = "") -> None:
        self.name = self.node_id = ""
        self.address = address
        self.score = score
        self.score_profile = score_profile
        self.coordinators: dict[str, str] = {}  # job -> its coordinator's URL
        self.job_id = ""
        # (job, chunk) -> frames, fps: two coordinators' jobs have chunks of one number.
        self.running: dict[tuple[str, int], tuple[int, float]] = {}
        self.started: float | None = None
        self.jobs = self.done = self.failed = self.frames = 0
        self.last_frames: dict[int, int] = {}
        self.events: deque[str] = deque(maxlen=EVENTS_SHOWN)
        self.bootstrap = self.pyz_sha256 = ""  # how another device joins (GET /swarm.pyz)

    @property
    def state(self) -> str:
        if not self.name:
            return "starting"
        if self.running:
            return "encoding"
        return "working" if self.coordinators else "idle"

    @property
    def coordinator(self) -> str:
        return ", ".join(self.coordinators.values())

    def feed(self, e: NodeEvent, now: float) -> None:
        match e:
            case NodeUp():
                self.started = now
                self.name, self.node_id = e.name, e.node_id
                if e.address:
                    self.address = e.address
                elif not self.address or self.address.endswith(":0"):
                    self.address = f"{self.address.rpartition(':')[0] or '?'}:{e.port}"
                self._log(now, f"ready on port {e.port}")
            case PyzReady():
                self.bootstrap, self.pyz_sha256 = e.bootstrap, e.sha256
            case JobJoined():
                self.coordinators[e.job_id], self.job_id = e.coordinator, e.job_id
                self.jobs += 1
                self._log(now, f"working for {e.coordinator}")
            case SlotStart():
                self.running[e.job_id, e.chunk] = (0, 0.0)
            case SlotProgress():
                self.running[e.job_id, e.chunk] = (e.frames, e.fps)
            case SlotEnd():
                self.running.pop((e.job_id, e.chunk), None)
                if e.outcome == "done":
                    self.done += 1
                    self.frames += e.frames  # the chunk's own count, not the last report
                else:
                    self.failed += 1
                self._log(now, f"chunk {e.chunk}: {e.outcome}")
            case JobLeft():
                self.coordinators.pop(e.job_id, None)
                for key in [k for k in self.running if k[0] == e.job_id]:
                    del self.running[key]
                rest = ", ".join(self.coordinators.values())
                self._log(now, f"job over; still working for {rest}" if rest
                          else "job over; idle")

    def _log(self, now: float, text: str) -> None:
        t = now - self.started if self.started is not None else 0.0
        self.events.append(f"{fmt_duration(t)} {text}")

    def render(self, now: float, width: int, height: int = 24) -> RenderableType:
        t = Table.grid(padding=(0, 2))
        t.add_column(no_wrap=True, style="bold")
        t.add_column(no_wrap=True, overflow="ellipsis", max_width=max(20, width - 14))
        score = f"{_score(self.score)} Mpx/s ({self.score_profile})" if self.score else "-"
        chunk = "  ".join(f"{c} ({f} fr, {fps:.0f} fps)"
                          for (_, c), (f, fps) in sorted(self.running.items())) or "-"
        t.add_row("node", f"{self.name or '?'}  ({self.node_id or '-'})")
        t.add_row("address", self.address or "-")
        t.add_row("speed", score)
        t.add_row("state", Text(self.state, style="green" if self.running else "yellow"))
        t.add_row("coordinator", self.coordinator or "-")
        t.add_row("chunk", chunk)
        t.add_row("totals", f"{self.jobs} job(s), {self.done} chunk(s), {self.frames} frames, "
                            f"{self.failed} failed")
        parts: list[RenderableType] = [Text("swarm join", style="bold"), t]
        shown = height - 9
        if self.bootstrap:
            # Folded, never cut: the line is meant to be typed or pasted on another device.
            parts += [Text("another device joins with:", style="bold"),
                      Text(self.bootstrap, overflow="fold"),
                      Text(f"# sha256 {self.pyz_sha256}", overflow="fold")]
            shown -= 3
        parts += [Text(line, no_wrap=True, overflow="ellipsis")
                  for line in list(self.events)[-max(0, shown):]]
        return Group(*parts)


# -- end of job -----------------------------------------------------------------------------
def summarize(report: dict[str, Any], local_score: float | None, *, local_slots: int = 1,
              box: tuple[int, int] | None = None) -> dict[str, Any]:
    """Per-peer totals from a job report's attempts, and the speedup over this device alone.

    Busy time is the sum of a peer's attempt durations (all outcomes: time it spent for
    us); chunks and frames count only the results we kept. Chunks a resumed job kept from
    its crashed run are counted apart ("kept"): nobody was busy with them in this run.

    Speedup: this device's benchmarked time for the work of this run (frames x output
    pixels over ``local_score`` x ``local_slots``, the slots it would use alone) against
    the wall time. None without a score, or when the output is less than
    ``SPEEDUP_MIN_BOX_SHARE`` of the profile's ``box``, where the benchmark does not apply.
    """
    kept_idx = set(report.get("resumed_chunks", []))
    kept_chunks = [c for c in report.get("chunks", []) if c.get("index") in kept_idx]
    kept_by: dict[str, tuple[int, int]] = {}
    for c in kept_chunks:
        n, f = kept_by.get(c.get("peer", ""), (0, 0))
        kept_by[c.get("peer", "")] = (n + 1, f + c.get("frames", 0))
    peers: dict[str, dict[str, Any]] = {}
    for p in report.get("peers", []):
        n, f = kept_by.get(p["name"], (0, 0))
        if p["chunks"] - n > 0:
            peers[p["name"]] = {"name": p["name"], "chunks": p["chunks"] - n,
                                "frames": p["frames"] - f, "busy_s": 0.0, "attempts": 0,
                                "failed": 0}
    for a in report.get("attempts", []):
        p = peers.setdefault(a["peer"], {"name": a["peer"], "chunks": 0, "frames": 0,
                                         "busy_s": 0.0, "attempts": 0, "failed": 0})
        p["busy_s"] += max(0.0, a["end_s"] - a["start_s"])
        p["attempts"] += 1
        p["failed"] += a["outcome"] in ("failed", "expired")
    total = max(1, report.get("frames", 0))
    for p in peers.values():
        p["busy_s"] = round(p["busy_s"], 3)
        p["mean_fps"] = round(p["frames"] / p["busy_s"], 2) if p["busy_s"] > 0 else 0.0
        p["share"] = round(p["frames"] / total, 4)
    wall = report.get("wall_s", 0.0)
    kept_frames = sum(c.get("frames", 0) for c in kept_chunks)
    pixels = report.get("width", 0) * report.get("height", 0)
    speedup = None
    applies = box is None or pixels >= SPEEDUP_MIN_BOX_SHARE * box[0] * box[1]
    work = (report.get("frames", 0) - kept_frames) * pixels
    if local_score and wall > 0 and applies and work > 0:
        alone_s = work / (local_score * max(1, local_slots))
        speedup = round(alone_s / wall, 2)
    return {"peers": sorted(peers.values(), key=lambda p: -p["frames"]), "wall_s": wall,
            "speedup": speedup, "retries": report.get("retries", 0),
            "duplicates": report.get("duplicates", 0),
            "kept": {"chunks": len(kept_chunks), "frames": kept_frames,
                     "of": len(report.get("chunks", [])),
                     "share": round(kept_frames / total, 4)},
            "left_out": report.get("left_out", []),
            "unreachable": report.get("unreachable", [])}


def summary_table(summary: dict[str, Any]) -> RenderableType:
    t = Table(title="swarm: job summary", box=box.SIMPLE_HEAD, title_justify="left")
    t.add_column("peer", no_wrap=True, overflow="ellipsis", max_width=24)
    for col in ("chunks", "frames", "busy", "mean fps", "share"):
        t.add_column(col, justify="right", no_wrap=True)
    for p in summary["peers"]:
        t.add_row(p["name"], str(p["chunks"]), str(p["frames"]), f"{p['busy_s']:.1f}s",
                  f"{p['mean_fps']:.1f}", f"{100 * p['share']:.0f}%")
    kept = summary.get("kept") or {}
    if kept.get("chunks"):
        t.add_row(Text("kept (earlier run)", style="dim"), str(kept["chunks"]),
                  str(kept["frames"]), "-", "-", f"{100 * kept['share']:.0f}%")
    sp = summary["speedup"]
    lines = [f"wall {summary['wall_s']:.1f}s  "
             + (f"speedup over this device alone {sp:.1f}x  " if sp else "")
             + f"retries {summary['retries']}  duplicates {summary['duplicates']}"]
    if kept.get("chunks"):
        lines.append(f"resumed: {kept['chunks']} of {kept['of']} chunks kept")
    lines += [f"left out: {x['reason']}" for x in summary.get("left_out", [])]
    lines += [f"unreachable: {x['peer']} ({x['reason']})" for x in summary.get("unreachable", [])]
    return Group(t, *(Text(line) for line in lines))
