"""Typed events: the JSON lines of ``--json`` keep the field names and order they had as
dicts (scripts read them), and every kind is one class per producer."""

from __future__ import annotations

import dataclasses
import json

import pytest

from swarm import events as ev

# The JSON lines as the producers wrote them before events were typed, field by field in
# order: a public format (`swarm encode --json`, `swarm join --json`), so it may not drift.
JSON_FIELDS: dict[type, tuple[str, ...]] = {
    ev.JobStart: ("input", "output", "profile", "frames", "chunks", "duration_s", "width",
                  "height", "workers", "ffmpeg", "job_id", "secret", "network", "name",
                  "policy", "peers_seen", "chunk_s"),
    ev.Tracks: ("audio", "subtitles", "attachments", "chapters", "tags", "dropped"),
    ev.JobResumed: ("chunks_kept", "chunks", "of", "frames_done"),
    ev.Listening: ("port",),
    ev.ChunkStart: ("chunk", "attempt", "peer", "frames", "remote"),
    ev.ChunkProgress: ("chunk", "frames", "attempt", "peer", "fps"),
    ev.ChunkUpload: ("chunk", "attempt", "peer"),
    ev.ChunkDone: ("chunk", "attempt", "peer", "encode_s", "frames", "frames_done"),
    ev.ChunkFailed: ("chunk", "attempt", "peer", "reason", "requeued", "fate", "benched"),
    ev.ChunkRequeued: ("chunk", "attempt", "peer", "reason"),
    ev.ChunkSplit: ("chunk", "frames", "rest", "rest_frames"),
    ev.ChunkParted: ("chunk", "renditions", "rest", "rest_renditions"),
    ev.ChunkDuplicate: ("chunk", "attempt", "peer"),
    ev.ChunkLost: ("chunk", "reason"),
    ev.PeerBenched: ("peer", "reason"),
    ev.PeerJoined: ("peer", "address", "arch", "ffmpeg", "cpus", "score"),
    ev.PeerLeft: ("peer",),
    ev.PeerForeign: ("peer", "why"),
    ev.PeerUnreachable: ("peer", "why"),
    ev.AudioStart: (),
    ev.AudioDone: ("encode_s",),
    ev.HlsSegment: ("chunk", "duration_s", "at_s"),
    ev.HlsBehind: ("media_s", "wall_s"),
    ev.HlsEnd: ("directory", "segments", "first_segment_s", "published_s"),
    ev.Merge: (),
    ev.NoPeers: ("after_s", "address", "bootstrap", "sha256"),
    ev.JobEnd: ("output", "wall_s"),
    ev.NodeUp: ("port", "name", "node_id", "address"),
    ev.PyzReady: ("sha256", "size", "address", "bootstrap"),
    ev.JobJoined: ("job_id", "coordinator"),
    ev.JobLeft: ("job_id",),
    # job_id appended (several coordinators at once): the older fields keep their order.
    ev.SlotStart: ("chunk", "attempt", "job_id"),
    ev.SlotProgress: ("chunk", "frames", "fps", "job_id"),
    ev.SlotEnd: ("chunk", "outcome", "frames", "job_id"),
}


def _sample(cls: type) -> ev.Event:
    values: dict[str, object] = {}
    for f in dataclasses.fields(cls):
        t = str(f.type)
        values[f.name] = (1 if t == "int" else 1.5 if t == "float" else True if t == "bool"
                          else {} if t.startswith("dict") else () if t.startswith("tuple")
                          else f"{f.name}-x")
    event = cls(**values)
    assert isinstance(event, ev.Event)
    return event


def test_every_event_kind_is_covered() -> None:
    union = set(ev.JobEvent.__args__) | set(ev.NodeEvent.__args__)  # type: ignore[attr-defined]
    assert union == set(JSON_FIELDS)


@pytest.mark.parametrize("cls", list(JSON_FIELDS), ids=lambda c: c.__name__)
def test_json_line_keeps_the_historic_fields_in_order(cls: type) -> None:
    event = _sample(cls)
    line = json.loads(json.dumps(ev.as_json(event, 1.25)))
    assert list(line) == ["event", "t", *JSON_FIELDS[cls]]
    assert line["event"] == cls.kind and line["t"] == 1.25  # type: ignore[attr-defined]


def test_events_are_frozen() -> None:
    e = ev.ChunkStart(1, "a", "alpha", 10, False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.chunk = 2  # type: ignore[misc]


def test_a_coordinator_and_a_slot_report_a_start_under_one_json_name() -> None:
    # Two producers, two shapes (who holds it is known to the coordinator only): two
    # classes, one name in the JSON lines, so `--json` readers see what they always saw.
    assert ev.ChunkStart.kind == ev.SlotStart.kind == "chunk_start"
    assert ev.ChunkProgress.kind == ev.SlotProgress.kind == "chunk_progress"
    assert list(ev.as_json(ev.SlotStart(3, "c3a1"), 0.0)) == ["event", "t", "chunk",
                                                               "attempt", "job_id"]
