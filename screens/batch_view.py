"""What the terminal shows during a batch (`swarm encode a.mp4 dir/`): one dashboard.

The batch's own lines (files done, running, queued, failed; the overall ETA) above the
dashboard of each file in flight (``screens.dashboard.JobView``: its peers and chunk map).
Like ``JobView``, a state machine fed events with the time passed in; ``render`` is pure.
``BatchLines`` is the plain-text counterpart for logs and pipes: it returns the lines,
``cli.py`` prints them.
"""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.text import Text

from swarm.batch import batch_eta
from swarm.events import (
    BatchEnd,
    BatchEvent,
    BatchStart,
    ChunkDone,
    ChunkFailed,
    FileDone,
    FileFailed,
    FileSkipped,
    FileStart,
    InFile,
    JobResumed,
    JobStart,
)

from .dashboard import JobView, fmt_duration

__all__ = ["BatchLines", "BatchView"]

# Lines the batch header takes: the counts and ETA, then the last files that ended.
_HEADER_LINES = 1
ENDED_SHOWN = 3
# The newest file's dashboard gets at least this many lines (the terminal crops the rest).
MIN_FILE_LINES = 12


class BatchView:
    """The batch dashboard's state, built from ``peer.batch.run_batch`` events."""

    def __init__(self, *, local_arch: str = "", local_score: float | None = None) -> None:
        self.local_arch, self.local_score = local_arch, local_score
        self.inputs: tuple[str, ...] = ()
        self.sizes: tuple[int, ...] = ()
        self.state: list[str] = []  # queued / running / done / skipped / failed
        self.reasons: dict[int, str] = {}
        self.views: dict[int, JobView] = {}
        self.ended: list[int] = []  # files that ended, in the order they did
        self.started: float | None = None
        self.finished: float | None = None

    def feed(self, e: BatchEvent, now: float) -> None:
        match e:
            case BatchStart():
                self.started = now
                self.inputs, self.sizes = e.inputs, e.sizes
                self.state = ["queued"] * len(e.inputs)
            case FileStart(file=i):
                self.state[i] = "running"
                self.views[i] = JobView(local_arch=self.local_arch,
                                        local_score=self.local_score)
            case InFile(file=i):
                view = self.views.get(i)
                if view is not None:
                    view.feed(e.event, now)
            case FileDone(file=i) | FileSkipped(file=i) | FileFailed(file=i):
                self.state[i] = {FileDone: "done", FileSkipped: "skipped",
                                 FileFailed: "failed"}[type(e)]
                if isinstance(e, FileSkipped | FileFailed):
                    self.reasons[i] = e.reason
                self.views.pop(i, None)
                self.ended.append(i)
            case BatchEnd():
                self.finished = now

    def count(self, state: str) -> int:
        return self.state.count(state)

    def _fraction(self, i: int) -> float:
        if self.state[i] == "done":
            return 1.0
        view = self.views.get(i)
        if view is None or not view.frames:
            return 0.0
        return view.live_frames() / view.frames

    def eta(self, now: float) -> float | None:
        if self.started is None or self.finished is not None:
            return None
        kept = [i for i, s in enumerate(self.state) if s not in ("skipped", "failed")]
        return batch_eta(now - self.started, [self.sizes[i] for i in kept],
                         [self._fraction(i) for i in kept])

    def render(self, now: float, width: int, height: int = 24) -> RenderableType:
        width = max(40, width)
        elapsed = (self.finished or now) - (self.started or now)
        head = Text(no_wrap=True, overflow="ellipsis")
        head.append("swarm batch ", style="bold")
        head.append(f"{self.count('done')}/{len(self.state)} done  "
                    f"{self.count('running')} running  {self.count('queued')} queued")
        if self.count("skipped"):
            head.append(f"  {self.count('skipped')} skipped")
        if self.count("failed"):
            head.append(f"  {self.count('failed')} failed", style="bold red")
        head.append(f"  elapsed {fmt_duration(elapsed)}  ETA {fmt_duration(self.eta(now))}")
        parts: list[RenderableType] = [head]
        for i in self.ended[-ENDED_SHOWN:]:
            st = self.state[i]
            style = {"done": "green", "failed": "red"}.get(st, "dim")
            line = Text(no_wrap=True, overflow="ellipsis")
            line.append(f"{st:<8}", style=style)
            line.append(f" {self.inputs[i]}")
            if i in self.reasons:
                line.append(f"  ({self.reasons[i]})", style="dim")
            parts.append(line)
        room = height - _HEADER_LINES - min(ENDED_SHOWN, len(self.ended))
        running = sorted(self.views)
        # The files finishing (tail, merge) get two lines each: progress and chunk map; the
        # newest one, which holds most of the swarm, its whole dashboard below them.
        for i in running[:-1]:
            view = self.views[i]
            pct = 100 * view.shown_frames() / max(1, view.frames)
            line = Text(no_wrap=True, overflow="ellipsis")
            line.append(f"[{i + 1}/{len(self.state)}]", style="bold")
            line.append(f" {view.phase} {pct:5.1f}% {view.input}")
            parts += [line, _map_line(view, width)]
            room -= 2
        if running:
            i = running[-1]
            title = Text(f"[{i + 1}/{len(self.state)}]", style="bold", no_wrap=True)
            parts += [title, self.views[i].render(now, width, max(MIN_FILE_LINES, room - 1))]
        return Group(*parts)


def _map_line(view: JobView, width: int) -> Text:
    """A file's chunk map in one line (cut with an ellipsis), as the dashboard draws it."""
    cells = Text(no_wrap=True, overflow="ellipsis")
    for state, peer in zip(view.chunk_state[:width], view.chunk_peer, strict=False):
        row = view.peers.get(peer)
        if state == "running" and row is not None:
            cells.append(row.letter, style=f"bold reverse {row.colour}")
        elif state == "done" and row is not None:
            cells.append(row.letter.lower(), style=row.colour)
        elif state == "kept":
            cells.append("=", style="green")
        elif state == "retry":
            cells.append("x", style="bold red")
        else:
            cells.append(".", style="dim")
    return cells


class BatchLines:
    """Plain progress lines for a batch, each prefixed with the file's place in it."""

    def __init__(self) -> None:
        self.n = 0
        self.inputs: tuple[str, ...] = ()
        self.frames: dict[int, int] = {}
        self.last_pct: dict[int, int] = {}

    def feed(self, e: BatchEvent) -> list[str]:
        match e:
            case BatchStart():
                self.n, self.inputs = len(e.inputs), e.inputs
                lines = [f"swarm: {self.n} file(s) to encode"]
                lines += [f"swarm: skipped {p} ({why})" for p, why in e.skipped]
                return lines
            case FileStart(file=i):
                return [f"swarm: {self._tag(i)} {e.input} -> {e.output}"]
            case FileSkipped(file=i):
                return [f"swarm: {self._tag(i)} skipped {e.input} ({e.reason})"]
            case FileFailed(file=i):
                return [f"swarm: {self._tag(i)} failed {e.input}: {e.reason}"]
            case FileDone(file=i):
                return [f"swarm: {self._tag(i)} done {e.output} ({e.wall_s:.1f} s)"]
            case InFile(file=i, event=JobStart() as s):
                self.frames[i] = s.frames
                return [f"swarm: {self._tag(i)} {s.frames} frames in {s.chunks} chunks"]
            case InFile(file=i, event=JobResumed() as r):
                return [f"swarm: {self._tag(i)} resumed: {r.chunks_kept} of {r.of} chunks "
                        "kept"]
            case InFile(file=i, event=ChunkDone() as d):
                total = self.frames.get(i, 0)
                pct = min(99, 100 * d.frames_done // max(1, total))
                if pct // 25 != self.last_pct.get(i, 0) // 25 and d.frames_done < total:
                    self.last_pct[i] = pct
                    return [f"swarm: {self._tag(i)} {pct}%"]
            case InFile(file=i, event=ChunkFailed() as f):
                return [f"swarm: {self._tag(i)} chunk {f.chunk} failed on {f.peer} "
                        f"({f.reason}); {f.fate}"]
            case BatchEnd():
                return [f"swarm: batch: {e.done} done, {e.skipped} skipped, {e.failed} failed "
                        f"in {e.wall_s:.1f} s"]
        return []

    def _tag(self, i: int) -> str:
        return f"[{i + 1}/{self.n}]"
