"""``swarm.pyz``: the program and its pure-Python dependencies in one executable zip.

A new device bootstraps from any running node (``GET /swarm.pyz``) with nothing but a stock
Python >= 3.11 and an ffmpeg. The archive holds the program's own modules and, for every
distribution it depends on (computed from its requirements, for Linux and CPython 3.11+),
the files that distribution installed, less anything compiled: zipimport never loads
extension modules, so msgpack and zeroconf run their pure-Python code, and none of our
dependencies may need a compiled one (pyproject.toml pins what would, such as typer 0.29's
pydantic-core). No ffmpeg binary either: the device uses its own. Byte code for the packing
Python's version rides along (zipimport cannot cache its own), so a device with that version
starts in a third of the time; any other compiles the sources.

The sources are the running interpreter's own: the program's files where its modules were
imported from, the dependencies' files as their RECORD lists them in site-packages. Entries
are sorted and carry a fixed timestamp, so the same files give the same bytes and the
SHA-256 names a build. A process running from a pyz serves that file as it is.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import warnings
import zipfile
import zipimport
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import trio

from swarm.errors import SwarmError

from .proc import niced

__all__ = ["BOOTSTRAP_NAME", "PackError", "Pyz", "bootstrap_line", "build", "get",
           "get_niced", "running_archive"]

BOOTSTRAP_NAME = "swarm.pyz"
ROOT_DIST = "swarm-encode"
# The program's top-level modules and packages (pyproject.toml's py-modules and packages).
PROGRAM = ("cli", "screens", "swarm", "peer", "chunker", "profiles")
PROGRAM_DATA = (".py", ".toml", ".html", ".js", ".css")  # profiles/*.toml, screens/web/
SHEBANG = b"#!/usr/bin/env python3\n"
# Checked before anything else is imported, in syntax any Python 3 (and 2) parses, so an old
# interpreter prints one line instead of a SyntaxError from deep inside a dependency.
MAIN = b'''\
import sys
if sys.version_info < (3, 11):
    sys.stderr.write("swarm: error: swarm.pyz needs Python 3.11 or newer; this is Python %s\\n"
                     % sys.version.split()[0])
    sys.exit(2)
import cli
cli.main()
'''
# The DOS epoch: zip's earliest timestamp, the same for every build.
_EPOCH = (1980, 1, 1, 0, 0, 0)
# Never packed: compiled code and what builds it, byte code, type stubs.
_SKIP_SUFFIXES = (".so", ".pyd", ".dll", ".dylib", ".exe", ".pyc", ".pyo", ".pxd", ".pyx",
                  ".c", ".h", ".cpp", ".pyi")
# Executable formats by magic (ELF, PE, Mach-O 32/64 and fat): imageio-ffmpeg's bundled ffmpeg.
_BINARY_MAGIC = (b"\x7fELF", b"MZ", b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf", b"\xce\xfa\xed\xfe",
                 b"\xcf\xfa\xed\xfe", b"\xca\xfe\xba\xbe")
# Kept from each .dist-info: METADATA (importlib.metadata.version works from the zip) and the
# licence texts, which redistribution must carry.
_LICENSE = re.compile(r"(?i)(licen[cs]e|copying|notice|authors)")
# Markers are evaluated for the devices a pyz is for: Linux (Termux too), CPython 3.11 and up.
_TARGET_PYTHONS = ("3.11", "3.12", "3.13", "3.14")
_TARGET_MACHINES = ("x86_64", "aarch64", "armv7l")
_FORMAT = 1  # bump when the archive's layout changes: the build cache's key includes it


class PackError(SwarmError):
    """swarm.pyz cannot be built from this installation (said in one line, exit 1)."""


@dataclass(frozen=True, slots=True)
class Pyz:
    data: bytes
    sha256: str

    @property
    def size(self) -> int:
        return len(self.data)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# -- requirement markers (PEP 508), just enough for dependency metadata --------------------
_TOKEN = re.compile(r"\s*(?:(?P<str>'[^']*'|\"[^\"]*\")|(?P<op>===|==|!=|<=|>=|~=|<|>|\(|\))"
                    r"|(?P<word>[A-Za-z_][A-Za-z0-9_.]*))")


def _tokens(marker: str) -> list[str]:
    out, pos = [], 0
    while pos < len(marker.rstrip()):
        m = _TOKEN.match(marker, pos)
        if m is None:
            raise ValueError(f"cannot parse requirement marker {marker!r}")
        out.append(m.group().strip())
        pos = m.end()
    return out


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def _compare(left: str, op: str, right: str, versions: bool) -> bool:
    if op in ("in", "not in"):
        return (left in right) == (op == "in")
    a: object
    b: object
    a, b = (_version(left), _version(right)) if versions else (left, right)
    if op == "~=":
        return _version(left) >= _version(right) and \
            _version(left)[: len(_version(right)) - 1] == _version(right)[:-1]
    return {"==": a == b, "===": a == b, "!=": a != b, "<": a < b, "<=": a <= b,  # type: ignore[operator]
            ">": a > b, ">=": a >= b}[op]  # type: ignore[operator]


def _evaluate(marker: str, env: dict[str, str]) -> bool:
    toks = _tokens(marker)
    pos = 0

    def value() -> tuple[str, bool]:
        nonlocal pos
        tok = toks[pos]
        pos += 1
        if tok[0] in "'\"":
            return tok[1:-1], False
        if tok not in env:
            raise ValueError(f"unknown marker variable {tok!r} in {marker!r}")
        return env[tok], tok in ("python_version", "python_full_version")

    def atom() -> bool:
        nonlocal pos
        if toks[pos] == "(":
            pos += 1
            result = disjunction()
            pos += 1  # ")"
            return result
        left, lv = value()
        op = toks[pos]
        pos += 1
        if op == "not":
            op, pos = "not in", pos + 1
        right, rv = value()
        if left == "\0extra" or right == "\0extra":
            return False  # extras are never wanted in the pyz
        return _compare(left, op, right, lv or rv)

    def conjunction() -> bool:
        nonlocal pos
        result = atom()
        while pos < len(toks) and toks[pos] == "and":
            pos += 1
            result = atom() and result
        return result

    def disjunction() -> bool:
        nonlocal pos
        result = conjunction()
        while pos < len(toks) and toks[pos] == "or":
            pos += 1
            result = conjunction() or result
        return result

    return disjunction()


def _wanted(requirement: str) -> str | None:
    """The distribution a requirement names, if some target device needs it."""
    name_part, _, marker = requirement.partition(";")
    name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", name_part)
    if name is None:
        raise ValueError(f"cannot parse requirement {requirement!r}")
    if marker.strip():
        envs = [{"python_version": py, "python_full_version": py + ".0", "os_name": "posix",
                 "sys_platform": "linux", "platform_system": "Linux", "platform_machine": m,
                 "implementation_name": "cpython", "platform_python_implementation": "CPython",
                 "extra": "\0extra"} for py in _TARGET_PYTHONS for m in _TARGET_MACHINES]
        if not any(_evaluate(marker, env) for env in envs):
            return None
    return name.group(1)


def _root_requirements(program_dir: Path) -> list[str]:
    """The program's own requirements: from pyproject.toml in a source checkout (an editable
    install's metadata may be stale), else from the installed distribution's metadata."""
    pyproject = program_dir / "pyproject.toml"
    if pyproject.is_file():
        import tomllib

        return list(tomllib.loads(pyproject.read_text("utf-8"))["project"]["dependencies"])
    return list(metadata.distribution(ROOT_DIST).requires or [])


def _dependencies(program_dir: Path) -> list[metadata.Distribution]:
    found: dict[str, metadata.Distribution] = {}
    todo = list(_root_requirements(program_dir))
    while todo:
        name = _wanted(todo.pop())
        if name is None or _norm(name) in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError as exc:
            raise PackError(f"cannot pack: dependency {name} is not installed") from exc
        found[_norm(name)] = dist
        todo.extend(dist.requires or [])
    return [found[k] for k in sorted(found)]


# -- files ---------------------------------------------------------------------------------
def _packable(rel: str, data: bytes) -> bool:
    parts = rel.split("/")
    if "__pycache__" in parts or rel.endswith(_SKIP_SUFFIXES):
        return False
    return not data.startswith(_BINARY_MAGIC)


def _dist_files(dist: metadata.Distribution) -> dict[str, bytes]:
    if dist.files is None:
        raise PackError(f"cannot pack: {dist.metadata['Name']} lists no files (no RECORD)")
    out: dict[str, bytes] = {}
    for f in dist.files:
        rel = f.as_posix()
        if rel.startswith("../") or rel.startswith("/"):  # console scripts, data outside
            continue
        top, _, rest = rel.partition("/")
        if top.endswith(".dist-info"):
            if rest != "METADATA" and not _LICENSE.search(rest):
                continue
        path = Path(str(f.locate()))
        if not path.is_file():
            continue
        data = path.read_bytes()
        if _packable(rel, data):
            out[rel] = data
    return out


def _program_files() -> tuple[dict[str, bytes], Path]:
    out: dict[str, bytes] = {}
    base: Path | None = None
    for name in PROGRAM:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise PackError(f"cannot pack: module {name} not found")
        origin = Path(spec.origin)
        if spec.submodule_search_locations is None:
            out[origin.name] = origin.read_bytes()
            base = origin.parent
            continue
        pkg = origin.parent
        for path in sorted(pkg.rglob("*")):
            rel = path.relative_to(pkg.parent).as_posix()
            if path.is_file() and path.suffix in PROGRAM_DATA and _packable(rel, b""):
                out[rel] = path.read_bytes()
    assert base is not None
    return out, base


def _byte_code(files: dict[str, bytes]) -> dict[str, bytes]:
    """``x.pyc`` beside each ``x.py``, for the packing Python's version only.

    zipimport cannot write byte code, so without it every start compiles the ~1,200 modules
    it imports anew: `--help` took 2.0 s instead of 0.6 s here, and 17 s under qemu. The
    .pyc files are unchecked-hash ones (PEP 552: no timestamps, the same bytes every build);
    another Python version finds their magic number foreign and compiles the source.
    """
    from importlib._bootstrap_external import _code_to_hash_pyc  # type: ignore[attr-defined]
    from importlib.util import source_hash

    out: dict[str, bytes] = {}
    for name, source in files.items():
        if name.endswith(".py"):
            try:
                with warnings.catch_warnings():  # old escapes in dependencies: theirs to fix
                    warnings.simplefilter("ignore")
                    code = compile(source, name, "exec", dont_inherit=True)
            except SyntaxError:  # e.g. a module for another Python; it fails there as well
                continue
            out[name + "c"] = _code_to_hash_pyc(code, source_hash(source), checked=False)
    return out


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    buf.write(SHEBANG)
    with zipfile.ZipFile(buf, "w") as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.create_system = 3  # Unix, wherever it was built
            info.external_attr = 0o100644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, files[name], compresslevel=9)
    return buf.getvalue()


def running_archive() -> str | None:
    """The pyz this process runs from, or None when it runs from installed files."""
    spec = importlib.util.find_spec("cli")
    loader = spec.loader if spec is not None else None
    return loader.archive if isinstance(loader, zipimport.zipimporter) else None


def build(cache_dir: Path | None = None) -> Pyz:
    """Pack the running program (blocking: seconds of CPU unless cached in ``cache_dir``,
    ``swarm.config.Environment.cache_dir``; use a thread)."""
    archive = running_archive()
    if archive is not None:
        data = Path(archive).read_bytes()
    else:
        files, base = _program_files()
        clash = [n for n in files if n == "__main__.py"]
        if clash:
            raise PackError("cannot pack: the program has a top-level __main__.py")
        for dist in _dependencies(base):
            for rel, blob in _dist_files(dist).items():
                if rel in files:
                    raise PackError(f"cannot pack: {rel} is in two distributions")
                files[rel] = blob
        files["__main__.py"] = MAIN
        data = _cached_zip(files, cache_dir)
    return Pyz(data, hashlib.sha256(data).hexdigest())


def _cached_zip(files: dict[str, bytes], folder: Path | None) -> bytes:
    """The archive of ``files`` with their byte code, from the cache when it holds it.

    Compiling is most of a build (~3 s of CPU here, more on a Pi) and every `join` and
    `encode` needs the archive: the cache file is named by a digest of every input and of
    the Python that compiles, so it is the same bytes a build would make, or absent.
    """
    key = hashlib.sha256(f"{_FORMAT} {sys.implementation.cache_tag}".encode())
    for name in sorted(files):
        key.update(f"\0{name}\0{len(files[name])}\0".encode())
        key.update(files[name])
    cached = folder / f"pyz-{key.hexdigest()[:32]}.pyz" if folder is not None else None
    if cached is not None:
        with suppress(OSError):
            return cached.read_bytes()
    data = _zip(files | _byte_code(files))
    _check_starts(data)
    if folder is None or cached is None:
        return data
    with suppress(OSError):  # a cache we cannot write only costs the next start a build
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("pyz-*.pyz"):
            old.unlink()
        tmp = cached.with_suffix(f".tmp{os.getpid()}")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, cached)
        finally:
            tmp.unlink(missing_ok=True)
    return data


# The start-up check imports every module a node and a coordinator load, and runs one
# command through the CLI: typer 0.29 imports pydantic only to parse a command's options.
_CHECK = ("import sys; sys.path.insert(0, sys.argv[1]); "
          "import peer.node, peer.coordinator, peer.discovery, peer.worker, cli; "
          "sys.argv = ['swarm', 'encode', '--help']; cli.main()")


def _check_starts(data: bytes) -> None:
    """Refuse an archive whose program does not import on a bare Python (`-S -E`).

    What breaks it is a dependency that needs compiled code (typer 0.29's pydantic-core):
    that is found here, once per new build, not by every device that fetches the file.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, BOOTSTRAP_NAME)
        with open(path, "wb") as f:
            f.write(data)
        res = subprocess.run([sys.executable, "-S", "-E", "-c", _CHECK, path],
                             capture_output=True, text=True, timeout=CHECK_TIMEOUT_S,
                             check=False)
    if res.returncode != 0:
        lines = res.stderr.strip().splitlines() or [f"exit {res.returncode}"]
        raise PackError(f"the packed program does not start without compiled modules: "
                           f"{lines[-1]} (is a dependency newer than pyproject.toml allows?)")


# Wall time for that check (1-2 CPU s); a node's build runs it with none (it may be paused).
CHECK_TIMEOUT_S: float | None = 300
# A node builds in a child Python at the lowest priority, and paused while the node encodes:
# a build is about 4 CPU s here (compiling ~1,200 modules, deflating 10 MB, the check above;
# more on a Pi), and in a thread of the node it took that from the device's first jobs
# (bench/hetero: a 0.15-CPU peer still building through the warm-up job and the timed one).
# The nice value alone is not enough: under a CPU quota (a container, cgroups) a niced task
# alone on a core spends the quota its encoder shares (measured: 1.4 CPU s of the build
# against 1.9 of the encoder in the same 23 s).
BUILD_NICE = 19
# How often the build looks whether the node has started or stopped encoding.
PAUSE_CHECK_S = 0.5
# The child: the parent's import path first, so that it packs the same program and
# dependencies the node runs; argv: that path (JSON), the cache folder ("" for none). The
# archive comes back on stdout: nothing on disk to leave behind if either side dies.
# SIGINT is made KeyboardInterrupt again: a program started in the background of a script
# inherits it ignored, and then a cancel would wait out CANCEL_GRACE_S for nothing.
_CHILD = ("import json, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
          "sys.path[:0] = json.loads(sys.argv[1]); "
          "from pathlib import Path; from peer import pyz; pyz.CHECK_TIMEOUT_S = None; "
          "built = pyz.build(Path(sys.argv[2]) if sys.argv[2] else None); "
          "sys.stdout.buffer.write(built.data)")
# A cancelled build gets SIGINT first (its check's subprocess and temporary folder are
# cleaned up on KeyboardInterrupt), then SIGKILL after this long.
CANCEL_GRACE_S = 5.0

_lock = threading.Lock()
_built: Pyz | None = None


def get(cache_dir: Path | None = None) -> Pyz:
    """This process's pyz, built on first use (thread-safe; blocking)."""
    global _built
    with _lock:
        if _built is None:
            _built = build(cache_dir)
        return _built


def bootstrap_line(address: str) -> str:
    """The one command that makes another device a peer, fetching the pyz from ``address``."""
    return f"curl -O http://{address}/{BOOTSTRAP_NAME} && python3 {BOOTSTRAP_NAME} join"


async def get_niced(cache_dir: Path | None = None,
                    busy: Callable[[], bool] = lambda: False) -> Pyz:
    """``get`` for a running node: built by a child Python at ``BUILD_NICE``, stopped
    (SIGSTOP) whenever ``busy()`` says the node encodes, so that it never takes CPU (or this
    process's GIL) from an encoder; cancelling kills it."""
    global _built
    if _built is not None:
        return _built
    if running_archive() is not None:  # the file itself: read, nothing to build
        return await trio.to_thread.run_sync(get, cache_dir)
    argv = niced([sys.executable, "-c", _CHILD, json.dumps(sys.path),
                  str(cache_dir) if cache_dir is not None else ""], BUILD_NICE)
    done: list[subprocess.CompletedProcess[bytes]] = []

    async def run(task_status: trio.TaskStatus[trio.Process] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        # Its own process group (not session: that would be its own autogroup, which the
        # nice value does not reach), so that signals reach the check it runs too.
        done.append(await trio.run_process(
            argv, capture_stdout=True, capture_stderr=True, check=False, process_group=0,
            deliver_cancel=_stop_group, task_status=task_status))
        nursery.cancel_scope.cancel()  # nothing left to pause

    async with trio.open_nursery() as nursery:
        proc = await nursery.start(run)
        nursery.start_soon(_pause_while, proc, busy)
    res = done[0]
    if res.returncode != 0:
        lines = res.stderr.decode("utf-8", "replace").strip().splitlines()
        tail = lines[-1] if lines else f"exit status {res.returncode}"
        raise PackError(f"building {BOOTSTRAP_NAME} failed: "
                        f"{tail.removeprefix('peer.pyz.PackError: ')}")
    data = res.stdout
    with _lock:
        if _built is None:
            _built = Pyz(data, hashlib.sha256(data).hexdigest())
        return _built


async def _pause_while(proc: trio.Process, busy: Callable[[], bool]) -> None:
    """Keep the build's process group stopped while ``busy()``."""
    stopped = False
    try:
        while True:
            if busy() != stopped:
                stopped = not stopped
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGSTOP if stopped else signal.SIGCONT)
            await trio.sleep(PAUSE_CHECK_S)
    finally:
        if stopped:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGCONT)


async def _stop_group(proc: trio.Process) -> None:
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
        os.killpg(proc.pid, signal.SIGCONT)  # a paused build takes the signal now
        with trio.move_on_after(CANCEL_GRACE_S):
            await proc.wait()
            return
        os.killpg(proc.pid, signal.SIGKILL)
