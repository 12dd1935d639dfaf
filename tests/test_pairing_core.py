"""swarm.pairing: SPAKE2 over RFC 3526 group 14, confirmation MACs, the door's limits."""

from __future__ import annotations

import pytest

from swarm import auth, pairing
from swarm.errors import AuthError, UsageError
from swarm.pairing import (
    GENERATOR,
    MAX_ATTEMPTS,
    ORDER,
    PRIME,
    Door,
    Initiator,
    PairingFailed,
    parse_started,
)

A_ID, B_ID = "a" * 32, "b" * 32
A_CERT, B_CERT = "c" * 64, "d" * 64  # TLS certificate fingerprints


def _run(door: Door, code: str, now: float) -> tuple[pairing.Paired, pairing.Paired]:
    init = Initiator(code, A_ID, "laptop", A_CERT)
    started = parse_started(door.start(init.start_body(), now).to_json())
    mine, finish = init.finish(started)
    theirs = door.finish(finish, now + 0.5)
    return mine, theirs


def test_group_constants() -> None:
    # A safe prime: the subgroup of residues has prime order Q, and g = 2 generates it.
    assert PRIME.bit_length() == 2048 and PRIME % 8 == 7
    assert pow(GENERATOR, ORDER, PRIME) == 1
    for e in (pairing.M, pairing.N):
        assert 1 < e < PRIME - 1 and pow(e, ORDER, PRIME) == 1
    assert pairing.M != pairing.N
    # Reproducible by anyone from the documented labels: nobody chose them.
    assert pairing.hash_to_group(b"swarm-pair-v1 M") == pairing.M


def test_same_code_same_key_both_sides() -> None:
    door = Door(B_ID, "pi-kitchen", B_CERT)
    mine, theirs = _run(door, door.code, 100.0)
    assert mine.key == theirs.key and len(mine.key) == 32
    assert (mine.peer_id, mine.peer_name) == (B_ID, "pi-kitchen")
    assert (theirs.peer_id, theirs.peer_name) == (A_ID, "laptop")
    # A second run of the same code gets nowhere: a code pairs once.
    assert door.burnt == 1


def test_certificate_fingerprints_are_exchanged_and_confirmed() -> None:
    door = Door(B_ID, "pi", B_CERT)
    mine, theirs = _run(door, door.code, 0.0)
    assert (mine.peer_cert, theirs.peer_cert) == (B_CERT, A_CERT)


@pytest.mark.parametrize("side", ["start", "started"])
def test_a_relay_that_swaps_a_certificate_breaks_the_pairing(side: str) -> None:
    # The fingerprints are in the transcript: a man in the middle who knows nothing of the
    # code cannot put his own certificate in either message without failing confirmation.
    door = Door(B_ID, "pi", B_CERT, code="777777")
    init = Initiator("777777", A_ID, "laptop", A_CERT)
    body = init.start_body()
    if side == "start":
        body["cert"] = "e" * 64
    started = door.start(body, 0.0).to_json()
    if side == "started":
        started["cert"] = "e" * 64
    # Either way the door's MAC covers another transcript than the initiator's.
    with pytest.raises(PairingFailed, match="wrong code"):
        init.finish(parse_started(started))


def test_two_runs_give_different_keys() -> None:
    keys = set()
    for t in (0.0, 10.0):
        door = Door(B_ID, "pi", B_CERT, code="123456")
        keys.add(_run(door, "123 456", t)[0].key)
    assert len(keys) == 2


def test_wrong_code_fails_confirmation_on_both_sides() -> None:
    door = Door(B_ID, "pi", B_CERT, code="123456")
    init = Initiator("123457", A_ID, "laptop", A_CERT)
    started = door.start(init.start_body(), 0.0)
    with pytest.raises(PairingFailed) as exc:
        init.finish(started)
    assert exc.value.status_code == 403
    # An initiator that skips its check and sends a made-up MAC is refused by the door.
    with pytest.raises(PairingFailed) as exc2:
        door.finish({"session": started.session, "confirm": "0" * 64}, 1.0)
    assert exc2.value.status_code == 403


def test_relay_that_swaps_the_identity_breaks_the_keys() -> None:
    door = Door(B_ID, "pi", B_CERT, code="123456")
    init = Initiator("123456", A_ID, "laptop", A_CERT)
    body = init.start_body() | {"device_id": "c" * 32}  # a relay claims to be device c
    started = door.start(body, 0.0)
    with pytest.raises(PairingFailed):
        init.finish(started)


def test_a_transcript_rules_out_no_code() -> None:
    # A passive eavesdropper sees X, Y and both MACs. Every candidate code w' explains X:
    # X / M^w' is a subgroup element, as the true g^x is, so nothing computed from the
    # transcript alone tells codes apart; the MACs depend on K = g^xy, which needs x or y.
    door = Door(B_ID, "pi", B_CERT, code="424242")
    init = Initiator("424242", A_ID, "laptop", A_CERT)
    started = door.start(init.start_body(), 0.0)
    x_elem, y_elem = init.element, int(started.element, 16)
    for guess in ("424242", "000000", "999999", "123456"):
        w = pairing._password(guess)
        for share, blind in ((x_elem, pairing.M), (y_elem, pairing.N)):
            candidate = share * pow(pow(blind, w, PRIME), -1, PRIME) % PRIME
            assert pow(candidate, ORDER, PRIME) == 1  # a valid share for any code
    # What an eavesdropper could try: the confirmation keyed as if K were computable
    # without a secret exponent (K = Y / N^w), for each guess. No guess matches, not
    # even the right one, so a search over all codes finds nothing.
    for guess in ("424242", "000000"):
        w = pairing._password(guess)
        fake_k = y_elem * pow(pow(pairing.N, w, PRIME), -1, PRIME) % PRIME
        keys = pairing._keys((A_ID, "laptop", B_ID, "pi"), x_elem, y_elem, fake_k, w)
        assert keys.confirm_responder != started.confirm


def test_an_active_attacker_tests_one_code_per_run() -> None:
    # Playing the initiator with a guess, the attacker learns from the door's MAC whether
    # that guess was right, and nothing about another: for a second guess it would need
    # log(X / M^w2) = x + (w1 - w2) log M, which it does not know.
    door = Door(B_ID, "pi", B_CERT, code="555555")
    attacker = Initiator("111111", A_ID, "evil", A_CERT)
    started = door.start(attacker.start_body(), 0.0)
    with pytest.raises(PairingFailed):
        attacker.finish(started)
    # Re-using the same secret exponent with the right code (the attacker's best offline
    # move) does not reproduce the door's MAC, since X was blinded with the wrong code.
    second = Initiator("555555", A_ID, "evil", A_CERT, _x=attacker._x)
    with pytest.raises(PairingFailed):
        second.finish(started)
    assert door.attempts_left == MAX_ATTEMPTS - 1


def test_attempts_per_code_are_bounded_then_the_code_changes() -> None:
    door = Door(B_ID, "pi", B_CERT, code="222222")
    now = 0.0
    for _ in range(MAX_ATTEMPTS):
        init = Initiator("333333", A_ID, "evil", A_CERT)
        started = door.start(init.start_body(), now)
        finish = {"session": started.session, "confirm": "1" * 64}
        with pytest.raises(PairingFailed):
            door.finish(finish, now + 0.1)
        now += pairing.MIN_START_INTERVAL_S
    assert door.code != "222222" and door.burnt == 1 and door.attempts_left == MAX_ATTEMPTS
    # The old code no longer pairs, the new one does.
    with pytest.raises(PairingFailed):
        _run(door, "222222", now)
    now += pairing.MIN_START_INTERVAL_S
    mine, theirs = _run(door, door.code, now)
    assert mine.key == theirs.key


def test_rate_limit_and_expiry() -> None:
    door = Door(B_ID, "pi", B_CERT, code="222222")
    first = Initiator("222222", A_ID, "a", A_CERT)
    started = door.start(first.start_body(), 0.0)
    with pytest.raises(PairingFailed) as too_fast:
        door.start(Initiator("222222", A_ID, "a", A_CERT).start_body(), 0.5)
    assert too_fast.value.status_code == 429
    # A run finished after its time is refused; the right MAC does not revive it.
    _, finish = first.finish(started)
    with pytest.raises(PairingFailed) as late:
        door.finish(finish, pairing.SESSION_TTL_S + 1)
    assert late.value.status_code == 404
    # A new start replaces an abandoned run: the older session is gone.
    second = Initiator("222222", A_ID, "a", A_CERT)
    old = door.start(Initiator("222222", A_ID, "a", A_CERT).start_body(), 100.0)
    new = door.start(second.start_body(), 101.0)
    with pytest.raises(PairingFailed):
        door.finish({"session": old.session, "confirm": "0" * 64}, 101.5)
    assert door.finish(second.finish(new)[1], 101.5).peer_id == A_ID


@pytest.mark.parametrize("element", ["0", "1", f"{PRIME - 1:x}", f"{PRIME:x}", "zz", 5, "",
                                     f"{PRIME + 4:x}", "f" * 513])
def test_bad_elements_are_refused(element: object) -> None:
    door = Door(B_ID, "pi", B_CERT)
    with pytest.raises(PairingFailed) as exc:
        door.start({"device_id": A_ID, "name": "a", "cert": A_CERT, "element": element}, 0.0)
    assert exc.value.status_code == 400
    assert door.attempts_left == MAX_ATTEMPTS  # a malformed start spends no attempt


def test_non_residue_is_refused() -> None:
    # -4 mod P = P - 4 is a non-residue (P is 3 mod 4): outside the subgroup.
    with pytest.raises(PairingFailed, match="subgroup"):
        Door(B_ID, "pi", B_CERT).start({"device_id": A_ID, "name": "a", "cert": A_CERT,
                                        "element": f"{PRIME - 4:x}"}, 0.0)


@pytest.mark.parametrize("body", [None, [], {}, {"device_id": A_ID, "name": "a"},
                                  {"device_id": "A" * 32, "name": "a", "cert": A_CERT,
                                   "element": "4"},
                                  {"device_id": A_ID, "name": "a", "cert": "C" * 64,
                                   "element": "4"},
                                  {"device_id": A_ID, "name": "a", "element": "4"},
                                  {"device_id": A_ID, "name": "a b", "element": "4"},
                                  {"device_id": A_ID, "name": "a", "cert": A_CERT,
                                   "element": "4", "x": 1}])
def test_bad_start_bodies(body: object) -> None:
    with pytest.raises(PairingFailed):
        Door(B_ID, "pi", B_CERT).start(body, 0.0)


def test_codes() -> None:
    assert pairing.normalise_code(" 123-456 ") == "123456"
    for bad in ("12345", "1234567", "abcdef", "١٢٣٤٥٦"):
        with pytest.raises(UsageError):
            pairing.normalise_code(bad)
    codes = {pairing.new_code() for _ in range(50)}
    assert all(len(c) == 6 and c.isdigit() for c in codes) and len(codes) > 40


def test_requests_signed_with_a_pair_key() -> None:
    key, dev = b"k" * 32, "d" * 32
    keys = {dev: key}
    digest = auth.body_digest(b"body")
    headers = auth.sign_device(key, dev, "POST", "/v1/invite", 1000.0, digest)
    assert auth.verify_device(keys.get, "POST", "/v1/invite", headers, digest, 1001.0) == dev
    for kwargs in [
        {"body_digest": auth.body_digest(b"other")},
        {"path_with_query": "/v1/hello"},
        {"now": 1000.0 + auth.MAX_SKEW_S + 1},  # stale
        {"now": float("nan")},  # a broken clock fails closed
    ]:
        args = {"key_for": keys.get, "method": "POST", "path_with_query": "/v1/invite",
                "headers": headers, "body_digest": digest, "now": 1001.0} | kwargs
        with pytest.raises(AuthError):
            auth.verify_device(**args)  # type: ignore[arg-type]
    # The id is bound: the same MAC under another paired device's id fails.
    other = {"e" * 32: key, dev: key}
    moved = headers | {auth.DEVICE_HEADER: "e" * 32}
    with pytest.raises(AuthError):
        auth.verify_device(other.get, "POST", "/v1/invite", moved, digest, 1001.0)
    # A device that is not paired (or was revoked) is told so.
    with pytest.raises(AuthError, match="not paired"):
        auth.verify_device({}.get, "POST", "/v1/invite", headers, digest, 1001.0)
    # A secret's signature is not a pair key's: the domains differ.
    with pytest.raises(AuthError):
        auth.verify_device(keys.get, "POST", "/v1/invite",
                           auth.sign("s", "POST", "/v1/invite", 1000.0, digest)
                           | {auth.DEVICE_HEADER: dev}, digest, 1001.0)


# -- introductions (swarm.introduce) ---------------------------------------------------------
def test_a_sealed_introduction_opens_only_with_its_key_and_unchanged() -> None:
    import os

    from swarm.errors import RemoteProtocolError
    from swarm.introduce import MAX_SEALED, Introduction, open_sealed, seal

    key = os.urandom(32)
    intro = Introduction("ab" * 16, "pi-kitchen", "cd" * 32, os.urandom(32))
    sealed = seal(key, intro.to_bytes())
    assert Introduction.from_bytes(open_sealed(key, sealed)) == intro
    assert intro.key not in sealed and b"pi-kitchen" not in sealed  # sealed, not signed
    assert seal(key, intro.to_bytes()) != sealed  # a fresh nonce each time
    for i in (0, 16, len(sealed) - 1):  # nonce, ciphertext, tag: each is covered
        bad = bytearray(sealed)
        bad[i] ^= 0x80
        with pytest.raises(RemoteProtocolError) as err:
            open_sealed(key, bytes(bad))
        assert err.value.status_code == 403
    with pytest.raises(RemoteProtocolError):
        open_sealed(os.urandom(32), sealed)
    for size in (0, 47, MAX_SEALED + 1):
        with pytest.raises(RemoteProtocolError):
            open_sealed(key, bytes(size))
    for raw in (b"[]", b"{}", b'{"id": "x", "name": "n", "cert": "", "key": "00"}',
                intro.to_bytes().replace(b"pi-kitchen", b"pi kitchen"), b"\xff"):
        with pytest.raises(RemoteProtocolError):
            Introduction.from_bytes(raw)
