"""The content spot check's decisions: which results and frames to compare, and what
passes. Sans-I/O.

A peer could return a chunk with the right frame count and timestamps but other pictures
(a neighbouring frame, another part of the film, something drawn in). The coordinator
compares ``SAMPLES`` frames of a result with the source at the same timestamps, scaled as
the profile scales it and then both reduced alike (chunker.spotcheck builds and reads that
run), and also with the source's frames just before and after. ``judge`` decides per tile:
a tile passes if it is close to its own source frame; below that, if it is not nearer a
neighbouring frame than its own, and is either fairly close or, where the content is so
noisy that no correct encode is (an encoder drops grain), no further from its frame than
the source moves from one frame to the next. A wrong picture is far from its frame, or
nearer another one.

Which results are checked (``check_result``): every peer's first ``FIRST_CHECKED``, then
one in ``ONE_IN``, drawn from the job's own random generator (the shell seeds it from the
OS's randomness per job, so a peer cannot predict it). The frames are drawn the same way,
after the upload. A peer that lies from the start is caught on its first result; a peer
that turns liar later is caught, on average, within ``ONE_IN`` results; what it delivered
before that is kept (README "What is checked, never believed").
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Final

__all__ = ["ABSOLUTE_DB", "CHANGE_MARGIN_DB", "FAIR_DB", "FIRST_CHECKED", "LEAD_MARGIN_DB",
           "ONE_IN", "SAMPLES", "Scores", "check_result", "judge", "sample_frames",
           "share_checked", "verdict"]

# Three frames: the check's cost is mostly the decodes from the keyframe before each one;
# a peer that alters every frame, or a whole scene, is caught on the first chunk it is
# checked on.
SAMPLES: Final = 3
FIRST_CHECKED: Final = 3
ONE_IN: Final = 4
# Thresholds, at the reduced size (chunker.spotcheck: 192 px wide, 8 x 8 tiles), measured
# with bench/spotcheck (README "What is checked"; ffmpeg 5.1, 480p/hd/fhd of 720p sources)
# and on tests/test_spotcheck.py's sources (ffmpeg 5.1 and 9.0.2):
# - a correct encode's worst tile scored 40 dB or more on clean 720p content, 26.4 on a
#   320x240 fractal zoom at 480p (little is reduced away there); a box over 1/64 of the
#   frame 18 dB or less, another film 10, a frame 2 s away 16 (a frame one step off on a
#   slow zoom 31: near enough the same picture, and passed);
# - on strong grain (noise=alls=100) a correct encode scores 21-25 dB, what a frame one
#   step off scores, so there a tile is judged against the source itself: a correct tile
#   was at most 4.5 dB further from its source frame than that frame is from its
#   neighbours (boxed, distant or other pictures 7.7 dB or more), and at most 2 dB nearer a
#   neighbour than its own frame (frames one step off 6.8 dB or more).
ABSOLUTE_DB: Final = 30.0
FAIR_DB: Final = 24.0
CHANGE_MARGIN_DB: Final = 6.0
LEAD_MARGIN_DB: Final = 4.0


def check_result(results_before: int, rng: random.Random) -> bool:
    """Whether a peer's result is content-checked, given how many results of that peer this
    job has already received."""
    return results_before < FIRST_CHECKED or rng.randrange(ONE_IN) == 0


def share_checked(results: int) -> float:
    """The expected share of a peer's ``results`` results that are checked."""
    if results < 1:
        return 0.0
    first = min(results, FIRST_CHECKED)
    return (first + (results - first) / ONE_IN) / results


def sample_frames(frames: int, rng: random.Random, n: int = SAMPLES) -> list[int]:
    """``n`` distinct frame indices of a chunk of ``frames`` frames, ascending."""
    if frames < 1:
        raise ValueError("a chunk has at least one frame")
    return sorted(rng.sample(range(frames), min(n, frames)))


def judge(own: Sequence[float], others: Sequence[Sequence[float]],
          changes: Sequence[Sequence[float]]) -> str | None:
    """Why one sampled frame is wrong, or None if it passes. Per tile, PSNR in dB:
    ``own`` against its source frame, ``others`` against each neighbouring source frame,
    ``changes`` its source frame against each of them.

    A tile passes if it is close to its source frame (``ABSOLUTE_DB``). Below that it must
    not be nearer a neighbour than its own frame (a frame one step off is as far from its
    frame as the next one is, but nearer that one), and be fairly close (``FAIR_DB``) or no
    further from its frame than the source moves from one frame to the next: an encoder
    may drop grain, not change the picture more than a frame's time does.
    """
    if not own or any(len(o) != len(own) for o in (*others, *changes)):
        return "no tiles compared"
    for t, score in enumerate(own):
        if score >= ABSOLUTE_DB:
            continue
        shown = "nan" if math.isnan(score) else f"{score:.1f}"
        nearest = max((o[t] for o in others), default=-math.inf)
        if not score >= nearest - LEAD_MARGIN_DB:  # NaN fails
            return (f"tile {t} scores {shown} dB, below {ABSOLUTE_DB:g}, and a neighbouring "
                    f"frame {nearest:.1f} dB: it shows another frame")
        if score >= FAIR_DB:
            continue
        # With no neighbour (a one-frame source) nothing shows what the encoder may lose.
        moved = min((c[t] for c in changes), default=math.inf)
        if not score >= moved - CHANGE_MARGIN_DB:
            return (f"tile {t} scores {shown} dB, below {FAIR_DB:g} and more than "
                    f"{CHANGE_MARGIN_DB:g} dB below how the source moves ({moved:.1f} dB)")
    return None


Scores = tuple[Sequence[float], Sequence[Sequence[float]], Sequence[Sequence[float]]]


def verdict(samples: Sequence[int], compared: Sequence[Scores]) -> str | None:
    """Why the chunk's content is wrong, or None if every sampled frame passes.
    ``compared[i]``: frame ``samples[i]``'s (own, others, changes) tile scores (``judge``)."""
    if not samples or len(compared) != len(samples):
        return "content check: no frames compared"
    for k, (own, others, changes) in zip(samples, compared, strict=True):
        if (why := judge(own, others, changes)) is not None:
            return f"content check: frame {k} differs from the source: {why}"
    return None
