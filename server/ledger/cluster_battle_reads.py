"""Reads of battles on a Redis Cluster: each side read in its own stream's slot
(``docs/ledger.md``, "Battles in cluster mode"). The base of ``ClusterBattles``.

The live score of a battle is two reads, one per slot: the opponent's is what carries its
score across to a room (the battle watch makes it every tick). The other slot's view that
a change needs (the invited stream's creator, state, battle side) is read here too, with
plain reads; the scripts check their own slot again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from typing import Any

import orjson

from server.domain.errors import ErrorCode, InvariantError, LedgerRefusal, RequestError
from server.domain.limits import BATTLE_INVITES_PER_STREAM_MAX, BATTLE_TOP_MAX, Limits
from server.ledger.battles import BattleReply, Doc, _live_doc
from server.ledger.cluster_keys import ClusterKeys
from server.ledger.cluster_reads import ClusterReads, _as_hash, _pairs
from server.ledger.receipts import unpack
from server.ledger.scripts import ScriptName

HELD = ("running", "starting")
"""A side in one of these states holds its stream (no other battle may start)."""


def _text(raw: dict[bytes, bytes], name: str) -> str:
    return raw.get(name.encode(), b"").decode()


def _num(raw: dict[bytes, bytes], name: str) -> int:
    value = raw.get(name.encode())
    return int(value) if value is not None else 0


class ClusterBattleReads:
    """The reads of ``ClusterBattles``, and the one-script call it makes each step with."""

    def __init__(self, reads: ClusterReads, keys: ClusterKeys, limits: Limits) -> None:
        self.reads = reads
        self.keys = keys
        self.limits = limits

    async def _run(
        self, name: ScriptName, keys: list[str], args: list[str | int], order_key: str
    ) -> BattleReply:
        body, replayed = unpack(await self.reads.runner.run(name, keys, args, order_key=order_key))
        return BattleReply(orjson.loads(body), replayed)

    async def _creator(self, stream_id: str) -> str:
        creator = await self.reads.owner(stream_id)
        if creator is None:
            raise LedgerRefusal(ErrorCode.UNKNOWN_STREAM)
        return creator

    async def _other_stream(self, stream_id: str) -> tuple[str, str, str, dict[bytes, bytes]]:
        """The other slot's view, read plainly: creator ('' unknown), the stream's state
        ('' unknown), its creator name, and its battle side."""
        creator = await self.reads.owner(stream_id)
        if creator is None:
            return "", "", "", {}
        k = self.keys
        stream, side = await asyncio.gather(
            self.reads.command(k.stream(creator, stream_id), "HMGET", "state", "creator_name"),
            self.reads.command(k.battle(creator, stream_id), "HGETALL"),
        )
        state, name = (v.decode() if v is not None else "" for v in stream)
        return creator, state, name, _as_hash(side)

    async def _side(self, creator: str, stream_id: str) -> dict[bytes, bytes] | None:
        raw = _as_hash(await self.reads.command(self.keys.battle(creator, stream_id), "HGETALL"))
        if not raw:
            return None
        if not raw.get(b"id") or not raw.get(b"opponent") or not raw.get(b"opponent_creator"):
            raise InvariantError(f"battle side of {stream_id} has no id or opponent")
        return raw

    # Reads.

    async def live(self, stream_id: str, opponent: str | None = None) -> Doc | None:
        """As ``Battles.live``: both sides of the stream's current or last battle, each read
        in its own slot (the opponent's is the read that carries its score across); an ended
        one adds its stored ``result``. With ``opponent`` (as the battle watch knows it) both
        slots are read at once; a wrong one is noticed and read again."""
        creator = await self.reads.owner(stream_id)
        if creator is None:
            return None
        guessed = await self.reads.owner(opponent) if opponent is not None else None
        reads = [*self._side_reads(creator, stream_id)]
        if opponent is not None and guessed is not None:
            reads += self._side_reads(guessed, opponent)
        side_raw, top_raw, *there = await asyncio.gather(*reads)
        side = _as_hash(side_raw)
        if not side:
            return None
        opponent_now, other_creator = _text(side, "opponent"), _text(side, "opponent_creator")
        if not there or (opponent_now, other_creator) != (opponent, guessed):
            there = list(await asyncio.gather(*self._side_reads(other_creator, opponent_now)))
        other, other_top = _as_hash(there[0]), there[1]
        if _text(other, "id") != _text(side, "id"):
            # The opponent's side is not (or no longer) this battle's: it scores nothing here.
            other = {b"side": b"b" if _text(side, "side") == "a" else b"a"}
            other_top = []
        doc = _live_doc(stream_id, opponent_now, side, other, _scored(top_raw), _scored(other_top))
        if doc["state"] == "ended":
            with contextlib.suppress(RequestError):
                doc["result"] = await self.result(doc["battle_id"])
        return doc

    def _side_reads(self, creator: str, stream_id: str) -> list[Coroutine[Any, Any, Any]]:
        """A side's hash and its top gifters: two reads in its slot."""
        k = self.keys
        return [
            self.reads.command(k.battle(creator, stream_id), "HGETALL"),
            self.reads.command(
                k.battle_top(creator, stream_id), "ZREVRANGE", 0, BATTLE_TOP_MAX - 1, "WITHSCORES"
            ),
        ]

    async def invites(self, stream_id: str) -> Doc:
        """The stream's pending invitation (``outgoing``, or None) and the ones to it
        (``incoming``, oldest first), unexpired."""
        creator = await self.reads.owner(stream_id)
        if creator is None:
            return {"outgoing": None, "incoming": []}
        k = self.keys
        now_ms = int(time.time() * 1000)
        outgoing_raw, senders = await asyncio.gather(
            self.reads.command(k.battle_invite(creator, stream_id), "HGET", "json"),
            self.reads.command(
                k.battle_invites(creator, stream_id), "ZRANGEBYSCORE", now_ms, "+inf"
            ),
        )
        incoming: list[Doc] = []
        for sender in list(senders)[:BATTLE_INVITES_PER_STREAM_MAX]:
            sender_id = sender.decode()
            sender_creator = await self.reads.owner(sender_id)
            if sender_creator is None:
                continue
            raw = await self.reads.command(
                k.battle_invite(sender_creator, sender_id), "HGET", "json"
            )
            if raw is not None:
                doc = orjson.loads(raw)
                if doc.get("to_stream") == stream_id:
                    incoming.append(doc)
        return {
            "outgoing": orjson.loads(outgoing_raw) if outgoing_raw is not None else None,
            "incoming": incoming,
        }

    async def result(self, battle_id: str) -> Doc:
        """A finished battle's stored result, or ``RequestError(unknown_battle)``."""
        raw = await self.reads.command(self.keys.battle_result(battle_id), "GET")
        if raw is None:
            raise RequestError(ErrorCode.UNKNOWN_BATTLE)
        doc: Doc = orjson.loads(raw)
        return doc


def _scored(raw: Any) -> list[tuple[bytes, float]]:
    return [(member, float(score)) for member, score in _pairs(raw)]
