"""Reads and plain commands of cluster mode, each on the primary of its key's slot.

The base of ``ClusterLedger``: the stream id's owner (cached: it never changes once claimed),
the stream's state (trusted for ``STREAM_STATE_TTL_S`` before a debit), the stream, feed,
leaderboard and balances. A command is sent to the primary of its key's slot in the slot map;
a ``MOVED`` reply corrects the map and is followed once. Only reads and writes that are safe
to repeat go through here; the money goes through the scripts.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any, cast

from redis import exceptions as redis_errors

from server.domain.accounts import Balance
from server.domain.errors import InvariantError, UnavailableError
from server.domain.goals import Goal
from server.domain.levels import TopGifter, level_for
from server.domain.limits import STREAM_OWNERS_MAX, STREAM_STATE_TTL_S, Limits
from server.domain.streams import Stream
from server.ledger.cluster_keys import ClusterKeys, slot_of
from server.ledger.cluster_runner import ClusterScriptRunner
from server.ledger.cluster_topology import CONNECTION_ERRORS
from server.ledger.goals import goals_from_hash, top_gifters
from server.ledger.hold import HOLD_FIELDS, HoldState
from server.ledger.ledger import stream_from_hash

_NOT_SERVED = (redis_errors.AskError, redis_errors.ClusterDownError, redis_errors.TryAgainError)


class ClusterReads:
    def __init__(self, runner: ClusterScriptRunner, keys: ClusterKeys, limits: Limits) -> None:
        self.runner = runner
        self.keys = keys
        self.limits = limits
        self._owners: OrderedDict[str, str] = OrderedDict()
        self._states: dict[str, tuple[float, str]] = {}

    async def command(self, key: str, *args: str | int, **options: bool) -> Any:
        """``args[0] key args[1:]`` on the key's primary; MOVED is followed once.

        Only for commands that are safe to repeat (reads, idempotent writes). ``options``
        go to redis-py's reply parser (``get=True`` for ``SET … GET``)."""
        for attempt in (1, 2):
            await self.runner.slots.refresh_if_due()
            client = self.runner.client(self.runner.primary_of(slot_of(key)))
            try:
                async with asyncio.timeout(self.limits.redis_timeout_s):
                    return await client.execute_command(args[0], key, *args[1:], **options)  # type: ignore[no-untyped-call]
            except redis_errors.MovedError as e:
                self.runner.slots.owners[e.slot_id] = (e.host, e.port)
                self.runner.slots.stale = True
                if attempt == 2:
                    raise UnavailableError(f"cluster: slot moved: {e}") from e
            except (*CONNECTION_ERRORS, TimeoutError, *_NOT_SERVED) as e:
                self.runner.slots.stale = True
                raise UnavailableError(f"cluster: {type(e).__name__}: {e}") from e
        raise InvariantError("unreachable")

    async def owner(self, stream_id: str) -> str | None:
        """The creator that claimed ``stream_id`` (kept: an owner never changes)."""
        creator = self._owners.get(stream_id)
        if creator is None:
            raw = await self.command(self.keys.stream_owner(stream_id), "GET")
            if raw is None:
                return None
            creator = raw.decode()
            self._owners[stream_id] = creator
            if len(self._owners) > STREAM_OWNERS_MAX:
                self._owners.popitem(last=False)
        return creator

    async def stream_state(self, stream_id: str, creator_id: str) -> str:
        """``live``, ``ended`` or ``unknown``, read at most every ``STREAM_STATE_TTL_S``."""
        now = asyncio.get_running_loop().time()
        cached = self._states.get(stream_id)
        if cached is not None and now - cached[0] < STREAM_STATE_TTL_S:
            return cached[1]
        raw = await self.command(self.keys.stream(creator_id, stream_id), "HGET", "state")
        state = "unknown" if raw is None else raw.decode()
        if len(self._states) >= STREAM_OWNERS_MAX:
            self._states.clear()
        self._states[stream_id] = (now, state)
        return state

    async def stream(self, stream_id: str) -> Stream | None:
        creator = await self.owner(stream_id)
        if creator is None:
            return None
        raw = await self.command(self.keys.stream(creator, stream_id), "HGETALL")
        return stream_from_hash(stream_id, _as_hash(raw))

    async def feed(self, stream_id: str, after_seq: int, limit: int) -> list[bytes]:
        creator = await self.owner(stream_id)
        if creator is None:
            return []
        rows = await self.command(
            self.keys.feed(creator, stream_id), "XRANGE", f"{after_seq + 1}-0", "+", "COUNT", limit
        )
        return [_as_hash(fields)[b"e"] for _, fields in rows]

    async def leaderboard(self, stream_id: str, limit: int = 10) -> list[TopGifter]:
        """The stream's top gifters, most coins first, with display names and levels (the
        names hash and the fans zset, written by credit_gifts.lua in the creator's slot)."""
        creator = await self.owner(stream_id)
        if creator is None:
            return []
        k = self.keys
        raw = await self.command(
            k.leaderboard(creator, stream_id), "ZREVRANGE", 0, limit - 1, "WITHSCORES"
        )
        rows = [(member.decode(), int(float(score))) for member, score in _pairs(raw)]
        if not rows:
            return []
        members = [user for user, _ in rows]
        names = await self.command(k.names(creator, stream_id), "HMGET", *members)
        lifetime = await self.command(k.fans(creator), "ZMSCORE", *members)
        return top_gifters(rows, list(names), list(lifetime))

    async def fan_level(self, creator_id: str, user_id: str) -> int:
        """A viewer's gifter level with a creator (0: never sent a coin)."""
        score = await self.command(self.keys.fans(creator_id), "ZSCORE", user_id)
        return level_for(int(float(score)) if score else 0)

    async def stream_goals(self, stream_id: str) -> list[Goal]:
        """The stream's goals with their progress, in creation order ([] for no stream)."""
        creator = await self.owner(stream_id)
        if creator is None:
            return []
        raw = await self.command(self.keys.goals(creator, stream_id), "HGETALL")
        return goals_from_hash(_as_hash(raw))

    async def balance(self, user_id: str) -> Balance:
        """The account's balances and what of its diamonds the payout hold keeps, by this
        process's clock (a display: cash_out.lua decides by its primary's)."""
        values = await self.command(
            self.keys.account(user_id), "HMGET", "coins", "diamonds", "debt", *HOLD_FIELDS
        )
        coins, diamonds, debt = (int(v) if v is not None else 0 for v in values[:3])
        held, next_release_ms = 0, 0
        if values[5]:
            lim = self.limits
            hold = HoldState.parse(*values[3:])
            today = int(time.time()) // lim.payout_hold_day_s
            held = hold.held_on(today, lim.payout_hold_days)
            next_release_ms = hold.next_release_ms(
                today, lim.payout_hold_days, lim.payout_hold_day_s
            )
        return Balance(user_id, coins, diamonds, debt, held, next_release_ms)

    # Money.


def _as_hash(raw: object) -> dict[bytes, bytes]:
    """A hash reply as a dict (RESP2 gives a flat list, redis-py's callbacks a dict)."""
    if isinstance(raw, dict):
        return cast(dict[bytes, bytes], raw)
    items = cast(list[bytes], raw or [])
    return dict(zip(items[::2], items[1::2], strict=True))


def _pairs(raw: object) -> list[tuple[bytes, bytes]]:
    if raw and isinstance(raw[0], (list, tuple)):  # type: ignore[index]
        return [(m, s) for m, s in cast(list[tuple[bytes, bytes]], raw)]
    items = cast(list[bytes], raw or [])
    return list(zip(items[::2], items[1::2], strict=True))
