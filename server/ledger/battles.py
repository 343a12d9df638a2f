"""Battles between two live streams: the Python side of the battle scripts.

Every change is one script (``invite_battle``, ``accept_battle``, ``decline_battle``,
``end_battle``), atomic over both streams' keys on a single node (``docs/ledger.md``,
"Battles", says how cluster mode splits them). The score itself is written by
``send_gift.lua`` (``_battle.lua``): this module never adds to it.

Replies are the scripts' JSON documents, as they are also published to both rooms
(``docs/protocol.md``: ``battle_invite``, ``battle``, ``battle_end``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, cast

import orjson
from redis.asyncio import Redis

from server.domain.errors import ErrorCode, InvariantError, LedgerRefusal, RequestError
from server.domain.limits import (
    BATTLE_INVITES_PER_STREAM_MAX,
    BATTLE_RESULT_TTL_S,
    BATTLE_TOP_MAX,
    Limits,
)
from server.ledger.keys import Keys
from server.ledger.receipts import unpack
from server.ledger.runner import ScriptRunner
from server.ledger.scripts import ScriptName

Doc = dict[str, Any]
SERVER_ACTOR = "-"
"""The actor end_battle.lua is told when the server ends a battle (time, a stream ended)."""


@dataclass(frozen=True, slots=True)
class BattleReply:
    """A battle script's document, and whether the call was a replay."""

    doc: Doc
    replayed: bool


def _text(raw: dict[bytes, bytes], name: str) -> str:
    return raw.get(name.encode(), b"").decode()


def _num(raw: dict[bytes, bytes], name: str) -> int:
    value = raw.get(name.encode())
    return int(value) if value is not None else 0


class Battles:
    """Invite, accept, decline and end battles; read their state and results."""

    def __init__(
        self,
        redis: Redis,
        runner: ScriptRunner,
        keys: Keys,
        limits: Limits,
        redis_errors: Callable[[], AbstractAsyncContextManager[None]],
    ) -> None:
        self.redis = redis
        self.runner = runner
        self.keys = keys
        self.limits = limits
        self._redis_errors = redis_errors

    async def _run(
        self, name: ScriptName, keys: list[str], args: list[str | int], order_key: str
    ) -> BattleReply:
        body, replayed = unpack(await self.runner.run(name, keys, args, order_key=order_key))
        return BattleReply(orjson.loads(body), replayed)

    async def invite(
        self,
        *,
        battle_id: str,
        from_stream: str,
        to_stream: str,
        actor_id: str,
        duration_s: int | None = None,
    ) -> BattleReply:
        """The creator of ``from_stream`` invites ``to_stream`` to a battle."""
        k, lim = self.keys, self.limits
        await self.finish_due(from_stream)
        await self.finish_due(to_stream)
        return await self._run(
            ScriptName.INVITE_BATTLE,
            [
                k.stream(from_stream),
                k.stream(to_stream),
                k.battle_invite(from_stream),
                k.battle_invites(to_stream),
                k.battle(from_stream),
                k.battle(to_stream),
                k.room_channel(from_stream),
                k.room_channel(to_stream),
                k.creator_battle_invite(actor_id),
            ],
            [
                battle_id,
                from_stream,
                to_stream,
                actor_id,
                lim.battle_seconds_default if duration_s is None else duration_s,
                lim.battle_seconds_min,
                lim.battle_seconds_max,
                lim.battle_invite_ttl_s * 1000,
                BATTLE_INVITES_PER_STREAM_MAX,
            ],
            order_key=from_stream,
        )

    async def accept(
        self, *, battle_id: str, from_stream: str, to_stream: str, actor_id: str
    ) -> BattleReply:
        """The creator of ``to_stream`` accepts: the battle starts now."""
        k = self.keys
        # A battle past its end that nobody ended yet holds its stream (accept_battle.lua):
        # store its result first.
        await self.finish_due(from_stream)
        await self.finish_due(to_stream)
        inviter = await self._inviter(from_stream)
        return await self._run(
            ScriptName.ACCEPT_BATTLE,
            [
                k.stream(from_stream),
                k.stream(to_stream),
                k.battle_invite(from_stream),
                k.battle_invites(to_stream),
                k.battle(from_stream),
                k.battle(to_stream),
                k.battle_top(from_stream),
                k.battle_top(to_stream),
                k.room_channel(from_stream),
                k.room_channel(to_stream),
                k.creator_battle_invite(inviter),
            ],
            [battle_id, from_stream, to_stream, actor_id, inviter],
            order_key=from_stream,
        )

    async def _inviter(self, from_stream: str) -> str:
        """The creator who sent ``from_stream``'s pending invitation ('-' when none is;
        the script then refuses ``unknown_invite``, and checks the name itself)."""
        async with self._redis_errors():
            raw = await self.redis.hget(self.keys.battle_invite(from_stream), "from_creator")
        inviter = raw.decode() if isinstance(raw, bytes) else ""
        return inviter if inviter else SERVER_ACTOR

    async def decline(
        self, *, battle_id: str, from_stream: str, to_stream: str, actor_id: str
    ) -> BattleReply:
        """The invited creator declines, or the inviter withdraws, a pending invitation."""
        k = self.keys
        inviter = await self._inviter(from_stream)
        return await self._run(
            ScriptName.DECLINE_BATTLE,
            [
                k.battle_invite(from_stream),
                k.battle_invites(to_stream),
                k.room_channel(from_stream),
                k.room_channel(to_stream),
                k.creator_battle_invite(inviter),
            ],
            [battle_id, from_stream, to_stream, actor_id, inviter],
            order_key=from_stream,
        )

    async def end(self, *, stream_id: str, actor_id: str, reason: str) -> BattleReply:
        """End the battle ``stream_id`` is in (its last one: a replay once it ended).

        ``reason``: ``ended`` (``actor_id`` is one of its creators), ``time`` or
        ``stream_ended`` (the server: ``actor_id`` is ``SERVER_ACTOR``). Raises
        ``LedgerRefusal(unknown_battle)`` when the stream never was in one.
        """
        side = await self._side(stream_id)
        if side is None:
            raise LedgerRefusal(ErrorCode.UNKNOWN_BATTLE)
        battle_id, opponent = _text(side, "id"), _text(side, "opponent")
        k = self.keys
        return await self._run(
            ScriptName.END_BATTLE,
            [
                k.battle(stream_id),
                k.battle(opponent),
                k.battle_top(stream_id),
                k.battle_top(opponent),
                k.room_channel(stream_id),
                k.room_channel(opponent),
                k.battle_result(battle_id),
            ],
            [battle_id, stream_id, opponent, actor_id, reason, BATTLE_TOP_MAX, BATTLE_RESULT_TTL_S],
            order_key=stream_id,
        )

    async def finish_due(self, stream_id: str) -> BattleReply | None:
        """End the stream's battle if its time is up and nobody has ended it yet."""
        side = await self._side(stream_id)
        if side is None or _text(side, "state") != "running":
            return None
        if _num(side, "ends_at") > time.time() * 1000:
            return None
        with contextlib.suppress(LedgerRefusal):  # battle_not_over: Redis' clock is behind
            return await self.end(stream_id=stream_id, actor_id=SERVER_ACTOR, reason="time")
        return None

    async def end_for_stream(self, stream_id: str) -> BattleReply | None:
        """The stream ended: end its battle if one runs (the other side stops scoring)."""
        side = await self._side(stream_id)
        if side is None or _text(side, "state") != "running":
            return None
        return await self.end(stream_id=stream_id, actor_id=SERVER_ACTOR, reason="stream_ended")

    async def _side(self, stream_id: str) -> dict[bytes, bytes] | None:
        async with self._redis_errors():
            raw = cast(dict[bytes, bytes], await self.redis.hgetall(self.keys.battle(stream_id)))
        if not raw:
            return None
        if not raw.get(b"id") or not raw.get(b"opponent"):
            raise InvariantError(f"battle hash of {stream_id} has no id or opponent")
        return raw

    # Reads.

    async def live(self, stream_id: str, opponent: str | None = None) -> Doc | None:
        """Both sides of the stream's current or last battle: the fields of a
        ``battle_score`` but ``type`` and ``now`` (``state`` running or ended; an ended one
        adds its ``result``), or None when the stream never battled.

        With ``opponent`` (the other stream, as a caller already knows it) the four reads
        go in one round trip; a wrong one is noticed (the battle ids differ) and read
        again the long way."""
        k = self.keys
        if opponent is not None:
            async with self._redis_errors():
                pipe = self.redis.pipeline(transaction=False)
                pipe.hgetall(k.battle(stream_id))  # type: ignore[unused-awaitable]
                pipe.hgetall(k.battle(opponent))  # type: ignore[unused-awaitable]
                pipe.zrevrange(k.battle_top(stream_id), 0, BATTLE_TOP_MAX - 1, withscores=True)  # type: ignore[unused-awaitable]
                pipe.zrevrange(k.battle_top(opponent), 0, BATTLE_TOP_MAX - 1, withscores=True)  # type: ignore[unused-awaitable]
                side, other, top_here, top_there = await pipe.execute()
            if (
                side
                and side.get(b"opponent", b"").decode() == opponent
                and (side.get(b"id") == other.get(b"id"))
            ):
                return _live_doc(stream_id, opponent, side, other, top_here, top_there)
        found = await self._side(stream_id)
        if found is None:
            return None
        side, opponent = found, _text(found, "opponent")
        async with self._redis_errors():
            pipe = self.redis.pipeline(transaction=False)
            pipe.hgetall(k.battle(opponent))  # type: ignore[unused-awaitable]
            pipe.zrevrange(k.battle_top(stream_id), 0, BATTLE_TOP_MAX - 1, withscores=True)  # type: ignore[unused-awaitable]
            pipe.zrevrange(k.battle_top(opponent), 0, BATTLE_TOP_MAX - 1, withscores=True)  # type: ignore[unused-awaitable]
            other, top_here, top_there = await pipe.execute()
        return _live_doc(stream_id, opponent, side, other, top_here, top_there)

    async def invites(self, stream_id: str) -> Doc:
        """The stream's pending invitation (``outgoing``, or None) and the ones to it
        (``incoming``, oldest first), unexpired."""
        k = self.keys
        now_ms = int(time.time() * 1000)
        async with self._redis_errors():
            outgoing_raw = await self.redis.hget(k.battle_invite(stream_id), "json")
            senders = cast(
                list[bytes],
                await self.redis.zrangebyscore(k.battle_invites(stream_id), now_ms, "+inf"),
            )
            pipe = self.redis.pipeline(transaction=False)
            for sender in senders[:BATTLE_INVITES_PER_STREAM_MAX]:
                pipe.hget(k.battle_invite(sender.decode()), "json")  # type: ignore[unused-awaitable]
            incoming_raw = cast(list[bytes | None], await pipe.execute()) if senders else []
        incoming = [orjson.loads(raw) for raw in incoming_raw if raw is not None]
        return {
            "outgoing": orjson.loads(outgoing_raw) if outgoing_raw is not None else None,
            "incoming": [doc for doc in incoming if doc.get("to_stream") == stream_id],
        }

    async def result(self, battle_id: str) -> Doc:
        """A finished battle's stored result, or ``RequestError(unknown_battle)``."""
        async with self._redis_errors():
            raw = await self.redis.get(self.keys.battle_result(battle_id))
        if raw is None:
            raise RequestError(ErrorCode.UNKNOWN_BATTLE)
        doc: Doc = orjson.loads(raw)
        return doc


def _live_doc(
    stream_id: str,
    opponent: str,
    side: dict[bytes, bytes],
    other: dict[bytes, bytes],
    top_here: list[tuple[bytes, float]],
    top_there: list[tuple[bytes, float]],
) -> Doc:
    sides = [_side_doc(stream_id, side, top_here), _side_doc(opponent, other, top_there)]
    sides.sort(key=lambda s: str(s["side"]))
    doc: Doc = {
        "battle_id": _text(side, "id"),
        "state": _text(side, "state"),
        "starts_at": _num(side, "starts_at"),
        "ends_at": _num(side, "ends_at"),
        "duration_s": _num(side, "duration_s"),
        "sides": sides,
    }
    if result := side.get(b"result"):
        doc["result"] = orjson.loads(result)
    return doc


def _side_doc(stream_id: str, raw: dict[bytes, bytes], top: list[tuple[bytes, float]]) -> Doc:
    return {
        "stream_id": stream_id,
        "creator_id": _text(raw, "creator"),
        "creator_name": _text(raw, "name") or _text(raw, "creator"),
        "side": _text(raw, "side"),
        "score": _num(raw, "score"),
        "top": [{"user_id": user.decode(), "coins": int(coins)} for user, coins in top],
    }
