"""Audit the books: replay the ledger stream and compare it with every balance.

Checks, all in integers:

* per account: coins, diamonds and debt equal what the ledger's entries add up to;
* the platform account holds exactly the platform shares;
* coins in (top-ups credited - coins clawed back) = coins held + coins spent;
* coins spent = diamonds credited + platform share (per entry and in total);
* diamonds credited = diamonds held + diamonds cashed out;
* no balance is negative.

This reads the ledger; it never writes. It assumes no writes happen while it runs, or
reports the in-flight ones as mismatches: run it on a quiet ledger or a replica.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import cast

from redis.asyncio import Redis

from server.ledger.keys import Keys
from server.ledger.runner import StreamRows

_CHUNK = 5_000


@dataclass(slots=True)
class _Expected:
    coins: int = 0
    diamonds: int = 0
    debt: int = 0


@dataclass(slots=True)
class Totals:
    entries: int = 0
    top_ups: int = 0
    coins_bought: int = 0
    coins_credited: int = 0
    debt_repaid: int = 0
    coins_clawed: int = 0
    debt_added: int = 0
    gifts: int = 0
    coins_spent: int = 0
    diamonds_credited: int = 0
    platform_coins: int = 0
    diamonds_cashed_out: int = 0
    payout_cents: int = 0
    coins_held: int = 0
    diamonds_held: int = 0
    debt_held: int = 0
    platform_held: int = 0
    accounts: int = 0


@dataclass(slots=True)
class Report:
    totals: Totals = field(default_factory=Totals)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "totals": {name: getattr(self.totals, name) for name in Totals.__slots__},
            "problems": self.problems,
        }


def _apply(
    entry: dict[bytes, bytes],
    model: defaultdict[str, _Expected],
    t: Totals,
    problems: list[str],
    entry_id: str,
) -> None:
    kind = entry[b"type"]
    if kind == b"gift":
        coins, diamonds, platform = (int(entry[k]) for k in (b"coins", b"diamonds", b"platform"))
        if coins != diamonds + platform:
            problems.append(f"{entry_id}: gift splits {coins} into {diamonds} + {platform}")
        model[entry[b"from"].decode()].coins -= coins
        model[entry[b"to"].decode()].diamonds += diamonds
        t.gifts += 1
        t.coins_spent += coins
        t.diamonds_credited += diamonds
        t.platform_coins += platform
    elif kind == b"top_up":
        account = model[entry[b"to"].decode()]
        credited, repaid = int(entry[b"credited"]), int(entry[b"repaid"])
        if credited + repaid != int(entry[b"coins"]):
            problems.append(f"{entry_id}: top-up credited {credited} + repaid {repaid}")
        account.coins += credited
        account.debt -= repaid
        t.top_ups += 1
        t.coins_bought += int(entry[b"coins"])
        t.coins_credited += credited
        t.debt_repaid += repaid
    elif kind == b"refund":
        account = model[entry[b"from"].decode()]
        clawed, debt = int(entry[b"clawed"]), int(entry[b"debt"])
        account.coins -= clawed
        account.debt += debt
        t.coins_clawed += clawed
        t.debt_added += debt
    elif kind == b"cash_out":
        model[entry[b"from"].decode()].diamonds -= int(entry[b"diamonds"])
        t.diamonds_cashed_out += int(entry[b"diamonds"])
        t.payout_cents += int(entry[b"cents"])
    elif kind == b"payout":
        # A failed payout returns the cash-out's diamonds: as if it had not been cashed out.
        if entry[b"state"] == b"failed":
            model[entry[b"to"].decode()].diamonds += int(entry[b"diamonds"])
            t.diamonds_cashed_out -= int(entry[b"diamonds"])
            t.payout_cents -= int(entry[b"cents"])
        elif entry[b"state"] != b"paid":
            problems.append(f"{entry_id}: payout in state {entry[b'state']!r}")
    else:
        problems.append(f"{entry_id}: unknown entry type {kind!r}")


async def log_entries(redis: Redis, keys: Keys, start: str = "-") -> AsyncIterator[StreamRows]:
    """``{ledger}:log`` from ``start`` on, oldest first, in chunks."""
    while True:
        rows = cast(StreamRows, await redis.xrange(keys.ledger(), min=start, max="+", count=_CHUNK))
        if rows:
            yield rows
        if len(rows) < _CHUNK:
            return
        start = "(" + rows[-1][0].decode()


async def reconcile(
    redis: Redis,
    keys: Keys,
    progress: Callable[[int], None] | None = None,
    entries: AsyncIterator[StreamRows] | None = None,
) -> Report:
    """Replay the ledger and check it against the balances. ``progress(entries_read)``.

    ``entries``: the whole history, oldest first; by default Redis' log. Once the archiver
    has trimmed the log, ``server.record.reconcile`` passes the record's part followed by
    what is left in Redis.
    """
    report = Report()
    t, problems = report.totals, report.problems
    model: defaultdict[str, _Expected] = defaultdict(_Expected)
    async for rows in entries if entries is not None else log_entries(redis, keys):
        for entry_id, entry in rows:
            _apply(entry, model, t, problems, entry_id.decode())
        t.entries += len(rows)
        if progress:
            progress(t.entries)

    seen: set[str] = set()
    async for key in redis.scan_iter(match=keys.account_pattern(), count=1000):
        user = keys.user_id_of_account(key.decode())
        seen.add(user)
        coins, diamonds, debt = (
            int(v or 0) for v in await redis.hmget(key, ["coins", "diamonds", "debt"])
        )
        want = model.get(user, _Expected())
        if (coins, diamonds, debt) != (want.coins, want.diamonds, want.debt):
            problems.append(
                f"account {user}: holds coins={coins} diamonds={diamonds} debt={debt}, ledger "
                f"says coins={want.coins} diamonds={want.diamonds} debt={want.debt}"
            )
        if min(coins, diamonds, debt) < 0:
            problems.append(f"account {user}: negative balance")
        t.accounts += 1
        t.coins_held += coins
        t.diamonds_held += diamonds
        t.debt_held += debt
    for user, want in model.items():
        if user not in seen and (want.coins, want.diamonds, want.debt) != (0, 0, 0):
            problems.append(f"account {user}: missing, ledger says it holds {want}")

    t.platform_held = int(await redis.hget(keys.platform(), "coins") or 0)
    if t.platform_held != t.platform_coins:
        problems.append(f"platform holds {t.platform_held}, ledger says {t.platform_coins}")
    if t.coins_credited - t.coins_clawed != t.coins_held + t.coins_spent:
        problems.append(
            f"coins in ({t.coins_credited} - {t.coins_clawed} clawed) != held {t.coins_held}"
            f" + spent {t.coins_spent}"
        )
    if t.coins_spent != t.diamonds_credited + t.platform_coins:
        problems.append(f"coins spent {t.coins_spent} != diamonds + platform share")
    if t.diamonds_credited != t.diamonds_held + t.diamonds_cashed_out:
        problems.append(
            f"diamonds credited {t.diamonds_credited} != held {t.diamonds_held}"
            f" + cashed out {t.diamonds_cashed_out}"
        )
    return report
