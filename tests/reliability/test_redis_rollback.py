"""Redis goes back in time under a live room (issue 11 item 4): restored from an older copy.

The restore brings the stream's sequence back from 10 to 6; the next paid gifts are numbered
7, 8, 9 again. Before epochs, live rooms dropped them as already delivered and
``?since=10`` skipped them. Now the servers notice (viewers are on two processes), start a
new epoch once, tell the viewers who saw the lost 7-10 (``history_changed``), and every paid
gift reaches every viewer.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

from websockets.exceptions import InvalidStatus

from server.domain.errors import UnavailableError
from server.domain.streams import Stream
from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from tests.reliability.conftest import Books, Spawn
from tests.reliability.helpers import (
    STREAM,
    Peer,
    assert_books_hold,
    open_stream,
    settle,
)
from tests.support.servers import ServerProcess, http_json, token


async def _serving(server: ServerProcess, timeout_s: float = 20.0) -> dict[str, Any]:
    """Wait until the server reaches Redis and its pub/sub again; return ``/readyz``'s body.

    After a restore its readiness stays failed on purpose (``problems`` names the lost
    data, ``docs/operations.md``), while it goes on serving the viewers it has.
    """
    async with asyncio.timeout(timeout_s):
        while True:
            _, body = await asyncio.to_thread(http_json, "GET", server.http + "/readyz")
            if body.get("redis") and body.get("pubsub"):
                return dict(body)
            await asyncio.sleep(0.1)


async def _restart(
    redis: RedisProcess, servers: list[ServerProcess], data: Path | None = None
) -> list[dict[str, Any]]:
    """Stop Redis (it finishes its AOF), optionally put ``data`` in place, start it again;
    return each server's ``/readyz`` once it is back."""
    redis.stop()
    if data is not None:
        shutil.rmtree(redis.data_dir)
        shutil.copytree(data, redis.data_dir)
    redis.start()
    return [await _serving(server) for server in servers]


async def _stream(ledger: Ledger) -> Stream:
    """The stream hash, read again if the test's own client lost its connection."""
    for _ in range(20):
        try:
            stream = await ledger.stream(STREAM)
        except UnavailableError:
            await asyncio.sleep(0.1)
            continue
        assert stream is not None
        return stream
    raise AssertionError("Redis unreachable")


async def _reconnect(server: ServerProcess, user: str, **resume: Any) -> Peer:
    """Open a connection as a client does after an outage: again while it gets 503."""
    for _ in range(50):
        try:
            return await Peer.open(server, token(user), **resume)
        except InvalidStatus as e:
            if e.response.status_code != 503:
                raise
            await asyncio.sleep(0.1)
    raise AssertionError("the server stayed unavailable")


def _changes(peer: Peer) -> list[dict[str, Any]]:
    return [m for m in peer.other if m["type"] == "history_changed"]


async def test_a_restored_redis_starts_a_new_epoch_and_no_paid_gift_is_invisible(
    books: Books, own_redis: RedisProcess, keys: Keys, spawn: Spawn, tmp_path: Path
) -> None:
    ledger = await books(own_redis.url)
    await open_stream(ledger, ("alice", 1_000))
    server, other = spawn(own_redis.url), spawn(own_redis.url)
    # Viewers on two processes: both notice, the epoch changes once (compare and set).
    viewers = [await Peer.open(server, token(f"viewer{i}")) for i in range(2)]
    viewers.append(await Peer.open(other, token("viewer2")))
    leaver = await Peer.open(server, token("leaver"))
    alice = await Peer.open(server, token("alice"))
    late: list[Peer] = []
    try:
        epoch = viewers[0].welcome["epoch"]
        assert epoch and all(v.welcome["epoch"] == epoch for v in viewers)
        await settle(alice, [f"a{i}" for i in range(6)])
        backup = tmp_path / "backup"
        own_redis.stop()
        shutil.copytree(own_redis.data_dir, backup)  # the copy an operator restores later
        await _restart(own_redis, [server, other])
        await settle(alice, [f"b{i}" for i in range(4)])
        for peer in (*viewers, leaver):
            await peer.wait_for(lambda p=peer: len(p.seqs) == 10)
            assert {g["epoch"] for g in peer.gifts} == {epoch}
        await leaver.close()

        await _restart(own_redis, [server, other], backup)  # gifts 7-10 are gone from Redis
        assert (await _stream(ledger)).last_sequence == 6
        # New paid gifts after the restore: Redis numbers them 7, 8, 9 again.
        await settle(alice, [f"c{i}" for i in range(3)])
        for peer in viewers:
            await peer.wait_for(lambda p=peer: len(p.seqs) == 13 and _changes(p))
            (change,) = _changes(peer)
            assert change["from_seq"] == 7 and change["epoch"] != epoch
            after = peer.gifts[10:]
            assert [(g["seq"], g["epoch"]) for g in after] == [(7, change["epoch"])] * 1 + [
                (8, change["epoch"]),
                (9, change["epoch"]),
            ]
        new_epoch = _changes(viewers[0])[0]["epoch"]
        assert {_changes(v)[0]["epoch"] for v in viewers} == {new_epoch}  # both processes
        stream = await _stream(ledger)
        assert (stream.epoch, stream.prev_epoch, stream.prev_epoch_seq) == (new_epoch, epoch, 6)

        # Clients that saw 1-10 before the restore resume: with the epoch they held, and in
        # the old bare form. Both are told, and both get the new 7-9.
        late.append(await _reconnect(server, "leaver", since=10, epoch=epoch))
        late.append(await _reconnect(server, "bare", since=10))
        # One that saw only 1-5 of the old epoch is resumed as usual.
        late.append(await _reconnect(server, "early", since=5, epoch=epoch))
        for peer in late:
            await peer.wait_for(lambda p=peer: 9 in p.seqs)
        for peer in late[:2]:
            assert [c["from_seq"] for c in _changes(peer)] == [7]
            assert peer.seqs == [7, 8, 9]
        assert _changes(late[2]) == [] and late[2].seqs == [6, 7, 8, 9]
        assert all(g["epoch"] == new_epoch for p in late for g in p.gifts)
        # History shows the same gifts, with the same fields as live ones.
        status, body = await asyncio.to_thread(
            http_json, "GET", f"{server.http}/api/streams/{STREAM}/gifts?after=6"
        )
        assert status == 200 and [e["seq"] for e in body["events"]] == [7, 8, 9]
        assert all({"gift_name", "animation", "tier"} <= e.keys() for e in body["events"])
        # One epoch change for the one rollback, however many noticed it.
        await settle(alice, ["d0"])
        await viewers[0].wait_for(lambda: 10 in viewers[0].seqs[10:])
        assert all(len(_changes(v)) == 1 for v in viewers)
    finally:
        for peer in (*viewers, *late, leaver, alice):
            await peer.close()
    await assert_books_hold(ledger.redis, keys)
