"""The platform's rates, all in integers.

The rules that apply them live only in the Lua scripts (``server/ledger/scripts``):
send_gift splits coins into diamonds carrying the creator's remainder, cash_out turns
diamonds into cents carrying the fraction of a cent. ``docs/ledger.md`` states both.
"""

from __future__ import annotations

from dataclasses import dataclass

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
