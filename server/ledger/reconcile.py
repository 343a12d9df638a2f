"""Audit the books: replay the ledger stream and compare it with every balance.

Checks, all in integers:

* per account: coins, diamonds and debt equal what the ledger's entries add up to;
* the platform account holds exactly the platform shares;
* coins in (top-ups credited - coins clawed back) = coins held + coins spent;
* coins spent = diamonds credited + platform share (per entry and in total);
* each gift's diamonds and each cash-out's cents follow from the creator's carried
  remainder (``share_rem``, ``cents_rem``), which the account holds exactly; in total,
  coins x share = diamonds x 10000 + the remainders carried;
* diamonds credited - diamonds clawed back = diamonds held + diamonds cashed out;
* each clawback (a gift in the payout hold reversed by a chargeback) takes back exactly the
  inverse of the split, and the platform holds its shares less what clawbacks returned;
* the payout hold: each account's held diamonds are the sum of its day buckets, no bucket is
  negative, and held <= diamonds (so withdrawable = diamonds - held >= 0);
* no balance is negative.

Beyond the sums, ``server.ledger.books`` checks ids, receipts, sequences and prices.

This reads the ledger; it never writes. It assumes no writes happen while it runs, or
reports the in-flight ones as mismatches: run it on a quiet ledger or a replica.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import cast

from redis.asyncio import Redis

from server.domain.limits import Limits
from server.domain.money import BASIS_POINTS
from server.ledger.books import LogAudit
from server.ledger.hold import HOLD_FIELDS, HoldState
from server.ledger.keys import Keys
from server.ledger.runner import StreamRows

_CHUNK = 5_000


@dataclass(slots=True)
class _Expected:
    coins: int = 0
    diamonds: int = 0
    debt: int = 0
    share_rem: int = 0
    """The creator's carried fraction of a diamond, in basis-point units."""
    cents_rem: int = 0
    """The creator's carried fraction of a cent, in hundredths of a cent."""


@dataclass(slots=True)
class Totals:
    entries: int = 0
    top_ups: int = 0
    coins_bought: int = 0
    coins_credited: int = 0
    coins_withheld: int = 0
    """Coins of payments refunded before they arrived: bought, never credited."""
    debt_repaid: int = 0
    coins_clawed: int = 0
    debt_added: int = 0
    gifts: int = 0
    coins_spent: int = 0
    diamonds_credited: int = 0
    platform_coins: int = 0
    diamonds_cashed_out: int = 0
    coins_reversed: int = 0
    """Coins of gifts in the payout hold that chargebacks reversed (clawback entries)."""
    diamonds_clawed_back: int = 0
    platform_returned: int = 0
    diamonds_in_hold: int = 0
    """Sum of the accounts' held diamonds (as stored; part of ``diamonds_held``)."""
    payout_cents: int = 0
    coins_held: int = 0
    diamonds_held: int = 0
    share_units: int = 0
    """Sum of coins x creator share (basis points) over the gifts that carry a remainder."""
    diamonds_carried: int = 0
    """Diamonds credited by those gifts."""
    share_rem_held: int = 0
    """Sum of the creators' carried remainders (basis-point units)."""
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
        if b"recipients" in entry:
            _split_share(entry, coins, diamonds, model, t, problems, entry_id)
        else:
            creator = model[entry[b"to"].decode()]
            if b"share_bps" in entry:
                _carry_share(entry, coins, diamonds, creator, t, problems, entry_id)
            creator.diamonds += diamonds
        t.gifts += 1
        t.coins_spent += coins
        t.diamonds_credited += diamonds
        t.platform_coins += platform
    elif kind == b"top_up":
        account = model[entry[b"to"].decode()]
        credited, repaid = int(entry[b"credited"]), int(entry[b"repaid"])
        withheld = int(entry.get(b"withheld", 0))
        if credited + repaid + withheld != int(entry[b"coins"]):
            problems.append(
                f"{entry_id}: top-up of {int(entry[b'coins'])} credited {credited} + repaid "
                f"{repaid} + withheld {withheld}"
            )
        account.coins += credited
        account.debt -= repaid
        t.top_ups += 1
        t.coins_bought += int(entry[b"coins"])
        t.coins_credited += credited
        t.debt_repaid += repaid
        t.coins_withheld += withheld
    elif kind == b"refund":
        account = model[entry[b"from"].decode()]
        clawed, debt = int(entry[b"clawed"]), int(entry[b"debt"])
        reversed_coins = int(entry.get(b"reversed", 0))
        # Refunds before refund ids took the whole payment and had no `refunded` field.
        refunded = int(entry.get(b"refunded", entry[b"coins"]))
        if clawed + reversed_coins + debt != refunded:
            problems.append(
                f"{entry_id}: refund of {refunded} clawed {clawed} + reversed {reversed_coins}"
                f" + debt {debt}"
            )
        # The clawback entries before it gave the reversed coins back; the refund takes them.
        account.coins -= clawed + reversed_coins
        account.debt += debt
        t.coins_clawed += clawed
        t.debt_added += debt
    elif kind == b"cash_out":
        creator = model[entry[b"from"].decode()]
        if b"rate" in entry:
            _carry_cents(entry, creator, problems, entry_id)
        creator.diamonds -= int(entry[b"diamonds"])
        t.diamonds_cashed_out += int(entry[b"diamonds"])
        t.payout_cents += int(entry[b"cents"])
    elif kind == b"clawback":
        _clawback(entry, model, t, problems, entry_id)
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


def _carry_share(
    entry: dict[bytes, bytes],
    coins: int,
    diamonds: int,
    creator: _Expected,
    t: Totals,
    problems: list[str],
    entry_id: str,
) -> None:
    """Recompute send_gift's split with the creator's carried remainder (docs/ledger.md)."""
    units = coins * int(entry[b"share_bps"])
    t.share_units += units
    t.diamonds_carried += diamonds
    earned = creator.share_rem + units
    want, rem = divmod(earned, BASIS_POINTS)
    if (diamonds, int(entry[b"share_rem"])) != (want, rem):
        problems.append(
            f"{entry_id}: gift of {coins} coins credits {diamonds} diamonds carrying "
            f"{int(entry[b'share_rem'])}, the share says {want} carrying {rem}"
        )
    creator.share_rem = rem


def _clawback(
    entry: dict[bytes, bytes],
    model: defaultdict[str, _Expected],
    t: Totals,
    problems: list[str],
    entry_id: str,
) -> None:
    """A gift in the payout hold reversed: the exact inverse of its split (``_hold.lua``)."""
    coins, diamonds, platform = (int(entry[k]) for k in (b"coins", b"diamonds", b"platform"))
    if coins != diamonds + platform:
        problems.append(f"{entry_id}: clawback splits {coins} into {diamonds} + {platform}")
    creator = model[entry[b"from"].decode()]
    units = coins * int(entry[b"share_bps"])
    back, rem = divmod(creator.share_rem - units, BASIS_POINTS)
    if (diamonds, int(entry[b"share_rem"])) != (-back, rem):
        problems.append(
            f"{entry_id}: clawback of {coins} coins takes {diamonds} diamonds leaving "
            f"{int(entry[b'share_rem'])}, the share says {-back} leaving {rem}"
        )
    creator.share_rem = rem
    creator.diamonds -= diamonds
    model[entry[b"to"].decode()].coins += coins
    t.share_units -= units
    t.diamonds_carried -= diamonds
    t.coins_reversed += coins
    t.diamonds_clawed_back += diamonds
    t.platform_returned += platform


def _check_hold(user: str, fields: list[bytes | None], diamonds: int, t: Totals) -> list[str]:
    """The payout hold's invariants on one account (``_hold.lua``)."""
    try:
        hold = HoldState.parse(*fields)
    except ValueError:
        return [f"account {user}: hold fields are not integers: {fields}"]
    t.diamonds_in_hold += hold.held
    problems = []
    if hold.buckets and sum(hold.buckets) != hold.held:
        problems.append(f"account {user}: held {hold.held} != its buckets {hold.buckets}")
    if hold.held < 0 or min(hold.buckets, default=0) < 0:
        problems.append(f"account {user}: negative held diamonds {hold.buckets}")
    if hold.held > diamonds:
        problems.append(f"account {user}: holds {hold.held} diamonds in the hold of {diamonds}")
    return problems


def _split_share(
    entry: dict[bytes, bytes],
    coins: int,
    diamonds: int,
    model: defaultdict[str, _Expected],
    t: Totals,
    problems: list[str],
    entry_id: str,
) -> None:
    """A gift to guests (``_guests.lua``): each recipient's coins, diamonds and carried
    remainder, recomputed as for a creator; the parts add up to the gift."""
    share_bps = int(entry[b"share_bps"])
    parts = [part.rsplit(":", 3) for part in entry[b"recipients"].decode().split(";")]
    if sum(int(p[1]) for p in parts) != coins or sum(int(p[2]) for p in parts) != diamonds:
        problems.append(f"{entry_id}: gift to guests splits {coins} coins into {parts}")
    for user, part_coins, part_diamonds, part_rem in parts:
        guest = model[user]
        units = int(part_coins) * share_bps
        t.share_units += units
        t.diamonds_carried += int(part_diamonds)
        want, rem = divmod(guest.share_rem + units, BASIS_POINTS)
        if (int(part_diamonds), int(part_rem)) != (want, rem):
            problems.append(
                f"{entry_id}: gift to guest {user} credits {part_diamonds} diamonds carrying "
                f"{part_rem}, the share says {want} carrying {rem}"
            )
        guest.share_rem = rem
        guest.diamonds += int(part_diamonds)


def _carry_cents(
    entry: dict[bytes, bytes], creator: _Expected, problems: list[str], entry_id: str
) -> None:
    """Recompute cash_out's payout with the creator's carried fraction of a cent."""
    diamonds, cents = int(entry[b"diamonds"]), int(entry[b"cents"])
    want, rem = divmod(creator.cents_rem + diamonds * int(entry[b"rate"]), 100)
    if (cents, int(entry[b"cents_rem"])) != (want, rem):
        problems.append(
            f"{entry_id}: cash-out of {diamonds} diamonds pays {cents} cents carrying "
            f"{int(entry[b'cents_rem'])}, the rate says {want} carrying {rem}"
        )
    creator.cents_rem = rem


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
    *,
    receipt_ttl_s: int | None = None,
    entries: AsyncIterator[StreamRows] | None = None,
) -> Report:
    """Replay the ledger and check it against the balances and every record.

    ``progress(entries_read)``; ``receipt_ttl_s``: the gift receipt window the server runs
    with (default: the default limit), within which a missing receipt is a problem.
    ``entries``: the whole history, oldest first; by default Redis' log. Once the archiver
    has trimmed the log, ``server.record.reconcile`` passes the record's part followed by
    what is left in Redis.
    """
    report = Report()
    t, problems = report.totals, report.problems
    model: defaultdict[str, _Expected] = defaultdict(_Expected)
    ttl_s = Limits().receipt_ttl_s if receipt_ttl_s is None else receipt_ttl_s
    audit = LogAudit(keys, ttl_s, problems)
    async for rows in entries if entries is not None else log_entries(redis, keys):
        for raw_id, entry in rows:
            entry_id = raw_id.decode()
            _apply(entry, model, t, problems, entry_id)
            audit.see(entry_id, entry)
        t.entries += len(rows)
        if progress:
            progress(t.entries)

    seen: set[str] = set()
    async for key in redis.scan_iter(match=keys.account_pattern(), count=1000):
        user = keys.user_id_of_account(key.decode())
        seen.add(user)
        values = cast(
            list[bytes | None],
            await redis.hmget(
                key, ["coins", "diamonds", "debt", "share_rem", "cents_rem", *HOLD_FIELDS]
            ),
        )
        coins, diamonds, debt, share_rem, cents_rem = (int(v or 0) for v in values[:5])
        problems += _check_hold(user, values[5:], diamonds, t)
        want = model.get(user, _Expected())
        if (coins, diamonds, debt) != (want.coins, want.diamonds, want.debt):
            problems.append(
                f"account {user}: holds coins={coins} diamonds={diamonds} debt={debt}, ledger "
                f"says coins={want.coins} diamonds={want.diamonds} debt={want.debt}"
            )
        if (share_rem, cents_rem) != (want.share_rem, want.cents_rem):
            problems.append(
                f"account {user}: carries share_rem={share_rem} cents_rem={cents_rem}, ledger "
                f"says share_rem={want.share_rem} cents_rem={want.cents_rem}"
            )
        t.share_rem_held += share_rem
        if min(coins, diamonds, debt) < 0:
            problems.append(f"account {user}: negative balance")
        t.accounts += 1
        t.coins_held += coins
        t.diamonds_held += diamonds
        t.debt_held += debt
    for user, want in model.items():
        if user not in seen and (want.coins, want.diamonds, want.debt) != (0, 0, 0):
            problems.append(f"account {user}: missing, ledger says it holds {want}")

    await audit.finish(redis)
    t.platform_held = int(await redis.hget(keys.platform(), "coins") or 0)
    if t.platform_held != t.platform_coins - t.platform_returned:
        problems.append(
            f"platform holds {t.platform_held}, ledger says {t.platform_coins} - "
            f"{t.platform_returned} returned by clawbacks"
        )
    if t.coins_credited - t.coins_clawed != t.coins_held + t.coins_spent:
        problems.append(
            f"coins in ({t.coins_credited} - {t.coins_clawed} clawed) != held {t.coins_held}"
            f" + spent {t.coins_spent}"
        )
    if t.coins_spent != t.diamonds_credited + t.platform_coins:
        problems.append(f"coins spent {t.coins_spent} != diamonds + platform share")
    if t.share_units != t.diamonds_carried * BASIS_POINTS + t.share_rem_held:
        problems.append(
            f"creator shares {t.share_units} bp-units != {t.diamonds_carried} diamonds x "
            f"{BASIS_POINTS} + carried {t.share_rem_held}"
        )
    if t.diamonds_credited - t.diamonds_clawed_back != t.diamonds_held + t.diamonds_cashed_out:
        problems.append(
            f"diamonds credited {t.diamonds_credited} - clawed back {t.diamonds_clawed_back}"
            f" != held {t.diamonds_held} + cashed out {t.diamonds_cashed_out}"
        )
    return report
