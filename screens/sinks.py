"""The output sinks: where a job's or a node's events go for a person or a program to read.

``cli.py`` picks one (``Plain`` lines on stderr, ``JsonLines`` on stdout for ``--json``,
``Live``: the rich dashboard of ``screens.dashboard`` on a terminal, ``join_plain`` for
``swarm join``) and hands it to the shell as its ``emit``; the shell never sees which.
A sink reads only ``swarm.events``; a dead pipe is ``cli.py``'s to tolerate.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import typer

from swarm.events import (
    AudioDone,
    BatchEnd,
    ChunkDone,
    ChunkFailed,
    ChunkRequeued,
    Event,
    HlsBehind,
    HlsEnd,
    HlsSegment,
    JobEnd,
    JobEvent,
    JobJoined,
    JobLeft,
    JobResumed,
    JobStart,
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
    as_json,
)

__all__ = ["JsonLines", "Live", "Plain", "join_plain", "print_summary"]


class Plain:
    """Plain progress lines on stderr: for logs, pipes and dumb terminals."""

    def __init__(self) -> None:
        self.frames = 0
        self.total = 0
        self.last_pct = -1

    def __call__(self, e: JobEvent) -> None:
        match e:
            case JobStart():
                self.total = e.frames
                typer.echo(
                    f"swarm: {e.input} -> {e.output} ({e.profile}, {e.width}x{e.height}, "
                    f"{e.frames} frames in {e.chunks} chunks, {e.workers} local worker(s))",
                    err=True)
            case JobResumed():
                self.frames = e.frames_done
                typer.echo(f"swarm: resumed: {e.chunks_kept} of {e.of} chunks kept "
                           f"({self.frames} frames)", err=True)
            case ChunkDone():
                self.frames = e.frames_done
                # 100 % is said once the merged output verified (job_end), not when the last
                # chunk is in: the merge and its check still take a while.
                pct = min(99, 100 * self.frames // max(1, self.total))
                if pct // 10 != self.last_pct // 10 and self.frames < self.total:
                    self.last_pct = pct
                    typer.echo(f"swarm: {pct}% ({self.frames}/{self.total} frames)", err=True)
            case JobEnd():
                typer.echo(f"swarm: 100% ({self.total}/{self.total} frames), output verified",
                           err=True)
            case ChunkFailed():
                fate = e.fate or ("requeued" if e.requeued else "dropped")
                typer.echo(f"swarm: chunk {e.chunk} failed on {e.peer} ({e.reason}); {fate}",
                           err=True)
            case ChunkRequeued():
                typer.echo(f"swarm: chunk {e.chunk} requeued from {e.peer} ({e.reason})",
                           err=True)
            case PeerBenched():
                typer.echo(f"swarm: {e.reason}", err=True)
            case PeerUnreachable():
                typer.echo(f"swarm: peer {e.peer} unreachable ({e.why}); still trying",
                           err=True)
            case PeerForeign():
                typer.echo(f"swarm: peer {e.peer} not used: {e.why}", err=True)
            case PeerJoined():
                typer.echo(f"swarm: peer {e.peer} joined ({e.address})", err=True)
            case PeerLeft():
                typer.echo(f"swarm: peer {e.peer} left", err=True)
            case NoPeers():
                typer.echo(f"swarm: no peers yet; to add a device, run there:  {e.bootstrap}"
                           f"  # sha256 {e.sha256}", err=True)
            case AudioDone():
                typer.echo(f"swarm: audio encoded ({e.encode_s:.1f} s)", err=True)
            case Merge():
                typer.echo("swarm: merging chunks and audio, verifying output", err=True)
            case HlsSegment(chunk=0):
                typer.echo(f"swarm: HLS playable ({e.at_s:.1f} s after the start)", err=True)
            case HlsBehind():
                typer.echo(f"swarm: warning: the HLS stream grows slower than real time "
                           f"({e.media_s:.1f} s of video in {e.wall_s:.1f} s): viewers will "
                           "wait at the live edge", err=True)
            case HlsEnd():
                typer.echo(f"swarm: HLS complete: {e.segments} segments in {e.directory}",
                           err=True)

    def close(self) -> None:
        pass


class JsonLines:
    """``--json``: every event as one JSON object per line on stdout, and nothing else there.

    Each object has ``event`` and ``t`` (seconds since the command started). ``job_end`` is
    held back until the report exists, so the last line always is ``job_end`` with the
    output path and the summary; errors stay on stderr (one line) with the exit code.
    """

    def __init__(self) -> None:
        import time

        self.clock = time.monotonic
        self.t0 = self.clock()
        self.held: dict[str, Any] | None = None

    def __call__(self, e: Event) -> None:
        line = as_json(e, round(self.clock() - self.t0, 3))
        if isinstance(e, JobEnd | BatchEnd):
            self.held = line
            return
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    def finish(self, summary: dict[str, Any]) -> None:
        if self.held is not None:
            sys.stdout.write(json.dumps(self.held | {"summary": summary}) + "\n")
            sys.stdout.flush()

    def close(self) -> None:
        pass


class Live:
    """The rich Live dashboard on a terminal (screens.dashboard draws it).

    Events arrive on trio's thread while rich redraws from its own refresh thread, so both
    sides take ``lock``. Log records are pointed at Live's stderr proxy while it runs, so a
    warning prints above the dashboard instead of tearing it.
    """

    # Four redraws a second: smooth fps/ETA without measurable CPU on a small peer.
    REFRESH_PER_S = 4

    def __init__(self, view: Any) -> None:
        import threading
        import time

        from rich.console import Console
        from rich.live import Live

        self.view = view
        self.clock = time.monotonic
        self.lock = threading.Lock()
        self.console = Console(stderr=True)
        self.live = Live(get_renderable=self._render, console=self.console,
                         refresh_per_second=self.REFRESH_PER_S, transient=True,
                         vertical_overflow="crop", redirect_stderr=True, redirect_stdout=False)
        self.live.start()
        self._handlers = [h for h in logging.getLogger().handlers
                          if isinstance(h, logging.StreamHandler)]
        self._streams = [h.setStream(sys.stderr) for h in self._handlers]

    def _render(self) -> Any:
        w, h = self.console.size
        with self.lock:
            return self.view.render(self.clock(), w, h)

    def __call__(self, e: Event) -> None:
        with self.lock:
            self.view.feed(e, self.clock())
        if isinstance(e, Merge):
            self.live.refresh()

    def close(self) -> None:
        if self.live.is_started:
            self.live.stop()
            for h, stream in zip(self._handlers, self._streams, strict=True):
                if stream is not None:
                    h.setStream(stream)



def join_plain(quiet: bool) -> Any:
    working: dict[str, str] = {}  # job id -> its coordinator's URL, in joining order

    def show(e: NodeEvent) -> None:
        match e:
            case JobJoined():
                working[e.job_id] = e.coordinator
            case JobLeft():
                working.pop(e.job_id, None)
        if quiet:
            return
        match e:
            case NodeUp():
                typer.echo(f"swarm: {e.name} ready on port {e.port} at {e.address} "
                           f"(node {e.node_id})", err=True)
                typer.echo(f"swarm: web page at http://{e.address}/", err=True)
            case PyzReady():
                typer.echo(f"swarm: another device joins with:\n{e.bootstrap}\n"
                           f"# sha256 {e.sha256}", err=True)
            case JobJoined():
                typer.echo(f"swarm: working for {e.coordinator} (job {e.job_id})", err=True)
            case SlotEnd():
                typer.echo(f"swarm: chunk {e.chunk}: {e.outcome}", err=True)
            case JobLeft():
                # A node serving several coordinators is not idle while one job remains.
                rest = ", ".join(f"{url} (job {job})" for job, url in working.items())
                typer.echo(f"swarm: job {e.job_id} over; "
                           + (f"still working for {rest}" if rest else "idle"), err=True)

    return show



def print_summary(summary: dict[str, Any], wall_s: float,
                  result: dict[str, Any] | None = None) -> None:
    from rich.console import Console

    from .dashboard import summary_table

    Console(stderr=True, highlight=False).print(summary_table(summary))
    sent = (result or {}).get("source_bytes_sent", 0)
    if sent and result is not None:
        typer.echo(f"swarm: sent {sent / 1e6:.1f} MB of source to peers "
                   f"({sent / max(1, result['source_bytes']):.2f}x the file), received "
                   f"{result['result_bytes_received'] / 1e6:.1f} MB of results", err=True)
    typer.echo(f"swarm: done in {wall_s:.1f} s", err=True)
