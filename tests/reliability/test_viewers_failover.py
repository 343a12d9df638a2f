"""kill -9 of one of two server processes while gifts flow, on both stores (``backend``):
the viewers it held reconnect to the survivor with ``?since=`` and end with every gift once,
in order; the survivor's own viewers never notice."""

from __future__ import annotations

import asyncio

import pytest

from tests.reliability.conftest import Spawn
from tests.reliability.helpers import Peer
from tests.support.backends import Backend
from tests.support.servers import ServerProcess, token

STREAM, CREATOR = "failover", "failover_creator"
VIEWERS_PER_SERVER = 5
GIFTS = 120


async def _follow(old: Peer, survivor: ServerProcess, bearer: str) -> Peer:
    """What a client does when its server dies: reconnect elsewhere, resume from its last seq."""
    await asyncio.wait_for(old.closed.wait(), 15)
    return await Peer.open(survivor, bearer, stream_id=STREAM, since=max(old.seqs, default=0))


@pytest.mark.slow
async def test_viewers_of_a_killed_server_resume_on_the_survivor_without_a_gap(
    backend: Backend, spawn: Spawn
) -> None:
    await backend.open_stream(STREAM, CREATOR)
    doomed = spawn(backend.server_url, **backend.server_env)
    survivor = spawn(backend.server_url, **backend.server_env)
    on_doomed = [
        await Peer.open(doomed, token(f"va{i}"), stream_id=STREAM)
        for i in range(VIEWERS_PER_SERVER)
    ]
    on_survivor = [
        await Peer.open(survivor, token(f"vb{i}"), stream_id=STREAM)
        for i in range(VIEWERS_PER_SERVER)
    ]
    moved: list[Peer] = []
    try:
        for _ in range(GIFTS // 3):
            await backend.gift(STREAM, CREATOR)
        doomed.kill()  # SIGKILL: no close frames, no graceful shutdown
        for _ in range(GIFTS // 3):
            await backend.gift(STREAM, CREATOR)  # while the viewers are away
        moved = await asyncio.gather(
            *(_follow(v, survivor, token(f"va{i}")) for i, v in enumerate(on_doomed))
        )
        for _ in range(GIFTS - 2 * (GIFTS // 3)):
            await backend.gift(STREAM, CREATOR)
        expected = list(range(1, GIFTS + 1))
        for old, new in zip(on_doomed, moved, strict=True):
            await new.wait_for(lambda n=new: n.seqs[-1:] == [GIFTS])
            assert old.seqs + new.seqs == expected
        for viewer in on_survivor:
            await viewer.wait_for(lambda v=viewer: v.seqs[-1:] == [GIFTS])
            assert viewer.seqs == expected
    finally:
        for peer in (*on_doomed, *on_survivor, *moved):
            await peer.close()
