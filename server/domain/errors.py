"""Every error code giftwire sends to a client, and the exceptions that carry them.

The tree::

    GiftwireError                 base of everything raised on purpose
    ├── OperatingError            a refusal: stable ``code``, sent to the client, changes nothing
    │   ├── LedgerRefusal         refused inside a Lua script (insufficient_funds, …)
    │   └── RequestError          refused at the edge before reaching Redis (invalid_request, …)
    ├── UnavailableError          Redis unreachable or timed out: the outcome of a write is
    │                             *unknown*; retry with the same id
    └── InvariantError            a programmer error: an invariant broke. Logged with context,
                                  the connection is closed with 1011. Never caught to continue.

Codes are lower_snake strings and never change meaning once released; ``docs/protocol.md``
lists each with what the client should do.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Stable error codes sent on the wire (``error.code``) and by the HTTP API."""

    # Ledger refusals (decided by the Lua scripts).
    INSUFFICIENT_FUNDS = "insufficient_funds"
    UNKNOWN_GIFT = "unknown_gift"
    UNKNOWN_STREAM = "unknown_stream"
    STREAM_NOT_LIVE = "stream_not_live"
    STREAM_EXISTS = "stream_exists"
    STREAM_LIMIT = "stream_limit"
    NOT_STREAM_OWNER = "not_stream_owner"
    SELF_GIFT = "self_gift"
    RATE_LIMITED = "rate_limited"
    SPENDING_LIMIT = "spending_limit"
    SPENDING_CAP = "spending_cap"
    DUPLICATE_MISMATCH = "duplicate_mismatch"
    BALANCE_LIMIT = "balance_limit"
    BELOW_MINIMUM = "below_minimum"
    UNKNOWN_PAYMENT = "unknown_payment"
    UNKNOWN_PAYOUT = "unknown_payout"
    PAYOUT_SETTLED = "payout_settled"
    CATALOG_CHANGED = "catalog_changed"
    CATALOG_LIMIT = "catalog_limit"
    FUNDS_HELD = "funds_held"
    HOLD_LIMIT = "hold_limit"
    HOLD_CHANGED = "hold_changed"
    # Battles (live-battles).
    SELF_BATTLE = "self_battle"
    INVITE_PENDING = "invite_pending"
    INVITEE_BUSY = "invitee_busy"
    UNKNOWN_INVITE = "unknown_invite"
    BATTLE_RUNNING = "battle_running"
    UNKNOWN_BATTLE = "unknown_battle"
    BATTLE_NOT_OVER = "battle_not_over"
    # Guests on stage (live-battles).
    GUEST_LIMIT = "guest_limit"
    NOT_A_GUEST = "not_a_guest"
    GUEST_LEFT = "guest_left"
    NO_GUESTS = "no_guests"
    GUESTS_CHANGED = "guests_changed"
    # Goals (live-goals).
    GOAL_LIMIT = "goal_limit"
    # Edge refusals.
    INVALID_REQUEST = "invalid_request"
    MESSAGE_TOO_LARGE = "message_too_large"
    UNAUTHORIZED = "unauthorized"
    TOKEN_EXPIRED = "token_expired"
    FORBIDDEN = "forbidden"
    READ_ONLY = "read_only"
    NOT_FOUND = "not_found"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    BAD_SIGNATURE = "bad_signature"
    # Infrastructure.
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


ERROR_MESSAGES: dict[ErrorCode, str] = {
    ErrorCode.INSUFFICIENT_FUNDS: "not enough coins for this gift",
    ErrorCode.UNKNOWN_GIFT: "no such gift in the catalog",
    ErrorCode.UNKNOWN_STREAM: "no such stream",
    ErrorCode.STREAM_NOT_LIVE: "the stream is not live",
    ErrorCode.STREAM_EXISTS: "this stream id belongs to another creator",
    ErrorCode.STREAM_LIMIT: "this creator owns the most stream ids allowed; restart one",
    ErrorCode.NOT_STREAM_OWNER: "only the stream's creator may do this",
    ErrorCode.SELF_GIFT: "creators cannot send gifts to their own stream",
    ErrorCode.RATE_LIMITED: "too many gifts too quickly; slow down",
    ErrorCode.SPENDING_LIMIT: "spending limit reached",
    ErrorCode.SPENDING_CAP: "the platform caps this account's spending below that limit",
    ErrorCode.DUPLICATE_MISMATCH: "this id was already used for a different request",
    ErrorCode.BALANCE_LIMIT: "the balance would exceed its maximum",
    ErrorCode.BELOW_MINIMUM: "the amount is below the minimum",
    ErrorCode.UNKNOWN_PAYMENT: "no such payment",
    ErrorCode.UNKNOWN_PAYOUT: "no such cash-out",
    ErrorCode.PAYOUT_SETTLED: "the payout was already settled the other way",
    ErrorCode.CATALOG_CHANGED: "the gift catalog changed; fetch it and send again",
    ErrorCode.CATALOG_LIMIT: "the catalog or its schedule is full",
    ErrorCode.FUNDS_HELD: "these diamonds are still in the payout hold",
    ErrorCode.HOLD_LIMIT: "gifts to too many creators within the payout hold; try later",
    ErrorCode.HOLD_CHANGED: "the gifts in the payout hold changed; retry",
    ErrorCode.SELF_BATTLE: "a stream cannot battle itself or its own creator's streams",
    ErrorCode.INVITE_PENDING: "this stream already has a pending battle invitation",
    ErrorCode.INVITEE_BUSY: "that stream has too many pending battle invitations",
    ErrorCode.UNKNOWN_INVITE: "no such pending battle invitation (it may have expired)",
    ErrorCode.BATTLE_RUNNING: "a stream of this battle is already in a battle",
    ErrorCode.UNKNOWN_BATTLE: "no such battle",
    ErrorCode.BATTLE_NOT_OVER: "the battle has not reached its end yet",
    ErrorCode.GUEST_LIMIT: "the stage is full",
    ErrorCode.NOT_A_GUEST: "this user is not invited to (or not on) this stage",
    ErrorCode.GUEST_LEFT: "this guest has left the stage and can no longer receive gifts",
    ErrorCode.NO_GUESTS: "there are no guests on stage",
    ErrorCode.GUESTS_CHANGED: "the stage changed while the gift was sent; send it again",
    ErrorCode.GOAL_LIMIT: "this stream holds the most goals allowed; delete one first",
    ErrorCode.INVALID_REQUEST: "the request is malformed",
    ErrorCode.MESSAGE_TOO_LARGE: "the message is larger than allowed",
    ErrorCode.UNAUTHORIZED: "missing or invalid credentials",
    ErrorCode.TOKEN_EXPIRED: "the token has expired",
    ErrorCode.FORBIDDEN: "not allowed for this user",
    ErrorCode.READ_ONLY: "this token may only watch a stream; it cannot change anything",
    ErrorCode.NOT_FOUND: "not found",
    ErrorCode.TOO_MANY_CONNECTIONS: "too many connections for this user or address",
    ErrorCode.BAD_SIGNATURE: "the signature does not match",
    ErrorCode.UNAVAILABLE: "the ledger is unavailable; retry with the same id",
    ErrorCode.INTERNAL: "internal error",
}


INSUFFICIENT_DIAMONDS_MESSAGE = "not enough diamonds for this cash-out"
"""``insufficient_funds`` of a cash-out: the default message speaks of coins and gifts."""


class GiftwireError(Exception):
    """Base of every exception giftwire raises on purpose."""


class OperatingError(GiftwireError):
    """A refusal with a stable code. Nothing was changed."""

    def __init__(
        self,
        code: ErrorCode,
        message: str | None = None,
        detail: dict[str, object] | None = None,
    ) -> None:
        self.code = code
        self.message = message or ERROR_MESSAGES[code]
        self.detail = detail
        super().__init__(f"{code}: {self.message}")


class LedgerRefusal(OperatingError):
    """A Lua script refused the transfer before writing anything."""


class RequestError(OperatingError):
    """The edge refused a request before it reached the ledger."""


class UnavailableError(GiftwireError):
    """Redis could not be reached or did not answer in time.

    For a write the outcome is unknown: the script may or may not have run. Retrying
    with the same client id is always safe and tells which.
    """

    code = ErrorCode.UNAVAILABLE


class InvariantError(GiftwireError):
    """An invariant broke: a bug, not a user mistake."""

    code = ErrorCode.INTERNAL
