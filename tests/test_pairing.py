"""Pairing over real HTTP: a node showing a code, a device running the initiator, each with
its own config dir; then requests signed with the per-pair key."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from chunker.tools import find_ffmpeg
from peer.identity import Devices, load_identity
from peer.node import Node, NodeConfig
from peer.pairing import INTRODUCE_ROUTE, PairingService, pair_with
from peer.tls import load_cert
from swarm import auth, pairing
from swarm.introduce import Introduction, seal
from swarm.pairing import MAX_ATTEMPTS, PairingFailed
from swarm.protocol import Invite, encode


async def _door_node(nursery: trio.Nursery, folder: Path, codes: list[str],
                     secret: str | None = None) -> Node:
    service = PairingService(folder, load_identity(folder), on_code=codes.append)
    node = Node(NodeConfig(name="newdev", port=0, host="127.0.0.1", secret=secret,
                           advertise=False, serve_pyz=False, pairing=service), find_ffmpeg())
    await nursery.start(node.run)
    return node


def _invite() -> bytes:
    return encode(Invite("job12345", "http://127.0.0.1:9", {"name": "x"}, "nonce-123"))


async def test_pair_then_sign_with_the_pair_key(tmp_path: Path) -> None:
    new_dir, old_dir = tmp_path / "new", tmp_path / "old"
    codes: list[str] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            node = await _door_node(nursery, new_dir, codes, secret="s")
            base = f"http://127.0.0.1:{node.port}"
            old = load_identity(old_dir)
            new = load_identity(new_dir)
            async with httpx.AsyncClient() as client:
                dev = await pair_with(client, base, codes[-1], old, old_dir)
                assert dev.device_id == new.device_id
                mine = Devices(old_dir).devices[new.device_id]
                theirs = Devices(new_dir).devices[old.device_id]
                assert mine.key == theirs.key and len(mine.key) == 32
                # Each pinned the other's TLS certificate, as it is on the other's disk.
                assert mine.cert == load_cert(new_dir, new.device_id).fingerprint
                assert theirs.cert == load_cert(old_dir, old.device_id).fingerprint
                # Paired: the door is shut, the code pairs no one else.
                r = await client.post(f"{base}/v1/pair/start", json={})
                assert r.status_code == 404

                body = _invite()
                r = await client.post(f"{base}/v1/invite", content=body)
                assert r.status_code == 401  # unsigned, with a secret set
                headers = auth.sign_device(mine.key, old.device_id, "POST", "/v1/invite",
                                           time.time(), auth.body_digest(body))
                r = await client.post(f"{base}/v1/invite", content=body, headers=headers)
                assert r.status_code == 422, r.text  # past auth: the profile is refused
                forged = auth.sign_device(b"x" * 32, old.device_id, "POST", "/v1/invite",
                                          time.time(), auth.body_digest(body))
                r = await client.post(f"{base}/v1/invite", content=body, headers=forged)
                assert r.status_code == 401
                # Revoked in another process's way (devices.json changes): refused at once.
                await trio.sleep(0.01)  # a distinct mtime on coarse file systems
                Devices(new_dir).revoke(old.device_id[:8])
                headers = auth.sign_device(mine.key, old.device_id, "POST", "/v1/invite",
                                           time.time(), auth.body_digest(body))
                r = await client.post(f"{base}/v1/invite", content=body, headers=headers)
                assert r.status_code == 401 and "not paired" in r.text
            nursery.cancel_scope.cancel()


async def test_wrong_codes_are_bounded_and_the_code_changes(tmp_path: Path) -> None:
    codes: list[str] = []
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            node = await _door_node(nursery, tmp_path / "new", codes)
            base = f"http://127.0.0.1:{node.port}"
            me = load_identity(tmp_path / "old")
            first = codes[-1]
            wrong = f"{(int(first) + 1) % 10 ** 6:06d}"
            async with httpx.AsyncClient() as client:
                for _ in range(MAX_ATTEMPTS):
                    with pytest.raises(PairingFailed) as exc:
                        await pair_with(client, base, wrong, me, tmp_path / "old")
                    assert exc.value.status_code == 403
                    await trio.sleep(pairing.MIN_START_INTERVAL_S)
                assert len(codes) == 2 and codes[-1] != first  # burnt: a new code is shown
                with pytest.raises(PairingFailed):
                    await pair_with(client, base, first, me, tmp_path / "old")
                # Too fast: the door says so rather than spending an attempt.
                with pytest.raises(PairingFailed) as fast:
                    await pair_with(client, base, codes[-1], me, tmp_path / "old")
                assert fast.value.status_code == 429
                await trio.sleep(pairing.MIN_START_INTERVAL_S)
                await pair_with(client, base, codes[-1], me, tmp_path / "old")
            assert Devices(tmp_path / "old").devices
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("GET", "/v1/pair/start", b"", 405),
    ("POST", "/v1/pair/start", b"not json", 400),
    ("POST", "/v1/pair/start", b"[1, 2]", 400),
    ("POST", "/v1/pair/start", json.dumps({"device_id": "a" * 32, "name": "x",
                                           "element": "1"}).encode(), 400),
    ("POST", "/v1/pair/start", b"{" + b" " * 5000 + b"}", 413),
    ("POST", "/v1/pair/finish", json.dumps({"session": "s" * 20,
                                            "confirm": "0" * 64}).encode(), 404),
    ("POST", "/v1/pair/finish", b"{}", 400),
])
async def test_bad_pairing_requests_get_4xx(tmp_path: Path, method: str, path: str,
                                            body: bytes, status: int) -> None:
    codes: list[str] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            node = await _door_node(nursery, tmp_path, codes)
            base = f"http://127.0.0.1:{node.port}"
            async with httpx.AsyncClient() as client:
                r = await client.request(method, base + path, content=body)
                assert r.status_code == status, r.text
                assert (await client.get(f"{base}/v1/info")).status_code == 200
            door = node.config.pairing.door if node.config.pairing else None
            assert door is not None and door.attempts_left == MAX_ATTEMPTS  # none spent
            nursery.cancel_scope.cancel()


SWARM = [sys.executable, "-c", "import cli; cli.main()"]
REPO = Path(__file__).resolve().parent.parent


def _env(folder: Path) -> dict[str, str]:
    return os.environ | {"PYTHONPATH": str(REPO), "SWARM_CONFIG_DIR": str(folder),
                         "TERM": "dumb"}


def _swarm(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SWARM, *args], capture_output=True, text=True, timeout=120,
                          env=_env(folder), stdin=subprocess.DEVNULL)


def test_join_shows_a_code_and_swarm_pair_admits_it(tmp_path: Path) -> None:
    new_dir, old_dir = tmp_path / "new", tmp_path / "old"
    join = subprocess.Popen([*SWARM, "join", "--no-bench", "--port", "0", "--name", "newdev"],
                            env=_env(new_dir), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert join.stderr is not None
    try:
        code = port = None
        seen = []
        deadline = time.monotonic() + 90
        while (code is None or port is None) and time.monotonic() < deadline:
            line = join.stderr.readline()
            assert line, "".join(seen)
            seen.append(line)
            if m := re.search(r"swarm pair (\d{3}) (\d{3})", line):
                code = m.group(1) + " " + m.group(2)
            if m := re.search(r"ready on port (\d+)", line):
                port = int(m.group(1))
        assert code and port, "".join(seen)
        wrong = f"{(int(code.replace(' ', '')) + 1) % 10 ** 6:06d}"
        bad = _swarm(old_dir, "pair", wrong, "--peer", f"127.0.0.1:{port}")
        assert bad.returncode == 1 and "wrong code" in bad.stderr, bad.stderr
        assert _swarm(old_dir, "pair", "12", "--peer", "127.0.0.1:1").returncode == 2
        time.sleep(pairing.MIN_START_INTERVAL_S)
        ok = _swarm(old_dir, "pair", *code.split(), "--peer", f"127.0.0.1:{port}")
        assert ok.returncode == 0, ok.stderr
        assert "paired with" in ok.stderr
    finally:
        join.terminate()
        rest = join.communicate(timeout=60)[1]
    assert "paired with" in rest  # the new device's screen says so
    old = json.loads(_swarm(old_dir, "devices", "list", "--json").stdout)
    new = json.loads(_swarm(new_dir, "devices", "list", "--json").stdout)
    assert [d["id"] for d in old["paired"]] == [new["this_device"]["id"]]
    assert [d["id"] for d in new["paired"]] == [old["this_device"]["id"]]
    assert "key" not in json.dumps(old)  # keys are never printed
    renamed = _swarm(old_dir, "devices", "rename", old["paired"][0]["id"][:8], "kitchen")
    assert renamed.returncode == 0, renamed.stderr
    listed = _swarm(old_dir, "devices", "list")
    assert "kitchen" in listed.stdout
    assert _swarm(old_dir, "devices", "revoke", "nosuch").returncode == 2
    assert _swarm(old_dir, "devices", "revoke", "kitchen").returncode == 0
    assert json.loads(_swarm(old_dir, "devices", "list", "--json").stdout)["paired"] == []


def _mutations(rng: random.Random, valid: dict[str, Any]) -> Iterator[bytes]:
    """Bodies near a valid one: fields dropped, added, retyped, stretched; and raw bytes."""
    odd: list[Any] = [None, True, 0, -1, 2 ** 80, 1.5, float("inf"), "", "é" * 40, [], {},
                      [1] * 50, {"a": {"b": {}}}, "0" * 600, "A" * 32, "/../etc/passwd"]
    for _ in range(120):
        body = dict(valid)
        kind = rng.randrange(5)
        key = rng.choice(list(body))
        if kind == 0:
            del body[key]
        elif kind == 1:
            body[rng.choice(["x", "v", key + " "])] = rng.choice(odd)
        elif kind == 2:
            body[key] = rng.choice(odd)
        elif kind == 3:
            body[key] = str(body[key]) * rng.randint(2, 8)
        else:
            yield bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
            continue
        try:
            yield json.dumps(body).encode()
        except ValueError:  # inf is not JSON; send Python's spelling anyway
            yield repr(body).encode()


async def test_fuzzed_pairing_bodies_get_4xx_and_the_door_keeps_working(tmp_path: Path
                                                                        ) -> None:
    codes: list[str] = []
    rng = random.Random(15)
    me = load_identity(tmp_path / "old")
    init = pairing.Initiator("123456", me.device_id, me.name,
                             load_cert(tmp_path / "old", me.device_id).fingerprint)
    finish = {"session": "s" * 24, "confirm": "0" * 64}
    statuses: set[int] = set()
    with trio.fail_after(240):
        async with trio.open_nursery() as nursery:
            node = await _door_node(nursery, tmp_path / "new", codes)
            base = f"http://127.0.0.1:{node.port}"
            async with httpx.AsyncClient(timeout=30) as client:
                for path, valid in (("/v1/pair/start", init.start_body()),
                                    ("/v1/pair/finish", finish)):
                    for body in _mutations(rng, valid):
                        r = await client.post(base + path, content=body)
                        assert r.status_code < 500, (path, body[:100], r.text)
                        if r.status_code == 200:  # a mutation that is still a valid start
                            pairing.parse_start(json.loads(body))
                        statuses.add(r.status_code)
                await trio.sleep(pairing.MIN_START_INTERVAL_S)
                # The door still pairs with the right code afterwards.
                await pair_with(client, base, codes[-1], me, tmp_path / "old")
            nursery.cancel_scope.cancel()
    assert statuses <= {200, 400, 404, 413, 429} and 400 in statuses


async def test_introductions_are_taken_only_sealed_and_signed_by_a_paired_device(
        tmp_path: Path) -> None:
    """/v1/pair/introduce (swarm.introduce): fuzzed, tampered, unsigned and foreign
    introductions get 4xx and pin nothing; the real one pins the device; an existing
    pairing is never replaced."""
    folder, friend_dir = tmp_path / "node", tmp_path / "friend"
    me, friend = load_identity(folder), load_identity(friend_dir)
    key = os.urandom(32)
    Devices(folder).add(pairing.Paired(friend.device_id, "friend", key, ""))
    newcomer = Introduction("ab" * 16, "newcomer", "cd" * 32, os.urandom(32))
    rng = random.Random(16)
    statuses: set[int] = set()

    def signed(body: bytes, as_key: bytes = key, device: str = friend.device_id
               ) -> dict[str, str]:
        return {**auth.sign_device(as_key, device, "POST", INTRODUCE_ROUTE, time.time(),
                                   auth.body_digest(body)), "content-type": "application/json"}

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            node = await _door_node(nursery, folder, [])
            url = f"http://127.0.0.1:{node.port}{INTRODUCE_ROUTE}"
            sealed = seal(key, newcomer.to_bytes())
            valid = {"sealed": sealed.hex()}
            async with httpx.AsyncClient(timeout=30) as client:
                for body in _mutations(rng, valid):
                    for headers in (signed(body), {}):
                        r = await client.post(url, content=body, headers=headers)
                        assert r.status_code < 500, (body[:100], r.text)
                        statuses.add(r.status_code)
                        if r.status_code == 200:  # the valid body itself, signed
                            assert json.loads(body) == valid and headers
                held = Devices(folder)
                if newcomer.device_id in held.devices:  # the fuzzing's valid body took it
                    held.revoke(newcomer.device_id)
                flipped = bytearray(sealed)
                flipped[20] ^= 1
                tries = [
                    (json.dumps({"sealed": bytes(flipped).hex()}).encode(), None, 403),
                    (json.dumps(valid).encode(), os.urandom(32), 401),  # not the pair key
                    (json.dumps({"sealed": seal(os.urandom(32), newcomer.to_bytes()).hex()}
                                ).encode(), None, 403),  # sealed with another key
                ]
                for body, as_key, status in tries:
                    r = await client.post(url, content=body,
                                          headers=signed(body, as_key or key))
                    assert r.status_code == status, r.text
                assert newcomer.device_id not in Devices(folder).devices
                body = json.dumps(valid).encode()
                r = await client.post(url, content=body, headers=signed(body))
                assert r.status_code == 200, r.text
                pinned = Devices(folder).devices[newcomer.device_id]
                assert (pinned.key, pinned.cert) == (newcomer.key, newcomer.cert)
                # A second introduction of the same device, with another key: refused.
                other = Introduction(newcomer.device_id, "newcomer", "", os.urandom(32))
                body = json.dumps({"sealed": seal(key, other.to_bytes()).hex()}).encode()
                r = await client.post(url, content=body, headers=signed(body))
                assert r.status_code == 409, r.text
                assert Devices(folder).devices[newcomer.device_id].key == newcomer.key
                assert (await client.get(f"http://127.0.0.1:{node.port}/v1/info")
                        ).status_code == 200
            nursery.cancel_scope.cancel()
    assert me.device_id != friend.device_id
    assert statuses <= {200, 400, 401, 403, 409, 413} and {400, 401} <= statuses
