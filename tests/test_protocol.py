"""Wire messages: round trips, and every kind of malformed body is a RemoteProtocolError."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import msgpack  # type: ignore[import-untyped]  # ships no stubs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarm.errors import LocalProtocolError, RemoteProtocolError
from swarm.protocol import (
    MAX_CONTROL_BODY,
    MAX_JOBS,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    Assignment,
    AttemptFailed,
    ClaimRequest,
    Hello,
    Invite,
    InviteReply,
    JobDone,
    Message,
    NodeInfo,
    Progress,
    ProgressAck,
    ResultAck,
    SlideRun,
    Wait,
    decode,
    encode,
)

JOB = "job_4f2A-9xQ"
ATTEMPT = "att-0001_zz"

SAMPLES: list[Message] = [
    NodeInfo(
        node_id="0123456789abcdef",
        name="Kitchen Pi 4",
        version="0.1.0",
        arch="aarch64",
        cpus=4,
        ffmpeg="6.1.1-3ubuntu5",
        encoders=("libx264", "libx265", "libsvtav1", "libvpx-vp9"),
        scores={"fhd": 2.5e7, "4k": 9.0e6},
        state="busy",
        job_id=JOB,
        slots=2,
        pyz_sha256="0f" * 32,
        working_for={JOB: "Anna's laptop", "job_other-01": "studio"},
    ),
    NodeInfo(  # a node whose swarm.pyz is not built yet
        node_id="0123456789abcdef",
        name="Kitchen Pi 4",
        version="0.1.0",
        arch="aarch64",
        cpus=4,
        ffmpeg="5.1.9-0+deb12u1",
        encoders=("libx264",),
        scores={},
        state="idle",
        job_id=None,
        slots=1,
        pyz_sha256=None,
    ),
    Invite(
        job_id=JOB,
        coordinator_url="http://192.168.1.20:8710",
        profile={"name": "fhd", "video_codec": "libx264", "video_crf": 21.5, "video_ok": True},
        nonce="n0nce-0123456789",
        ladder=("1920x1080:b=5000:m=7500:s=10000", "854x480:crf=23"),
    ),
    Invite(
        job_id=JOB,
        coordinator_url="http://192.168.1.21:8710",
        profile={"name": "hd"},
        nonce="n0nce-0123456789",
        priority="high",
        coordinator_name="studio",
    ),
    InviteReply(accepted=True, reason="", node_id="0123456789abcdef", proof="ab" * 32),
    ClaimRequest(node_id="deadbeef", slot=0, prefetch=True),
    Assignment(  # a slideshow chunk: 3 images and the next one, which the last fades into
        job_id=JOB,
        chunk=2,
        attempt=ATTEMPT,
        lease_s=30.0,
        start_s=0.0,
        frames=75,
        source_path=f"/v1/jobs/{JOB}/images",
        slides=SlideRun(images=3, per_image=25, fade=5, width=1920, height=1080,
                        sizes=(310_000, 2_000_000, 1, 45_000), sha256=("ab" * 32,) * 4),
    ),
    Assignment(
        job_id=JOB,
        chunk=17,
        attempt=ATTEMPT,
        lease_s=30.0,
        start_s=123.456,
        frames=240,
        source_path=f"/v1/jobs/{JOB}/source",
    ),
    Assignment(
        job_id=JOB,
        chunk=18,
        attempt=ATTEMPT,
        lease_s=30.0,
        start_s=130.0,
        frames=240,
        source_path=f"/v1/jobs/{JOB}/source",
        seek_s=130.0005,
        trim_s=129.98,
        keyframes_s=(133.98, 137.98),
        rungs=(1, 2),
    ),
    Hello(node_id="0123456789abcdef", port=7800),
    Wait(retry_after_s=0.5),
    JobDone(job_id=JOB),
    Progress(job_id=JOB, chunk=0, attempt=ATTEMPT, frames_done=120, fps=48.5),
    ProgressAck(keep=False),
    ResultAck(accepted=False, reason="frame count 239, planned 240"),
    AttemptFailed(job_id=JOB, chunk=3, attempt=ATTEMPT,
                  reason="chunk 3 failed: x265 [error]: frame rate is out of range"),
]
BY_TYPE: dict[type[Message], Message] = {type(m): m for m in SAMPLES}

_DELETE = object()


def wire(msg: Message) -> dict[str, Any]:
    """The raw map a message encodes to, for tests to corrupt."""
    body: dict[str, Any] = msgpack.unpackb(encode(msg), raw=False)
    return body


def pack(body: object) -> bytes:
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return data


def corrupt(msg: Message, **changes: object) -> bytes:
    body = wire(msg)
    for key, value in changes.items():
        if value is _DELETE:
            del body[key]
        else:
            body[key] = value
    return pack(body)


def refuse(data: bytes, status: int = 422, expected: Any = None) -> RemoteProtocolError:
    """decode() must raise exactly RemoteProtocolError, with this HTTP status."""
    with pytest.raises(RemoteProtocolError) as info:
        decode(data, expected)
    assert info.value.status_code == status, info.value
    return info.value


# -- round trips ----------------------------------------------------------------------------


def test_samples_cover_every_message_type() -> None:
    assert {type(m) for m in SAMPLES} == set(MESSAGE_TYPES.values())
    assert len(MESSAGE_TYPES) == len({type(m) for m in SAMPLES})


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: Message) -> None:
    data = encode(msg)
    assert isinstance(data, bytes)
    back = decode(data)
    assert type(back) is type(msg)
    assert back == msg
    assert decode(data, type(msg)) == msg
    assert decode(data, (Wait, type(msg))) == msg
    assert encode(back) == data


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_envelope_has_version_and_tag(msg: Message) -> None:
    body = wire(msg)
    assert body["v"] == PROTOCOL_VERSION == 6
    assert body["t"] == msg.TYPE
    assert MESSAGE_TYPES[msg.TYPE] is type(msg)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_messages_are_frozen(msg: Message) -> None:
    name = next(iter(wire(msg).keys() - {"v", "t"}))
    with pytest.raises(AttributeError):
        setattr(msg, name, None)
    # Slotted: no stray attributes either. CPython 3.11's frozen+slots __setattr__ raises
    # TypeError rather than AttributeError for unknown names (fixed in 3.12).
    with pytest.raises((AttributeError, TypeError)):
        msg.extra = 1  # type: ignore[attr-defined]
    assert not hasattr(msg, "extra")


def test_values_are_stored_in_canonical_form() -> None:
    info = NodeInfo(**{**vars_of(BY_TYPE[NodeInfo]), "encoders": ["libx264"], "scores": {}})
    assert info.encoders == ("libx264",)
    wait = Wait(retry_after_s=2)  # an int is a fine float
    assert type(wait.retry_after_s) is float
    invite = BY_TYPE[Invite]
    assert isinstance(invite, Invite)
    with pytest.raises(TypeError):  # the profile map is read-only, like the message
        invite.profile["video_crf"] = 0  # type: ignore[index]


def test_int_accepted_for_float_field_on_the_wire() -> None:
    msg = decode(corrupt(BY_TYPE[Wait], retry_after_s=3), Wait)
    assert msg == Wait(retry_after_s=3.0)
    assert type(msg.retry_after_s) is float


def test_largest_messages_fit_the_body_limit() -> None:
    big_info = NodeInfo(
        **{
            **vars_of(BY_TYPE[NodeInfo]),
            "name": "n" * 64,
            "encoders": tuple(f"enc_{i:02d}_" + "x" * 25 for i in range(64)),
            "scores": {f"profile-{i:02d}-" + "p" * 52: 1e12 for i in range(64)},
            "working_for": {f"job{i}" + "j" * 60: "c" * 64 for i in range(MAX_JOBS)},
        }
    )
    big_invite = Invite(
        job_id="j" * 64,
        coordinator_url="http://" + "h" * 200 + ":65535/",
        profile={f"k{i:02d}_" + "k" * 28: "v" * 128 for i in range(48)},
        nonce="n" * 64,
        priority="normal",
        coordinator_name="c" * 64,
    )
    for msg in (big_info, big_invite):
        data = encode(msg)
        assert len(data) < MAX_CONTROL_BODY
        assert decode(data) == msg


def vars_of(msg: Message) -> dict[str, Any]:
    return {k: v for k, v in wire(msg).items() if k not in ("v", "t")}


# -- local construction ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "changes"),
    [
        (ClaimRequest, {"slot": 64}),
        (ClaimRequest, {"prefetch": 1}),
        (ClaimRequest, {"node_id": "DEADBEEF"}),
        (Wait, {"retry_after_s": math.nan}),
        (Wait, {"retry_after_s": 0.0}),
        (Assignment, {"chunk": True}),
        (Assignment, {"source_path": "/v1/jobs/../secret"}),
        (Invite, {"coordinator_url": "http://example.com"}),
        (ResultAck, {"reason": "line\ninjected"}),
        (Invite, {"priority": "urgent"}),
        (Invite, {"coordinator_name": "two\nlines"}),
        (NodeInfo, {"working_for": {f"job-{i:04d}": "c" for i in range(MAX_JOBS + 1)}}),
        (NodeInfo, {"working_for": {"../etc": "c"}}),
    ],
)
def test_invalid_local_construction_is_our_bug(
    cls: type[Message], changes: dict[str, object]
) -> None:
    with pytest.raises(LocalProtocolError) as info:
        cls(**{**vars_of(BY_TYPE[cls]), **changes})
    field = next(iter(changes))
    assert field in str(info.value)
    assert info.value.__cause__ is not None


# -- malformed bodies -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # the one byte msgpack never uses
        b"hello world",  # a fixint followed by trailing data
        b"\xff" * 10,
        b"\xde\xff\xff",  # a map of 65535 entries promised, none given
        b"\xd9\x05abc",  # a string cut short
        b"\xa2\xff\xfe",  # invalid UTF-8
        b"\x81\x01\x02",  # an int map key
        b"\xc4\x01x",  # binary
        b"\xd6\xff\x00\x00\x00\x00",  # timestamp extension
        b"\x91" * 5000,  # nesting far deeper than any message
    ],
)
def test_garbage_is_400(data: bytes) -> None:
    assert isinstance(refuse(data, 400).__cause__, ValueError)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_truncation_is_refused(msg: Message) -> None:
    data = encode(msg)
    for end in range(len(data)):
        with pytest.raises(RemoteProtocolError):
            decode(data[:end])


@pytest.mark.parametrize("body", [[1, 2], "node_info", 1, None, True, 1.5])
def test_not_a_map_is_400(body: object) -> None:
    refuse(pack(body), 400)


def test_oversized_body_is_413_before_parsing() -> None:
    good = encode(BY_TYPE[Wait])
    err = refuse(good + b"\x00" * (MAX_CONTROL_BODY + 1 - len(good)), 413)
    assert str(MAX_CONTROL_BODY) in str(err)
    # Exactly at the limit it is parsed (and here refused only for the trailing bytes).
    refuse(good + b"\x00" * (MAX_CONTROL_BODY - len(good)), 400)


@pytest.mark.parametrize("version", [1, PROTOCOL_VERSION - 1, PROTOCOL_VERSION + 1, 0, -1, 2**40])
def test_wrong_version_is_400_with_a_clear_message(version: int) -> None:
    err = refuse(corrupt(BY_TYPE[JobDone], v=version), 400)
    assert f"version {version}" in str(err)
    assert str(PROTOCOL_VERSION) in str(err)


@pytest.mark.parametrize("version", [_DELETE, "1", 1.0, True, None])
def test_missing_or_mistyped_version_is_400(version: object) -> None:
    assert "version" in str(refuse(corrupt(BY_TYPE[JobDone], v=version), 400))


@pytest.mark.parametrize("tag", [_DELETE, "nope", "", 1, None, ["wait"], "Wait"])
def test_unknown_type_is_400(tag: object) -> None:
    assert "type" in str(refuse(corrupt(BY_TYPE[Wait], t=tag), 400))


def test_unexpected_type_is_422() -> None:
    data = encode(BY_TYPE[Wait])
    assert "unexpected" in str(refuse(data, 422, Assignment))
    refuse(data, 422, (Assignment, JobDone))


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_missing_field_is_422(msg: Message) -> None:
    for name in vars_of(msg):
        err = refuse(corrupt(msg, **{name: _DELETE}))
        assert "missing" in str(err) and name in str(err)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_extra_field_is_422(msg: Message) -> None:
    err = refuse(corrupt(msg, admin=True))
    assert "unknown fields" in str(err) and "admin" in str(err)


@pytest.mark.parametrize(
    ("msg", "field", "value"),
    [
        (BY_TYPE[NodeInfo], "cpus", True),
        (BY_TYPE[NodeInfo], "slots", False),
        (BY_TYPE[Assignment], "chunk", True),
        (BY_TYPE[Assignment], "frames", True),
        (BY_TYPE[Progress], "frames_done", False),
        (BY_TYPE[ClaimRequest], "slot", True),
        (BY_TYPE[Wait], "retry_after_s", True),  # not a float either
        (BY_TYPE[ClaimRequest], "prefetch", 1),  # and an int is not a bool
        (BY_TYPE[ProgressAck], "keep", 0),
        (BY_TYPE[ResultAck], "accepted", "yes"),
    ],
)
def test_bool_is_not_int_nor_int_bool(msg: Message, field: str, value: object) -> None:
    assert field in str(refuse(corrupt(msg, **{field: value})))


@pytest.mark.parametrize(
    ("msg", "field", "value"),
    [
        (BY_TYPE[NodeInfo], "cpus", "4"),
        (BY_TYPE[NodeInfo], "cpus", 4.0),
        (BY_TYPE[NodeInfo], "encoders", "libx264"),
        (BY_TYPE[NodeInfo], "scores", ["fhd", 1.0]),
        (BY_TYPE[NodeInfo], "job_id", 12345678),
        (SAMPLES[0], "pyz_sha256", 0xF0F),
        (BY_TYPE[Invite], "profile", None),
        (BY_TYPE[Wait], "retry_after_s", "1"),
        (BY_TYPE[JobDone], "job_id", None),
    ],
)
def test_wrong_field_type_is_422(msg: Message, field: str, value: object) -> None:
    assert field in str(refuse(corrupt(msg, **{field: value})))


@pytest.mark.parametrize(
    ("msg", "field", "value"),
    [
        (BY_TYPE[NodeInfo], "cpus", 0),
        (BY_TYPE[NodeInfo], "cpus", 1025),
        (BY_TYPE[NodeInfo], "slots", 65),
        (BY_TYPE[NodeInfo], "state", "sleeping"),
        (BY_TYPE[NodeInfo], "node_id", "abc"),
        (BY_TYPE[NodeInfo], "node_id", "g" * 16),
        (BY_TYPE[NodeInfo], "name", ""),
        (BY_TYPE[NodeInfo], "name", "n" * 65),
        (BY_TYPE[NodeInfo], "name", "evil\x1b[2J"),
        (SAMPLES[0], "pyz_sha256", "0F" * 32),  # one spelling: lower case
        (SAMPLES[0], "pyz_sha256", "0f" * 31),
        (SAMPLES[0], "pyz_sha256", "0f" * 32 + "\n"),
        (BY_TYPE[NodeInfo], "ffmpeg", "6.1 with spaces"),
        (BY_TYPE[NodeInfo], "encoders", ("libx264", "rm -rf")),
        (BY_TYPE[NodeInfo], "scores", {"fhd": -1.0}),
        (BY_TYPE[NodeInfo], "scores", {"fhd": 1e300}),
        (BY_TYPE[NodeInfo], "scores", {"../x": 1.0}),
        (BY_TYPE[Invite], "job_id", "short"),
        (BY_TYPE[Invite], "job_id", "has space in it"),
        (BY_TYPE[Invite], "profile", {"Video_Codec": "libx264"}),
        (BY_TYPE[Invite], "profile", {"video_codec": ["libx264"]}),
        (BY_TYPE[Invite], "profile", {"video": {"codec": "libx264"}}),
        (BY_TYPE[Invite], "profile", {"crf": None}),
        (BY_TYPE[Invite], "profile", {"s": "x" * 129}),
        (BY_TYPE[Invite], "profile", {f"k{i}": i for i in range(49)}),
        (BY_TYPE[Assignment], "chunk", -1),
        (BY_TYPE[Assignment], "chunk", 1_000_000),
        (BY_TYPE[Assignment], "frames", 0),
        (BY_TYPE[Assignment], "lease_s", 0.5),
        (BY_TYPE[Assignment], "lease_s", 3601.0),
        (BY_TYPE[Assignment], "start_s", -0.001),
        (BY_TYPE[Assignment], "attempt", "a/b/c/d/e"),
        (BY_TYPE[Assignment], "rungs", [2, 1]),  # ascending, each once
        (BY_TYPE[Assignment], "rungs", [1, 1]),
        (BY_TYPE[Assignment], "rungs", [8]),  # MAX_RUNGS - 1 at most
        (BY_TYPE[Assignment], "rungs", [-1]),
        (BY_TYPE[Assignment], "rungs", list(range(9))),
        (BY_TYPE[Assignment], "rungs", [True]),
        (BY_TYPE[Wait], "retry_after_s", 0.01),
        (BY_TYPE[Wait], "retry_after_s", 61),
        (BY_TYPE[Progress], "frames_done", -1),
        (BY_TYPE[Progress], "fps", -1.0),
        (BY_TYPE[ResultAck], "reason", "r" * 201),
        (BY_TYPE[ResultAck], "reason", "two\nlines"),
    ],
)
def test_out_of_range_is_422(msg: Message, field: str, value: object) -> None:
    assert field in str(refuse(corrupt(msg, **{field: value})))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    ("msg", "field"),
    [
        (BY_TYPE[Assignment], "lease_s"),
        (BY_TYPE[Assignment], "start_s"),
        (BY_TYPE[Wait], "retry_after_s"),
        (BY_TYPE[Progress], "fps"),
    ],
)
def test_non_finite_floats_are_422(msg: Message, field: str, value: float) -> None:
    assert field in str(refuse(corrupt(msg, **{field: value})))


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_floats_inside_maps_are_422(value: float) -> None:
    refuse(corrupt(BY_TYPE[NodeInfo], scores={"fhd": value}))
    refuse(corrupt(BY_TYPE[Invite], profile={"video_crf": value}))


def test_huge_string_is_refused_while_unpacking() -> None:
    err = refuse(corrupt(BY_TYPE[NodeInfo], name="x" * 10_000), 400)
    assert "max_str_len" in str(err.__cause__)


def test_too_many_items_are_refused_while_unpacking() -> None:
    refuse(corrupt(BY_TYPE[NodeInfo], encoders=["libx264"] * 65), 400)
    refuse(corrupt(BY_TYPE[NodeInfo], scores={f"p{i}": 1.0 for i in range(65)}), 400)


def test_large_ints_are_out_of_range_not_a_crash() -> None:
    refuse(corrupt(BY_TYPE[Progress], frames_done=2**64 - 1))
    refuse(corrupt(BY_TYPE[Invite], profile={"x": 2**64 - 1}))
    assert decode(corrupt(BY_TYPE[Invite], profile={"x": -(2**63)}), Invite)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://host:21",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "http://host",  # no port
        "http://host:",
        "http://host:0",
        "http://host:65536",
        "http://host:80x",
        "http://user:pw@host:8710",
        "http://host:8710@evil:80",
        "http://host:8710/?q=1",
        "http://host:8710#frag",
        "http://host:8710/api",
        "http://ho st:8710",
        "http://host\n:8710",
        "http://host:8710\t",
        "http:/host:8710",
        "//host:8710",
        "HTTP://host:8710",
        "http://-host:8710",
        "http://[::1:8710",
        "",
    ],
)
def test_bad_coordinator_url_is_422(url: str) -> None:
    assert "coordinator_url" in str(refuse(corrupt(BY_TYPE[Invite], coordinator_url=url)))


@pytest.mark.parametrize(
    "url",
    [
        "http://192.168.1.20:8710",
        "https://coordinator.local:443/",
        "http://[fe80::1%25eth0]:8710",
        "http://[::1]:1",
    ],
)
def test_good_coordinator_urls(url: str) -> None:
    msg = decode(corrupt(BY_TYPE[Invite], coordinator_url=url), Invite)
    assert msg.coordinator_url == url


@pytest.mark.parametrize(
    "path",
    [
        "/v1/jobs/../../etc/passwd",
        "/v1/jobs/job/../../../etc/passwd",
        "/v1/jobs/job/..",
        "/v1/jobs/job/a..b",
        "/v1/jobs/job/./source",
        "/v1/jobs/job//source",
        "/v1/jobs/job/source/",
        "/v1/jobs/",
        "/v1/jobs",
        "/etc/passwd",
        "v1/jobs/job/source",
        "http://evil:80/v1/jobs/job/source",
        "/v1/jobs/job/source?x=1",
        "/v1/jobs/job/%2e%2e/secret",
        "/v1/jobs/job/source\x00",
        "/v1/jobs/job\\..\\x",
    ],
)
def test_bad_source_path_is_422(path: str) -> None:
    assert "source_path" in str(refuse(corrupt(BY_TYPE[Assignment], source_path=path)))


def test_overlong_url_and_path_are_refused() -> None:
    url = "http://" + "h" * 245 + ":8710"
    path = "/v1/jobs/" + "a" * 248
    assert len(url) == len(path) == 257
    # On the wire the msgpack string bound stops them; built locally, the field check does.
    refuse(corrupt(BY_TYPE[Invite], coordinator_url=url), 400)
    refuse(corrupt(BY_TYPE[Assignment], source_path=path), 400)
    with pytest.raises(LocalProtocolError, match="coordinator_url"):
        Invite(**{**vars_of(BY_TYPE[Invite]), "coordinator_url": url})
    with pytest.raises(LocalProtocolError, match="source_path"):
        Assignment(**{**vars_of(BY_TYPE[Assignment]), "source_path": path})


def test_errors_are_chained_to_their_cause() -> None:
    assert refuse(b"\xc1", 400).__cause__ is not None
    assert refuse(corrupt(BY_TYPE[Wait], retry_after_s="x")).__cause__ is not None


# -- arbitrary input ------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.text(min_size=250, max_size=260)  # either side of the wire's string bound
    | st.binary(max_size=4)
)
# Small containers keep generation fast; the item-count bounds have their own tests above.
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=8)
        | st.dictionaries(st.text(max_size=12) | st.binary(max_size=2), inner, max_size=8)
    ),
    max_leaves=30,
)


def assert_decodes_or_refuses(data: bytes) -> None:
    try:
        msg = decode(data)
    except RemoteProtocolError as exc:
        assert 400 <= exc.status_code < 500
    else:  # whatever is accepted must be a valid message that survives a round trip
        assert isinstance(msg, Message)
        assert decode(encode(msg)) == msg


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_only_raise_remote_protocol_error(data: bytes) -> None:
    assert_decodes_or_refuses(data)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_values)
def test_arbitrary_msgpack_only_raises_remote_protocol_error(value: object) -> None:
    assert_decodes_or_refuses(pack(value))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SAMPLES), st.data())
def test_mutated_messages_only_raise_remote_protocol_error(msg: Message, data: Any) -> None:
    # Valid envelopes with one field replaced, dropped or added reach the field checks,
    # which random bytes almost never do.
    body = wire(msg)
    key = data.draw(st.sampled_from(sorted(body)) | st.text(max_size=8), label="key")
    if data.draw(st.booleans(), label="delete") and key in body:
        del body[key]
    else:
        body[key] = data.draw(_values, label="value")
    assert_decodes_or_refuses(pack(body))


# The wire's shape at each protocol version: every message type and its fields, in order.
# A change here without a PROTOCOL_VERSION bump is what let NodeInfo.pyz_sha256 and
# AttemptFailed reach the wire as version 1, where an older node saw "missing fields"
# instead of "protocol version". Bump the version, then add its line.
WIRE_SCHEMAS = {
    2: {
        "assign": ("job_id", "chunk", "attempt", "lease_s", "start_s", "frames", "source_path",
                   "seek_s", "trim_s", "prefetch_bytes"),
        "attempt_failed": ("job_id", "chunk", "attempt", "reason"),
        "claim": ("node_id", "slot", "prefetch"),
        "hello": ("node_id", "port"),
        "invite": ("job_id", "coordinator_url", "profile", "nonce"),
        "invite_reply": ("accepted", "reason", "node_id", "proof"),
        "job_done": ("job_id",),
        "node_info": ("node_id", "name", "version", "arch", "cpus", "ffmpeg", "encoders",
                      "scores", "state", "job_id", "slots", "pyz_sha256"),
        "progress": ("job_id", "chunk", "attempt", "frames_done", "fps", "queued"),
        "progress_ack": ("keep", "queued_keep"),
        "result_ack": ("accepted", "reason"),
        "wait": ("retry_after_s",),
    },
    3: {
        "assign": ("job_id", "chunk", "attempt", "lease_s", "start_s", "frames", "source_path",
                   "seek_s", "trim_s", "prefetch_bytes", "slides",
                   "keyframes_s"),
        "attempt_failed": ("job_id", "chunk", "attempt", "reason"),
        "claim": ("node_id", "slot", "prefetch"),
        "hello": ("node_id", "port"),
        "invite": ("job_id", "coordinator_url", "profile", "nonce", "ladder"),
        "invite_reply": ("accepted", "reason", "node_id", "proof"),
        "job_done": ("job_id",),
        "node_info": ("node_id", "name", "version", "arch", "cpus", "ffmpeg", "encoders",
                      "scores", "state", "job_id", "slots", "pyz_sha256"),
        "progress": ("job_id", "chunk", "attempt", "frames_done", "fps", "queued"),
        "progress_ack": ("keep", "queued_keep"),
        "result_ack": ("accepted", "reason"),
        "wait": ("retry_after_s",),
    },
    4: {
        "assign": ("job_id", "chunk", "attempt", "lease_s", "start_s", "frames", "source_path",
                   "seek_s", "trim_s", "prefetch_bytes", "slides",
                   "keyframes_s"),
        "attempt_failed": ("job_id", "chunk", "attempt", "reason"),
        "claim": ("node_id", "slot", "prefetch"),
        "hello": ("node_id", "port"),
        "invite": ("job_id", "coordinator_url", "profile", "nonce", "ladder", "priority",
                   "coordinator_name"),
        "invite_reply": ("accepted", "reason", "node_id", "proof"),
        "job_done": ("job_id",),
        "node_info": ("node_id", "name", "version", "arch", "cpus", "ffmpeg", "encoders",
                      "scores", "state", "job_id", "slots", "pyz_sha256", "working_for"),
        "progress": ("job_id", "chunk", "attempt", "frames_done", "fps", "queued"),
        "progress_ack": ("keep", "queued_keep"),
        "result_ack": ("accepted", "reason"),
        "wait": ("retry_after_s",),
    },    5: {
        "assign": ("job_id", "chunk", "attempt", "lease_s", "start_s", "frames", "source_path",
                   "seek_s", "trim_s", "prefetch_bytes", "slides",
                   "keyframes_s"),
        "attempt_failed": ("job_id", "chunk", "attempt", "reason"),
        "claim": ("node_id", "slot", "prefetch"),
        "hello": ("node_id", "port"),
        "invite": ("job_id", "coordinator_url", "profile", "nonce", "ladder", "priority",
                   "coordinator_name"),
        "invite_reply": ("accepted", "reason", "node_id", "proof"),
        "job_done": ("job_id",),
        "node_info": ("node_id", "name", "version", "arch", "cpus", "ffmpeg", "encoders",
                      "scores", "state", "job_id", "slots", "pyz_sha256", "working_for",
                      "device_id", "closed", "tls_port"),
        "progress": ("job_id", "chunk", "attempt", "frames_done", "fps", "queued"),
        "progress_ack": ("keep", "queued_keep"),
        "result_ack": ("accepted", "reason"),
        "wait": ("retry_after_s",),
    },
    6: {
        "assign": ("job_id", "chunk", "attempt", "lease_s", "start_s", "frames", "source_path",
                   "seek_s", "trim_s", "prefetch_bytes", "slides",
                   "keyframes_s", "rungs"),
        "attempt_failed": ("job_id", "chunk", "attempt", "reason"),
        "claim": ("node_id", "slot", "prefetch"),
        "hello": ("node_id", "port"),
        "invite": ("job_id", "coordinator_url", "profile", "nonce", "ladder", "priority",
                   "coordinator_name"),
        "invite_reply": ("accepted", "reason", "node_id", "proof"),
        "job_done": ("job_id",),
        "node_info": ("node_id", "name", "version", "arch", "cpus", "ffmpeg", "encoders",
                      "scores", "state", "job_id", "slots", "pyz_sha256", "working_for",
                      "device_id", "closed", "tls_port"),
        "progress": ("job_id", "chunk", "attempt", "frames_done", "fps", "queued"),
        "progress_ack": ("keep", "queued_keep"),
        "result_ack": ("accepted", "reason"),
        "wait": ("retry_after_s",),
    },
}


def test_the_wire_schema_is_pinned_to_the_protocol_version() -> None:
    now = {tag: tuple(f.name for f in dataclasses.fields(cls))
           for tag, cls in sorted(MESSAGE_TYPES.items())}
    assert PROTOCOL_VERSION in WIRE_SCHEMAS, "new version: record its schema here"
    assert now == WIRE_SCHEMAS[PROTOCOL_VERSION], (
        "the wire changed: bump PROTOCOL_VERSION and record the new schema")


# -- a slideshow chunk's run (Assignment.slides) ------------------------------------------------
SLIDES = SAMPLES[next(i for i, m in enumerate(SAMPLES)
                      if isinstance(m, Assignment) and m.slides is not None)]


def _with_run(**changes: object) -> bytes:
    assert isinstance(SLIDES, Assignment) and SLIDES.slides is not None
    run = SLIDES.slides.to_wire() | changes
    for key in [k for k, v in changes.items() if v is _DELETE]:
        del run[key]
    return corrupt(SLIDES, slides=run)


def test_a_slide_run_round_trips_and_knows_its_frames() -> None:
    back = decode(encode(SLIDES), Assignment)
    assert back == SLIDES and back.slides is not None
    assert (back.slides.frames, back.slides.fades_out) == (75, True)
    assert isinstance(back.slides.sizes, tuple)


@pytest.mark.parametrize(("changes", "why"), [
    ({"images": 0}, "images"),
    ({"images": 64, "sizes": [1] * 64, "sha256": ["ab" * 32] * 64}, "images"),
    ({"images": True}, "images"),
    ({"fade": 25}, "fade"),
    ({"width": 1919}, "even"),
    ({"height": 0}, "height"),
    ({"sizes": [1, 2, 3]}, "sizes for"),
    ({"sizes": [0, 1, 1, 1]}, "sizes"),
    ({"sizes": [1, 1, 1, 1 << 40]}, "sizes"),
    ({"sha256": ["AB" * 32] * 4}, "sha256"),
    ({"sha256": ["../etc/passwd"] * 4}, "sha256"),
    ({"sizes": [1] * 5, "sha256": ["ab" * 32] * 5}, "described"),  # two images past its run
    ({"fade": 0}, "described"),  # no fade: no next image to fetch
    ({"sizes": "1,2,3,4"}, "array"),
    ({"path": "/etc/passwd"}, "exactly the fields"),
    ({"width": _DELETE}, "exactly the fields"),
])
def test_a_bad_slide_run_is_refused_with_422(changes: dict[str, object], why: str) -> None:
    err = refuse(_with_run(**changes), 422)
    assert "slides" in str(err) and why in str(err), err


def test_a_slide_run_is_a_map_and_bounded_by_the_wire() -> None:
    assert "must be a map" in str(refuse(corrupt(SLIDES, slides=[1, 2]), 422))
    refuse(_with_run(sizes=[1] * 65, sha256=["ab" * 32] * 65), 400)  # msgpack's array bound
    with pytest.raises(LocalProtocolError, match="fade"):
        SlideRun(images=1, per_image=2, fade=2, width=2, height=2, sizes=(1,), sha256=("0" * 64,))
