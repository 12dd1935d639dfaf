"""Membership spreads (issue 15): pairing a new device with one of the swarm introduces it to
the swarm's other devices, found with real mDNS on a namespace LAN, and them to it; the
devices introduced then work for each other in a closed swarm.

Three hosts, each device with its own config directory: charlie is paired with alpha
beforehand; bravo is new. `swarm pair` on alpha admits bravo and introduces it to charlie.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from swarm_hosts import SWARM, Swarm
from test_closed import _clip, _pair

from chunker.verify import check_output
from media import decode_errors, media_info
from netns import lan, requires_netns
from peer.identity import Devices, load_identity

pytestmark = [pytest.mark.netns, requires_netns]

BUDGET_S = 180


def test_pairing_a_device_introduces_it_to_the_swarm_and_they_work_together(
        tmp_path: Path) -> None:
    alpha, bravo, charlie = (tmp_path / n for n in ("alpha", "bravo", "charlie"))
    for folder in (alpha, bravo, charlie):
        folder.mkdir()
    _pair(alpha, charlie, "alpha", "charlie")
    src = _clip(tmp_path / "src.mp4")
    out, rep = tmp_path / "out.mp4", tmp_path / "report.json"
    with lan(3, prefix="intro") as net, Swarm(net, tmp_path, BUDGET_S) as sw:
        ha, hb, hc = net.hosts
        jc = sw.join(hc, "charlie", "--port", "7800", closed=True,
                     env={"SWARM_CONFIG_DIR": str(charlie)})
        jb = sw.join(hb, "bravo", "--port", "7800", closed=True,
                     env={"SWARM_CONFIG_DIR": str(bravo)})
        jc.wait_for("ready on port")
        jb.wait_for("ready on port")
        m = re.search(r"swarm pair (\d{3}) (\d{3})", jb.stderr())
        assert m, jb.stderr()
        paired = ha.run([*SWARM, "pair", m.group(1), m.group(2), "--peer",
                         f"{hb.address}:7800", "--wait", "3"],
                        env=_env(alpha), timeout=sw.deadline.left(60), check=False)
        assert paired.returncode == 0, paired.stderr
        assert "introduced it to charlie, and them to it" in paired.stderr, paired.stderr
        # charlie's screen says who came in, by the name alpha knows it by (its identity's).
        bravo_id = load_identity(bravo).device_id
        jc.wait_for(f"paired with {Devices(alpha).devices[bravo_id].name} ({bravo_id[:8]})",
                    cap=30)
        # bravo coordinates now, closed, with charlie, whom it never paired with itself.
        enc = sw.encode(hb, src, out, "-p", "480p", "--chunk-seconds", "1", "--no-local",
                        "--no-mdns", "--peer", f"{hc.address}:7800", "--report", str(rep),
                        "--name", "bravo-coord", closed=True,
                        env={"SWARM_CONFIG_DIR": str(bravo)})
        assert enc.wait() == 0, enc.stderr()[-3000:]
    ib, ic = load_identity(bravo), load_identity(charlie)
    b_knows, c_knows = Devices(bravo).devices, Devices(charlie).devices
    assert set(b_knows) == {load_identity(alpha).device_id, ic.device_id}
    assert ib.device_id in c_knows
    assert b_knows[ic.device_id].key == c_knows[ib.device_id].key  # one key, both sides
    assert b_knows[ic.device_id].cert and c_knows[ib.device_id].cert  # TLS pins travel too
    report = json.loads(rep.read_text())
    assert {c["peer"] for c in report["chunks"]} == {"charlie"}
    check_output(media_info(out), media_info(src))
    assert decode_errors(out) == ""


def _env(folder: Path) -> dict[str, str]:
    from swarm_hosts import _env as base

    return base() | {"SWARM_CONFIG_DIR": str(folder)}
