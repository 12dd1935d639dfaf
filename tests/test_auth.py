"""Request signing: good signatures pass, anything altered, stale or missing is a 401."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import pytest

from swarm.auth import (
    MAX_SKEW_S,
    SIGNATURE_HEADER,
    STREAMED_BODY,
    TIME_HEADER,
    body_digest,
    fingerprint,
    sign,
    streamed_digest,
    verify,
)
from swarm.errors import AuthError, LocalProtocolError, RemoteProtocolError, UsageError

SECRET = "correct horse battery staple"
NOW = 1_750_000_000.25  # wall-clock seconds; any fixed value will do
PATH = "/v1/jobs/job_4f2A-9xQ/claim"
BODY = b"\x81\xa1v\x01"
DIGEST = body_digest(BODY)


def signed(**overrides: object) -> dict[str, str]:
    args: dict[str, object] = {
        "secret": SECRET,
        "method": "POST",
        "path_with_query": PATH,
        "timestamp": NOW,
        "body_digest": DIGEST,
    }
    args.update(overrides)
    return sign(**args)  # type: ignore[arg-type]


def check(headers: dict[str, str], **overrides: object) -> None:
    args: dict[str, object] = {
        "secret": SECRET,
        "method": "POST",
        "path_with_query": PATH,
        "headers": headers,
        "body_digest": DIGEST,
        "now": NOW,
    }
    args.update(overrides)
    verify(**args)  # type: ignore[arg-type]


def test_good_signature_passes() -> None:
    headers = signed()
    assert set(headers) == {TIME_HEADER, SIGNATURE_HEADER}
    assert headers[TIME_HEADER] == str(round(NOW * 1000))
    assert len(headers[SIGNATURE_HEADER]) == 64
    check(headers)  # raises on failure
    check(headers, now=NOW + MAX_SKEW_S - 1)
    check(headers, now=NOW - MAX_SKEW_S + 1)


def test_signing_is_deterministic_and_method_case_insensitive() -> None:
    assert signed() == signed(method="post")
    check(signed(), method="post")


@pytest.mark.parametrize(
    "tamper",
    [
        {"method": "PUT"},
        {"path_with_query": "/v1/jobs/job_4f2A-9xQ/progress"},
        {"path_with_query": PATH + "?x=1"},
        {"body_digest": body_digest(BODY + b"\x00")},
        {"body_digest": body_digest(b"")},
        {"secret": "correct horse battery stapler"},
    ],
)
def test_tampered_request_fails(tamper: dict[str, object]) -> None:
    with pytest.raises(AuthError, match="wrong signature"):
        check(signed(), **tamper)


def test_tampered_timestamp_fails() -> None:
    headers = signed()
    headers[TIME_HEADER] = str(int(headers[TIME_HEADER]) + 1)
    with pytest.raises(AuthError, match="wrong signature"):
        check(headers)


def test_tampered_signature_fails() -> None:
    headers = signed()
    sig = headers[SIGNATURE_HEADER]
    headers[SIGNATURE_HEADER] = ("0" if sig[0] != "0" else "1") + sig[1:]
    with pytest.raises(AuthError, match="wrong signature"):
        check(headers)


def test_query_is_signed_so_attempt_ids_cannot_be_swapped() -> None:
    path = "/v1/jobs/j/chunks/3/result?attempt=aaaaaaaa"
    headers = signed(method="PUT", path_with_query=path, body_digest=STREAMED_BODY)
    check(headers, method="PUT", path_with_query=path, body_digest=STREAMED_BODY)
    with pytest.raises(AuthError):
        check(headers, method="PUT", path_with_query=path[:-1] + "b", body_digest=STREAMED_BODY)


def test_streamed_digest_binds_the_attempt() -> None:
    assert streamed_digest("att-0001_zz") == f"{STREAMED_BODY}:att-0001_zz"
    headers = signed(method="PUT", body_digest=streamed_digest("att-0001_zz"))
    check(headers, method="PUT", body_digest=streamed_digest("att-0001_zz"))
    with pytest.raises(AuthError):
        check(headers, method="PUT", body_digest=streamed_digest("att-0002_zz"))
    # The receiver picks the digest: a streamed signature is no good for a control body.
    with pytest.raises(AuthError):
        check(headers, method="PUT", body_digest=DIGEST)


def test_stale_request_fails() -> None:
    with pytest.raises(AuthError, match="stale"):
        check(signed(), now=NOW + MAX_SKEW_S + 0.01)
    with pytest.raises(AuthError, match="stale"):
        check(signed(timestamp=NOW - 3600))


def test_future_request_fails() -> None:
    with pytest.raises(AuthError, match="future"):
        check(signed(), now=NOW - MAX_SKEW_S - 0.01)
    with pytest.raises(AuthError, match="future"):
        check(signed(timestamp=NOW + 3600))


def test_custom_skew() -> None:
    check(signed(), now=NOW + 100, max_skew_s=120)
    with pytest.raises(AuthError):
        check(signed(), now=NOW + 2, max_skew_s=1)


def test_nan_clock_fails_closed() -> None:
    with pytest.raises(AuthError):
        check(signed(), now=math.nan)


@pytest.mark.parametrize("missing", [TIME_HEADER, SIGNATURE_HEADER])
def test_missing_header_fails(missing: str) -> None:
    headers = signed()
    del headers[missing]
    with pytest.raises(AuthError, match=f"missing {missing}"):
        check(headers)
    with pytest.raises(AuthError, match="missing"):
        check({})


@pytest.mark.parametrize("value", ["", "abc", "+1750000000250", " 1750000000250", "1_750", "1.5"])
def test_unparseable_time_fails(value: str) -> None:
    headers = signed()
    headers[TIME_HEADER] = value
    with pytest.raises(AuthError, match="unparseable"):
        check(headers)


@pytest.mark.parametrize(
    "transform",
    [str.upper, lambda s: s[:-1], lambda s: s + "0", lambda s: s + " ", lambda s: ""],
    ids=["upper", "short", "long", "space", "empty"],
)
def test_unparseable_signature_fails(transform: Callable[[str], str]) -> None:
    headers = signed()
    headers[SIGNATURE_HEADER] = transform(headers[SIGNATURE_HEADER])
    with pytest.raises(AuthError, match="unparseable"):
        check(headers)


@pytest.mark.parametrize("case", [str.lower, str.upper, str.swapcase])
def test_header_lookup_is_case_insensitive(case: Callable[[str], str]) -> None:
    headers = {case(k): v for k, v in signed().items()}
    assert TIME_HEADER not in headers and SIGNATURE_HEADER not in headers
    check(headers)


def test_two_spellings_of_one_header_are_refused() -> None:
    headers = signed()
    headers[SIGNATURE_HEADER.lower()] = headers[SIGNATURE_HEADER]
    with pytest.raises(AuthError, match="more than one"):
        check(headers)


def test_auth_error_is_a_401_remote_protocol_error() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        check({})
    assert isinstance(info.value, AuthError)
    assert info.value.status_code == 401


def test_open_swarm_signs_nothing_and_accepts_everything() -> None:
    assert sign(None, "POST", PATH, NOW, DIGEST) == {}
    # Neither call raises, however little it is given.
    verify(None, "POST", PATH, {}, DIGEST, NOW)
    garbage = {TIME_HEADER: "never", SIGNATURE_HEADER: "forged"}
    verify(None, "DELETE", "/anything", garbage, "x", math.nan)


def test_signing_refuses_what_could_not_be_a_request() -> None:
    for bad in (
        {"path_with_query": PATH + "\nX-Injected: 1"},
        {"path_with_query": "relative/path"},
        {"method": "PO ST"},
        {"body_digest": "not-a-digest\n"},
        {"body_digest": DIGEST.upper()},
        {"timestamp": -1.0},
    ):
        with pytest.raises(LocalProtocolError):
            signed(**bad)


def test_verify_refuses_a_path_that_could_not_be_signed() -> None:
    with pytest.raises(AuthError):
        check(signed(), path_with_query=PATH + "\n")


def test_empty_secret_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        signed(secret="")
    with pytest.raises(UsageError):
        fingerprint("")


def test_body_digest_is_sha256_hex() -> None:
    assert body_digest(b"") == ("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    assert body_digest(BODY) == hashlib.sha256(BODY).hexdigest()


def test_fingerprint_is_short_stable_and_per_secret() -> None:
    fp = fingerprint(SECRET)
    assert fp == fingerprint(SECRET)
    assert len(fp) == 16 and all(c in "0123456789abcdef" for c in fp)
    assert fingerprint("another secret") != fp
    assert fingerprint(SECRET + " ") != fp


def test_fingerprint_does_not_reveal_the_secret() -> None:
    secret = "0123456789abcdef0123"  # hex itself, so any leak would show up verbatim
    fp = fingerprint(secret)
    assert secret not in fp and secret[:8] not in fp and fp not in secret
    # Nor is it a plain hash that a lookup table of common passphrases would invert.
    for plain in (hashlib.sha256(secret.encode()), hashlib.md5(secret.encode())):
        assert not plain.hexdigest().startswith(fp)
    # And it is not the signing key itself: a signature cannot be made from it.
    assert signed(secret=fp) != signed()
