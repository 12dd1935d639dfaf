"""The ``swarm`` command. All terminal output (rich, progress, colours) lives here."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from functools import partial
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
                quiet: bool, **options: Any) -> str:

    from peer.coordinator import EncodeOptions, parse_peer, run_encode
    from profiles import load_profile

    prof = load_profile(profile)
    out = output or _default_output(input, profile)
    if report is not None:
        rdir = Path(report).resolve().parent
        if not rdir.is_dir() or not os.access(rdir, os.W_OK):
            raise UsageError(f"report {report}: directory is not writable")
    for spec in options.get("peers", []):
        parse_peer(spec)
    opts = EncodeOptions(input=input, output=out, profile=prof, **options)
    if opts.network and opts.secret is None and not quiet:
        typer.echo("swarm: open swarm (no --secret / SWARM_SECRET): any peer on this LAN "
                   "may take part", err=True)
    printer = _Printer(quiet)
    try:
        result = _until_signal(run_encode, opts, printer)
    finally:
        printer.close()
    if report is not None:
        Path(report).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if not quiet:
        typer.echo(f"swarm: done in {result['wall_s']:.1f} s", err=True)
    return out


def _until_signal(fn: Any, *args: Any) -> Any:
    """Run ``fn`` under trio; SIGINT/SIGTERM cancel it (cleanly) and raise KeyboardInterrupt.

    Listening for the signals ourselves, rather than relying on trio's KeyboardInterrupt
    delivery, makes cancellation run every cleanup (ffmpeg children killed, work directory
    removed, mDNS goodbye) even while library code (hypercorn, zeroconf threads) is running.
    """
    import signal

    import trio

    async def main() -> tuple[bool, Any]:
        result: Any = None
        interrupted = False
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
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
    peer: Annotated[list[str] | None, typer.Option(
        "--peer", help="A peer to invite as HOST:PORT, for networks mDNS does not reach "
        "(other subnets, VPNs, phones). Repeatable.")] = None,
    no_local: Annotated[bool, typer.Option(
        "--no-local", help="Do not encode on this device; only coordinate peers.")] = False,
    local_only: Annotated[bool, typer.Option(
        "--local-only", help="Use no peers at all: no mDNS, no HTTP server.")] = False,
    no_mdns: Annotated[bool, typer.Option(
        "--no-mdns", help="Do not look for peers with mDNS; only --peer ones.")] = False,
    secret: Annotated[str | None, typer.Option(
        "--secret", envvar="SWARM_SECRET", show_envvar=True,
        help="Swarm secret: requests are signed and only peers with the same secret "
        "take part. Without it the swarm is open.")] = None,
    port: Annotated[int, typer.Option(
        "--port", min=0, max=65535, help="Port the coordinator serves chunks on; if taken "
        "(a `swarm join` here), any free port. 0: any free port.")] = 7800,
) -> None:
    """Encode INPUT with a profile: split into chunks, encode them in parallel, merge.

    Peers running `swarm join` on this LAN are found with mDNS and invited; this device
    encodes too unless --no-local. The output has exactly the source's frames and
    timestamps, and the audio (encoded once over the whole file) keeps its offset. It is
    written under a temporary name and renamed only after it verified; on any failure or
    Ctrl-C nothing is left behind.
    """
    if no_local and local_only:
        raise _fail("--no-local and --local-only leave nobody to encode", EXIT_USAGE)
    out = _guarded(partial(
        _run_encode, input, profile, output, report, quiet, chunk_seconds=chunk_seconds,
        workers=workers, name=name or socket.gethostname(), upscale=upscale,
        no_local=no_local, network=not local_only, discover=not no_mdns, peers=peer or [],
        secret=secret, port=port))
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
    out = _guarded(partial(_run_encode, src, profile, None, None, False, workers=workers,
                           name=socket.gethostname()))
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


@app.command()
def join(
    name: Annotated[str | None, typer.Option(
        "--name", help="This node's name as peers show it. Default: the hostname.")] = None,
    port: Annotated[int, typer.Option(
        "--port", min=0, max=65535, help="TCP port to serve on. 0: any free port.")] = 7800,
    secret: Annotated[str | None, typer.Option(
        "--secret", envvar="SWARM_SECRET", show_envvar=True,
        help="Swarm secret; only coordinators with the same secret can use this node.")
    ] = None,
    slots: Annotated[int, typer.Option(
        "--slots", min=1, max=16, help="Chunks this node encodes at once.")] = 1,
    peer: Annotated[list[str] | None, typer.Option(
        "--peer", help="A coordinator's HOST:PORT to announce this node to, where mDNS does "
        "not reach (other subnets, VPNs). Repeatable.")] = None,
    no_bench: Annotated[bool, typer.Option(
        "--no-bench", help="Do not benchmark on first start (scores stay unknown).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors.")] = False,
) -> None:
    """Make this device an encoder peer: advertise it on the LAN and encode what it is given.

    Runs until Ctrl-C or SIGTERM, then leaves cleanly: unregisters from mDNS, stops its
    ffmpeg, and the coordinator re-queues what it held. Coordinators on other subnets can
    name this node with `swarm encode --peer HOST:PORT`.
    """

    from peer.coordinator import parse_peer

    peers_to_greet = [_guarded(parse_peer, p) for p in peer or []]

    def run() -> None:
        import trio

        from chunker.tools import find_ffmpeg
        from peer.node import Node, NodeConfig

        async def main() -> None:
            ffmpeg = await trio.to_thread.run_sync(find_ffmpeg, ())
            scores: dict[str, float] = {}
            if not no_bench:
                scores = await _scores(ffmpeg, quiet)
            node = Node(NodeConfig(name=name or socket.gethostname(), port=port, secret=secret,
                                   slots=slots, peers=peers_to_greet), ffmpeg, scores,
                        on_event=_join_printer(quiet))
            await node.run()

        try:
            _until_signal(main)
        except KeyboardInterrupt:
            pass  # Ctrl-C / SIGTERM is how a node is meant to leave

    _guarded(run)
    if not quiet:
        typer.echo("swarm: left the swarm", err=True)


def _join_printer(quiet: bool) -> Any:
    def show(e: dict[str, Any]) -> None:
        if quiet:
            return
        kind = e["event"]
        if kind == "node_up":
            typer.echo(f"swarm: {e['name']} ready on port {e['port']} (node {e['node_id']})",
                       err=True)
        elif kind == "job_joined":
            typer.echo(f"swarm: working for {e['coordinator']} (job {e['job_id']})", err=True)
        elif kind == "chunk_end":
            typer.echo(f"swarm: chunk {e['chunk']}: {e['outcome']}", err=True)
        elif kind == "job_left":
            typer.echo(f"swarm: job {e['job_id']} over; idle", err=True)

    return show


async def _scores(ffmpeg: Any, quiet: bool) -> dict[str, float]:
    from peer.benchmark import ensure_scores
    from profiles import builtin_names, load_profile

    profs = [load_profile(n) for n in builtin_names()]
    if not quiet:
        typer.echo("swarm: benchmarking this device (cached after the first time)", err=True)
    scores, _cached = await ensure_scores(ffmpeg, profs)
    return scores


@app.command()
def peers(
    wait: Annotated[float, typer.Option(
        "--wait", min=0.5, max=60, help="Seconds to listen for peers.")] = 3.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    secret: Annotated[str | None, typer.Option(
        "--secret", envvar="SWARM_SECRET", show_envvar=True,
        help="Our swarm secret: peers with another are shown as foreign.")] = None,
) -> None:
    """List the swarm peers found on the LAN with mDNS."""

    def run() -> list[Any]:
        import trio

        from peer.discovery import find_peers

        return trio.run(find_peers, wait)

    from swarm import auth
    from swarm.presence import classify
    from swarm.protocol import PROTOCOL_VERSION

    found = _guarded(run)
    fp = auth.fingerprint(secret) if secret else ""
    rows = [{"name": r.name, "address": f"{r.host}:{r.port}", "arch": r.arch, "cpus": r.cpus,
             "score": r.score, "state": r.state, "version": r.version,
             "verdict": classify(r, fp, PROTOCOL_VERSION), "node_id": r.node_id}
            for r in found]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if secret is None:
        typer.echo("swarm: open swarm (no --secret): peers of any open swarm can join",
                   err=True)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"swarm peers ({len(rows)} found in {wait:g} s)")
    for col in ("name", "address", "arch", "cpus", "speed", "state", "version", "swarm"):
        table.add_column(col, no_wrap=True)
    for r in rows:
        table.add_row(r["name"], r["address"], r["arch"], str(r["cpus"]),
                      f"{r['score'] / 1e6:.1f} Mpx/s" if r["score"] else "-", r["state"],
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

        async def main() -> tuple[dict[str, float], bool]:
            ffmpeg = await trio.to_thread.run_sync(find_ffmpeg, ())
            profs = [load_profile(n) for n in builtin_names()]
            return await ensure_scores(ffmpeg, profs, force=force)

        return trio.run(main)

    scores, cached = _guarded(run)
    if as_json:
        typer.echo(json.dumps({"cached": cached, "scores": scores}, indent=2))
        return
    for prof, score in sorted(scores.items()):
        typer.echo(f"{prof:10s} {score / 1e6:8.2f} Mpx/s")
    typer.echo(f"({'from the cache' if cached else 'measured now'})", err=True)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="swarm: %(levelname)s: %(message)s")
    app()


if __name__ == "__main__":
    main()
