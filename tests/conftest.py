from __future__ import annotations

from pathlib import Path

import pytest

from media import SOURCES, make_source


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every hard-case source, made once per run with lavfi (a few seconds in all)."""
    folder = tmp_path_factory.mktemp("corpus")
    return {name: make_source(name, folder) for name in SOURCES}
