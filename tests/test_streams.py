"""Reading every stream from ffmpeg's dump, and deciding each track. Pure: no ffmpeg runs.

The dumps in tests/data are real stderr of the probe pass (``probe_argv``) run by Debian's
5.1, the 7.0.2 static build and the bundled 9.0 on files made with ffmpeg: a Matroska file
with two audio tracks, a text and an image subtitle, a font and chapters; that file
remuxed to mp4 (mov_text, a chapter text track); a mov with a timecode track and a
rotation; an MPEG-TS file (a program).
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from pathlib import Path

import pytest

from chunker.commands import merge_argv
from chunker.probe import AudioInfo, MediaInfo, VideoInfo
from chunker.streams import StreamDump, parse_stream_dump
from chunker.tracks import ffmetadata_text, plan_tracks
from chunker.verify import check_output
from profiles import load_profile
from swarm.errors import VerifyError

DATA = Path(__file__).resolve().parent / "data"


def _dump(name: str) -> str:
    return (DATA / f"streams-{name}.txt").read_text(encoding="utf-8")


def _info(name: str, start_s: float = 0.0) -> MediaInfo:
    dump = parse_stream_dump(_dump(name))
    video = VideoInfo(codec="h264", width=320, height=240, sar=Fraction(1), rotation=0,
                      time_base=Fraction(1, 1000), pts=(0, 40, 80), keyframes=(0,),
                      last_duration=40)
    audios = tuple(AudioInfo(track=n, codec="aac", channels=2 if s.layout == "stereo" else 1,
                             sample_rate=44100, time_base=Fraction(1, 1000), start=0,
                             end=120)
                   for n, s in enumerate(dump.of_kind("audio")))
    return MediaInfo(path=f"src-{name}", size=1, format_start_s=start_s, video=video,
                     audio=audios[0] if audios else None, audios=audios, dump=dump)


@pytest.mark.parametrize("version", ["5.1", "7.0", "9.0"])
def test_every_stream_of_the_mkv_dump(version: str) -> None:
    d = parse_stream_dump(_dump(f"{version}-mkv"))
    got = [(s.index, s.kind, s.codec, s.language, s.title, s.dispositions) for s in d.streams]
    assert got == [
        (0, "video", "h264", "", "", ()),
        (1, "audio", "aac", "eng", "Main mix", ()),
        (2, "audio", "aac", "fre", "Commentaire", ("default",)),
        # 9.0 prints "subrip (srt)": the encoder's name, not a disposition.
        (3, "subtitle", "subrip", "eng", "", ("default",)),
        (4, "subtitle", "hdmv_pgs_subtitle", "eng", "", ()),
        (5, "attachment", "ttf", "", "", ()),
    ]
    assert d.streams[5].tag("filename") == "font.ttf"
    assert d.streams[1].layout == "mono"
    assert [(c.start_s, c.end_s, c.title) for c in d.chapters] == [
        (0.0, 2.0, "Opening"), (2.0, 4.0, "Ending")]
    # The file's tags, not the output section's that follows in the same stderr.
    assert dict(d.tags) == {"title": "My Film", "ENCODER": "Lavf63.1.102"}


@pytest.mark.parametrize("version", ["5.1", "9.0"])
def test_mp4_dump_titles_and_the_chapter_track(version: str) -> None:
    d = parse_stream_dump(_dump(f"{version}-mp4"))
    assert [(s.kind, s.codec, s.language, s.codec_tag) for s in d.streams] == [
        ("video", "h264", "und", "avc1"), ("audio", "aac", "eng", "mp4a"),
        ("audio", "aac", "fre", "mp4a"), ("subtitle", "mov_text", "eng", "tx3g"),
        ("data", "bin_data", "eng", "text")]
    # 9.0 reads an mp4 track title back as "name"; 5.1 does not read it at all.
    assert [s.title for s in d.of_kind("audio")] == (
        ["Main mix", "Commentaire"] if version == "9.0" else ["", ""])
    assert dict(d.tags)["creation_time"] == "2024-05-06T07:08:09.000000Z"
    assert len(d.chapters) == 2


@pytest.mark.parametrize("version", ["5.1", "9.0"])
def test_mov_dump_with_a_stream_group_and_a_timecode(version: str) -> None:
    # 9.0 lists the video and its timecode inside a "Stream group", before stream 1.
    d = parse_stream_dump(_dump(f"{version}-mov"))
    assert [(s.index, s.kind, s.codec_tag) for s in d.streams] == [
        (0, "video", "avc1"), (1, "audio", "mp4a"), (2, "data", "tmcd")]
    assert d.streams[0].tag("timecode") == "01:00:00:00"
    assert "displaymatrix" not in {k for k, _ in d.streams[0].tags}  # side data, not tags


def test_ts_dump_program_tags_are_not_the_files() -> None:
    d = parse_stream_dump(_dump("9.0-ts"))
    assert d.tags == () and [s.language for s in d.of_kind("audio")] == ["eng", "fre"]


def test_dump_details_prefixes_continuations_and_unknown_lines() -> None:
    text = ("[info] Input #0, matroska,webm, from 'x.mkv':\n"
            "[info]   Metadata:\n"
            "[info]     comment         : line one\n"
            "                     : line two\n"
            "[info]     service_provider: me\n"
            "[info]   Duration: 00:00:01.00, start: 0.000000, bitrate: 1 kb/s\n"
            "[info]   Stream #0:0(jpn): Audio: opus, 48000 Hz, stereo, fltp "
            "(default) (hearing impaired) (forced)\n"
            "[info]   Stream #0:1: Video: mjpeg (Baseline), yuvj420p, 1x1, 90k tbn "
            "(attached pic)\n"
            "[info] Input #1, matroska,webm, from 'y.mkv':\n"
            "[info]   Stream #1:0: Video: h264\n")
    d = parse_stream_dump(text)
    assert dict(d.tags) == {"comment": "line one\nline two", "service_provider": "me"}
    assert d.streams[0].dispositions == ("default", "hearing_impaired", "forced")
    assert d.streams[1].cover and len(d.streams) == 2
    assert parse_stream_dump("") == parse_stream_dump("garbage\nStream #0:0: Video: x")


def test_mp4_output_keeps_text_subtitles_and_names_the_rest() -> None:
    plan = plan_tracks(_info("9.0-mkv"), "mp4", 2, "aac", mkv_name="film.mkv")
    assert [(k.track, k.language, k.title, k.dispositions) for k in plan.audio] == [
        (0, "eng", "Main mix", ()), (1, "fre", "Commentaire", ("default",))]
    assert [(k.track, k.codec) for k in plan.subtitles] == [(0, "mov_text")]
    assert plan.attachments == () and plan.chapters == 2
    assert dict(plan.tags) == {"title": "My Film"}  # the encoder tag is the output's own
    assert [d.message for d in plan.dropped] == [
        "subtitle track 2 (hdmv_pgs_subtitle, eng) dropped: mp4 cannot hold image "
        "subtitles; use -o film.mkv to keep it, or --subtitles none to silence this",
        "attachment track 1 (ttf) dropped: mp4 cannot hold attachments (font.ttf); "
        "use -o film.mkv to keep it"]
    assert not any(d.chosen for d in plan.dropped)


def test_mkv_output_keeps_everything_and_options_drop_by_choice() -> None:
    info = _info("5.1-mkv")
    plan = plan_tracks(info, "matroska", 2, "aac")
    assert len(plan.audio) == 2 and plan.dropped == ()
    assert [k.codec for k in plan.subtitles] == ["copy", "copy"]
    assert [k.stream for k in plan.attachments] == [5]
    first = plan_tracks(info, "matroska", 2, "aac", audio="first", subtitles="none")
    assert [k.track for k in first.audio] == [0] and first.subtitles == ()
    assert [(d.kind, d.track, d.chosen) for d in first.dropped] == [
        ("audio", 2, True), ("subtitle", 1, True), ("subtitle", 2, True)]
    assert plan_tracks(info, "matroska", 2, "aac", audio="none").audio == ()
    # mp4 text subtitles become SubRip in Matroska, which has no mov_text.
    assert [k.codec for k in plan_tracks(_info("9.0-mp4"), "matroska", 2, "aac").subtitles
            ] == ["srt"]


def test_data_streams_are_named_unless_they_are_mp4_chapters() -> None:
    assert plan_tracks(_info("9.0-mp4"), "mp4", 2, "aac").dropped == ()
    [d] = plan_tracks(_info("5.1-mov"), "mov", 2, "aac").dropped
    assert d.message == ("data track 1 (tmcd, eng) dropped: data streams (timecodes, "
                         "sensor data) are not carried over")


def test_ffmetadata_escapes_and_moves_chapters_with_the_streams() -> None:
    info = _info("9.0-mkv")
    plan = plan_tracks(info, "mp4", 2, "aac")
    plan = type(plan)(chapters=plan.chapters, tags=(("title", "a=b;c#d\\e\nf"),))
    text = ffmetadata_text(info, plan, 0.5)
    assert text.splitlines()[:2] == [";FFMETADATA1", "title=a\\=b\\;c\\#d\\\\e\\"]
    assert "START=0\nEND=1500000\ntitle=Opening" in text  # 0.0 - 0.5 clamps to 0
    assert "START=1500000\nEND=3500000\ntitle=Ending" in text


def test_merge_argv_maps_every_kept_track() -> None:
    info = _info("9.0-mkv", start_s=1.457)
    plan = plan_tracks(info, "mp4", 2, "aac")
    argv = merge_argv("ff", "l.ffconcat", "src.mkv", load_profile("hd"), plan, 0.0,
                      Fraction(1, 1000), "out.mp4", "mp4", "audio.mp4",
                      source_start_s=1.457, metadata_file="tags.ffmeta")
    joined = " ".join(argv)
    # Copied audio needs -copyts; the source's subtitles then move as the audio file did.
    assert "-copyts" in argv and "-itsoffset -1.457000 -i src.mkv" in joined
    assert "-map 0:v:0 -map 1:a:0 -map 1:a:1 -map 2:s:0" in joined
    assert "-c:s:0 mov_text" in joined and "-map_chapters 3" in joined
    assert "-metadata:s:a:1 language=fre -metadata:s:a:1 title=Commentaire" in joined
    assert "-disposition:a:0 0" in joined and "-disposition:a:1 default" in joined
    # AC3 is encoded in the merge, from the source, track by track.
    ac3 = merge_argv("ff", "l.ffconcat", "src.mkv", load_profile("fhd"), plan, 0.0,
                     Fraction(1, 1000), "out.mp4")
    joined = " ".join(ac3)
    assert "-copyts" not in ac3 and "-itsoffset" not in ac3
    assert "-map 1:a:0 -map 1:a:1 -map 1:s:0" in joined and "-map_chapters -1" in joined
    assert "-ac:a:0 1 -ac:a:1 1" in joined


def test_output_check_counts_every_kept_track() -> None:
    source = _info("9.0-mkv")
    plan = plan_tracks(source, "mp4", 2, "aac")
    check_output(_info("9.0-mp4"), source, plan)
    with pytest.raises(VerifyError, match="1 subtitle track"):
        check_output(_info("9.0-mp4"), source,
                     plan_tracks(source, "matroska", 2, "aac", audio="all"))
    with pytest.raises(VerifyError, match="2 audio track"):
        check_output(_info("9.0-mp4"), source,
                     plan_tracks(source, "mp4", 2, "aac", audio="first"))
    with pytest.raises(VerifyError, match="could not be read"):
        check_output(dataclasses.replace(_info("9.0-mp4"), dump=StreamDump()), source, plan)
