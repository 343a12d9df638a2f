"""kill -9 of one of two server processes under load (issue item 2)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from tests.reliability.conftest import Books, Spawn
from tests.reliability.helpers import (
    STREAM,
    Peer,
    applied_gifts,
    assert_books_hold,
    fire,
    open_stream,
    settle,
)
from tests.support.servers import ServerProcess, http_json, token

VIEWERS_PER_SERVER = 10


async def _follow(old: Peer, survivor: ServerProcess, bearer: str) -> Peer:
    """What a client does when its server dies: reconnect elsewhere, resume from its last seq."""
    await asyncio.wait_for(old.closed.wait(), 15)
    return await Peer.open(survivor, bearer, since=max(old.seqs, default=0))


def _fill_gaps(server: ServerProcess, peer: Peer) -> list[int]:
    """What a client does on a ``gap`` message (a resume sends at most
    ``resume_events_max`` events): page the range from the HTTP history."""
    filled: list[int] = []
    for gap in (m for m in peer.other if m["type"] == "gap"):
        after = gap["from_seq"] - 1
        while after < gap["to_seq"]:
            status, body = http_json(
                "GET", f"{server.http}/api/streams/{STREAM}/gifts?after={after}&limit=200"
            )
            assert status == 200 and body["events"]
            filled += [e["seq"] for e in body["events"] if e["seq"] <= gap["to_seq"]]
            after = body["next_after"]
    return filled


def _holes(seqs: list[int]) -> list[tuple[int, int]]:
    return [(a + 1, b - 1) for a, b in itertools.pairwise(seqs) if b != a + 1]


@pytest.mark.slow
async def test_viewers_move_to_the_survivor_without_gaps_and_retries_tell_what_was_applied(
    books: Books, redis_server: RedisProcess, keys: Keys, spawn: Spawn
) -> None:
    ledger = await books(redis_server.url)
    await open_stream(ledger, ("alice", 1_000_000), ("bob", 1_000_000))
    doomed, survivor = spawn(redis_server.url), spawn(redis_server.url)
    on_doomed = [await Peer.open(doomed, token(f"va{i}")) for i in range(VIEWERS_PER_SERVER)]
    on_survivor = [await Peer.open(survivor, token(f"vb{i}")) for i in range(VIEWERS_PER_SERVER)]
    alice = await Peer.open(doomed, token("alice"))
    bob = await Peer.open(survivor, token("bob"))
    stop_alice, stop_bob = asyncio.Event(), asyncio.Event()
    moved: list[Peer] = []
    alice_again: Peer | None = None
    try:
        alice_load = asyncio.create_task(fire(alice, "alice", stop_alice, window=32))
        bob_load = asyncio.create_task(fire(bob, "bob", stop_bob, window=8))
        await asyncio.sleep(1.0)
        doomed.kill()  # SIGKILL: no close frames, no graceful shutdown
        stop_alice.set()
        alice_sent = await alice_load
        await asyncio.wait_for(alice.closed.wait(), 10)
        unanswered = [i for i in alice_sent if i not in alice.acks]
        await asyncio.sleep(0.3)  # let Redis finish whatever the dead process had sent
        applied_at_crash = await applied_gifts(ledger.redis, keys)

        moved = await asyncio.gather(
            *(_follow(v, survivor, token(f"va{i}")) for i, v in enumerate(on_doomed))
        )
        alice_again = await Peer.open(survivor, token("alice"))
        await settle(alice_again, alice_sent)
        for client_id in unanswered:
            # The retry says which: replayed means it was applied before the crash.
            replayed = alice_again.acks[client_id]["replayed"]
            assert replayed == bool(applied_at_crash[("alice", client_id)]), client_id
        for client_id, first in alice.acks.items():
            again = alice_again.acks[client_id]
            assert again["replayed"] and again["transfer_id"] == first["transfer_id"]

        await asyncio.sleep(0.5)
        stop_bob.set()
        bob_sent = await bob_load
        await bob.wait_replies(bob_sent)
        applied = await applied_gifts(ledger.redis, keys)
        total = len(alice_sent) + len(bob_sent)
        assert sum(applied.values()) == total and set(applied.values()) == {1}
        gaps_filled = 0
        for old, new in zip(on_doomed, moved, strict=True):
            await new.wait_for(lambda n=new: len(n.seqs) > 0 and max(n.seqs) >= total)
            live = old.seqs + new.seqs
            # In order, and every hole is one the server announced with a `gap` message...
            assert live == sorted(set(live)), "a moved viewer saw a repeat or a reordering"
            announced = [(m["from_seq"], m["to_seq"]) for m in new.other if m["type"] == "gap"]
            assert _holes(live) == announced
            # ...which the HTTP history fills: every gift seen exactly once.
            filled = await asyncio.to_thread(_fill_gaps, survivor, new)
            gaps_filled += len(filled)
            assert sorted(live + filled) == list(range(1, total + 1))
        for viewer in on_survivor:
            await viewer.wait_for(lambda v=viewer: len(v.seqs) >= total)
            assert viewer.seqs == list(range(1, total + 1))
        in_flight_applied = sum(1 for i in unanswered if applied_at_crash[("alice", i)])
        print(
            f"\nserver kill -9: {len(alice.acks)} of alice's gifts acked before the crash, "
            f"{len(unanswered)} in flight ({in_flight_applied} had been applied), "
            f"{len(bob_sent)} from bob on the survivor; {total} applied once each; "
            f"{VIEWERS_PER_SERVER} viewers moved without a gap ({gaps_filled} events paged "
            "over HTTP after `gap` messages)"
        )
    finally:
        stop_alice.set()
        stop_bob.set()
        for peer in (*on_doomed, *on_survivor, *moved, alice, bob):
            await peer.close()
        if alice_again is not None:
            await alice_again.close()
    await assert_books_hold(ledger.redis, keys)
