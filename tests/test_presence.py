"""swarm.presence: TXT encoding, validation of what strangers advertise, classification."""

from __future__ import annotations

import dataclasses

import pytest

from swarm.errors import LocalProtocolError, RemoteProtocolError
from swarm.presence import (
    MAX_LABEL_BYTES,
    SERVICE_TYPE,
    PeerEvent,
    PeerRecord,
    PeerTable,
    State,
    classify,
    from_txt,
    has_room,
    instance_name,
    pick_address,
    server_name,
    service_name,
    to_txt,
)
from swarm.protocol import MAX_JOBS

FP = "0123456789abcdef"

RECORD = PeerRecord(
    node_id="3f2a9c1be7d04a55",
    name="studio-pc",
    host="192.168.1.20",
    port=8471,
    protocol=1,
    arch="x86_64",
    cpus=16,
    score=5.25e6,
    state="busy",
    fingerprint=FP,
    version="0.1.0",
)


def as_zeroconf(props: dict[str, str]) -> dict[bytes, bytes | None]:
    """What zeroconf's ServiceInfo.properties hands us: bytes keys and values."""
    return {k.encode(): v.encode() for k, v in props.items()}


def test_txt_round_trip_with_bytes_and_str() -> None:
    txt = to_txt(RECORD)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in txt.items())
    assert from_txt(as_zeroconf(txt), RECORD.host, RECORD.port) == RECORD
    assert from_txt(txt, RECORD.host, RECORD.port) == RECORD


@pytest.mark.parametrize("score", [0.0, 1 / 3, 123.5, 1e-7, 9.99e14])
def test_score_round_trips_exactly(score: float) -> None:
    record = dataclasses.replace(RECORD, score=score)
    assert from_txt(to_txt(record), RECORD.host, RECORD.port).score == score


def test_txt_fits_one_packet_even_with_longest_fields() -> None:
    record = dataclasses.replace(
        RECORD,
        node_id="n" * 64,
        name="é" * 31,
        arch="a" * 32,
        version="v" * 32,
        fingerprint="f" * 64,
    )
    txt = to_txt(record)
    assert sum(len(k) + 1 + len(v.encode()) + 1 for k, v in txt.items()) < 400
    assert from_txt(txt, RECORD.host, RECORD.port) == record


def test_optional_keys_default_and_unknown_keys_are_ignored() -> None:
    txt = to_txt(RECORD)
    del txt["score"], txt["fp"], txt["ver"]
    txt["future-field"] = "whatever"
    record = from_txt(txt, RECORD.host, RECORD.port)
    assert (record.score, record.fingerprint, record.version) == (0.0, "", "")


def test_keys_are_case_insensitive_and_first_duplicate_wins() -> None:
    txt: dict[bytes | str, bytes | str | None] = {k.upper(): v for k, v in to_txt(RECORD).items()}
    txt["state"] = "idle"  # a second "state" after "STATE": ignored per RFC 6763 6.4
    assert from_txt(txt, RECORD.host, RECORD.port).state == "busy"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("id", None),  # key present without '='
        ("id", ""),
        ("id", "has space"),
        ("id", "x" * 65),
        ("proto", "-1"),
        ("proto", "1_0"),  # int() would accept it
        ("proto", " 1"),
        ("proto", "9" * 400),  # no multi-hundred-digit int parsing
        ("cpus", "0"),
        ("cpus", "1.5"),
        ("cpus", "99999"),
        ("score", "nan"),
        ("score", "inf"),
        ("score", "-1.0"),
        ("score", "1e300"),
        ("score", "0x10"),
        ("state", "sleeping"),
        ("fp", "NOT-HEX!"),
        ("fp", "abc"),
        ("name", ""),
        ("name", "   "),
        ("name", "evil\nname"),
        ("name", "x" * 64),
        ("arch", "x86 64"),
        ("ver", "1.0; rm -rf /"),
    ],
)
def test_malformed_value_raises_remote_protocol_error(key: str, value: str | None) -> None:
    txt: dict[str, str | None] = dict(to_txt(RECORD))
    txt[key] = value
    with pytest.raises(RemoteProtocolError) as info:
        from_txt(txt, RECORD.host, RECORD.port)
    assert info.value.status_code == 400


@pytest.mark.parametrize("key", ["id", "proto", "name", "arch", "cpus", "state"])
def test_missing_required_key_raises(key: str) -> None:
    txt = to_txt(RECORD)
    del txt[key]
    with pytest.raises(RemoteProtocolError, match=key):
        from_txt(txt, RECORD.host, RECORD.port)


def test_structural_abuse_raises() -> None:
    txt = as_zeroconf(to_txt(RECORD))
    with pytest.raises(RemoteProtocolError, match="UTF-8"):
        from_txt({**txt, b"name": b"\xff\xfe"}, RECORD.host, RECORD.port)
    with pytest.raises(RemoteProtocolError, match="longer"):
        from_txt({**txt, b"junk": b"x" * 300}, RECORD.host, RECORD.port)
    with pytest.raises(RemoteProtocolError, match="keys"):
        from_txt({**txt, **{f"k{i}".encode(): b"" for i in range(40)}}, RECORD.host, RECORD.port)


@pytest.mark.parametrize(("host", "port"), [("not-an-ip", 8471), ("", 8471), (RECORD.host, 0)])
def test_bad_address_or_port_raises(host: str, port: int) -> None:
    with pytest.raises(RemoteProtocolError):
        from_txt(to_txt(RECORD), host, port)


def test_invalid_local_record_is_our_bug() -> None:
    with pytest.raises(LocalProtocolError):
        dataclasses.replace(RECORD, cpus=0)
    with pytest.raises(LocalProtocolError):
        dataclasses.replace(RECORD, state="asleep")  # type: ignore[arg-type]
    assert dataclasses.replace(RECORD, host="").host == ""  # own record before publishing


def test_classify() -> None:
    assert classify(RECORD, FP, 1) == "ok"
    assert classify(RECORD, "fedcba9876543210", 1) == "foreign-secret"
    assert classify(RECORD, "", 1) == "foreign-secret"  # an open node is not in a secret swarm
    assert classify(dataclasses.replace(RECORD, fingerprint=""), FP, 1) == "foreign-secret"
    assert classify(dataclasses.replace(RECORD, fingerprint=""), "", 1) == "ok"
    assert classify(RECORD, FP, 2) == "foreign-protocol"
    # Another swarm is foreign whatever its protocol: it is never ours to upgrade.
    assert classify(RECORD, "fedcba9876543210", 2) == "foreign-secret"


def test_same_hostname_gives_distinct_names() -> None:
    twin = dataclasses.replace(RECORD, node_id="9b7e00c1d2e3f4a5")
    assert instance_name(RECORD) != instance_name(twin)
    assert server_name(RECORD) != server_name(twin)
    assert service_name(RECORD) == f"{instance_name(RECORD)}.{SERVICE_TYPE}"
    assert server_name(RECORD).endswith(".local.")


def test_instance_name_fits_a_dns_label() -> None:
    long = dataclasses.replace(RECORD, name="ü" * 31, node_id="a" * 64)
    label = instance_name(long)
    assert len(label.encode()) <= MAX_LABEL_BYTES
    assert label.endswith("-" + "a" * 12)
    assert "." not in instance_name(dataclasses.replace(RECORD, name="pc.example.lan"))


def test_pick_address_prefers_our_subnet_over_bridges_and_link_local() -> None:
    ours = ["10.77.0.11/24", "172.17.0.1/16"]
    # The peer's docker bridge has the same address as ours: never reachable.
    assert pick_address(["172.17.0.1", "10.77.0.10"], ours) == "10.77.0.10"
    assert pick_address(["169.254.3.4", "192.168.5.5"], ours) == "192.168.5.5"
    assert pick_address(["fe80::1", "169.254.3.4"], ours) == "169.254.3.4"
    assert pick_address(["127.0.0.1", "garbage"], ours) is None
    assert pick_address(["10.77.0.11"], ours) == "10.77.0.11"  # our own advertisement


def test_peer_table_turns_lookups_into_events() -> None:
    table = PeerTable()
    name = service_name(RECORD)
    assert table.resolved(name, RECORD) == PeerEvent("added", name, RECORD)
    assert table.resolved(name, RECORD) is None  # re-announcement, nothing new
    idle = dataclasses.replace(RECORD, state="idle")
    assert table.resolved(name, idle) == PeerEvent("updated", name, idle)
    assert table.records() == [idle]
    assert table.removed(name) == PeerEvent("removed", name, idle)
    assert table.removed(name) is None
    assert len(table) == 0


def test_jobs_round_trip_and_default_to_zero_from_older_nodes() -> None:
    record = dataclasses.replace(RECORD, state="busy", jobs=3)
    assert from_txt(to_txt(record), RECORD.host, RECORD.port) == record
    txt = to_txt(record)
    del txt["jobs"]  # a node from before the key
    assert from_txt(txt, RECORD.host, RECORD.port).jobs == 0
    for junk in ("-1", "1.5", "9999999", " 2"):
        with pytest.raises(RemoteProtocolError):
            from_txt({**to_txt(record), "jobs": junk}, RECORD.host, RECORD.port)


@pytest.mark.parametrize(("state", "jobs", "room"), [
    ("idle", 0, True),
    ("busy", 1, True),  # working for another coordinator: shares its slots with ours
    ("busy", MAX_JOBS - 1, True),
    ("busy", MAX_JOBS, False),  # full: a further invite gets 409
    ("busy", 0, False),  # coordinating a job of its own
    ("leaving", 1, False),
])
def test_the_census_counts_peers_with_room_for_our_job(state: State, jobs: int,
                                                       room: bool) -> None:
    assert has_room(dataclasses.replace(RECORD, state=state, jobs=jobs)) is room
