"""swarm.pyz: one deterministic file that runs on a Python with nothing installed, served by
every node, and the bootstrap line that names this node by its LAN address.

"Nothing installed" is `python -S -E`: no site-packages, no PYTHONPATH, only the standard
library and the archive. The multi-host parts run in network-namespace hosts, which have no
default route (tests/netns.py), as an isolated LAN has none.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from contextlib import suppress
from pathlib import Path

import httpx
import pytest
import trio
from swarm_hosts import Swarm

import peer.node
from chunker.tools import find_ffmpeg
from chunker.verify import check_output
from media import FFMPEG, decode_errors, media_info
from netns import lan, requires_netns
from peer import pyz
from peer.node import PYZ_DIGEST_HEADER, PYZ_PIECE, Node, NodeConfig
from peer.options import NetworkSettings
from screens.dashboard import JobView, JoinView
from swarm.config import Timings
from swarm.events import NodeUp, NoPeers, PyzReady
from swarm.protocol import NodeInfo, decode

REPO = Path(__file__).resolve().parent.parent
SWARM = [sys.executable, "-c", "import cli; cli.main()"]
LINE = re.compile(r"curl -O http://(\S+)/swarm\.pyz && python3 swarm\.pyz join")
DIGEST = re.compile(r"# sha256 ([0-9a-f]{64})")


def _env(tmp: Path) -> dict[str, str]:
    # HOME: the benchmark cache and such stay in the test's folder.
    env = os.environ | {"PYTHONPATH": str(REPO), "HOME": str(tmp)}
    if "SWARM_FFMPEG" not in env and shutil.which("ffmpeg") is None:
        # The pyz brings no ffmpeg: a device has one of its own, here the tests' binary.
        env["SWARM_FFMPEG"] = FFMPEG
    return env


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`swarm pack`, run as a user runs it."""
    folder = tmp_path_factory.mktemp("pyz")
    out = folder / "swarm.pyz"
    res = subprocess.run([*SWARM, "pack", "-o", str(out)], capture_output=True, text=True,
                         timeout=120, env=_env(folder), cwd=folder, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"{hashlib.sha256(out.read_bytes()).hexdigest()}  {out}\n"
    return out


def _bare(pyz_path: Path, *args: str, cwd: Path, timeout: float = 120
          ) -> subprocess.CompletedProcess[str]:
    """Run the pyz as a device with a stock Python and nothing else would."""
    return subprocess.run([sys.executable, "-S", "-E", str(pyz_path), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=_env(cwd) | {"COLUMNS": "120"}, check=False)


# -- the file ------------------------------------------------------------------------------
def test_pack_is_deterministic_and_holds_no_compiled_code(packed: Path, tmp_path: Path
                                                          ) -> None:
    again = tmp_path / "again.pyz"
    res = subprocess.run([*SWARM, "pack", "-o", str(again)], capture_output=True, text=True,
                         timeout=120, env=_env(tmp_path), cwd=tmp_path, check=False)
    assert res.returncode == 0, res.stderr
    assert again.read_bytes() == packed.read_bytes()  # so its SHA-256 names the build
    cached = subprocess.run([*SWARM, "pack", "-o", str(tmp_path / "cached.pyz")],
                            capture_output=True, text=True, timeout=120, env=_env(tmp_path),
                            cwd=tmp_path, check=True)  # this time from the build cache
    assert cached.stdout.split()[0] == hashlib.sha256(again.read_bytes()).hexdigest()
    assert os.access(packed, os.X_OK)
    data = packed.read_bytes()
    assert data.startswith(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
        assert names == sorted(names)
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        for want in ("__main__.py", "cli.py", "swarm/protocol.py", "peer/pyz.py",
                     "chunker/tools.py", "profiles/hd.toml", "msgpack/fallback.py",
                     "zeroconf/_dns.py", "trio/__init__.py", "typer/main.py"):
            assert want in names, want
        for name in names:
            assert not name.endswith((".so", ".pyd", ".dylib")), name
            if name.endswith(".py"):  # byte code for this Python beside each module
                assert name + "c" in names, name
            assert not zf.read(name).startswith(b"\x7fELF"), name  # no ffmpeg, no modules
        assert not any("__pycache__" in n or n.startswith("imageio_ffmpeg/binaries/ffmpeg")
                       for n in names)
        assert not any(n.startswith(("pydantic", "pytest", "hypothesis")) for n in names)
    assert len(data) < 16_000_000  # 10.3 MB with typer 0.28, trio 0.35, rich 15


def test_every_command_runs_from_the_pyz_on_a_bare_python(packed: Path, tmp_path: Path
                                                          ) -> None:
    # Only the standard library and the archive: the pure fallbacks are what runs.
    probe = subprocess.run(
        [sys.executable, "-S", "-E", "-c",
         f"import sys; sys.path.insert(0, {str(packed)!r}); import cli, peer.coordinator, "
         "peer.discovery, msgpack, zeroconf._dns as d; "
         "print(msgpack.Packer.__module__, d.__file__.endswith(('.py', '.pyc')), "
         "sorted({m.split('.')[0] for m, v in list(sys.modules.items()) "
         "if getattr(v, '__file__', None) and not v.__file__.startswith("
         f"({str(packed)!r}, sys.base_prefix))}}))"],
        capture_output=True, text=True, timeout=120, check=True)
    assert probe.stdout.split(maxsplit=2) == ["msgpack.fallback", "True", "[]\n"], probe

    for command in ("encode", "jobs", "demo", "profiles", "join", "peers", "bench", "pack"):
        res = _bare(packed, command, "--help", cwd=tmp_path)
        assert res.returncode == 0 and "Usage" in res.stdout, (command, res.stderr)
    res = _bare(packed, "profiles", cwd=tmp_path)
    assert res.returncode == 0 and "hd-crf" in res.stdout, res.stderr
    res = _bare(packed, "profiles", "--json", cwd=tmp_path)
    assert {p["name"] for p in json.loads(res.stdout)} >= {"hd", "480p", "fhd"}
    res = _bare(packed, "jobs", "--json", cwd=tmp_path)
    assert res.returncode == 0 and json.loads(res.stdout) == [], res.stderr
    res = _bare(packed, "peers", "--wait", "0.5", "--json", cwd=tmp_path)
    assert res.returncode == 0 and isinstance(json.loads(res.stdout), list), res.stderr
    res = _bare(packed, "pack", "-o", str(tmp_path / "self.pyz"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "self.pyz").read_bytes() == packed.read_bytes()
    # A real encode, all the way to a verified output, with the ffmpeg it finds.
    res = _bare(packed, "demo", "-p", "480p", "-w", "1", cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = Path(res.stdout.strip())
    check_output(media_info(out), media_info(tmp_path / "swarm-demo.mp4"))
    assert decode_errors(out) == ""
    res = _bare(packed, "encode", str(tmp_path / "missing.mp4"), cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.startswith("swarm: error: "), res.stderr


def test_pack_refuses_a_program_that_needs_compiled_modules() -> None:
    # What typer 0.29 did: a command's options import pydantic, whose core is compiled and
    # so absent from the archive. The check runs the archive on a bare Python, as devices do.
    needs_compiled = "def main():\n    import pydantic_core._pydantic_core\n"
    files = {"cli.py": needs_compiled.encode(), "peer/__init__.py": b""} | {
        f"peer/{m}.py": b"" for m in ("node", "coordinator", "discovery", "worker")}
    with pytest.raises(pyz.PackError, match="without compiled modules: ModuleNotFoundError"):
        pyz._check_starts(pyz._zip(files))
    pyz._check_starts(pyz._zip(files | {"cli.py": b"def main():\n    pass\n"}))


def _older_pythons() -> list[str]:
    found = []
    for path in sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/*/bin/python3"))
                       + [f"/usr/bin/python3.{m}" for m in range(6, 11)]):
        if not os.access(path, os.X_OK):
            continue
        ver = subprocess.run([path, "-c", "import sys; print(sys.version_info[:2] < (3, 11))"],
                             capture_output=True, text=True, timeout=30, check=False)
        if ver.stdout.strip() == "True":
            found.append(path)
    return found


def test_an_older_python_is_told_in_one_line(packed: Path, tmp_path: Path) -> None:
    olds = _older_pythons()
    if not olds:
        pytest.skip("no Python older than 3.11 here (pyenv or /usr/bin)")
    for python in olds:
        res = subprocess.run([python, "-S", "-E", str(packed), "join"], capture_output=True,
                             text=True, timeout=60, cwd=tmp_path, check=False)
        assert res.returncode == 2, (python, res.stderr)
        assert res.stdout == ""
        lines = res.stderr.splitlines()
        assert len(lines) == 1 and "needs Python 3.11 or newer" in lines[0], (python, lines)


# -- served by every node ------------------------------------------------------------------
async def test_a_node_serves_its_pyz_with_the_digest_in_a_header_and_info() -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            node = Node(NodeConfig(name="server", port=0, host="127.0.0.1", advertise=False),
                        find_ffmpeg())
            await nursery.start(node.run)
            base = f"http://127.0.0.1:{node.port}"
            async with httpx.AsyncClient(timeout=30) as client:
                # Asked while it may still be building: the answer waits, the loop does not.
                got = await client.get(f"{base}/swarm.pyz")
                assert got.status_code == 200
                digest = hashlib.sha256(got.content).hexdigest()
                assert got.headers[PYZ_DIGEST_HEADER] == digest
                assert got.content == (await trio.to_thread.run_sync(pyz.get)).data
                info = decode((await client.get(f"{base}/v1/info")).content, NodeInfo)
                assert info.pyz_sha256 == digest
                head = await client.head(f"{base}/swarm.pyz")
                assert head.status_code == 200 and head.content == b""
                assert head.headers["content-length"] == str(len(got.content))
                assert head.headers[PYZ_DIGEST_HEADER] == digest
                assert (await client.post(f"{base}/swarm.pyz")).status_code == 405
                # Streamed in bounded pieces, not one 4 MB body.
                async with client.stream("GET", f"{base}/swarm.pyz") as stream:
                    sizes = [len(p) async for p in stream.aiter_raw()]
                assert sum(sizes) == len(got.content) and max(sizes) <= PYZ_PIECE
            nursery.cancel_scope.cancel()


async def test_building_the_pyz_does_not_block_the_node(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pyz, "_built", None)  # none in this process: the node builds it now
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            # No build cached on disk in tmp_path.
            node = Node(NodeConfig(name="busy", port=0, host="127.0.0.1", advertise=False,
                                   cache_dir=tmp_path), find_ffmpeg())
            await nursery.start(node.run)
            base = f"http://127.0.0.1:{node.port}"
            answered_while_building = 0
            async with httpx.AsyncClient(timeout=30) as client:
                while node.pyz is None:
                    # A loop blocked by the build would answer only once it is over.
                    r = await client.get(f"{base}/v1/info")
                    answered_while_building += node.pyz is None and r.status_code == 200
                assert answered_while_building > 0
            nursery.cancel_scope.cancel()


def _builders() -> dict[int, tuple[int, str, int]]:
    """This process's children building a pyz: pid -> (nice value, state, CPU ticks)."""
    found = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            cmdline = Path(stat).with_name("cmdline").read_bytes()
        except OSError:
            continue
        # stat's fields 3 (state), 4 (ppid), 14-15 (utime, stime) and 19 (nice): 0, 1,
        # 11-12 and 16 after the command's name.
        if int(fields[1]) == os.getpid() and b"from peer import pyz" in cmdline:
            found[int(Path(stat).parent.name)] = (int(fields[16]), fields[0],
                                                  int(fields[11]) + int(fields[12]))
    return found


def _cmdlines() -> list[bytes]:
    out = []
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        with suppress(OSError):
            out.append(Path(path).read_bytes().replace(b"\0", b" "))
    return out


def _left(pids: dict[int, int], folder: Path) -> tuple[list[int], list[str]]:
    """Which of ``pids`` still exist, and what is in ``folder``."""
    return ([p for p in pids if Path(f"/proc/{p}").exists()],
            sorted(p.name for p in folder.iterdir()))


async def test_a_node_builds_its_pyz_in_a_niced_child_and_a_cancel_kills_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A build is 8-10 CPU s: run at the lowest priority, it waits for an idle CPU instead of
    slowing the device's encodes (bench/hetero), and stopping the node stops it, leaving no
    file behind."""
    monkeypatch.setattr(pyz, "_built", None)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            node = Node(NodeConfig(name="nice", port=0, host="127.0.0.1", advertise=False,
                                   cache_dir=tmp_path), find_ffmpeg())
            await nursery.start(node.run)
            while not (builders := _builders()):  # noqa: ASYNC110 (a child: no event)
                await trio.sleep(0.05)
            assert [nice for nice, _, _ in builders.values()] == [pyz.BUILD_NICE]
            # Asked for it meanwhile, and not waiting, one is told why there is none yet.
            monkeypatch.setattr(peer.node, "PYZ_WAIT_S", 0.0)
            async with httpx.AsyncClient(timeout=30) as client:
                got = await client.get(f"http://127.0.0.1:{node.port}/swarm.pyz")
            assert got.status_code == 503 and "still being built" in got.text
            nursery.cancel_scope.cancel()
    assert node.pyz is None and pyz._built is None
    assert not _builders()
    assert _left(builders, tmp_path) == ([], [])  # reaped (no zombie), no part-written file
    with trio.fail_after(10):  # the child's check, stopped by the same signal
        while any(b"-S -E -c import sys; sys.path.insert" in c  # noqa: ASYNC110
                  for c in _cmdlines()):
            await trio.sleep(0.1)
    # Not cancelled, the same child's archive is the one this process would pack.
    with trio.fail_after(120):
        built = await pyz.get_niced(tmp_path)
    assert built == pyz.build(tmp_path) and pyz._built is built
    files = _left(builders, tmp_path)[1]
    assert len(files) == 1 and files[0].startswith("pyz-") and files[0].endswith(".pyz")


async def test_a_build_waits_while_the_node_encodes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a CPU quota a niced build alone on a core still spends the quota the encoder
    shares (bench/hetero), so it is stopped outright while the node works."""
    monkeypatch.setattr(pyz, "_built", None)
    busy = True
    built: list[pyz.Pyz] = []

    async def build() -> None:
        built.append(await pyz.get_niced(tmp_path, busy=lambda: busy))

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(build)
            while not _builders():  # noqa: ASYNC110 (a child: no event)
                await trio.sleep(0.05)
            await trio.sleep(2 * pyz.PAUSE_CHECK_S)
            before = _builders()
            await trio.sleep(1.0)
            after = _builders()
            assert [state for _, state, _ in after.values()] == ["T"]  # stopped
            assert after == before  # and not a tick of CPU meanwhile
            busy = False
    assert built and built[0] == pyz.build(tmp_path)
    assert not _builders()


async def test_a_coordinators_node_builds_its_pyz_only_when_it_is_wanted() -> None:
    """A build is seconds of CPU (more on a Pi) that a coordinator's own encode would lose
    (bench/lan: 8 of a 0.3-CPU coordinator's 10 Python CPU seconds): its node builds the pyz
    for the first request, or for the "no peers yet" hint (tests below), not at start."""
    await trio.to_thread.run_sync(pyz.get)  # built in this process: the node's get is instant
    config = NodeConfig.coordinating(NetworkSettings(enabled=True, discover=False,
                                                     name="coord", port=0), Timings())
    config = dataclasses.replace(config, host="127.0.0.1")
    events: list[object] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            node = Node(config, find_ffmpeg(), coordinator=True, on_event=events.append)
            await nursery.start(node.run)
            await trio.sleep(1.0)
            assert node.pyz is None and not any(isinstance(e, PyzReady) for e in events)
            async with httpx.AsyncClient(timeout=30) as client:
                got = await client.get(f"http://127.0.0.1:{node.port}/swarm.pyz")
            assert got.status_code == 200
            assert got.content == (await trio.to_thread.run_sync(pyz.get)).data
            assert node.pyz is not None and any(isinstance(e, PyzReady) for e in events)
            nursery.cancel_scope.cancel()


# -- the bootstrap line, by LAN address --------------------------------------------------------
def _fetch(url: str) -> tuple[bytes, str]:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read(), r.headers[PYZ_DIGEST_HEADER]


@requires_netns
@pytest.mark.netns
def test_join_and_a_lonely_encode_print_the_line_with_the_lan_address(tmp_path: Path) -> None:
    src = tmp_path / "src.mp4"
    subprocess.run([FFMPEG, "-nostdin", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=320x180:rate=25:duration=2", "-c:v", "libx264", str(src)],
                   check=True, timeout=60)
    with lan(2) as net, Swarm(net, tmp_path, budget_s=120) as sw:
        a, b = net.hosts  # no default route in either: the address comes from eth0
        join = sw.join(a, "alpha")
        join.wait_for("# sha256 ")
        text = join.stderr()
        assert f"ready on port 7800 at {a.address}:7800" in text
        assert LINE.search(text) and LINE.search(text).group(1) == f"{a.address}:7800"
        assert f"curl -O http://{a.address}:7800/swarm.pyz && python3 swarm.pyz join\n" in text
        digest = DIGEST.search(text).group(1)  # type: ignore[union-attr]
        body, header = b.run([sys.executable, "-c", "import sys, urllib.request as u; "
                              "r = u.urlopen(sys.argv[1], timeout=30); "
                              "d = r.read(); print(len(d), r.headers['x-swarm-pyz-sha256'])",
                              f"http://{a.address}:7800/swarm.pyz"], timeout=60
                             ).stdout.split()
        assert header == digest and int(body) > 1_000_000
        assert join.stop() == 0

        # A coordinator that finds nobody says, once, how to add a device: from its own copy.
        enc = sw.encode(b, src, tmp_path / "out.mp4", "--no-local")
        enc.wait_for("no peers yet")
        line = next(x for x in enc.stderr().splitlines() if "no peers yet" in x)
        assert LINE.search(line).group(1) == f"{b.address}:7800"  # type: ignore[union-attr]
        assert DIGEST.search(line).group(1) == digest  # type: ignore[union-attr]
        assert enc.stop() == 130
        assert enc.stderr().count("no peers yet") == 1


def test_dashboards_show_the_whole_line() -> None:
    line = "curl -O http://10.77.0.10:7800/swarm.pyz && python3 swarm.pyz join"
    sha = "ab" * 32
    from rich.console import Console

    def render(view: JoinView | JobView, width: int) -> str:
        con = Console(record=True, width=width, height=40, file=io.StringIO())
        con.print(view.render(5.0, width, 40))
        return "".join(con.export_text().split("\n"))  # folded lines joined back

    join = JoinView()
    join.feed(NodeUp(7800, "pi", "ab12cd34", "10.77.0.10:7800"), 0.0)
    join.feed(PyzReady(sha, 4_000_000, "10.77.0.10:7800", line), 1.0)
    for width in (60, 120):
        text = render(join, width)
        assert "10.77.0.10:7800" in text and line in text and f"# sha256 {sha}" in text
    job = JobView()
    job.feed(NoPeers(5.0, "10.77.0.10:7800", line, sha), 5.0)
    assert line in render(job, 60)
