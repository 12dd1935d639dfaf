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

import itertools
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
    Variant,
    audio_groups,
    avc_codec,
    behind_live,
    group_segments,
    master_playlist,
    segment_cuts,
    segment_pieces,
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
class _Rendition:
    """One video rendition's playlist and what its master entry is measured from."""

    stream: int  # the chunk files' video stream (a ladder's rung)
    tag: str  # "" for a single rendition, else "_720p": in its file names
    width: int
    height: int
    playlist: MediaPlaylist
    inits: dict[bytes, str] = field(default_factory=dict)
    codecs: str | None = None
    segments: list[tuple[float, float, int]] = field(default_factory=list)  # start, s, bytes
    files: int = 0
    seq: int = 1

    @property
    def uri(self) -> str:
        return f"video{self.tag}.m3u8"


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
    # A ladder's renditions (width, height), tallest first: the chunks' video streams.
    # Empty: one rendition, width x height.
    rungs: list[tuple[int, int]] = field(default_factory=list)
    # Cut chunks longer than this into segments at the keyframes forced there (None: one
    # segment per chunk).
    segment_s: float | None = None
    order: InOrder = field(init=False)
    renditions: list[_Rendition] = field(init=False)
    audio: MediaPlaylist | None = field(init=False, default=None)
    _created: bool = False
    _lead: int | None = None  # in the video timescale
    _published_end_s: float = 0.0
    _audio_frags: list[bytes] | None = None
    _audio_ends: list[float] = field(default_factory=list)
    _audio_done = 0
    _audio_seg = 0
    _has_audio: bool = False
    _pending_files: dict[int, str] = field(default_factory=dict)
    # Chunks free to go out but held until the audio is fragmented: a player must find
    # the audio of the first segment listed when it reads it (it stalled, or played the
    # video silent, when audio.m3u8 was still empty).
    _held: list[int] = field(default_factory=list)
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
        if self.segment_s is not None:
            spans = [p for s in [*spans, last] for p in segment_pieces(s, self.segment_s)]
        else:
            spans = [*spans, last]
        target = target_duration(spans) + 1
        sizes = self.rungs or [(self.width, self.height)]
        self.renditions = [
            _Rendition(i, f"_{min(w, h)}p" if len(sizes) > 1 else "", w, h,
                       MediaPlaylist(target)) for i, (w, h) in enumerate(sizes)]
        self.video = self.renditions[0].playlist
        self.ts = _timescale(self.info)
        self.frame_s = (self.info.duration_s / self.info.video.frames
                        if self.info.video.frames else 1 / 30)

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
                "renditions": [f"{r.width}x{r.height}" for r in self.renditions],
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
        """Chunk ``index`` is verified: publish it and every chunk it unblocks (once the
        audio, if any, is there to go with them)."""
        async with self._lock:
            self._pending_files[index] = chunk_file
            self._held += self.order.verified(index)
            await self._release(now)

    async def _release(self, now: float) -> None:
        if self._has_audio and self._audio_frags is None:
            return
        while self._held:
            n = self._held.pop(0)
            await self._publish_chunk(n, self._pending_files.pop(n), now)

    def _span(self, n: int) -> float:
        span = self.spans_s[n]
        return span if span is not None else self.info.duration_s - self.starts_s[n]

    async def _publish_chunk(self, n: int, chunk_file: str, now: float) -> None:
        parsed = []
        for r in self.renditions:
            data = await self._fragment(chunk_file, str(self.out_dir / f".c{n}_{r.stream}.mp4"),
                                        f"0:v:{r.stream}")
            init, _tracks, frags = fmp4.parse(data)
            if not frags:
                raise ValueError(f"chunk {n} gave no fragment")
            parsed.append((init, frags))
        if self._lead is None:
            # Room before the first frame for the B-frame delay (and audio priming, below).
            self._lead = max([self.ts // 10, *(f[0].first_pts for _, f in parsed)])
        place = round((self.starts_s[n] + self.video_offset_s) * self.ts) + self._lead
        cuts = segment_cuts(self._span(n), self.segment_s) if self.segment_s else []
        first = self.video.segments == 0
        texts: list[str] = []
        end_s = self._published_end_s
        duration = 0.0
        for r, (init, frags) in zip(self.renditions, parsed, strict=True):
            map_uri = await self._init_for(r, init)
            first_pts = frags[0].first_pts
            shift = place - first_pts
            starts = [(f.first_pts - first_pts) / self.ts for f in frags]
            edges = [*group_segments(starts, cuts, self.frame_s), len(frags)]
            text = r.playlist.header() if first else ""
            for a, b in itertools.pairwise(edges):
                group = frags[a:b]
                body = b"".join(fmp4.retime(f, f.decode_start + shift, self._next_seq(r))
                                for f in group)
                seg_s = sum(f.duration for f in group) / self.ts
                name = f"v{r.files:05d}{r.tag}.m4s"
                r.files += 1
                await trio.to_thread.run_sync(_write_whole, self.out_dir / name, body)
                text += r.playlist.segment(name, seg_s, map_uri)
                r.segments.append((self.starts_s[n] + starts[a], seg_s, len(body)))
            texts.append(text)
            if r.stream == 0:
                duration = sum(f.duration for f in frags) / self.ts
                end_s = (place + sum(f.duration for f in frags)) / self.ts
        self._published_end_s = end_s
        # The audio this video covers is listed first: a player that reads the video
        # playlist finds the audio to go with every segment in it.
        await self._publish_audio(done=False, first=first)
        for r, text in zip(self.renditions, texts, strict=True):
            await trio.to_thread.run_sync(_append, self.out_dir / r.uri, text)
        if first:
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
        if self.emit is not None:
            self.emit(HlsSegment(n, round(duration, 6), round(now - self.t0, 3)))

    async def _init_for(self, r: _Rendition, init: bytes) -> str:
        if init not in r.inits:
            k = len(r.inits)
            name = f"init{r.tag}{k or ''}.mp4"
            await trio.to_thread.run_sync(_write_whole, self.out_dir / name, init)
            r.inits[init] = name
            if r.codecs is None:
                avcc = fmp4.find_box(init, [b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd",
                                    b"avc1", b"avcC"])
                r.codecs = avc_codec(avcc) if avcc is not None else ""
        return r.inits[init]

    @staticmethod
    def _next_seq(r: _Rendition) -> int:
        s = r.seq  # mfhd sequence numbers run on across a rendition's chunks
        r.seq += 1
        return s

    def _audio_rate(self, start: float, seconds: float) -> float:
        """Bits per second of the audio over [start, start + seconds) of the media."""
        if not self._audio_frags or seconds <= 0:
            return 0.0
        bits = 0.0
        prev = 0.0
        for data, end in zip(self._audio_frags, self._audio_ends, strict=True):
            overlap = min(end, start + seconds) - max(prev, start)
            if overlap > 0 and end > prev:
                bits += len(data) * 8 * overlap / (end - prev)
            prev = end
        return bits / seconds

    def _variant(self, r: _Rendition) -> Variant:
        rates = [b * 8 / d + self._audio_rate(s, d) for s, d, b in r.segments if d > 0]
        total_d = sum(d for _, d, _ in r.segments)
        total_b = sum(b for _, _, b in r.segments) * 8
        audio_b = self._audio_rate(0.0, total_d) * total_d
        avg = int((total_b + audio_b) / total_d) if total_d > 0 else None
        codecs = r.codecs or None
        if codecs and self._has_audio:
            codecs += ",mp4a.40.2" if self._audio_codec == "aac" else ",opus"
        return Variant(r.uri, int(max(rates, default=1.0)), avg, codecs, r.width, r.height)

    async def _write_master(self) -> None:
        text = master_playlist([self._variant(r) for r in self.renditions],
                               audio_uri=AUDIO_PLAYLIST if self._has_audio else None)
        await trio.to_thread.run_sync(_write_whole, self.out_dir / MASTER, text.encode())

    # -- audio ------------------------------------------------------------------------------
    async def audio_ready(self, audio_file: str, codec: str) -> None:
        """The audio is encoded: fragment it once, then publish the video held for it."""
        async with self._lock:
            await self._audio_ready(audio_file, codec)
            await self._release(trio.current_time())

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

    async def _publish_audio(self, done: bool, first: bool = False) -> None:
        if self.audio is None or self._audio_frags is None:
            return
        if self._published_end_s == 0.0 and not done:
            return  # no video yet: the audio goes out with the first segment
        until = None if done else self._published_end_s - (self._lead or 0) / self.ts
        left = audio_groups(self._audio_ends, self._audio_done, until)
        text = self.audio.header() if first else ""
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
            text += self.audio.segment(name, duration, "audio_init.mp4")
            self._audio_done += n
            self._audio_seg += 1
            left -= n
        if text:
            await trio.to_thread.run_sync(_append, self.out_dir / AUDIO_PLAYLIST, text)

    async def finish(self, now: float) -> None:
        """Every chunk is out: the rest of the audio, the measured master, the end tags."""
        if not self.order.done:
            raise ValueError("finish before every chunk is published")
        async with self._lock:
            await self._finish(now)

    async def _finish(self, now: float) -> None:
        if self._held:
            raise ValueError("finish with chunks still held for the audio")
        await self._publish_audio(done=True)
        await self._write_master()
        if self.audio is not None:
            await trio.to_thread.run_sync(_append, self.out_dir / AUDIO_PLAYLIST, self.audio.end())
        for r in self.renditions:
            await trio.to_thread.run_sync(_append, self.out_dir / r.uri, r.playlist.end())
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


_OURS = re.compile(r"(master|video(_\d+p)?|audio)\.m3u8|(audio_)?init(_\d+p)?\d*\.mp4"
                   r"|[va]\d{5}(_\d+p)?\.m4s|\..*\.part")


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
                       height=vplan.height, emit=emit, t0=t0,
                       rungs=[(r.width, r.height) for r in vplan.rungs],
                       segment_s=opts.job.segment_s)
    if Path(opts.job.hls).exists():
        shutil.rmtree(opts.job.hls)
    pub.create(has_audio=bool(tracks.audio))
    return pub
