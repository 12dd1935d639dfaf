"""Closed by default (issue 15): without --secret or --open, a swarm is the devices paired
with each other, and nothing else on the LAN takes part or learns anything of the job.

Real `swarm` processes on 127.0.0.1, each device with its own config directory (its
identity and pinned keys), paired beforehand as `swarm pair` would leave them (the pairing
itself is tests/test_pairing.py's). The HTTP requests an outsider would make are real ones.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from chunker.verify import check_output
from media import FFMPEG, decode_errors, media_info
from peer.identity import Devices, load_identity
from peer.tls import load_cert, pinned_context
from profiles import load_profile
from swarm import auth
from swarm.errors import AuthError
from swarm.pairing import Paired
from swarm.protocol import Invite, InviteReply, NodeInfo, decode, encode

REPO = Path(__file__).resolve().parent.parent
SWARM = [sys.executable, "-c", "import cli; cli.main()"]
BUDGET_S = 120


def _env(folder: Path) -> dict[str, str]:
    env = os.environ | {"PYTHONPATH": str(REPO), "SWARM_CONFIG_DIR": str(folder)}
    env.pop("SWARM_SECRET", None)
    return env


def _pair(a: Path, b: Path, name_a: str, name_b: str) -> None:
    """Pin each device for the other, as a finished `swarm pair` does."""
    ia, ib = load_identity(a), load_identity(b)
    key = secrets.token_bytes(32)
    Devices(a).add(Paired(ib.device_id, name_b, key, load_cert(b, ib.device_id).fingerprint))
    Devices(b).add(Paired(ia.device_id, name_a, key, load_cert(a, ia.device_id).fingerprint))


@contextmanager
def _join(folder: Path, name: str, *args: str) -> Iterator[tuple[int, Path, Path]]:
    """A `swarm join` of the device in ``folder``: its port, events file and stderr file."""
    events, err = folder / f"{name}.jsonl", folder / f"{name}.stderr"
    with open(events, "w") as out, open(err, "w") as e:
        proc = subprocess.Popen([*SWARM, "join", "--no-bench", "--port", "0", "--name", name,
                                 "--json", *args], env=_env(folder), stdout=out, stderr=e,
                                stdin=subprocess.DEVNULL, cwd=folder)
    try:
        deadline = time.monotonic() + 60
        while not events.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, err.read_text()
            time.sleep(0.1)
        up = json.loads(events.read_text().splitlines()[0])
        assert up["event"] == "node_up", up
        yield up["port"], events, err
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _clip(path: Path) -> Path:
    subprocess.run([FFMPEG, "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=size=320x240:rate=25:duration=4", "-f", "lavfi", "-i",
                    "sine=frequency=440:duration=4", "-c:v", "libx264", "-preset",
                    "veryfast", "-g", "25", "-c:a", "aac", "-shortest", str(path)],
                   check=True, timeout=60)
    return path


def _encode(folder: Path, src: Path, out: Path, *args: str, as_json: bool = True
            ) -> subprocess.CompletedProcess[str]:
    """``as_json``: events on stdout; else the plain screen on stderr (where what the job
    says of its swarm is)."""
    return subprocess.run([*SWARM, "encode", str(src), "-o", str(out), "-p", "480p",
                           "--chunk-seconds", "1", "--no-mdns",
                           *(["--json"] if as_json else []), *args],
                          env=_env(folder), capture_output=True, text=True, timeout=BUDGET_S,
                          stdin=subprocess.DEVNULL, cwd=folder)


def _events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _devices(tmp: Path, *names: str) -> list[Path]:
    folders = [tmp / n for n in names]
    for f in folders:
        f.mkdir()
    return folders


def test_a_closed_coordinator_gives_work_only_to_its_paired_peer(tmp_path: Path) -> None:
    alpha, bravo, charlie = _devices(tmp_path, "alpha", "bravo", "charlie")
    _pair(alpha, bravo, "alpha", "bravo")
    src = _clip(tmp_path / "src.mp4")
    out, rep = tmp_path / "out.mp4", tmp_path / "report.json"
    with _join(bravo, "bravo") as (pb, bev, berr), \
            _join(charlie, "charlie") as (pc, cev, cerr):
        res = _encode(alpha, src, out, "--no-local", "--report", str(rep),
                      "--peer", f"127.0.0.1:{pb}", "--peer", f"127.0.0.1:{pc}")
        # The unpaired device is told how to get in, and an outsider learns no job from it.
        with httpx.Client(timeout=5) as client:
            info = decode(client.get(f"http://127.0.0.1:{pc}/v1/info").content, NodeInfo)
    assert res.returncode == 0, res.stderr
    report = json.loads(rep.read_text())
    assert {c["peer"] for c in report["chunks"]} == {"bravo"}
    check_output(media_info(out), media_info(src))
    assert decode_errors(out) == ""
    foreign = [e for e in _events(res.stdout) if e["event"] == "peer_foreign"]
    assert [e["peer"] for e in foreign] == ["charlie"], foreign
    assert "not paired" in foreign[0]["why"] and "swarm pair" in foreign[0]["why"]
    # Over TLS, to the certificate bravo pinned when it paired (peer.tls): the source, the
    # claims and the results; the invite came over plain HTTP, signed with the pairing.
    (joined,) = [e for e in _events(bev.read_text()) if e["event"] == "job_joined"]
    assert joined["coordinator"].startswith("https://127.0.0.1:"), joined
    # charlie never heard of the job: no invite reached it, nothing it could claim.
    assert not [e for e in _events(cev.read_text()) if e["event"] == "job_joined"]
    said = cerr.read_text()
    assert "waiting to be paired" in said and "swarm pair" in said, said
    assert "closed: works only for the 1 device paired with it" in berr.read_text()
    assert info.closed and info.device_id == load_identity(charlie).device_id


def test_a_closed_peer_refuses_whoever_is_not_paired_with_it(tmp_path: Path) -> None:
    """Unsigned, secret-signed and wrongly paired invites to a closed `swarm join` are 401;
    /v1/info says it is closed and names no job; an open coordinator does not use it."""
    bravo, mallory, alpha = _devices(tmp_path, "bravo", "mallory", "alpha")
    _pair(alpha, bravo, "alpha", "bravo")
    ident_m = load_identity(mallory)
    with _join(bravo, "bravo") as (pb, bev, _):
        base = f"http://127.0.0.1:{pb}"
        # A coordinator at port 9 of loopback never answers: an accepted invite is dropped.
        fields = {**load_profile("480p").to_wire(), "out_width": 320, "out_height": 240,
                  "out_gop": 50}
        invite = Invite("closedJob01", "http://127.0.0.1:9", fields, "n0nce-n0nce")
        body = encode(invite)
        digest = auth.body_digest(body)
        stranger = auth.PairKey(ident_m.device_id, secrets.token_bytes(32))
        ia = load_identity(alpha)
        paired = auth.PairKey(ia.device_id, Devices(alpha).devices[
            load_identity(bravo).device_id].key)
        tries = {
            "unsigned": {},
            "a secret": auth.sign("some-secret", "POST", "/v1/invite", time.time(), digest),
            "an unpaired device": auth.sign(stranger, "POST", "/v1/invite", time.time(),
                                            digest),
        }
        with httpx.Client(timeout=5) as client:
            for what, headers in tries.items():
                r = client.post(f"{base}/v1/invite", content=body,
                                headers={"content-type": "application/msgpack", **headers})
                assert r.status_code == 401, (what, r.status_code, r.text)
            info = decode(client.get(f"{base}/v1/info").content, NodeInfo)
            assert info.closed and info.job_id is None and not info.working_for
        # The control: the same invite signed with the pairing is taken, and its reply
        # proves the pairing to the coordinator; it goes, as a closed coordinator sends it,
        # over TLS to the certificate pinned at pairing (none other is accepted).
        assert info.tls_port and info.tls_port != pb
        pin = Devices(alpha).cert_for(info.device_id)
        assert pin is not None
        with httpx.Client(timeout=5, verify=pinned_context([pin])) as client:
            r = client.post(f"https://127.0.0.1:{info.tls_port}/v1/invite", content=body,
                            headers={"content-type": "application/msgpack",
                                     **auth.sign(paired, "POST", "/v1/invite", time.time(),
                                                 digest)})
            assert r.status_code == 200, r.text
            ack = decode(r.content, InviteReply)
            auth.check_reply_proof(paired, ack.proof, invite.nonce, InviteReply.TYPE,
                                   invite.job_id, ack.node_id, "accepted")
            with pytest.raises(AuthError):
                auth.check_reply_proof(stranger, ack.proof, invite.nonce, InviteReply.TYPE,
                                       invite.job_id, ack.node_id, "accepted")
        src = _clip(tmp_path / "src.mp4")
        res = _encode(mallory, src, tmp_path / "o.mp4", "--open", "-w", "1",
                      "--peer", f"127.0.0.1:{pb}")
        assert res.returncode == 0, res.stderr
        foreign = [e for e in _events(res.stdout) if e["event"] == "peer_foreign"]
        assert [e["peer"] for e in foreign] == ["bravo"], foreign
        assert "closed" in foreign[0]["why"] and "--open" in foreign[0]["why"]
        joined = [e for e in _events(bev.read_text()) if e["event"] == "job_joined"]
        assert [e["job_id"] for e in joined] == [invite.job_id]  # the paired one's only


def test_closed_mistakes_are_refused_at_once(tmp_path: Path) -> None:
    alone, _other = _devices(tmp_path, "alone", "other")
    src = _clip(tmp_path / "src.mp4")
    both = _encode(alone, src, tmp_path / "o.mp4", "--open", "--secret", "s3cret")
    assert both.returncode == 2 and "contradict" in both.stderr, both.stderr
    nobody = _encode(alone, src, tmp_path / "o.mp4", "--no-local")
    assert nobody.returncode == 2 and "paired with no other" in nobody.stderr, nobody.stderr
    assert not (tmp_path / "o.mp4").exists()
    # No config directory for an identity: closed cannot work, and says what to do.
    env = {k: v for k, v in _env(alone).items()
           if k not in ("SWARM_CONFIG_DIR", "HOME", "XDG_CONFIG_HOME")}
    res = subprocess.run([*SWARM, "join", "--no-bench", "--port", "0"], env=env,
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode == 2 and "SWARM_CONFIG_DIR" in res.stderr, res.stderr
    # Alone and closed, an encode still runs here, and says why no peer will come.
    ok = _encode(alone, src, tmp_path / "here.mp4", "-w", "1", as_json=False)
    assert ok.returncode == 0, ok.stderr
    assert "paired with no other: only it encodes" in ok.stderr
    _pair(alone, tmp_path / "other", "alone", "other")
    two = _encode(alone, src, tmp_path / "two.mp4", "-w", "1", as_json=False)
    assert two.returncode == 0, two.stderr
    assert "closed swarm: only the 1 device paired with this one" in two.stderr
    opened = _encode(alone, src, tmp_path / "open.mp4", "-w", "1", "--open", as_json=False)
    assert opened.returncode == 0, opened.stderr
    assert "open swarm (--open): any device on this LAN may take part" in opened.stderr
