"""The installed program's one import root.

The repository keeps its six top-level modules (``cli``, ``screens``, ``swarm``, ``peer``,
``chunker``, ``profiles``) and imports them by those names. Installed side by side in
site-packages, names that generic would belong to whichever distribution wrote them last (PyPI
has distributions called ``swarm``, ``peer`` and ``chunker``), so the wheel puts them in
``swarm_encode/_program/`` instead, and importing this package adds a finder that resolves
exactly those six names there, ahead of anything else on ``sys.path``. Nothing of ours is in
site-packages under another name, and no other distribution's ``cli`` or ``peer`` can stand in
for ours in this program.

The names stay global inside the process: a process that imports ``swarm_encode`` cannot also
import another distribution's ``cli`` (or ``peer``, ...). The program is an application, so its
process is ours; and the modules are the same files, under the same names, whether they run
from a checkout (tests), from the wheel or from ``swarm.pyz``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec, PathFinder
from pathlib import Path
from types import ModuleType

__all__ = ["PROGRAM", "main", "program_dir"]

# pyproject.toml's [tool.setuptools] packages, less the prefix: keep the two in step.
PROGRAM = ("cli", "screens", "swarm", "peer", "chunker", "profiles")


def program_dir() -> Path:
    """Where the six modules are: ``_program/`` beside this file when installed from the
    wheel, this file's parent folder in a checkout (then this package is its sibling)."""
    here = Path(__file__).resolve().parent
    installed = here / "_program"
    return installed if (installed / "cli.py").is_file() else here.parent


class _ProgramFinder(MetaPathFinder):
    """Finds the program's top-level names in one folder and nowhere else. Their submodules
    need no help: the import system looks for them in the package's ``__path__``."""

    def __init__(self, folder: Path) -> None:
        self.folder = str(folder)

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname not in PROGRAM:
            return None
        return PathFinder.find_spec(fullname, [self.folder])


def _install() -> None:
    if any(isinstance(f, _ProgramFinder) for f in sys.meta_path):
        return
    folder = program_dir()
    for name in PROGRAM:
        # Imported before the finder was there: if from elsewhere, the program would run
        # with a stranger's module (or half of a checkout's), so say which.
        module = sys.modules.get(name)
        origin = getattr(module, "__file__", None)
        if module is not None and not (
                origin is not None and Path(origin).resolve().is_relative_to(folder)):
            raise ImportError(f"swarm_encode: a module named {name!r} is already imported "
                              f"from {origin or 'nowhere'}, not from {folder}")
    sys.meta_path.insert(0, _ProgramFinder(folder))


_install()


def main() -> None:
    """The ``swarm`` command."""
    import cli

    cli.main()
