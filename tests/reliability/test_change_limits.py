"""The per-user rate of state-changing HTTP calls (issue #14), against real servers.

Every change endpoint (goals, spending limits, guests, battles, the admin's catalog and
accounts) spends a token of its caller's bucket in Redis (``change_rate.lua``) before its
own script runs. The servers here allow a burst of 3 and one change a minute, so the
clock adds no token while a test runs: what is accepted is exactly the burst.
"""

from __future__ import annotations

import asyncio
from typing import Any

from server.domain.accounts import Role
from server.domain.goals import goal_from_request
from server.domain.limits import Limits
from server.ledger.change_limits import ChangeLimiter
from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from tests.integration.helpers import snapshot
from tests.reliability.conftest import Books, Spawn
from tests.support.servers import ServerProcess, http_exchange, token

PER_MINUTE, BURST = 1, 3
LIMITS = {
    "GIFTWIRE_CHANGES_PER_MINUTE_MAX": str(PER_MINUTE),
    "GIFTWIRE_CHANGE_BURST_MAX": str(BURST),
}
COINS_GOAL = {"goal_id": "g", "kind": "coins", "target": 100}


def _assert_rate_limited(status: int, headers: dict[str, str], body: Any) -> None:
    assert status == 429, (status, body)
    assert body["error"]["code"] == "rate_limited", body
    retry_after_ms = body["error"]["detail"]["retry_after_ms"]
    assert 0 < retry_after_ms <= 60_000 // PER_MINUTE
    assert int(headers["retry-after"]) == -(-retry_after_ms // 1000)  # whole seconds, up


async def test_a_goal_flood_through_two_processes_gets_one_burst(
    books: Books, redis_server: RedisProcess, spawn: Spawn
) -> None:
    ledger = await books(redis_server.url)
    streams = [f"fl-{i}" for i in range(8)]
    for stream in streams:  # one goal per stream: the goal limit never speaks first
        await ledger.start_stream(stream_id=stream, creator_id="carol", title="flood")
    await ledger.start_stream(stream_id="other", creator_id="dave", title="other")
    servers = [spawn(redis_server.url, **LIMITS), spawn(redis_server.url, **LIMITS)]
    carol = token("carol", Role.CREATOR)

    def create(i: int) -> tuple[int, dict[str, str], Any]:
        url = f"{servers[i % 2].http}/api/streams/{streams[i]}/goals"
        return http_exchange("POST", url, COINS_GOAL, bearer=carol)

    answers = await asyncio.gather(*(asyncio.to_thread(create, i) for i in range(len(streams))))
    accepted = {streams[i] for i, (status, _, _) in enumerate(answers) if status == 201}
    # One bucket in Redis for carol, whichever process a call came through.
    assert len(accepted) == BURST, answers
    for status, headers, body in answers:
        if status != 201:
            _assert_rate_limited(status, headers, body)
    # Nothing beyond the allowance changed: the refused calls set no goal.
    for stream in streams:
        held = [goal.goal_id for goal in await ledger.stream_goals(stream)]
        assert held == (["g"] if stream in accepted else []), stream
    # Another creator is unaffected, through either process.
    for server in servers:
        status, _, body = http_exchange(
            "POST",
            f"{server.http}/api/streams/other/goals",
            {**COINS_GOAL, "goal_id": f"d{server.port}"},
            bearer=token("dave", Role.CREATOR),
        )
        assert status == 201, body


async def _setup_every_change(ledger: Ledger) -> None:
    """Streams, a goal, an invited guest and a pending battle for the calls below."""
    await ledger.start_stream(stream_id="st", creator_id="carol", title="c")
    await ledger.start_stream(stream_id="dv", creator_id="dave", title="d")
    goal = goal_from_request({"goal_id": "g0", "kind": "coins", "target": 100})
    await ledger.set_goal(stream_id="st", actor_id="carol", goal=goal)
    await ledger.guests.invite(stream_id="st", creator_id="carol", guest_id="vic")
    await ledger.battles.invite(battle_id="b1", from_stream="dv", to_stream="st", actor_id="dave")


B1 = {"from_stream": "dv", "to_stream": "st"}
PAID = {"creator_id": "carol", "id": "co1", "state": "paid"}
REPRICE = {"expect_version": 1, "changes": [{"op": "reprice", "id": "rose", "price_coins": 2}]}
# (user, role, method, path, body): every change endpoint once, each a call that would
# change something (or be refused by its own script) with a token left.
CHANGES: list[tuple[str, Role, str, str, object]] = [
    ("carol", Role.CREATOR, "POST", "/api/streams/st/goals", COINS_GOAL),
    ("carol", Role.CREATOR, "DELETE", "/api/streams/st/goals/g0", None),
    ("vic", Role.VIEWER, "PUT", "/api/me/spending", {"day": 10}),
    ("root", Role.ADMIN, "PUT", "/api/admin/accounts/vic/spending", {"minor": True}),
    ("carol", Role.CREATOR, "POST", "/api/streams/st/guests", {"user_id": "val"}),
    ("vic", Role.VIEWER, "POST", "/api/streams/st/guests/join", None),
    ("carol", Role.CREATOR, "POST", "/api/streams/st/guests/leave", {"user_id": "vic"}),
    ("carol", Role.CREATOR, "POST", "/api/battles", {"from_stream": "st", "to_stream": "dv"}),
    ("carol", Role.CREATOR, "POST", "/api/battles/b1/accept", B1),
    ("dave", Role.CREATOR, "POST", "/api/battles/b1/decline", B1),
    ("carol", Role.CREATOR, "POST", "/api/streams/st/battle/end", None),
    ("root", Role.ADMIN, "POST", "/api/admin/catalog", REPRICE),
    ("root", Role.ADMIN, "DELETE", "/api/admin/catalog/scheduled/e1", None),
    ("root", Role.ADMIN, "POST", "/api/admin/payouts", PAID),
]  # fmt: skip


async def test_every_change_endpoint_is_refused_once_the_bucket_is_empty(
    books: Books, redis_server: RedisProcess, keys: Keys, spawn: Spawn
) -> None:
    ledger = await books(redis_server.url)
    await _setup_every_change(ledger)
    server: ServerProcess = spawn(redis_server.url, **LIMITS)
    # Empty the callers' buckets through the same script and limits as the server.
    drain = ChangeLimiter(
        ledger.runner, keys, Limits(changes_per_minute_max=PER_MINUTE, change_burst_max=BURST)
    )
    for user in {user for user, *_ in CHANGES}:
        for _ in range(BURST):
            await drain.take(user)
    before = await snapshot(ledger.redis, keys)
    for user, role, method, path, body in CHANGES:
        answer = await asyncio.to_thread(
            http_exchange, method, server.http + path, body, bearer=token(user, role)
        )
        _assert_rate_limited(*answer)
    assert await snapshot(ledger.redis, keys) == before  # nothing changed, buckets included
    # Another user, with tokens of their own, is unaffected.
    status, _, body = await asyncio.to_thread(
        http_exchange, "PUT", server.http + "/api/me/spending", {"day": 10}, bearer=token("wes")
    )
    assert status == 200 and body["day"]["limit"] == 10, body
