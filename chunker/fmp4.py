"""Fragmented MP4 (ISO BMFF) as HLS needs it: split an init from fragments, and move a
fragment onto the job's timeline. Pure: bytes in, bytes out.

ffmpeg's mp4 muxer starts every file it writes at decode time 0 (``tfdt`` = 0) and numbers
its fragments from 1 (``mfhd``), whatever timestamps its input had (``-copyts`` and
``frag_discont`` do not change that: measured on 5.1 and 9.0). Chunks are encoded by separate
processes, so each chunk's fragments must be given the chunk's place in the stream and
sequence numbers that run on; without it, ffmpeg's HLS reader decoded 264 of 360 frames and
hls.js stalled (measured when the HLS issue was filed).

Only what ffmpeg's muxer writes with ``frag_keyframe+empty_moov+default_base_moof`` is
understood: one ``traf`` per track, ``trun`` data offsets relative to the ``moof``. Anything
else raises ``ValueError``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Fragment", "Track", "edit_list", "find_box", "parse", "retime"]

_CONTAINERS = frozenset({b"moov", b"trak", b"mdia", b"minf", b"stbl", b"mvex", b"moof",
                         b"traf", b"edts"})


def _boxes(data: bytes, start: int = 0, end: int | None = None
           ) -> Iterator[tuple[bytes, int, int, int]]:
    """(type, box start, payload start, box end) of each box in data[start:end]."""
    end = len(data) if end is None else end
    pos = start
    while pos < end:
        if end - pos < 8:
            raise ValueError(f"truncated box header at {pos}")
        size, kind = struct.unpack_from(">I4s", data, pos)
        head = 8
        if size == 1:
            if end - pos < 16:
                raise ValueError(f"truncated box header at {pos}")
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            head = 16
        elif size == 0:
            size = end - pos
        if size < head or pos + size > end:
            raise ValueError(f"box {kind!r} at {pos} runs past its parent")
        yield kind, pos, pos + head, pos + size
        pos += size


def _child(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int, int] | None:
    for k, s, p, e in _boxes(data, start, end):
        if k == kind:
            return s, p, e
    return None


@dataclass(frozen=True, slots=True)
class Track:
    track_id: int
    timescale: int
    handler: bytes  # b"vide", b"soun"
    default_duration: int  # trex's, for runs that carry none


@dataclass(frozen=True, slots=True)
class Fragment:
    """One ``moof`` and its ``mdat``, with the timing of the first track it holds."""

    data: bytes
    track_id: int
    decode_start: int  # tfdt, in the track's timescale
    duration: int  # sum of the sample durations
    first_pts: int  # earliest presentation time (decode time + composition offset)
    samples: int
    starts_with_sync: bool


def _tracks(data: bytes, moov: tuple[int, int, int]) -> dict[int, Track]:
    _, p, e = moov
    defaults: dict[int, int] = {}
    mvex = _child(data, p, e, b"mvex")
    if mvex is not None:
        for k, _s, tp, _te in _boxes(data, mvex[1], mvex[2]):
            if k == b"trex":
                tid, _desc, dur = struct.unpack_from(">III", data, tp + 4)
                defaults[tid] = dur
    out: dict[int, Track] = {}
    for k, _s, tp, te in _boxes(data, p, e):
        if k != b"trak":
            continue
        tkhd = _child(data, tp, te, b"tkhd")
        mdia = _child(data, tp, te, b"mdia")
        if tkhd is None or mdia is None:
            raise ValueError("trak without tkhd or mdia")
        version = data[tkhd[1]]
        (tid,) = struct.unpack_from(">I", data, tkhd[1] + (20 if version == 1 else 12))
        mdhd = _child(data, mdia[1], mdia[2], b"mdhd")
        hdlr = _child(data, mdia[1], mdia[2], b"hdlr")
        if mdhd is None or hdlr is None:
            raise ValueError("mdia without mdhd or hdlr")
        mv = data[mdhd[1]]
        (timescale,) = struct.unpack_from(">I", data, mdhd[1] + (20 if mv == 1 else 12))
        handler = data[hdlr[1] + 8:hdlr[1] + 12]
        out[tid] = Track(tid, timescale, handler, defaults.get(tid, 0))
    return out


def _traf_timing(data: bytes, traf: tuple[int, int, int], tracks: dict[int, Track]
                 ) -> tuple[int, int, int, int, int, bool]:
    """(track id, tfdt, duration, earliest pts, samples, first is sync) of one traf."""
    _, p, e = traf
    tfhd = _child(data, p, e, b"tfhd")
    tfdt = _child(data, p, e, b"tfdt")
    trun = _child(data, p, e, b"trun")
    if tfhd is None or tfdt is None or trun is None:
        raise ValueError("traf without tfhd, tfdt or trun")
    hflags = int.from_bytes(data[tfhd[1] + 1:tfhd[1] + 4], "big")
    (tid,) = struct.unpack_from(">I", data, tfhd[1] + 4)
    if tid not in tracks:
        raise ValueError(f"fragment of unknown track {tid}")
    q = tfhd[1] + 8
    if hflags & 0x1:
        q += 8  # base data offset
    if hflags & 0x2:
        q += 4  # sample description index
    default_dur = tracks[tid].default_duration
    if hflags & 0x8:
        (default_dur,) = struct.unpack_from(">I", data, q)
        q += 4
    if hflags & 0x10:
        q += 4
    default_flags = 0
    if hflags & 0x20:
        (default_flags,) = struct.unpack_from(">I", data, q)
    v = data[tfdt[1]]
    (base,) = struct.unpack_from(">Q" if v == 1 else ">I", data, tfdt[1] + 4)
    tv = data[trun[1]]
    rflags = int.from_bytes(data[trun[1] + 1:trun[1] + 4], "big")
    (count,) = struct.unpack_from(">I", data, trun[1] + 4)
    q = trun[1] + 8
    if rflags & 0x1:
        q += 4
    first_flags: int | None = None
    if rflags & 0x4:
        (first_flags,) = struct.unpack_from(">I", data, q)
        q += 4
    t = base
    earliest: int | None = None
    sync0 = False
    for i in range(count):
        dur = default_dur
        flags = default_flags
        cts = 0
        if rflags & 0x100:
            (dur,) = struct.unpack_from(">I", data, q)
            q += 4
        if rflags & 0x200:
            q += 4
        if rflags & 0x400:
            (flags,) = struct.unpack_from(">I", data, q)
            q += 4
        if rflags & 0x800:
            (cts,) = struct.unpack_from(">i" if tv == 1 else ">I", data, q)
            q += 4
        if i == 0:
            if first_flags is not None:
                flags = first_flags
            sync0 = not flags & 0x10000  # sample_is_non_sync_sample
        pts = t + cts
        earliest = pts if earliest is None else min(earliest, pts)
        t += dur
    if q > trun[2]:
        raise ValueError("trun shorter than its samples")
    return tid, base, t - base, base if earliest is None else earliest, count, sync0


def parse(data: bytes) -> tuple[bytes, dict[int, Track], list[Fragment]]:
    """Split a fragmented mp4 into its init segment (``ftyp`` + ``moov``), its tracks, and
    its fragments (each ``moof`` with the ``mdat`` after it). Trailing index boxes (``mfra``,
    ``sidx``) are left out: a segment does not need them."""
    init_end = None
    moov = None
    frags: list[Fragment] = []
    tracks: dict[int, Track] = {}
    boxes = list(_boxes(data))
    i = 0
    while i < len(boxes):
        kind, s, p, e = boxes[i]
        if kind == b"moov":
            moov = (s, p, e)
            tracks = _tracks(data, moov)
            init_end = e
        elif kind == b"moof":
            if moov is None:
                raise ValueError("moof before moov")
            if i + 1 >= len(boxes) or boxes[i + 1][0] != b"mdat":
                raise ValueError("moof without its mdat")
            trafs = [(ts, tp, te) for k, ts, tp, te in _boxes(data, p, e) if k == b"traf"]
            if len(trafs) != 1:
                raise ValueError(f"fragment with {len(trafs)} tracks: expected one")
            tid, base, dur, first, count, sync = _traf_timing(data, trafs[0], tracks)
            end = boxes[i + 1][3]
            frags.append(Fragment(data[s:end], tid, base, dur, first, count, sync))
            i += 1
        i += 1
    if init_end is None:
        raise ValueError("no moov: not an mp4")
    return data[:init_end], tracks, frags


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def retime(frag: Fragment, decode_start: int, sequence: int) -> bytes:
    """``frag`` with its decode time set to ``decode_start`` (as a 64-bit ``tfdt``) and its
    sequence number to ``sequence``; the ``trun`` data offset follows the moof's new size."""
    data = frag.data
    _k, ms, mp, me = next(iter(_boxes(data, 0, len(data))))
    if data[ms + 4:ms + 8] != b"moof":
        raise ValueError("a fragment starts with its moof")
    # tfdt becomes 20 bytes (version 1) where ffmpeg may have written 16: the moof grows,
    # and a trun's data offset counts from the moof's start to its samples in the mdat.
    growth = 0
    for k, _s, p, e in _boxes(data, mp, me):
        if k == b"traf":
            tfdt = _child(data, p, e, b"tfdt")
            if tfdt is not None:
                growth += 20 - (tfdt[2] - tfdt[0])
    children: list[bytes] = []
    for k, s, p, e in _boxes(data, mp, me):
        if k == b"mfhd":
            children.append(_box(b"mfhd", data[p:p + 4] + struct.pack(">I", sequence)))
        elif k == b"traf":
            body = b""
            for tk, ts, tp, te in _boxes(data, p, e):
                if tk == b"tfdt":
                    body += _box(b"tfdt", b"\x01\x00\x00\x00" + struct.pack(">Q", decode_start))
                elif tk == b"trun" and data[tp + 3] & 0x1:
                    run = bytearray(data[tp:te])
                    (off,) = struct.unpack_from(">i", run, 8)
                    struct.pack_into(">i", run, 8, off + growth)
                    body += _box(b"trun", bytes(run))
                else:
                    body += data[ts:te]
            children.append(_box(b"traf", body))
        else:
            children.append(data[s:e])
    return _box(b"moof", b"".join(children)) + data[me:]


def find_box(data: bytes, path: list[bytes]) -> bytes | None:
    """The payload of the first box at ``path`` (e.g. moov/trak/mdia/.../avcC)."""
    start, end = 0, len(data)
    for kind in path:
        pos = start
        found = None
        while pos + 8 <= end:
            size, k = struct.unpack_from(">I4s", data, pos)
            if size < 8:
                return None
            if k == kind:
                found = (pos + 8, pos + size)
                break
            pos += size
        if found is None:
            return None
        start, end = found
        if kind == b"stsd":
            start += 8  # version, flags, entry count
        elif kind in (b"avc1", b"mp4a"):
            start += 78 if kind == b"avc1" else 28  # the sample entry's fixed fields
    return data[start:end]


def edit_list(moov: bytes) -> tuple[float, int, int]:
    """(delay in seconds, media time skipped, media time scale) of a moov's first track:
    its empty edits and where its first real edit starts."""
    mvhd = find_box(moov, [b"moov", b"mvhd"])
    mdhd = find_box(moov, [b"moov", b"trak", b"mdia", b"mdhd"])
    if mvhd is None or mdhd is None:
        raise ValueError("moov without mvhd or mdhd")
    movie_ts = struct.unpack_from(">I", mvhd, 20 if mvhd[0] == 1 else 12)[0]
    rate = struct.unpack_from(">I", mdhd, 20 if mdhd[0] == 1 else 12)[0]
    elst = find_box(moov, [b"moov", b"trak", b"edts", b"elst"])
    if elst is None:
        return 0.0, 0, rate
    v = elst[0]
    (count,) = struct.unpack_from(">I", elst, 4)
    delay = 0
    for j in range(count):
        if v == 1:
            dur, media = struct.unpack_from(">Qq", elst, 8 + 20 * j)
        else:
            dur, media = struct.unpack_from(">Ii", elst, 8 + 12 * j)
        if media < 0:
            delay += dur  # an empty edit: the track starts this much later
        else:
            return delay / movie_ts, media, rate
    return delay / movie_ts, 0, rate
