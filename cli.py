"""The ``swarm`` command. All terminal output (rich, progress, colours) lives here."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from swarm.errors import SwarmError, UsageError

app = typer.Typer(
    name="swarm",
    help="Turn the idle computers on one LAN into a single video encoder.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"swarm: error: {message}", err=True)
    return typer.Exit(code)


def _default_output(input_path: str, profile: str) -> str:
    p = Path(input_path)
    stem = Path(profile).stem if profile.endswith(".toml") else profile
    return str(p.with_name(f"{p.stem}.{stem}.mp4"))


class _Printer:
    """Turns job events into plain lines, a rich progress bar, or nothing."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty() and not quiet
        self.frames = 0
        self.total = 0
        self.progress: Any = None
        self.task: Any = None
        self.chunk_frames: dict[int, int] = {}
        self.last_pct = -1

    def __call__(self, e: dict[str, Any]) -> None:
        kind = e["event"]
        if kind == "job_start":
            self.total = e["frames"]
            if not self.quiet:
                typer.echo(
                    f"swarm: {e['input']} -> {e['output']} ({e['profile']}, "
                    f"{e['width']}x{e['height']}, {e['frames']} frames in {e['chunks']} chunks, "
                    f"{e['workers']} local worker(s))", err=True)
            if self.tty:
                from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

                self.progress = Progress(
                    TextColumn("encoding"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                    TextColumn("{task.completed}/{task.total} frames"), TimeRemainingColumn(),
                    transient=True,
                )
                self.progress.start()
                self.task = self.progress.add_task("encode", total=self.total)
        elif kind == "chunk_progress":
            self.chunk_frames[e["chunk"]] = e["frames"]
            self._show()
        elif kind == "chunk_done":
            self.chunk_frames.pop(e["chunk"], None)
            self.frames = e["frames_done"]
            self._show()
        elif kind == "chunk_failed" and not self.quiet:
            self._print(f"swarm: chunk {e['chunk']} failed ({e['reason']}); "
                        f"{'requeued' if e['requeued'] else 'dropped'}")
        elif kind == "merge":
            self.close()
            if not self.quiet:
                typer.echo("swarm: merging chunks and audio, verifying output", err=True)

    def _print(self, line: str) -> None:
        if self.progress is not None:
            self.progress.console.print(line, highlight=False)
        else:
            typer.echo(line, err=True)

    def _show(self) -> None:
        done = self.frames + sum(self.chunk_frames.values())
        if self.progress is not None:
            self.progress.update(self.task, completed=min(done, self.total))
        elif not self.quiet and self.total:
            pct = 100 * self.frames // self.total
            if pct // 10 != self.last_pct // 10:
                self.last_pct = pct
                typer.echo(f"swarm: {pct}% ({self.frames}/{self.total} frames)", err=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _run_encode(input: str, profile: str, output: str | None, report: str | None,
                chunk_seconds: float | None, workers: int, name: str | None, upscale: bool,
                quiet: bool) -> str:
    import trio

    from peer.coordinator import EncodeOptions, run_encode
    from profiles import load_profile

    prof = load_profile(profile)
    out = output or _default_output(input, profile)
    if report is not None:
        rdir = Path(report).resolve().parent
        if not rdir.is_dir() or not os.access(rdir, os.W_OK):
            raise UsageError(f"report {report}: directory is not writable")
    opts = EncodeOptions(input=input, output=out, profile=prof, chunk_seconds=chunk_seconds,
                         workers=workers, name=name or socket.gethostname(), upscale=upscale)
    printer = _Printer(quiet)
    try:
        result = trio.run(run_encode, opts, printer)
    finally:
        printer.close()
    if report is not None:
        Path(report).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if not quiet:
        typer.echo(f"swarm: done in {result['wall_s']:.1f} s", err=True)
    return out


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _guarded(fn: Any, *args: Any) -> Any:
    """One clear line and an exit code for every failure we expect; no tracebacks.

    Errors from inside trio nurseries arrive wrapped in exception groups; the most
    important leaf decides (Ctrl-C, then a usage error, then any swarm error).
    """
    try:
        return fn(*args)
    except (KeyboardInterrupt, SwarmError, OSError, BaseExceptionGroup) as exc:
        leaves = _leaves(exc)
        if any(isinstance(e, KeyboardInterrupt) for e in leaves):
            raise _fail("interrupted; nothing was written", EXIT_INTERRUPTED) from None
        for kind, code in ((UsageError, EXIT_USAGE), (SwarmError, EXIT_FAILED)):
            found = next((e for e in leaves if isinstance(e, kind)), None)
            if found is not None:
                raise _fail(str(found), code) from None
        os_err = next((e for e in leaves if isinstance(e, OSError)), None)
        if os_err is not None:
            where = f"{os_err.filename}: " if os_err.filename else ""
            raise _fail(f"{where}{os_err.strerror or os_err}", EXIT_FAILED) from None
        raise


@app.command()
def encode(
    input: Annotated[str, typer.Argument(help="The video to encode.")],
    profile: Annotated[str, typer.Option(
        "--profile", "-p", help="Built-in profile name (see `swarm profiles`) or a .toml file."
    )] = "hd",
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help="Output file (.mp4, .mov, .mkv). Default: <stem>.<profile>.mp4 "
        "beside the input.")] = None,
    report: Annotated[str | None, typer.Option(
        "--report", help="Write a JSON report of the job (chunks, peers, timings) here."
    )] = None,
    chunk_seconds: Annotated[float | None, typer.Option(
        "--chunk-seconds", min=0.5, max=600,
        help="Target chunk length; cuts snap to source keyframes. Default: 4 chunks per "
        "worker, 4-30 s each.")] = None,
    workers: Annotated[int, typer.Option(
        "--workers", "-w", min=0, max=64,
        help="Local encoder processes. 0: one per two cores.")] = 0,
    name: Annotated[str | None, typer.Option(
        "--name", help="This node's name in reports. Default: the hostname.")] = None,
    upscale: Annotated[bool, typer.Option(
        "--upscale", help="Allow enlarging a source smaller than the profile's box.")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="Print only errors and the output path.")] = False,
) -> None:
    """Encode INPUT with a profile: split into chunks, encode them in parallel, merge.

    The output has exactly the source's frames and timestamps, and the audio (encoded once
    over the whole file) keeps its offset. It is written under a temporary name and renamed
    only after it verified; on any failure or Ctrl-C nothing is left behind.
    """
    out = _guarded(_run_encode, input, profile, output, report, chunk_seconds, workers, name,
                   upscale, quiet)
    typer.echo(out)


DEMO_SECONDS = 12


@app.command()
def demo(
    workers: Annotated[int, typer.Option("--workers", "-w", min=0, max=64,
                                         help="Local encoder processes. 0: auto.")] = 0,
    profile: Annotated[str, typer.Option("--profile", "-p", help="Profile to use.")] = "hd",
) -> None:
    """Make a short test clip with audio here (swarm-demo.mp4) and encode it.

    Needs no input file: the clip is synthesised with ffmpeg's lavfi sources.
    """
    from chunker.testsrc import make_demo_clip
    from chunker.tools import find_ffmpeg

    src = os.path.abspath("swarm-demo.mp4")

    def make() -> None:
        ff = find_ffmpeg(["libx264", "aac"])
        if not os.access(os.path.dirname(src), os.W_OK):
            raise UsageError(f"cannot write in {os.path.dirname(src)}")
        typer.echo(f"swarm: making a {DEMO_SECONDS} s demo clip {src}", err=True)
        make_demo_clip(ff.path, src, DEMO_SECONDS)

    _guarded(make)
    out = _guarded(_run_encode, src, profile, None, None, None, workers, None, False, False)
    typer.echo(f"swarm: demo output: {out}", err=True)
    typer.echo(out)


@app.command("profiles")
def profiles_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the built-in encoding profiles."""
    from profiles import builtin_names, load_profile

    profs = [load_profile(n) for n in builtin_names()]
    if as_json:
        typer.echo(json.dumps([p.to_wire() | {"description": p.description} for p in profs],
                              indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    wide = console.width >= 140
    table = Table(title="swarm profiles (box is a bound: aspect kept, never upscaled)")
    for col in ("name", "box", "video", "level", "preset", "audio"):
        table.add_column(col, no_wrap=True)
    if wide:
        table.add_column("description")
    for p in profs:
        v, a = p.video, p.audio
        table.add_row(
            p.name, f"{v.width}x{v.height}",
            f"{v.codec.removeprefix('lib')} {v.profile} {p.rate_label}".replace("  ", " "),
            v.level or "-", v.preset,
            f"{a.codec.removeprefix('lib')} {a.bitrate_k}k {a.sample_rate / 1000:g} kHz "
            f"{a.channels} ch", *([p.description] if wide else []),
        )
    console.print(table)


def _later(what: str) -> typer.Exit:
    return _fail(f"`swarm {what}` arrives with the swarm release (issue 4); this build "
                 "encodes on one node only", EXIT_USAGE)


@app.command()
def join() -> None:
    """Make this device an encoder peer of the swarm (not available yet)."""
    raise _later("join")


@app.command()
def peers() -> None:
    """List the peers found on the LAN (not available yet)."""
    raise _later("peers")


@app.command()
def bench() -> None:
    """Measure this device's encoding speed per profile (not available yet)."""
    raise _later("bench")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="swarm: %(levelname)s: %(message)s")
    app()


if __name__ == "__main__":
    main()
