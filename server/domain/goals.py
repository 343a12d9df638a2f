"""Stream goals: a creator's targets for a live, counted by the gift script.

A goal counts either the coins of every gift (``coins``) or how many of one gift were sent
(``gift``, with its ``gift_id``). Progress is moved by ``send_gift.lua`` in the same step
that moves the coins, so it is exact under any concurrency and lives in Redis (it survives
a server restart). A goal is *reached* once, by the gift that takes its progress from
below its target to at or above it; progress goes on counting after that.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from server.domain.accounts import is_valid_id
from server.domain.errors import ErrorCode, RequestError
from server.domain.limits import GOAL_TARGET_MAX, GOAL_TITLE_LENGTH_MAX


class GoalKind(StrEnum):
    COINS = "coins"
    GIFT = "gift"


@dataclass(frozen=True, slots=True)
class Goal:
    goal_id: str
    kind: GoalKind
    gift_id: str
    """The gift counted (``gift`` goals); empty for ``coins``."""
    target: int
    title: str
    progress: int = 0

    @property
    def reached(self) -> bool:
        return self.progress >= self.target

    def to_json(self) -> dict[str, Any]:
        return {
            "goal_id": self.goal_id,
            "kind": self.kind.value,
            "gift_id": self.gift_id,
            "target": self.target,
            "title": self.title,
            "progress": self.progress,
            "reached": self.reached,
        }


def goal_from_request(doc: dict[str, Any]) -> Goal:
    """Validate a creator's goal (``POST /api/streams/{id}/goals``); RequestError if bad."""
    goal_id, kind, gift_id = doc.get("goal_id"), doc.get("kind"), doc.get("gift_id", "")
    target, title = doc.get("target"), doc.get("title", "")
    if not is_valid_id(goal_id):
        raise RequestError(ErrorCode.INVALID_REQUEST, "goal_id must be an id")
    if kind not in (GoalKind.COINS.value, GoalKind.GIFT.value):
        raise RequestError(ErrorCode.INVALID_REQUEST, "kind must be coins or gift")
    if kind == GoalKind.GIFT.value and not is_valid_id(gift_id):
        raise RequestError(ErrorCode.INVALID_REQUEST, "a gift goal needs a gift_id")
    if kind == GoalKind.COINS.value and gift_id:
        raise RequestError(ErrorCode.INVALID_REQUEST, "a coins goal has no gift_id")
    if type(target) is not int or not 1 <= target <= GOAL_TARGET_MAX:
        raise RequestError(ErrorCode.INVALID_REQUEST, f"target must be 1 to {GOAL_TARGET_MAX}")
    if not isinstance(title, str) or len(title) > GOAL_TITLE_LENGTH_MAX:
        raise RequestError(
            ErrorCode.INVALID_REQUEST, f"title must be a string of at most {GOAL_TITLE_LENGTH_MAX}"
        )
    if not all(ch.isprintable() for ch in title):
        raise RequestError(ErrorCode.INVALID_REQUEST, "title must be printable")
    return Goal(goal_id, GoalKind(kind), gift_id, target, title.strip())
