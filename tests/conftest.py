from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from chunker.tools import find_ffmpeg
from media import SOURCES, crashes_on, make_source

# A device's identity and pairings live in its config dir (peer.identity); no test may touch
# the user's ~/.config. Processes started by session fixtures get this run's own dir;
# each test then gets a dir of its own (config_dir below).
_RUN_CONFIG = tempfile.TemporaryDirectory(prefix="swarm-test-config-")
os.environ["SWARM_CONFIG_DIR"] = _RUN_CONFIG.name


@pytest.fixture(autouse=True)
def config_dir(tmp_path_factory: pytest.TempPathFactory,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """This test's own SWARM_CONFIG_DIR (inherited by the processes it starts)."""
    folder = tmp_path_factory.mktemp("config")
    monkeypatch.setenv("SWARM_CONFIG_DIR", str(folder))
    yield folder


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every hard-case source, made once per run with lavfi (a few seconds in all)."""
    folder = tmp_path_factory.mktemp("corpus")
    return {name: make_source(name, folder) for name in SOURCES}


@pytest.fixture
def source(name: str, corpus: dict[str, Path]) -> Path:
    """The corpus file a test is parametrized with (``name``), skipped with the reason if the
    ffmpeg under test crashes opening it (a sync fixture: a skip raised inside a trio test
    loses its message). The ffmpeg under test is the one test_pipeline's ``binary`` names in
    SWARM_FFMPEG, as cli.py would pass it down."""
    ffmpeg = find_ffmpeg((), os.environ.get("SWARM_FFMPEG"))
    if crashes_on(ffmpeg.path, corpus[name]):
        pytest.skip(f"ffmpeg {ffmpeg.version} crashes opening {corpus[name].name}")
    return corpus[name]
