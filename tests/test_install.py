"""`pip install` puts one import root into site-packages (swarm_encode), and the installed
program runs from it, whatever else is called cli or peer, and packs the checkout's swarm.pyz:
the wheel is built from this checkout and installed into a new venv."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from peer import pyz
from swarm_encode import PROGRAM

REPO = Path(__file__).resolve().parent.parent
# What the wheel is built from: the files pyproject.toml packs, and the metadata's sources.
SOURCES = ("pyproject.toml", "README.md", "cli.py", "swarm_encode", *PROGRAM[1:])
DIST_INFO = "swarm_encode-0.1.0.dist-info"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A copy: a build writes build/ and *.egg-info beside its sources.
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    dist = tmp_path_factory.mktemp("dist")
    # No build isolation: the test extras bring a setuptools that builds wheels by itself, so
    # this needs no index.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index",
                    "--no-build-isolation", "-w", str(dist), str(src)],
                   check=True, capture_output=True, timeout=300)
    (found,) = dist.glob("*.whl")
    return found


def test_wheel_has_one_import_root(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        top_level = zf.read(f"{DIST_INFO}/top_level.txt").decode().split()
        entry_points = zf.read(f"{DIST_INFO}/entry_points.txt").decode()
    assert {n.split("/")[0] for n in names} == {"swarm_encode", DIST_INFO}
    assert top_level == ["swarm_encode"]
    assert "swarm = swarm_encode:main" in entry_points
    # The program's own names, and nothing else, under the root's _program/ folder.
    inner = {n.split("/")[2] for n in names if n.startswith("swarm_encode/_program/")}
    assert inner == {"cli.py", *PROGRAM[1:]}
    for package in PROGRAM[1:]:
        assert f"swarm_encode/_program/{package}/__init__.py" in names
    assert "swarm_encode/_program/profiles/hd.toml" in names  # package data
    assert set(pyz.PROGRAM) == set(PROGRAM)  # what swarm.pyz packs


def test_installed_program_runs_from_its_root(wheel: Path, tmp_path: Path) -> None:
    # The venv sees this Python's packages for the dependencies (no index needed); its own
    # site-packages comes first, so the modules must resolve there, not in this checkout.
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip())
    before = set(os.listdir(site))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    assert set(os.listdir(site)) - before == {"swarm_encode", DIST_INFO}

    # Another distribution's modules with the program's names, in site-packages and first on
    # PYTHONPATH: the program must not see them (and no install of theirs can overwrite ours).
    strangers = tmp_path / "strangers"
    for folder in (site, strangers):
        for package in PROGRAM[1:]:
            (folder / package).mkdir(parents=True, exist_ok=True)
            (folder / package / "__init__.py").write_text("raise ImportError('a stranger')\n")
        (folder / "cli.py").write_text("raise ImportError('a stranger')\n")

    def run(*argv: str | Path) -> str:
        # Outside the checkout and without its PYTHONPATH, as a user runs it (but for theirs).
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        res = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                             env=env | {"PYTHONPATH": str(strangers),
                                        "SWARM_CACHE_DIR": str(tmp_path / "cache")},
                             check=False)
        assert res.returncode == 0, res.stderr
        return res.stdout

    assert "encode" in run(env_dir / "bin" / "swarm", "--help")
    assert "fhd-crf" in run(env_dir / "bin" / "swarm", "profiles")
    assert "fhd-crf" in run(python, "-m", "swarm_encode", "profiles")
    where = run(python, "-c", "import swarm_encode, cli, swarm.job, peer.node, chunker.plan, "
                "profiles; print('\\n'.join(m.__file__ for m in (cli, swarm.job, peer.node, "
                "chunker.plan, profiles)))")
    for path in where.split():
        assert Path(path).is_relative_to(site / "swarm_encode" / "_program"), path

    # swarm pack from the installed program packs the bytes the checkout packs (each builds:
    # separate caches), and the archive runs.
    installed = run(env_dir / "bin" / "swarm", "pack", "-o", "installed.pyz").split()[0]
    res = subprocess.run([sys.executable, "-c", "import cli; cli.main()", "pack", "-o",
                          str(tmp_path / "checkout.pyz")], capture_output=True, text=True,
                         timeout=300, env=os.environ | {"PYTHONPATH": str(REPO),
                                                        "SWARM_CACHE_DIR": str(tmp_path / "c2")},
                         check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[0] == installed
    assert "fhd-crf" in run(sys.executable, "-S", "-E", tmp_path / "installed.pyz", "profiles")
