"""Battles on a Redis Cluster: each side in its own stream's slot (``docs/ledger.md``,
"Battles in cluster mode").

The two streams of a battle live in their creators' slots, so no script may touch both.
Every change is a sequence of one-slot scripts, each idempotent by the battle id, that a
retry of the same call finishes after a crash between them:

* invite: ``battle_invite`` in the inviter's slot (the invitation, the creator's mark),
  then ``battle_incoming`` ``add`` in the invited stream's (its list, bounded); a refusal
  there takes the invitation back (``drop``, actor ``-``);
* accept: ``battle_start`` (side a ``starting``), ``battle_join`` (side b running),
  ``battle_run`` (side a running); a refused join cancels side a;
* decline: ``battle_invite`` ``drop``, then ``battle_incoming`` ``remove``;
* end: ``battle_end_side`` on each side (each at its own primary's clock), then
  ``battle_result`` in the battle's own slot from the two sides' final JSON, then the
  result is published to both rooms (``SPUBLISH``; a process's battle watch also carries
  a result it finds stored to its rooms, in case a crash came before the publish).

The score is written by ``credit_gifts.lua`` (``_battle.lua``), never here. What the
other slot holds (the invited stream's creator, state, whether a battle holds it) is read
with plain reads and passed in; the window a race can open is the read's age, and each
script still checks its own slot's state.

Same public contract as ``Battles`` (single node), so the routes and the battle watch are
the same code.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

import orjson

from server.domain.errors import ErrorCode, InvariantError, LedgerRefusal
from server.domain.limits import BATTLE_INVITES_PER_STREAM_MAX, BATTLE_RESULT_TTL_S, BATTLE_TOP_MAX
from server.ledger.battles import SERVER_ACTOR, BattleReply, Doc
from server.ledger.cluster_battle_reads import HELD, ClusterBattleReads, _num, _text
from server.ledger.scripts import ScriptName

CRASH_IN_ACCEPT_ENV = "GIFTWIRE_TEST_CRASH_IN_ACCEPT"
"""Test-only hook: ``1`` (or ``2``) kills this process (SIGKILL) right after the accept's
step 1 (or 2) committed (``tests/cluster/test_cluster_battle_serve.py``). Read once, at
import."""
_CRASH_AFTER_STEP = os.environ.get(CRASH_IN_ACCEPT_ENV, "")


def _crash_point(step: str) -> None:
    if step == _CRASH_AFTER_STEP:
        os.kill(os.getpid(), signal.SIGKILL)


class ClusterBattles(ClusterBattleReads):
    """Invite, accept, decline and end battles on a cluster (the reads: the base class)."""

    # Invitations.

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
        creator = await self._creator(from_stream)
        await self.finish_due(from_stream)
        await self.finish_due(to_stream)
        to_creator, to_state, _, to_side = await self._other_stream(to_stream)
        now_ms = time.time() * 1000
        busy = _text(to_side, "state") in HELD and _num(to_side, "ends_at") > now_ms
        reply = await self._run(
            ScriptName.BATTLE_INVITE,
            [
                k.stream(creator, from_stream),
                k.battle_invite(creator, from_stream),
                k.battle(creator, from_stream),
                k.room_channel(creator, from_stream),
                k.creator_battle_invite(creator),
            ],
            [
                "invite",
                battle_id,
                from_stream,
                to_stream,
                actor_id,
                lim.battle_seconds_default if duration_s is None else duration_s,
                lim.battle_seconds_min,
                lim.battle_seconds_max,
                lim.battle_invite_ttl_s * 1000,
                to_creator,
                to_state,
                "1" if busy else "0",
            ],
            order_key=creator,
        )
        # Listed in the invited stream's slot (again on a replay: a crash may have come
        # between the two steps; listing is idempotent).
        try:
            await self._incoming(to_creator, to_stream, "add", reply.doc, "pending")
        except LedgerRefusal:
            await self._drop(creator, battle_id, from_stream, to_stream, SERVER_ACTOR)
            raise
        return reply

    async def _incoming(
        self, to_creator: str, to_stream: str, op: str, invite: Doc, state: str
    ) -> BattleReply:
        k = self.keys
        return await self._run(
            ScriptName.BATTLE_INCOMING,
            [k.battle_invites(to_creator, to_stream), k.room_channel(to_creator, to_stream)],
            [
                op,
                str(invite["from_stream"]),
                orjson.dumps(invite).decode(),
                state,
                BATTLE_INVITES_PER_STREAM_MAX,
            ],
            order_key=to_creator,
        )

    async def _drop(
        self, creator: str, battle_id: str, from_stream: str, to_stream: str, actor_id: str
    ) -> BattleReply:
        k = self.keys
        return await self._run(
            ScriptName.BATTLE_INVITE,
            [
                k.stream(creator, from_stream),
                k.battle_invite(creator, from_stream),
                k.battle(creator, from_stream),
                k.room_channel(creator, from_stream),
                k.creator_battle_invite(creator),
            ],
            ["drop", battle_id, from_stream, to_stream, actor_id],
            order_key=creator,
        )

    async def decline(
        self, *, battle_id: str, from_stream: str, to_stream: str, actor_id: str
    ) -> BattleReply:
        """The invited creator declines, or the inviter withdraws, a pending invitation."""
        creator = await self._creator(from_stream)
        reply = await self._drop(creator, battle_id, from_stream, to_stream, actor_id)
        to_creator = await self._creator(to_stream)
        state = "withdrawn" if actor_id == creator else "declined"
        await self._incoming(to_creator, to_stream, "remove", reply.doc, state)
        return reply

    # Accept, in three steps.

    async def accept(
        self, *, battle_id: str, from_stream: str, to_stream: str, actor_id: str
    ) -> BattleReply:
        """The creator of ``to_stream`` accepts: the battle starts now. A retry with the
        same battle id finishes an accept a crash interrupted."""
        k = self.keys
        creator = await self._creator(from_stream)
        await self.finish_due(from_stream)
        await self.finish_due(to_stream)
        raw = await self.reads.command(
            k.battle_invite(creator, from_stream), "HGET", "from_creator"
        )
        inviter = raw.decode() if raw else SERVER_ACTOR
        to_creator, to_state, to_name, to_side = await self._other_stream(to_stream)
        busy = _text(to_side, "state") in HELD and _text(to_side, "id") != battle_id
        started = await self._run(
            ScriptName.BATTLE_START,
            [
                k.stream(creator, from_stream),
                k.battle_invite(creator, from_stream),
                k.battle(creator, from_stream),
                k.battle_top(creator, from_stream),
                k.creator_battle_invite(creator),
            ],
            [
                battle_id,
                from_stream,
                to_stream,
                actor_id,
                inviter,
                to_name,
                to_state,
                "1" if busy else "0",
            ],
            order_key=creator,
        )
        _crash_point("1")
        if started.replayed:
            state = await self.reads.command(k.battle(creator, from_stream), "HGET", "state")
            if state != b"starting":  # running or ended: every step was done
                return started
        if not to_creator:
            raise InvariantError(f"stream {to_stream} accepted a battle without an owner")
        await self._join_and_run(creator, to_creator, battle_id, from_stream, to_stream, started)
        return started

    async def _join_and_run(
        self,
        creator: str,
        to_creator: str,
        battle_id: str,
        from_stream: str,
        to_stream: str,
        started: BattleReply,
    ) -> None:
        """Steps 2 and 3; a refused step 2 cancels side a and raises the refusal."""
        k = self.keys
        try:
            await self._run(
                ScriptName.BATTLE_JOIN,
                [
                    k.stream(to_creator, to_stream),
                    k.battle_invites(to_creator, to_stream),
                    k.battle(to_creator, to_stream),
                    k.battle_top(to_creator, to_stream),
                    k.room_channel(to_creator, to_stream),
                ],
                [
                    battle_id,
                    from_stream,
                    to_stream,
                    to_creator,
                    creator,
                    orjson.dumps(started.doc).decode(),
                ],
                order_key=to_creator,
            )
        except LedgerRefusal:
            await self._step_a("cancel", creator, battle_id, from_stream, to_stream)
            raise
        _crash_point("2")
        await self._step_a("run", creator, battle_id, from_stream, to_stream)

    async def _step_a(
        self, op: str, creator: str, battle_id: str, from_stream: str, to_stream: str
    ) -> BattleReply:
        k = self.keys
        return await self._run(
            ScriptName.BATTLE_RUN,
            [k.battle(creator, from_stream), k.room_channel(creator, from_stream)],
            [op, battle_id, to_stream],
            order_key=creator,
        )

    async def _resume(self, stream_id: str, creator: str, side: dict[bytes, bytes]) -> None:
        """Finish (or, past the invitation's lifetime, cancel) an accept that stopped
        between its steps: side a is still ``starting``."""
        battle_id, opponent = _text(side, "id"), _text(side, "opponent")
        _, _, _, other = await self._other_stream(opponent)
        if _text(other, "id") == battle_id:
            await self._step_a("run", creator, battle_id, stream_id, opponent)
        elif _num(side, "starts_at") + self.limits.battle_invite_ttl_s * 1000 < time.time() * 1000:
            with contextlib.suppress(LedgerRefusal):
                await self._step_a("cancel", creator, battle_id, stream_id, opponent)

    # The end.

    async def end(self, *, stream_id: str, actor_id: str, reason: str) -> BattleReply:
        """End the battle ``stream_id`` is in (its last one: a replay once it ended).

        Same contract as ``Battles.end``: ``LedgerRefusal(unknown_battle)`` when the stream
        never was in one (or is no stream), ``battle_not_over`` for ``time`` before the end."""
        creator = await self.reads.owner(stream_id)
        if creator is None:
            raise LedgerRefusal(ErrorCode.UNKNOWN_BATTLE)
        side = await self._side(creator, stream_id)
        if side is not None and _text(side, "state") == "starting":
            # An accept between its steps: finish it if side b joined; if not, it has not
            # begun (it is cancelled once the invitation's lifetime passed).
            await self._resume(stream_id, creator, side)
            side = await self._side(creator, stream_id)
            if side is not None and _text(side, "state") == "starting":
                raise LedgerRefusal(ErrorCode.UNKNOWN_BATTLE)
        if side is None:
            raise LedgerRefusal(ErrorCode.UNKNOWN_BATTLE)
        battle_id, opponent = _text(side, "id"), _text(side, "opponent")
        other_creator = _text(side, "opponent_creator")
        here = await self._end_side(creator, stream_id, battle_id, actor_id, reason)
        there = await self._end_side(other_creator, opponent, battle_id, actor_id, reason)
        k = self.keys
        stored = await self._run(
            ScriptName.BATTLE_RESULT,
            [k.battle_result(battle_id)],
            [
                battle_id,
                orjson.dumps(here).decode(),
                orjson.dumps(there).decode(),
                BATTLE_RESULT_TTL_S,
            ],
            order_key=battle_id,
        )
        if not stored.replayed:
            await self._publish_result(stored.doc)
        return stored

    async def _end_side(
        self, creator: str, stream_id: str, battle_id: str, actor_id: str, reason: str
    ) -> Doc:
        k = self.keys
        reply = await self._run(
            ScriptName.BATTLE_END_SIDE,
            [k.battle(creator, stream_id), k.battle_top(creator, stream_id)],
            [battle_id, stream_id, actor_id, reason, BATTLE_TOP_MAX],
            order_key=creator,
        )
        return reply.doc

    async def _publish_result(self, result: Doc) -> None:
        """``battle_end`` to both rooms. Lost in a crash, the battle watch of every process
        with either room open carries the stored result instead."""
        body = orjson.dumps(result).decode()
        for side in result["sides"]:
            stream_id = str(side["stream_id"])
            creator = str(side["creator_id"])
            await self.reads.command(self.keys.room_channel(creator, stream_id), "SPUBLISH", body)

    async def finish_due(self, stream_id: str) -> BattleReply | None:
        """End the stream's battle if its time is up and nobody has ended it yet; store the
        result of one whose sides ended before a crash kept its result from being stored;
        finish or cancel an accept that stopped between its steps."""
        creator = await self.reads.owner(stream_id)
        if creator is None:
            return None
        side = await self._side(creator, stream_id)
        if side is None:
            return None
        state = _text(side, "state")
        if state == "starting":
            await self._resume(stream_id, creator, side)
            side = await self._side(creator, stream_id)
            if side is None:
                return None
            state = _text(side, "state")
        if state == "ended":
            result = await self.reads.command(self.keys.battle_result(_text(side, "id")), "EXISTS")
            if result:
                return None
        elif _num(side, "ends_at") > time.time() * 1000:
            return None
        with contextlib.suppress(LedgerRefusal):  # battle_not_over: Redis' clock is behind
            return await self.end(stream_id=stream_id, actor_id=SERVER_ACTOR, reason="time")
        return None

    async def end_for_stream(self, stream_id: str) -> BattleReply | None:
        """The stream ended: end its battle if one holds it (the other side stops too)."""
        creator = await self.reads.owner(stream_id)
        if creator is None:
            return None
        side = await self._side(creator, stream_id)
        if side is None or _text(side, "state") not in HELD:
            return None
        try:
            return await self.end(stream_id=stream_id, actor_id=SERVER_ACTOR, reason="stream_ended")
        except LedgerRefusal as refusal:
            if refusal.code is ErrorCode.UNKNOWN_BATTLE:  # an accept that has not begun
                return None
            raise
