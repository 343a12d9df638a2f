"""The ledger's Python API: one method per script, plus the reads the edge needs."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import cast

import orjson
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from server.domain.accounts import Balance
from server.domain.catalog import Catalog
from server.domain.errors import (
    INSUFFICIENT_DIAMONDS_MESSAGE,
    ErrorCode,
    InvariantError,
    LedgerRefusal,
    RequestError,
    UnavailableError,
)
from server.domain.goals import Goal
from server.domain.levels import TopGifter, ladder_arg
from server.domain.limits import AMOUNT_MAX, GUEST_GIFT_TRIES_MAX, SEND_COINS_MAX, Limits
from server.domain.money import Economics
from server.domain.streams import Stream, StreamState
from server.ledger.battles import Battles
from server.ledger.catalogs import CatalogStore
from server.ledger.change_limits import ChangeLimiter
from server.ledger.goals import GoalStore
from server.ledger.guests import Guests
from server.ledger.hold import HOLD_FIELDS, HoldState
from server.ledger.keys import Keys
from server.ledger.receipts import (
    CashOutReceipt,
    GiftReceipt,
    PayoutReceipt,
    RefundReceipt,
    TopUpReceipt,
    unpack,
)
from server.ledger.runner import ScriptRunner, StreamRows
from server.ledger.scripts import ScriptName
from server.ledger.spending import SpendingStore

log = logging.getLogger("giftwire.ledger")

TO_VERIFY_MAX = 16
REFUND_ATTEMPTS_MAX = 3
"""Refunds refused ``hold_changed`` (a gift landed between reading the buyer's held
creators and the script) before the refusal is passed on; each retry reads them again."""
LADDER_ARG = ladder_arg()
"""send_gift's ARGV of the gifter level ladder, built once."""
LogPosition = tuple[int, int]
"""A ledger log entry id ``MS-SEQ`` as numbers, in the order Redis gives them."""


def log_position(entry_id: str | bytes) -> LogPosition:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True, slots=True)
class StreamChange:
    """Result of start_stream / end_stream."""

    stream_id: str
    creator_id: str
    state: StreamState
    replayed: bool


@dataclass(frozen=True, slots=True)
class EpochChange:
    """Result of bump_epoch: the stream's epoch, and the last sequence of the one before
    it that is still history. ``changed``: this call set them (else another did)."""

    epoch: str
    prev_epoch: str
    prev_epoch_seq: int
    changed: bool


@asynccontextmanager
async def _redis_errors() -> AsyncIterator[None]:
    try:
        yield
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, TimeoutError, OSError) as e:
        raise UnavailableError(str(e) or type(e).__name__) from e


def _int(value: bytes | None) -> int:
    return int(value) if value is not None else 0


class Ledger:
    """Money operations (each one Lua script, atomic and idempotent) and ledger reads.

    Contract of every write: it either commits completely or writes nothing; retrying it
    with the same client id (payment id for top-ups) returns the first receipt with
    ``replayed=True`` and moves nothing; the same id with different content raises
    ``LedgerRefusal(duplicate_mismatch)``. ``UnavailableError`` means the outcome is
    unknown: retry with the same id.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        keys: Keys | None = None,
        limits: Limits | None = None,
        economics: Economics | None = None,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 100,
    ) -> None:
        """``wait_replicas`` > 0: acknowledge a write only once that many replicas have it
        (``GIFTWIRE_DURABILITY=always+replica``, ``runner.py``)."""
        self.redis = redis
        self.keys = keys or Keys()
        self.limits = limits or Limits()
        self.economics = economics or Economics()
        self.catalog: Catalog | None = None
        """The catalog this process serves: the version Redis held when last read."""
        self.highest_transfer: LogPosition | None = None
        self.to_verify: set[LogPosition] = set()
        """Highest log ids seen before a connection to Redis broke: the entries a restart
        or failover in between may have lost, checked by ``LedgerWatch`` (whose later
        receipts, with newer ids, would otherwise hide such a loss)."""
        self.runner = ScriptRunner(
            redis,
            timeout_s=self.limits.redis_timeout_s,
            calls_per_pipeline_max=self.limits.pipeline_calls_max,
            pipelines_in_flight_max=self.limits.pipelines_in_flight_max,
            wait_replicas=wait_replicas,
            wait_timeout_ms=wait_timeout_ms,
            fence_key=self.keys.ledger_fence(),
        )
        self.runner.on_unavailable = self.connection_broke
        self.catalogs = CatalogStore(redis, self.keys, self.runner)
        self.battles = Battles(redis, self.runner, self.keys, self.limits, _redis_errors)
        self.guests = Guests(redis, self.runner, self.keys, _redis_errors)
        self.goals = GoalStore(redis, self.keys, self.runner)
        self.spending = SpendingStore(self.runner, self.keys, self.limits)
        self.changes = ChangeLimiter(self.runner, self.keys, self.limits)

    async def prepare(self, catalog: Catalog) -> Catalog:
        """Load the scripts and seed ``catalog`` into Redis if Redis holds none.

        Returns the catalog Redis holds, which every process serves: ``catalog`` itself
        (numbered by Redis) when this call seeded it, else the one already there, which
        may differ (the caller decides whether that is an error, ``server/ledger/preflight``).
        """
        self.runner.on_reload = self._after_reload
        async with _redis_errors():
            await self.runner.prepare()
            await self.catalogs.seed(catalog)
            held = await self.catalogs.current()
        if held is None:
            raise InvariantError("the catalog vanished right after it was seeded")
        self.catalog = held
        return held

    async def _after_reload(self) -> None:
        await self.restore_catalog()

    async def restore_catalog(self) -> bool:
        """After a Redis restart: if the catalog is gone, Redis lost its data (it ran without
        persistence, or was flushed), and every gift would be refused. Say so loudly and
        seed the version this process served, under its number. True if it was gone."""
        if self.catalog is None or await self.catalogs.version() is not None:
            return False
        log.error(
            "Redis lost its data: the gift catalog was gone; seeding version %d again",
            self.catalog.version,
        )
        await self.catalogs.seed(self.catalog, self.catalog.version)
        return True

    async def current_catalog(self) -> Catalog:
        """The catalog Redis holds now (re-read when its version changed)."""
        if self.catalog is None:
            raise InvariantError("current_catalog before prepare")
        async with _redis_errors():
            version = await self.catalogs.version()
            if version is not None and version != self.catalog.version:
                self.catalog = await self.catalogs.read(version)
        return self.catalog

    def connection_broke(self) -> None:
        """Redis went away (or timed out): what this process saw so far must still be there
        when it is back. Bounded: only the highest id at each break, at most 16."""
        if self.highest_transfer is not None and len(self.to_verify) < TO_VERIFY_MAX:
            self.to_verify.add(self.highest_transfer)

    def saw_transfer(self, transfer_id: str) -> None:
        """Remember the highest ledger log id this process was told of (data-loss check)."""
        position = log_position(transfer_id)
        if self.highest_transfer is None or position > self.highest_transfer:
            self.highest_transfer = position

    async def _run(
        self, name: ScriptName, keys: list[str], args: list[str | int], order_key: str
    ) -> tuple[bytes, bool]:
        return unpack(await self.runner.run(name, keys, args, order_key=order_key))

    async def send_gift(
        self,
        *,
        client_id: str,
        sender_id: str,
        sender_name: str,
        stream_id: str,
        creator_id: str,
        gift_id: str,
        count: int,
        catalog_version: int | None = None,
        to: str | None = None,
    ) -> GiftReceipt:
        """Send a gift. With ``catalog_version`` (the version the client was shown), refused
        with ``catalog_changed`` unless it is the current one. ``to``: a guest on stage, or
        ``ALL_GUESTS`` (split between them); None: the creator."""
        for attempt in range(GUEST_GIFT_TRIES_MAX):
            recipients = [] if to is None else await self.guests.recipients(stream_id, to)
            try:
                return await self._send_gift(
                    client_id=client_id,
                    sender_id=sender_id,
                    sender_name=sender_name,
                    stream_id=stream_id,
                    creator_id=creator_id,
                    gift_id=gift_id,
                    count=count,
                    catalog_version=catalog_version,
                    to=to or "",
                    recipients=recipients,
                )
            except LedgerRefusal as refusal:
                # Nothing was written: read the stage again and resend with the same id.
                if refusal.code is not ErrorCode.GUESTS_CHANGED:
                    raise
                if attempt == GUEST_GIFT_TRIES_MAX - 1:
                    raise
        raise InvariantError("unreachable")

    async def _send_gift(
        self,
        *,
        client_id: str,
        sender_id: str,
        sender_name: str,
        stream_id: str,
        creator_id: str,
        gift_id: str,
        count: int,
        catalog_version: int | None,
        to: str,
        recipients: list[str],
    ) -> GiftReceipt:
        k, lim = self.keys, self.limits
        body, replayed = await self._run(
            ScriptName.SEND_GIFT,
            [
                k.gift_receipt(sender_id, client_id),
                k.account(sender_id),
                k.account(creator_id),
                k.platform(),
                k.stream(stream_id),
                k.leaderboard(stream_id),
                k.feed(stream_id),
                k.combo(stream_id, sender_id, gift_id),
                k.ledger(),
                k.catalog(),
                k.room_channel(stream_id),
                k.hold_record(sender_id),
                k.battle(stream_id),
                k.battle_top(stream_id),
                k.guests(stream_id),
                k.goals(stream_id),
                k.fans(creator_id),
                k.names(stream_id),
                *[k.account(guest) for guest in recipients],
            ],
            [
                client_id,
                sender_id,
                creator_id,
                stream_id,
                gift_id,
                count,
                sender_name,
                self.economics.creator_share_bps,
                lim.gifts_per_s_max,
                lim.gift_burst_max,
                lim.daily_spend_coins_max,
                lim.receipt_ttl_s,
                lim.combo_window_ms,
                lim.feed_events_max,
                AMOUNT_MAX,
                SEND_COINS_MAX,
                catalog_version or 0,
                *self._hold_args(),
                lim.payout_hold_entries_max,
                to,
                ",".join(recipients),
                LADDER_ARG,
                lim.monthly_spend_coins_max,
            ],
            order_key=sender_id,
        )
        receipt = GiftReceipt.from_reply(body, replayed)
        self.saw_transfer(receipt.transfer_id)
        return receipt

    async def top_up(self, *, payment_id: str, user_id: str, coins: int) -> TopUpReceipt:
        k = self.keys
        body, replayed = await self._run(
            ScriptName.TOP_UP,
            [k.payment(payment_id), k.account(user_id), k.ledger()],
            [payment_id, user_id, coins, AMOUNT_MAX],
            order_key=user_id,
        )
        receipt = TopUpReceipt.from_reply(body, replayed)
        self.saw_transfer(receipt.transfer_id)
        return receipt

    async def refund(
        self, *, payment_id: str, user_id: str, refund_id: str, coins: int
    ) -> RefundReceipt:
        """Refund ``coins`` of a payment, once per ``refund_id``.

        Refunds of one payment add up to at most its coins (a refund past that is capped:
        ``receipt.refunded`` says what was taken back). A refund before its payment is
        remembered (``receipt.before_payment``) and withheld from the payment's credit.
        """
        k = self.keys
        for attempt in range(REFUND_ATTEMPTS_MAX):
            # The script reverses the buyer's gifts still in the hold, whose creators' accounts
            # it needs as keys: read them first; a gift in between is refused hold_changed.
            creators = await self._held_creators(user_id)
            try:
                body, replayed = await self._run(
                    ScriptName.REFUND,
                    [
                        k.payment(payment_id),
                        k.account(user_id),
                        k.ledger(),
                        k.refund(payment_id, refund_id),
                        k.hold_record(user_id),
                        k.platform(),
                        *(k.account(c) for c in creators),
                    ],
                    [
                        payment_id,
                        user_id,
                        refund_id,
                        coins,
                        AMOUNT_MAX,
                        *self._hold_args(),
                        *creators,
                    ],
                    order_key=user_id,
                )
                break
            except LedgerRefusal as refusal:
                if refusal.code is not ErrorCode.HOLD_CHANGED or attempt == REFUND_ATTEMPTS_MAX - 1:
                    raise
        receipt = RefundReceipt.from_reply(body, replayed)
        self.saw_transfer(receipt.transfer_id)
        return receipt

    def _hold_args(self) -> list[str | int]:
        return [self.limits.payout_hold_days, self.limits.payout_hold_day_s]

    async def _held_creators(self, user_id: str) -> list[str]:
        """The creators the user's gifts in the hold record name (bounded by the record)."""
        async with _redis_errors():
            fields = cast(list[bytes], await self.redis.hkeys(self.keys.hold_record(user_id)))
        names = {f.split(b"|", 1)[0].decode() for f in fields if b"|" in f}
        return sorted(names)

    async def cash_out(self, *, client_id: str, creator_id: str, diamonds: int) -> CashOutReceipt:
        k = self.keys
        try:
            body, replayed = await self._run(
                ScriptName.CASH_OUT,
                [k.cashout(creator_id, client_id), k.account(creator_id), k.ledger()],
                [
                    client_id,
                    creator_id,
                    diamonds,
                    self.limits.cashout_diamonds_min,
                    self.economics.cents_per_100_diamonds,
                    AMOUNT_MAX,
                    *self._hold_args(),
                ],
                order_key=creator_id,
            )
        except LedgerRefusal as refusal:
            if refusal.code is not ErrorCode.INSUFFICIENT_FUNDS:
                raise
            raise LedgerRefusal(
                refusal.code, INSUFFICIENT_DIAMONDS_MESSAGE, refusal.detail
            ) from None
        receipt = CashOutReceipt.from_reply(body, replayed)
        self.saw_transfer(receipt.transfer_id)
        return receipt

    async def settle_payout(
        self, *, client_id: str, creator_id: str, outcome: str
    ) -> PayoutReceipt:
        """The payout provider's outcome of cash-out ``client_id``: ``paid``, or ``failed``
        (the diamonds go back to the creator). Idempotent per cash-out."""
        k = self.keys
        body, replayed = await self._run(
            ScriptName.SETTLE_PAYOUT,
            [k.cashout(creator_id, client_id), k.account(creator_id), k.ledger()],
            [client_id, creator_id, outcome, AMOUNT_MAX],
            order_key=creator_id,
        )
        return PayoutReceipt.from_reply(body, replayed)

    async def start_stream(
        self,
        *,
        stream_id: str,
        creator_id: str,
        title: str,
        creator_name: str | None = None,
        epoch: str | None = None,
    ) -> StreamChange:
        """Open a live stream; ``creator_name`` (default: the creator id) is the host's name,
        ``epoch`` (default: a fresh random id) names a new stream's history."""
        k = self.keys
        body, replayed = await self._run(
            ScriptName.START_STREAM,
            [
                k.stream(stream_id),
                k.room_channel(stream_id),
                k.feed(stream_id),
                k.leaderboard(stream_id),
                k.creator_streams(creator_id),
            ],
            [
                stream_id,
                creator_id,
                title,
                self.limits.streams_per_creator_max,
                creator_id if creator_name is None else creator_name,
                epoch or uuid.uuid4().hex[:16],
            ],
            order_key=stream_id,
        )
        return _stream_change(body, replayed)

    async def end_stream(self, *, stream_id: str, actor_id: str, is_admin: bool) -> StreamChange:
        k = self.keys
        body, replayed = await self._run(
            ScriptName.END_STREAM,
            [k.stream(stream_id), k.room_channel(stream_id)],
            [stream_id, actor_id, "1" if is_admin else "0"],
            order_key=stream_id,
        )
        return _stream_change(body, replayed)

    # Reads. These are plain commands: they change nothing.

    async def balance(self, user_id: str) -> Balance:
        """The account's balances, with what of its diamonds is still in the payout hold (by
        Redis' clock; cash_out.lua decides by the same rule)."""
        fields = ["coins", "diamonds", "debt", *HOLD_FIELDS]
        async with _redis_errors(), self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(self.keys.account(user_id), fields)  # type: ignore[unused-awaitable]
            pipe.time()  # type: ignore[unused-awaitable]
            values, (seconds, _) = await pipe.execute()
        coins, diamonds, debt, *hold_fields = cast(list[bytes | None], values)
        held, next_release_ms = 0, 0
        if hold_fields[2]:
            lim = self.limits
            hold = HoldState.parse(*hold_fields)
            today = int(seconds) // lim.payout_hold_day_s
            held = hold.held_on(today, lim.payout_hold_days)
            next_release_ms = hold.next_release_ms(
                today, lim.payout_hold_days, lim.payout_hold_day_s
            )
        return Balance(user_id, _int(coins), _int(diamonds), _int(debt), held, next_release_ms)

    async def set_daily_limit(self, user_id: str, coins: int) -> None:
        """Write (coins > 0) or clear (0: the default again) one user's daily limit at once,
        bypassing the cooling-off of a raise: for tests and operators. Users change theirs
        through ``spending.set``."""
        if not 0 <= coins <= AMOUNT_MAX:
            raise RequestError(ErrorCode.INVALID_REQUEST, "limit out of range")
        async with _redis_errors():
            if coins:
                await self.redis.hset(self.keys.account(user_id), "daily_limit", coins)
            else:
                await self.redis.hdel(self.keys.account(user_id), "daily_limit")

    async def bump_epoch(
        self, *, stream_id: str, expected: str, epoch: str, valid_seq: int
    ) -> EpochChange:
        """Start epoch ``epoch`` if the stream is still in ``expected`` (compare and set;
        ``bump_epoch.lua``). Returns the stream's epoch afterwards, whoever set it."""
        k = self.keys
        body, replayed = await self._run(
            ScriptName.BUMP_EPOCH,
            [k.stream(stream_id), k.room_channel(stream_id)],
            [stream_id, expected, epoch, valid_seq],
            order_key=stream_id,
        )
        doc = orjson.loads(body)
        return EpochChange(doc["epoch"], doc["prev_epoch"], doc["prev_epoch_seq"], not replayed)

    async def stream(self, stream_id: str) -> Stream | None:
        async with _redis_errors():
            raw = cast(dict[bytes, bytes], await self.redis.hgetall(self.keys.stream(stream_id)))
        return stream_from_hash(stream_id, raw)

    async def leaderboard(self, stream_id: str, limit: int = 10) -> list[TopGifter]:
        """The stream's top gifters, most coins first, with display names and levels."""
        async with _redis_errors():
            pipe = self.redis.pipeline(transaction=False)
            pipe.hget(self.keys.stream(stream_id), "creator")  # type: ignore[unused-awaitable]
            pipe.zrevrange(self.keys.leaderboard(stream_id), 0, limit - 1, withscores=True)  # type: ignore[unused-awaitable]
            creator, rows = await pipe.execute()
            if creator is None:
                return []
            top = [(member.decode(), int(score)) for member, score in rows]
            return await self.goals.named(stream_id, creator.decode(), top)

    # Goals and levels (server/ledger/goals.py).

    async def set_goal(self, *, stream_id: str, actor_id: str, goal: Goal) -> tuple[Goal, bool]:
        return await self.goals.set_goal(stream_id=stream_id, actor_id=actor_id, goal=goal)

    async def delete_goal(self, *, stream_id: str, actor_id: str, goal_id: str) -> bool:
        return await self.goals.delete_goal(stream_id=stream_id, actor_id=actor_id, goal_id=goal_id)

    async def stream_goals(self, stream_id: str) -> list[Goal]:
        async with _redis_errors():
            return await self.goals.goals(stream_id)

    async def fan_level(self, creator_id: str, user_id: str) -> int:
        async with _redis_errors():
            return await self.goals.fan_level(creator_id, user_id)

    async def feed(self, stream_id: str, after_seq: int, limit: int) -> list[bytes]:
        """Gift events (JSON as published) with sequence > after_seq, oldest first."""
        async with _redis_errors():
            rows = cast(
                StreamRows,
                await self.redis.xrange(
                    self.keys.feed(stream_id), min=f"{after_seq + 1}-0", max="+", count=limit
                ),
            )
        return [fields[b"e"] for _, fields in rows]

    async def ping(self) -> bool:
        """True when Redis answers within the call timeout and holds every script.

        Scripts lost by a Redis restart are loaded again here, so readiness comes back by
        itself. Bounded by ``redis_timeout_s``: the client's own retries of a refused
        connection would otherwise hold a readiness probe for seconds.
        """
        try:
            async with _redis_errors(), asyncio.timeout(self.limits.redis_timeout_s):
                return bool(await self.redis.ping()) and await self.runner.ensure_loaded()
        except UnavailableError:
            return False


def stream_from_hash(stream_id: str, raw: dict[bytes, bytes]) -> Stream | None:
    """The stream hash (``HGETALL``) as a ``Stream``: the one reader of its fields."""
    if not raw:
        return None
    return Stream(
        stream_id=stream_id,
        creator_id=raw[b"creator"].decode(),
        creator_name=raw.get(b"creator_name", raw[b"creator"]).decode(),
        state=StreamState(raw[b"state"].decode()),
        title=raw.get(b"title", b"").decode(),
        last_sequence=_int(raw.get(b"seq")),
        coins_total=_int(raw.get(b"coins")),
        diamonds_total=_int(raw.get(b"diamonds")),
        gifts_total=_int(raw.get(b"gifts")),
        epoch=raw.get(b"epoch", b"").decode(),
        prev_epoch=raw.get(b"prev_epoch", b"").decode(),
        prev_epoch_seq=_int(raw.get(b"prev_epoch_seq")),
    )


def _stream_change(body: bytes, replayed: bool) -> StreamChange:
    doc = orjson.loads(body)
    return StreamChange(doc["stream_id"], doc["creator_id"], StreamState(doc["state"]), replayed)
