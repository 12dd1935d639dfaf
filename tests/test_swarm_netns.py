"""The whole swarm across simulated hosts: the real `swarm` CLI in network namespaces.

Each host is a network namespace on one bridge (tests/netns.py), so peers find each other
by mDNS over real multicast and talk over real TCP, exactly as separate machines on a LAN
do: no --peer unless a test says so. What the tests prove, through the `--report` JSON,
the processes left running and the files left on disk:

- every host (the coordinator and two joins) encodes chunks, and the output is frame-exact;
- a peer killed mid-chunk (SIGKILL), or cut off the network mid-chunk (lease expiry), costs
  a retry, not the job; the cut-off peer drops the job by itself;
- a peer that joins after the encode began gets work;
- peers of another swarm (other secret, or none) get nothing, even when named with --peer,
  and `swarm peers` shows them as foreign;
- Ctrl-C on `encode` leaves no process and no file on any host, and the peers are idle again
  (a second job can use them);
- one job on three ffmpeg builds (coordinator 9.x, peers on Debian's 5.1 and on 7.0.2): every
  host encodes and the output is exact and decodes silently on each build.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from swarm_hosts import Swarm, SwarmProcess, ffmpeg_pids, processes

import ffmpegs
from chunker.plan import default_chunk_seconds
from chunker.verify import check_output
from media import FFMPEG, decode_errors, media_info, min_psnr
from netns import Host, lan, requires_netns

pytestmark = [pytest.mark.netns, pytest.mark.slow, requires_netns]

# 20 one-second chunks (a keyframe every second) of 640x360: each takes a few tenths of a
# second to encode here, so a job lasts long enough that peers found by mDNS a second or two
# after the start still get several chunks, while the whole file stays within minutes.
SOURCE_S = 20
SHORT_S = 4
TWO_MINUTES_S = 120
FPS = 25
PROFILE = "480p"
CHUNK_ARGS = ("-p", PROFILE, "--chunk-seconds", "1")
# The cut-off peer's link: a heavy 1 s chunk (~0.5 MB) takes about a second to arrive.
ALPHA_LINK_BIT = 4_000_000
# Per-test budget (all waits and processes inside it); each test takes 10-30 s here.
BUDGET_S = 100
# Lease for the tests where a peer vanishes without its TCP connections closing: long
# enough for a loaded 2-core machine to start ffmpeg and report (every second), short enough
# that the chunk comes back quickly. The product's default is 15 s.
SHORT_LEASE_S = "4"
# A chunk shifted by one frame of testsrc2 scores below 20 dB; a correct encode far above.
MIN_FRAME_PSNR_DB = 30.0
# A peer cut off from its coordinator stops its encoder after Timings.coordinator_gone_s
# (6 s) plus at most one HTTP timeout (10 s).
PEER_IDLE_S = 20.0
# One told by the coordinator's goodbye (Ctrl-C) stops it at once.
GOODBYE_IDLE_S = 5.0
_ATTEMPT = re.compile(r"attempt=c(\d{5})a(\d{3})")


def _make(path: Path, seconds: int, *x264: str, size: str = "640x360") -> Path:
    subprocess.run(
        [FFMPEG, "-nostdin", "-v", "error", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={FPS}:duration={seconds}",
         "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}",
         "-c:v", "libx264", "-preset", "veryfast", *x264, "-g", str(FPS), "-bf", "2",
         "-c:a", "aac", "-shortest", str(path)],
        check=True, timeout=60)
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("swarm-src")
    return {"long": _make(folder / "long.mp4", SOURCE_S),
            "short": _make(folder / "short.mp4", SHORT_S),
            # Long enough that the default chunk length depends on the slot count; small
            # enough to encode in seconds.
            "two_minutes": _make(folder / "two_minutes.mp4", TWO_MINUTES_S, size="320x180"),
            # ~10 MB: more than the socket buffers between a coordinator and a stalled peer
            # hold, so a stream to a peer that vanishes mid-chunk really backs up.
            "heavy": _make(folder / "heavy.mp4", SOURCE_S, "-preset", "ultrafast",
                           "-qp", "4")}


@pytest.fixture
def outdir(tmp_path: Path) -> Path:
    """Where outputs and reports go: nothing else, so leftovers are easy to see."""
    (tmp_path / "out").mkdir()
    (tmp_path / "logs").mkdir()
    return tmp_path / "out"


def _logs(outdir: Path) -> Path:
    return outdir.parent / "logs"


def _report(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _chunks_by_peer(report: dict[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in report["chunks"]:
        counts[c["peer"]] = counts.get(c["peer"], 0) + 1
    return counts


def _assert_frame_exact(src: Path, out: Path, report: dict[str, Any]) -> None:
    assert media_info(out).video.frames == media_info(src).video.frames
    assert decode_errors(out) == ""
    assert sum(c["frames"] for c in report["chunks"]) == report["frames"]
    assert sorted(c["index"] for c in report["chunks"]) == list(range(len(report["chunks"])))


def _joined(sw: Swarm, *specs: tuple[Host, str, tuple[str, ...]]) -> list[SwarmProcess]:
    """Start joins side by side, then wait until each is advertised on mDNS."""
    joins = [sw.join(host, name, *args) for host, name, args in specs]
    for j in joins:
        j.wait_for("ready on port")
    return joins


def _encoding_chunk(peer: SwarmProcess) -> tuple[int, int] | None:
    """(pid, chunk) of the ffmpeg this peer runs now, read from its source URL."""
    for pid, argv in peer.children():
        m = next((m for a in argv if (m := _ATTEMPT.search(a))), None)
        if m:
            return pid, int(m.group(1))
    return None


def _idle(peer: SwarmProcess) -> bool:
    return not peer.children()


def _settled(pid: int) -> str | None:
    """The state of a process just sent SIGSTOP, once the signal has landed."""
    state = _state(pid)
    return None if state in ("R", "S", "D") else state


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def _downloading(host: Host, pid: int, coordinator: Host) -> bool:
    """Whether process ``pid`` in ``host`` has a connection open to the coordinator."""
    dst = f"dst {coordinator.address}:7800"
    ss = host.run(["ss", "-tnpH", "state", "established", dst], check=False).stdout
    return f"pid={pid}," in ss


def _freeze_encoder(sw: Swarm, peer: SwarmProcess, downloading_from: Host | None = None
                    ) -> tuple[int, int]:
    """Wait until the peer encodes, then SIGSTOP that ffmpeg: (pid, chunk).

    A frozen encoder cannot finish its chunk, so whatever the test does to the peer next
    happens mid-chunk for sure, however fast chunks are. With ``downloading_from``, only an
    encoder connected to that coordinator for its source is frozen: it stops reading, so
    the coordinator's source stream to it backs up.
    """

    def candidate() -> tuple[int, int] | None:
        found = _encoding_chunk(peer)
        if found and downloading_from and not _downloading(peer.host, found[0],
                                                           downloading_from):
            return None
        return found

    while True:
        pid, chunk = sw.deadline.until(f"{peer.label} to encode", candidate, 30)
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            continue
        # Stopped, not finished in the meantime (then it is a zombie or gone: try the next).
        if sw.deadline.until("the stop to land", partial(_settled, pid), 5) == "T":
            return pid, chunk


def test_two_joins_found_by_mdns_and_every_host_encodes(
        sources: dict[str, Path], outdir: Path) -> None:
    src, out, rep = sources["long"], outdir / "out.mp4", outdir / "report.json"
    with lan(3) as net, Swarm(net, _logs(outdir), BUDGET_S) as sw:
        _joined(sw, (net[1], "alpha", ()), (net[2], "beta", ()))
        enc = sw.encode(net[0], src, out, "--name", "coord", *CHUNK_ARGS, "--report", str(rep))
        assert enc.wait() == 0, enc.stderr()
        assert enc.stdout().strip() == str(out)
    report = _report(rep)
    counts = _chunks_by_peer(report)
    assert set(counts) == {"coord", "alpha", "beta"}, counts
    # Remote slots claim their next chunk while one encodes (prefetch), and run it.
    queued = [a for a in report["attempts"] if a["queued"] and a["outcome"] == "ok"]
    assert {a["peer"] for a in queued} == {"alpha", "beta"}, report["attempts"]
    _assert_frame_exact(src, out, report)
    assert min_psnr(src, out, report["width"], report["height"]) > MIN_FRAME_PSNR_DB
    assert sorted(p.name for p in outdir.iterdir()) == ["out.mp4", "report.json"]


def test_the_chunk_plan_follows_the_peers_found(sources: dict[str, Path], outdir: Path
                                                ) -> None:
    """No --chunk-seconds: the coordinator counts the idle peers answering mDNS after it
    probes, and plans 4 chunks per slot for them all."""
    src, out, rep = sources["two_minutes"], outdir / "out.mp4", outdir / "report.json"
    with lan(3) as net, Swarm(net, _logs(outdir), BUDGET_S) as sw:
        _joined(sw, (net[1], "alpha", ()), (net[2], "beta", ()))
        enc = sw.encode(net[0], src, out, "--name", "coord", "-p", PROFILE, "--workers", "2",
                        "--report", str(rep))
        assert enc.wait() == 0, enc.stderr()
    report = _report(rep)
    assert report["peers_seen"] == 2
    # 2 local slots + 2 peers: 120 s / (4 x 4) = 7.5 s, 16 chunks, where the coordinator
    # alone would plan 120 s / (4 x 2) = 15 s, 8 chunks.
    assert report["chunk_s"] == default_chunk_seconds(TWO_MINUTES_S, 4) == 7.5
    assert report["chunks_planned"] == 16
    assert len(report["chunks"]) >= 16  # and pieces cut to the claimers' shares
    assert set(_chunks_by_peer(report)) == {"coord", "alpha", "beta"}
    _assert_frame_exact(src, out, report)


def test_peer_killed_mid_chunk_costs_a_retry_not_the_job(
        sources: dict[str, Path], outdir: Path) -> None:
    src, out, rep = sources["long"], outdir / "out.mp4", outdir / "report.json"
    with lan(3) as net, Swarm(net, _logs(outdir), BUDGET_S) as sw:
        alpha, _beta = _joined(sw, (net[1], "alpha", ()), (net[2], "beta", ()))
        enc = sw.encode(net[0], src, out, "--name", "coord", "--no-local", *CHUNK_ARGS,
                        "--report", str(rep))
        pid, lost = _freeze_encoder(sw, alpha)
        alpha.send_signal(signal.SIGKILL)
        alpha.wait(10)
        # Orphaned, the encoder dies on its own as soon as it writes to its dead node.
        os.kill(pid, signal.SIGCONT)
        sw.deadline.until("alpha's ffmpeg to die with it", lambda: not ffmpeg_pids(net[1]), 10)
        assert enc.wait() == 0, enc.stderr()
    report = _report(rep)
    assert set(_chunks_by_peer(report)) <= {"alpha", "beta"}
    retried = report["chunks"][lost]
    assert retried["attempts"] >= 2 and retried["peer"] == "beta", retried
    _assert_frame_exact(src, out, report)


def test_peer_cut_off_mid_chunk_loses_its_lease_and_drops_the_job(
        sources: dict[str, Path], outdir: Path) -> None:
    """A peer that vanishes without closing its connections (cable pulled, power cut)."""
    src, out, rep = sources["heavy"], outdir / "out.mp4", outdir / "report.json"
    with lan(3) as net, Swarm(net, _logs(outdir), BUDGET_S) as sw:
        alpha, _beta = _joined(sw, (net[1], "alpha", ()), (net[2], "beta", ()))
        # Each chunk's source is sent capped to what it needs, so on a fast machine a
        # download over the veth lasted too short for the poll below to see it (CI on
        # 0846e62: the whole job ended first). A Wi-Fi-like link keeps each one open ~1 s.
        net.shape(net[1], ALPHA_LINK_BIT)
        enc = sw.encode(net[0], src, out, "--name", "coord", "--no-local", *CHUNK_ARGS,
                        "--report", str(rep), "--lease-seconds", SHORT_LEASE_S)
        # Mid-download: the coordinator is streaming source bytes to alpha when it vanishes.
        _pid, lost = _freeze_encoder(sw, alpha, downloading_from=net[0])
        net[1].run(["ip", "link", "set", "eth0", "down"])
        # Alone, alpha notices its coordinator is gone and kills its encoder, staying up.
        sw.deadline.until("alpha to stop encoding", partial(_idle, alpha), PEER_IDLE_S)
        alpha.wait_for("over; idle", 5)
        assert alpha.running()
        assert enc.wait() == 0, enc.stderr()
    report = _report(rep)
    assert set(_chunks_by_peer(report)) <= {"alpha", "beta"}
    retried = report["chunks"][lost]
    # The chunk alpha held came back when its lease ran out, and beta encoded it.
    assert retried["peer"] == "beta" and retried["attempts"] >= 2, retried
    _assert_frame_exact(src, out, report)


def test_a_peer_joining_late_gets_work(sources: dict[str, Path], outdir: Path) -> None:
    src, out, rep = sources["long"], outdir / "out.mp4", outdir / "report.json"
    with lan(3) as net, Swarm(net, _logs(outdir), BUDGET_S) as sw:
        (alpha,) = _joined(sw, (net[1], "alpha", ()))
        enc = sw.encode(net[0], src, out, "--name", "coord", "--no-local", *CHUNK_ARGS,
                        "--report", str(rep))
        sw.deadline.until("alpha to encode", lambda: alpha.children(), 30)
        late = sw.join(net[2], "late")
        late.wait_for("working for", 30)
        assert enc.wait() == 0, enc.stderr()
    report = _report(rep)
    counts = _chunks_by_peer(report)
    assert set(counts) == {"alpha", "late"}, counts
    assert report["chunks"][0]["peer"] == "alpha"  # the job really began before `late` came
    _assert_frame_exact(src, out, report)


def test_peers_of_another_swarm_get_nothing(sources: dict[str, Path], outdir: Path) -> None:
    src, out, rep = sources["long"], outdir / "out.mp4", outdir / "report.json"
    with lan(4) as net, Swarm(net, _logs(outdir), BUDGET_S) as sw:
        coord, ours, other, open_ = net.hosts
        _, beta, gamma = _joined(sw, (ours, "alpha", ("--secret", "A")),
                                 (other, "beta", ("--secret", "B")), (open_, "gamma", ()))
        listing = sw.run(coord, "peers", "--json", "--wait", "3", "--secret", "A")
        assert listing.returncode == 0, listing.stderr
        rows = {r["name"]: r for r in json.loads(listing.stdout)}
        assert {n: (r["address"], r["verdict"]) for n, r in rows.items()} == {
            "alpha": (f"{ours.address}:7800", "ok"),
            "beta": (f"{other.address}:7800", "foreign-secret"),
            "gamma": (f"{open_.address}:7800", "foreign-secret"),
        }
        assert {r["state"] for r in rows.values()} == {"idle"}
        # Named explicitly too: then the signatures, not the mDNS fingerprint, keep them out.
        enc = sw.encode(coord, src, out, "--name", "coord", "--secret", "A", *CHUNK_ARGS,
                        "--peer", f"{other.address}:7800", "--peer", f"{open_.address}:7800",
                        "--report", str(rep))
        assert enc.wait() == 0, enc.stderr()
        assert "open swarm" not in enc.stderr()
        for foreign in (beta, gamma):
            assert "chunk" not in foreign.stderr(), foreign.stderr()
            assert foreign.running()
    counts = _chunks_by_peer(_report(rep))
    assert set(counts) == {"coord", "alpha"}, counts
    _assert_frame_exact(src, out, _report(rep))


def test_ctrl_c_on_encode_leaves_nothing_anywhere_and_peers_idle(
        sources: dict[str, Path], outdir: Path) -> None:
    out = outdir / "out.mp4"
    with lan(3) as net, Swarm(net, _logs(outdir), BUDGET_S) as sw:
        joins = _joined(sw, (net[1], "alpha", ()), (net[2], "beta", ()))
        enc = sw.encode(net[0], sources["long"], out, "--name", "coord", *CHUNK_ARGS)
        # Mid-job: this host and both peers are running an encoder.
        for j in joins:
            sw.deadline.until(f"{j.label} to encode", j.children, 30)
        sw.deadline.until("coord to encode", lambda: enc.children(), 30)
        assert enc.stop() == 130
        assert "interrupted" in enc.stderr()
        # Nothing at all is left in the coordinator's host: no ffmpeg, no python.
        assert processes(net[0]) == []
        for j in joins:
            sw.deadline.until(f"{j.label} to stop encoding", partial(_idle, j), GOODBYE_IDLE_S)
            j.wait_for("over; idle", 5)
            assert j.running()
        assert list(outdir.iterdir()) == []
        # Idle for real: the next job uses both of them at once.
        rep = outdir / "again.json"
        again = sw.encode(net[0], sources["short"], outdir / "again.mp4", "--name", "coord",
                          "--no-local", *CHUNK_ARGS, "--report", str(rep))
        assert again.wait() == 0, again.stderr()
        assert set(_chunks_by_peer(_report(rep))) == {"alpha", "beta"}


def test_one_job_on_three_ffmpeg_builds(sources: dict[str, Path], outdir: Path) -> None:
    """The devices of one LAN ship different ffmpegs: chunks from all three join one output.

    The coordinator runs the first build under test (the bundled 9.x), the peers the next two
    (Debian's 5.1 and 7.0.2 in CI). x264's parameter sets are identical across these builds
    (tests/test_paramsets.py), so the coordinator keeps every chunk; with x265 or SVT-AV1 it
    would leave a mismatching peer out.
    """
    builds = [ffmpegs.require(p) for p in ffmpegs.under_test()]
    if len(builds) < 3:
        pytest.skip("needs three ffmpeg builds under test (SWARM_TEST_FFMPEGS)")
    coord, *peers = builds[:3]
    names = [f"peer{ff.short_version}" for ff in peers]
    src, out, rep = sources["long"], outdir / "out.mp4", outdir / "report.json"
    with lan(3) as net, Swarm(net, _logs(outdir), BUDGET_S) as sw:
        joins = [sw.join(host, name, env={"SWARM_FFMPEG": ff.path})
                 for host, name, ff in zip(net.hosts[1:], names, peers, strict=True)]
        for j in joins:
            j.wait_for("ready on port")
        enc = sw.encode(net[0], src, out, "--name", "coord", "--workers", "1", *CHUNK_ARGS,
                        "--report", str(rep), env={"SWARM_FFMPEG": coord.path})
        assert enc.wait() == 0, enc.stderr()
        assert "cannot join" not in enc.stderr()
    report = _report(rep)
    counts = _chunks_by_peer(report)
    assert set(counts) == {"coord", *names}, counts
    # Each host ran its own build (as each reported it).
    assert report["ffmpegs"] == {"coord": coord.short_version} | {
        n: ff.short_version for n, ff in zip(names, peers, strict=True)}
    check_output(media_info(out), media_info(src))
    for ff in builds:
        assert decode_errors(out, ff.path) == "", ff.describe()
