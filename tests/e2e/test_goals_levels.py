"""Goals and gifter levels end to end: real server processes on one Redis, the creator's
HTTP calls, concurrent gifters on real WebSockets, and a server restart in between."""

from __future__ import annotations

import asyncio

import pytest

from client_demo.http import call
from server.domain.accounts import Role
from server.domain.levels import level_for
from server.ledger.ledger import Ledger
from server.web.auth import issue_token
from tests.support.servers import JWT_SECRET, Client, ServerProcess, client, token

STREAM = "goalshow"
CREATOR = "star"
GOALS = f"/api/streams/{STREAM}/goals"


async def _live(ledger: Ledger, *viewers: str) -> None:
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="Goals!")
    for user in viewers:
        await ledger.top_up(payment_id=f"pay-{user}", user_id=user, coins=100_000)


async def _post_goal(
    server: ServerProcess, bearer: str, goal: dict[str, object]
) -> tuple[int, dict[str, object]]:
    return await call("POST", server.http + GOALS, token=bearer, body=goal)


async def test_only_the_creator_manages_goals_over_http(
    server: ServerProcess, ledger: Ledger
) -> None:
    await _live(ledger)
    creator = token(CREATOR, Role.CREATOR)
    goal = {"goal_id": "roses", "kind": "gift", "gift_id": "rose", "target": 100, "title": "Roses"}
    status, body = await _post_goal(server, creator, goal)
    assert status == 201 and body["progress"] == 0 and body["replayed"] is False
    status, body = await _post_goal(server, creator, goal)
    assert status == 200 and body["replayed"] is True
    status, body = await _post_goal(server, creator, {**goal, "target": 5})
    assert status == 409 and body["error"]["code"] == "duplicate_mismatch"
    status, body = await _post_goal(server, token("bob"), {**goal, "goal_id": "x"})
    assert status == 403 and body["error"]["code"] == "not_stream_owner"
    overlay = issue_token(JWT_SECRET, CREATOR, Role.OVERLAY, name="OBS", stream=STREAM)
    status, body = await _post_goal(server, overlay, {**goal, "goal_id": "x"})
    assert status == 403 and body["error"]["code"] == "read_only"
    for bad in (
        {**goal, "goal_id": "y", "kind": "hype"},
        {**goal, "goal_id": "y", "target": True},
        {**goal, "goal_id": "y", "target": 1.5},
        {**goal, "goal_id": "y", "target": 10**13},
        {**goal, "goal_id": "y", "title": "x" * 65},
        {**goal, "goal_id": "y", "title": "bell\a"},
        {**goal, "goal_id": "a b"},
        {"goal_id": "y", "kind": "coins", "gift_id": "rose", "target": 5},
        {"goal_id": "y", "kind": "gift", "target": 5},
    ):
        status, body = await _post_goal(server, creator, bad)
        assert status == 400 and body["error"]["code"] == "invalid_request", bad
    status, body = await call(
        "POST", server.http + "/api/streams/nope/goals", token=creator, body=goal
    )
    assert status == 404 and body["error"]["code"] == "unknown_stream"
    status, body = await _post_goal(server, creator, {**goal, "goal_id": "u", "gift_id": "unicorn"})
    assert status == 404 and body["error"]["code"] == "unknown_gift"
    status, _ = await call("POST", server.http + GOALS, body=goal)
    assert status == 401
    for i in range(4):
        await _post_goal(server, creator, {"goal_id": f"c{i}", "kind": "coins", "target": 10})
    status, body = await _post_goal(
        server, creator, {"goal_id": "c9", "kind": "coins", "target": 9}
    )
    assert status == 409 and body["error"]["code"] == "goal_limit"
    status, body = await call("GET", server.http + GOALS)
    assert status == 200 and [g["goal_id"] for g in body["goals"]] == [
        "roses",
        "c0",
        "c1",
        "c2",
        "c3",
    ]
    status, body = await call("DELETE", server.http + GOALS + "/c0", token=token("bob"))
    assert status == 403
    status, body = await call("DELETE", server.http + GOALS + "/c0", token=creator)
    assert (status, body) == (200, {"deleted": True})
    status, body = await call("DELETE", server.http + GOALS + "/c0", token=creator)
    assert (status, body) == (200, {"deleted": False})


async def _gift_all(sender: Client, prefix: str, count: int) -> None:
    for i in range(count):
        await sender.send({"type": "send_gift", "id": f"{prefix}{i}", "gift": "rose"})
    for _ in range(count):
        ack = await sender.recv_type("gift_ack", "error")
        assert ack["type"] == "gift_ack", ack


async def test_concurrent_gifters_reach_a_goal_once_across_processes_and_a_restart(
    two_servers: tuple[ServerProcess, ServerProcess], ledger: Ledger
) -> None:
    a, b = two_servers
    fans = [f"fan{i}" for i in range(6)]
    await _live(ledger, *fans)
    creator = token(CREATOR, Role.CREATOR)
    await _post_goal(a, creator, {"goal_id": "r", "kind": "gift", "gift_id": "rose", "target": 200})
    async with client(b, STREAM, token("watcher")) as viewer:
        assert [g["goal_id"] for g in viewer.welcome["goals"]] == ["r"]
        async with contextlib_all(a, b, fans) as senders:
            await asyncio.gather(*(_gift_all(s, f"{i}-", 40) for i, s in enumerate(senders)))
        events = await viewer.gifts(240)
        reached = await viewer.recv_type("goal_reached")
        assert (reached["goal_id"], reached["target"]) == ("r", 200)
        with pytest.raises(TimeoutError):  # exactly once: no second goal_reached
            await viewer.recv_type("goal_reached", timeout_s=0.5)
        last = max(events, key=lambda e: e["seq"])
        assert last["goals"] == [{"goal_id": "r", "progress": 240}]
        progress = [e["goals"][0]["progress"] for e in sorted(events, key=lambda e: e["seq"])]
        assert progress == list(range(1, 241))  # exact: one rose each, none lost or doubled
        assert {e["level"] for e in events} == {1}  # 40 coins each: level 1, no level_up
        assert [m for m in viewer.backlog if m["type"] == "level_up"] == []
    # A server restart: the goal and the levels are in Redis, not in the process.
    b.stop()
    b.start()
    async with client(b, STREAM, token("fan0")) as fan0:
        (goal,) = fan0.welcome["goals"]
        assert (goal["progress"], goal["reached"]) == (240, True)
        assert fan0.welcome["you"]["level"] == level_for(40)
        top = fan0.welcome["top"]
        assert {row["name"] for row in top} == {f.title() for f in fans}
        assert {row["level"] for row in top} == {level_for(40)}
        # Ten more roses take fan0 past 50 coins: one level_up, to the room.
        await _gift_all(fan0, "more", 10)
        level_up = await fan0.recv_type("level_up")
        assert (level_up["user_id"], level_up["level"], level_up["coins"]) == ("fan0", 2, 50)


class contextlib_all:
    """Open one sender per fan, alternating between the two servers."""

    def __init__(self, a: ServerProcess, b: ServerProcess, fans: list[str]) -> None:
        self._cms = [client((a, b)[i % 2], STREAM, token(f)) for i, f in enumerate(fans)]

    async def __aenter__(self) -> list[Client]:
        return [await cm.__aenter__() for cm in self._cms]

    async def __aexit__(self, *exc: object) -> None:
        for cm in reversed(self._cms):
            await cm.__aexit__(None, None, None)
