"""The battle watch against a real Redis: both rooms of a battle get the same live score,
one read per battle, again only when it changed (or every few ticks), and a battle whose
time is up is ended by the watch."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from redis.asyncio import Redis

from server.domain.limits import Limits
from server.ledger.keys import Keys
from server.realtime.hub import Hub
from server.web.battle_watch import RESEND_TICKS, BattleWatch
from tests.integration.helpers import gift, make_ledger


class _Room:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def broadcast(self, message: dict[str, Any], *, droppable: bool = True) -> None:
        self.sent.append(message)


class _Hub:
    def __init__(self, *streams: str) -> None:
        self.rooms = {stream: _Room() for stream in streams}
        self.on_room_event = None


async def test_the_watch_sends_both_rooms_the_score_and_ends_the_battle_on_time(
    redis: Redis, keys: Keys
) -> None:
    ledger = await make_ledger(redis, keys, Limits(battle_seconds_min=1))
    for stream, creator in (("wa", "ca"), ("wb", "cb"), ("wc", "cc")):
        await ledger.start_stream(stream_id=stream, creator_id=creator, title="")
    await ledger.top_up(payment_id="p", user_id="fan", coins=1000)
    hub = _Hub("wa", "wb", "wc")
    watch = BattleWatch(cast(Hub, hub), ledger.battles)
    invite = await ledger.battles.invite(
        battle_id="w1", from_stream="wa", to_stream="wb", actor_id="ca", duration_s=2
    )
    started = await ledger.battles.accept(
        battle_id="w1", from_stream="wa", to_stream="wb", actor_id="cb"
    )
    assert invite.doc["battle_id"] == started.doc["battle_id"]
    await watch.tick()  # finds the running battle of the rooms it had not checked
    a, b, c = (hub.rooms[s].sent for s in ("wa", "wb", "wc"))
    assert [m["type"] for m in a] == [m["type"] for m in b] == ["battle_score"]
    assert a[0]["sides"] == b[0]["sides"] and c == []
    await gift(ledger, "g1", sender="fan", gift_id="corgi", stream="wb", creator="cb")
    await watch.tick()
    assert [s["score"] for s in a[-1]["sides"]] == [0, 299] == [s["score"] for s in b[-1]["sides"]]
    for _ in range(RESEND_TICKS):
        await watch.tick()  # unchanged: nothing new ...
    assert len(a) == 2
    await watch.tick()  # ... until it is sent again for viewers who just joined
    assert len(a) == 3
    watch.room_event("wa", {"type": "battle_end"})  # as the hub passes it on
    watch.room_event("wb", {"type": "battle_end"})
    assert watch.active == {}
    watch.room_event("wa", started.doc)
    watch.room_event("wb", started.doc)
    await asyncio.sleep(2.05)
    await watch.tick()
    result = await ledger.battles.result("w1")
    assert result["reason"] == "time" and result["winner"] == "wb"
