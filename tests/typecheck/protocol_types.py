"""Checked by mypy (pyproject.toml's [tool.mypy] files), never run: what decode returns."""

from __future__ import annotations

from typing import assert_type

from swarm.protocol import Assignment, JobDone, Message, NodeInfo, Wait, decode


def replies(body: bytes) -> None:
    assert_type(decode(body, NodeInfo), NodeInfo)
    assert_type(decode(body, (NodeInfo,)), NodeInfo)
    assert_type(decode(body, (Assignment, Wait)), Assignment | Wait)
    assert_type(decode(body, (Assignment, Wait, JobDone)), Assignment | Wait | JobDone)
    assert_type(decode(body), Message)
