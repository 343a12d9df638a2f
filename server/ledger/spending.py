"""The spending limits in Redis: show, set and protect, each one run of
``spending_limits.lua`` (the rules are in ``_spend.lua``, shared with send_gift).

Contract: each call is atomic against every gift of the user, in every process: a limit
lowered here binds the next gift the script runs, and a gift that ran before it counted
under the old limit. ``set`` is safe to retry (a raise asked again keeps its time); a
refusal (``spending_cap``, ``invalid_request``) changes nothing. ``UnavailableError``:
unknown, retry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import orjson

from server.domain.errors import ErrorCode, RequestError
from server.domain.limits import SPEND_LIMIT_COINS_MAX, Limits
from server.domain.spending import Period, SpendingStatus, status_from_json
from server.ledger.receipts import unpack
from server.ledger.scripts import ScriptName

UNCHANGED = "-"
"""ARGV of ``set`` for a period the call leaves as it is."""


def _limit_arg(value: int | None, what: str) -> str:
    if value is None:
        return UNCHANGED
    if type(value) is not int or not 0 <= value <= SPEND_LIMIT_COINS_MAX:
        raise RequestError(
            ErrorCode.INVALID_REQUEST, f"{what} must be an integer 0..{SPEND_LIMIT_COINS_MAX}"
        )
    return str(value)


class ScriptRuns(Protocol):
    """A script runner: single-node's ``ScriptRunner`` or the cluster's (the script's one
    key, the account, is in one slot)."""

    async def run(
        self,
        name: ScriptName,
        keys: Sequence[str],
        args: Sequence[str | int],
        *,
        order_key: str = "",
    ) -> list[bytes]: ...


class AccountKeys(Protocol):
    def account(self, user_id: str) -> str: ...


class SpendingStore:
    def __init__(self, runner: ScriptRuns, keys: AccountKeys, limits: Limits) -> None:
        self.runner = runner
        self.keys = keys
        self.limits = limits

    async def _call(self, user_id: str, args: list[str | int]) -> SpendingStatus:
        lim = self.limits
        reply = await self.runner.run(
            ScriptName.SPENDING_LIMITS,
            [self.keys.account(user_id)],
            [args[0], lim.daily_spend_coins_max, lim.monthly_spend_coins_max, *args[1:]],
            order_key=user_id,
        )
        body, _ = unpack(reply)
        doc: dict[str, Any] = orjson.loads(body)
        return status_from_json(user_id, doc)

    async def show(self, user_id: str) -> SpendingStatus:
        """The limits in force, a pending raise, and what was spent in each period."""
        return await self._call(user_id, ["show", 0])

    async def set(
        self, user_id: str, *, day: int | None = None, month: int | None = None
    ) -> SpendingStatus:
        """The user's own limits (None: leave it; 0: none). Lower: at once; higher: after
        the cooling-off. Raises ``LedgerRefusal(spending_cap)`` above a minor's cap."""
        args: list[str | int] = [
            "set",
            self.limits.spend_raise_cooling_off_s * 1000,
            _limit_arg(day, Period.DAY.value),
            _limit_arg(month, Period.MONTH.value),
        ]
        return await self._call(user_id, args)

    async def protect(
        self,
        user_id: str,
        *,
        minor: bool,
        day_cap: int | None = None,
        month_cap: int | None = None,
    ) -> SpendingStatus:
        """Mark (``minor``) or unmark an account a minor; the caps default to the settings'
        ``minor_*_spend_coins_max``. In force at once."""
        lim = self.limits
        day = lim.minor_daily_spend_coins_max if day_cap is None else day_cap
        month = lim.minor_monthly_spend_coins_max if month_cap is None else month_cap
        args: list[str | int] = [
            "protect",
            0,
            "1" if minor else "0",
            _limit_arg(day, "day_cap"),
            _limit_arg(month, "month_cap"),
        ]
        return await self._call(user_id, args)
