"""The shape of the house, read from the source with ``ast`` (nothing is imported).

- No two project modules import each other in a circle, counting imports inside functions
  and under ``TYPE_CHECKING`` (a lazy import hides a circle from Python, not from a reader).
- ``swarm/`` is the sans-I/O core: it imports no trio, httpx, hypercorn, zeroconf, socket or
  subprocess, and never reads the clock (time is passed in).
- Only ``cli.py`` imports ``screens/`` (the presentation), and only ``cli.py`` reads the
  environment.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("screens", "swarm", "peer", "chunker", "profiles")
# What a sans-I/O core must not touch: the runtime, the network, processes.
CORE_FORBIDDEN = ("trio", "httpx", "hypercorn", "zeroconf", "subprocess", "socket", "asyncio",
                  "threading")
# Reading the clock in the core: time.time(), time.monotonic(), datetime.now()...
CLOCK_CALLS = {("time", "time"), ("time", "monotonic"), ("time", "perf_counter"),
               ("time", "time_ns"), ("time", "monotonic_ns"), ("datetime", "now"),
               ("datetime", "utcnow"), ("date", "today")}


def _modules() -> dict[str, Path]:
    mods = {"cli": REPO / "cli.py"}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mods[name] = path
    return mods


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Project modules ``name`` imports, anywhere in its source."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from peer import media` names a module; `from peer.http import respond` not.
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in MODULES:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    return {name: _imports(name, path) for name, path in MODULES.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, if there is any (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return [*stack[stack.index(m):], m]
            if m not in state and (found := visit(m)) is not None:
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)) is not None:
            return found
    return None


def test_the_checker_sees_a_circle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_checker_resolves_relative_and_lazy_imports() -> None:
    graph = _graph()
    assert "peer.http" in graph["peer.node"]  # from .http import ...
    assert "swarm.errors" in graph["cli"]


def test_no_import_circles() -> None:
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()) or [])


def _core_files() -> list[Path]:
    return [p for n, p in MODULES.items() if n == "swarm" or n.startswith("swarm.")]


@pytest.mark.parametrize("path", _core_files(), ids=lambda p: p.name)
def test_the_core_does_no_io_and_reads_no_clock(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
            if node.module in ("time", "datetime"):
                bad = [a.name for a in node.names if (node.module, a.name) in CLOCK_CALLS
                       or a.name in ("time", "monotonic", "perf_counter")]
                assert not bad, f"{path.name}:{node.lineno} imports the clock {bad}"
        for n in names:
            top = n.split(".")[0]
            assert top not in CORE_FORBIDDEN, f"{path.name}:{node.lineno} imports {n}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            owner_name = owner.id if isinstance(owner, ast.Name) else (
                owner.attr if isinstance(owner, ast.Attribute) else "")
            assert (owner_name, node.func.attr) not in CLOCK_CALLS, (
                f"{path.name}:{node.lineno} reads the clock ({owner_name}.{node.func.attr})")


# -- presentation ----------------------------------------------------------------------------
# What the terminal and the HTML page show lives in screens/, beside cli.py: only cli.py uses
# it, and it reads nothing of the network shell, only swarm's events and the report's JSON.
PRESENTATION = {n for n in MODULES if n == "screens" or n.startswith("screens.")}


def test_the_presentation_is_screens() -> None:
    assert {"screens.sinks", "screens.dashboard", "screens.report_html",
            "screens.batch_view"} <= PRESENTATION
    assert not any(n.startswith("peer.") and n.rpartition(".")[2] in (
        "dashboard", "report_html", "batch_view") for n in MODULES)


def test_only_the_cli_imports_the_presentation() -> None:
    graph = _graph()
    users = {n for n, deps in graph.items() if deps & PRESENTATION} - PRESENTATION
    assert users == {"cli"}, users  # so peer/, swarm/, chunker/ never import screens/
    for mod in PRESENTATION:
        shell = {d for d in graph[mod] if d.startswith("peer.")}
        assert not shell, (mod, shell)


def test_rich_is_drawn_only_by_the_presentation() -> None:
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                    else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(m.split(".")[0] == "rich" for m in mods):
                assert name in PRESENTATION | {"cli"}, f"{name} imports rich"


# -- the environment -------------------------------------------------------------------------
# cli.py reads os.environ once (swarm.config.Environment.from_environ) and passes the values
# down; anywhere else a variable would be a setting no caller can see or pass.
ENVIRONMENT_READER = "cli"
# os.environ, os.getenv and kin, and what reads variables behind a path: ~ is $HOME.
ENVIRON_NAMES = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv",
                 "expanduser", "expandvars"}


def _environment_reads(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("os", "os.path"):
            found += [f"{node.lineno}: from {node.module} import {a.name}" for a in node.names
                      if a.name in ENVIRON_NAMES]
        elif isinstance(node, ast.Attribute) and node.attr in ENVIRON_NAMES:
            found.append(f"{node.lineno}: .{node.attr}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "home" and not node.args):
            found.append(f"{node.lineno}: Path.home()")
    return found


def test_the_checker_sees_environment_reads(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("import os\nfrom os import getenv\nfrom pathlib import Path\n"
                   "a = os.environ.get('X')\nb = os.getenv('Y')\nc = Path.home()\n"
                   "d = os.path.expanduser('~')\n", encoding="utf-8")
    assert len(_environment_reads(src)) == 5


def test_only_the_cli_reads_the_environment() -> None:
    files = dict(MODULES)
    files.update({f"swarm_encode.{p.stem}": p
                  for p in sorted((REPO / "swarm_encode").glob("*.py"))})
    readers = {name: reads for name, path in files.items()
               if (reads := _environment_reads(path)) and name != ENVIRONMENT_READER}
    assert not readers, readers
    assert _environment_reads(MODULES[ENVIRONMENT_READER]), "the checker lost cli.py's read"


# -- the job server's edges ------------------------------------------------------------------
# node.py (the routes) and recruit.py talk to a JobServer through its methods only; its
# records are its own. ``job_id`` is the one attribute they may read.
JOBSERVER_USERS = ("peer.node", "peer.recruit")


def _jobserver_methods() -> set[str]:
    tree = ast.parse(MODULES["peer.jobserver"].read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "JobServer")
    return {f.name for f in cls.body if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
            and not f.name.startswith("_") and not any(
                isinstance(d, ast.Name) and d.id == "property" for d in f.decorator_list)}


@pytest.mark.parametrize("name", JOBSERVER_USERS)
def test_node_and_recruit_use_the_job_server_by_its_methods(name: str) -> None:
    allowed = _jobserver_methods() | {"job_id"}
    assert {"claim_remote", "progress_remote", "peer_invited"} <= allowed
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    used = {(node.lineno, node.attr) for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id == "server"}
    assert used, f"{name} no longer calls its job server 'server': update this test"
    assert not {(line, a) for line, a in used if a not in allowed}, sorted(used)
