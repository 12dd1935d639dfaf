"""Every track of the source, end to end: kept with its language, title and default flag,
or named on stderr and in the report with the reason and the option that changes it."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import imageio_ffmpeg
import pytest
from tracks_media import AUDIO, CREATION, TITLE, make_tracks_source

from chunker.plan import plan_chunks
from chunker.probe import MediaInfo, probe
from chunker.tools import ffmpeg_info
from media import decode_errors
from peer.coordinator import _open_plan
from peer.journal import Journal, input_identity
from peer.options import EncodeOptions, JobIntent
from profiles import load_profile

REPO = Path(__file__).resolve().parent.parent
SWARM = [sys.executable, "-c", "import cli; cli.main()"]
PGS_DROPPED = ("subtitle track 2 (hdmv_pgs_subtitle, ger) dropped: mp4 cannot hold image "
               "subtitles; use -o out.mkv to keep it, or --subtitles none to silence this")
# Outputs are read back with the bundled ffmpeg whichever one encoded: 5.1 writes an mp4
# track's title but does not read it back.
CHECK = ffmpeg_info(imageio_ffmpeg.get_ffmpeg_exe())
FONT_DROPPED = ("attachment track 1 (ttf) dropped: mp4 cannot hold attachments (font.ttf); "
                "use -o out.mkv to keep it")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tracks_source(tmp_path_factory.mktemp("tracks"))


def _encode(src: Path, tmp: Path, out: str, *extra: str) -> tuple[dict, str]:
    """Run `swarm encode` as a user would; returns the report and stderr."""
    res = subprocess.run(
        [*SWARM, "encode", str(src), "-o", out, "--local-only", "--chunk-seconds", "1",
         "-w", "2", "--report", "r.json", *extra], cwd=tmp, capture_output=True, text=True,
        timeout=180, env=os.environ | {"PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr
    return json.loads((tmp / "r.json").read_text()), res.stderr


def media_info(path: Path) -> MediaInfo:
    return probe(CHECK, str(path))


def _dropped_lines(stderr: str) -> list[str]:
    return [ln.removeprefix("swarm: ") for ln in stderr.splitlines() if " dropped: " in ln]


def _check_audio(out: Path, want: list[tuple[str, str, tuple[str, ...]]]) -> None:
    info = media_info(out)
    got = [(s.language, s.title, s.dispositions) for s in info.dump.of_kind("audio")]
    assert got == want
    assert len(info.audios) == len(want)  # each has its sound, not only a header


def _check_common(src: Path, out: Path) -> None:
    s, o = media_info(src), media_info(out)
    assert o.video.frames == s.video.frames
    assert decode_errors(out) == ""
    assert [c.title for c in o.dump.chapters] == ["Opening", "Ending"]
    assert [round(c.start_s, 3) for c in o.dump.chapters] == [0.0, 2.0]
    tags = dict(o.dump.tags)
    assert tags["title"] == TITLE
    assert tags["creation_time"].startswith(CREATION)


def test_mkv_keeps_every_track(source: Path, tmp_path: Path) -> None:
    report, err = _encode(source, tmp_path, "out.mkv")
    out = tmp_path / "out.mkv"
    _check_common(source, out)
    _check_audio(out, [(lang, title, disp) for lang, title, disp in AUDIO])
    subs = media_info(out).dump.of_kind("subtitle")
    assert [(s.codec, s.language, s.title) for s in subs] == [
        ("subrip", "eng", "Dialogue"), ("hdmv_pgs_subtitle", "ger", "")]
    assert [s.tag("filename") for s in media_info(out).dump.of_kind("attachment")] == [
        "font.ttf"]
    assert _dropped_lines(err) == [] and report["tracks"]["dropped"] == []
    assert [a["language"] for a in report["tracks"]["audio"]] == ["eng", "fre"]


def test_mp4_keeps_text_subtitles_and_names_what_it_cannot_hold(source: Path,
                                                              tmp_path: Path) -> None:
    report, err = _encode(source, tmp_path, "out.mp4")
    out = tmp_path / "out.mp4"
    _check_common(source, out)
    _check_audio(out, [(lang, title, disp) for lang, title, disp in AUDIO])
    subs = media_info(out).dump.of_kind("subtitle")
    assert [(s.codec, s.language) for s in subs] == [("mov_text", "eng")]
    # Said on the screen and in the report, with the reason and what to do about it.
    assert _dropped_lines(err) == [PGS_DROPPED, FONT_DROPPED]
    dropped = report["tracks"]["dropped"]
    assert [d["message"] for d in dropped] == [PGS_DROPPED, FONT_DROPPED]
    assert not any(d["chosen"] for d in dropped)


def test_audio_first_and_subtitles_none(source: Path, tmp_path: Path) -> None:
    report, err = _encode(source, tmp_path, "out.mp4", "--audio", "first",
                          "--subtitles", "none")
    out = tmp_path / "out.mp4"
    _check_common(source, out)
    # mp4 marks its only audio track enabled: a player must play something.
    _check_audio(out, [("eng", "Main mix", ("default",))])
    assert media_info(out).dump.of_kind("subtitle") == []
    # What the options dropped is in the report only; the font is still worth a line.
    assert _dropped_lines(err) == [FONT_DROPPED]
    chosen = {(d["kind"], d["track"]): d for d in report["tracks"]["dropped"] if d["chosen"]}
    assert set(chosen) == {("audio", 2), ("subtitle", 1), ("subtitle", 2)}
    assert chosen[("audio", 2)]["hint"] == "--audio all keeps it"


def test_audio_none(source: Path, tmp_path: Path) -> None:
    report, err = _encode(source, tmp_path, "out.mkv", "--audio", "none")
    out = tmp_path / "out.mkv"
    _check_common(source, out)
    _check_audio(out, [])
    assert len(media_info(out).dump.of_kind("subtitle")) == 2
    assert report["tracks"]["audio"] == [] and report["audio_encode_s"] is None
    assert _dropped_lines(err) == []


def _with(opts: EncodeOptions, **intent: str) -> EncodeOptions:
    return dataclasses.replace(opts, job=dataclasses.replace(opts.job, **intent))


async def test_resume_needs_the_same_track_options(source: Path, tmp_path: Path) -> None:
    info = media_info(source)
    plans = plan_chunks(info.video, info.format_start_s, 1.0)
    identity = input_identity(str(source))
    wd = tmp_path / ".out.mp4.swarm"
    wd.mkdir()
    opts = EncodeOptions(JobIntent(str(source), str(tmp_path / "out.mp4"), load_profile("hd")))
    journal = Journal(wd)
    try:
        resumed = [(await _open_plan(journal, o, info, identity, plans, str(wd)))[2]
                   for o in (opts, opts, _with(opts, audio="first"), _with(opts, audio="first"),
                             _with(opts, subtitles="none"))]
    finally:
        journal.close()
    assert resumed == [False, True, False, True, False]


def _first_cue_s(path: Path) -> float:
    """When the first subtitle shows, after the first video frame."""
    srt = subprocess.run([CHECK.path, "-v", "error", "-i", str(path), "-map", "0:s:0", "-f",
                          "srt", "-"], capture_output=True, text=True, timeout=60).stdout
    h, m, s = srt.splitlines()[1].split(" --> ")[0].replace(",", ".").split(":")
    return int(h) * 3600 + int(m) * 60 + float(s) - media_info(path).video.start_s


@pytest.mark.parametrize("profile", ["hd", "fhd"], ids=["aac-copied", "ac3-in-merge"])
def test_subtitles_keep_their_time_when_the_source_starts_late(
        source: Path, tmp_path: Path, profile: str) -> None:
    late = tmp_path / "late.mkv"
    subprocess.run([CHECK.path, "-v", "error", "-i", str(source), "-map", "0:v", "-map",
                    "0:a", "-map", "0:s:0", "-c", "copy", "-output_ts_offset", "2", str(late)],
                   check=True, timeout=60)
    _encode(late, tmp_path, "out.mp4", "-p", profile)
    # The first cue shows 0.5 s after the first frame, in the source and in the output.
    assert _first_cue_s(late) == pytest.approx(0.5, abs=0.001)
    assert _first_cue_s(tmp_path / "out.mp4") == pytest.approx(0.5, abs=0.001)
