"""ffmpeg argument lists, built from validated profile fields. Pure: nothing runs here.

A peer calls ``encode_chunk_argv`` with an input it was given by its coordinator (a local
path for local slots, an http URL for remote ones) and numbers that passed validation; no
string from the network reaches the argv except that URL, which the caller checks.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import ffmpeg as ffmpeg_py

from profiles import Profile, Rung, fit_box
from profiles.profile import MAX_BOX
from swarm.errors import UsageError

from .streams import StreamInfo
from .tools import FFmpeg
from .tracks import Kept, TrackPlan

__all__ = [
    "AUDIO_COPY_EXACT",
    "CHUNK_FORMAT",
    "COPY_TS_OFFSET_S",
    "AudioPlan",
    "VideoPlan",
    "audio_argv",
    "copy_source_argv",
    "encode_chunk_argv",
    "join_parts_argv",
    "ladder_plan",
    "merge_argv",
    "packet_listing_argv",
    "verify_chunk_argv",
    "video_plan",
    "write_concat_list",
]

# NUT keeps the source time base exactly and can be written to a pipe, which matroska (1 ms
# ticks) and mp4 (needs to seek back for its index) cannot both do.
CHUNK_FORMAT = "nut"
_QUIET = ("-nostdin", "-hide_banner", "-loglevel", "error")
# Audio codecs whose encode can run beside the chunk encodes, into an mp4 that the merge
# then copies: their priming and end trim survive the copy exactly (same packets, same
# decoded samples as encoding inside the merge; tests/test_pipeline checks it). AC3 does
# not qualify: the copy loses the end trim of its last, partial frame (up to 31 ms more
# audio), so it is still encoded inside the merge.
AUDIO_COPY_EXACT = frozenset({"aac", "libopus"})
# Dispositions a kept track carries into the output; the others describe what the source
# was (a cover picture, a dependent stream), not what it is in the output.
_OUTPUT_DISPOSITIONS = frozenset({"default", "dub", "original", "comment", "lyrics",
                                  "karaoke", "forced", "hearing_impaired", "visual_impaired",
                                  "captions", "descriptions"})


@dataclass(frozen=True, slots=True)
class VideoPlan:
    """What every chunk of one job is encoded to; the same for every peer."""

    width: int
    height: int
    gop_frames: int
    # The source's video time base, which every chunk is encoded in (None: ffmpeg's default,
    # for synthetic sources such as the benchmark's). See encode_chunk_argv.
    time_base: Fraction | None = None
    # A ladder: every rendition, tallest first, each sized and with its rate control; the
    # first is width x height. Empty: one rendition, the profile's.
    rungs: tuple[Rung, ...] = ()

    @property
    def renditions(self) -> int:
        return max(1, len(self.rungs))

    def part(self, rungs: Sequence[int]) -> VideoPlan:
        """The plan of a chunk that holds only the ladder's rungs ``rungs`` (indices, in
        order): one stream per rung, sized and rate-controlled as in the whole ladder and
        still a ladder (keyframes at the GOP grid only), so that the streams equal those
        the whole chunk would hold. ``()`` or every rung: this plan."""
        if not rungs or tuple(rungs) == tuple(range(len(self.rungs))):
            return self
        if not self.rungs or sorted(set(rungs)) != list(rungs) or rungs[-1] >= len(self.rungs):
            raise ValueError(f"rungs {list(rungs)}: not in ascending order of this ladder's")
        chosen = tuple(self.rungs[i] for i in rungs)
        return VideoPlan(chosen[0].width, chosen[0].height, self.gop_frames, self.time_base,
                         chosen)


@dataclass(frozen=True, slots=True)
class AudioPlan:
    channels: int
    offset_s: float  # audio start minus video start in the source


def video_plan(profile: Profile, display_w: float, display_h: float, fps: float,
               upscale: bool, time_base: Fraction | None = None) -> VideoPlan:
    w, h = fit_box(display_w, display_h, profile.video.width, profile.video.height, upscale)
    return VideoPlan(width=w, height=h, gop_frames=max(1, round(profile.video.gop_s * fps)),
                     time_base=time_base)


def ladder_plan(profile: Profile, plan: VideoPlan, display_w: float, display_h: float,
                upscale: bool) -> VideoPlan:
    """``plan`` with the profile's ladder sized for the source: each rung's short side, the
    long one from the source's aspect (even); its rate control set (``rung_rate``)."""
    if not profile.ladder:
        return plan
    rungs = []
    for r in profile.ladder:
        w, h = fit_box(display_w, display_h, MAX_BOX, r.height, upscale)
        if min(w, h) < r.height - 1 and not upscale:
            raise UsageError(f"ladder rung {r.height}: the source is only "
                             f"{round(min(display_w, display_h))} high (--upscale enlarges it)")
        rungs.append(profile.rung_rate(Rung(r.height, w, r.bitrate_k, r.maxrate_k,
                                            r.bufsize_k, r.crf)))
    sizes = [(r.width, r.height) for r in rungs]
    if len(set(sizes)) != len(sizes):
        raise UsageError("ladder: two rungs come out the same size")
    return VideoPlan(rungs[0].width, rungs[0].height, plan.gop_frames, plan.time_base,
                     tuple(rungs))


def _rate_args(v: Rung, spec: str) -> dict[str, str | int]:
    if v.bitrate_k:
        return {f"b:{spec}": f"{v.bitrate_k}k", f"maxrate:{spec}": f"{v.maxrate_k}k",
                f"bufsize:{spec}": f"{v.bufsize_k}k"}
    return {f"crf:{spec}": f"{v.crf:g}"}


def _codec_args(profile: Profile, plan: VideoPlan, threads: int) -> dict[str, str | int]:
    v = profile.video
    args: dict[str, str | int] = {"c:v": v.codec, "pix_fmt": "yuv420p", "g": plan.gop_frames}
    if v.codec == "libsvtav1":
        args["preset"] = v.preset
        if threads:
            args["svtav1-params"] = f"lp={threads}"
    else:
        args["preset"] = v.preset
        args["profile:v"] = v.profile
        if v.codec == "libx264":
            args["level:v"] = v.level
            if threads:
                args["threads"] = threads
            if plan.rungs:
                # Keyframes only at the GOP grid and forced times: the same frames in every
                # rung (each rung's encoder would find its own scene cuts).
                args["sc_threshold"] = 0
        else:
            # x265 prints its banner on stderr unless told; level goes through its params.
            params = ["log-level=error", f"level-idc={v.level}"]
            if threads:
                params.append(f"pools={threads}")
            if plan.rungs:
                params.append("scenecut=0")
            args["x265-params"] = ":".join(params)
    if plan.rungs:
        for i, r in enumerate(plan.rungs):
            args.update(_rate_args(r, f"v:{i}"))
    elif v.bitrate_k:
        args.update({"b:v": f"{v.bitrate_k}k", "maxrate": f"{v.maxrate_k}k",
                     "bufsize": f"{v.bufsize_k}k"})
    else:
        args["crf"] = f"{v.crf:g}"
    return args


def encode_chunk_argv(ffmpeg: str, profile: Profile, plan: VideoPlan, source: str,
                      seek_s: float | None, trim_s: float | None, frames: int, *,
                      threads: int = 0, recv_buffer: int | None = None,
                      progress: bool = True, copied: bool = False,
                      keyframes_s: Sequence[float] = ()) -> list[str]:
    """Encode ``frames`` frames of the source's first video stream to NUT on stdout; with a
    ladder (``plan.rungs``), the frames are decoded once and split to one video stream per
    rung, in the rungs' order.

    ``-copyts`` with passthrough frame timing keeps the source's own timestamps, so VFR
    footage stays VFR and the merge can place every frame where the source had it.
    ``recv_buffer`` (bytes) fixes the TCP receive buffer of an http source: what it holds
    when ffmpeg closes a connection (each seek, and after the last frame) was sent for
    nothing, and left to autotuning it grew to megabytes (README, "Sending each byte once").
    ``copied``: ``source`` is what ``copy_source_argv`` wrote from ``seek_s`` on (a
    prefetch), so it starts where the seek would land and its times are shifted back.
    ``keyframes_s``: source timestamps (the trim's clock) from which the next frame is a
    keyframe in every rung: where HLS segments start inside the chunk.
    """
    in_args: dict[str, str | None] = {}
    if copied:
        in_args = {"f": CHUNK_FORMAT, "itsoffset": f"-{COPY_TS_OFFSET_S}"}
    elif seek_s is not None:
        # Seek only positions the demuxer; the trim below decides which frames are ours.
        in_args = {"ss": f"{seek_s:.6f}", "noaccurate_seek": None}
    if recv_buffer is not None and source.startswith(("http://", "https://")):
        in_args["recv_buffer_size"] = str(int(recv_buffer))
    video = ffmpeg_py.input(source, **in_args)["V:0"]
    if trim_s is not None:
        video = video.filter("trim", start=f"{trim_s:.6f}")
    sizes = [(r.width, r.height) for r in plan.rungs] or [(plan.width, plan.height)]
    branches = video.split() if len(sizes) > 1 else None
    videos = [(branches[i] if branches is not None else video)
              .filter("scale", w, h, flags="bicubic").filter("setsar", 1)
              for i, (w, h) in enumerate(sizes)]
    timing: dict[str, str] = {}
    if plan.time_base is not None:
        # Unless told, ffmpeg encodes in 1/(the stream's frame rate), and that rate is guessed
        # from the first seconds of the file: a phone clip that switches from 24 to 30 fps
        # had every later chunk's frames rounded onto the 1/24 s grid. The source's own time
        # base holds every source timestamp exactly, whatever the timing. An explicit ratio
        # is spelled the same from ffmpeg 5.1 to 9 (the "demuxer's" keyword is not).
        tb = plan.time_base
        timing["enc_time_base:v"] = f"{tb.numerator}/{tb.denominator}"
    if keyframes_s:
        times = ",".join(f"{t:.6f}" for t in keyframes_s)
        # One per stream: ffmpeg 9.0.2 given it once forced only the first time in the
        # second of two streams (measured).
        timing.update({f"force_key_frames:v:{i}": times for i in range(len(sizes))})
    out = ffmpeg_py.output(
        *videos, "pipe:1", f=CHUNK_FORMAT, fps_mode="passthrough", **timing,
        **{"frames:v": frames}, **_codec_args(profile, plan, threads),
    )
    argv: list[str] = out.compile(cmd=ffmpeg)
    # Progress lines (frame=N) on stderr feed lease renewals and the dashboard.
    extra = ["-progress", "pipe:2", "-stats_period", "0.5"] if progress else []
    return [argv[0], *_QUIET, "-copyts", *extra, *argv[1:]]


# NUT cannot hold a negative timestamp, which B-frames or an edit list give a source; the
# copy is shifted later by this many whole seconds (exact in any time base 1/N) and the
# encode shifts it back.
COPY_TS_OFFSET_S = 100000


def copy_source_argv(ffmpeg: str, source: str, seek_s: float, *,
                     recv_buffer: int | None = None) -> list[str]:
    """Copy the source's first video stream from ``seek_s`` on, packets unchanged, to NUT
    on stdout: what a peer fetches ahead for a prefetched chunk.

    The copy starts at the keyframe the encode's own seek would land on and keeps every
    timestamp (shifted by COPY_TS_OFFSET_S), so encoding it (``copied=True``) decodes the
    very packets and frames that seeking in the source would: tests/test_live compares the
    encodes byte for byte. Not for a chunk without a seek: a source's edit list marks its
    first packets to be discarded, and the copy would lose that mark. It reads until its
    reader stops taking its output, which is how the reader bounds it. ``recv_buffer``: as
    for ``encode_chunk_argv`` (what the socket holds when the reader stops was sent for
    nothing).
    """
    buffer = (["-recv_buffer_size", str(int(recv_buffer))]
              if recv_buffer is not None and source.startswith(("http://", "https://"))
              else [])
    return [ffmpeg, *_QUIET, "-copyts", "-ss", f"{seek_s:.6f}", "-noaccurate_seek",
            *buffer, "-i", source, "-map", "0:V:0", "-c", "copy",
            "-output_ts_offset", str(COPY_TS_OFFSET_S), "-avoid_negative_ts", "disabled",
            "-f", CHUNK_FORMAT, "pipe:1"]


def verify_chunk_argv(ffmpeg: FFmpeg, path: str, stream: int = 0) -> list[str]:
    """Decode a chunk's video stream ``stream`` (a ladder's rung) fully and list every
    frame's timestamp (framecrc on stdout).

    The frames keep the demuxer's time base, which each ffmpeg spells its own way (5.1: -1,
    8.0 on: demux): ``ffmpeg_info`` found which one this binary accepts.
    """
    if ffmpeg.demux_time_base is None:
        raise ValueError(f"{ffmpeg.describe()} cannot list frames in the demuxer's time base")
    # wrapped_avframe: the frames are decoded in full but not copied out and checksummed;
    # only their timestamps are read (20 % less CPU than rawvideo, measured on 720p).
    return [ffmpeg.path, *_QUIET, "-copyts", "-i", path, "-map", f"0:v:{stream}",
            "-fps_mode", "passthrough", "-enc_time_base:v", ffmpeg.demux_time_base,
            "-c:v", "wrapped_avframe", "-f", "framecrc", "-"]


def join_parts_argv(ffmpeg: str, parts: Sequence[tuple[str, int]], out: str) -> list[str]:
    """One chunk file with every rung of a ladder from the files of the chunk's parts
    (``VideoPlan.part``), given in rung order with how many streams each holds: packets
    copied, timestamps kept, streams in rung order, as one encode of the whole ladder
    would have written them."""
    argv = [ffmpeg, *_QUIET, "-copyts"]
    for path, _ in parts:
        argv += ["-f", CHUNK_FORMAT, "-i", path]
    for i, (_, streams) in enumerate(parts):
        for j in range(streams):
            argv += ["-map", f"{i}:v:{j}"]
    return [*argv, "-c", "copy", "-f", CHUNK_FORMAT, "-y", out]


def packet_listing_argv(ffmpeg: str, paths: Sequence[str]) -> list[str]:
    """Every video packet of some chunk files (stream, dts, pts, duration, size, checksum)
    on stdout, read without decoding, in one process: the streams are numbered on across
    the files in their order. What ``join_parts_argv`` must keep unchanged."""
    argv = [ffmpeg, *_QUIET, "-copyts"]
    for path in paths:
        argv += ["-f", CHUNK_FORMAT, "-i", path]
    for i in range(len(paths)):
        argv += ["-map", f"{i}:v"]
    return [*argv, "-c", "copy", "-f", "framecrc", "-"]


def _audio_args(profile: Profile, tracks: Sequence[Kept]) -> list[str]:
    a = profile.audio
    argv = ["-c:a", a.codec, "-b:a", f"{a.bitrate_k}k", "-ar", str(a.sample_rate)]
    for i, k in enumerate(tracks):
        argv += [f"-ac:a:{i}", str(k.channels)]
    return argv


def audio_argv(ffmpeg: str, source: str, profile: Profile, tracks: Sequence[Kept], out: str
               ) -> list[str]:
    """Encode the kept audio tracks once, whole, into one mp4 for the merge to copy.

    Without -copyts the audio keeps its offset from the source's first stream, and the mp4
    records the encoder's priming in its edit list; the merge reads both back unchanged.
    """
    maps = [x for k in tracks for x in ("-map", f"0:a:{k.track}")]
    return [ffmpeg, *_QUIET, "-y", "-i", source, *maps, *_audio_args(profile, tracks),
            "-f", "mp4", out]


def write_concat_list(path: str, chunk_files: list[str], spans: list[float | None]) -> None:
    """An ffconcat script whose explicit durations place each chunk at its source time."""
    lines = ["ffconcat version 1.0"]
    for name, span in zip(chunk_files, spans, strict=True):
        base = os.path.basename(name)
        if "'" in base or "\n" in base:
            raise ValueError(f"unsafe chunk file name {base!r}")
        lines.append(f"file '{base}'")
        if span is not None:
            lines.append(f"duration {span:.6f}")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


def _stream_tags(spec: str, k: Kept | StreamInfo) -> list[str]:
    """Language, title and dispositions of one output stream, as the source had them."""
    argv = []
    if k.language and k.language != "und":
        argv += [f"-metadata:s:{spec}", f"language={k.language}"]
    if k.title:
        argv += [f"-metadata:s:{spec}", f"title={k.title}"]
    if isinstance(k, Kept):
        # Set even when empty: a muxer otherwise marks the first track of a kind default.
        flags = [d for d in k.dispositions if d in _OUTPUT_DISPOSITIONS]
        argv += [f"-disposition:{spec}", "+".join(flags) or "0"]
    return argv


def merge_argv(ffmpeg: str, concat_list: str, source: str, profile: Profile,
               tracks: TrackPlan, video_offset_s: float, time_base: Fraction, out: str,
               container: str = "mp4", audio_file: str | None = None, *,
               source_start_s: float = 0.0, metadata_file: str | None = None,
               video: StreamInfo | None = None, rung: int = 0) -> list[str]:
    """Concatenate the chunks' video stream ``rung`` (copied) and encode the source's kept
    audio tracks once, in one process; or, given ``audio_file`` (made by ``audio_argv``),
    copy them from it. Subtitles and attachments the plan keeps come from the source;
    chapters and global tags from ``metadata_file`` (``ffmetadata_text``).

    Encoding the audio here, beside the video it is muxed with, gives it exactly the timing
    a single-process encode would: the source's own offset between audio and video, and the
    encoder's priming hidden by the muxer. (Muxing a separately encoded audio file with
    -itsoffset left the priming frame audible as 23 ms of extra silence: measured.)
    ``video_offset_s`` is how much later the video starts than the source's first stream;
    ``source_start_s`` is the source's start time, which a merge without -copyts subtracts
    from what it reads there.
    """
    argv = [ffmpeg, *_QUIET]
    copyts = audio_file is not None and bool(tracks.audio)
    if copyts:
        # Each input's own start would otherwise be subtracted: the audio file's first
        # timestamp is its offset from the video (and its priming), which must stay.
        argv += ["-copyts"]
    if video_offset_s > 0:
        argv += ["-itsoffset", f"{video_offset_s:.6f}"]
    argv += ["-f", "concat", "-safe", "0", "-i", concat_list]
    n_inputs = 1
    audio_in = src_in = meta_in = None
    if copyts:
        assert audio_file is not None
        argv += ["-i", audio_file]
        audio_in, n_inputs = n_inputs, n_inputs + 1
    if tracks.needs_source or (tracks.audio and not copyts):
        if copyts and source_start_s:
            # What the merge would subtract without -copyts, as the audio file had it.
            argv += ["-itsoffset", f"{-source_start_s:.6f}"]
        argv += ["-i", source]
        src_in, n_inputs = n_inputs, n_inputs + 1
    if metadata_file is not None:
        argv += ["-f", "ffmetadata", "-i", metadata_file]
        meta_in = n_inputs
    argv += ["-map", f"0:v:{rung}"]
    for i, k in enumerate(tracks.audio):
        argv += ["-map", f"{audio_in}:a:{i}" if audio_in is not None else f"{src_in}:a:{k.track}"]
    for k in tracks.subtitles:
        argv += ["-map", f"{src_in}:s:{k.track}"]
    for k in tracks.attachments:
        argv += ["-map", f"{src_in}:t:{k.track}"]
    argv += ["-c:v", "copy"]
    if tracks.audio:
        argv += ["-c:a", "copy"] if copyts else _audio_args(profile, tracks.audio)
    for j, k in enumerate(tracks.subtitles):
        argv += [f"-c:s:{j}", k.codec]
    if tracks.attachments:
        argv += ["-c:t", "copy"]
    if video is not None:
        argv += _stream_tags("v:0", video)
    for i, k in enumerate(tracks.audio):
        argv += _stream_tags(f"a:{i}", k)
        if copyts:
            # Tags the audio file's own mp4 muxer made up; Matroska would keep them as such.
            argv += [f"-metadata:s:a:{i}", "name=", f"-metadata:s:a:{i}", "handler_name="]
    for j, k in enumerate(tracks.subtitles):
        argv += _stream_tags(f"s:{j}", k)
    if meta_in is not None:
        argv += ["-map_metadata", str(meta_in), "-map_chapters", str(meta_in)]
    else:
        argv += ["-map_chapters", "-1"]
    if time_base.numerator == 1 and 1000 <= time_base.denominator <= 1 << 30:
        # Keep the source's clock so every timestamp survives exactly.
        argv += ["-video_track_timescale", str(time_base.denominator)]
    if tracks.audio and container in ("mp4", "mov"):
        # The audio's start (its offset from the video, less its priming) is written as an
        # edit list in the movie's time scale, which ffmpeg before 8.0 fixes at 1000: the
        # copied audio then started up to 1 ms early (measured on 5.1 and 7.0). Its own
        # sample rate keeps it exact on every version.
        argv += ["-movie_timescale", str(profile.audio.sample_rate)]
    if profile.video.codec == "libx265":
        argv += ["-tag:v", "hvc1"]  # what Apple players need to play HEVC in mp4
    argv += ["-movflags", "+faststart", "-f", container, out]
    return argv
