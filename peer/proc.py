"""Running ffmpeg children from trio: streamed progress, bounded stderr, no orphans.

Every ffmpeg swarm starts goes through ``run_ffmpeg``. On cancellation (Ctrl-C, a lost
lease, a job torn down) the child is SIGKILLed at once and reaped, so no zombie and no
half-written pipe survive. Encoders always write to a pipe we read, so if this process is
SIGKILLed its ffmpeg dies of SIGPIPE at its next write. (PR_SET_PDEATHSIG is no help: trio
starts children from a worker thread, and the signal fires when that *thread* exits, which
trio's thread cache does after 10 s idle: it killed every encode older than 10 s.)
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import IO

import trio

from swarm.errors import EncodeError

__all__ = ["FFmpegResult", "niced", "run_ffmpeg"]

log = logging.getLogger(__name__)

# Enough of ffmpeg's stderr to explain a failure; progress lines are parsed, not kept.
STDERR_KEEP_LINES = 40
# Output kept in memory only for small text results (probe, verify listings).
MAX_CAPTURE_BYTES = 64 * 1024 * 1024


def niced(argv: Sequence[str], increment: int) -> list[str]:
    """``argv`` run ``increment`` steps nicer, through nice(1) where the system has it: set
    before the program starts, so every thread it makes has it (renicing a running ffmpeg
    would miss the threads it already made: Linux keeps a nice value per thread)."""
    tool = shutil.which("nice")
    return [tool, "-n", str(increment), *argv] if tool is not None else list(argv)


@dataclass(frozen=True, slots=True)
class FFmpegResult:
    returncode: int
    stdout: bytes
    stderr: str


async def run_ffmpeg(
    argv: Sequence[str],
    *,
    stdout: IO[bytes] | None = None,
    stdout_sink: Callable[[bytes], Awaitable[None]] | None = None,
    on_progress: Callable[[int], None] | None = None,
    stdin_feed: Callable[[trio.abc.SendStream], Awaitable[None]] | None = None,
    check: bool = True,
    what: str = "ffmpeg",
    stderr_lines: int = STDERR_KEEP_LINES,
) -> FFmpegResult:
    """Run one ffmpeg; its stdout goes to ``stdout`` (a file), ``stdout_sink``, or memory.

    ``on_progress`` receives the frame count from ``-progress pipe:2`` lines.
    ``stdin_feed`` writes the child's stdin (closed after it returns); an encoder that has
    what it needs and exits early ends the feed quietly.
    Raises EncodeError on a non-zero exit when ``check``. ``stderr_lines`` is how much of
    stderr's end is kept (the probe reads its whole stream dump from there).
    """
    piped = stdout is None
    proc = await trio.lowlevel.open_process(
        list(argv),
        stdin=subprocess.PIPE if stdin_feed is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE if piped else stdout,
        stderr=subprocess.PIPE,
    )
    tail: deque[str] = deque(maxlen=stderr_lines)
    captured = bytearray()

    async def pump_stderr() -> None:
        assert proc.stderr is not None
        buf = b""
        async for data in proc.stderr:
            buf += data
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                line = raw.decode("utf-8", "replace").rstrip()
                if line.startswith("frame=") and on_progress is not None:
                    value = line[6:].strip()
                    if value.isdigit():
                        on_progress(int(value))
                elif "=" in line and " " not in line.split("=", 1)[0]:
                    continue  # other -progress keys
                elif line:
                    tail.append(line)
        if buf.strip():
            tail.append(buf.decode("utf-8", "replace").rstrip())

    async def pump_stdout() -> None:
        assert proc.stdout is not None
        async for data in proc.stdout:
            if stdout_sink is not None:
                await stdout_sink(bytes(data))  # the same object when it is bytes
            elif len(captured) + len(data) <= MAX_CAPTURE_BYTES:
                captured.extend(data)
            else:
                raise EncodeError(f"{what}: output larger than {MAX_CAPTURE_BYTES} bytes")

    feeding = trio.CancelScope()

    async def feed_stdin() -> None:
        assert proc.stdin is not None and stdin_feed is not None
        with feeding:
            try:
                async with proc.stdin:
                    await stdin_feed(proc.stdin)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the child stopped reading: it has all it wants, or failed (said below)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump_stderr)
            if stdin_feed is not None:
                nursery.start_soon(feed_stdin)
            if piped:
                nursery.start_soon(pump_stdout)
            await proc.wait()
            feeding.cancel()  # a feed waiting for more input has nobody to give it to
    finally:
        if proc.returncode is None:
            proc.kill()
        with trio.CancelScope(shield=True):
            returncode = await proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with trio.CancelScope(shield=True):
                    await stream.aclose()
    result = FFmpegResult(returncode, bytes(captured), "\n".join(tail))
    if check and returncode != 0:
        detail = _cause(tail) if tail else f"exit status {returncode}"
        raise EncodeError(f"{what} failed: {detail}")
    return result


# ffmpeg's "[vost#0:0/libx265 @ 0x55e5d7b0e180] " context prefixes: an address that
# differs on every run and says nothing to a user.
_CONTEXT = re.compile(r"^\[[^\]]*@ 0x[0-9a-f]+\]\s*")


def _cause(tail: Sequence[str]) -> str:
    """The line that explains a failure. ffmpeg prints the cause first and its consequences
    after it ("x265 [error]: picture dimensions are out of range for specified level", then
    "Cannot open libx265 encoder", ..., "Nothing was written into output file"), so the
    first kept line, unless the tail overflowed and the first line is an arbitrary one."""
    line = tail[0] if len(tail) < STDERR_KEEP_LINES else tail[-1]
    return _CONTEXT.sub("", line)
