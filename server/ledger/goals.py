"""Stream goals and gifter levels in Redis: the creator's goal calls and the reads.

Contract: ``set_goal`` and ``delete_goal`` are Lua scripts (``set_goal.lua``,
``delete_goal.lua``), atomic, idempotent by goal id, and only the stream's creator may call
them; each publishes the stream's goals to the room (``goals``) when it changed them.
Progress is moved only by ``send_gift.lua`` (on a cluster ``credit_gifts.lua``; both through
``_goals.lua``), in the step that moves the coins. The reads here change nothing and may be
a moment old by the time they return.
"""

from __future__ import annotations

from typing import cast

import orjson
from redis.asyncio import Redis

from server.domain.goals import Goal, GoalKind
from server.domain.levels import TopGifter, level_for
from server.domain.limits import GOAL_TARGET_MAX, GOALS_PER_STREAM_MAX
from server.ledger.keys import Keys
from server.ledger.receipts import unpack
from server.ledger.runner import ScriptRunner
from server.ledger.scripts import ScriptName


def goal_from_json(doc: dict[str, object]) -> Goal:
    progress = doc.get("progress", 0)
    target = doc["target"]
    if not isinstance(target, int) or not isinstance(progress, int):
        raise ValueError(f"a stored goal is not integers: {doc!r}")
    return Goal(
        goal_id=str(doc["goal_id"]),
        kind=GoalKind(str(doc["kind"])),
        gift_id=str(doc.get("gift_id", "")),
        target=target,
        title=str(doc.get("title", "")),
        progress=progress,
    )


def goals_from_hash(raw: dict[bytes, bytes]) -> list[Goal]:
    """The goals hash (``HGETALL``) as goals in creation order: the one reader of it."""
    out: list[Goal] = []
    for goal_id in raw.get(b"@ids", b"").decode().split(","):
        doc = raw.get(f"d:{goal_id}".encode())
        if doc is None:
            continue
        goal = goal_from_json(orjson.loads(doc))
        progress = int(raw.get(f"p:{goal_id}".encode(), b"0"))
        out.append(Goal(goal.goal_id, goal.kind, goal.gift_id, goal.target, goal.title, progress))
    return out


def top_gifters(
    rows: list[tuple[str, int]], names: list[bytes | None], lifetime: list[object]
) -> list[TopGifter]:
    """Leaderboard rows (user id, coins) with the names hash's values (``HMGET``) and the
    fans zset's scores (the lifetime coins, ``ZSCORE``/``ZMSCORE``) of the same users, in
    order: the one place a leaderboard row gets its name and level, in both modes."""
    return [
        TopGifter(
            user_id=user,
            name=name.decode() if name is not None else user,
            coins=coins,
            level=level_for(int(float(cast(bytes | float | int, fan))) if fan else 0),
        )
        for (user, coins), name, fan in zip(rows, names, lifetime, strict=True)
    ]


class GoalStore:
    def __init__(self, redis: Redis, keys: Keys, runner: ScriptRunner) -> None:
        self.redis = redis
        self.keys = keys
        self.runner = runner

    async def set_goal(self, *, stream_id: str, actor_id: str, goal: Goal) -> tuple[Goal, bool]:
        """Add ``goal`` to the stream (its creator only). Returns the goal as stored and
        whether this was a replay. Raises LedgerRefusal (goal_limit, not_stream_owner, …)."""
        k = self.keys
        reply = await self.runner.run(
            ScriptName.SET_GOAL,
            [k.stream(stream_id), k.goals(stream_id), k.catalog(), k.room_channel(stream_id)],
            [
                stream_id,
                actor_id,
                goal.goal_id,
                goal.kind.value,
                goal.gift_id,
                goal.target,
                goal.title,
                GOALS_PER_STREAM_MAX,
                GOAL_TARGET_MAX,
            ],
            order_key=stream_id,
        )
        body, replayed = unpack(reply)
        return goal_from_json(orjson.loads(body)), replayed

    async def delete_goal(self, *, stream_id: str, actor_id: str, goal_id: str) -> bool:
        """Remove a goal (its creator only). True if this call removed it."""
        k = self.keys
        reply = await self.runner.run(
            ScriptName.DELETE_GOAL,
            [k.stream(stream_id), k.goals(stream_id), k.room_channel(stream_id)],
            [stream_id, actor_id, goal_id],
            order_key=stream_id,
        )
        _, replayed = unpack(reply)
        return not replayed

    async def goals(self, stream_id: str) -> list[Goal]:
        raw = await self.redis.hgetall(self.keys.goals(stream_id))
        return goals_from_hash(cast(dict[bytes, bytes], raw))

    async def fan_level(self, creator_id: str, user_id: str) -> int:
        """A viewer's gifter level with a creator (0: never sent a coin)."""
        score = await self.redis.zscore(self.keys.fans(creator_id), user_id)
        return level_for(int(score or 0))

    async def named(
        self, stream_id: str, creator_id: str, rows: list[tuple[str, int]]
    ) -> list[TopGifter]:
        """Leaderboard rows (user id, coins) with each gifter's display name and level."""
        if not rows:
            return []
        members = [user for user, _ in rows]
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(self.keys.names(stream_id), members)  # type: ignore[unused-awaitable]
        for user in members:
            pipe.zscore(self.keys.fans(creator_id), user)  # type: ignore[unused-awaitable]
        names, *lifetime = await pipe.execute()
        return top_gifters(rows, names, lifetime)
