"""The battle watch of cluster mode: the opponent's score read in its own slot reaches this
process's room, and a result whose publish was lost (the process that stored it died) is
carried to the rooms by the watch, one tick after it found it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import cast

import pytest

from server.ledger.cluster_ledger import ClusterLedger
from server.ledger.keys import Keys
from server.realtime.hub import Hub
from server.web.cluster_battle_watch import ClusterBattleWatch
from tests.cluster.legs import funded, gift, open_ledger
from tests.cluster.test_cluster_battles import LIMITS, battle, two_rooms
from tests.cluster.test_cluster_goals import closed
from tests.integration.test_battle_watch import _Hub
from tests.support.cluster import RedisCluster


@pytest.fixture
async def ledger(redis_cluster: RedisCluster, keys: Keys) -> AsyncIterator[ClusterLedger]:
    ledger = await open_ledger(redis_cluster, keys.prefix, LIMITS)
    yield ledger
    await closed(ledger)


async def test_the_watch_carries_the_opponents_score_and_a_lost_result(
    ledger: ClusterLedger,
) -> None:
    r = a, ca, b, cb = await two_rooms(ledger)
    hub = _Hub(a)  # only side a's room is open in this process
    watch = ClusterBattleWatch(cast(Hub, hub), ledger.battles)
    started = await battle(ledger, r, "w1")
    watch.room_event(a, started)
    fan = await funded(ledger, 1000)
    await gift(ledger, fan, b, cb, gift_id="corgi")  # the opponent's room, another primary
    await watch.tick()
    sent = hub.rooms[a].sent
    assert [m["type"] for m in sent] == ["battle_score"]
    assert [(s["stream_id"], s["score"]) for s in sent[0]["sides"]] == [(a, 0), (b, 299)]
    # Ended by a process that died before it published the result: it is stored, and the
    # watch sends it to its room a tick later (giving the publish that tick to arrive).
    for creator, stream in ((ca, a), (cb, b)):
        await ledger.battles._end_side(creator, stream, "w1", ca, "ended")
    await watch.tick()  # stores the result (the sides had ended without one)
    await watch.tick()  # finds it stored: waits one tick
    assert [m["type"] for m in sent] == ["battle_score"]
    await watch.tick()
    assert [m["type"] for m in sent] == ["battle_score", "battle_end"]
    assert sent[-1] == await ledger.battles.result("w1")
    assert sent[-1]["winner"] == b
    assert watch.active == {}
