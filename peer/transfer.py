"""Moving chunk bytes: the source file out to a peer's ffmpeg, an encoded chunk in.

Only the bytes: which attempt may read or upload is ``peer.jobserver``'s decision, and the
Range arithmetic is ``swarm.ranges.parse_range``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import trio

from swarm.ranges import parse_range

from .http import Receive, Send, iter_body, respond

__all__ = ["SOURCE_PIECE", "receive_file", "send_file", "unlink"]

# Source bytes per read and per body message: large enough that a LAN transfer is not
# bound by per-message overhead (bench/transfer), small enough to stay responsive.
SOURCE_PIECE = 256 * 1024


def unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


async def send_file(send: Send, path: str, size: int, range_header: str | None, head: bool,
                    sent: Callable[[int], None]) -> None:
    """Answer with the bytes of ``path`` (``size`` long) that the Range header asks for;
    ``sent`` is told every piece's length as it goes out."""
    rng = parse_range(range_header, size)
    if rng is None:
        await respond(send, 416, headers=[(b"content-range", f"bytes */{size}".encode())])
        return
    headers = [(b"content-type", b"application/octet-stream"),
               (b"content-length", str(rng.length).encode()), (b"accept-ranges", b"bytes")]
    if rng.partial:
        headers.append((b"content-range", rng.content_range(size).encode()))
    await send({"type": "http.response.start", "status": 206 if rng.partial else 200,
                "headers": headers})
    if head:
        await send({"type": "http.response.body", "body": b""})
        return
    async with await trio.open_file(path, "rb") as fh:
        await fh.seek(rng.start)
        left = rng.length
        while left > 0:
            data = await fh.read(min(SOURCE_PIECE, left))
            if not data:
                break
            left -= len(data)
            sent(len(data))
            await send({"type": "http.response.body", "body": data, "more_body": left > 0})
    if left > 0:
        await send({"type": "http.response.body", "body": b""})


async def receive_file(receive: Receive, path: str, limit: int) -> None:
    """Stream a request body of at most ``limit`` bytes into ``path``; on any failure
    (a body cut off or too long, cancellation) the partial file is removed."""
    try:
        async with await trio.open_file(path, "wb") as fh:
            async for piece in iter_body(receive, limit):
                await fh.write(piece)
    except BaseException:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(unlink, path)
        raise
