"""Checked by mypy (pyproject.toml's [tool.mypy] files), never run: what decode and call
return."""

from __future__ import annotations

from typing import assert_type

import httpx

from peer.client import call
from swarm.protocol import (
    Assignment,
    ClaimRequest,
    JobDone,
    Message,
    NodeInfo,
    ResultAck,
    Wait,
    decode,
)


def replies(body: bytes) -> None:
    assert_type(decode(body, NodeInfo), NodeInfo)
    assert_type(decode(body, (NodeInfo,)), NodeInfo)
    assert_type(decode(body, (Assignment, Wait)), Assignment | Wait)
    assert_type(decode(body, (Assignment, Wait, JobDone)), Assignment | Wait | JobDone)
    assert_type(decode(body), Message)


async def calls(client: httpx.AsyncClient) -> None:
    msg = ClaimRequest("0123456789abcdef", 0, False)
    assert_type(await call(client, None, "POST", "/x", msg, (ResultAck,)), ResultAck)
    assert_type(await call(client, None, "POST", "/x", msg, (Assignment, Wait, JobDone)),
                Assignment | Wait | JobDone)
