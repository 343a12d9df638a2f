"""A creator's goal calls on a Redis Cluster: ``set_goal.lua`` and ``delete_goal.lua`` in the
creator's slot.

Contract, as ``GoalStore`` in single-node mode: atomic, idempotent by goal id, the stream's
creator only (the script checks it against the stream hash); each publishes the stream's
goals (``goals``) to the room's shard channel (``SPUBLISH``) when it changed them. The
goals hash is ``{u:CREATOR}:s:STREAM:goals``, in the slot of every key ``credit_gifts.lua``
writes, so progress moves in the step that credits the coins. A gift goal must name a gift
of the creator's slot's catalog copy (``{~N}:catalog``, current once the ledger is
prepared). An unclaimed stream id is ``unknown_stream`` and writes nothing.
"""

from __future__ import annotations

import orjson

from server.domain.errors import ErrorCode, LedgerRefusal
from server.domain.goals import Goal
from server.domain.limits import GOAL_TARGET_MAX, GOALS_PER_STREAM_MAX
from server.ledger.cluster_keys import slot_of
from server.ledger.cluster_reads import ClusterReads
from server.ledger.goals import goal_from_json
from server.ledger.receipts import unpack
from server.ledger.scripts import ScriptName

SHARD_PUBLISH = "shard"
"""The scripts' last ARGV in cluster mode: publish with SPUBLISH, on the shard channel."""


class ClusterGoals(ClusterReads):
    """The goal calls of ``ClusterLedger`` (the same method contracts as ``Ledger``)."""

    async def _creator_of(self, stream_id: str) -> str:
        creator = await self.owner(stream_id)
        if creator is None:
            raise LedgerRefusal(ErrorCode.UNKNOWN_STREAM)
        return creator

    async def set_goal(self, *, stream_id: str, actor_id: str, goal: Goal) -> tuple[Goal, bool]:
        """Add ``goal`` to the stream (its creator only). Returns the goal as stored and
        whether this was a replay. Raises LedgerRefusal (goal_limit, not_stream_owner, …)."""
        creator = await self._creator_of(stream_id)
        k = self.keys
        reply = await self.runner.run(
            ScriptName.SET_GOAL,
            [
                k.stream(creator, stream_id),
                k.goals(creator, stream_id),
                k.catalog_shard(slot_of(k.account(creator))),
                k.room_channel(creator, stream_id),
            ],
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
                SHARD_PUBLISH,
            ],
            order_key=creator,
        )
        body, replayed = unpack(reply)
        return goal_from_json(orjson.loads(body)), replayed

    async def delete_goal(self, *, stream_id: str, actor_id: str, goal_id: str) -> bool:
        """Remove a goal (its creator only). True if this call removed it."""
        creator = await self._creator_of(stream_id)
        k = self.keys
        reply = await self.runner.run(
            ScriptName.DELETE_GOAL,
            [
                k.stream(creator, stream_id),
                k.goals(creator, stream_id),
                k.room_channel(creator, stream_id),
            ],
            [stream_id, actor_id, goal_id, SHARD_PUBLISH],
            order_key=creator,
        )
        _, replayed = unpack(reply)
        return not replayed
