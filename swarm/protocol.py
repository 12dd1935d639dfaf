"""Wire messages of the swarm control protocol, with no I/O.

Every control body (``Content-Type: application/msgpack``) is one msgpack map::

    {"v": PROTOCOL_VERSION, "t": <type tag>, <field>: <value>, ...}

``encode(msg)`` builds it; ``decode(body, expected)`` parses it strictly: the body size, every
string, array and map length is bounded before or while unpacking, the version must be ours,
the tag must name a known message (and one of ``expected`` if given), and the fields must be
exactly the message's fields with values of the right type and range. Nothing else is
accepted: ``bool`` is not an int, ints are accepted for float fields (other encoders may not
keep ``1.0`` a float) but NaN and infinities are not.

A message from the network that breaks any rule raises ``RemoteProtocolError``, chained to the
underlying cause, never anything else; the HTTP layer answers with its ``status_code``:

- 413: the body is larger than ``MAX_CONTROL_BODY``;
- 400: not msgpack, a bound exceeded while unpacking, not a map, wrong or missing version,
  unknown type tag (the envelope cannot be understood at all);
- 422: a well-formed message of the wrong type for this endpoint, or with missing, extra or
  invalid fields.

Constructing an invalid message locally raises ``LocalProtocolError`` instead: the same checks
run in ``__post_init__``, so a message that exists is a valid one, whichever way it was made.
Media bodies (chunk sources and results) are raw streamed bytes and never pass through here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Annotated, Any, ClassVar, Final, TypeVar, get_type_hints, overload

import msgpack

from swarm.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "CONTENT_TYPE",
    "MAX_CONTROL_BODY",
    "MAX_JOBS",
    "MESSAGE_TYPES",
    "PROTOCOL_VERSION",
    "Assignment",
    "AttemptFailed",
    "ClaimRequest",
    "Hello",
    "Invite",
    "InviteReply",
    "JobDone",
    "Message",
    "NodeInfo",
    "Progress",
    "ProgressAck",
    "ResultAck",
    "SlideRun",
    "Wait",
    "decode",
    "encode",
]

# Bumped whenever a message gains, loses or changes a field, or a message type is added:
# an older node then hears "protocol version N" instead of "missing fields" (v2: NodeInfo's
# pyz_sha256, AttemptFailed, Invite's nonce and InviteReply; v3: Assignment's slides and
# keyframes_s, Invite's ladder; v4: Invite's priority and coordinator_name, NodeInfo's
# working_for; v5: NodeInfo's device_id, closed and tls_port; v6: Assignment's rungs).
# tests/test_protocol.py pins the schema per version, so a wire change without a bump fails
# there.
PROTOCOL_VERSION: Final = 6
CONTENT_TYPE: Final = "application/msgpack"

# The largest legitimate body is an Invite with a full profile (48 keys of 32 + 128 chars,
# about 8 KiB) or a NodeInfo with 64 encoders and 64 scores (about 7 KiB); 64 KiB leaves room
# for growth while keeping what a hostile peer can make us buffer and parse trivially small.
MAX_CONTROL_BODY: Final = 64 * 1024

# Bounds handed to msgpack so that no length prefix can make it allocate more than this.
# 256 is the longest string field (coordinator_url, source_path); 64 the longest array
# (encoders) and map (scores; a top-level message has at most 14 keys, a profile 48).
_MAX_WIRE_STR: Final = 256
_MAX_WIRE_ITEMS: Final = 64

# Field limits. Each says where its value comes from.
MAX_CHUNKS: Final = 1_000_000  # far beyond any sane split (a day of 60 fps in 5 s chunks)
MAX_FRAMES: Final = 10_000_000  # 46 h at 60 fps in one chunk: a typo, not a video
MAX_MEDIA_S: Final = 1e7  # 115 days of timeline: anything later is a bogus timestamp
MAX_LEASE_S: Final = 3600.0  # an hour without progress means the peer is gone
MAX_RETRY_AFTER_S: Final = 60.0  # longer and the peer may as well leave the job
MIN_RETRY_AFTER_S: Final = 0.05  # shorter is a busy loop against the coordinator
MAX_SLOTS: Final = 64  # concurrent encodes per node; more than cores on any machine we target
# Jobs (coordinators) one node works for at once. Each held job costs the node an HTTP
# client and a waiting task per slot, and its coordinator a share of the node's slot time;
# two or three people encoding at once on one LAN is the case, eight is ample headroom.
MAX_JOBS: Final = 8
MAX_CPUS: Final = 1024
MAX_SCORE: Final = 1e13  # work/s = frames x pixels / s; 8K at 10,000 fps is about 3e11
MAX_FPS: Final = 1e6
MAX_PROFILE_KEYS: Final = 48  # the flattened Profile.to_wire() has about 20
MAX_PROFILE_STR: Final = 128
MAX_REASON: Final = 200
# Source bytes a peer may fetch ahead for one prefetched chunk (it keeps them in a file).
MAX_PREFETCH_BYTES: Final = 1 << 34
# A slideshow chunk's own images: with the next chunk's first one (its fade), an array of
# _MAX_WIRE_ITEMS. The coordinator cuts longer runs (chunker.slides.slide_runs).
MAX_SLIDE_RUN: Final = 63
MAX_IMAGE_BYTES: Final = 1 << 28  # 256 MiB: larger than any photograph's file
MAX_SLIDE_BOX: Final = 8192  # profiles.profile.MAX_BOX; kept here so the core imports nothing
MAX_RUNGS: Final = 8  # renditions of a ladder (profiles.MAX_RUNGS)
MAX_KEYFRAMES: Final = 1200  # forced keyframes in one chunk: 600 s in 0.5 s segments
_INT64 = 2**63  # what msgpack can carry for a signed int

_TOKEN = re.compile(r"[A-Za-z0-9_-]{8,64}")  # job and attempt ids: URL-safe, unguessable-sized
_NODE_ID = re.compile(r"[0-9a-f]{8,64}")  # lower-case hex only, so one id has one spelling
_VERSION = re.compile(r"[A-Za-z0-9.+_-]{1,32}")  # PEP 440 and semver both fit
_ARCH = re.compile(r"[A-Za-z0-9._-]{1,32}")  # platform.machine(): x86_64, aarch64, armv7l
_VISIBLE = re.compile(r"[\x21-\x7e]{1,64}")  # ffmpeg version strings vary wildly; no spaces
_SHA256 = re.compile(r"[0-9a-f]{64}")  # a hex SHA-256 digest, lower case: one spelling
_PROOF = re.compile(r"[0-9a-f]{64}")  # a hex HMAC-SHA256 (swarm.auth.reply_proof)
_ENCODER = re.compile(r"[a-z0-9_-]{1,32}")  # ffmpeg encoder names: libx264, h264_nvenc
_PROFILE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")  # profile names come from file names
_PROFILE_KEY = re.compile(r"[a-z0-9_]{1,32}")
_RUNG = re.compile(r"[0-9]{2,4}x[0-9]{2,4}:[a-z0-9=.:]{5,40}")  # profiles.parse_rung checks it
# An absolute http(s) base URL: host and port only. No userinfo, query or fragment, and a
# strict host grammar so that nothing odd reaches the HTTP client or the logs.
_URL = re.compile(
    r"https?://"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}(?:%25[A-Za-z0-9_.-]{1,16})?\])"
    r":(?P<port>[0-9]{1,5})/?"
)
_MAX_URL: Final = 256
_SOURCE_PREFIX: Final = "/v1/jobs/"
_SOURCE_PATH = re.compile(r"[A-Za-z0-9_/.-]{1,256}")


class _Invalid(ValueError):
    """One field failed its check; turned into Local- or RemoteProtocolError by the caller."""


# A check validates one field value and returns it in canonical form (float for ints in float
# fields, tuple for arrays, a read-only mapping for maps), or raises _Invalid.
Check = Callable[[object], object]


def _show(value: object) -> str:
    # Never echo a peer's 256-char string whole into an error message or a log line.
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _int(lo: int, hi: int) -> Check:
    def check(value: object) -> object:
        if type(value) is not int:  # excludes bool, which is an int subclass
            raise _Invalid(f"must be an int, got {type(value).__name__}")
        if not lo <= value <= hi:
            raise _Invalid(f"must be in [{lo}, {hi}], got {value}")
        return value

    return check


def _float(lo: float, hi: float) -> Check:
    def check(value: object) -> object:
        if type(value) is not float and type(value) is not int:
            raise _Invalid(f"must be a number, got {type(value).__name__}")
        if not lo <= value <= hi:  # also rejects NaN, whose comparisons are all False
            raise _Invalid(f"must be a finite number in [{lo:g}, {hi:g}], got {_show(value)}")
        return float(value)

    return check


def _bool(value: object) -> object:
    if type(value) is not bool:
        raise _Invalid(f"must be a bool, got {type(value).__name__}")
    return value


def _str(pattern: re.Pattern[str], what: str) -> Check:
    def check(value: object) -> object:
        if type(value) is not str:
            raise _Invalid(f"must be a string, got {type(value).__name__}")
        if pattern.fullmatch(value) is None:
            raise _Invalid(f"must be {what}, got {_show(value)}")
        return value

    return check


def _text(min_len: int, max_len: int) -> Check:
    """Free text shown to people: printable, so a peer cannot forge log lines or a dashboard."""

    def check(value: object) -> object:
        if type(value) is not str:
            raise _Invalid(f"must be a string, got {type(value).__name__}")
        if not min_len <= len(value) <= max_len:
            raise _Invalid(f"must have {min_len} to {max_len} characters, got {len(value)}")
        if not value.isprintable():
            raise _Invalid(f"must be printable text, got {_show(value)}")
        return value

    return check


def _choice(*options: str) -> Check:
    def check(value: object) -> object:
        if type(value) is not str or value not in options:
            raise _Invalid(f"must be one of {', '.join(options)}, got {_show(value)}")
        return value

    return check


def _optional(inner: Check) -> Check:
    def check(value: object) -> object:
        return None if value is None else inner(value)

    return check


def _tuple_of(item: Check, max_items: int) -> Check:
    def check(value: object) -> object:
        if not isinstance(value, list | tuple):
            raise _Invalid(f"must be an array, got {type(value).__name__}")
        if len(value) > max_items:
            raise _Invalid(f"must have at most {max_items} items, got {len(value)}")
        try:
            return tuple(item(x) for x in value)
        except _Invalid as exc:
            raise _Invalid(f"item {exc}") from exc

    return check


def _rung_indices(value: object) -> object:
    """Indices into an invite's ladder, ascending, each once (the peer checks them against
    the ladder it was given)."""
    rungs = _tuple_of(_int(0, MAX_RUNGS - 1), MAX_RUNGS)(value)
    assert isinstance(rungs, tuple)
    if list(rungs) != sorted(set(rungs)):
        raise _Invalid("must be ascending rung indices, each once")
    return rungs


def _mapping_of(key: Check, item: Check, max_items: int) -> Check:
    def check(value: object) -> object:
        if not isinstance(value, Mapping):
            raise _Invalid(f"must be a map, got {type(value).__name__}")
        if len(value) > max_items:
            raise _Invalid(f"must have at most {max_items} entries, got {len(value)}")
        out: dict[str, object] = {}
        for k, v in value.items():
            try:
                out[str(key(k))] = item(v)
            except _Invalid as exc:
                raise _Invalid(f"entry {_show(k)}: {exc}") from exc
        # Read-only, so that a frozen message stays frozen all the way down.
        return MappingProxyType(out)

    return check


def _profile_value(value: object) -> object:
    if type(value) is bool:
        return value
    if type(value) is int:
        return _int(-_INT64, _INT64 - 1)(value)
    if type(value) is float:
        if not math.isfinite(value):
            raise _Invalid(f"must be finite, got {value}")
        return value
    if type(value) is str:
        return _text(0, MAX_PROFILE_STR)(value)
    raise _Invalid(f"must be a string, int, float or bool, got {type(value).__name__}")


def _url(value: object) -> object:
    if type(value) is not str:
        raise _Invalid(f"must be a string, got {type(value).__name__}")
    match = _URL.fullmatch(value) if len(value) <= _MAX_URL else None
    if match is None or not 1 <= int(match["port"]) <= 65535:
        raise _Invalid(f"must be http(s)://HOST:PORT with no path or query, got {_show(value)}")
    return value


def _source_path(value: object) -> object:
    if type(value) is not str:
        raise _Invalid(f"must be a string, got {type(value).__name__}")
    segments = value[len(_SOURCE_PREFIX) :].split("/")
    # Empty, "." and ".." segments are refused outright rather than normalised: the peer
    # appends this to the coordinator URL, and it must name exactly one resource there.
    if (
        not value.startswith(_SOURCE_PREFIX)
        or _SOURCE_PATH.fullmatch(value) is None
        or any(s in ("", ".", "..") for s in segments)
        or ".." in value
    ):
        raise _Invalid(f"must be a clean path under {_SOURCE_PREFIX}, got {_show(value)}")
    return value


_node_id = _str(_NODE_ID, "8 to 64 lower-case hex digits")
_DEVICE_ID = re.compile(r"(?:[0-9a-f]{32})?")
_token = _str(_TOKEN, "8 to 64 of [A-Za-z0-9_-]")
_chunk = _int(0, MAX_CHUNKS - 1)


class Message:
    """Base of all wire messages: a frozen, slotted dataclass with a class-level ``TYPE`` tag."""

    __slots__ = ()
    TYPE: ClassVar[str]
    __dataclass_fields__: ClassVar[dict[str, Any]]  # set by @dataclass on every subclass

    def __post_init__(self) -> None:
        try:
            values = _check_fields(
                type(self), {f.name: getattr(self, f.name) for f in fields(self)}
            )
        except _Invalid as exc:
            raise LocalProtocolError(f"invalid {type(self).__name__}: {exc}") from exc
        for name, value in values.items():
            # Store the canonical form (float, tuple, read-only map); the dataclass is frozen,
            # so this is the one sanctioned way to write a field after __init__.
            object.__setattr__(self, name, value)


M = TypeVar("M", bound=Message)
M2 = TypeVar("M2", bound=Message)
M3 = TypeVar("M3", bound=Message)
MESSAGE_TYPES: dict[str, type[Message]] = {}
_CHECKS: dict[type[Message], dict[str, Check]] = {}


def _message(cls: type[M]) -> type[M]:
    """Register a message class: its tag and the check in each field's ``Annotated`` hint."""
    if cls.TYPE in MESSAGE_TYPES:
        raise LocalProtocolError(f"duplicate message type {cls.TYPE!r}")
    hints = get_type_hints(cls, include_extras=True)
    checks = {f.name: hints[f.name].__metadata__[0] for f in fields(cls)}
    if {"v", "t"} & checks.keys():
        raise LocalProtocolError(f"{cls.__name__}: 'v' and 't' are reserved for the envelope")
    MESSAGE_TYPES[cls.TYPE] = cls
    _CHECKS[cls] = checks
    return cls


def _check_fields(cls: type[Message], values: Mapping[str, object]) -> dict[str, object]:
    checks = _CHECKS[cls]
    missing = checks.keys() - values.keys()
    if missing:
        raise _Invalid(f"missing fields: {', '.join(sorted(missing))}")
    extra = values.keys() - checks.keys()
    if extra:
        shown = sorted(map(_show, extra))[:5]  # bounded: a peer may send 60 junk keys
        raise _Invalid(f"unknown fields: {', '.join(shown)}")
    out: dict[str, object] = {}
    for name, check in checks.items():
        try:
            out[name] = check(values[name])
        except _Invalid as exc:
            raise _Invalid(f"{name}: {exc}") from exc
    return out


@_message
@dataclass(frozen=True, slots=True)
class NodeInfo(Message):
    """``GET /v1/info``: who a node is and what it can do. The wire version is in ``"v"``."""

    TYPE: ClassVar[str] = "node_info"
    node_id: Annotated[str, _node_id]
    name: Annotated[str, _text(1, 64)]
    version: Annotated[str, _str(_VERSION, "a version like 1.2.3")]
    arch: Annotated[str, _str(_ARCH, "a machine name like x86_64")]
    cpus: Annotated[int, _int(1, MAX_CPUS)]
    ffmpeg: Annotated[str, _str(_VISIBLE, "1 to 64 visible ASCII characters")]
    encoders: Annotated[
        tuple[str, ...], _tuple_of(_str(_ENCODER, "an encoder name"), _MAX_WIRE_ITEMS)
    ]
    # Benchmark speed per profile name, in work/s (frames x output pixels per second).
    scores: Annotated[
        Mapping[str, float],
        _mapping_of(_str(_PROFILE_NAME, "a profile name"), _float(0.0, MAX_SCORE), 64),
    ]
    state: Annotated[str, _choice("idle", "busy", "leaving")]
    job_id: Annotated[str | None, _optional(_token)]
    slots: Annotated[int, _int(1, MAX_SLOTS)]
    # SHA-256 of the swarm.pyz this node serves at GET /swarm.pyz; None until it is built.
    pyz_sha256: Annotated[str | None, _optional(_str(_SHA256, "a lower-case hex SHA-256"))]
    # The jobs it works on, each with its coordinator's name (``swarm peers`` shows them).
    working_for: Annotated[
        Mapping[str, str], _mapping_of(_token, _text(0, 64), MAX_JOBS)
    ] = field(default_factory=dict)
    # Its identity (peer.identity; "" without one), and whether it is closed: it takes
    # work only from devices paired with it, so only those may invite it.
    device_id: Annotated[str, _str(_DEVICE_ID, "empty or 32 lower-case hex digits")] = ""
    closed: Annotated[bool, _bool] = False
    # Where it serves TLS for paired devices (peer.tls), 0: nowhere; a closed coordinator
    # sends its invite there, to the certificate it pinned at pairing.
    tls_port: Annotated[int, _int(0, 65535)] = 0


@_message
@dataclass(frozen=True, slots=True)
class Invite(Message):
    """``POST /v1/invite``: a coordinator asks a node to pull chunks of a job.

    ``profile`` is the flat ``Profile.to_wire()`` form; only its shape is bounded here, its
    meaning is validated by ``profiles.Profile.from_mapping`` before any ffmpeg argument is built.
    """

    TYPE: ClassVar[str] = "invite"
    job_id: Annotated[str, _token]
    coordinator_url: Annotated[str, _url]
    profile: Annotated[
        Mapping[str, str | int | float | bool],
        _mapping_of(_str(_PROFILE_KEY, "a key of [a-z0-9_]"), _profile_value, MAX_PROFILE_KEYS),
    ]
    # Fresh per invite; the reply's proof covers it, so a recorded reply cannot be replayed.
    nonce: Annotated[str, _token]
    # A ladder: every rendition as ``profiles.Rung.wire`` writes it (``1280x720:crf=23``),
    # tallest first; the peer splits each decoded chunk to one stream per rung. Empty: one.
    ladder: Annotated[tuple[str, ...], _tuple_of(_str(_RUNG, "a rung like 1280x720:crf=23"),
                                                 MAX_RUNGS)] = ()
    # How this job shares a node that serves several coordinators (swarm.share).
    priority: Annotated[str, _choice("low", "normal", "high")] = "normal"
    coordinator_name: Annotated[str, _text(0, 64)] = ""


@_message
@dataclass(frozen=True, slots=True)
class InviteReply(Message):
    """Answer to an invite. With a swarm secret, ``proof`` is ``swarm.auth.reply_proof``
    over the invite's nonce, the job, this node and the answer: what tells a coordinator
    that the node really holds its secret (an open node accepts any invite, and its reply
    would otherwise look the same). None in an open swarm, where nobody can prove anything.
    """

    TYPE: ClassVar[str] = "invite_reply"
    accepted: Annotated[bool, _bool]
    reason: Annotated[str, _text(0, MAX_REASON)]
    node_id: Annotated[str, _node_id]
    proof: Annotated[str | None, _optional(_str(_PROOF, "a lower-case hex HMAC-SHA256"))]


@_message
@dataclass(frozen=True, slots=True)
class ClaimRequest(Message):
    """``POST /v1/jobs/{id}/claim``: a free slot asks for work; ``prefetch`` marks a claim made
    while another chunk is still encoding, which the scheduler may refuse or steal later."""

    TYPE: ClassVar[str] = "claim"
    node_id: Annotated[str, _node_id]
    slot: Annotated[int, _int(0, MAX_SLOTS - 1)]
    prefetch: Annotated[bool, _bool]

@dataclass(frozen=True, slots=True)
class SlideRun:
    """What a slideshow chunk is, on an ``Assignment``: ``images`` whole images of
    ``per_image`` frames each, the last ``fade`` of every one but the show's last
    crossfading into the next, in a ``width`` x ``height`` box. ``sizes`` and ``sha256``
    describe the images the peer fetches, in order, by index (``source_path/<k>``): its
    own ``images``, then the next chunk's first one when its last image fades into it.
    Validated on construction like a message: nothing in it is a path or an argument."""

    images: int
    per_image: int
    fade: int
    width: int
    height: int
    sizes: tuple[int, ...]
    sha256: tuple[str, ...]

    def __post_init__(self) -> None:
        try:
            _check_slide_run(self)
        except _Invalid as exc:
            raise LocalProtocolError(f"invalid SlideRun: {exc}") from exc
        object.__setattr__(self, "sizes", tuple(self.sizes))
        object.__setattr__(self, "sha256", tuple(self.sha256))

    @property
    def frames(self) -> int:
        return self.images * self.per_image

    @property
    def fades_out(self) -> bool:
        """Whether the run's last image crossfades into the next chunk's first."""
        return len(self.sizes) > self.images

    def to_wire(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_SLIDE_FIELDS: Final = ("images", "per_image", "fade", "width", "height", "sizes", "sha256")


def _check_slide_run(run: SlideRun) -> None:
    side = _int(2, MAX_SLIDE_BOX)
    for name, check in (("images", _int(1, MAX_SLIDE_RUN)), ("per_image", _int(1, MAX_FRAMES)),
                        ("fade", _int(0, MAX_FRAMES)), ("width", side), ("height", side),
                        ("sizes", _tuple_of(_int(1, MAX_IMAGE_BYTES), _MAX_WIRE_ITEMS)),
                        ("sha256", _tuple_of(_str(_SHA256, "a lower-case hex SHA-256"),
                                             _MAX_WIRE_ITEMS))):
        try:
            check(getattr(run, name))
        except _Invalid as exc:
            raise _Invalid(f"{name}: {exc}") from exc
    if run.width % 2 or run.height % 2:
        raise _Invalid("box sides must be even")
    if run.fade >= run.per_image:
        raise _Invalid(f"a {run.fade}-frame fade does not fit in {run.per_image} frames")
    if run.images * run.per_image > MAX_FRAMES:
        raise _Invalid("more frames than a chunk may have")
    if len(run.sha256) != len(run.sizes):
        raise _Invalid(f"{len(run.sizes)} sizes for {len(run.sha256)} digests")
    # Its own images, and the next one only if there is a fade into it.
    if len(run.sizes) not in (run.images, run.images + (run.fade > 0)):
        raise _Invalid(f"{len(run.sizes)} images described for a run of {run.images}")


def _slide_run(value: object) -> object:
    if isinstance(value, SlideRun):
        return value  # validated when it was built
    if not isinstance(value, Mapping):
        raise _Invalid(f"must be a map, got {type(value).__name__}")
    if set(value) != set(_SLIDE_FIELDS):
        shown = sorted(map(_show, set(value) ^ set(_SLIDE_FIELDS)))[:5]
        raise _Invalid(f"must have exactly the fields {', '.join(_SLIDE_FIELDS)}; "
                       f"not {', '.join(shown)}")
    for name in ("sizes", "sha256"):
        if not isinstance(value[name], list | tuple):
            raise _Invalid(f"{name}: must be an array, got {type(value[name]).__name__}")
    try:
        return SlideRun(**{k: value[k] for k in _SLIDE_FIELDS})
    except LocalProtocolError as exc:
        raise _Invalid(str(exc).removeprefix("invalid SlideRun: ")) from exc


@_message
@dataclass(frozen=True, slots=True)
class Assignment(Message):
    """Answer to a claim: encode ``frames`` frames from ``start_s`` of the source.

    The peer fetches ``coordinator_url + source_path`` and uploads to the chunk's result URL
    with ``?attempt=``; the lease expires ``lease_s`` after the last progress report.
    """

    TYPE: ClassVar[str] = "assign"
    job_id: Annotated[str, _token]
    chunk: Annotated[int, _chunk]
    attempt: Annotated[str, _token]
    lease_s: Annotated[float, _float(1.0, MAX_LEASE_S)]
    start_s: Annotated[float, _float(0.0, MAX_MEDIA_S)]
    frames: Annotated[int, _int(1, MAX_FRAMES)]
    source_path: Annotated[str, _source_path]
    # Where the peer's ffmpeg seeks (-ss) and from which source time it keeps frames (trim);
    # both None for a chunk that starts at the first frame. See chunker/plan.py.
    seek_s: Annotated[float | None, _optional(_float(0.0, MAX_MEDIA_S))] = None
    trim_s: Annotated[float | None, _optional(_float(-MAX_MEDIA_S, MAX_MEDIA_S))] = None
    # A prefetched chunk (its peer is still busy): how many source bytes the peer may fetch
    # ahead into a file while it finishes what it holds; the rest streams once it starts.
    # None: stream it all at the start, as for a chunk granted to an idle slot.
    prefetch_bytes: Annotated[int | None, _optional(_int(1, MAX_PREFETCH_BYTES))] = None
    # A slideshow chunk: rendered from images fetched at ``source_path/<k>`` instead of
    # encoded from the source (``start_s``, ``seek_s`` and ``trim_s`` then mean nothing).
    slides: Annotated[SlideRun | None, _optional(_slide_run)] = None
    # Source timestamps (the trim's clock) from which the next frame must be a keyframe:
    # where the chunk's HLS segments start after its first (``--segment-seconds``).
    keyframes_s: Annotated[tuple[float, ...],
                           _tuple_of(_float(-MAX_MEDIA_S, MAX_MEDIA_S), MAX_KEYFRAMES)] = ()
    # A ladder chunk parted across peers (swarm.scheduler, item 5): the invite's rungs this
    # peer encodes, by index, one output stream each in this order. Empty: every rung.
    rungs: Annotated[tuple[int, ...], _rung_indices] = ()


@_message
@dataclass(frozen=True, slots=True)
class Wait(Message):
    """Answer to a claim: nothing for you now (a faster peer will take it); ask again later."""

    TYPE: ClassVar[str] = "wait"
    retry_after_s: Annotated[float, _float(MIN_RETRY_AFTER_S, MAX_RETRY_AFTER_S)]


@_message
@dataclass(frozen=True, slots=True)
class Hello(Message):
    """A node named with ``swarm join --peer`` telling a coordinator it is there.

    For networks mDNS does not cross: the coordinator answers by inviting the sender at the
    address the request came from and the port given here.
    """

    TYPE: ClassVar[str] = "hello"
    node_id: Annotated[str, _node_id]
    port: Annotated[int, _int(1, 65535)]


@_message
@dataclass(frozen=True, slots=True)
class JobDone(Message):
    """Answer to a claim: the job has no more work for anyone; the peer leaves it."""

    TYPE: ClassVar[str] = "job_done"
    job_id: Annotated[str, _token]


@_message
@dataclass(frozen=True, slots=True)
class Progress(Message):
    """``POST /v1/jobs/{id}/progress``: frames encoded so far; renews the attempt's lease."""

    TYPE: ClassVar[str] = "progress"
    job_id: Annotated[str, _token]
    chunk: Annotated[int, _chunk]
    attempt: Annotated[str, _token]
    frames_done: Annotated[int, _int(0, MAX_FRAMES)]
    fps: Annotated[float, _float(0.0, MAX_FPS)]
    # The prefetched attempt the peer holds, not started yet (downloading its source): the
    # answer says whether it is still wanted, so a stolen one is dropped within a report.
    queued: Annotated[str | None, _optional(_token)] = None


@_message
@dataclass(frozen=True, slots=True)
class AttemptFailed(Message):
    """``POST /v1/jobs/{id}/failed``: the peer's encoder failed, and why (its first error
    line), so the coordinator can tell a chunk that fails everywhere from a broken peer
    instead of seeing only an aborted upload. Answered with a ``ResultAck``; a coordinator
    without the route (404) learns of the failure from the broken upload as before."""

    TYPE: ClassVar[str] = "attempt_failed"
    job_id: Annotated[str, _token]
    chunk: Annotated[int, _chunk]
    attempt: Annotated[str, _token]
    reason: Annotated[str, _text(1, MAX_REASON)]


@_message
@dataclass(frozen=True, slots=True)
class ProgressAck(Message):
    """Answer to progress; ``keep=False`` means the attempt was cancelled (replaced by a
    faster duplicate, or the job is gone): stop ffmpeg and do not upload."""

    TYPE: ClassVar[str] = "progress_ack"
    keep: Annotated[bool, _bool]
    # For ``Progress.queued``: False when that attempt was taken over or ended.
    queued_keep: Annotated[bool, _bool] = True


@_message
@dataclass(frozen=True, slots=True)
class ResultAck(Message):
    """Answer to a result upload; a rejected result says why (shown to the peer's user)."""

    TYPE: ClassVar[str] = "result_ack"
    accepted: Annotated[bool, _bool]
    reason: Annotated[str, _text(0, MAX_REASON)]


def encode(msg: Message) -> bytes:
    """Serialise a message; it was validated when it was built, so this cannot fail on input."""
    body: dict[str, Any] = {"v": PROTOCOL_VERSION, "t": msg.TYPE}
    for f in fields(msg):
        value = getattr(msg, f.name)
        body[f.name] = (dict(value) if isinstance(value, Mapping)
                        else value.to_wire() if isinstance(value, SlideRun) else value)
    data: bytes = msgpack.packb(body, use_bin_type=True)
    if len(data) > MAX_CONTROL_BODY:  # the field bounds make this unreachable; keep it so
        raise LocalProtocolError(f"{type(msg).__name__} encodes to {len(data)} bytes")
    return data


# A reply that may be one of a few types decodes to their union, so the caller's isinstance
# checks narrow it (the claim endpoint answers Assignment, Wait or JobDone).
@overload
def decode(data: bytes, expected: type[M]) -> M: ...
@overload
def decode(data: bytes, expected: tuple[type[M]]) -> M: ...
@overload
def decode(data: bytes, expected: tuple[type[M], type[M2]]) -> M | M2: ...
@overload
def decode(data: bytes, expected: tuple[type[M], type[M2], type[M3]]) -> M | M2 | M3: ...
@overload
def decode(data: bytes, expected: tuple[type[Message], ...] | None = None) -> Message: ...
def decode(
    data: bytes,
    expected: type[Message] | tuple[type[Message], ...] | None = None,
) -> Message:
    """Parse one control body; raise RemoteProtocolError (with an HTTP status) on any fault.

    ``expected`` names the message type(s) this endpoint accepts; a valid message of another
    type is refused with 422 before its fields are even looked at.
    """
    if len(data) > MAX_CONTROL_BODY:
        raise RemoteProtocolError(
            f"control body of {len(data)} bytes exceeds {MAX_CONTROL_BODY}", status_code=413
        )
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,  # strings must be valid UTF-8
            use_list=False,  # arrays become tuples, as the frozen messages hold them
            strict_map_key=True,
            max_str_len=_MAX_WIRE_STR,
            max_bin_len=0,  # no message has a binary field
            max_ext_len=0,  # nor an extension type (timestamps included)
            max_array_len=_MAX_WIRE_ITEMS,
            max_map_len=_MAX_WIRE_ITEMS,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        # ValueError covers truncation, extra data, bad UTF-8, exceeded bounds and nesting.
        raise RemoteProtocolError(f"control body is not valid msgpack: {exc}") from exc
    if not isinstance(obj, dict):
        raise RemoteProtocolError(f"control body must be a map, got {type(obj).__name__}")
    version = obj.pop("v", None)
    if type(version) is not int:
        raise RemoteProtocolError("control body has no integer protocol version 'v'")
    if version != PROTOCOL_VERSION:
        raise RemoteProtocolError(
            f"peer speaks protocol version {version}, this node speaks {PROTOCOL_VERSION}"
        )
    tag = obj.pop("t", None)
    cls = MESSAGE_TYPES.get(tag) if type(tag) is str else None
    if cls is None:
        raise RemoteProtocolError(f"unknown message type {_show(tag)}")
    if expected is not None and not issubclass(cls, expected):
        raise RemoteProtocolError(f"unexpected message type {tag!r} here", status_code=422)
    try:
        values = _check_fields(cls, obj)
    except _Invalid as exc:
        raise RemoteProtocolError(f"invalid {cls.__name__}: {exc}", status_code=422) from exc
    # __post_init__ checks once more: cheap at these sizes, and it keeps one way to build one.
    return cls(**values)
