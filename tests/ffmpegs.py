"""The ffmpeg binaries the tests run the pipeline on, and the one that makes the sources.

``SWARM_TEST_FFMPEGS`` lists them (paths joined with ``os.pathsep``); ``.ci/run`` sets it to
the bundled 9.x, Debian's 5.1 (/usr/bin/ffmpeg) and imageio-ffmpeg 0.7.0's 7.0.2, which it
caches on the machine. Unset, the same three are looked for at their usual places. A binary
that is absent skips its tests with the reason, except under CI (``CI=true``), where it is a
failure: CI must never pass by testing fewer binaries.
"""

from __future__ import annotations

import os

import imageio_ffmpeg
import pytest

from chunker.tools import FFmpeg, ffmpeg_info
from swarm.errors import UsageError

# The bundled binary makes every test source, so that the corpus is the same whichever
# ffmpeg is under test (and whatever the machine's own ffmpeg is).
BUNDLED = str(imageio_ffmpeg.get_ffmpeg_exe())
DEBIAN = "/usr/bin/ffmpeg"
CI_CACHED_7 = "/var/cache/swarm-ci/ffmpeg-7.0.2"


def under_test() -> list[str]:
    listed = os.environ.get("SWARM_TEST_FFMPEGS")
    if listed:
        return [p for p in listed.split(os.pathsep) if p]
    return [BUNDLED, DEBIAN, CI_CACHED_7]


def label(path: str) -> str:
    """A test id that names the version: ffmpeg5.1.9, or the path if it does not run."""
    try:
        return f"ffmpeg{ffmpeg_info(path).short_version}"
    except UsageError:
        return f"missing:{path}"


def require(path: str) -> FFmpeg:
    """The binary's record; skips (fails under CI) if it is not there or does not run."""
    try:
        return ffmpeg_info(path)
    except UsageError as exc:
        why = f"ffmpeg under test not available: {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(why + " (CI must test every binary; .ci/run installs them)")
        pytest.skip(why)


def params() -> list[object]:
    return [pytest.param(p, id=label(p)) for p in under_test()]
