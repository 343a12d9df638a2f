"""Economic rules, all in integers.

These functions document and unit-test the rules; the Lua scripts are the ledger and apply
the same arithmetic atomically in Redis (``server/ledger/scripts``).
"""

from __future__ import annotations

from dataclasses import dataclass

from server.domain.limits import AMOUNT_MAX

BASIS_POINTS = 10_000


@dataclass(frozen=True, slots=True)
class Economics:
    """The platform's rates.

    ``creator_share_bps``: the creator's share of every gift, in basis points (5000 = 50 %).
    ``cents_per_100_diamonds``: what a creator is paid per 100 diamonds cashed out.
    """

    creator_share_bps: int = 5_000
    cents_per_100_diamonds: int = 50

    def __post_init__(self) -> None:
        if not 0 <= self.creator_share_bps <= BASIS_POINTS:
            raise ValueError("creator_share_bps must be within 0..10000")
        if not 0 < self.cents_per_100_diamonds <= 10_000:
            raise ValueError("cents_per_100_diamonds must be within 1..10000")


@dataclass(frozen=True, slots=True)
class Split:
    coins: int
    diamonds: int
    platform_coins: int


def split_gift(coins: int, creator_share_bps: int) -> Split:
    """Split coins spent into the creator's diamonds and the platform's share.

    The creator's part is rounded down; the remainder goes to the platform, so
    ``diamonds + platform_coins == coins`` exactly.
    """
    if not 0 <= coins <= AMOUNT_MAX:
        raise ValueError("coins out of range")
    diamonds = coins * creator_share_bps // BASIS_POINTS
    return Split(coins=coins, diamonds=diamonds, platform_coins=coins - diamonds)


def payout_cents(diamonds: int, cents_per_100_diamonds: int) -> int:
    """Cash value of a cash-out, rounded down to a whole cent."""
    return diamonds * cents_per_100_diamonds // 100
