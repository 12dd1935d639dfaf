"""What a user gets wrong, and what the world does to a running command (issue 12).

Each test runs the real `swarm` in a process (signals, pipes, sockets, terminals are real),
or the CLI in-process with CliRunner where only the help text is under test.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import signal
import socket
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chunker.plan import MAX_CHUNK_S, MIN_CHUNK_S
from cli import COMMAND_ORDER, app
from media import FFMPEG, decode_errors, media_info
from peer.journal import MERGED_KEY, Journal, output_is_ours, output_stamp, work_dir_for
from procs import alive, children
from profiles.profile import MAX_PROFILE_BYTES

runner = CliRunner()
SWARM = [sys.executable, "-c", "import cli; cli.main()"]
REPO = Path(__file__).resolve().parent.parent
ENV = os.environ | {"PYTHONPATH": str(REPO)}
LOCAL = ("--local-only", "--chunk-seconds", "1", "-w", "2")


def swarm(*args: str, cwd: Path, timeout: float = 120,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SWARM, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=ENV | (env or {}), stdin=subprocess.DEVNULL)


def _one_error_line(res: subprocess.CompletedProcess[str], code: int, text: str) -> str:
    assert res.returncode == code, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("swarm: error: "), res.stderr
    assert text in lines[0], lines[0]
    return lines[0]


def _clip(path: Path, seconds: float = 3, extra: tuple[str, ...] = ()) -> Path:
    subprocess.run([FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size=320x240:rate=25:duration={seconds}", "-f", "lavfi", "-i",
                    f"sine=duration={seconds}", "-c:v", "libx264", "-preset", "veryfast",
                    "-g", "25", "-c:a", "aac", *extra, str(path)], check=True, timeout=120)
    return path



# -- an existing output ------------------------------------------------------------------

def test_an_existing_output_is_kept_unless_force(tmp_path: Path) -> None:
    _clip(tmp_path / "in.mp4")
    precious = tmp_path / "precious.mp4"
    precious.write_bytes(b"a year of holiday videos")
    t0 = time.monotonic()
    res = swarm("encode", "in.mp4", "-o", "precious.mp4", *LOCAL, cwd=tmp_path)
    _one_error_line(res, 2, "precious.mp4 exists; use --force to replace it")
    assert time.monotonic() - t0 < 30  # refused before any encoding
    assert precious.read_bytes() == b"a year of holiday videos"
    assert sorted(os.listdir(tmp_path)) == ["in.mp4", "precious.mp4"]  # no journal left
    # The default name counts too: a second run does not replace the first one's output.
    assert swarm("encode", "in.mp4", *LOCAL, "-q", cwd=tmp_path).returncode == 0
    _one_error_line(swarm("encode", "in.mp4", *LOCAL, cwd=tmp_path), 2, "in.hd.mp4 exists")
    # A directory is never replaced, --force or not.
    (tmp_path / "d.mp4").mkdir()
    _one_error_line(swarm("encode", "in.mp4", "-o", "d.mp4", "--force", *LOCAL, cwd=tmp_path),
                    2, "d.mp4 is a directory")
    res = swarm("encode", "in.mp4", "-o", "precious.mp4", "--force", *LOCAL, "-q", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert media_info(precious).video.frames == 75


def test_an_output_that_appears_during_the_job_is_not_replaced(tmp_path: Path) -> None:
    _clip(tmp_path / "in.mp4", seconds=4)
    proc = subprocess.Popen([*SWARM, "encode", "in.mp4", "-o", "out.mp4", *LOCAL, "--json"],
                            cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline())["event"] == "job_start"
    (tmp_path / "out.mp4").write_bytes(b"saved meanwhile by another program")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert err.strip() == "swarm: error: out.mp4 exists; use --force to replace it"
    assert (tmp_path / "out.mp4").read_bytes() == b"saved meanwhile by another program"
    assert sorted(os.listdir(tmp_path)) == ["in.mp4", "out.mp4"]


def test_an_output_renamed_by_a_crashed_run_is_ours(tmp_path: Path) -> None:
    """A crash between the rename and the clean-up leaves the output and its journal; the
    journal's stamp tells that file from one put there later, so a rerun may replace it."""
    out = tmp_path / "out.mp4"
    wd = work_dir_for(str(out))
    wd.mkdir()
    merged = wd / "output.mp4"
    merged.write_bytes(b"merged and verified")
    j = Journal(wd)
    j.set(MERGED_KEY, output_stamp(str(merged)))
    os.replace(merged, out)
    assert output_is_ours(str(out))
    # A rerun of the same command after that crash is not refused.
    _clip(tmp_path / "in.mp4", seconds=2)
    j.close()
    res = swarm("encode", "in.mp4", "-o", "out.mp4", *LOCAL, "-q", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert media_info(out).video.frames == 50 and not wd.exists()
    # Any other file at that name is not ours, even with the journal beside it.
    wd.mkdir()
    j = Journal(wd)
    j.set(MERGED_KEY, output_stamp(str(out)))
    j.close()
    out.write_bytes(b"rewritten by the user")
    assert not output_is_ours(str(out))
    assert not output_is_ours(str(tmp_path / "in.mp4"))


# -- still images ----------------------------------------------------------------------

def _picture(tmp: Path, name: str, *args: str) -> Path:
    subprocess.run([FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=size=320x240:rate=25:duration=2", *args, str(tmp / name)],
                   check=True, timeout=60)
    return tmp / name


@pytest.mark.parametrize(("name", "args", "said"), [
    ("photo.jpg", ("-frames:v", "1"), "a still image (jpeg), not a video"),
    ("shot.png", ("-frames:v", "1"), "a still image (png), not a video"),
    ("pic.webp", ("-frames:v", "1"), "a still image (webp), not a video"),
    ("one.mp4", ("-frames:v", "1", "-c:v", "libx264"), "only one video frame (h264)"),
])
def test_still_images_are_refused(tmp_path: Path, name: str, args: tuple[str, ...],
                                  said: str) -> None:
    _picture(tmp_path, name, *args)
    _one_error_line(swarm("encode", name, "--local-only", cwd=tmp_path), 1, said)
    assert os.listdir(tmp_path) == [name]


@pytest.mark.parametrize(("name", "args"), [
    ("anim.gif", ("-r", "10")),  # an animated GIF is a video: 20 frames, 1/100 s timing
    ("camera.avi", ("-c:v", "mjpeg")),  # MJPEG video, as many cameras record it
])
def test_animations_and_mjpeg_video_are_encoded(tmp_path: Path, name: str,
                                                args: tuple[str, ...]) -> None:
    src = _picture(tmp_path, name, *args)
    res = swarm("encode", name, "-o", "out.mp4", *LOCAL, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    s, o = media_info(src).video, media_info(tmp_path / "out.mp4").video
    assert o.frames == s.frames > 1
    assert max(abs((o.seconds(i) - o.start_s) - (s.seconds(i) - s.start_s))
               for i in range(s.frames)) <= 0.001
    assert decode_errors(tmp_path / "out.mp4") == ""


def test_one_picture_over_sound_is_kept(tmp_path: Path) -> None:
    """A single video frame with a sound track (some music uploads) is not a still image."""
    pic = _picture(tmp_path, "pic.mp4", "-frames:v", "1", "-c:v", "libx264")
    tone = tmp_path / "tone.m4a"
    subprocess.run([FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", "sine=duration=1",
                    "-c:a", "aac", str(tone)], check=True, timeout=60)
    # Muxed by copying, so every audio packet is kept whatever -frames would stop early.
    subprocess.run([FFMPEG, "-v", "error", "-y", "-i", str(pic), "-i", str(tone), "-map", "0",
                    "-map", "1", "-c", "copy", str(tmp_path / "song.mp4")], check=True,
                   timeout=60)
    res = swarm("encode", "song.mp4", "-o", "out.mp4", "--local-only", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = media_info(tmp_path / "out.mp4")
    assert out.video.frames == 1 and out.audio is not None


# -- profile files -----------------------------------------------------------------------

def test_bad_profile_files_get_one_line_and_exit_2(tmp_path: Path) -> None:
    _clip(tmp_path / "in.mp4", seconds=1)
    good = (REPO / "profiles" / "hd.toml").read_bytes()
    (tmp_path / "latin1.toml").write_bytes(good.replace(b"720p", "720p \xe9t\xe9".encode(
        "latin-1")))
    (tmp_path / "huge.toml").write_bytes(good + b"#" * MAX_PROFILE_BYTES)
    os.mkfifo(tmp_path / "fifo.toml")
    (tmp_path / "dir.toml").mkdir()
    cases = {
        "latin1.toml": "not UTF-8 text (byte 0xe9 at offset",
        "/dev/zero": "/dev/zero: not a regular file",
        "fifo.toml": "not a regular file",  # opening a FIFO to read would wait for a writer
        "dir.toml": "not a regular file",
        "huge.toml": "larger than 64 KiB",
    }
    for spec, text in cases.items():
        arg = spec if spec.startswith("/") else f"./{spec}"
        res = swarm("encode", "in.mp4", "-p", arg, "--local-only", cwd=tmp_path, timeout=30)
        _one_error_line(res, 2, text)
        assert "Traceback" not in res.stderr


# -- a taken port --------------------------------------------------------------------------

def test_join_on_a_taken_port_says_so_before_benchmarking(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("0.0.0.0", 0))  # what another `swarm join` here holds
        taken.listen()
        port = taken.getsockname()[1]
        t0 = time.monotonic()
        # HOME: an empty benchmark cache, so a join that got past the port would measure.
        res = swarm("join", "--port", str(port), cwd=tmp_path, timeout=90,
                    env={"HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")})
        took = time.monotonic() - t0
    line = _one_error_line(res, 2, f"port {port} is in use")
    assert "--port" in line and "benchmarking" not in res.stderr
    assert took < 10, f"{took:.1f} s"


# -- SIGHUP ----------------------------------------------------------------------------------

def _controlling_tty() -> None:
    """In the child: a new session whose controlling terminal is the pty on stdin, so the
    kernel hangs it up (SIGHUP) when the other end closes, as a terminal window does."""
    _hup_default()
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _hup_ignored() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # what `nohup` does before exec


def _hup_default() -> None:
    """A child started from a shell that is itself under `nohup` (a CI job run in the
    background) inherits SIGHUP ignored, and swarm then rightly outlives the hang-up."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


@pytest.mark.parametrize("how", ["terminal-closed", "kill-hup", "nohup"])
def test_sighup_cleans_up_like_sigterm(tmp_path: Path, how: str) -> None:
    _clip(tmp_path / "long.mp4", seconds=20, extra=("-s", "1280x720"))
    argv = [*SWARM, "encode", "long.mp4", "-o", "out.mp4", "-p", "fhd-crf", "-w", "2",
            "--local-only"]
    master = -1
    if how == "terminal-closed":
        master, slave = pty.openpty()
        proc = subprocess.Popen(argv, cwd=tmp_path, env=ENV | {"TERM": "xterm"}, stdin=slave,
                                stdout=slave, stderr=slave, preexec_fn=_controlling_tty)
        os.close(slave)
    else:
        proc = subprocess.Popen(argv, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True,
                                preexec_fn=_hup_ignored if how == "nohup" else _hup_default)
    wd = work_dir_for(str(tmp_path / "out.mp4"))
    try:
        deadline = time.monotonic() + 60
        kids: list[int] = []
        while time.monotonic() < deadline and not (len(kids) >= 2 and wd.exists()):
            kids = children(proc.pid)
            if master >= 0:  # keep the terminal drained, as a terminal would
                try:
                    os.set_blocking(master, False)
                    os.read(master, 65536)
                except (BlockingIOError, OSError):
                    pass
            time.sleep(0.1)
        assert kids and wd.exists(), "no encoding started"
        time.sleep(0.5)
        if master >= 0:
            os.close(master)  # the terminal window closes
            master = -1
        else:
            os.kill(proc.pid, signal.SIGHUP)
        if how == "nohup":  # asked to outlive the terminal: it goes on until told to stop
            time.sleep(2)
            assert proc.poll() is None and wd.exists()
            os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if master >= 0:
            os.close(master)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    err = proc.stderr.read() if proc.stderr is not None else ""
    # First, that the signal stopped a running job (a job that ended before it proves nothing).
    assert proc.returncode == 130, (proc.returncode, err[-2000:])
    if proc.stderr is not None:
        assert "interrupted" in err
    # Cleanup ran: no journal to mistake for a crash, no output, no ffmpeg left.
    assert not wd.exists()
    assert sorted(os.listdir(tmp_path)) == ["long.mp4"]
    assert not [k for k in kids if alive(k)]


# -- a closed stdout ---------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["json-head", "quiet-closed"])
def test_a_closed_stdout_does_not_stop_the_job(tmp_path: Path, mode: str) -> None:
    _clip(tmp_path / "in.mp4", seconds=4)
    extra = ["--json"] if mode == "json-head" else ["-q"]
    proc = subprocess.Popen([*SWARM, "encode", "in.mp4", "-o", "out.mp4", *LOCAL, *extra],
                            cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    if mode == "json-head":  # `| head -1`: one line read, then the reader is gone
        assert json.loads(proc.stdout.readline())["event"] == "job_start"
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert proc.returncode == 0, err
    assert err == ""  # nothing about the pipe, no traceback
    assert media_info(tmp_path / "out.mp4").video.frames == 100
    assert not work_dir_for(str(tmp_path / "out.mp4")).exists()


# -- help and listings -------------------------------------------------------------------------

def _commands() -> list[str]:
    import typer.main

    return list(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def test_commands_are_listed_in_the_order_a_user_needs_them() -> None:
    out = runner.invoke(app, ["--help"], env={"COLUMNS": "100"}).output
    listed = re.findall(r"^│ (\w+) ", out, flags=re.MULTILINE)
    assert listed == [c for c in COMMAND_ORDER if c in _commands()] + [
        c for c in _commands() if c not in COMMAND_ORDER]
    assert listed[:3] == ["encode", "demo", "join"]


def test_help_shows_values_as_a_user_types_them() -> None:
    for cmd in ["", *_commands()]:
        out = runner.invoke(app, [cmd, "--help"] if cmd else ["--help"],
                            env={"COLUMNS": "200"}).output
        for python_ish in ("<bool>", "<list[", "<str>", "<int", "<float", "{"):
            assert python_ish not in out, (cmd, python_ish)
    enc = runner.invoke(app, ["encode", "--help"], env={"COLUMNS": "200"}).output
    assert "Usage: swarm encode [OPTIONS] INPUT" in enc
    assert "Default: <stem>.<profile>.mp4 beside the input" in enc
    assert f"{MIN_CHUNK_S:g}-{MAX_CHUNK_S:g} s each" in enc
    assert re.search(r"--peer\s+HOST:PORT\s+A peer", enc)
    assert re.search(r"--force\s+Replace the output", enc)  # a flag: no value shown


def test_profiles_fit_80_columns(tmp_path: Path) -> None:
    res = swarm("profiles", cwd=tmp_path, env={"COLUMNS": "80"})
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80
    assert "…" not in res.stdout  # nothing cut off
    for whole in ("fhd-x265", "4096x2160", "x264 high@5.1 veryslow 15600k",
                  "aac 256k 44.1 kHz 2 ch", "svtav1 preset 8 crf 32"):
        assert whole in res.stdout, whole
