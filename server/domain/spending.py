"""Responsible spending: a user's own limits, the platform's caps for minors, the spend.

The rules live in Lua (``server/ledger/scripts/_spend.lua``): send_gift enforces them in
the same step that moves the coins, and ``spending_limits.lua`` shows and changes them.
This module only names what they report.

- **Two periods.** ``day`` is any 24 hours (a rolling window of 25 hourly buckets, so at
  most 25 hours of spend count); ``month`` is the calendar month in UTC
  (``docs/ledger.md``, "Spending limits", says why not a rolling 30 days).
- **Lowering is at once, raising waits.** A raise (or removing a limit) is *pending* for
  ``Limits.spend_raise_cooling_off_s`` (24 h by default), then in force by itself.
- **A minor's cap binds.** The platform (an admin) may mark an account a minor with caps;
  the limit in force is then the lower of the own limit and the cap, and a user's request
  for more than the cap is refused with ``spending_cap``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Period(StrEnum):
    DAY = "day"
    MONTH = "month"


@dataclass(frozen=True, slots=True)
class PendingRaise:
    limit_coins: int
    """0: no limit at all, once in force."""
    from_ms: int
    """When it is in force, by Redis' clock (Unix ms)."""


@dataclass(frozen=True, slots=True)
class PeriodStatus:
    limit_coins: int
    """The limit in force (0: none): the own limit, capped by the platform's."""
    own_coins: int
    cap_coins: int
    """The platform's cap (0: none)."""
    set_by: str
    """``own`` or ``platform``: which of the two binds."""
    spent_coins: int
    """Spent in the period so far (day: the last 24-25 hours; month: since its first)."""
    pending: PendingRaise | None
    month: str | None = None
    """``YYYY-MM`` of the month counted (month only)."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "limit": self.limit_coins,
            "own": self.own_coins,
            "cap": self.cap_coins,
            "set_by": self.set_by,
            "spent": self.spent_coins,
            "remaining": None
            if self.limit_coins == 0
            else max(0, self.limit_coins - self.spent_coins),
            "pending": None
            if self.pending is None
            else {"limit": self.pending.limit_coins, "from_ms": self.pending.from_ms},
        }
        if self.month is not None:
            out["month"] = self.month
        return out


@dataclass(frozen=True, slots=True)
class SpendingStatus:
    user_id: str
    minor: bool
    now_ms: int
    day: PeriodStatus
    month: PeriodStatus
    applied: dict[str, str] | None = None
    """After a change: per period ``now``, ``pending``, ``kept`` or ``unchanged``."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "user_id": self.user_id,
            "minor": self.minor,
            "now_ms": self.now_ms,
            "day": self.day.to_json(),
            "month": self.month.to_json(),
        }
        if self.applied is not None:
            out["applied"] = self.applied
        return out


def _period(doc: dict[str, Any], month: bool) -> PeriodStatus:
    pending = doc.get("pending")
    return PeriodStatus(
        limit_coins=int(doc["limit"]),
        own_coins=int(doc["own"]),
        cap_coins=int(doc["cap"]),
        set_by=str(doc["set_by"]),
        spent_coins=int(doc["spent"]),
        pending=None
        if not isinstance(pending, dict)
        else PendingRaise(int(pending["limit"]), int(pending["from_ms"])),
        month=str(doc["period"]) if month else None,
    )


def status_from_json(user_id: str, doc: dict[str, Any]) -> SpendingStatus:
    """The status as ``spending_limits.lua`` reports it (``spend_status`` in ``_spend.lua``)."""
    applied = doc.get("applied")
    return SpendingStatus(
        user_id=user_id,
        minor=bool(doc["minor"]),
        now_ms=int(doc["now_ms"]),
        day=_period(doc["day"], month=False),
        month=_period(doc["month"], month=True),
        applied={str(k): str(v) for k, v in applied.items()} if isinstance(applied, dict) else None,
    )
