"""kill -9 of one of two server processes while gifts are sent through both, on both stores
(``backend``: one redis-server, or cluster mode on the loopback cluster, where each gift is
a debit leg and a credit leg): every gift is applied once, the viewers the dead process held
reconnect to the survivor with ``?since=`` and end with every gift once, in order, and the
survivor's own viewers never notice."""

from __future__ import annotations

import asyncio

import pytest

from tests.reliability.conftest import Spawn
from tests.reliability.helpers import Peer, settle
from tests.support.backends import Backend
from tests.support.servers import ServerProcess, token

STREAM, CREATOR = "failover", "failover_creator"
VIEWERS_PER_SERVER = 5
PHASE = 30
IN_FLIGHT = 10


async def _follow(old: Peer, survivor: ServerProcess, bearer: str) -> Peer:
    """What a client does when its server dies: reconnect elsewhere, resume from its last seq."""
    await asyncio.wait_for(old.closed.wait(), 15)
    return await Peer.open(survivor, bearer, stream_id=STREAM, since=max(old.seqs, default=0))


@pytest.mark.slow
async def test_viewers_of_a_killed_server_resume_on_the_survivor_and_gifts_apply_once(
    backend: Backend, spawn: Spawn
) -> None:
    await backend.open_stream(STREAM, CREATOR)
    await backend.fund("alice", 10_000)
    await backend.fund("bob", 10_000)
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
    alice = await Peer.open(doomed, token("alice"), stream_id=STREAM)
    bob = await Peer.open(survivor, token("bob"), stream_id=STREAM)
    moved: list[Peer] = []
    alice_again: Peer | None = None
    try:
        await settle(alice, [f"a{i}" for i in range(PHASE)])
        await settle(bob, [f"b{i}" for i in range(PHASE)])
        in_flight = [f"a-late{i}" for i in range(IN_FLIGHT)]
        for client_id in in_flight:
            await alice.send_gift(client_id)
        doomed.kill()  # SIGKILL, with alice's last gifts in flight: applied or not, unknown
        await settle(bob, [f"b{i}" for i in range(PHASE, 2 * PHASE)])  # while viewers move
        moved = await asyncio.gather(
            *(_follow(v, survivor, token(f"va{i}")) for i, v in enumerate(on_doomed))
        )
        alice_again = await Peer.open(survivor, token("alice"), stream_id=STREAM)
        await settle(alice_again, in_flight)  # the client's retry, same ids
        await settle(bob, [f"b{i}" for i in range(2 * PHASE, 3 * PHASE)])

        total = 4 * PHASE + IN_FLIGHT  # each gift once: a retry of an applied one replays
        expected = list(range(1, total + 1))
        for old, new in zip(on_doomed, moved, strict=True):
            await new.wait_for(lambda n=new: n.seqs[-1:] == [total])
            assert old.seqs + new.seqs == expected
        for viewer in on_survivor:
            await viewer.wait_for(lambda v=viewer: v.seqs[-1:] == [total])
            assert viewer.seqs == expected
        snapshot = await backend.broker().snapshot(STREAM)
        assert snapshot is not None and snapshot.position.seq == total
    finally:
        for peer in (*on_doomed, *on_survivor, *moved, alice, bob):
            await peer.close()
        if alice_again is not None:
            await alice_again.close()
