"""No one believed blindly: invite addresses, proven invite replies, honest errors at once.

The rules are pure (swarm.trust, swarm.auth) and tested as such; the nodes that apply them
run over real HTTP on this machine's addresses, and the CLI as a real process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import trio

from chunker.tools import find_ffmpeg
from peer.coordinator import run_encode
from peer.lan import lan_address
from peer.node import Node, NodeConfig
from peer.options import EncodeOptions, JobIntent, LocalSettings, NetworkSettings, Tuning
from profiles import load_profile
from swarm import auth
from swarm.config import Timings
from swarm.errors import AuthError, EncodeError
from swarm.events import JobEvent, PeerForeign, PeerJoined
from swarm.protocol import Invite, InviteReply, NodeInfo, decode, encode
from swarm.trust import Census, invite_address_problem, same_sender

REPO = Path(__file__).resolve().parent.parent
SWARM = [sys.executable, "-c", "import cli; cli.main()"]
FIELDS = load_profile("hd").to_wire() | {"out_width": 320, "out_height": 240, "out_gop": 50}


# -- the invite-address rule (pure) ---------------------------------------------------------

@pytest.mark.parametrize(("url", "sender"), [
    ("http://192.168.1.20:7800", "192.168.1.20"),
    ("http://127.0.0.1:9999", "127.0.0.1"),  # a coordinator beside `swarm join`
    ("http://127.0.0.1:7800", "127.0.0.2"),  # loopback is one machine, whichever address
    ("http://[::1]:7800", "127.0.0.1"),
    ("http://10.0.0.5:7800", "::ffff:10.0.0.5"),  # an IPv4 client on a dual-stack socket
    ("http://[fe80::1%25eth0]:7800", "fe80::1"),
])
def test_an_invite_from_the_coordinator_itself_is_believed(url: str, sender: str) -> None:
    assert invite_address_problem(url, sender) is None


@pytest.mark.parametrize(("url", "sender", "why"), [
    ("http://127.0.0.1:9999", "192.168.1.7", "came from 192.168.1.7"),  # the case
    ("http://192.168.1.20:7800", "192.168.1.7", "came from"),
    ("http://192.168.1.20:7800", "127.0.0.1", "came from"),
    ("http://nas.local:7800", "192.168.1.20", "by name"),
    ("http://localhost:7800", "127.0.0.1", "by name"),
    ("http://192.168.1.20:7800", "", "unknown"),
])
def test_an_invite_naming_another_host_is_refused(url: str, sender: str, why: str) -> None:
    problem = invite_address_problem(url, sender)
    assert problem is not None and why in problem


def test_names_and_garbage_are_never_the_sender() -> None:
    assert not same_sender("example.com", "93.184.216.34")
    assert not same_sender("1.2.3.4", "not an address")


# -- reply proofs (pure) --------------------------------------------------------------------

def test_a_reply_proof_binds_secret_nonce_and_answer() -> None:
    proof = auth.reply_proof("s3cret", "nonce-abc", "invite_reply", "job12345", "ab12cd34",
                             "accepted")
    assert proof is not None
    auth.check_reply_proof("s3cret", proof, "nonce-abc", "invite_reply", "job12345",
                           "ab12cd34", "accepted")
    with pytest.raises(AuthError, match="another secret"):
        auth.check_reply_proof("other", proof, "nonce-abc", "invite_reply", "job12345",
                               "ab12cd34", "accepted")
    with pytest.raises(AuthError):  # a recorded reply to another invite
        auth.check_reply_proof("s3cret", proof, "nonce-xyz", "invite_reply", "job12345",
                               "ab12cd34", "accepted")
    with pytest.raises(AuthError):  # another node's reply
        auth.check_reply_proof("s3cret", proof, "nonce-abc", "invite_reply", "job12345",
                               "ffffffff", "accepted")
    with pytest.raises(AuthError, match="not signed"):
        auth.check_reply_proof("s3cret", None, "nonce-abc", "invite_reply")
    with pytest.raises(AuthError, match="malformed"):
        auth.check_reply_proof("s3cret", "zz" * 32, "nonce-abc", "invite_reply")
    with pytest.raises(AuthError, match="malformed"):  # a part that holds the separator
        auth.check_reply_proof("s3cret", proof, "nonce-abc\ninvite_reply")
    assert auth.reply_proof(None, "nonce-abc", "x") is None
    auth.check_reply_proof(None, None, "nonce-abc", "x")  # open: nothing to prove


# -- the census line (pure) -----------------------------------------------------------------

def test_the_census_says_what_was_found_and_why_it_is_unused() -> None:
    c = Census()
    assert c.summary() == "found no devices"
    c.saw("a1", "pi-kitchen", "ok")
    assert c.summary() == "found 1 device: 1 of this swarm"
    c.saw("b2", "nas-1", "foreign-secret")
    c.saw("c3", "nas-2", "foreign-secret")
    assert c.summary() == ("found 3 devices: 1 of this swarm, 2 of another swarm (nas-1, "
                           "nas-2: they were started with another --secret, or none)")
    assert c.usable == 1
    c.saw("a1", "pi-kitchen", "unproven")  # the latest verdict counts
    assert c.usable == 0 and "1 not proven members (pi-kitchen" in c.summary()
    for i in range(6):
        c.saw(f"d{i}", f"tv-{i}", "wizard")  # a kind this module does not know yet
    assert "6 wizard (tv-0, tv-1, tv-2, tv-3 and 2 more)" in c.summary()
    c.forget("b2")
    assert "1 of another swarm (nas-2" in c.summary()


# -- nodes over real HTTP -------------------------------------------------------------------

async def _peer(nursery: trio.Nursery, name: str, secret: str | None, host: str = "127.0.0.1"
                ) -> Node:
    node = Node(NodeConfig(name=name, port=0, host=host, secret=secret, advertise=False,
                           serve_pyz=False), find_ffmpeg())
    await nursery.start(node.run)
    return node


async def _post_invite(base: str, invite: Invite, secret: str | None) -> httpx.Response:
    body = encode(invite)
    headers = auth.sign(secret, "POST", "/v1/invite", time.time(), auth.body_digest(body))
    async with httpx.AsyncClient() as client:
        return await client.post(f"{base}/v1/invite", content=body, headers=headers)


async def test_an_invite_to_loopback_from_the_lan_is_403_and_the_node_stays_idle() -> None:
    lan = lan_address()
    if lan.startswith("127."):
        pytest.skip("this machine has no non-loopback address")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            node = await _peer(nursery, "victim", None, host="0.0.0.0")
            # Sent from the LAN address, naming the node's own loopback: the attack.
            r = await _post_invite(f"http://{lan}:{node.port}",
                                   Invite("job12345", "http://127.0.0.1:9999", FIELDS,
                                          "nonce-123"), None)
            assert r.status_code == 403 and "came from" in r.text
            r = await _post_invite(f"http://{lan}:{node.port}",
                                   Invite("job12345", "http://192.0.2.1:9999", FIELDS,
                                          "nonce-123"), None)
            assert r.status_code == 403
            async with httpx.AsyncClient() as client:
                info = decode((await client.get(f"http://{lan}:{node.port}/v1/info")).content,
                              NodeInfo)
            assert info.state == "idle" and info.job_id is None
            # The same invite over loopback names the sender's own machine: believed.
            r = await _post_invite(f"http://127.0.0.1:{node.port}",
                                   Invite("job12345", "http://127.0.0.1:9", FIELDS, "nonce-12"),
                                   None)
            assert r.status_code == 200 and decode(r.content, InviteReply).accepted
            nursery.cancel_scope.cancel()


async def test_a_member_proves_its_secret_in_the_invite_reply() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            member = await _peer(nursery, "member", "right")
            opened = await _peer(nursery, "open", None)
            invite = Invite("job12345", "http://127.0.0.1:9", FIELDS, "nonce-fresh1")
            r = await _post_invite(f"http://127.0.0.1:{member.port}", invite, "right")
            reply = decode(r.content, InviteReply)
            assert reply.accepted and reply.node_id == member.node_id
            auth.check_reply_proof("right", reply.proof, invite.nonce, InviteReply.TYPE,
                                   invite.job_id, member.node_id, "accepted")
            # An open node takes the signed invite too, but cannot prove anything.
            r = await _post_invite(f"http://127.0.0.1:{opened.port}", invite, "right")
            reply = decode(r.content, InviteReply)
            assert reply.accepted and reply.proof is None
            with pytest.raises(AuthError):
                auth.check_reply_proof("right", reply.proof, invite.nonce, InviteReply.TYPE,
                                       invite.job_id, opened.node_id, "accepted")
            nursery.cancel_scope.cancel()


async def test_a_coordinator_counts_only_proven_members_and_names_the_others_at_once(
        corpus: dict[str, Path], tmp_path: Path) -> None:
    events: list[tuple[float, JobEvent]] = []
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            good = await _peer(nursery, "good", "right")
            other = await _peer(nursery, "nas-1", "wrong")
            opened = await _peer(nursery, "open-one", None)
            t0 = trio.current_time()
            opts = EncodeOptions(
                JobIntent(str(corpus["closed_gop"]), str(tmp_path / "o.mp4"),
                          load_profile("hd"), chunk_seconds=0.5),
                LocalSettings(no_local=True),
                NetworkSettings(enabled=True, discover=False, name="coord", secret="right",
                                peers=tuple(f"127.0.0.1:{n.port}"
                                            for n in (good, other, opened))))
            report = await run_encode(opts, lambda e: events.append(
                (trio.current_time() - t0, e)))
            nursery.cancel_scope.cancel()
    assert {c["peer"] for c in report["chunks"]} == {"good"}
    joined = {e.peer for _, e in events if isinstance(e, PeerJoined)}
    assert joined == {"good"}  # the open node accepted, but was not counted
    foreign = {e.peer: (t, e.why) for t, e in events if isinstance(e, PeerForeign)}
    assert foreign["nas-1"][1] == "it has another secret"
    assert "not a member of this swarm" in foreign["open-one"][1]
    assert foreign["nas-1"][0] < 5 and foreign["open-one"][0] < 5  # at once, not after 60 s


async def test_a_job_that_found_only_foreign_devices_says_so(corpus: dict[str, Path],
                                                             tmp_path: Path) -> None:
    events: list[JobEvent] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            other = await _peer(nursery, "nas-1", "wrong")
            opts = EncodeOptions(
                JobIntent(str(corpus["closed_gop"]), str(tmp_path / "o.mp4"),
                          load_profile("hd"), chunk_seconds=0.5),
                LocalSettings(no_local=True),
                NetworkSettings(enabled=True, discover=False, name="coord", secret="right",
                                peers=(f"127.0.0.1:{other.port}",)),
                tuning=Tuning(timings=Timings(stall_s=3.0)))
            message = ""
            try:
                await run_encode(opts, events.append)
            except* EncodeError as group:
                message = str(_leaves(group)[0])
            nursery.cancel_scope.cancel()
    assert "found 1 device: 1 of another swarm (nas-1" in message
    assert any(isinstance(e, PeerForeign) and e.peer == "nas-1" for e in events)


def _leaves(group: BaseException) -> list[BaseException]:
    if isinstance(group, BaseExceptionGroup):
        return [leaf for e in group.exceptions for leaf in _leaves(e)]
    return [group]


# -- empty secrets (real processes) ---------------------------------------------------------

def _swarm(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "SWARM_SECRET"}
    full |= {"PYTHONPATH": str(REPO), **env}
    return subprocess.run([*SWARM, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env=full)


@pytest.mark.parametrize(("args", "env"), [
    (["encode", "in.mp4", "--secret", ""], {}),
    (["encode", "in.mp4", "--local-only", "--secret", ""], {}),
    (["encode", "in.mp4"], {"SWARM_SECRET": ""}),
    (["join", "--no-bench", "--port", "0", "--secret", ""], {}),
    (["join", "--no-bench", "--port", "0"], {"SWARM_SECRET": ""}),
    (["join", "--no-bench", "--port", "0", "--secret", "  "], {}),
])
def test_an_empty_secret_is_refused_with_exit_2_before_anything_runs(
        args: list[str], env: dict[str, str], tmp_path: Path) -> None:
    # in.mp4 does not exist: the refusal must come before the input is even looked at.
    res = _swarm(args, env, tmp_path)
    assert res.returncode == 2, res.stderr
    assert "secret is empty" in res.stderr
    assert "no such file" not in res.stderr
