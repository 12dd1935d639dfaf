"""`swarm slideshow`: the frame plan (plain tests), chunked renders against a single one
(real ffmpeg, frame checksums), and the command as a real process over images made here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chunker.slides import plan_slides, slide_argv, slide_runs
from media import FFMPEG, decode_errors, media_info
from profiles import load_profile

SWARM = [sys.executable, "-c", "import cli; cli.main()"]
REPO = Path(__file__).resolve().parent.parent
PROFILE = load_profile("480p")


def swarm(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONPATH": str(REPO)}
    return subprocess.run([*SWARM, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def _image(path: Path, size: str, pattern: str = "testsrc2") -> Path:
    subprocess.run([FFMPEG, "-v", "error", "-f", "lavfi", "-i", f"{pattern}=size={size}",
                    "-frames:v", "1", "-y", str(path)], check=True, timeout=30)
    return path


@pytest.fixture(scope="module")
def album(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Images of different sizes and shapes (landscape, portrait, square, tiny), as JPEG
    and PNG, and three that cannot be shown."""
    root = tmp_path_factory.mktemp("album")
    specs = [("01.jpg", "640x360", "testsrc2"), ("02.png", "240x480", "smptebars"),
             ("03.jpg", "300x300", "rgbtestsrc"), ("04.png", "96x54", "testsrc"),
             ("05.jpg", "800x450", "smptehdbars"), ("06.png", "360x640", "testsrc2")]
    for name, size, pattern in specs:
        _image(root / name, size, pattern)
    (root / "07-empty.jpg").write_bytes(b"")
    (root / "08-text.png").write_text("not an image\n")
    good = (root / "05.jpg").read_bytes()
    (root / "09-truncated.jpg").write_bytes(good[: len(good) // 4])
    (root / "notes.txt").write_text("not taken: not an image by its name\n")
    return root


def _good(album: Path) -> list[str]:
    return [str(album / f"0{i}.{'jpg' if i % 2 else 'png'}") for i in range(1, 7)]


# -- the plan ----------------------------------------------------------------------------------
def test_each_image_lasts_exactly_its_frames_and_the_fade_fits_inside() -> None:
    plan = plan_slides(["a", "b", "c"], 1.2, 0.4, PROFILE)
    assert (plan.per_image, plan.fade, plan.frames) == (30, 10, 90)
    assert plan.duration_s == pytest.approx(3.6)
    assert (plan.width, plan.height) == (PROFILE.video.width, PROFILE.video.height)
    with pytest.raises(ValueError, match="needs more than"):
        plan_slides(["a"], 0.5, 0.5, PROFILE)
    with pytest.raises(ValueError, match="no images"):
        plan_slides([], 1.0, 0.0, PROFILE)


@pytest.mark.parametrize(("images", "slots"), [(1, 4), (7, 1), (60, 2), (160, 16), (5, 8)])
def test_chunks_are_runs_of_whole_images_covering_the_show(images: int, slots: int) -> None:
    runs = slide_runs(images, slots)
    assert [f for f, _ in runs] == [sum(c for _, c in runs[:i]) for i in range(len(runs))]
    assert sum(c for _, c in runs) == images and all(c > 0 for _, c in runs)
    assert len(runs) <= max(1, 3 * slots)
    assert max(c for _, c in runs) - min(c for _, c in runs) <= max(1, images // len(runs))


def test_a_chunk_reads_its_own_images_and_only_the_next_ones_first() -> None:
    from chunker.slides import slide_graph

    plan = plan_slides([f"/i/{n}.jpg" for n in range(6)], 1.0, 0.4, PROFILE)
    assert slide_graph(plan, 2, 2)[0] == ["/i/2.jpg", "/i/3.jpg", "/i/4.jpg"]
    assert slide_graph(plan, 4, 2)[0] == ["/i/4.jpg", "/i/5.jpg"]  # the last: no next one
    cuts = plan_slides([f"/i/{n}.jpg" for n in range(6)], 1.0, 0.0, PROFILE)
    assert slide_graph(cuts, 2, 2)[0] == ["/i/2.jpg", "/i/3.jpg"]  # no fade, no neighbour


# -- chunked renders against one ---------------------------------------------------------------
def _checksums(path: Path) -> list[str]:
    return [line.rsplit(",", 1)[1].strip() for line in path.read_text().splitlines()
            if not line.startswith("#")]


@pytest.mark.parametrize("slots", [1, 2])
def test_fades_across_chunk_boundaries_come_out_as_in_a_single_render(
        album: Path, tmp_path: Path, slots: int) -> None:
    plan = plan_slides(_good(album), 0.8, 0.32, PROFILE)  # 20 frames, 8 of them fading
    whole = tmp_path / "whole.md5"
    subprocess.run(slide_argv(FFMPEG, plan, 0, len(plan.images), PROFILE, str(whole),
                              raw=True), check=True, timeout=120)
    runs = slide_runs(len(plan.images), slots)
    assert len(runs) > 1  # fades cross chunk boundaries
    chunked: list[str] = []
    for i, (first, count) in enumerate(runs):
        out = tmp_path / f"c{i}.md5"
        subprocess.run(slide_argv(FFMPEG, plan, first, count, PROFILE, str(out), raw=True),
                       check=True, timeout=120)
        chunked += _checksums(out)
    single = _checksums(whole)
    assert len(single) == plan.frames == len(chunked)
    assert chunked == single
    # The fades are really there: every fade frame differs from both its images' stills.
    for k in range(len(plan.images) - 1):
        end = (k + 1) * plan.per_image
        fading = single[end - plan.fade:end]
        assert len(set(fading)) == plan.fade
        assert single[end - plan.fade - 1] not in fading and single[end] not in fading


# -- the command -------------------------------------------------------------------------------
def _music(path: Path, seconds: float) -> Path:
    subprocess.run([FFMPEG, "-v", "error", "-f", "lavfi", "-i",
                    f"sine=frequency=330:duration={seconds}", "-c:a", "aac", "-y", str(path)],
                   check=True, timeout=30)
    return path


@pytest.mark.parametrize("music_s", [2.0, 20.0], ids=["music-short", "music-long"])
def test_a_slideshow_of_a_folder_with_bad_images_and_music(album: Path, tmp_path: Path,
                                                           music_s: float) -> None:
    music = _music(tmp_path / "music.m4a", music_s)
    res = swarm("slideshow", str(album), "-o", "show.mp4", "--seconds-per-image", "0.6",
                "--fade", "0.2", "--audio", str(music), "-p", "480p", "-w", "2", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    for bad, why in (("07-empty.jpg", "empty file"), ("08-text.png", ""),
                     ("09-truncated.jpg", "")):
        assert f"swarm: skipped image {album / bad} ({why}" in res.stderr, res.stderr
    assert "notes.txt" not in res.stderr
    out = tmp_path / "show.mp4"
    info = media_info(out)
    assert info.video.frames == 6 * 15
    assert (info.video.width, info.video.height) == (PROFILE.video.width,
                                                     PROFILE.video.height)
    assert decode_errors(out) == ""
    assert info.audio is not None
    assert info.audio.end_s - info.video.start_s == pytest.approx(3.6, abs=0.05)
    assert sorted(os.listdir(tmp_path)) == ["music.m4a", "show.mp4"]  # no work directory


def test_images_keep_their_aspect_and_are_padded_black(album: Path, tmp_path: Path) -> None:
    res = swarm("slideshow", str(album / "02.png"), "-o", "tall.mp4", "--seconds-per-image",
                "0.2", "--fade", "0", "-p", "480p", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    w, h = PROFILE.video.width, PROFILE.video.height
    gray = subprocess.run([FFMPEG, "-v", "error", "-i", str(tmp_path / "tall.mp4"),
                           "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "gray", "-"],
                          capture_output=True, check=True).stdout
    assert len(gray) == w * h
    # A 1:2 portrait image in the 480p box is 240 wide: black bars of (w - 240) / 2 each.
    bar = (w - h // 2) // 2

    def column(x: int) -> float:
        return sum(gray[y * w + x] for y in range(h)) / h

    assert column(4) < 24 and column(w - 5) < 24  # limited-range black is 16
    assert column(bar + 20) > 40 and column(w // 2) > 40


def test_refusing_bad_images_names_them_all_and_writes_nothing(album: Path,
                                                               tmp_path: Path) -> None:
    res = swarm("slideshow", str(album), "-o", "show.mp4", "--bad-images", "refuse",
                cwd=tmp_path)
    assert res.returncode == 2
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith("swarm: error: 3 bad image(s): ")
    for bad in ("07-empty.jpg", "08-text.png", "09-truncated.jpg"):
        assert str(album / bad) in line
    assert os.listdir(tmp_path) == []


def test_slideshow_usage_errors(album: Path, tmp_path: Path) -> None:
    cases = [
        (["slideshow", str(album / "nothing-*.jpg"), "-o", "s.mp4"], "no such file"),
        (["slideshow", str(album), "-o", "s.avi"], "use .mp4"),
        (["slideshow", str(album), "-o", "s.mp4", "--seconds-per-image", "1", "--fade", "1"],
         "needs more than"),
        (["slideshow", str(album), "-o", "s.mp4", "--audio", "none.m4a"], "no such file"),
        (["slideshow", str(album), "-o", "s.mp4", "--audio", str(album / "01.jpg")],
         "--audio"),
    ]
    for args, text in cases:
        res = swarm(*args, cwd=tmp_path)
        assert res.returncode == 2, (args, res.stderr)
        assert text in res.stderr and "Traceback" not in res.stderr, (args, res.stderr)
    assert os.listdir(tmp_path) == []


def test_json_lines(album: Path, tmp_path: Path) -> None:
    res = swarm("slideshow", str(album / "01.jpg"), str(album / "03.jpg"), "-o", "s.mp4",
                "--seconds-per-image", "0.4", "--fade", "0.2", "--json", "-p", "480p",
                cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert lines[-1]["event"] == "slideshow_end" and lines[-1]["frames"] == 20
    assert {"chunk_start", "chunk_done"} <= {x["event"] for x in lines}
