"""Server messages: one function per message type, so every field is named once.

Two kinds of message meet here. *Room events* are published by the Lua scripts inside the
transfer that caused them (``gift``, ``level_up`` and ``goal_reached`` by send_gift.lua,
``stream`` by start/end_stream.lua, ``epoch`` by bump_epoch.lua, ``goals`` by set_goal.lua
and delete_goal.lua); their fields are listed below and the integration tests
(``test_epoch.py``, ``test_goals.py``) check the scripts' JSON against them. The rest
are built by the server. ``docs/protocol.md`` lists every ``type`` (``tests/unit/test_docs``).
"""

from __future__ import annotations

from typing import Any

from server.domain.catalog import Catalog
from server.domain.errors import ERROR_MESSAGES, ErrorCode
from server.domain.goals import Goal
from server.domain.levels import TopGifter

Message = dict[str, Any]

GIFT_EVENT_FIELDS = frozenset(
    {
        "type", "seq", "epoch", "transfer_id", "stream_id", "sender_id", "sender_name",
        "gift_id", "count", "combo", "coins", "diamonds", "ts", "level",
    }
)  # fmt: skip
"""What send_gift.lua publishes and stores in the feed for each gift (``level``: the
sender's gifter level with the creator after it). Plus ``goals`` when it advanced one."""
GIFT_GOALS_FIELD = "goals"
"""The gift event's optional list of ``GOAL_PROGRESS_FIELDS``: the goals it advanced."""
GOAL_PROGRESS_FIELDS = frozenset({"goal_id", "progress"})
LEVEL_UP_EVENT_FIELDS = frozenset(
    {"type", "stream_id", "seq", "user_id", "user_name", "level", "prev_level", "coins"}
)
"""send_gift.lua, after the gift that took its sender past a level (2 and up)."""
GOAL_REACHED_EVENT_FIELDS = frozenset(
    {
        "type", "stream_id", "goal_id", "kind", "gift_id", "title", "target", "progress",
        "seq", "sender_id", "sender_name", "ts",
    }
)  # fmt: skip
"""send_gift.lua, once per goal: after the gift that took its progress to the target."""
GOAL_FIELDS = frozenset({"goal_id", "kind", "gift_id", "target", "title", "progress", "reached"})
"""One goal, as in ``goals``, the welcome and the HTTP API."""
GOALS_EVENT_FIELDS = frozenset({"type", "stream_id", "goals"})
"""set_goal.lua and delete_goal.lua: the stream's goals after the change."""
GIFT_EVENT_OPTIONAL_FIELDS = frozenset({"battle_id", "to", "recipients", "goals"})
"""Fields a gift event carries only sometimes: ``battle_id`` when it scored in a battle,
``to`` and ``recipients`` when guests received it (``_guests.lua``), ``goals`` when it
advanced a goal (``_goals.lua``)."""
GUESTS_EVENT_FIELDS = frozenset({"type", "stream_id", "guests"})
"""invite_guest.lua, join_stage.lua, leave_stage.lua: the stage after the change."""
GUEST_FIELDS = frozenset({"user_id", "name", "state", "coins", "diamonds"})
"""Each of a ``guests`` event's ``guests`` (and of ``GET /api/streams/{id}/guests``)."""
GIFT_DISPLAY_FIELDS = frozenset({"gift_name", "animation", "tier"})
"""Added from the catalog to every gift a client sees: live, resumed or paged by HTTP."""
STREAM_EVENT_FIELDS = frozenset({"type", "stream_id", "state", "seq"})
"""start_stream.lua and end_stream.lua (``seq`` only when it ended)."""
EPOCH_EVENT_FIELDS = frozenset({"type", "stream_id", "epoch", "prev_epoch", "prev_epoch_seq"})
"""bump_epoch.lua: the stream's history changed; never sent to clients as such."""

BATTLE_INVITE_EVENT_FIELDS = frozenset({"type", "state", "invite"})
"""invite_battle.lua (state ``pending``) and decline_battle.lua (``declined``, ``withdrawn``)."""
BATTLE_INVITE_FIELDS = frozenset(
    {"battle_id", "from_stream", "from_creator", "to_stream", "to_creator", "duration_s",
     "expires_at"}
)  # fmt: skip
"""The ``invite`` of a ``battle_invite`` event (and of the HTTP replies)."""
BATTLE_EVENT_FIELDS = frozenset(
    {"type", "battle_id", "state", "starts_at", "ends_at", "now", "duration_s", "sides"}
)
"""accept_battle.lua: the battle started (both rooms)."""
BATTLE_END_EVENT_FIELDS = frozenset(
    {"type", "battle_id", "reason", "starts_at", "ends_at", "ended_at", "duration_s", "winner",
     "draw", "sides"}
)  # fmt: skip
"""end_battle.lua: the result (both rooms; stored, ``GET /api/battles/{id}``)."""
BATTLE_SIDE_FIELDS = frozenset({"stream_id", "creator_id", "creator_name", "side", "score", "top"})
"""Each of ``sides`` (side ``a`` the inviter first); a result's sides add ``mvp``."""

SERVER_MESSAGE_TYPES = (
    "welcome", "gift_ack", "error", "gift", "gifts", "stats", "leaderboard", "stream", "lag",
    "gap", "history_changed", "pong", "battle_invite", "battle", "battle_score", "battle_end",
    "guests", "level_up", "goal_reached", "goals", "catalog",
)  # fmt: skip
"""Every ``type`` the server sends to a client."""


def error(
    code: ErrorCode,
    client_id: str | None = None,
    message: str | None = None,
    detail: dict[str, object] | None = None,
) -> Message:
    out: Message = {
        "type": "error",
        "id": client_id,
        "code": code.value,
        "message": message or ERROR_MESSAGES[code],
    }
    if detail:
        out["detail"] = detail
    return out


def enrich_gift(event: Message, catalog: Catalog) -> Message:
    """Add the catalog's display fields to a gift event published by send_gift.lua."""
    gift = catalog.get(event.get("gift_id", ""))
    if gift is not None:
        event["gift_name"] = gift.name
        event["animation"] = gift.animation
        event["tier"] = gift.tier
    return event


def gift_batch(events: list[Message]) -> Message:
    """Coalesced gift events of a hot room, oldest first."""
    return {"type": "gifts", "events": events}


def gift_frame(events: list[Message]) -> Message:
    """One gift as a ``gift`` message, several as one ``gifts``."""
    return events[0] if len(events) == 1 else gift_batch(events)


def welcome(
    *,
    stream: Message,
    you: Message,
    balance: Message,
    viewers: int,
    top: list[TopGifter],
    goals: list[Goal],
    last_seq: int,
    epoch: str,
    fmt: str,
) -> Message:
    """``you.level``: the viewer's gifter level with this stream's creator (the caller
    adds it to ``you``)."""
    return {
        "type": "welcome",
        "stream": stream,
        "you": you,
        "balance": balance,
        "viewers": viewers,
        "top": leaderboard_rows(top),
        "goals": [goal.to_json() for goal in goals],
        "last_seq": last_seq,
        "epoch": epoch,
        "format": fmt,
    }


def leaderboard_rows(top: list[TopGifter]) -> list[Message]:
    return [
        {"user_id": row.user_id, "name": row.name, "coins": row.coins, "level": row.level}
        for row in top
    ]


def gift_ack(
    *,
    client_id: str,
    transfer_id: str,
    gift_id: str,
    count: int,
    coins: int,
    balance: int,
    combo: int,
    seq: int,
    replayed: bool,
) -> Message:
    return {
        "type": "gift_ack",
        "id": client_id,
        "transfer_id": transfer_id,
        "gift": gift_id,
        "count": count,
        "coins": coins,
        "balance": balance,
        "combo": combo,
        "seq": seq,
        "replayed": replayed,
    }


def stats(*, viewers: int, coins: int, diamonds: int, gifts: int, last_seq: int) -> Message:
    return {
        "type": "stats",
        "viewers": viewers,
        "coins": coins,
        "diamonds": diamonds,
        "gifts": gifts,
        "last_seq": last_seq,
    }


def stream_state(stream_id: str, state: str, last_seq: int) -> Message:
    """What start_stream.lua and end_stream.lua publish (``ended`` also names the stream's
    last gift), for a change the room heard of only from a snapshot."""
    message: Message = {"type": "stream", "stream_id": stream_id, "state": state}
    if state == "ended":
        message["seq"] = last_seq
    return message


def leaderboard(top: list[TopGifter]) -> Message:
    return {"type": "leaderboard", "top": leaderboard_rows(top)}


def lag(dropped: int, last_seq: int) -> Message:
    return {"type": "lag", "dropped": dropped, "last_seq": last_seq}


def gap(from_seq: int, to_seq: int) -> Message:
    return {"type": "gap", "from_seq": from_seq, "to_seq": to_seq}


def history_changed(epoch: str, from_seq: int) -> Message:
    """The stream's history changed (Redis lost writes): forget the gifts from
    ``from_seq`` on; the gifts of the current history from ``from_seq`` follow."""
    return {"type": "history_changed", "epoch": epoch, "from_seq": from_seq}


def pong(client_id: str | None) -> Message:
    return {"type": "pong", "id": client_id}


def goals(stream_id: str, stream_goals: list[Goal]) -> Message:
    """The stream's goals after a change: what set_goal.lua and delete_goal.lua publish."""
    return {
        "type": "goals",
        "stream_id": stream_id,
        "goals": [goal.to_json() for goal in stream_goals],
    }


def catalog(current: Catalog) -> Message:
    """A new catalog version is current: show these gifts and prices, and send this
    ``version`` with each gift from now on (``catalog_version``)."""
    return {"type": "catalog", "version": current.version, "gifts": [g.to_json() for g in current]}


def battle_score(live: Message, now_ms: int) -> Message:
    """The live score of both sides (``Battles.live``), sent to both rooms each battle tick
    while it changes; ``now`` is the server's clock, for the clients' countdown."""
    return {
        "type": "battle_score",
        "battle_id": live["battle_id"],
        "state": live["state"],
        "starts_at": live["starts_at"],
        "ends_at": live["ends_at"],
        "now": now_ms,
        "sides": live["sides"],
    }
