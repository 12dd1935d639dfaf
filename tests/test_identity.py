"""peer.identity: the device's key pair and devices.json, in the test's own config dir."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from peer import identity
from peer.identity import Devices, load_identity
from swarm.config import Environment
from swarm.errors import UsageError
from swarm.pairing import Paired


def _where(env: dict[str, str]) -> Path | None:
    return Environment.from_environ(env).config_dir


def test_every_test_has_its_own_config_dir(config_dir: Path) -> None:
    assert _where(dict(os.environ)) == config_dir
    assert not str(config_dir).startswith(str(Path.home() / ".config"))


def test_config_dir_fallbacks(tmp_path: Path) -> None:
    assert _where({"SWARM_CONFIG_DIR": "/c", "XDG_CONFIG_HOME": "/x"}) == Path("/c")
    assert _where({"XDG_CONFIG_HOME": "/x", "HOME": "/h"}) == Path("/x/swarm")
    assert _where({"XDG_CONFIG_HOME": "rel", "HOME": "/h"}) == Path("/h/.config/swarm")
    assert _where({}) is None


def test_identity_is_made_once_private_and_stable(config_dir: Path) -> None:
    first = load_identity(config_dir)
    path = config_dir / "identity.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(config_dir.stat().st_mode) in (0o700, 0o755)  # tmp made it already
    assert load_identity(config_dir) == first
    assert len(first.device_id) == 32 and first.name
    assert [p.name for p in config_dir.iterdir()] == ["identity.json"]  # no temporary left


def test_a_damaged_identity_is_an_error_not_replaced(config_dir: Path) -> None:
    load_identity(config_dir)
    path = config_dir / "identity.json"
    raw = json.loads(path.read_text())
    raw["device_id"] = "0" * 32
    path.write_text(json.dumps(raw))
    with pytest.raises(UsageError, match="damaged"):
        load_identity(config_dir)
    path.write_text("{not json")
    with pytest.raises(UsageError, match="cannot read"):
        load_identity(config_dir)
    assert path.read_text() == "{not json"


def test_devices_add_rename_revoke(config_dir: Path) -> None:
    devs = Devices(config_dir)
    assert devs.devices == {}
    a = devs.add(Paired("a" * 32, "pi", b"k" * 32, "c" * 64), now=5.0)
    b = devs.add(Paired("b" * 32, "pi", b"j" * 32, "d" * 64), now=6.0)
    assert a.name == "pi" and b.name == "pi-bbbbbbbb"  # names keep devices apart
    path = config_dir / "devices.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = Devices(config_dir)
    assert again.key_for("a" * 32) == b"k" * 32 and again.devices["b" * 32].added == 6.0
    again.rename("pi", "kitchen")
    with pytest.raises(UsageError, match="already called"):
        again.rename("bbbb", "kitchen")
    assert Devices(config_dir).find("aaaa").name == "kitchen"
    assert Devices(config_dir).revoke("kitchen").device_id == "a" * 32
    left = Devices(config_dir)
    assert left.key_for("a" * 32) is None and list(left.devices) == ["b" * 32]
    with pytest.raises(UsageError, match="no paired device"):
        left.find("kitchen")


def test_damaged_devices_file(config_dir: Path) -> None:
    (config_dir / "devices.json").write_text('{"version": 1, "devices": [{"id": "x"}]}')
    with pytest.raises(UsageError, match="damaged"):
        Devices(config_dir)


def test_write_private_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "d"
    target.mkdir()
    with pytest.raises(IsADirectoryError):
        identity.write_private(target, b"x")  # os.replace over a directory fails
    assert os.listdir(tmp_path) == ["d"] and os.listdir(target) == []


def _identity_and_cert(folder: str) -> tuple[str, str]:
    from peer.tls import load_cert

    ident = load_identity(Path(folder))
    return ident.device_id, load_cert(Path(folder), ident.device_id).fingerprint


def test_processes_starting_at_once_on_one_config_dir_agree_on_its_identity(
        tmp_path: Path) -> None:
    """Two `swarm join`s (or a join and an encode) started together on a fresh config dir:
    before, each wrote its own identity and certificate over the other's, one ran with a
    key the files no longer held, and one read a certificate with another's key (OpenSSL
    reads the file twice) and stopped: "tls.pem is damaged"."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # fresh interpreters, as processes start
    for k in range(4):
        folder = tmp_path / f"cfg{k}"
        with ctx.Pool(4) as pool:
            seen = pool.map(_identity_and_cert, [str(folder)] * 4)
        assert len(set(seen)) == 1, seen
        assert seen[0] == _identity_and_cert(str(folder))
        assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
