"""Chunks whose parameter sets differ never share an output track.

The pure parsing and comparison first (bytes built here), then real chunks from the three
ffmpeg builds under test, then a real job whose two peers run different ffmpegs.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import trio

import ffmpegs
from chunker.commands import encode_chunk_argv, video_plan
from chunker.paramsets import HEADER_BYTES, mismatch, nut_codec_data, parameter_sets
from chunker.verify import check_output
from media import decode_errors, media_info
from peer.coordinator import run_encode
from peer.node import Node, NodeConfig
from peer.options import EncodeOptions, JobIntent, LocalSettings, NetworkSettings
from profiles import load_profile

SPS = bytes.fromhex("6764001facd9405005bb011000000300100000030320f1831960")
PPS = bytes.fromhex("68ebe3cb22c0")
SEI = bytes.fromhex("0605ffff") + b"x264 - core 164"


def _v(n: int) -> bytes:
    """NUT's variable-length number, most significant 7 bits first."""
    out = [n & 0x7F]
    while n := n >> 7:
        out.append(0x80 | (n & 0x7F))
    return bytes(reversed(out))


def _nut_stream_header(stream_id: int, codec_data: bytes) -> bytes:
    body = (_v(stream_id) + _v(0) + _v(4) + b"H264" + _v(0) + _v(0) + _v(0) + _v(0) + _v(0)
            + _v(len(codec_data)) + codec_data + b"\x00\x00\x00\x00")
    return bytes.fromhex("4e5311405bf2f9db") + _v(len(body)) + body


def _avcc(sps: bytes, pps: bytes) -> bytes:
    return (bytes([1, sps[1], sps[2], sps[3], 0xFF, 0xE1]) + len(sps).to_bytes(2, "big") + sps
            + b"\x01" + len(pps).to_bytes(2, "big") + pps)


def test_nut_codec_data_is_read_from_the_stream_headers() -> None:
    head = b"nut/multimedia container\x00" + b"\x11" * 40 + _nut_stream_header(0, b"ab" * 300)
    head += _nut_stream_header(1, b"cd")
    assert nut_codec_data(head) == {0: b"ab" * 300, 1: b"cd"}
    with pytest.raises(ValueError):
        nut_codec_data(b"nut/multimedia container\x00")
    with pytest.raises(ValueError):
        nut_codec_data(_nut_stream_header(0, b"ab" * 300)[:100])


def test_h264_sets_are_the_same_in_annex_b_and_avcc_and_sei_does_not_count() -> None:
    annexb = b"\x00\x00\x00\x01" + SPS + b"\x00\x00\x00\x01" + PPS + b"\x00\x00\x01" + SEI
    assert parameter_sets("h264", annexb) == (SPS, PPS)
    assert parameter_sets("h264", _avcc(SPS, PPS)) == (SPS, PPS)
    assert mismatch("h264", (SPS, PPS), parameter_sets("h264", _avcc(SPS, PPS))) is None
    other = SPS[:-1] + b"\x61"
    why = mismatch("h264", (SPS, PPS), (other, PPS))
    assert why is not None and "parameter set 1 of 2 differs" in why
    assert "2 h264 parameter set(s) where the job's chunks have 1" in str(
        mismatch("h264", (SPS,), (SPS, PPS)))


def test_hevc_sets_skip_the_sei_array_of_hvcc() -> None:
    vps, sps, pps = b"\x40\x01\x0c", b"\x42\x01\x01\x01", b"\x44\x01\xc1"
    sei = b"\x4e\x01\x05" + b"x265 (build 199) - 3.5 options: pools=2"

    def hvcc(*nals: bytes) -> bytes:
        arrays = b"".join(bytes([n[0] >> 1 & 0x3F]) + b"\x00\x01" + len(n).to_bytes(2, "big")
                          + n for n in nals)
        return b"\x01" + b"\x00" * 21 + bytes([len(nals)]) + arrays

    assert parameter_sets("hevc", hvcc(vps, sps, pps, sei)) == (vps, sps, pps)
    other_sei = sei.replace(b"pools=2", b"pools=1")
    assert mismatch("hevc", parameter_sets("hevc", hvcc(vps, sps, pps, sei)),
                    parameter_sets("hevc", hvcc(vps, sps, pps, other_sei))) is None


def test_av1_compares_the_sequence_header_obu_only() -> None:
    seq = b"\x0a\x0a\x00\x00\x00\x24\xc4\xff\xdf\x00\x68\x02"  # type 1, size 10
    meta = b"\x2a\x02\x01\x02"  # metadata OBU (type 5)
    av1c = b"\x81\x08\x0c\x00"
    assert parameter_sets("av1", av1c + seq + meta) == (seq,)
    assert parameter_sets("av1", seq) == (seq,)
    changed = seq[:-1] + b"\x03"
    assert mismatch("av1", (seq,), parameter_sets("av1", av1c + changed)) is not None


# -- real chunks from the ffmpeg builds under test ----------------------------------------

def _chunk_sets(ffmpeg_path: str, profile_name: str, source: Path, out: Path
                ) -> tuple[bytes, ...]:
    profile = load_profile(profile_name)
    plan = video_plan(profile, 320, 240, 25.0, False)
    with out.open("wb") as fh:
        subprocess.run(encode_chunk_argv(ffmpeg_path, profile, plan, str(source), None, None,
                                         10, threads=1, progress=False),
                       stdout=fh, check=True, timeout=120)
    codec = {"libx264": "h264", "libx265": "hevc"}[profile.video.codec]
    return parameter_sets(codec, nut_codec_data(out.read_bytes()[:HEADER_BYTES])[0])


def test_real_chunks_x264_agree_across_builds_x265_does_not(corpus: dict[str, Path],
                                                            tmp_path: Path) -> None:
    """The measurement the coordinator's check rests on: x264's SPS/PPS are the same from
    5.1, 7.0.2 and 9.0.2; x265's SPS from 5.1/7.0.2 differs from 9.0.2's (VUI)."""
    binaries = {ffmpegs.require(p).short_version: p for p in ffmpegs.under_test()}
    if len(binaries) < 2:
        pytest.skip("needs two different ffmpeg builds")
    src = corpus["closed_gop"]
    h264 = {v: _chunk_sets(p, "hd", src, tmp_path / f"{v}.nut") for v, p in binaries.items()}
    assert len(set(h264.values())) == 1, "x264 parameter sets differ between builds"
    hevc = {v: _chunk_sets(p, "fhd-x265", src, tmp_path / f"{v}.nut")
            for v, p in binaries.items()}
    by_major = {v.split(".")[0]: s for v, s in hevc.items()}
    if {"5", "9"} <= set(by_major):
        assert mismatch("hevc", by_major["9"], by_major["5"]) is not None


async def test_a_peer_whose_parameter_sets_differ_is_left_out(corpus: dict[str, Path],
                                                              tmp_path: Path) -> None:
    """Two peers on ffmpeg 9.0.2 and 5.1 encode an x265 job: whichever delivers first sets
    the job's parameter sets, the other is refused once and left out, with the reason, and
    the output is exact and decodes silently on every build."""
    new = ffmpegs.require(ffmpegs.BUNDLED)
    old = ffmpegs.require(ffmpegs.DEBIAN)
    src, out = corpus["open_gop"], tmp_path / "out.mp4"
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nodes = []
            for name, ff in (("peer-new", new), ("peer-old", old)):
                node = Node(NodeConfig(name=name, port=0, host="127.0.0.1", advertise=False),
                            ff)
                await nursery.start(node.run)
                nodes.append(node)
            opts = EncodeOptions(
                JobIntent(str(src), str(out), load_profile("fhd-x265"), chunk_seconds=0.5),
                LocalSettings(no_local=True),
                NetworkSettings(enabled=True, discover=False, name="coord",
                                peers=tuple(f"127.0.0.1:{n.port}" for n in nodes)))
            report = await run_encode(opts)
            nursery.cancel_scope.cancel()
    kept = {c["peer"] for c in report["chunks"]}
    assert len(kept) == 1, kept
    refused = [a for a in report["attempts"] if "cannot join the output" in a["reason"]]
    assert refused and {a["peer"] for a in refused} == {"peer-new", "peer-old"} - kept
    assert "(ffmpeg " in refused[0]["reason"]
    # Refused once, never a loop: with that refusal the other chunks it held (up to a
    # result waiting for its verdict, one encoding and one claimed ahead: peer.worker)
    # went back at once, and it was given none after it.
    assert len(refused) == 1, refused
    theirs = [a for a in report["attempts"] if a["peer"] == refused[0]["peer"]]
    assert all(a["start_s"] <= refused[0]["end_s"] for a in theirs), theirs
    assert all(a["end_s"] - refused[0]["end_s"] < 0.01 for a in theirs), theirs
    check_output(media_info(out), media_info(src))
    for path in ffmpegs.under_test():
        assert decode_errors(out, ffmpegs.require(path).path) == ""


def test_a_peer_that_can_never_succeed_is_benched_at_its_first_failure() -> None:
    from swarm.job import Grant, Job

    job = Job([10, 10, 10], lease_s=30.0)
    job.add_peer("old", None, 0.0)
    job.add_peer("new", None, 0.0)
    a = job.claim("old", 0.0)
    assert isinstance(a, Grant)
    ahead = job.claim("old", 0.5, prefetch=True)  # the chunk it would encode next
    assert isinstance(ahead, Grant)
    job.failed(a.attempt, 1.0, "cannot join the output", bench=True)
    assert job.benched == {"old"}
    # That one went back at once too: whatever it held can never be kept.
    assert job.attempts[ahead.attempt].reason == "its peer was left out"
    assert not job.running()
    assert not isinstance(job.claim("old", 2.0), Grant)
    assert isinstance(job.claim("new", 2.0), Grant)
