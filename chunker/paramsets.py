"""Whether chunks from different encoders can share one output track. Pure: bytes in.

An mp4 track holds one decoder configuration (``avcC``/``hvcC``/``av1C``) for all its
samples, taken from the first chunk; a chunk whose own parameter sets differ would then be
decoded with the wrong ones. Chunks of one job can come from different ffmpeg builds (a
coordinator on 9.0, peers on Debian's 5.1 or a 7.x), so the coordinator compares every chunk's
parameter sets with the job's before it keeps the chunk.

Measured (320x240, this repository's profiles, ffmpeg 5.1.9 / 7.0.2 / 9.0.2, 1 and 2
threads): x264's SPS and PPS are byte-identical across the three; x265's SPS is 41 bytes from
5.1 and 7.0.2 and 42 from 9.0.2 (its extradata also carries an SEI with the version and the
options, which differs even between thread counts of one binary); SVT-AV1's sequence header
differs between 5.1 and 9.0.2. So the decoding parameter sets are compared, never SEI or
metadata, and the coordinator refuses a chunk whose sets differ (peer.coordinator).

``nut_codec_data`` reads a chunk's extradata straight from its NUT stream header (chunks are
NUT, see ``chunker.commands.CHUNK_FORMAT``), so the check costs no ffmpeg run.
"""

from __future__ import annotations

__all__ = ["ENCODER_CODECS", "HEADER_BYTES", "mismatch", "nut_codec_data", "parameter_sets"]

# ffmpeg's encoder names for the codecs whose parameter sets are understood here.
ENCODER_CODECS = {"libx264": "h264", "libx265": "hevc", "libsvtav1": "av1"}
# Stream headers follow the main header at the start of the file; x265's extradata with its
# SEI is about 2.5 KB, so this is ample.
HEADER_BYTES = 64 * 1024
# From libavformat/nut.h: 'N' 'S' then 0x11405BF2F9DB.
_STREAM_STARTCODE = bytes.fromhex("4e5311405bf2f9db")
# NAL unit types that configure decoding. H.264: SPS 7, PPS 8 (SPS extension 13).
# HEVC: VPS 32, SPS 33, PPS 34. AV1: the sequence header OBU (type 1).
_H264_SETS = frozenset({7, 8, 13})
_HEVC_SETS = frozenset({32, 33, 34})
_AV1_SEQUENCE_HEADER = 1


def _v(data: bytes, pos: int) -> tuple[int, int]:
    """NUT's variable-length unsigned: 7 bits a byte, most significant first."""
    value = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated NUT header")
        byte = data[pos]
        pos += 1
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            return value, pos


def _vb(data: bytes, pos: int) -> tuple[bytes, int]:
    n, pos = _v(data, pos)
    if pos + n > len(data):
        raise ValueError("truncated NUT header")
    return data[pos:pos + n], pos + n


def nut_codec_data(head: bytes) -> dict[int, bytes]:
    """Each stream's codec-specific data (extradata), by stream id, from a NUT file's start.

    Raises ValueError if the bytes hold no complete stream header.
    """
    out: dict[int, bytes] = {}
    pos = head.find(_STREAM_STARTCODE)
    while pos >= 0:
        p = pos + len(_STREAM_STARTCODE)
        forward, p = _v(head, p)
        if forward > 4096:
            p += 4  # header checksum
        stream_id, p = _v(head, p)
        _, p = _v(head, p)  # stream class
        _, p = _vb(head, p)  # fourcc
        for _ in range(5):  # time base id, msb pts shift, max pts distance, decode delay, flags
            _, p = _v(head, p)
        out[stream_id], _ = _vb(head, p)
        pos = head.find(_STREAM_STARTCODE, p)
    if not out:
        raise ValueError("no NUT stream header")
    return out


def _annexb_nals(data: bytes) -> list[bytes]:
    nals, i = [], data.find(b"\x00\x00\x01")
    while i >= 0:
        start = i + 3
        j = data.find(b"\x00\x00\x01", start)
        end = len(data) if j < 0 else j
        nal = data[start:end]
        # A four-byte start code leaves its leading zero at the end of the previous unit.
        nals.append(nal.rstrip(b"\x00") if j >= 0 else nal)
        i = j
    return [n for n in nals if n]


def _avcc_nals(data: bytes) -> list[bytes]:
    """avcC: version, profile, compat, level, length size, then counted SPS and PPS."""
    nals: list[bytes] = []
    p = 5
    for _ in range(2):
        count = data[p] & (0x1F if not nals else 0xFF)
        p += 1
        for _ in range(count):
            n = int.from_bytes(data[p:p + 2], "big")
            nals.append(data[p + 2:p + 2 + n])
            p += 2 + n
    return nals


def _hvcc_nals(data: bytes) -> list[bytes]:
    """hvcC: 22 bytes of configuration, then arrays of (type, count, length-prefixed NALs)."""
    nals, p = [], 23
    for _ in range(data[22]):
        count = int.from_bytes(data[p + 1:p + 3], "big")
        p += 3
        for _ in range(count):
            n = int.from_bytes(data[p:p + 2], "big")
            nals.append(data[p + 2:p + 2 + n])
            p += 2 + n
    return nals


def _obus(data: bytes) -> list[tuple[int, bytes]]:
    """Low-overhead AV1 OBUs (each with its size field) as (type, whole OBU)."""
    out, p = [], 0
    while p < len(data):
        header = data[p]
        kind = (header >> 3) & 0x0F
        q = p + 1 + ((header >> 2) & 1)  # extension byte
        if not header & 0x02:
            out.append((kind, data[p:]))  # no size field: runs to the end
            break
        size = shift = 0
        while True:
            byte = data[q]
            q += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        out.append((kind, data[p:q + size]))
        p = q + size
    return out


def parameter_sets(codec: str, extradata: bytes) -> tuple[bytes, ...]:
    """The decoding parameter sets in a stream's extradata, SEI and metadata left out.

    ``codec`` is ffmpeg's name (h264, hevc, av1); another codec's extradata is compared
    whole. Raises ValueError on extradata that does not parse.
    """
    try:
        if codec == "h264":
            nals = _avcc_nals(extradata) if extradata[:1] == b"\x01" else _annexb_nals(extradata)
            return tuple(n for n in nals if n and n[0] & 0x1F in _H264_SETS)
        if codec == "hevc":
            nals = (_hvcc_nals(extradata) if extradata[:1] == b"\x01"
                    else _annexb_nals(extradata))
            return tuple(n for n in nals if len(n) > 1 and (n[0] >> 1) & 0x3F in _HEVC_SETS)
        if codec == "av1":
            obus = extradata[4:] if extradata[:1] and extradata[0] & 0x80 else extradata
            return tuple(o for kind, o in _obus(obus) if kind == _AV1_SEQUENCE_HEADER)
    except IndexError as exc:
        raise ValueError(f"{codec} extradata does not parse") from exc
    return (extradata,)


def mismatch(codec: str, reference: tuple[bytes, ...], got: tuple[bytes, ...]) -> str | None:
    """Why a chunk with parameter sets ``got`` cannot join ``reference``'s track; None if it
    can. Only identical parameter sets are safe: the container stores one set per track."""
    if got == reference:
        return None
    if len(got) != len(reference):
        return (f"its encoder wrote {len(got)} {codec} parameter set(s) where the job's "
                f"chunks have {len(reference)}")
    i = next(i for i, (a, b) in enumerate(zip(got, reference, strict=True)) if a != b)
    return (f"its {codec} parameter set {i + 1} of {len(got)} differs from the job's "
            f"({len(got[i])} bytes, the job's {len(reference[i])}): another encoder build "
            "or settings")
