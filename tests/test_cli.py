"""The `swarm` command: arguments (CliRunner) and real processes for end-to-end behaviour."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import _timings, app
from media import FFMPEG, media_info
from peer.local import LOCAL_NICE
from procs import alive, children
from swarm.config import Timings

runner = CliRunner()
SWARM = [sys.executable, "-c", "import cli; cli.main()"]
REPO = Path(__file__).resolve().parent.parent


def swarm(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONPATH": str(REPO)}
    return subprocess.run([*SWARM, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.parametrize("cmd", ["encode", "demo", "profiles", "join", "peers", "bench"])
def test_every_subcommand_has_help(cmd: str) -> None:
    res = runner.invoke(app, [cmd, "--help"])
    assert res.exit_code == 0
    assert "Usage" in res.output and len(res.output.splitlines()) > 3


def test_profiles_lists_the_table() -> None:
    res = runner.invoke(app, ["profiles"])
    assert res.exit_code == 0
    for name in ("4k", "fhd", "hd", "480p", "fhd-av1"):
        assert name in res.output
    data = json.loads(runner.invoke(app, ["profiles", "--json"]).output)
    assert {p["name"] for p in data} >= {"4k", "fhd", "hd", "480p"}


def test_bad_option_is_a_usage_error() -> None:
    assert runner.invoke(app, ["encode", "x.mp4", "--workers", "-3"]).exit_code == 2
    assert runner.invoke(app, ["encode"]).exit_code == 2


def test_a_shorter_lease_is_a_hidden_option_not_the_environment(tmp_path: Path) -> None:
    """The multi-host tests' --lease-seconds reaches Timings; users never see it."""
    assert "--lease-seconds" not in runner.invoke(app, ["encode", "--help"]).output
    assert _timings(4.0) == Timings(lease_s=4.0) and _timings(None) == Timings()
    res = runner.invoke(app, ["encode", str(tmp_path / "x.mp4"), "--lease-seconds", "0.5"])
    assert res.exit_code == 2 and "--lease-seconds 0.5: use 1 to 3600" in res.output


def _bad_inputs(tmp: Path, corpus: dict[str, Path]) -> dict[str, tuple[list[str], int, str]]:
    (tmp / "text.mp4").write_text("hello, not a video\n")
    (tmp / "empty.mp4").write_bytes(b"")
    good = corpus["closed_gop"].read_bytes()
    (tmp / "truncated.mp4").write_bytes(good[: len(good) // 3])
    (tmp / "good.mp4").write_bytes(good)
    subprocess.run([FFMPEG, "-v", "error", "-f", "lavfi", "-i", "sine=duration=1", "-y",
                    str(tmp / "audio_only.m4a")], check=True)
    return {
        "missing": (["encode", "missing.mp4"], 2, "no such file"),
        "not a video": (["encode", "text.mp4"], 1, "not a readable video"),
        "empty": (["encode", "empty.mp4"], 1, "empty file"),
        "truncated": (["encode", "truncated.mp4"], 1, "truncated.mp4"),
        "audio only": (["encode", "audio_only.m4a"], 1, "no video stream"),
        "unknown profile": (["encode", "good.mp4", "-p", "ultra"], 2, "unknown profile"),
        "bad profile file": (["encode", "good.mp4", "-p", "./nope.toml"], 2, "nope.toml"),
        "output dir missing": (["encode", "good.mp4", "-o", "no/such/dir/o.mp4"], 2,
                               "does not exist"),
        "output dir unwritable": (["encode", "good.mp4", "-o", "/proc/o.mp4"], 2,
                                  "cannot write"),
        "bad extension": (["encode", "good.mp4", "-o", "o.avi"], 2, "extension"),
    }


def test_bad_input_gets_one_clear_line_and_leaves_nothing(
        tmp_path: Path, corpus: dict[str, Path]) -> None:
    cases = _bad_inputs(tmp_path, corpus)
    before = sorted(os.listdir(tmp_path))
    for what, (args, code, text) in cases.items():
        res = swarm(*args, cwd=tmp_path)
        assert res.returncode == code, (what, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("swarm: error:"), (what, res.stderr)
        assert text in lines[0], (what, lines[0])
        assert "Traceback" not in res.stderr
        assert sorted(os.listdir(tmp_path)) == before, what


def test_encode_writes_default_output_and_report(tmp_path: Path,
                                                 corpus: dict[str, Path]) -> None:
    src = tmp_path / "clip.mp4"
    src.write_bytes(corpus["open_gop"].read_bytes())
    res = swarm("encode", "clip.mp4", "--report", "r.json", "--chunk-seconds", "1",
                "--name", "alpha", "--local-only", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / res.stdout.strip()).resolve() == tmp_path / "clip.hd.mp4"
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["frames"] == 120 and len(report["chunks"]) >= 3
    assert {c["peer"] for c in report["chunks"]} == {"alpha"}
    assert media_info(tmp_path / "clip.hd.mp4").video.frames == 120
    assert sorted(os.listdir(tmp_path)) == ["clip.hd.mp4", "clip.mp4", "r.json"]
    # AAC: encoded beside the chunks, said on stderr, timed in the report.
    assert "swarm: audio encoded (" in res.stderr
    assert report["audio_encode_s"] > 0


def test_quiet_prints_only_the_output_path(tmp_path: Path, corpus: dict[str, Path]) -> None:
    res = swarm("encode", str(corpus["no_audio"]), "-o", "o.mp4", "-q", cwd=tmp_path)
    assert res.returncode == 0 and res.stderr == ""
    assert res.stdout.strip() == "o.mp4"


def test_demo_needs_no_input(tmp_path: Path) -> None:
    # The demo's files have fixed names: a rerun replaces what the last demo left.
    (tmp_path / "swarm-demo.hd.mp4").write_bytes(b"an earlier demo's output")
    res = swarm("demo", cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    out = Path(res.stdout.strip())
    assert out == tmp_path / "swarm-demo.hd.mp4" and out.exists()
    assert "demo output" in res.stderr
    info = media_info(out)
    assert info.video.frames == media_info(tmp_path / "swarm-demo.mp4").video.frames
    assert info.audio is not None



@pytest.mark.parametrize("to_group", [True, False], ids=["terminal-ctrl-c", "sigint-to-swarm"])
def test_ctrl_c_kills_ffmpeg_and_leaves_nothing(tmp_path: Path, to_group: bool) -> None:
    src = tmp_path / "long.mp4"
    subprocess.run([FFMPEG, "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=1280x720:rate=30:duration=20", "-f", "lavfi", "-i",
                    "sine=duration=20", "-c:v", "libx264", "-preset", "ultrafast",
                    "-c:a", "aac", str(src)], check=True, timeout=120)
    env = os.environ | {"PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([*SWARM, "encode", "long.mp4", "-p", "fhd-crf", "-w", "2"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        kids: list[int] = []
        while time.monotonic() < deadline and len(kids) < 2:
            kids = children(proc.pid)
            time.sleep(0.1)
        assert kids, "no ffmpeg child started"
        time.sleep(0.5)
        # The local encoders run nicer than the coordinator (peer.local.LOCAL_NICE): its
        # serving and checking come first.
        encoders: list[int] = []
        while time.monotonic() < deadline and not encoders:
            encoders = [k for k in children(proc.pid) if b"libx264" in _cmdline(k)]
            time.sleep(0.1)
        assert encoders, "no encoder started"
        kids += encoders
        mine = os.getpriority(os.PRIO_PROCESS, proc.pid)
        assert {os.getpriority(os.PRIO_PROCESS, k) for k in encoders} == {mine + LOCAL_NICE}
        if to_group:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not [k for k in kids if alive(k)]
    assert sorted(os.listdir(tmp_path)) == ["long.mp4"]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
