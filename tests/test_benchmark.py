"""The device benchmark: real ffmpeg encodes, and its cache under a temporary directory."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

import peer.benchmark as bench
from chunker.commands import VideoPlan
from chunker.tools import FFmpeg, find_ffmpeg
from peer.proc import FFmpegResult
from profiles import Profile, load_profile
from swarm.config import Environment
from swarm.errors import UsageError

# Generous for a loaded CI machine: each real measurement takes its budget plus a kill.
TIMEOUT_S = 15.0
BUDGET_SLACK_S = 1.5


@pytest.fixture(scope="module")
def ffmpeg() -> FFmpeg:
    return find_ffmpeg(["libx264"])


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    """Every test gets its own cache, never the user's."""
    return tmp_path / "cache"


def _x264(tmp_path: Path, name: str, preset: str, width: int = 640, height: int = 360,
          bitrate_k: int = 0) -> Profile:
    rate = f"bitrate_k = {bitrate_k}" if bitrate_k else "crf = 23"
    toml = tmp_path / f"{name}.toml"
    toml.write_text(f"""
[video]
codec = "libx264"
width = {width}
height = {height}
preset = "{preset}"
{rate}
[audio]
codec = "aac"
bitrate_k = 128
channels = 2
""", encoding="utf-8")
    return load_profile(str(toml))


# -- measuring with ffmpeg -----------------------------------------------------------------


async def test_hd_scores_positive_within_its_budget(ffmpeg: FFmpeg) -> None:
    budget = 1.5
    with trio.fail_after(TIMEOUT_S):
        t0 = time.monotonic()
        score = await bench.measure(ffmpeg, load_profile("hd"), budget_s=budget)
        wall = time.monotonic() - t0
    assert wall <= budget + BUDGET_SLACK_S
    # Positive, and not absurd: under 1000 frames per second at 720p.
    assert 0 < score <= 1000 * 1280 * 720


async def test_faster_preset_scores_higher(ffmpeg: FFmpeg, tmp_path: Path) -> None:
    fast = _x264(tmp_path, "fast", "ultrafast")
    slow = _x264(tmp_path, "slow", "veryslow")
    budget = 1.0
    with trio.fail_after(TIMEOUT_S):
        t0 = time.monotonic()
        s_fast = await bench.measure(ffmpeg, fast, budget_s=budget)
        t1 = time.monotonic()
        s_slow = await bench.measure(ffmpeg, slow, budget_s=budget)
        t2 = time.monotonic()
    # ultrafast is 10-30x faster than veryslow; 2x survives a busy machine.
    assert s_fast > 2 * s_slow > 0
    # The budget holds even when veryslow's lookahead forces a retry at half size.
    assert t1 - t0 <= budget + BUDGET_SLACK_S
    assert t2 - t1 <= budget + BUDGET_SLACK_S


async def test_missing_encoder_is_a_usage_error_and_skipped(ffmpeg: FFmpeg) -> None:
    bare = dataclasses.replace(ffmpeg, encoders=frozenset())
    with trio.fail_after(TIMEOUT_S):
        with pytest.raises(UsageError, match="libx264"):
            await bench.measure(bare, load_profile("hd"))
        assert await bench.run_benchmark(bare, [load_profile("hd")]) == {}


async def test_ensure_scores_measures_once_then_reads_the_cache(
        ffmpeg: FFmpeg, tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = _x264(tmp_path, "tiny-a", "ultrafast", 320, 180)
    b = _x264(tmp_path, "tiny-b", "superfast", 320, 180)
    runs: list[str] = []
    real_run = bench.run_ffmpeg

    async def counting_run(argv: Sequence[str], **kw: Any) -> FFmpegResult:
        runs.append(kw.get("what", ""))
        return await real_run(argv, **kw)

    monkeypatch.setattr(bench, "run_ffmpeg", counting_run)
    with trio.fail_after(TIMEOUT_S):
        scores, cached = await bench.ensure_scores(ffmpeg, [a], cache_dir=cache_dir, budget_s=0.6)
        assert not cached and scores["tiny-a"] > 0 and runs
        assert (cache_dir / "bench.json").exists()

        runs.clear()
        t0 = time.monotonic()
        again, cached = await bench.ensure_scores(ffmpeg, [a], cache_dir=cache_dir, budget_s=0.6)
        assert cached and again == scores
        assert runs == [] and time.monotonic() - t0 < 0.5

        # A profile missing from the cache is measured and merged; the cached one is kept.
        both, cached = await bench.ensure_scores(ffmpeg, [a, b], cache_dir=cache_dir,
                                                   budget_s=0.6)
        assert not cached and list(both) == ["tiny-a", "tiny-b"]
        assert both["tiny-a"] == scores["tiny-a"]
        assert all(r.startswith("benchmark tiny-b") for r in runs)
        assert bench.load_scores(ffmpeg, cache_dir) == both

        # force measures again, and so does a changed profile under the same name.
        runs.clear()
        _, cached = await bench.ensure_scores(ffmpeg, [a], cache_dir=cache_dir, force=True,
                                                budget_s=0.6)
        assert not cached and runs
        runs.clear()
        changed = _x264(tmp_path, "tiny-a", "veryfast", 320, 180)
        _, cached = await bench.ensure_scores(ffmpeg, [changed], cache_dir=cache_dir,
                                                budget_s=0.6)
        assert not cached and runs


# -- the cache file ------------------------------------------------------------------------
# The file calls run in a worker thread, as ensure_scores runs them, so fail_after can act.


async def _io(fn: Callable[..., Any], *args: Any) -> Any:
    return await trio.to_thread.run_sync(fn, *args)


async def test_cache_round_trips_atomically(ffmpeg: FFmpeg, cache_dir: Path) -> None:
    with trio.fail_after(TIMEOUT_S):
        assert await _io(bench.load_scores, ffmpeg, cache_dir) is None
        await _io(bench.save_scores, ffmpeg, cache_dir, {"hd": 1.5e7, "4k": 2e6})
        await _io(bench.save_scores, ffmpeg, cache_dir, {"hd": 1.6e7})  # merged, not replaced
        assert await _io(bench.load_scores, ffmpeg, cache_dir) == {"hd": 1.6e7, "4k": 2e6}
        assert await _io(os.listdir, cache_dir) == ["bench.json"]  # no temp file left
        with pytest.raises(ValueError):
            await _io(bench.save_scores, ffmpeg, cache_dir, {"hd": float("nan")})


@pytest.mark.parametrize("content", [
    b"{not json", b"\xff\xfe\x00", b"[]", b"null",
    b'{"format": 1, "key": "K", "scores": [1, 2]}',
    b'{"format": 99, "key": "K", "scores": {"hd": 1.0}}',
])
async def test_corrupt_cache_reads_as_missing(ffmpeg: FFmpeg, cache_dir: Path,
                                              content: bytes) -> None:
    key = json.dumps(bench.cache_key(ffmpeg))[1:-1].encode()
    with trio.fail_after(TIMEOUT_S):
        await _io(_write, cache_dir / "bench.json", content.replace(b"K", key))
        assert await _io(bench.load_scores, ffmpeg, cache_dir) is None
        await _io(bench.save_scores, ffmpeg, cache_dir, {"hd": 3.0})  # and a new cache replaces it
        assert await _io(bench.load_scores, ffmpeg, cache_dir) == {"hd": 3.0}


async def test_bad_entries_are_dropped(ffmpeg: FFmpeg, cache_dir: Path) -> None:
    content = json.dumps({
        "format": 1, "key": bench.cache_key(ffmpeg),
        "scores": {"hd": 2.0, "neg": -1, "zero": 0, "text": "fast", "flag": True},
    }).encode()
    with trio.fail_after(TIMEOUT_S):
        await _io(_write, cache_dir / "bench.json", content)
        assert await _io(bench.load_scores, ffmpeg, cache_dir) == {"hd": 2.0}


async def test_another_ffmpeg_or_machine_misses(ffmpeg: FFmpeg, cache_dir: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    other = dataclasses.replace(ffmpeg, version="0.0-elsewhere")
    assert bench.cache_key(other) != bench.cache_key(ffmpeg)
    with trio.fail_after(TIMEOUT_S):
        await _io(bench.save_scores, ffmpeg, cache_dir, {"hd": 1e7})
        assert await _io(bench.load_scores, ffmpeg, cache_dir) == {"hd": 1e7}
        assert await _io(bench.load_scores, other, cache_dir) is None
        moved = dataclasses.replace(ffmpeg, path="/opt/ffmpeg")
        assert await _io(bench.load_scores, moved, cache_dir) is None
        monkeypatch.setattr(bench.os, "cpu_count", lambda: 1024)
        assert await _io(bench.load_scores, ffmpeg, cache_dir) is None


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


# -- pure parts (no I/O, nothing to time out) ----------------------------------------------


def _cache_path(env: dict[str, str]) -> Path:
    cache_dir = Environment.from_environ(env).cache_dir
    assert cache_dir is not None
    return bench.cache_path(cache_dir)


def test_cache_location(tmp_path: Path) -> None:
    env = {"SWARM_CACHE_DIR": str(tmp_path / "own"), "HOME": str(tmp_path / "home")}
    assert _cache_path(env) == tmp_path / "own" / "bench.json"
    del env["SWARM_CACHE_DIR"]
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    assert _cache_path(env) == tmp_path / "xdg" / "swarm" / "bench.json"
    env["XDG_CACHE_HOME"] = "relative"  # ignored, as XDG says
    assert _cache_path(env) == tmp_path / "home" / ".cache" / "swarm" / "bench.json"


def test_steady_rate_skips_warmup_and_latency() -> None:
    # Nothing out for 0.5 s (lookahead), then 10 frames per 0.1 s.
    samples = [(0.1 * i, max(0, 10 * (i - 5))) for i in range(1, 21)]
    assert bench.steady_rate(samples, 0.0) == pytest.approx(100.0)
    # The warm-up is measured from the start, not from the first packet.
    early = [(0.1 * i, 10 * i) for i in range(1, 11)]
    assert bench.steady_rate(early, 0.0) == pytest.approx(100.0)
    assert bench.steady_rate(early, 0.0, warmup_s=0.0) == pytest.approx(100.0)
    # Too short a window, or nothing new in it: no rate.
    assert bench.steady_rate(samples[:8], 0.0) is None
    assert bench.steady_rate([(t, 5) for t, _ in samples], 0.0) is None
    assert bench.steady_rate([], 0.0) is None


def test_argv_is_the_real_chunk_argv_on_a_lavfi_source() -> None:
    hd = load_profile("hd")
    argv = bench.bench_argv("ffmpeg", hd, VideoPlan(1280, 720, 60), threads=3)
    i = argv.index("-i")
    assert argv[i - 2:i] == ["-f", "lavfi"]
    assert argv[i + 1].startswith("testsrc2=size=1280x720") and "noise" in argv[i + 1]
    assert argv[argv.index("-threads") + 1] == "3"
    assert argv[argv.index("-f", i) + 1] == "nut" and argv[-1] == "pipe:1"
    assert argv[argv.index("-c:v") + 1] == "libx264"
    assert argv[argv.index("-b:v") + 1] == "2000k"


def test_proxy_keeps_bits_per_pixel() -> None:
    hd = load_profile("hd")
    half = bench.scaled_profile(hd, 640, 360)
    assert half.video.bitrate_k == hd.video.bitrate_k // 4
    assert half.video.maxrate_k == hd.video.maxrate_k // 4
    assert half.video.preset == hd.video.preset
    crf = load_profile("hd-crf")
    assert bench.scaled_profile(crf, 640, 360) == crf
    assert bench.profile_fingerprint(half) != bench.profile_fingerprint(hd)
    assert bench.default_threads() >= 1
