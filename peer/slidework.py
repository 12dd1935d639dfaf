"""A peer's slideshow chunk: an ``Assignment`` whose ``slides`` describes a run of images.

The peer fetches just that run's images from the coordinator, by index
(``source_path/<k>``, never by a path or name), into a directory of its own; each is
bounded by its announced size and must match its SHA-256 and begin like an image of an
allowed format. The render's argv is ``chunker.slides.slide_argv`` over those files, whose
names are ours; every number in it comes from the validated ``SlideRun`` and the invite's
validated profile. ``peer.worker`` then streams the encoded chunk back like a video chunk.
"""

from __future__ import annotations

import hashlib
import os

import httpx
import trio

from chunker.slides import SlidePlan, slide_argv
from profiles import Profile
from swarm import auth
from swarm.errors import EncodeError, TransportError
from swarm.protocol import Assignment, SlideRun

from .client import transport_errors

__all__ = ["IMAGE_MAGIC", "fetch_run", "image_kind", "render_argv", "slide_run_of"]

# The image formats a peer renders, by their first bytes, and the file name suffix it gives
# them (so ffmpeg probes what it was told). Anything else is refused before ffmpeg sees it.
IMAGE_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", ".jpg"),
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"BM", ".bmp"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
)
_HEAD = 12


def image_kind(head: bytes) -> str | None:
    """The suffix of an allowed image format that ``head`` starts, or None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ".webp"
    for magic, suffix in IMAGE_MAGIC:
        if head.startswith(magic):
            return suffix
    return None


def slide_run_of(a: Assignment, width: int, height: int) -> SlideRun:
    """The assignment's run, checked against the rest of it and the invite's box."""
    run = a.slides
    if run is None:
        raise EncodeError(f"chunk {a.chunk}: not a slideshow chunk")
    if a.frames != run.frames:
        raise EncodeError(f"chunk {a.chunk}: {a.frames} frames for a run of {run.frames}")
    if (run.width, run.height) != (width, height):
        raise EncodeError(f"chunk {a.chunk}: a {run.width}x{run.height} run in a "
                          f"{width}x{height} job")
    return run


async def fetch_run(client: httpx.AsyncClient, secret: auth.Credential, a: Assignment,
                    run: SlideRun, directory: str) -> list[str]:
    """Download the run's images into ``directory``; their paths, in order. EncodeError
    for an image that is not what the run says (size, digest, format) or cannot be had."""
    paths = []
    for k, (size, digest) in enumerate(zip(run.sizes, run.sha256, strict=True)):
        path = f"{a.source_path}/{k}"
        url = f"{path}?{auth.url_query(secret, path, a.attempt)}"
        part = os.path.join(directory, f"{k:03d}.part")
        sha = hashlib.sha256()
        head = b""
        got = 0
        try:
            with transport_errors():
                # One connection per image: a second request on a connection that
                # peer.transfer.send_file answered waits forever (hypercorn 0.18).
                async with client.stream("GET", url, headers={"connection": "close"}
                                         ) as resp:
                    if resp.status_code != 200:
                        raise EncodeError(f"image {k}: the coordinator answered "
                                          f"{resp.status_code}")
                    async with await trio.open_file(part, "wb") as fh:
                        async for piece in resp.aiter_bytes():
                            got += len(piece)
                            if got > size:  # bounded by what the run announced
                                raise EncodeError(f"image {k}: more than {size} bytes")
                            if len(head) < _HEAD:
                                head += piece[:_HEAD - len(head)]
                            sha.update(piece)
                            await fh.write(piece)
        except TransportError as exc:
            raise EncodeError(f"image {k}: {exc}") from exc
        if got != size:
            raise EncodeError(f"image {k}: {got} bytes, expected {size}")
        if sha.hexdigest() != digest:
            raise EncodeError(f"image {k}: its SHA-256 is not the one assigned")
        suffix = image_kind(head)
        if suffix is None:
            raise EncodeError(f"image {k}: not a JPEG, PNG, WebP, BMP or TIFF")
        final = os.path.join(directory, f"{k:03d}{suffix}")
        os.replace(part, final)
        paths.append(final)
    return paths


def render_argv(ffmpeg: str, run: SlideRun, paths: list[str], profile: Profile,
                threads: int = 0) -> list[str]:
    """Render and encode the run to NUT on stdout, with progress on stderr."""
    plan = SlidePlan(tuple(paths), run.per_image, run.fade, run.width, run.height)
    return slide_argv(ffmpeg, plan, 0, run.images, profile, "pipe:1", threads=threads,
                      progress=True)
