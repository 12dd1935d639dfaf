"""Synthetic sources made with ffmpeg's lavfi: the demo clip and the test corpus.

Nothing large is ever committed; every clip is made at run time in a few seconds.
"""

from __future__ import annotations

import subprocess

__all__ = ["make_demo_clip"]


def make_demo_clip(ffmpeg: str, out: str, seconds: int) -> None:
    """A 720p clip with moving test pattern, a scene cut to a fractal, and stereo audio."""
    half = seconds / 2
    graph = (
        f"testsrc2=size=1280x720:rate=30:duration={half}[a];"
        f"mandelbrot=size=1280x720:rate=30,trim=duration={seconds - half},setpts=PTS-STARTPTS[b];"
        "[a][b]concat=n=2:v=1:a=0,format=yuv420p[v];"
        f"sine=frequency=440:duration={seconds}[l];"
        f"sine=frequency=660:duration={seconds}[r];"
        "[l][r]amerge=inputs=2[aout]"
    )
    subprocess.run(
        [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
         "-filter_complex", graph, "-map", "[v]", "-map", "[aout]",
         "-c:v", "libx264", "-preset", "veryfast", "-bf", "3", "-g", "60",
         "-c:a", "aac", "-b:a", "128k", out],
        check=True, timeout=300,
    )
