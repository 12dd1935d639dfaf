"""The content spot check's decisions: which frames to compare, and what passes. Sans-I/O.

A peer could return a chunk with the right frame count and timestamps but other pictures
(a neighbouring frame, another part of the film, something drawn in). The coordinator
compares ``SAMPLES`` frames of each result with the source at the same timestamps, scaled
as the profile scales it (chunker.spotcheck builds and reads that run); a frame passes if
its weakest tile's PSNR reaches ``THRESHOLD_DB``.

The samples are drawn by the coordinator after the upload (``rng`` is the shell's
``secrets.SystemRandom``), so a peer cannot know which frames will be looked at; a peer
that alters a fraction f of the frames is caught with probability 1 - (1 - f) ** SAMPLES
per chunk, and benched at once when caught.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Final

__all__ = ["SAMPLES", "THRESHOLD_DB", "sample_frames", "verdict"]

# Three frames: the check's cost is mostly the source decode from the keyframe before each
# one (bench/spotcheck: a few percent of the encode); a peer that alters every frame, or a
# whole scene, is caught on the first chunk.
SAMPLES: Final = 3
# Measured with bench/spotcheck (ffmpeg 5.1; 1280x720 mandelbrot and grainy testsrc2
# sources; 6 s chunks of hd, 480p, fhd-av1 and others; README "What is checked"): the
# weakest tile of a correct encode scored at least LOWEST_CORRECT_DB (hd at 2 Mb/s on the
# mandelbrot); a frame 2 s away or a box drawn over 1/64 of the frame scored at most
# HIGHEST_WRONG_DB (a box over 1/16: 14.4). The threshold sits between, nearer the wrong
# side: an honest peer wrongly benched costs more than a box missed on one chunk, and
# harder content than the bench's lowers correct scores. A neighbouring frame scored up to
# 26.8 on the slow zoom: no fixed threshold tells it from a correct low-bitrate frame.
LOWEST_CORRECT_DB: Final = 26.2
HIGHEST_WRONG_DB: Final = 19.4
THRESHOLD_DB: Final = 22.0


def sample_frames(frames: int, rng: random.Random, n: int = SAMPLES) -> list[int]:
    """``n`` distinct frame indices of a chunk of ``frames`` frames, ascending."""
    if frames < 1:
        raise ValueError("a chunk has at least one frame")
    return sorted(rng.sample(range(frames), min(n, frames)))


def verdict(samples: Sequence[int], tiles: Sequence[Sequence[float]],
            threshold_db: float = THRESHOLD_DB) -> str | None:
    """Why the chunk's content is wrong, or None if every sampled frame passes.

    ``tiles[i]`` holds the tile PSNRs of frame ``samples[i]``.
    """
    if not samples or len(tiles) != len(samples) or not all(tiles):
        return "content check: no frames compared"
    for k, frame in zip(samples, tiles, strict=True):
        worst = min(frame)
        if not worst >= threshold_db:  # NaN fails
            shown = "nan" if math.isnan(worst) else f"{worst:.1f}"
            return (f"content check: frame {k} differs from the source "
                    f"(PSNR {shown} dB in its worst tile, below {threshold_db:g} dB)")
    return None
