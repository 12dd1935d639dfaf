"""The ``swarm`` command. All terminal output (rich, progress, colours) lives here."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from chunker.plan import CHUNKS_PER_SLOT, MAX_CHUNK_S, MIN_CHUNK_S
from screens.sinks import JsonLines, Live, Plain, join_plain, print_summary
from swarm.config import DEFAULT_TIMINGS, Environment, Timings
from swarm.errors import SwarmError, UsageError
from swarm.events import BatchEnd, JobEvent, JobStart, Tracks

# The order `swarm --help` lists the commands in: the everyday ones first, then the tools.
# typer (0.29, its vendored click too) lists them as registered, i.e. in source order; a
# command not named here follows, in that order.
COMMAND_ORDER = ("encode", "demo", "join", "pair", "devices", "peers", "jobs", "profiles",
                 "bench", "pack")


def _name_values(params: list[Any]) -> list[Any]:
    """Give each parameter without a metavar the one _Command's docstring describes."""
    for p in params:
        if p is None or p.metavar is not None or p.name is None:
            continue
        if isinstance(p, TyperArgument):
            p.metavar = p.name.upper()
        elif isinstance(p, TyperOption):
            # type_descriptor: typer >= 0.2x; an older typer's options are click's (no N).
            desc = getattr(p, "type_descriptor", None)
            numeric = getattr(desc, "annotation", None) in (int, float)
            p.metavar = "" if p.is_flag else "N" if numeric else p.name.upper()
    return params


class _Commands(TyperGroup):
    def get_help_option(self, ctx: Any) -> Any:
        return _name_values([super().get_help_option(ctx)])[0]

    def list_commands(self, ctx: Any) -> list[str]:
        names = super().list_commands(ctx)
        rank = {n: i for i, n in enumerate(COMMAND_ORDER)}
        return sorted(names, key=lambda n: (rank.get(n, len(rank)), names.index(n)))


class _Command(TyperCommand):
    """Help in the usual Unix shape: `--force`, `--peer HOST:PORT`, `encode [OPTIONS] INPUT`.

    Left alone, typer shows Python types as values (`--force <bool>`, `--peer <list[str]>`)
    and a required argument in braces (`{input}`). So a flag shows no value, any other
    option without its own metavar a short name (N for numbers), and an argument its name
    in capitals.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _name_values(self.params)

    def get_help_option(self, ctx: Any) -> Any:
        return _name_values([super().get_help_option(ctx)])[0]

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for p in self.get_params(ctx):
            if isinstance(p, TyperArgument):
                name = p.metavar or (p.name or "").upper()
                name = name if p.required else f"[{name}]"
                pieces.append(name + ("..." if p.nargs != 1 else ""))
            else:
                pieces.extend(p.get_usage_pieces(ctx))
        return pieces


_Fn = TypeVar("_Fn", bound=Callable[..., Any])


class _App(typer.Typer):
    """typer.Typer whose commands all get _Command's help conventions."""

    def command(self, *args: Any, cls: Any = None, **kwargs: Any
                ) -> Callable[[_Fn], _Fn]:
        return super().command(*args, cls=cls or _Command, **kwargs)


app = _App(
    name="swarm",
    cls=_Commands,
    help="Turn the idle computers on one LAN into a single video encoder.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Markdown joins the hard-wrapped lines of a docstring into paragraphs that rich wraps
    # to the terminal; otherwise each source line is kept and an 80-column help is ragged.
    rich_markup_mode="markdown",
)

EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


class AudioMode(StrEnum):
    """``encode --audio``: which audio tracks the output keeps (chunker.tracks)."""

    all = "all"
    first = "first"
    none = "none"


class Priority(StrEnum):
    """``encode --priority``: this job's share of peers that serve several coordinators."""

    low = "low"
    normal = "normal"
    high = "high"


class SubtitleMode(StrEnum):
    """``encode --subtitles``: copy where the output container can hold them, or none."""

    copy = "copy"
    none = "none"


def _fail(message: str, code: int) -> typer.Exit:
    _tolerating_dead_pipes(typer.echo, f"swarm: error: {message}", err=True)
    return typer.Exit(code)


def _refuse_empty_secret(secret: str | None) -> None:
    """An empty secret is a mistake (``--secret "$SWARM_SECRET"`` with the variable unset),
    never a choice: no open swarm could use such a node and no closed one either, silently.
    Refused before anything runs, whatever else the command line says. Click reads an
    empty SWARM_SECRET as unset, which would make the swarm open: looked at here instead."""
    if secret is None:
        secret = _guarded(_environment).secret
    if secret is not None and not secret.strip():
        raise _fail("the swarm secret is empty (--secret \"\" or an empty SWARM_SECRET): "
                    "give the swarm's secret, or leave both out", EXIT_USAGE)


def _tolerating_dead_pipes(fn: Any, *args: Any, **kwargs: Any) -> None:
    """Call ``fn`` (something that prints); if the reader of stdout or stderr went away
    (`swarm encode --json | head`, a closed terminal), silence that stream and carry on.

    A job writes a file, and a dead pipe must not kill it: the output is still written and
    the exit code says how the job went. A pipe whose reader is gone polls as POLLERR, a
    hung-up terminal as POLLHUP (writes fail with EPIPE and EIO); pointing the descriptor at
    /dev/null makes every later write (and Python's last flush at exit) succeed unseen.
    """
    import errno
    import select

    try:
        fn(*args, **kwargs)
    except OSError as exc:
        if exc.errno not in (errno.EPIPE, errno.EIO):
            raise
        for stream in (sys.stdout, sys.stderr):
            try:
                fd = stream.fileno()
            except (OSError, ValueError):  # not a real file (CliRunner's capture)
                continue
            poller = select.poll()
            poller.register(fd, select.POLLOUT)
            if any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0)):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, fd)
                os.close(devnull)


def _default_output(input_path: str, profile: str) -> str:
    p = Path(input_path)
    stem = Path(profile).stem if profile.endswith(".toml") else profile
    return str(p.with_name(f"{p.stem}.{stem}.mp4"))


def _environment() -> Environment:
    """The one place the program reads its environment (see swarm.config); each command
    reads it once and passes the values down."""
    return Environment.from_environ(os.environ)


def _output_mode(quiet: bool, as_json: bool, term: str) -> str:
    """json, quiet, live (a colour terminal on stderr) or plain."""
    if as_json:
        return "json"
    if quiet:
        # --quiet promises errors only: a warning (an ffmpeg passed over for another, a
        # peer's hiccup) is not one.
        logging.getLogger().setLevel(logging.ERROR)
        return "quiet"
    if sys.stderr.isatty() and term not in ("dumb", ""):
        return "live"
    return "plain"


def _local_score(profile: str, env: Environment) -> float | None:
    """This device's benchmark score for ``profile``, if it was ever measured (else None).

    Only for the speedup figure: any problem (no benchmark module yet, no cache, no
    ffmpeg) just means "unknown".
    """
    try:
        from chunker.tools import find_ffmpeg
        from peer.benchmark import load_scores

        scores = load_scores(find_ffmpeg((), env.ffmpeg), env.cache_dir)
    except Exception:
        return None
    return (scores or {}).get(profile) or None


def _check_writable(option: str, path: str | None) -> None:
    if path is not None:
        rdir = Path(path).resolve().parent
        if not rdir.is_dir() or not os.access(rdir, os.W_OK):
            raise UsageError(f"{option} {path}: directory is not writable")


def _ladder_heights(text: str) -> tuple[int, ...]:
    """``--ladder 1080,720,480``: even heights, at most MAX_RUNGS of them."""
    from profiles import MAX_RUNGS

    try:
        heights = tuple(int(h) for h in text.split(","))
    except ValueError:
        raise _fail(f"--ladder {text}: give heights like 1080,720,480", EXIT_USAGE) from None
    if not 1 <= len(heights) <= MAX_RUNGS or any(h % 2 or not 16 <= h <= 8192 for h in heights):
        raise _fail(f"--ladder {text}: 1 to {MAX_RUNGS} even heights from 16 to 8192",
                    EXIT_USAGE)
    return heights


def _timings(lease_s: float | None) -> Timings:
    """The shell's timings: the defaults, with the lease ``--lease-seconds`` sets."""
    from swarm.protocol import MAX_LEASE_S  # what an Assignment may carry

    if lease_s is None:
        return DEFAULT_TIMINGS
    if not 1.0 <= lease_s <= MAX_LEASE_S:
        raise UsageError(f"--lease-seconds {lease_s:g}: use 1 to {MAX_LEASE_S:g}")
    return replace(DEFAULT_TIMINGS, lease_s=lease_s)


def _run_encode(input: str, profile: str, output: str | None, report: str | None,
                quiet: bool, *, local: Any = None, net: Any = None, as_json: bool = False,
                report_html: str | None = None, lease_s: float | None = None,
                web: Any = None, **intent: Any) -> str:
    """``intent``: the JobIntent fields besides the paths and profile; ``web``: the node's
    page (``peer.web.Web``), fed every event."""
    from peer.coordinator import run_encode
    from peer.options import EncodeOptions, JobIntent, LocalSettings, NetworkSettings, Tuning
    from peer.recruit import parse_peer
    from profiles import load_profile

    local = local or LocalSettings()
    net = net or NetworkSettings()
    prof = load_profile(profile)
    out = output or _default_output(input, profile)
    _check_writable("--report", report)
    _check_writable("--report-html", report_html)
    for spec in net.peers:
        parse_peer(spec)
    env = _environment()
    local = replace(local, ffmpeg=env.ffmpeg, cache_dir=env.cache_dir)
    opts = EncodeOptions(JobIntent(input, out, prof, **intent), local, net,
                         Tuning(env.scheduler, _timings(lease_s), env.part_renditions))
    mode = _output_mode(quiet, as_json, env.term)
    human = mode in ("live", "plain")
    score = _local_score(prof.name, env) if mode != "quiet" else None
    sink: Any
    if mode == "live":
        import platform

        from screens.dashboard import JobView

        sink = Live(JobView(local_arch=platform.machine(), local_score=score))
    elif mode == "json":
        sink = JsonLines()
    elif mode == "plain":
        sink = Plain()
    else:
        sink = None
    def emit(e: JobEvent) -> None:
        # Said once the job really starts, so a bad input still gets exactly one line.
        if isinstance(e, JobStart) and opts.net.enabled and human:
            _say_access(opts.net)
        if isinstance(e, Tracks) and human:
            # What the user did not ask to lose; what an option dropped is in the report.
            for d in e.dropped:
                if not d["chosen"]:
                    typer.echo(f"swarm: {d['message']}", err=True)
        if sink is not None:
            _tolerating_dead_pipes(sink, e)
        if web is not None:
            web.watch(e, opts.job.hls)

    try:
        result = _until_signal(run_encode, opts, emit)
    finally:
        if sink is not None:
            _tolerating_dead_pipes(sink.close)
    summary: dict[str, Any] = {}
    if mode != "quiet" or report_html is not None:
        from peer.host import default_workers
        from screens.dashboard import summarize

        summary = summarize(result, score, local_slots=opts.local.workers or default_workers(),
                            box=(prof.video.width, prof.video.height))
    if report is not None:
        Path(report).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if report_html is not None:
        from screens.report_html import build_html

        Path(report_html).write_text(build_html(result, summary), encoding="utf-8")
    if isinstance(sink, JsonLines):
        _tolerating_dead_pipes(sink.finish, summary)
    elif human:
        _tolerating_dead_pipes(print_summary, summary, result["wall_s"], result)
    if result.get("renditions"):
        return "\n".join(str(r["output"]) for r in result["renditions"])
    return out


def _run_batch(inputs: list[str], profile: str, output: str | None, report: str | None,
               quiet: bool, *, local: Any = None, net: Any = None, as_json: bool = False,
               report_html: str | None = None, lease_s: float | None = None,
               hls: str | None = None, **intent: Any) -> int:
    """Several inputs or a directory (peer.batch); returns the exit code: 1 if a file
    failed. ``--report`` is one JSON for the batch with a section per file."""
    import platform
    import time

    from peer.batch import find_inputs, run_batch
    from peer.host import default_workers
    from peer.options import EncodeOptions, JobIntent, LocalSettings, NetworkSettings, Tuning
    from peer.recruit import parse_peer
    from profiles import load_profile
    from screens.batch_view import BatchLines, BatchView
    from swarm.batch import Planned, plan
    from swarm.events import BatchStart

    local = local or LocalSettings()
    net = net or NetworkSettings()
    prof = load_profile(profile)
    out_dir = None
    if output is not None:
        if (os.path.exists(output) and not os.path.isdir(output)) or (
                not os.path.isdir(output) and Path(output).suffix.lower() in _CONTAINER_EXTS):
            raise UsageError(f"-o {output}: with several inputs or a directory, -o names a "
                             "directory")
        out_dir = os.path.abspath(output)
    if report_html is not None:
        raise UsageError("--report-html draws one file; for a batch use --report (one JSON "
                         "with a section per file)")
    if hls is not None:
        raise UsageError("--hls streams one file; a batch cannot publish its files to one "
                         "directory")
    # A ladder's files are named for their rung: the tallest is the file's output.
    top = max(intent.get("ladder") or [r.height for r in prof.ladder] or [0])
    _check_writable("--report", report)
    for spec in net.peers:
        parse_peer(spec)
    planned, skipped = plan(find_inputs(inputs), Path(profile).stem if profile.endswith(
        ".toml") else profile, out_dir, top)
    if not planned:
        raise UsageError(f"no videos in {' '.join(inputs)}")
    env = _environment()
    local = replace(local, ffmpeg=env.ffmpeg, cache_dir=env.cache_dir)
    tuning = Tuning(env.scheduler, _timings(lease_s), env.part_renditions)

    def make_opts(item: Planned) -> EncodeOptions:
        if out_dir is not None:
            os.makedirs(os.path.dirname(item.output), exist_ok=True)
        return EncodeOptions(JobIntent(item.input, item.output, prof, **intent), local, net,
                             tuning)

    mode = _output_mode(quiet, as_json, env.term)
    sink: Any = None
    lines = BatchLines() if mode == "plain" else None
    if mode == "live":
        sink = Live(BatchView(local_arch=platform.machine(),
                              local_score=_local_score(prof.name, env)))
    elif mode == "json":
        sink = JsonLines()

    def emit(e: Any) -> None:
        if sink is not None:
            _tolerating_dead_pipes(sink, e)
        elif lines is not None:
            for line in lines.feed(e):
                _tolerating_dead_pipes(typer.echo, line, err=True)

    if mode in ("live", "plain") and net.enabled:
        _say_access(net)
    t0 = time.monotonic()
    workers = 0 if local.no_local else (local.workers or default_workers())

    sizes = tuple(os.path.getsize(p.input) if os.path.isfile(p.input) else 0 for p in planned)

    async def main() -> list[Any]:
        emit(BatchStart(tuple(p.input for p in planned), tuple(p.output for p in planned),
                        sizes, tuple(skipped)))
        results = await run_batch(planned, make_opts, emit, workers=workers)
        count = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
        emit(BatchEnd(count["done"], count["skipped"], count["failed"],
                      round(time.monotonic() - t0, 3)))
        return results

    try:
        results = _until_signal(main)
    except KeyboardInterrupt:
        raise _fail("interrupted; the files written so far are kept", EXIT_INTERRUPTED
                    ) from None
    finally:
        if sink is not None:
            _tolerating_dead_pipes(sink.close)
    files = [{"input": r.input, "output": r.output, "status": r.status, "reason": r.reason,
              "wall_s": r.report["wall_s"] if r.report else None} for r in results]
    wall_s = round(time.monotonic() - t0, 3)
    if report is not None:
        doc = {"batch": {"wall_s": wall_s, "files": len(results), "skipped_by_walk": [
            {"path": p, "reason": why} for p, why in skipped]},
            "files": [f | {"report": r.report} for f, r in zip(files, results, strict=True)]}
        Path(report).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    failed = [r for r in results if r.status == "failed"]
    if isinstance(sink, JsonLines):
        _tolerating_dead_pipes(sink.finish, {"files": files, "wall_s": wall_s})
    else:
        if mode == "live":
            for p, why in skipped:
                typer.echo(f"swarm: skipped {p} ({why})", err=True)
            for r in results:
                if r.status == "skipped":
                    typer.echo(f"swarm: skipped {r.input} ({r.reason})", err=True)
        if mode == "live":  # plain mode said it in its batch_end line
            done = sum(r.status == "done" for r in results)
            typer.echo(f"swarm: {done} encoded, {len(results) - done - len(failed)} skipped, "
                       f"{len(failed)} failed in {wall_s:.1f} s", err=True)
        for r in results:
            if r.status != "failed":
                outs = [x["output"] for x in (r.report or {}).get("renditions", [])]
                _tolerating_dead_pipes(typer.echo, "\n".join(outs or [r.output]))
    for r in failed:  # last, on stderr, whatever the mode: what needs the user's attention
        _tolerating_dead_pipes(typer.echo, f"swarm: failed: {r.input}: {r.reason}", err=True)
    return EXIT_FAILED if failed else 0


_CONTAINER_EXTS = (".mp4", ".m4v", ".mov", ".mkv")


def _until_signal(fn: Any, *args: Any) -> Any:
    """Run ``fn`` under trio; SIGINT/SIGTERM/SIGHUP cancel it (cleanly) and raise
    KeyboardInterrupt.

    Listening for the signals ourselves, rather than relying on trio's KeyboardInterrupt
    delivery, makes cancellation run every cleanup (ffmpeg children killed, work directory
    removed, mDNS goodbye) even while library code (hypercorn, zeroconf threads) is running.
    SIGHUP (the terminal was closed) is a request to stop like the others: by default it
    would kill the process on the spot and leave the journal of a crash. Unless it was
    ignored when we started (`nohup swarm join &`): that is a request to outlive the terminal.
    """
    import signal

    import trio

    stops = [signal.SIGINT, signal.SIGTERM]
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        stops.append(signal.SIGHUP)

    async def main() -> tuple[bool, Any]:
        result: Any = None
        interrupted = False
        with trio.open_signal_receiver(*stops) as signals:
            async with trio.open_nursery() as nursery:

                async def body() -> None:
                    nonlocal result
                    result = await fn(*args)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(body)
                async for _ in signals:
                    interrupted = True
                    nursery.cancel_scope.cancel()
                    break
        return interrupted, result

    interrupted, result = trio.run(main)
    if interrupted:
        raise KeyboardInterrupt
    return result


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
    input: Annotated[list[Path], typer.Argument(
        help="The video to encode; or several, and directories (every video under them).")],
    profile: Annotated[str, typer.Option(
        "--profile", "-p", help="Built-in profile name (see `swarm profiles`) or a .toml file."
    )] = "hd",
    output: Annotated[str | None, typer.Option(
        "--output", "-o", metavar="FILE", help="Output file (.mp4, .mov, .mkv). Default: "
        "`<stem>.<profile>.mp4` beside the input. For several inputs or a directory: a "
        "directory, where each output keeps its path relative to its directory argument.")
    ] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace the output if it exists (without it, an existing file is "
        "left alone and the command fails).")] = False,
    report: Annotated[str | None, typer.Option(
        "--report", help="Write a JSON report of the job (chunks, peers, every attempt "
        "with its timing and outcome) here.")] = None,
    report_html: Annotated[str | None, typer.Option(
        "--report-html", help="Write a self-contained HTML page of the job (timeline of "
        "attempts per peer, summary) here.")] = None,
    chunk_seconds: Annotated[float | None, typer.Option(
        "--chunk-seconds", min=0.5, max=600,
        help="Target chunk length; cuts snap to source keyframes. Default: "
        f"{CHUNKS_PER_SLOT} chunks per encoder (local workers and peers), "
        f"{MIN_CHUNK_S:g}-{MAX_CHUNK_S:g} s each; fewer on a short file.")] = None,
    workers: Annotated[int, typer.Option(
        "--workers", "-w", min=0, max=64,
        help="Local encoder processes. 0: one per two cores, at least 2.")] = 0,
    name: Annotated[str | None, typer.Option(
        "--name", help="This node's name in reports. Default: the hostname.")] = None,
    upscale: Annotated[bool, typer.Option(
        "--upscale", help="Allow enlarging a source smaller than the profile's box.")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="Print only errors and the output path.")] = False,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print every event as one JSON object per line on stdout, and "
        "nothing else there; the last line is job_end with the output path and summary. "
        "Errors stay on stderr.")] = False,
    peer: Annotated[list[str] | None, typer.Option(
        "--peer", metavar="HOST:PORT", help="A peer to invite as HOST:PORT, for networks "
        "mDNS does not reach (other subnets, VPNs, phones). Repeatable.")] = None,
    no_local: Annotated[bool, typer.Option(
        "--no-local", help="Do not encode on this device; only coordinate peers.")] = False,
    local_only: Annotated[bool, typer.Option(
        "--local-only", help="Use no peers at all: no mDNS, no HTTP server.")] = False,
    no_mdns: Annotated[bool, typer.Option(
        "--no-mdns", help="Do not look for peers with mDNS; only --peer ones.")] = False,
    secret: Annotated[str | None, typer.Option(
        "--secret", envvar="SWARM_SECRET", show_envvar=True,
        help="Swarm secret: requests are signed and only peers with the same secret "
        "take part, paired or not. Without it (and without --open) only devices paired "
        "with this one take part (`swarm pair`).")] = None,
    open_swarm: Annotated[bool, typer.Option(
        "--open", help="Let any device on this LAN take part, paired or not, and receive "
        "chunks of the video: for a trusted network only.")] = False,
    port: Annotated[int, typer.Option(
        "--port", min=0, max=65535, help="Port the coordinator serves chunks on; if taken "
        "(a `swarm join` here), any free port. 0: any free port.")] = 7800,
    fresh: Annotated[bool, typer.Option(
        "--fresh", help="Start over even if a crashed run of this job left its journal.")
    ] = False,
    audio: Annotated[AudioMode, typer.Option(
        "--audio",
        help="Audio tracks to keep, each encoded once over the whole file with its "
        "language, title and default flag.")] = AudioMode.all,
    subtitles: Annotated[SubtitleMode, typer.Option(
        "--subtitles",
        help="copy: keep subtitle tracks the output container can hold (text ones become "
        "mov_text in .mp4/.mov; image ones need .mkv). Anything left out is named.")
    ] = SubtitleMode.copy,
    # Not for users (hidden from --help): the multi-host tests shorten the lease so that a
    # peer cut off mid-chunk gives its chunk back within their time budget. An option, not an
    # environment variable: it is visible on the command line it applies to, checked like
    # the others, and inherited by no other process.
    lease_seconds: Annotated[float | None, typer.Option(
        "--lease-seconds", hidden=True,
        help="How long an attempt may go without progress before its chunk is requeued "
        f"(default {DEFAULT_TIMINGS.lease_s:g}).")] = None,
    hls: Annotated[str | None, typer.Option(
        "--hls", metavar="DIR", help="Also publish the encode as fMP4 HLS in DIR while it "
        "runs (master.m3u8: play it before the job ends). Chunk N is published once chunks "
        "0..N are verified; the directory is removed if the job fails.")] = None,
    hlsjs: Annotated[str | None, typer.Option(
        "--hlsjs", metavar="FILE", envvar="SWARM_HLSJS", show_envvar=True,
        help="A local hls.min.js for the node's web page, whose player then plays --hls in "
        "browsers without native HLS.")] = None,
    ladder: Annotated[str | None, typer.Option(
        "--ladder", metavar="H,H,...", help="Several renditions from the same chunks, e.g. "
        "1080,720,480 (heights; widths from the source's aspect): each chunk is decoded once "
        "and split to every rendition, keyframes aligned. With --hls: a master playlist of "
        "them; -o DIR/ writes one mp4 per rendition (a batch: a.hd.1080p.mp4, a.hd.720p.mp4 "
        "for each input). Replaces a profile's [[ladder]].")
    ] = None,
    segment_seconds: Annotated[float, typer.Option(
        "--segment-seconds", min=1.0, max=60.0, help="With --hls: segment length; longer "
        "chunks are cut at keyframes forced every this many seconds.")] = 4.0,
    priority: Annotated[Priority, typer.Option(
        "--priority", help="This job's share of peers that also work for other "
        "coordinators: slot time in the ratio low 1 : normal 2 : high 4.")
    ] = Priority.normal,
) -> None:
    """Encode INPUT with a profile: split into chunks, encode them in parallel, merge.

    Peers running `swarm join` on this LAN are found with mDNS and invited; this device
    encodes too unless --no-local. The output has exactly the source's frames and
    timestamps, and every audio track (encoded once over the whole file) keeps its offset;
    subtitles, chapters and tags are copied where the container holds them. It is
    written under a temporary name and renamed only after it verified; on any failure or
    Ctrl-C nothing is left behind. After a crash (power loss, SIGKILL) running the same
    command again resumes: chunks whose files still verify are kept (see `swarm jobs`).

    Several inputs, or a directory (walked recursively for videos), make a batch: the files
    are encoded one after the other on the same swarm, the next one starting while the
    last one finishes. A file that fails does not stop the others (the exit code is 1);
    a rerun skips the outputs that exist and verify, and resumes a crashed file.
    """
    from peer.options import LocalSettings, NetworkSettings

    _refuse_empty_secret(secret)
    if no_local and local_only:
        raise _fail("--no-local and --local-only leave nobody to encode", EXIT_USAGE)
    access = _guarded(_access, secret, open_swarm, not local_only)
    _refuse_nobody(access, no_local)
    batch = len(input) > 1 or input[0].is_dir()
    run: Any = partial(_run_batch, [str(p) for p in input]) if batch else partial(
        _run_encode, str(input[0]))
    web: Any = None
    if not local_only and not batch:  # the node's page follows this one job
        from peer.web import Web

        web = Web(_guarded(partial(
            _web_config, _environment(), secret=secret, hls=None, hlsjs=hlsjs, uploads=None,
            no_uploads=True, max_upload_mb=1, name=name or socket.gethostname(), peers=(),
            browse=False, closed=access["closed"])))
    out = _guarded(partial(
        run, profile, output, report, quiet,
        local=LocalSettings(workers=workers, no_local=no_local),
        net=NetworkSettings(enabled=not local_only, discover=not no_mdns,
                            peers=tuple(peer or ()), secret=secret, port=port,
                            name=name or socket.gethostname(), priority=priority.value,
                            page=web.attach if web is not None else None, **access),
        **({"web": web} if web is not None else {}),
        as_json=as_json, report_html=report_html, lease_s=lease_seconds,
        chunk_seconds=chunk_seconds,
        upscale=upscale, fresh=fresh, force=force, audio=audio.value,
        subtitles=subtitles.value, hls=hls, segment_s=segment_seconds,
        **({"ladder": _ladder_heights(ladder)} if ladder is not None else {})))
    if batch:
        raise typer.Exit(out)
    if not as_json:
        _tolerating_dead_pipes(typer.echo, out)


class BadImages(StrEnum):
    """``slideshow --bad-images``: what an image that cannot be shown does to the job."""

    skip = "skip"
    refuse = "refuse"


def _slide_images(specs: list[str]) -> list[str]:
    """Each argument a directory (its images, sorted by name), a glob pattern (quoted, or
    the shell expands it: then each file is its own argument) or one image."""
    import glob

    from chunker.slides import IMAGE_EXTENSIONS

    found: list[str] = []
    for spec in specs:
        if os.path.isdir(spec):
            found += sorted(os.path.join(spec, f) for f in os.listdir(spec)
                            if Path(f).suffix.lower() in IMAGE_EXTENSIONS
                            and not f.startswith(".")
                            and os.path.isfile(os.path.join(spec, f)))
        elif os.path.lexists(spec):
            found.append(spec)
        else:
            matches = sorted(p for p in glob.glob(spec) if os.path.isfile(p))
            if not matches:
                raise UsageError(f"{spec}: no such file, directory or matching images")
            found += matches
    if not found:
        raise UsageError(f"no images in {' '.join(specs)}")
    return [os.path.abspath(p) for p in found]


@app.command()
def slideshow(
    images: Annotated[list[Path], typer.Argument(
        help="A directory of images (taken in name order), a quoted glob ('trip/*.jpg'), "
        "or image files.")],
    output: Annotated[str, typer.Option(
        "--output", "-o", metavar="FILE", help="The video to write (.mp4, .mov, .mkv).")],
    seconds_per_image: Annotated[float, typer.Option(
        "--seconds-per-image", min=0.04, max=3600, help="How long each image shows.")
    ] = 3.0,
    fade: Annotated[float, typer.Option(
        "--fade", min=0, max=3600, help="Crossfade into the next image, in seconds, "
        "within each image's time; 0: cuts.")] = 0.5,
    audio: Annotated[str | None, typer.Option(
        "--audio", metavar="FILE", help="Music, cut (or padded with silence) to the video's "
        "length, fading out at the end.")] = None,
    profile: Annotated[str, typer.Option(
        "--profile", "-p", help="Built-in profile name or a .toml file: its box is the "
        "frame; images are scaled to fit, keeping their aspect, and padded black.")] = "hd",
    bad_images: Annotated[BadImages, typer.Option(
        "--bad-images", help="skip: name and leave out an image that cannot be shown "
        "(empty, truncated, not an image); refuse: fail before rendering.")
    ] = BadImages.skip,
    workers: Annotated[int, typer.Option(
        "--workers", "-w", min=0, max=64,
        help="Local render processes. 0: one per two cores, at least 2.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace the output if it exists.")
                     ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors.")] = False,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print every event as one JSON object per line on stdout.")] = False,
    peer: Annotated[list[str] | None, typer.Option(
        "--peer", metavar="HOST:PORT", help="A peer to invite as HOST:PORT, for networks "
        "mDNS does not reach. Repeatable.")] = None,
    no_local: Annotated[bool, typer.Option(
        "--no-local", help="Do not render on this device; only coordinate peers.")] = False,
    local_only: Annotated[bool, typer.Option(
        "--local-only", help="Use no peers at all: no mDNS, no HTTP server.")] = False,
    no_mdns: Annotated[bool, typer.Option(
        "--no-mdns", help="Do not look for peers with mDNS; only --peer ones.")] = False,
    secret: Annotated[str | None, typer.Option(
        "--secret", envvar="SWARM_SECRET", show_envvar=True,
        help="Swarm secret: requests are signed and only peers with the same secret "
        "take part, paired or not. Without it (and without --open) only devices paired "
        "with this one take part (`swarm pair`).")] = None,
    open_swarm: Annotated[bool, typer.Option(
        "--open", help="Let any device on this LAN take part, paired or not, and receive "
        "chunks of the video: for a trusted network only.")] = False,
    port: Annotated[int, typer.Option(
        "--port", min=0, max=65535, help="Port the coordinator serves images on; if taken, "
        "any free port. 0: any free port.")] = 7800,
    name: Annotated[str | None, typer.Option(
        "--name", help="This node's name in reports. Default: the hostname.")] = None,
    lease_seconds: Annotated[float | None, typer.Option(
        "--lease-seconds", hidden=True, help="As for encode (tests only).")] = None,
) -> None:
    """Make a video of still images: each shown for the same whole number of frames (25
    fps), crossfading into the next, with optional music.

    The show is cut into runs of images rendered in parallel, here and on peers (`swarm
    join`, found as for encode), each fetching only its run's images; a fade into the next
    run's first image comes out exactly as in a single render.
    """
    from peer.options import NetworkSettings, Tuning
    from peer.slideshow import SlideshowOptions, run_slideshow
    from profiles import load_profile
    from swarm.events import ChunkDone, ImageSkipped

    _refuse_empty_secret(secret)
    if no_local and local_only:
        raise _fail("--no-local and --local-only leave nobody to render", EXIT_USAGE)
    access = _guarded(_access, secret, open_swarm, not local_only)
    _refuse_nobody(access, no_local)
    net = NetworkSettings(enabled=not local_only, discover=not no_mdns,
                          peers=tuple(peer or ()), secret=secret, port=port,
                          name=name or socket.gethostname(), **access)

    env = _environment()
    mode = _output_mode(quiet, as_json, env.term)
    json_sink = JsonLines() if mode == "json" else None
    total = [0]

    def emit(e: Any) -> None:
        if json_sink is not None:
            _tolerating_dead_pipes(json_sink, e)
        elif isinstance(e, ImageSkipped):  # said even under --quiet: the show lacks it
            _tolerating_dead_pipes(typer.echo, f"swarm: skipped image {e.image} ({e.reason})",
                                   err=True)
        elif isinstance(e, ChunkDone) and mode != "quiet":
            total[0] += 1
            _tolerating_dead_pipes(typer.echo, f"swarm: slide chunk {e.chunk} rendered by "
                                   f"{e.peer} ({e.frames_done} frames so far)", err=True)

    def run() -> dict[str, Any]:
        found = _slide_images([str(p) for p in images])
        opts = SlideshowOptions(tuple(found), output, load_profile(profile),
                                seconds_per_image, fade, audio, bad_images.value, workers,
                                force, env.ffmpeg, no_local, net,
                                Tuning(timings=_timings(lease_seconds)))
        result: dict[str, Any] = _until_signal(run_slideshow, opts, emit)
        return result

    report = _guarded(run)
    if json_sink is not None:
        sys.stdout.write(json.dumps({"event": "slideshow_end"} | report) + "\n")
    elif mode != "quiet":
        typer.echo(f"swarm: {report['images']} images, {report['frames']} frames "
                   f"({report['duration_s']:.2f} s) in {report['chunks']} chunks, "
                   f"{report['wall_s']:.1f} s", err=True)
    _tolerating_dead_pipes(typer.echo, output) if json_sink is None else None


@app.command()
def jobs(
    directory: Annotated[str, typer.Option(
        "--dir", help="Where to look for job journals (beside the outputs).")] = ".",
    clean: Annotated[bool, typer.Option(
        "--clean", help="Remove journals and chunk files of jobs no encode is running.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the job journals in a directory: jobs that are running or that crashed.

    A journal lives beside its output as `.<output>.swarm/`; a finished or interrupted job
    removes it, so what is listed here is running, or resumable by running the same
    `swarm encode` command again.
    """
    import shutil

    from peer.journal import find_journals

    if not os.path.isdir(directory):
        raise _fail(f"{directory}: not a directory", EXIT_USAGE)
    found = find_journals(directory)
    removed = []
    if clean:
        for j in found:
            if not j.locked:
                shutil.rmtree(os.path.dirname(j.path), ignore_errors=True)
                removed.append(j.path)
    rows = [{"output": j.output, "input": j.input, "state": j.state, "chunks": j.chunks,
             "done": j.done, "journal": j.path, "removed": j.path in removed} for j in found]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"swarm: no job journals in {directory}", err=True)
        return
    for r in rows:
        what = "removed" if r["removed"] else r["state"]
        if what == "crashed":
            what = "crashed (run the same swarm encode to resume)"
        typer.echo(f"{r['output']}  {what}  {r['done']}/{r['chunks']} chunks  "
                   f"(from {r['input']})")


DEMO_SECONDS = 12


@app.command()
def demo(
    workers: Annotated[int, typer.Option("--workers", "-w", min=0, max=64,
                                         help="Local encoder processes. 0: auto.")] = 0,
    profile: Annotated[str, typer.Option("--profile", "-p", help="Profile to use.")] = "hd",
) -> None:
    """Make a short test clip with audio here (swarm-demo.mp4) and encode it.

    Needs no input file: the clip is synthesised with ffmpeg's lavfi sources. Both files
    have fixed names that belong to the demo: a rerun replaces those of the last one.
    """
    from chunker.testsrc import make_demo_clip
    from chunker.tools import find_ffmpeg
    from peer.options import LocalSettings

    src = os.path.abspath("swarm-demo.mp4")

    def make() -> None:
        ff = find_ffmpeg(["libx264", "aac"], _environment().ffmpeg)
        if not os.access(os.path.dirname(src), os.W_OK):
            raise UsageError(f"cannot write in {os.path.dirname(src)}")
        typer.echo(f"swarm: making a {DEMO_SECONDS} s demo clip {src}", err=True)
        make_demo_clip(ff.path, src, DEMO_SECONDS)

    _guarded(make)
    out = _guarded(partial(_run_encode, src, profile, None, None, False,
                           local=LocalSettings(workers=workers), force=True))
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
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console()
    # Four columns without vertical rules fit 80 columns with every value whole (the table is
    # 78 wide); narrower terminals wrap the video and audio cells instead of cutting them.
    wide = console.width >= 140
    table = Table(title="swarm profiles (box is a bound: aspect kept, never upscaled)",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("name", no_wrap=True)
    table.add_column("box", no_wrap=True)
    table.add_column("video")
    table.add_column("audio")
    if wide:
        table.add_column("description")
    for p in profs:
        v, a = p.video, p.audio
        codec = v.codec.removeprefix("lib")
        level = f"@{v.level}" if v.level else ""
        preset = f"preset {v.preset}" if v.preset.isdigit() else v.preset  # SVT-AV1's 0-13
        video = f"{codec} {v.profile}{level} {preset} {p.rate_label}".replace("  ", " ")
        table.add_row(
            p.name, f"{v.width}x{v.height}", video.strip(),
            f"{a.codec.removeprefix('lib')} {a.bitrate_k}k {a.sample_rate / 1000:g} kHz "
            f"{a.channels} ch", *([p.description] if wide else []),
        )
    console.print(table)


@app.command()
def join(
    name: Annotated[str | None, typer.Option(
        "--name", help="This node's name as peers show it. Default: the hostname.")] = None,
    port: Annotated[int, typer.Option(
        "--port", min=0, max=65535, help="TCP port to serve on. 0: any free port.")] = 7800,
    secret: Annotated[str | None, typer.Option(
        "--secret", envvar="SWARM_SECRET", show_envvar=True,
        help="Swarm secret; only coordinators with the same secret can use this node. "
        "Without it (and without --open) only devices paired with this one can.")
    ] = None,
    open_swarm: Annotated[bool, typer.Option(
        "--open", help="Work for any coordinator on this LAN, paired or not: for a trusted "
        "network only.")] = False,
    slots: Annotated[int, typer.Option(
        "--slots", min=1, max=16, help="Chunks this node encodes at once.")] = 1,
    peer: Annotated[list[str] | None, typer.Option(
        "--peer", metavar="HOST:PORT", help="A coordinator's HOST:PORT to announce this "
        "node to, where mDNS does not reach (other subnets, VPNs). Repeatable.")] = None,
    no_bench: Annotated[bool, typer.Option(
        "--no-bench", help="Do not benchmark on first start (scores stay unknown).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors.")] = False,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print every node event as one JSON object per line on stdout, and "
        "nothing else there. Errors stay on stderr.")] = False,
    hls: Annotated[str | None, typer.Option(
        "--hls", metavar="DIR", help="Jobs submitted from the web page also publish HLS "
        "under DIR, and the page plays them while they encode.")] = None,
    hlsjs: Annotated[str | None, typer.Option(
        "--hlsjs", metavar="FILE", envvar="SWARM_HLSJS", show_envvar=True,
        help="A local hls.min.js that the page loads in browsers without native HLS "
        "(the node never fetches it from the internet).")] = None,
    uploads: Annotated[str | None, typer.Option(
        "--uploads", metavar="DIR", help="Where videos uploaded from the web page and their "
        "results are kept. Default: uploads/ in the cache directory.")] = None,
    no_uploads: Annotated[bool, typer.Option(
        "--no-uploads", help="The web page only shows the swarm; it takes no videos.")
    ] = False,
    max_upload_mb: Annotated[int, typer.Option(
        "--max-upload-mb", min=1, max=1_000_000, help="Largest video the web page takes.")
    ] = 4096,
) -> None:
    """Make this device an encoder peer: advertise it on the LAN and encode what it is given.

    Runs until Ctrl-C, SIGTERM or SIGHUP (its terminal closed; not under nohup), then
    leaves cleanly: unregisters from mDNS, stops its ffmpeg, and the coordinator re-queues
    what it held. Coordinators on other subnets can name this node with
    `swarm encode --peer HOST:PORT`.

    The node also serves a web page at http://HOST:PORT/: the swarm's devices, its jobs
    live, a player for --hls streams, and a form to encode a video from a phone.
    """

    from peer.node import NodeConfig, check_port
    from peer.recruit import parse_peer

    _refuse_empty_secret(secret)
    closed = _guarded(_closed, secret, open_swarm)
    peers_to_greet = [_guarded(parse_peer, p) for p in peer or []]
    _guarded(check_port, NodeConfig().host, port)  # before the benchmark: it takes seconds
    env = _guarded(_environment)
    web_config = _guarded(partial(_web_config, env, secret=secret, hls=hls, hlsjs=hlsjs,
                          uploads=None if no_uploads else uploads, no_uploads=no_uploads,
                          max_upload_mb=max_upload_mb, name=name or socket.gethostname(),
                          peers=tuple(peer or ()), closed=closed))
    mode = _output_mode(quiet, as_json, env.term)
    sink: Any = None

    def run() -> None:
        import trio

        from chunker.tools import find_ffmpeg
        from peer.node import Node, NodeConfig

        async def main() -> None:
            ffmpeg = await trio.to_thread.run_sync(find_ffmpeg, (), env.ffmpeg)
            scores: dict[str, float] = {}
            if not no_bench:
                scores = await _scores(ffmpeg, mode not in ("live", "plain"), env)
            nonlocal sink
            if mode == "live":
                from screens.dashboard import JoinView

                prof, score = _shown_score(scores)
                sink = Live(JoinView(score=score, score_profile=prof))
            elif mode == "json":
                sink = JsonLines()
            pairing = _pairing_service(env, port, mode == "quiet",
                                       "closed" if closed else "secret" if secret else "open")
            from peer.tls import server_context

            # Closed: paired coordinators send their invites over TLS, to any free port.
            node = Node(NodeConfig(name=name or socket.gethostname(), port=port, secret=secret,
                                   slots=slots, peers=peers_to_greet,
                                   cache_dir=env.cache_dir, pairing=pairing, closed=closed,
                                   tls=server_context(pairing.cert) if closed else None),
                        ffmpeg, scores, on_event=sink or join_plain(mode == "quiet"))
            from peer.web import Web

            web = Web(web_config, node)
            node.web, node.on_event = web, web.tee(node.on_event)
            async with trio.open_nursery() as nursery:
                await nursery.start(web.run)
                await node.run()

        try:
            _until_signal(main)
        except KeyboardInterrupt:
            pass  # Ctrl-C / SIGTERM is how a node is meant to leave
        finally:
            if sink is not None:
                _tolerating_dead_pipes(sink.close)  # SIGHUP: the terminal may be gone

    _guarded(run)
    if mode in ("live", "plain"):
        view = getattr(sink, "view", None)
        if view is not None:  # the dashboard is gone with the terminal: keep its totals
            typer.echo(f"swarm: {view.jobs} job(s), {view.done} chunk(s), {view.frames} frames "
                       f"encoded, {view.failed} failed", err=True)
        typer.echo("swarm: left the swarm", err=True)


def _web_config(env: Environment, *, secret: str | None, hls: str | None,
                hlsjs: str | None, uploads: str | None, no_uploads: bool, max_upload_mb: int,
                name: str, peers: tuple[str, ...], browse: bool = True,
                closed: bool = False) -> Any:
    """The web page of a node, from join's options: what it takes and how its jobs run."""
    from peer.options import LocalSettings, NetworkSettings
    from peer.web import WebConfig
    from screens.web_assets import web_assets

    if hlsjs is not None and not Path(hlsjs).is_file():
        raise UsageError(f"--hlsjs {hlsjs}: no such file")
    upload_dir: Path | None = None
    if not no_uploads:
        upload_dir = Path(uploads) if uploads else (
            env.cache_dir / "uploads" if env.cache_dir is not None else None)
    if hls is not None:
        Path(hls).mkdir(parents=True, exist_ok=True)
        _check_writable("--hls", str(Path(hls) / "x"))
    return WebConfig(
        web_assets(), secret=secret, uploads=upload_dir,
        max_upload_bytes=max_upload_mb * 1024 * 1024,
        hls_root=Path(hls) if hls is not None else None,
        hlsjs=Path(hlsjs) if hlsjs is not None else None,
        job_net=NetworkSettings(enabled=True, discover=browse, peers=peers, secret=secret,
                                name=name),
        job_local=LocalSettings(ffmpeg=env.ffmpeg, cache_dir=env.cache_dir), browse=browse,
        closed=closed)


def _shown_score(scores: dict[str, float]) -> tuple[str, float | None]:
    """The score a join dashboard shows: the default profile's, else the best one."""
    if "hd" in scores:
        return "hd", scores["hd"]
    if scores:
        prof = max(scores, key=lambda k: scores[k])
        return prof, scores[prof]
    return "", None


async def _scores(ffmpeg: Any, quiet: bool, env: Environment) -> dict[str, float]:
    from peer.benchmark import ensure_scores
    from profiles import builtin_names, load_profile

    profs = [load_profile(n) for n in builtin_names()]
    if not quiet:
        typer.echo("swarm: benchmarking this device (cached after the first time)", err=True)
    scores, _cached = await ensure_scores(ffmpeg, profs, cache_dir=env.cache_dir)
    return scores


@app.command()
def peers(
    wait: Annotated[float, typer.Option(
        "--wait", min=0.5, max=60, help="Seconds to listen for peers.")] = 3.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    secret: Annotated[str | None, typer.Option(
        "--secret", envvar="SWARM_SECRET", show_envvar=True,
        help="Our swarm secret: peers with another are shown as foreign. Without it, "
        "devices paired with this one are ours (a closed swarm, the default).")] = None,
    open_swarm: Annotated[bool, typer.Option(
        "--open", help="Judge the peers as an open swarm's coordinator would.")] = False,
) -> None:
    """List the swarm peers found on the LAN with mDNS."""

    _refuse_empty_secret(secret)

    def run() -> tuple[list[Any], dict[str, Any]]:
        import trio

        from peer.client import fetch_infos
        from peer.discovery import find_peers

        async def both() -> tuple[list[Any], dict[str, Any]]:
            found = await find_peers(wait)
            # What each is working on is not in its mDNS record: ask it (GET /v1/info).
            infos = await fetch_infos([f"http://{r.host}:{r.port}" for r in found if r.host])
            return found, infos

        return trio.run(both)

    from swarm import auth
    from swarm.presence import classify
    from swarm.protocol import PROTOCOL_VERSION

    found, infos = _guarded(run)
    fp = auth.fingerprint(secret) if secret else ""
    paired = None
    if _guarded(_closed, secret, open_swarm):
        from peer.identity import Devices

        folder = _environment().config_dir
        assert folder is not None
        known = Devices(folder)
        paired = lambda device: known.key_for(device) is not None  # noqa: E731

    def working_for(host: str, port: int) -> list[str]:
        info = infos.get(f"http://{host}:{port}")
        return sorted(set(info.working_for.values())) if info is not None else []

    rows = [{"name": r.name, "address": f"{r.host}:{r.port}", "arch": r.arch, "cpus": r.cpus,
             "score": r.score, "state": r.state, "version": r.version,
             "verdict": classify(r, fp, PROTOCOL_VERSION, paired), "node_id": r.node_id,
             "working_for": working_for(r.host, r.port)}
            for r in found]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if paired is not None:
        typer.echo("swarm: closed swarm (no --secret): the devices paired with this one are "
                   "ours; `swarm pair CODE` adds one", err=True)
    elif secret is None:
        typer.echo("swarm: open swarm (--open): peers of any open swarm can join", err=True)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"swarm peers ({len(rows)} found in {wait:g} s)")
    for col in ("name", "address", "arch", "cpus", "speed", "state", "working for",
                "version", "swarm"):
        table.add_column(col, no_wrap=True)
    for r in rows:
        table.add_row(r["name"], r["address"], r["arch"], str(r["cpus"]),
                      f"{r['score'] / 1e6:.1f} Mpx/s" if r["score"] else "-", r["state"],
                      ", ".join(r["working_for"]) or "-",
                      r["version"], "ours" if r["verdict"] == "ok" else r["verdict"])
    Console().print(table)


@app.command()
def bench(
    force: Annotated[bool, typer.Option("--force", help="Measure again, ignore the cache.")
                     ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Measure this device's encoding speed for each profile (cached per ffmpeg and CPU).

    The score is output pixels encoded per second; the scheduler starts from it.
    """

    def run() -> tuple[dict[str, float], bool]:
        import trio

        from chunker.tools import find_ffmpeg
        from peer.benchmark import ensure_scores
        from profiles import builtin_names, load_profile

        env = _environment()

        async def main() -> tuple[dict[str, float], bool]:
            ffmpeg = await trio.to_thread.run_sync(find_ffmpeg, (), env.ffmpeg)
            profs = [load_profile(n) for n in builtin_names()]
            return await ensure_scores(ffmpeg, profs, cache_dir=env.cache_dir, force=force)

        return trio.run(main)

    scores, cached = _guarded(run)
    if as_json:
        typer.echo(json.dumps({"cached": cached, "scores": scores}, indent=2))
        return
    for prof, score in sorted(scores.items()):
        typer.echo(f"{prof:10s} {score / 1e6:8.2f} Mpx/s")
    typer.echo(f"({'from the cache' if cached else 'measured now'})", err=True)


@app.command()
def pack(
    output: Annotated[str, typer.Option(
        "--output", "-o", help="Where to write the archive.")] = "swarm.pyz",
) -> None:
    """Write swarm as one file: an executable zip of the program and its pure-Python
    dependencies (no ffmpeg), for any device with Python 3.11 or newer.

    Run it there with `python3 swarm.pyz join`. The same program always packs to the same
    bytes, which every running node also serves at `http://HOST:7800/swarm.pyz`.
    """
    from peer import pyz

    def run() -> pyz.Pyz:
        _check_writable("--output", output)
        built = pyz.build(_environment().cache_dir)
        tmp = f"{output}.tmp{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                f.write(built.data)
            os.chmod(tmp, 0o755)
            os.replace(tmp, output)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return built

    built = _guarded(run)
    typer.echo(f"swarm: wrote {output} ({built.size / 1e6:.1f} MB)", err=True)
    typer.echo(f"{built.sha256}  {output}")


def _closed(secret: str | None, open_swarm: bool) -> bool:
    """Whether the swarm is closed: with a secret its holders take part, with --open
    anyone, else (the default) only the devices paired with this one, whose keys are in
    the config directory."""
    if secret is not None and open_swarm:
        raise UsageError("--open and --secret (or SWARM_SECRET) contradict each other: "
                         "give one")
    if secret is not None or open_swarm:
        return False
    if _environment().config_dir is None:
        raise UsageError("a closed swarm (the default) needs this device's identity: set "
                         "SWARM_CONFIG_DIR (or HOME), or use --secret or --open")
    return True


def _access(secret: str | None, open_swarm: bool, networked: bool) -> dict[str, Any]:
    """NetworkSettings' ``closed`` and ``pairing`` (this device's identity and pinned
    keys, looked up by the coordinator's node and its recruiting)."""
    if not networked or not _closed(secret, open_swarm):
        return {"closed": False, "pairing": None}
    from peer.identity import load_identity
    from peer.pairing import PairingService

    folder = _environment().config_dir
    assert folder is not None  # _closed said so
    return {"closed": True, "pairing": PairingService(folder, load_identity(folder), door=False)}


def _refuse_nobody(access: dict[str, Any], no_local: bool) -> None:
    """--no-local in a closed swarm of one: no device could ever take part."""
    if no_local and access["closed"] and not access["pairing"].devices.devices:
        raise _fail("--no-local, and this device is paired with no other, so in a closed "
                    "swarm (the default) nobody could encode: pair a peer first (`swarm "
                    "join` there, then `swarm pair CODE` here), or use --open or --secret",
                    EXIT_USAGE)


def _say_access(net: Any) -> None:
    """Who can take part in a job: said once, when it starts."""
    if net.closed:
        n = len(net.pairing.devices.devices)
        if n == 0:
            typer.echo("swarm: closed swarm, and this device is paired with no other: only "
                       "it encodes. To add a peer, run `swarm join` there and `swarm pair "
                       "CODE` here with the code it shows (or use --open or --secret)",
                       err=True)
        else:
            typer.echo(f"swarm: closed swarm: only the {n} device{'s' if n > 1 else ''} "
                       "paired with this one may take part (`swarm devices list`)", err=True)
    elif net.secret is None:
        typer.echo("swarm: open swarm (--open): any device on this LAN may take part and "
                   "receive chunks of the video", err=True)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="swarm: %(levelname)s: %(message)s")
    app()


if __name__ == "__main__":
    main()


# -- pairing (peer.pairing, swarm.pairing) ---------------------------------------------------

def text(value: str) -> str:
    """The parser of a str argument: help names a parser's type after it (``<text>``, as
    click calls strings), where typer would show Python's ``<str>``."""
    return value


def _config_dir(env: Environment) -> Path:
    if env.config_dir is None:
        raise UsageError("no config directory for this device's identity: set "
                         "SWARM_CONFIG_DIR (or HOME)")
    return env.config_dir


def _pairing_service(env: Environment, port: int, quiet: bool, access: str = "open") -> Any:
    """The join's pairing: its door and code while unpaired, the pinned keys after."""
    from peer.identity import load_identity
    from peer.lan import lan_address
    from peer.pairing import PairingService

    if env.config_dir is None:  # no HOME: a throwaway node, nothing to pair
        return None
    folder = env.config_dir
    where = f"{lan_address()}:{port}" if port else "HOST:PORT"

    def show_code(code: str) -> None:
        if not quiet:
            if access == "closed":
                typer.echo("swarm: waiting to be paired: until then this device takes work "
                           "from no one (--open: from anyone)", err=True)
            typer.echo(f"swarm: not paired yet. On a device already in the swarm, run:\n"
                       f"    swarm pair {code[:3]} {code[3:]}  --peer {where}\n"
                       "  (the code changes after a few wrong tries)", err=True)

    def show_paired(dev: Any) -> None:
        if not quiet:
            typer.echo(f"swarm: paired with {dev.name} ({dev.device_id[:8]})", err=True)

    service = PairingService(folder, load_identity(folder), show_code, show_paired)
    if not quiet:
        n = len(service.devices.devices)
        if access == "open":
            typer.echo("swarm: open (--open): any coordinator on this LAN may send this "
                       "device work", err=True)
        elif access == "closed" and n:
            typer.echo(f"swarm: closed: works only for the {n} device{'s' if n > 1 else ''} "
                       "paired with it (`swarm devices list`)", err=True)
    return service


@app.command()
def pair(
    code: Annotated[list[str], typer.Argument(
        parser=text, help="The code the new device's `swarm join` shows (spaces allowed).")],
    peer: Annotated[str | None, typer.Option(
        "--peer", metavar="HOST:PORT", help="The new device's address; default: every "
        "device found with mDNS that shows a code.")] = None,
    wait: Annotated[float, typer.Option(
        "--wait", min=0.5, max=60, help="Seconds to look for devices with mDNS.")] = 3.0,
) -> None:
    """Admit a new device: run this, with the code it shows, on a device of the swarm.

    The code is checked with a PAKE (SPAKE2): someone listening on the LAN learns nothing
    that lets them guess it, and each wrong try is one of a few the new device allows. Both
    devices then keep each other's id and a shared key (`swarm devices`).
    """
    from peer.recruit import parse_peer
    from swarm.pairing import normalise_code

    env = _guarded(_environment)
    folder = _guarded(_config_dir, env)
    typed = _guarded(normalise_code, "".join(code))
    targets = [_guarded(parse_peer, peer)] if peer else []

    def run() -> Any:
        import httpx
        import trio

        from peer.identity import load_identity
        from peer.pairing import pair_with
        from swarm.errors import PeerError
        from swarm.pairing import PairingFailed

        async def main() -> Any:
            from peer.discovery import find_peers

            me = load_identity(folder)
            found = targets
            records = [] if targets else await find_peers(wait)
            if not found:
                found = [(r.host, r.port) for r in records]
                if not found:
                    raise UsageError(f"no device found with mDNS in {wait:g} s; name the new "
                                     "one with --peer HOST:PORT (its `swarm join` shows it)")
            problems = []
            async with httpx.AsyncClient(timeout=30) as client:
                for host, port in found:
                    try:
                        dev = await pair_with(client, f"http://{host}:{port}", typed, me,
                                              folder)
                        spread = await _introduce_all(client, me, folder, dev,
                                                      f"http://{host}:{port}", records, wait)
                        return dev, spread
                    except PairingFailed as exc:
                        if exc.status_code != 404 or peer:  # 404: it shows no code
                            problems.append(f"{host}:{port}: {exc}")
                    except PeerError as exc:
                        if peer:
                            problems.append(f"{host}:{port}: {exc}")
            raise PeerError("not paired: " + ("; ".join(problems) or
                            f"none of the {len(found)} devices found shows a pairing code"))

        return trio.run(main)

    dev, (introduced, missed) = _guarded(run)
    typer.echo(f"swarm: paired with {dev.name} ({dev.device_id[:8]}); it is in the swarm now",
               err=True)
    if introduced:
        typer.echo(f"swarm: introduced it to {', '.join(introduced)}, and them to it", err=True)
    if missed:
        typer.echo(f"swarm: not introduced to {', '.join(missed)} (not running `swarm join` "
                   "where mDNS reaches; pair them with it directly when they are)", err=True)


async def _introduce_all(client: Any, me: Any, folder: Path, new: Any, new_base: str,
                         records: list[Any], wait: float) -> tuple[list[str], list[str]]:
    """Membership spreads (swarm.introduce): every other device paired with this one, found
    with mDNS, and the new device are told of each other, with a key made here for them.
    Returns the names introduced and those that were not (offline, or refused)."""
    import secrets as _secrets

    from peer.discovery import find_peers
    from peer.identity import Devices
    from peer.pairing import introduce
    from swarm.errors import PeerError
    from swarm.introduce import Introduction

    others = [d for d in Devices(folder).devices.values() if d.device_id != new.device_id]
    if not others:
        return [], []
    if not records:  # paired over --peer: look for the rest
        records = await find_peers(wait)
    where = {r.device: f"http://{r.host}:{r.port}" for r in records if r.device and r.host}
    done, missed = [], []
    for other in others:
        base = where.get(other.device_id)
        if base is None:
            missed.append(other.name)
            continue
        key = _secrets.token_bytes(32)
        try:
            await introduce(client, new_base, me, new.key,
                            Introduction(other.device_id, other.name, other.cert, key))
            await introduce(client, base, me, other.key,
                            Introduction(new.device_id, new.name, new.cert, key))
        except PeerError as exc:
            missed.append(f"{other.name} ({exc})")
            continue
        done.append(other.name)
    return done, missed


devices_app = _App(name="devices", cls=_Commands, no_args_is_help=True,
                   help="The devices this one is paired with: list, rename, revoke.")
app.add_typer(devices_app, name="devices")


@devices_app.command("list")
def devices_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the paired devices (never their keys)."""
    from peer.identity import Devices, load_identity

    folder = _guarded(_config_dir, _guarded(_environment))
    me = _guarded(load_identity, folder)
    devs = _guarded(Devices, folder)
    rows = [{"id": d.device_id, "name": d.name,
             "added": time.strftime("%Y-%m-%d %H:%M", time.localtime(d.added))}
            for d in devs.devices.values()]
    if as_json:
        typer.echo(json.dumps({"this_device": {"id": me.device_id, "name": me.name},
                               "paired": rows}, indent=2))
        return
    typer.echo(f"this device: {me.name} ({me.device_id})")
    if not rows:
        typer.echo("paired with no device: `swarm join` shows a code to pair with")
    for r in rows:
        typer.echo(f"{r['name']:<24} {r['id']}  added {r['added']}")


@devices_app.command("rename")
def devices_rename(
    device: Annotated[str, typer.Argument(
        parser=text, help="Its name or the start of its id.")],
    new_name: Annotated[str, typer.Argument(parser=text, help="The new name.")],
) -> None:
    """Rename a paired device (on this device only)."""
    from peer.identity import Devices

    devs = _guarded(Devices, _guarded(_config_dir, _guarded(_environment)))
    dev = _guarded(devs.rename, device, new_name)
    typer.echo(f"swarm: {dev.device_id[:8]} is now called {dev.name}", err=True)


@devices_app.command("revoke")
def devices_revoke(
    device: Annotated[str, typer.Argument(
        parser=text, help="Its name or the start of its id.")],
) -> None:
    """Forget a paired device: its requests are refused from now on, also by a running
    `swarm join` here. To have it back, pair it again."""
    from peer.identity import Devices

    devs = _guarded(Devices, _guarded(_config_dir, _guarded(_environment)))
    dev = _guarded(devs.revoke, device)
    typer.echo(f"swarm: revoked {dev.name} ({dev.device_id[:8]})", err=True)
