"""Two rooms on two server processes in a battle, with concurrent gifters in both: both
rooms' viewers see the same final score, and it is the coins each side received in the
battle's window (read back from the feed)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client_demo.http import (
    answer_battle,
    battle_result,
    call,
    invite_battle,
    stream_battle,
)
from server.domain.accounts import Role
from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from tests.e2e.conftest import FAST
from tests.support.servers import Client, ServerProcess, client, running, token

A, B = "arena-a", "arena-b"
CA, CB = "host-a", "host-b"
GIFTERS = 3
DURATION_S = 2


@pytest.fixture
def battle_servers(
    redis_server: RedisProcess, keys: Keys, tmp_path: Path
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    env = {**FAST, "GIFTWIRE_BATTLE_SECONDS_MIN": "1"}
    with running(redis_server.url, keys.prefix, tmp_path, count=2, **env) as (a, b):
        yield a, b


async def _gift_until(gifter: Client, prefix: str, stop: asyncio.Event) -> list[dict[str, Any]]:
    """Send gifts one after the other (each acknowledged) until ``stop``."""
    acks = []
    gifts = ("rose", "heart", "corgi")
    i = 0
    while not stop.is_set():
        await gifter.send({"type": "send_gift", "id": f"{prefix}{i}", "gift": gifts[i % 3]})
        ack = await gifter.recv_type("gift_ack", "error")
        assert ack["type"] == "gift_ack", ack
        acks.append(ack)
        i += 1
        await asyncio.sleep(0.01)
    return acks


async def _watch(viewer: Client) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every gift and every battle message of the room, until the battle's result."""
    gifts: list[dict[str, Any]] = []
    battle: list[dict[str, Any]] = []
    while True:
        message = await viewer.recv_type(
            "gift", "gifts", "battle", "battle_score", "battle_end", timeout_s=30
        )
        if message["type"] == "gifts":
            gifts.extend(message["events"])
        elif message["type"] == "gift":
            gifts.append(message)
        else:
            battle.append(message)
            if message["type"] == "battle_end":
                return gifts, battle


async def _feed(server: ServerProcess, stream_id: str) -> list[dict[str, Any]]:
    status, body = await call("GET", f"{server.http}/api/streams/{stream_id}/gifts?limit=200")
    assert status == 200
    events: list[dict[str, Any]] = body["events"]
    while len(body["events"]) == 200:
        status, body = await call(
            "GET",
            f"{server.http}/api/streams/{stream_id}/gifts?limit=200&after={body['next_after']}",
        )
        events.extend(body["events"])
    return events


async def test_two_rooms_on_two_processes_see_the_same_exact_final_score(
    battle_servers: tuple[ServerProcess, ServerProcess], ledger: Ledger
) -> None:
    sa, sb = battle_servers
    ta, tb = token(CA, Role.CREATOR), token(CB, Role.CREATOR)
    for server, stream, bearer in ((sa, A, ta), (sb, B, tb)):
        status, _ = await call(
            "POST", f"{server.http}/api/streams", token=bearer, body={"stream_id": stream}
        )
        assert status == 201
    names = [f"fan-{side}{i}" for side in "ab" for i in range(GIFTERS)]
    for name in names:
        await ledger.top_up(payment_id=f"pay-{name}", user_id=name, coins=1_000_000)

    stop = asyncio.Event()
    async with (
        client(sa, A, token("watcher-a")) as viewer_a,
        client(sb, B, token("watcher-b")) as viewer_b,
        client(sa, A, token(names[0])) as g0,
        client(sa, A, token(names[1])) as g1,
        client(sa, A, token(names[2])) as g2,
        client(sb, B, token(names[3])) as g3,
        client(sb, B, token(names[4])) as g4,
        client(sb, B, token(names[5])) as g5,
    ):
        watchers = [asyncio.create_task(_watch(v)) for v in (viewer_a, viewer_b)]
        senders = [
            asyncio.create_task(_gift_until(g, f"g{i}-", stop))
            for i, g in enumerate((g0, g1, g2, g3, g4, g5))
        ]
        await asyncio.sleep(0.3)  # gifts before the battle: they must not score
        invite = await asyncio.to_thread(invite_battle, sa.http, ta, A, B, DURATION_S)
        started = await asyncio.to_thread(answer_battle, sb.http, tb, invite)
        # The battle ends on time, by the servers' battle watch; gifts go on past it.
        (gifts_a, battle_a), (gifts_b, battle_b) = await asyncio.gather(*watchers)
        await asyncio.sleep(0.3)
        stop.set()
        acks = await asyncio.gather(*senders)

    result_a, result_b = battle_a[-1], battle_b[-1]
    assert result_a == result_b, "both rooms see the same result"
    assert result_a["reason"] == "time" and result_a["battle_id"] == started["battle_id"]
    assert result_a == await asyncio.to_thread(battle_result, sb.http, started["battle_id"])
    assert battle_a[0]["type"] == battle_b[0]["type"] == "battle"
    assert any(m["type"] == "battle_score" for m in battle_a)
    assert any(m["type"] == "battle_score" for m in battle_b)
    starts_at, ends_at = result_a["starts_at"], result_a["ends_at"]
    assert ends_at - starts_at == DURATION_S * 1000

    scores = {side["stream_id"]: side["score"] for side in result_a["sides"]}
    for server, stream, live in ((sa, A, gifts_a), (sb, B, gifts_b)):
        feed = await _feed(server, stream)
        in_window = [e for e in feed if e.get("battle_id") == started["battle_id"]]
        # The gift script's decision matches the window on its own clock ...
        assert all(starts_at <= e["ts"] < ends_at for e in in_window)
        assert all(e.get("battle_id") for e in feed if starts_at < e["ts"] < ends_at)
        assert any(e["ts"] < starts_at for e in feed) and any(e["ts"] >= ends_at for e in feed)
        # ... and the score is exactly those gifts' coins, as the viewers saw them live.
        assert scores[stream] == sum(e["coins"] for e in in_window) > 0
        live_scored = [e for e in live if e.get("battle_id") == started["battle_id"]]
        assert sum(e["coins"] for e in live_scored) == scores[stream]
    # Every acknowledged gift is in its room's feed, once.
    acked = sum(len(a) for a in acks)
    assert acked == len(await _feed(sa, A)) + len(await _feed(sb, B))

    state = await asyncio.to_thread(stream_battle, sa.http, A)
    assert state["battle"]["state"] == "ended" and state["battle"]["result"] == result_a
    assert state["outgoing"] is None and state["incoming"] == []
    winner = max(scores, key=lambda s: scores[s]) if len(set(scores.values())) > 1 else None
    assert result_a["winner"] == winner
