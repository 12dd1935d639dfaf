"""Where a chunk's bytes lie in an MP4/MOV source: the video track's sample table.

The coordinator serves each attempt's ffmpeg the source over HTTP, and every request that
ffmpeg opens and abandons (the file's start, its media start before the seek, the chunk's
range past its last frame) costs what the socket buffers and the link hold when it closes:
on 100 Mbit/s links, 0.3-2.6 MB a request (tests/test_lan.py). Knowing the layout, the
coordinator answers each of those requests with only what it can need (``Layout.cap``).

Pure: bytes in (the file's top-level box headers and its moov), numbers out. Anything not
understood gives None: the source is then served as before, uncapped.

Wired into the source route (``peer.jobserver``, ``peer.transfer.send_file``): a cut
answer goes out chunked, without a Content-Length, and ends cleanly. ffmpeg 5.1 and 7 check
a body against the file's size from Content-Range ("Stream ends prematurely") unless it is
chunked, and take a chunked body's end as the file's end; ffmpeg 9 asks again from there,
and a refusal (416) ends its file too. The layout and its ranges are tested on their own
(tests/test_mp4index.py: every chunk decodes from a copy whose other media bytes are
overwritten), and on every ffmpeg through real peers (tests/test_node.py).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from .fmp4 import _boxes as _boxes_in

__all__ = ["PROBE_GAP", "PROBE_SAMPLES", "Layout", "read_layout"]

# ffmpeg's stream probe (avformat_find_stream_info) reads the media's first packets before
# it seeks: 3 of H.264 in mp4 on ffmpeg 9 ("After avformat_find_stream_info() pos" at -v
# debug). A request at the media start is answered with this many video samples (in decode
# order, with whatever lies between them); ffmpeg 9 asks again if it wants more, older
# ones end the probe there with what they have (the parameters are in the moov).
PROBE_SAMPLES = 4
# The probe's answer is cut only for a chunk whose keyframe lies this far past the probe's
# end: far beyond any short-seek window (``Layout.cap``).
PROBE_GAP = 1 << 20
# The start of the file is answered only up to the media data when the index follows it and
# the media data is this large: every ffmpeg then seeks past it at once (it reads through
# a skip shorter than its socket's receive buffer, and would find the file cut short).
MIN_SKIPPED_MDAT = 4 << 20
# Cap the moov we parse: a 2-hour film's is a few MB.
MAX_MOOV = 64 << 20


@dataclass(frozen=True, slots=True)
class Layout:
    """The video track's samples, in decode order, and the file's regions."""

    size: int
    index_start: int  # where the boxes after the last media data start (the file's end)
    header_end: int | None  # the first media byte, when the index follows large media data
    offsets: tuple[int, ...]  # per sample, decode order
    ends: tuple[int, ...]  # running max of offset + size over decode order
    sync: tuple[bool, ...]
    decode_index: tuple[int, ...]  # per frame in presentation order: its sample

    @property
    def media_start(self) -> int:
        return min(self.offsets)

    def chunk_range(self, first: int, frames: int) -> tuple[int, int]:
        """(lo, hi): from the keyframe the chunk's decode starts at, to the end of the last
        sample any of its frames needs (every reference of a frame precedes it in decode
        order, so that is the last of its frames' samples in decode order)."""
        key, last = self._chunk(first, frames)
        return self.offsets[key], self.ends[last]

    def _chunk(self, first: int, frames: int) -> tuple[int, int]:
        ds = self.decode_index[first:first + frames]
        key, last = min(ds), max(ds)
        while key > 0 and not self.sync[key]:
            key -= 1
        return key, last

    def cap(self, start: int, first: int, frames: int) -> int | None:
        """The end (exclusive) of what a request from ``start`` may be answered with, for
        an attempt at the chunk of ``frames`` frames from frame ``first``; None: nothing
        (the request is refused).

        - the file's start, the index after large media data: the boxes before the media
          (ffmpeg then seeks to the index, past the media);
        - the media start, for a chunk that seeks: the stream probe's first samples;
        - before the chunk's end: up to its end;
        - from the chunk's end to the index: nothing. ffmpeg reads ahead of its last frame
          (its demuxer thread, frame threads) and a prefetch copies until its stream ends;
          refused, ffmpeg takes it as the end of the file (ffmpeg 9 asks again where a
          shorter answer stopped): the decoders are flushed and every frame comes out;
        - the index after the media, and whatever else is there: to the end of the file.
        """
        if start == 0 and self.header_end is not None:
            return self.header_end
        key, last = self._chunk(first, frames)
        lo, hi = self.offsets[key], self.ends[last]
        probe_end = self.ends[min(PROBE_SAMPLES, len(self.ends)) - 1]
        # Only where the chunk's keyframe is well clear of the probe's samples: a seek that
        # landed a keyframe or two earlier than computed must never be cut to the probe.
        # And only where the chunk starts far past the probe's end: ffmpeg 5.1 and 7 read
        # through a forward skip shorter than their short-seek window (the socket's receive
        # buffer, 128-256 kB on a peer) instead of asking anew, and after a cut answer
        # that read finds the file's end (their copy of a chunk 120-210 kB on held nothing).
        if (start == self.media_start and lo >= probe_end + PROBE_GAP
                and sum(self.sync[:key]) >= 2):
            return probe_end
        if start < hi:
            # Not where the index follows within a short-seek window of the chunk's end:
            # ffmpeg 5.1 and 7 would read through to it, and find the file ended.
            if self.index_start < self.size and self.index_start - hi < PROBE_GAP:
                return self.size
            return hi
        if start < self.index_start:
            return None
        return self.size


def _boxes(fh: BinaryIO, start: int, end: int) -> Iterator[tuple[bytes, int, int, int]]:
    """(type, box start, payload start, box end) of the top-level boxes in [start, end)."""
    pos = start
    while pos + 8 <= end:
        fh.seek(pos)
        head = fh.read(16)
        if len(head) < 8:
            return
        size, kind = struct.unpack_from(">I4s", head)
        body = 8
        if size == 1:
            if len(head) < 16:
                return
            (size,) = struct.unpack_from(">Q", head, 8)
            body = 16
        elif size == 0:
            size = end - pos
        if size < body or pos + size > end:
            raise ValueError(f"box {kind!r} at {pos} runs past the file")
        yield kind, pos, pos + body, pos + size
        pos += size


def _children(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of each box in data[start:end] (fmp4's box reader)."""
    for kind, _start, payload, box_end in _boxes_in(data, start, end):
        yield kind, payload, box_end


def _child(data: bytes, start: int, end: int, path: list[bytes]) -> tuple[int, int] | None:
    for kind, s, e in _children(data, start, end):
        if kind == path[0]:
            return (s, e) if len(path) == 1 else _child(data, s, e, path[1:])
    return None


def _video_stbl(moov: bytes) -> tuple[int, int] | None:
    for kind, s, e in _children(moov, 0, len(moov)):
        if kind != b"trak":
            continue
        hdlr = _child(moov, s, e, [b"mdia", b"hdlr"])
        if hdlr is not None and moov[hdlr[0] + 8:hdlr[0] + 12] == b"vide":
            return _child(moov, s, e, [b"mdia", b"minf", b"stbl"])
    return None


def _table(data: bytes, box: tuple[int, int] | None, fmt: str) -> list[tuple[int, ...]]:
    if box is None:
        return []
    s, e = box
    (n,) = struct.unpack_from(">I", data, s + 4)
    width = struct.calcsize(fmt)
    if s + 8 + n * width > e:
        raise ValueError("sample table runs past its box")
    return list(struct.iter_unpack(fmt, data[s + 8:s + 8 + n * width]))


def _samples(moov: bytes) -> tuple[list[int], list[int], list[int], list[bool]] | None:
    """Per video sample in decode order: offset, size, presentation time, sync."""
    stbl = _video_stbl(moov)
    if stbl is None:
        return None
    s, e = stbl
    box = {kind: (bs, be) for kind, bs, be in _children(moov, s, e)}
    if b"stsz" not in box or b"stsc" not in box or b"stts" not in box:
        return None
    zs, _ = box[b"stsz"]
    uniform, count = struct.unpack_from(">II", moov, zs + 4)
    if uniform:
        sizes = [uniform] * count
    else:
        if zs + 12 + 4 * count > box[b"stsz"][1]:
            raise ValueError("stsz runs past its box")
        sizes = list(struct.unpack_from(f">{count}I", moov, zs + 12))
    if b"stco" in box:
        chunks = [c for (c,) in _table(moov, box[b"stco"], ">I")]
    elif b"co64" in box:
        chunks = [c for (c,) in _table(moov, box[b"co64"], ">Q")]
    else:
        return None
    stsc = _table(moov, box[b"stsc"], ">III")
    offsets: list[int] = []
    for i, (first, per, _desc) in enumerate(stsc):
        last = stsc[i + 1][0] - 1 if i + 1 < len(stsc) else len(chunks)
        for c in range(first - 1, min(last, len(chunks))):
            pos = chunks[c]
            for _ in range(per):
                if len(offsets) == count:
                    break
                offsets.append(pos)
                pos += sizes[len(offsets) - 1]
    if len(offsets) != count:
        return None
    dts: list[int] = []
    t = 0
    for n, delta in _table(moov, box[b"stts"], ">II"):
        for _ in range(n):
            dts.append(t)
            t += delta
    # ctts offsets: version 1 signs them; version 0 writers use them as signed too.
    ctts = [0] * count
    if b"ctts" in box:
        i = 0
        for n, off in _table(moov, box[b"ctts"], ">Ii"):
            for _ in range(n):
                if i < count:
                    ctts[i] = off
                i += 1
    if len(dts) < count:
        return None
    pts = [dts[i] + ctts[i] for i in range(count)]
    sync = [True] * count
    if b"stss" in box:
        sync = [False] * count
        for (n,) in _table(moov, box[b"stss"], ">I"):
            if 1 <= n <= count:
                sync[n - 1] = True
    return offsets, sizes, pts, sync


def read_layout(fh: BinaryIO, size: int, frames: int) -> Layout | None:
    """The layout of the MP4/MOV file ``fh`` (``size`` bytes) whose first video stream
    ffmpeg's probe found ``frames`` frames in; None for anything else (another container,
    fragments, an edit list that hides samples: the counts differ)."""
    try:
        tops = list(_boxes(fh, 0, size))
        moov = next((t for t in tops if t[0] == b"moov"), None)
        mdats = [t for t in tops if t[0] == b"mdat"]
        if moov is None or not mdats or any(t[0] == b"moof" for t in tops):
            return None
        if moov[3] - moov[2] > MAX_MOOV:
            return None
        fh.seek(moov[2])
        data = fh.read(moov[3] - moov[2])
        got = _samples(data)
    except (ValueError, struct.error, OSError):
        return None
    if got is None:
        return None
    offsets, sizes, pts, sync = got
    if len(offsets) != frames or not offsets or any(
            o < 0 or o + n > size for o, n in zip(offsets, sizes, strict=True)):
        return None
    ends: list[int] = []
    top = 0
    for o, n in zip(offsets, sizes, strict=True):
        top = max(top, o + n)
        ends.append(top)
    order = sorted(range(len(pts)), key=lambda i: (pts[i], i))
    first_mdat = mdats[0]
    header_end = (first_mdat[2] if moov[1] > first_mdat[1]
                  and first_mdat[3] - first_mdat[2] >= MIN_SKIPPED_MDAT else None)
    return Layout(size=size, index_start=mdats[-1][3], header_end=header_end,
                  offsets=tuple(offsets), ends=tuple(ends), sync=tuple(sync),
                  decode_index=tuple(order))
