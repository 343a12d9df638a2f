"""A real server notices a Redis that lost data and says so on /readyz and in its log.

Redis is stopped and started again on an emptied data folder (a lost disk, a Redis run
without persistence), or on an older copy of its AOF (a restore), while the server runs.
"""

from __future__ import annotations

import asyncio
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from websockets.exceptions import ConnectionClosed, InvalidStatus

from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from tests.reliability.conftest import Books, Spawn
from tests.reliability.helpers import STREAM, open_stream, wait_ready
from tests.support.servers import ServerProcess, client, token


def _readyz(server: ServerProcess) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(server.http + "/readyz", timeout=5) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read())


async def _wait_for_problem(server: ServerProcess, needle: str) -> dict[str, Any]:
    for _ in range(200):
        status, body = await asyncio.to_thread(_readyz, server)
        if status == 503 and any(needle in p for p in body.get("problems", [])):
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"/readyz never reported {needle!r}:\n{server.log()}")


async def _gift(server: ServerProcess, gift_id: str) -> dict[str, Any]:
    """Send one gift, retrying with the same id while Redis is coming back."""
    for _ in range(100):
        try:
            async with client(server, STREAM, token("alice")) as sender:
                await sender.send({"type": "send_gift", "id": gift_id, "gift": "rose"})
                reply = await sender.recv_type("gift_ack", "error")
                if reply["type"] == "gift_ack":
                    return reply
                assert reply["code"] == "unavailable", reply
        except (ConnectionClosed, InvalidStatus):
            pass  # refused or closed while Redis was away: reconnect, same id
        await asyncio.sleep(0.1)
    raise AssertionError(f"{gift_id} never acknowledged")


async def test_a_redis_restarted_empty_turns_readyz_red(
    books: Books, own_redis: RedisProcess, keys: Keys, spawn: Spawn
) -> None:
    ledger = await books(own_redis.url)
    await open_stream(ledger, ("alice", 100))
    server = spawn(own_redis.url, GIFTWIRE_REDIS_CHECK_INTERVAL_S="0.2")
    await _gift(server, "g1")
    own_redis.stop()
    shutil.rmtree(own_redis.data_dir)
    own_redis.start()
    body = await _wait_for_problem(server, "Redis lost data")
    assert body["redis"] is True
    assert "generation marker is gone" in body["problems"][0]
    assert "Redis lost data" in server.log()
    # Stays red: the loss is for an operator to judge, not for the next check to forget.
    await asyncio.sleep(0.5)
    assert (await asyncio.to_thread(_readyz, server))[0] == 503
    # A process started now (after the operator's decision) is ready again.
    fresh = spawn(own_redis.url)
    await wait_ready(fresh)


async def test_a_redis_restored_from_an_older_aof_turns_readyz_red(
    books: Books, own_redis: RedisProcess, keys: Keys, spawn: Spawn, tmp_path: Path
) -> None:
    ledger = await books(own_redis.url)
    await open_stream(ledger, ("alice", 100))
    server = spawn(own_redis.url, GIFTWIRE_REDIS_CHECK_INTERVAL_S="0.2")
    await _gift(server, "g1")
    own_redis.stop()
    shutil.copytree(own_redis.data_dir, tmp_path / "backup")  # the backup
    own_redis.start()
    await wait_ready(server)
    acked = await _gift(server, "g2")  # acknowledged after the backup was taken
    own_redis.stop()
    shutil.rmtree(own_redis.data_dir)
    shutil.copytree(tmp_path / "backup", own_redis.data_dir)  # the restore
    own_redis.start()
    await _gift(server, "g3")  # new writes after the restore do not hide the loss
    body = await _wait_for_problem(server, "is missing")
    assert acked["transfer_id"] in body["problems"][0]
    assert f"ledger entry {acked['transfer_id']}" in server.log()
