"""Pure parts: planning, geometry, profiles, argv building, the job state table."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import pytest

from chunker.commands import VideoPlan, encode_chunk_argv, merge_argv, write_concat_list
from chunker.plan import MAX_CHUNK_S, MIN_SPLIT_S, default_chunk_seconds, plan_chunks
from chunker.probe import VideoInfo, check_probe_run, interpret_probe, parse_framecrc
from chunker.tracks import Kept, TrackPlan
from profiles import Profile, builtin_names, fit_box, load_profile
from swarm.errors import LocalProtocolError, ProbeError, ProfileError
from swarm.job import AttemptOutcome, ChunkState, Finished, Grant, Job, Retry


def _video(n: int, fps: int = 25, keys: tuple[int, ...] | None = None) -> VideoInfo:
    tb = Fraction(1, fps * 512)
    return VideoInfo(codec="h264", width=640, height=360, sar=Fraction(1), rotation=0,
                     time_base=tb, pts=tuple(i * 512 for i in range(n)),
                     keyframes=keys if keys is not None else tuple(range(0, n, fps)),
                     last_duration=512)


# -- planning ---------------------------------------------------------------------------
def test_plan_covers_every_frame_once_and_cuts_on_keyframes() -> None:
    v = _video(250)
    plans = plan_chunks(v, 0.0, 2.0)
    assert [p.first for p in plans] == [0, 50, 100, 150, 200]
    assert sum(p.frames for p in plans) == 250
    assert all(p.keyframe for p in plans)
    assert plans[0].seek_s is None and plans[0].trim_s is None
    for p in plans[1:]:
        at = v.seconds(p.first)
        assert p.trim_s is not None and v.seconds(p.first - 1) < p.trim_s < at
        assert p.seek_s is not None and at <= p.seek_s < v.seconds(p.first + 1)
    assert plans[-1].span_s is None
    assert all(p.span_s == pytest.approx(2.0) for p in plans[:-1])


def test_plan_cuts_between_keyframes_when_they_are_sparse() -> None:
    v = _video(250, keys=(0,))
    plans = plan_chunks(v, 0.0, 2.0)
    assert len(plans) == 5 and not any(p.keyframe for p in plans[1:])
    for p in plans[1:]:
        # Seek lands before the cut; the trim decides.
        assert p.seek_s == pytest.approx(p.trim_s)


def test_plan_snaps_to_the_nearest_keyframe() -> None:
    v = _video(250, keys=(0, 40, 60, 130, 170))
    plans = plan_chunks(v, 0.0, 2.0)
    # Keyframes within half a chunk of the ideal cut (every 50 frames) win; where none is
    # near, any frame. Ideal cuts stay on their grid: 250 frames make 5 chunks of ~50.
    assert [p.first for p in plans] == [0, 40, 100, 130, 200]
    assert [p.keyframe for p in plans] == [True, True, False, True, False]


@pytest.mark.parametrize("start", [1.456778, -1.340911])  # MPEG-TS; its clock wrapped
def test_plan_seeks_from_the_container_start_and_trims_in_source_time(start: float) -> None:
    # The probe's times count from the container start, as -ss does; the trim runs under
    # -copyts and sees the source's own timestamps.
    v = _video(100)
    plans = plan_chunks(v, start, 1.0)
    assert plans[1].seek_s == pytest.approx(v.seconds(25) + 0.0005)
    assert plans[1].trim_s == pytest.approx(start + (v.seconds(24) + v.seconds(25)) / 2)


def test_plan_seeks_before_the_keyframe_where_seeks_land_on_any_frame() -> None:
    # MPEG-TS: -ss bisects on decode timestamps and lands on any frame; the decoder then
    # waits for the next keyframe. Aim at the decode time of the keyframe before the cut.
    v = replace(_video(250, keys=(0, 40, 120, 170)), reorder=1024)  # 2 frames of B delay
    plans = plan_chunks(v, 1.4, 2.0, keyframe_seek=False)
    for p in plans[1:]:
        key = max(k for k in v.keyframes if k <= p.first)
        assert p.seek_s is not None
        assert v.seconds(key) - 0.08 - 0.1 <= p.seek_s <= v.seconds(key) - 0.08
        assert p.trim_s == pytest.approx(1.4 + (v.seconds(p.first - 1) + v.seconds(p.first)) / 2)
    # Indexed containers keep seeking just past the keyframe (no extra GOP decoded).
    assert [p.seek_s for p in plan_chunks(v, 1.4, 2.0)] != [p.seek_s for p in plans]


def test_short_source_is_one_chunk() -> None:
    assert len(plan_chunks(_video(10), 0.0, 4.0)) == 1


def test_default_chunk_length_bounds() -> None:
    # Four per slot while they are at least MIN_CHUNK_S long, at most MAX_CHUNK_S.
    assert default_chunk_seconds(160, 4) == 10.0
    assert default_chunk_seconds(120, 4) == 7.5
    assert default_chunk_seconds(3600, 2) == MAX_CHUNK_S
    # Shorter files: as many MIN_CHUNK_S chunks as fit, a whole number per slot...
    assert default_chunk_seconds(30, 2) == 7.5  # 5 fit, 4 taken
    assert default_chunk_seconds(30, 3) == 10.0
    # ...but one per slot at least, down to MIN_SPLIT_S.
    assert default_chunk_seconds(8, 2) == 4.0
    assert default_chunk_seconds(1.5, 2) == MIN_SPLIT_S
    for duration in (0.5, 3, 7, 13, 29, 61, 200, 10_000):
        for slots in (1, 2, 3, 5, 16):
            c = default_chunk_seconds(duration, slots)
            assert MIN_SPLIT_S <= c <= MAX_CHUNK_S
            if duration / slots >= MIN_SPLIT_S:  # every slot can have a chunk
                assert duration / c >= slots - 1e-9


# -- probe parsing ----------------------------------------------------------------------
FRAMECRC = """#tb 0: 1/15360
#media_type 0: video
#codec_id 0: h264
#dimensions 0: 320x240
#sar 0: 4/3
#tb 1: 1/48000
#media_type 1: audio
#codec_id 1: aac
#sample_rate 1: 48000
#channel_layout_name 1: 5.1(side)
0,      -1024,          0,      512,     4929, 0x981306b2
0,       -512,       1536,      512,     1948, 0xb3fdb13b, F=0x0
1,      -1024,      -1024,     1024,      256, 0xea44782a, F=0x5, S=1, Skip Samples, 10, 0x1
0,          0,        512,      512,      996, 0xf00eec13, F=0x0
"""


def test_parse_framecrc() -> None:
    s = parse_framecrc(FRAMECRC)
    assert s[0].media_type == "video" and (s[0].width, s[0].height) == (320, 240)
    assert s[0].sar == Fraction(4, 3) and s[0].tb == Fraction(1, 15360)
    assert s[0].packets == [(0, 512, True), (1536, 512, False), (512, 512, False)]
    assert s[1].channels == 6 and s[1].sample_rate == 48000
    assert s[1].packets == [(-1024, 1024, True)]


@pytest.mark.parametrize(("header", "indexed"), [
    ("Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'a.mp4':", True),
    ("Input #0, matroska,webm, from 'a.mkv':", True),
    ("Input #0, mpegts, from 'a.ts':", False),
    ("Input #0, mpeg, from 'a.vob':", False),
])
def test_probe_knows_where_seeks_land_on_keyframes(header: str, indexed: bool) -> None:
    err = f"[info] {header}\n[info]   Duration: 00:00:01.00, start: 1.400000, bitrate: 1 kb/s\n"
    info = interpret_probe("a", 1, FRAMECRC, err)
    assert info.keyframe_seek is indexed and info.format_start_s == 1.4
    assert info.video.reorder == 2048  # pts 1536 decoded at dts -512: four frames early


def test_a_probe_that_crashed_blames_ffmpeg_not_the_file() -> None:
    with pytest.raises(ProbeError, match=r"a.ts: ffmpeg crashed reading it \(SIGSEGV\); "
                       r"another ffmpeg build may read it \(set SWARM_FFMPEG\)"):
        check_probe_run("a.ts", -11, "")
    with pytest.raises(ProbeError, match="not a readable video"):
        check_probe_run("a.ts", 1, "[error] Invalid data found when processing input")


def test_parse_framecrc_skips_video_frames_the_decoder_discards() -> None:
    # A stream-copy cut inside a GOP: the mp4 edit list hides the frames before the cut,
    # which ffmpeg flags discard (0x4); they are decoded as references, never shown.
    text = FRAMECRC.replace("#codec_id 0: h264\n", "#codec_id 0: h264\n"
                            "0,      -2048,      -1024,      512,     4929, 0x1, F=0x5\n"
                            "0,      -1536,      -512,      512,     4929, 0x1, F=0x4\n")
    s = parse_framecrc(text)
    assert s[0].packets == [(0, 512, True), (1536, 512, False), (512, 512, False)]
    assert s[1].packets == [(-1024, 1024, True)]  # audio keeps its priming packet


# -- geometry and profiles --------------------------------------------------------------
@pytest.mark.parametrize(("src", "box", "up", "want"), [
    ((1920, 1080), (1280, 720), False, (1280, 720)),
    ((1080, 1920), (1280, 720), False, (720, 1280)),  # portrait keeps its orientation
    ((640, 360), (1280, 720), False, (640, 360)),  # never upscaled
    ((640, 360), (1280, 720), True, (1280, 720)),
    ((321, 241), (1280, 720), False, (320, 240)),  # even sides, not larger
    ((4000, 3000), (852, 480), False, (640, 480)),
    ((960, 720), (1280, 720), False, (960, 720)),  # 4:3 in a 16:9 box
])
def test_fit_box(src: tuple[int, int], box: tuple[int, int], up: bool,
                 want: tuple[int, int]) -> None:
    assert fit_box(*src, *box, upscale=up) == want


def test_builtin_profiles_match_the_seed_table() -> None:
    assert {"4k", "fhd", "hd", "480p"} <= set(builtin_names())
    table = {
        "4k": (4096, 2160, "high", 15600, "5.1", "veryslow", "ac3", 512, 48000, 6),
        "fhd": (1920, 1080, "high", 3900, "4.1", "slow", "ac3", 320, 48000, 6),
        "hd": (1280, 720, "main", 2000, "4.1", "medium", "aac", 320, 44100, 2),
        "480p": (852, 480, "main", 900, "3.1", "fast", "aac", 256, 44100, 2),
    }
    for name, row in table.items():
        p = load_profile(name)
        v, a = p.video, p.audio
        assert (v.width, v.height, v.profile, v.bitrate_k, v.level, v.preset, a.codec,
                a.bitrate_k, a.sample_rate, a.channels) == row
        assert v.codec == "libx264" and v.maxrate_k >= v.bitrate_k and v.bufsize_k > 0


def test_every_builtin_profile_round_trips_the_wire_form() -> None:
    for name in builtin_names():
        p = load_profile(name)
        # A ladder travels sized, in the invite's own field (Invite.ladder), not in the profile.
        assert Profile.from_mapping(p.to_wire() | {"description": p.description}) == replace(
            p, ladder=())


@pytest.mark.parametrize(("text", "field"), [
    ('[video]\ncodec="libx264"\nwidth=1280\nheight=720\ncrf=20\n', "audio"),
    ('[video]\ncodec="rm -rf"\nwidth=1\nheight=1\n[audio]\n', "video.codec"),
    ('[video]\ncodec="libx264"\nwidth=99999\nheight=720\ncrf=20\n'
     '[audio]\ncodec="aac"\nbitrate_k=128\nchannels=2\n', "video.width"),
    ('[video]\ncodec="libx264"\nwidth=1280\nheight=720\ncrf=20\nbitrate_k=100\n'
     '[audio]\ncodec="aac"\nbitrate_k=128\nchannels=2\n', "video.bitrate_k"),
    ('[video]\ncodec="libx264"\nwidth=1280\nheight=720\ncrf=20\npreset="fastest"\n'
     '[audio]\ncodec="aac"\nbitrate_k=128\nchannels=2\n', "video.preset"),
    ('[video]\ncodec="libx264"\nwidth=1280\nheight=720\ncrf=20\nfilter="x"\n'
     '[audio]\ncodec="aac"\nbitrate_k=128\nchannels=2\n', "video.filter"),
    ('[video]\ncodec="libx264"\nwidth=1280\nheight=720\ncrf=20\n'
     '[audio]\ncodec="ac3"\nbitrate_k=128\nchannels=8\nsample_rate=48000\n', "audio.channels"),
    ('[video]\ncodec="libx264"\nwidth=true\nheight=720\ncrf=20\n'
     '[audio]\ncodec="aac"\nbitrate_k=128\nchannels=2\n', "video.width"),
    ("this is = not toml [", "not valid TOML"),
])
def test_bad_profile_names_the_field(tmp_path: Path, text: str, field: str) -> None:
    f = tmp_path / "mine.toml"
    f.write_text(text)
    with pytest.raises(ProfileError, match=field.replace(".", r"\.")):
        load_profile(str(f))


def test_user_profile_and_unknown_name(tmp_path: Path) -> None:
    f = tmp_path / "mine.toml"
    f.write_text('[video]\ncodec="libx264"\nwidth=640\nheight=360\ncrf=23\n'
                 '[audio]\ncodec="aac"\nbitrate_k=96\nchannels=1\n')
    p = load_profile(str(f))
    assert p.name == "mine" and p.video.preset == "medium" and p.audio.sample_rate == 48000
    with pytest.raises(ProfileError, match="unknown profile 'nope'"):
        load_profile("nope")


# -- argv -------------------------------------------------------------------------------
def test_chunk_argv_is_built_from_profile_fields_only() -> None:
    p = load_profile("hd")
    argv = encode_chunk_argv("/bin/ffmpeg", p, VideoPlan(1280, 720, 60), "http://c:7800/src",
                             4.0005, 3.98, 60, threads=2)
    assert argv[0] == "/bin/ffmpeg"
    assert argv[argv.index("-ss") + 1] == "4.000500" and "-noaccurate_seek" in argv
    assert argv[argv.index("-i") + 1] == "http://c:7800/src"
    assert "trim=start=3.980000" in argv[argv.index("-filter_complex") + 1]
    assert argv[argv.index("-frames:v") + 1] == "60"
    for flag, value in [("-c:v", "libx264"), ("-b:v", "2000k"), ("-maxrate", "3000k"),
                        ("-bufsize", "4000k"), ("-preset", "medium"), ("-f", "nut")]:
        assert argv[argv.index(flag) + 1] == value
    assert argv[-1] == "pipe:1" and "-copyts" in argv
    assert "-enc_time_base:v" not in argv  # a synthetic source: ffmpeg's default


def test_chunk_argv_encodes_in_the_source_time_base() -> None:
    # Not 1/(the frame rate ffmpeg guesses from the first seconds): the rate may change.
    plan = VideoPlan(1280, 720, 60, Fraction(1, 90000))
    argv = encode_chunk_argv("/bin/ffmpeg", load_profile("hd"), plan, "in.mp4", None, None, 9)
    assert argv[argv.index("-enc_time_base:v") + 1] == "1/90000"
    assert argv[argv.index("-fps_mode") + 1] == "passthrough"


def test_merge_argv_and_concat_list(tmp_path: Path) -> None:
    lst = tmp_path / "l.ffconcat"
    write_concat_list(str(lst), ["/w/chunk_00000.nut", "/w/chunk_00001.nut"], [2.0, None])
    assert lst.read_text() == ("ffconcat version 1.0\nfile 'chunk_00000.nut'\n"
                               "duration 2.000000\nfile 'chunk_00001.nut'\n")
    with pytest.raises(ValueError):
        write_concat_list(str(lst), ["a'b.nut"], [None])
    stereo = Kept("audio", 0, 1, "aac", "eng", "", ("default",), channels=2)
    argv = merge_argv("ff", str(lst), "src.mp4", load_profile("hd"), TrackPlan((stereo,)),
                      0.5, Fraction(1, 15360), "out.mp4")
    assert argv[argv.index("-itsoffset") + 1] == "0.500000"
    assert argv[argv.index("-video_track_timescale") + 1] == "15360"
    assert argv[argv.index("-ac:a:0") + 1] == "2" and argv[argv.index("-c:v") + 1] == "copy"


# -- the job state table ----------------------------------------------------------------
def test_job_hands_out_each_chunk_and_finishes() -> None:
    job = Job([10, 10, 10])
    got = [job.claim("p", 0.0) for _ in range(3)]
    assert [a.chunk for a in got if isinstance(a, Grant)] == [0, 1, 2]
    assert isinstance(job.claim("p", 0.0), Retry)
    for a in got:
        assert isinstance(a, Grant) and job.succeeded(a.attempt, 1.0)
    assert job.done and job.frames_done == 30
    assert isinstance(job.claim("p", 2.0), Finished)


def test_expired_lease_requeues_first_and_late_result_is_refused() -> None:
    job = Job([5, 5, 5], lease_s=10)
    a0 = job.claim("slow", 0.0)
    assert isinstance(a0, Grant)
    assert job.progress(a0.attempt, 2, 5.0)
    assert job.chunks[0].state is ChunkState.ENCODING
    assert job.tick(14.9) == []
    requeued = job.tick(15.0)
    assert [r.chunk for r in requeued] == [0]
    assert job.attempts[a0.attempt].outcome is AttemptOutcome.EXPIRED
    a1 = job.claim("fast", 15.0)
    assert isinstance(a1, Grant) and a1.chunk == 0 and a1.attempt != a0.attempt
    assert not job.progress(a0.attempt, 3, 16.0)  # the old attempt is told to stop
    assert not job.succeeded(a0.attempt, 17.0)  # and its result is ignored
    assert job.succeeded(a1.attempt, 18.0)
    assert not job.succeeded(a1.attempt, 18.0)  # merged exactly once
    assert job.chunks[0].winner == a1.attempt


def test_failures_requeue_and_bench_the_peer() -> None:
    job = Job([1, 1, 1, 1], max_failures=2)
    for _ in range(2):
        a = job.claim("bad", 0.0)
        assert isinstance(a, Grant)
        assert job.failed(a.attempt, 1.0, "broken")
    assert "bad" in job.benched
    assert isinstance(job.claim("bad", 2.0), Retry)
    a = job.claim("good", 2.0)
    # The twice-failed chunk is requeued ahead of fresh ones, on its third attempt.
    assert isinstance(a, Grant) and a.chunk == 0 and a.attempt == "c00000a003"


def test_restore_counts_a_journalled_chunk_done_before_any_claim() -> None:
    for policy in ("swarm", "fifo", "equal"):
        job = Job([10, 20, 30], policy=policy)
        job.restore(1)
        assert job.chunks[1].state is ChunkState.DONE and job.frames_done == 20
        got, t = [], 0.0
        while not job.done:
            a = job.claim("p", t)
            if isinstance(a, Retry) and policy == "equal" and not got:
                t += a.retry_after_s  # the equal split settles first
                continue
            assert isinstance(a, Grant)
            got.append(a.chunk)
            assert job.succeeded(a.attempt, t + 1.0)
        assert sorted(got) == [0, 2], policy
    with pytest.raises(LocalProtocolError):
        job.restore(0)  # after claims: too late


def test_peer_left_requeues_its_chunks() -> None:
    job = Job([1, 1])
    a = job.claim("p", 0.0)
    assert isinstance(a, Grant)
    assert [r.chunk for r in job.peer_left("p", 1.0)] == [0]
    assert job.chunks[0].state is ChunkState.PENDING


def test_illegal_transition_raises() -> None:
    job = Job([1])
    with pytest.raises(LocalProtocolError):
        job.chunks[0].move(ChunkState.ENCODING)  # never claimed
    a = job.claim("p", 0.0)
    assert isinstance(a, Grant) and job.succeeded(a.attempt, 1.0)
    with pytest.raises(LocalProtocolError):
        job.chunks[0].move(ChunkState.PENDING)  # done is final
    with pytest.raises(LocalProtocolError):
        Job([])


# -- pieces: a planned chunk cut to a claimer's share -------------------------------------
def test_split_plan_is_the_plan_of_both_pieces_and_offsets_are_inner_keyframes() -> None:
    from chunker.plan import cut_offsets, plans_from_cuts, split_plan

    v = _video(300, keys=(0, 25, 50, 75, 100, 150, 175, 200, 250, 275))
    plans = plans_from_cuts(v, 0.5, [0, 100, 200])
    assert [cut_offsets(v, p) for p in plans] == [[25, 50, 75], [50, 75], [50, 75]]
    head, rest = split_plan(v, 0.5, plans[1], 50, 3)
    whole = plans_from_cuts(v, 0.5, [0, 100, 150, 200])
    assert head == whole[1]
    assert rest == replace(whole[2], index=3)
    assert head.span_s == pytest.approx(2.0) and rest.first == 150 and rest.frames == 50
    last_head, last_rest = split_plan(v, 0.5, plans[2], 75, 4)
    assert last_rest.span_s is None and last_head.span_s == pytest.approx(3.0)
    with pytest.raises(ValueError):
        split_plan(v, 0.5, plans[1], 100, 3)


def test_resume_replans_cut_chunks_with_their_journalled_indices() -> None:
    from chunker.plan import plans_from_cuts, plans_from_rows

    v = _video(300)
    # As the journal holds them after chunk 0 was cut at 50 (its rest became chunk 3).
    rows = [(0, 50), (100, 100), (200, 100), (50, 50)]
    plans = plans_from_rows(v, 0.0, rows)
    assert [(p.index, p.first, p.frames) for p in plans] == [
        (0, 0, 50), (1, 100, 100), (2, 200, 100), (3, 50, 50)]
    assert plans[3] == replace(plans_from_cuts(v, 0.0, [0, 50, 100, 200])[1], index=3)
    with pytest.raises(ValueError):  # a gap: chunk 3 lost its row
        plans_from_rows(v, 0.0, rows[:3])
    with pytest.raises(ValueError):  # an overlap
        plans_from_rows(v, 0.0, [(0, 60), (50, 250)])
