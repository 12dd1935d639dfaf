"""A slideshow (`swarm slideshow`): still images to video, planned and spelled as ffmpeg argv.

Pure: nothing runs here. The timeline is counted in frames, so it splits exactly:

- every image lasts ``per_image`` frames; the crossfade into the next image takes the last
  ``fade`` of them (the next image then starts fully shown), so the video is exactly
  ``images x per_image`` frames and no image is shortened by its neighbours;
- a chunk is a run of whole images. The crossfade at its end needs the next chunk's first
  image, so a chunk reads its own images and that one, nothing else;
- a crossfade frame is ``A + (B - A) * (k + 1) / (fade + 1)`` for its index ``k`` in the
  fade, an integer the graph computes the same way whichever chunk renders it: a fade into
  another chunk's image comes out as in a single render (tests/test_slides.py compares the
  frames' checksums).

Images are scaled to fit the profile's box, keeping their aspect ratio, and padded with
black to fill it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from profiles import Profile
from swarm.protocol import MAX_SLIDE_RUN

from .commands import CHUNK_FORMAT, VideoPlan, _codec_args

__all__ = ["IMAGE_EXTENSIONS", "SLIDE_FPS", "SlidePlan", "plan_slides", "slide_argv",
           "slide_runs", "soundtrack_args"]

# Frames per second of a slideshow: 25 makes every 0.04 s a whole frame, so the seconds per
# image users type (2, 1.5, 0.4) are exact frame counts.
SLIDE_FPS = 25
# What a directory argument counts as an image, by name (the check decodes each one).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
# Chunks per encoder slot, as for videos: enough for the balance, each a run of images.
CHUNKS_PER_SLOT = 3
# The music fades out over this share of the video, at most this many seconds.
AUDIO_FADE_SHARE = 0.25
AUDIO_FADE_MAX_S = 2.0
# The longest run of images in one chunk: what a peer's assignment can list.
MAX_RUN = MAX_SLIDE_RUN


@dataclass(frozen=True, slots=True)
class SlidePlan:
    images: tuple[str, ...]
    per_image: int  # frames each image lasts
    fade: int  # frames of the crossfade at the end of every image but the last
    width: int
    height: int
    fps: int = SLIDE_FPS

    @property
    def frames(self) -> int:
        return len(self.images) * self.per_image

    @property
    def duration_s(self) -> float:
        return self.frames / self.fps


def plan_slides(images: Sequence[str], seconds_per_image: float, fade_s: float,
                profile: Profile) -> SlidePlan:
    """Raises ValueError for a timing that cannot be shown (fade as long as the image)."""
    if not images:
        raise ValueError("no images")
    per_image = round(seconds_per_image * SLIDE_FPS)
    fade = round(fade_s * SLIDE_FPS)
    if per_image < 1:
        raise ValueError(f"{seconds_per_image:g} s per image is less than one frame")
    if fade < 0 or fade >= per_image:
        raise ValueError(f"a {fade_s:g} s fade needs more than {fade_s:g} s per image")
    return SlidePlan(tuple(images), per_image, fade, profile.video.width,
                     profile.video.height)


def slide_runs(images: int, slots: int, max_run: int = MAX_RUN) -> list[tuple[int, int]]:
    """(first image, images) of each chunk: ``CHUNKS_PER_SLOT`` chunks per slot at most,
    and none longer than ``max_run`` images (what one assignment can describe), every chunk
    a run of whole images, the runs as even as they divide."""
    chunks = max(1, min(images, CHUNKS_PER_SLOT * max(1, slots)))
    chunks = max(chunks, math.ceil(images / max(1, max_run)))
    per = math.ceil(images / chunks)
    return [(first, min(per, images - first)) for first in range(0, images, per)]


def _fit(i: int, plan: SlidePlan, uses: int, tag: str = "", base: int = 0) -> str:
    # out_range=tv: ffmpeg 7 on negotiates the colour range across the graph, so an image
    # that also feeds a blend was converted to another range than the same image feeding
    # only the concat; their frames differed between a chunk and a single render (9.0.2).
    # The colour description too: x264 writes the first frame's into the chunk's SPS, and a
    # JPEG (tagged bt470bg) and a PNG (untagged) made chunks whose parameter sets differ,
    # which cannot be joined under one avcC. Every image becomes BT.709, tagged so.
    w, h = plan.width, plan.height
    return (f"[{base + i}:v]scale={w}:{h}:force_original_aspect_ratio=decrease:"
            f"force_divisible_by=2:flags=bicubic:out_range=tv:out_color_matrix=bt709,"
            f"pad={w}:{h}:(ow-iw)/2:(oh-ih)/2:color=black,setsar=1,format=yuv420p,"
            "setparams=range=tv:color_primaries=bt709:color_trc=bt709:colorspace=bt709,"
            # Decoded and scaled once, then repeated as references to that one frame.
            f"loop=loop=-1:size=1,split={uses}"
            + "".join(f"[{tag}u{i}_{k}]" for k in range(uses)))


def _frames(label: str, n: int, fps: int, out: str) -> str:
    return f"[{label}]trim=end_frame={n},setpts=N/({fps}*TB)[{out}]"


def slide_graph(plan: SlidePlan, first: int, count: int, tag: str = "", base: int = 0
                ) -> tuple[list[str], str]:
    """The chunk's images (its own, then the next one when a fade needs it) and its filter
    graph, whose output ``[v]`` is the chunk's ``count x per_image`` frames. ``tag``
    prefixes every label (the output is ``[<tag>v]``) and ``base`` is the first image's
    input index, so that several runs can be rendered in one graph (chunker.spotcheck)."""
    last = first + count  # the next chunk's first image, if any
    fades_out = plan.fade > 0
    reads = list(plan.images[first:last])
    if fades_out and last < len(plan.images):
        reads.append(plan.images[last])
    parts: list[str] = []
    pieces: list[str] = []
    for j in range(len(reads)):
        own = j < count
        fade_out = own and fades_out and first + j + 1 < len(plan.images)
        fade_in = fades_out and j > 0  # the end of the image before it blends into it
        uses = int(own) + int(fade_out) + int(fade_in)
        parts.append(_fit(j, plan, uses, tag, base))
        k = 0
        if own:
            still = plan.per_image - (plan.fade if fade_out else 0)
            parts.append(_frames(f"{tag}u{j}_{k}", still, plan.fps, f"{tag}s{j}"))
            pieces.append(f"[{tag}s{j}]")
            k += 1
        if fade_out:
            parts.append(_frames(f"{tag}u{j}_{k}", plan.fade, plan.fps, f"{tag}a{j}"))
            k += 1
        if fade_in:
            parts.append(_frames(f"{tag}u{j}_{k}", plan.fade, plan.fps, f"{tag}b{j}"))
            # The fade of image j-1 into image j: both already in the graph.
            d = plan.fade + 1
            # blend's N counts its frames from 1 (ffmpeg 5.1 to 9): N / (fade + 1).
            parts.append(f"[{tag}a{j - 1}][{tag}b{j}]blend=all_expr='A+(B-A)*N/{d}'"
                         f"[{tag}f{j - 1}]")
    # Each image's still part, then its fade, in order.
    ordered: list[str] = []
    for j in range(count):
        ordered.append(f"[{tag}s{j}]")
        if fades_out and first + j + 1 < len(plan.images):
            ordered.append(f"[{tag}f{j}]")
    parts.append("".join(ordered) + f"concat=n={len(ordered)}:v=1:a=0,"
                 f"setpts=N/({plan.fps}*TB)[{tag}v]")
    return reads, ";".join(parts)


def slide_argv(ffmpeg: str, plan: SlidePlan, first: int, count: int, profile: Profile,
               out: str, *, threads: int = 0, raw: bool = False,
               progress: bool = False) -> list[str]:
    """Render and encode one chunk to NUT at ``out``; ``raw``: each frame's checksum
    instead (framemd5), what a test compares between a chunked and a single render.
    ``progress``: frame counts on stderr (``peer.proc.run_ffmpeg``'s on_progress)."""
    reads, graph = slide_graph(plan, first, count)
    argv = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error"]
    for path in reads:
        argv += ["-i", path]
    argv += ["-filter_complex", graph, "-map", "[v]", "-frames:v", str(count * plan.per_image),
             "-r", str(plan.fps)]
    if progress:
        argv += ["-progress", "pipe:2", "-stats_period", "0.5"]
    if raw:
        return [*argv, "-f", "framemd5", "-y", out]
    vplan = VideoPlan(plan.width, plan.height, max(1, round(profile.video.gop_s * plan.fps)))
    for key, value in _codec_args(profile, vplan, threads).items():
        argv += [f"-{key}", str(value)]
    # x264 writes the first frame's chroma siting into the SPS too: a decoded JPEG's is
    # "center", a converted PNG's unset. H.264's default for every chunk.
    argv += ["-chroma_sample_location", "left"]
    return [*argv, "-f", CHUNK_FORMAT, "-y", out]


def soundtrack_args(music: str | None, duration_s: float, profile: Profile) -> list[str]:
    """Input and output arguments for the merge's audio: ``music`` padded with silence or
    cut to ``duration_s``, fading out at the end; no audio without music."""
    if music is None:
        return []
    fade = min(AUDIO_FADE_MAX_S, AUDIO_FADE_SHARE * duration_s)
    a = profile.audio
    return ["-i", music, "-map", "1:a:0",
            "-af", f"apad,atrim=end={duration_s:.6f},"
                   f"afade=t=out:st={duration_s - fade:.6f}:d={fade:.6f}",
            "-c:a", a.codec, "-b:a", f"{a.bitrate_k}k", "-ar", str(a.sample_rate),
            "-ac", str(a.channels)]
