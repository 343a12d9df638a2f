"""The per-user rate of state-changing HTTP calls: one run of ``change_rate.lua``.

Every call that changes something on a user's behalf and is not a gift (goals, spending
limits, guests, battles, the admin's catalog and account edits and payouts settled by
hand) costs a script and, most of them, a message to a room's every viewer.
``ChangeLimiter.take`` spends one token of the user's bucket before the call's own script
runs, or raises ``rate_limited`` and nothing else runs (``docs/protocol.md``, "Limits").

Contract: one bucket per user in Redis (``{u:USER}:changes``), shared by every process and,
on a cluster, in the user's slot, so it holds however the calls are spread. A token is
spent when taken, whatever the call then does (a refusal or a replay costs the server a
script too). ``UnavailableError``: Redis did not answer; the call is refused with
``unavailable`` and nothing ran.

Why a script of its own rather than a check inside each call's script: the calls' scripts
run in the stream's slot (or the catalog's), the bucket in the user's; one script and one
key serve every endpoint in both modes. The price is one more round trip per change, on
calls made at a human pace.
"""

from __future__ import annotations

from typing import Protocol

from server.domain.errors import ErrorCode, LedgerRefusal
from server.domain.limits import Limits
from server.ledger.receipts import unpack
from server.ledger.scripts import ScriptName
from server.ledger.spending import ScriptRuns

RATE_LIMITED_MESSAGE = "too many changes too quickly; try again in a moment (Retry-After)"


class ChangeKeys(Protocol):
    def changes(self, user_id: str) -> str: ...


class ChangeLimiter:
    def __init__(self, runner: ScriptRuns, keys: ChangeKeys, limits: Limits) -> None:
        self.runner = runner
        self.keys = keys
        self.limits = limits

    async def take(self, user_id: str) -> int:
        """Spend one of ``user_id``'s change tokens; return the whole tokens left.

        Raises ``LedgerRefusal(rate_limited)`` with ``detail.retry_after_ms`` when the
        bucket is empty.
        """
        reply = await self.runner.run(
            ScriptName.CHANGE_RATE,
            [self.keys.changes(user_id)],
            [self.limits.changes_per_minute_max, self.limits.change_burst_max],
            order_key=user_id,
        )
        try:
            body, _ = unpack(reply)
        except LedgerRefusal as refusal:
            if refusal.code is ErrorCode.RATE_LIMITED:
                raise LedgerRefusal(refusal.code, RATE_LIMITED_MESSAGE, refusal.detail) from None
            raise
        return int(body)
