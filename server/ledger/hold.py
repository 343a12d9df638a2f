"""Reading the payout hold a creator's account carries (``scripts/_hold.lua``). Pure.

The scripts decide what is held and enforce it; this module only reads their stored day
buckets for display (the wallet) and for the audit (reconcile), with the same release rule:
diamonds earned on day ``d`` (Unix seconds // day length) are held while the day is at most
``d + hold_days``. A clock behind the newest bucket never releases anything early.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.domain.limits import Limits

HOLD_FIELDS = ("held", "hold_day", "hold_ring")
"""The account hash's fields of the hold, in the order ``HoldState.parse`` takes them."""


def hold_args(limits: Limits) -> list[str | int]:
    """The scripts' hold ARGV: days (0: none) and the length of a day, seconds."""
    return [limits.payout_hold_days, limits.payout_hold_day_s]


def hold_day_of(ms: int, day_s: int) -> int:
    """The hold day of a moment (ms), as ``_hold_legs.lua``'s ``hold_day_of``."""
    return (ms // 1000) // day_s


@dataclass(frozen=True, slots=True)
class HoldState:
    held: int
    """The stored sum (as of ``day``)."""
    day: int
    buckets: tuple[int, ...]
    """Oldest first; the last is ``day``."""

    @classmethod
    def parse(cls, held: bytes | None, day: bytes | None, ring: bytes | None) -> HoldState:
        """From the stored fields; ``ValueError`` when they are not what the scripts write."""
        buckets = tuple(int(n) for n in ring.split(b",") if n) if ring else ()
        return cls(int(held or 0), int(day or 0), buckets)

    def held_on(self, today: int, hold_days: int) -> int:
        """Diamonds still held on day ``today``."""
        if hold_days == 0:
            return 0
        newest = max(today, self.day)
        n = len(self.buckets)
        return sum(
            v for i, v in enumerate(self.buckets) if self.day - (n - 1 - i) >= newest - hold_days
        )

    def next_release_ms(self, today: int, hold_days: int, day_s: int) -> int:
        """When the oldest diamonds still held on ``today`` are released (ms); 0 if none."""
        if hold_days == 0:
            return 0
        newest = max(today, self.day)
        n = len(self.buckets)
        for i, v in enumerate(self.buckets):
            bucket_day = self.day - (n - 1 - i)
            if v > 0 and bucket_day >= newest - hold_days:
                return (bucket_day + hold_days + 1) * day_s * 1000
        return 0


def hold_problems(user: str, fields: list[bytes | None], diamonds: int) -> list[str]:
    """The audit of one account's stored hold (``HOLD_FIELDS``): held is the sum of its
    buckets, none is negative, and held <= diamonds (so withdrawable >= 0)."""
    if not fields[2]:
        return []
    try:
        hold = HoldState.parse(*fields)
    except ValueError:
        return [f"account {user}: hold fields are not integers: {fields}"]
    problems = []
    if sum(hold.buckets) != hold.held:
        problems.append(f"account {user}: held {hold.held} != its buckets {hold.buckets}")
    if hold.held < 0 or min(hold.buckets, default=0) < 0:
        problems.append(f"account {user}: negative held diamonds {hold.buckets}")
    if hold.held > diamonds:
        problems.append(f"account {user}: holds {hold.held} diamonds in the hold of {diamonds}")
    return problems
