"""Publish a job as progressive fMP4 HLS while it encodes (``swarm encode --hls DIR``).

Each verified chunk (NUT, as peers return it) is remuxed by ffmpeg into fragmented mp4, its
fragments are moved onto the job's timeline (``chunker.fmp4.retime``) and written as one
segment; the playlist gets that segment appended once every chunk before it is out
(``swarm.hls.InOrder``). The audio, encoded once over the whole file, is fragmented the same
way and published in step. Files appear whole (written beside, then renamed), playlists only
grow, and a job that fails or is cancelled removes the directory it created.

Timeline: a chunk's first frame is placed at its source time less the source's first stream,
as in the merged file, plus ``lead``: the decode delay of B-frames (and the audio encoder's
priming) must come before the first frame, and a decode time cannot be negative.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from chunker import fmp4
from chunker.commands import VideoPlan
from chunker.plan import ChunkPlan
from chunker.probe import MediaInfo
from chunker.tools import FFmpeg
from chunker.tracks import TrackPlan
from swarm.errors import UsageError
from swarm.events import HlsBehind, HlsEnd, HlsSegment, JobEvent
from swarm.hls import (
    InOrder,
    MediaPlaylist,
    audio_groups,
    avc_codec,
    behind_live,
    master_playlist,
    target_duration,
)

from .jobserver import JobServer
from .options import EncodeOptions
from .proc import run_ffmpeg

__all__ = ["HLS_AUDIO", "HLS_CHUNK_S", "HlsPublisher", "audio_edit", "check_hls_dir",
           "hls_publisher", "publish"]

MASTER = "master.m3u8"
VIDEO_PLAYLIST = "video.m3u8"
AUDIO_PLAYLIST = "audio.m3u8"
# Audio fragments: short enough that the audio rendition follows the video closely.
AUDIO_FRAGMENT_US = 1_000_000
_FRAG_FLAGS = "frag_keyframe+empty_moov+default_base_moof"
# Default chunk length with --hls: the first segment waits for the first chunk.
HLS_CHUNK_S = 4.0
# Audio codecs HLS players take in fMP4 (and the job encodes once, whole, as audio.mp4).
HLS_AUDIO = frozenset({"aac", "libopus"})


def _timescale(info: MediaInfo) -> int:
    tb = info.video.time_base
    # The source's own clock keeps every timestamp exact (as the merge does).
    return tb.denominator if tb.numerator == 1 and 1000 <= tb.denominator <= 1 << 30 else 90000


def _write_whole(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _append(path: Path, text: str) -> None:
    # One write of whole lines: a reader sees the playlist before or after it, never a
    # segment's EXTINF without its URI (a playlist is small; O_APPEND writes of a few hundred
    # bytes land whole on a local file system).
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def audio_edit(path: str) -> tuple[float, int, int]:
    """(delay in seconds, samples skipped, sample rate) from the audio file's edit list: its
    offset from the source's first stream (an empty edit) and the encoder's priming (the
    media time the edit starts at). A fragmented copy loses both: ffmpeg writes no edit
    list with an empty moov, so they are applied to the fragments' decode times instead."""
    with open(path, "rb") as fh:
        size_all = os.fstat(fh.fileno()).st_size
        pos = 0
        while pos + 8 <= size_all:
            fh.seek(pos)
            size, kind = struct.unpack(">I4s", fh.read(8))
            if size == 1:
                (size,) = struct.unpack(">Q", fh.read(8))
            if size < 8:
                break
            if kind == b"moov":
                fh.seek(pos)
                return fmp4.edit_list(fh.read(size))
            pos += size
    raise ValueError(f"{path}: no moov")


@dataclass
class HlsPublisher:
    """The HLS output of one job, published chunk by chunk."""

    ffmpeg: FFmpeg
    info: MediaInfo
    out_dir: Path
    starts_s: list[float]  # each chunk's first frame, from the source's first frame
    spans_s: list[float | None]
    video_offset_s: float  # how much later the video starts than the source's first stream
    width: int
    height: int
    emit: Callable[[JobEvent], None] | None = None
    order: InOrder = field(init=False)
    video: MediaPlaylist = field(init=False)
    audio: MediaPlaylist | None = field(init=False, default=None)
    _created: bool = False
    _inits: dict[bytes, str] = field(default_factory=dict)
    _seq: int = 1
    _lead: int | None = None  # in the video timescale
    _published_end_s: float = 0.0
    _audio_frags: list[bytes] | None = None
    _audio_ends: list[float] = field(default_factory=list)
    _audio_done = 0
    _audio_seg = 0
    _bits: list[tuple[int, float]] = field(default_factory=list)  # (bytes, seconds)
    _codecs: str | None = None
    _has_audio: bool = False
    _pending_files: dict[int, str] = field(default_factory=dict)
    # The video and the audio publish from two tasks; each publish is a few awaits long.
    _lock: trio.Lock = field(default_factory=trio.Lock)
    _audio_codec: str = "aac"
    t0: float = 0.0
    first_segment_s: float | None = None
    published_s: float | None = None
    _first_len_s: float = 0.0
    _warned: bool = False

    def __post_init__(self) -> None:
        self.order = InOrder(len(self.starts_s))
        spans = [s for s in self.spans_s if s is not None]
        last = self.info.duration_s - self.starts_s[-1] if self.starts_s else 1.0
        self.video = MediaPlaylist(target_duration([*spans, last]) + 1)
        self.ts = _timescale(self.info)

    # -- set-up and tear-down --------------------------------------------------------------
    def create(self, has_audio: bool) -> None:
        """Make the directory; refuse to mix with another job's files."""
        if self.out_dir.exists() and any(self.out_dir.iterdir()):
            raise FileExistsError(f"{self.out_dir} is not empty")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._created = True
        self._has_audio = has_audio
        if has_audio:
            self.audio = MediaPlaylist(self.video.target_s + 1)

    def report(self) -> dict[str, object]:
        """The report's ``hls`` section: when the stream became playable, and complete."""
        return {"directory": str(self.out_dir), "segments": self.video.segments,
                "target_duration_s": self.video.target_s,
                "first_segment_s": None if self.first_segment_s is None
                else round(self.first_segment_s, 3),
                "published_s": None if self.published_s is None else round(self.published_s, 3)}

    def remove(self) -> None:
        if self._created:
            shutil.rmtree(self.out_dir, ignore_errors=True)

    # -- video ------------------------------------------------------------------------------
    async def _fragment(self, src: str, dst: str, *maps: str, frag_us: int | None = None
                        ) -> bytes:
        argv = [self.ffmpeg.path, "-nostdin", "-v", "error", "-y", "-i", src]
        for m in maps:
            argv += ["-map", m]
        argv += ["-c", "copy", "-f", "mp4", "-movflags", _FRAG_FLAGS]
        if frag_us is not None:
            argv += ["-frag_duration", str(frag_us)]
        else:
            argv += ["-video_track_timescale", str(self.ts)]
        await run_ffmpeg([*argv, dst], what="hls fragment")
        data = await trio.Path(dst).read_bytes()
        await trio.Path(dst).unlink()
        return data

    async def chunk_verified(self, index: int, chunk_file: str, now: float) -> None:
        """Chunk ``index`` is verified: publish it and every chunk it unblocks."""
        async with self._lock:
            self._pending_files[index] = chunk_file
            for n in self.order.verified(index):
                await self._publish_chunk(n, self._pending_files.pop(n), now)

    async def _publish_chunk(self, n: int, chunk_file: str, now: float) -> None:
        data = await self._fragment(chunk_file, str(self.out_dir / f".c{n}.mp4"), "0:v:0")
        init, _tracks, frags = fmp4.parse(data)
        if not frags:
            raise ValueError(f"chunk {n} gave no fragment")
        if init not in self._inits:
            name = "init.mp4" if not self._inits else f"init{len(self._inits)}.mp4"
            await trio.to_thread.run_sync(_write_whole, self.out_dir / name, init)
            self._inits[init] = name
            if self._codecs is None:
                avcc = fmp4.find_box(init, [b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd",
                                    b"avc1", b"avcC"])
                self._codecs = avc_codec(avcc) if avcc is not None else ""
        first_pts = frags[0].first_pts
        if self._lead is None:
            # Room before the first frame for the B-frame delay (and audio priming, below).
            self._lead = max(first_pts, self.ts // 10)
        place = round((self.starts_s[n] + self.video_offset_s) * self.ts) + self._lead
        shift = place - first_pts
        body = b"".join(fmp4.retime(f, f.decode_start + shift, self._next_seq()) for f in frags)
        duration = sum(f.duration for f in frags) / self.ts
        name = f"v{n:05d}.m4s"
        await trio.to_thread.run_sync(_write_whole, self.out_dir / name, body)
        first = self.video.segments == 0
        text = (self.video.header() if first else "") + self.video.segment(
            name, duration, self._inits[init])
        await trio.to_thread.run_sync(_append, self.out_dir / VIDEO_PLAYLIST, text)
        self._bits.append((len(body), duration))
        self._published_end_s = (place + sum(f.duration for f in frags)) / self.ts
        if first:
            if self.audio is not None:
                # The master names the audio playlist: it exists (empty) from the start.
                await trio.to_thread.run_sync(_append, self.out_dir / AUDIO_PLAYLIST,
                                              self.audio.header())
            await self._write_master()
        if self.first_segment_s is None:
            self.first_segment_s = now - self.t0
            self._first_len_s = duration
        media_s = self._published_end_s - (self._lead or 0) / self.ts
        since = now - self.t0 - self.first_segment_s
        if not self._warned and behind_live(media_s, since, self._first_len_s):
            self._warned = True
            if self.emit is not None:
                self.emit(HlsBehind(round(media_s, 3), round(since, 3)))
        await self._publish_audio(done=False)
        if self.emit is not None:
            self.emit(HlsSegment(n, round(duration, 6), round(now - self.t0, 3)))

    def _next_seq(self) -> int:
        s = self._seq
        self._seq += 1
        return s

    async def _write_master(self) -> None:
        peak = max((b * 8 / d for b, d in self._bits if d > 0), default=1.0)
        total_b = sum(b for b, _ in self._bits)
        total_d = sum(d for _, d in self._bits)
        avg = int(total_b * 8 / total_d) if total_d > 0 else None
        codecs = self._codecs or None
        if codecs and self._has_audio:
            codecs += ",mp4a.40.2" if self._audio_codec == "aac" else ",opus"
        text = master_playlist(video_uri=VIDEO_PLAYLIST, bandwidth=int(peak), average=avg,
                               codecs=codecs, width=self.width, height=self.height,
                               audio_uri=AUDIO_PLAYLIST if self._has_audio else None)
        await trio.to_thread.run_sync(_write_whole, self.out_dir / MASTER, text.encode())

    # -- audio ------------------------------------------------------------------------------
    async def audio_ready(self, audio_file: str, codec: str) -> None:
        """The audio is encoded: fragment it once, then publish what the video covers."""
        async with self._lock:
            await self._audio_ready(audio_file, codec)

    async def _audio_ready(self, audio_file: str, codec: str) -> None:
        self._audio_codec = codec
        data = await self._fragment(audio_file, str(self.out_dir / ".audio.mp4"), "0:a:0",
                                    frag_us=AUDIO_FRAGMENT_US)
        init, tracks, frags = fmp4.parse(data)
        (track,) = tracks.values()
        delay_s, skip, rate = await trio.to_thread.run_sync(audio_edit, audio_file)
        if codec != "aac":
            skip = 0  # Opus carries its pre-skip in the init (dOps); players apply it
        lead_s = (self._lead or self.ts // 10) / self.ts
        shift = (round((lead_s + delay_s) * track.timescale)
                 - round(skip * track.timescale / rate))
        if shift < 0:
            raise ValueError("audio priming longer than the lead")
        await trio.to_thread.run_sync(_write_whole, self.out_dir / "audio_init.mp4", init)
        self._audio_frags = [fmp4.retime(f, f.decode_start + shift, i + 1)
                             for i, f in enumerate(frags)]
        self._audio_ends = [(f.decode_start + shift + f.duration) / track.timescale
                            - lead_s for f in frags]
        await self._publish_audio(done=False)

    async def _publish_audio(self, done: bool) -> None:
        if self.audio is None or self._audio_frags is None or self.video.segments == 0:
            return
        until = None if done else self._published_end_s - (self._lead or 0) / self.ts
        left = audio_groups(self._audio_ends, self._audio_done, until)
        while left > 0:
            start = self._audio_done
            prev_end = self._audio_ends[start - 1] if start else 0.0
            n = 1  # fragments in this segment: as many as fit in the video's target
            while n < left and self._audio_ends[start + n] - prev_end <= self.video.target_s:
                n += 1
            duration = self._audio_ends[start + n - 1] - prev_end
            name = f"a{self._audio_seg:05d}.m4s"
            await trio.to_thread.run_sync(_write_whole, self.out_dir / name,
                                          b"".join(self._audio_frags[start:start + n]))
            text = self.audio.segment(name, duration, "audio_init.mp4")
            await trio.to_thread.run_sync(_append, self.out_dir / AUDIO_PLAYLIST, text)
            self._audio_done += n
            self._audio_seg += 1
            left -= n

    async def finish(self, now: float) -> None:
        """Every chunk is out: the rest of the audio, the measured master, the end tags."""
        if not self.order.done:
            raise ValueError("finish before every chunk is published")
        async with self._lock:
            await self._finish(now)

    async def _finish(self, now: float) -> None:
        await self._publish_audio(done=True)
        await self._write_master()
        if self.audio is not None:
            await trio.to_thread.run_sync(_append, self.out_dir / AUDIO_PLAYLIST, self.audio.end())
        await trio.to_thread.run_sync(_append, self.out_dir / VIDEO_PLAYLIST, self.video.end())
        self.published_s = now - self.t0
        if self.emit is not None:
            self.emit(HlsEnd(str(self.out_dir), self.video.segments,
                             round(self.first_segment_s or 0.0, 3), round(now - self.t0, 3)))


async def publish(pub: HlsPublisher, server: JobServer, audio_file: str | None,
                  codec: str) -> None:
    """Publish ``server``'s chunks as they are verified (and those a resumed job already
    had), the audio once it is encoded, and the end tags once all of it is out."""
    send, receive = trio.open_memory_channel[int](math.inf)
    server.on_verified = send.send_nowait
    for i, rec in enumerate(server.records):
        if rec.file:
            send.send_nowait(i)

    async def audio() -> None:
        await server.audio_done.wait()
        assert audio_file is not None
        await pub.audio_ready(audio_file, codec)

    async with trio.open_nursery() as nursery:
        if audio_file is not None and pub.audio is not None:
            nursery.start_soon(audio)
        async with receive:
            async for index in receive:
                await pub.chunk_verified(index, server.records[index].file,
                                         trio.current_time())
                if pub.order.done:
                    break
    server.on_verified = None
    await pub.finish(trio.current_time())


_OURS = re.compile(r"(master|video|audio)\.m3u8|(audio_)?init\d*\.mp4|[va]\d{5}\.m4s|\..*\.part")


def check_hls_dir(path: str, replace: bool) -> None:
    """Refuse a directory that holds anything but a previous stream of ours; that one only
    if ``replace``."""
    d = Path(path)
    if d.exists() and not d.is_dir():
        raise UsageError(f"--hls {path}: not a directory")
    if not d.exists():
        parent = d.resolve().parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise UsageError(f"--hls {path}: cannot create it in {parent}")
        return
    names = [p.name for p in d.iterdir()]
    if not names:
        return
    if not all(_OURS.fullmatch(n) for n in names):
        raise UsageError(f"--hls {path}: the directory holds other files; name an empty one")
    if not replace:
        raise UsageError(f"--hls {path}: holds a stream already (--force replaces it)")


def hls_publisher(opts: EncodeOptions, ffmpeg: FFmpeg, info: MediaInfo, plans: list[ChunkPlan],
                  vplan: VideoPlan, tracks: TrackPlan, emit: Callable[[JobEvent], None],
                  t0: float, replace: bool) -> HlsPublisher:
    """The job's HLS output, its directory made (an earlier stream of ours in it replaced
    if ``replace``: ``--force``, or a resumed job's own)."""
    assert opts.job.hls is not None
    if tracks.audio and opts.job.profile.audio.codec not in HLS_AUDIO:
        raise UsageError(f"--hls: profile {opts.job.profile.name} has "
                         f"{opts.job.profile.audio.codec} audio; HLS here takes AAC or Opus")
    check_hls_dir(opts.job.hls, replace)
    first_stream = min([info.video.start_s, *(a.start_s for a in info.audios)])
    pub = HlsPublisher(ffmpeg=ffmpeg, info=info, out_dir=Path(opts.job.hls),
                       starts_s=[p.start_s for p in plans], spans_s=[p.span_s for p in plans],
                       video_offset_s=info.video.start_s - first_stream, width=vplan.width,
                       height=vplan.height, emit=emit, t0=t0)
    if Path(opts.job.hls).exists():
        shutil.rmtree(opts.job.hls)
    pub.create(has_audio=bool(tracks.audio))
    return pub
