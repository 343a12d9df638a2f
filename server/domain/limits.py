"""Every bound giftwire enforces, in one place (``grep _max`` finds them all).

Amounts are bounded far below 2**53 because Lua numbers are doubles, and below 10**14
because Redis' cjson prints numbers with 14 significant digits.
"""

from __future__ import annotations

from dataclasses import dataclass

# Money bounds shared by the domain and the Lua scripts (passed to them as ARGV).
AMOUNT_MAX = 10**13
"""Largest balance or single amount, in the smallest unit (coins, diamonds or cents)."""

SEND_COINS_MAX = 10**11
"""Most coins one send_gift may move: keeps ``coins * share_bps`` exact in a Lua double."""

GIFT_COUNT_MAX = 9_999
"""Largest ``count`` in one send_gift (a combo burst)."""

SPEND_LIMIT_COINS_MAX = AMOUNT_MAX
"""Largest spending limit or cap a user or the platform may set (coins; 0 = none)."""

ID_LENGTH_MAX = 64
"""Longest user, stream, gift, payment or client-chosen transfer id."""

DISPLAY_NAME_LENGTH_MAX = 64

# The managed catalog (domain/catalog_edits.py, ledger/catalogs.py, web/catalog_api.py).
CATALOG_GIFTS_MAX = 256
"""Most gifts in one catalog version (every viewer is sent all of them on a change)."""
GIFT_NAME_LENGTH_MAX = 64
"""Longest gift name or animation name."""
CATALOG_CHANGES_MAX = 64
"""Most changes in one admin edit."""
CATALOG_SCHEDULED_MAX = 32
"""Most scheduled catalog edits waiting at once."""
CATALOG_SCHEDULE_AHEAD_MS_MAX = 366 * 86_400_000
"""Furthest ahead an edit may be scheduled."""

SEQUENCE_MAX = 2**53 - 1
"""Largest gift sequence a client may name (``since``, ``after``)."""

# Decoding (protocol/codec.py): beyond these a message is ``invalid_request``.
MESSAGE_KEYS_MAX = 64
MESSAGE_ARRAY_MAX = 256

# HTTP (web/http_api.py).
PAGE_MAX = 200
"""Most gift events one ``GET /api/streams/{id}/gifts`` returns."""

# WebSocket connections (web/ws.py, realtime/).
MESSAGE_BURST_S = 2
"""A connection's message bucket holds this many seconds of ``messages_per_s_max``."""
MESSAGE_STRIKES_S = 5
"""Refused messages, in seconds of ``messages_per_s_max``, before the close with 4029."""
CLOSE_TIMEOUT_S = 1.0
"""How long the server waits for its close frame to go out before dropping the socket."""
IN_FLIGHT_GIFTS_MAX = 32
"""Gifts of one connection awaiting the ledger; beyond it the socket is not read."""
HELD_DELIVERIES_MAX = 1024
"""Live deliveries a catching-up connection keeps (the newest; the feed covers older)."""
SEND_QUEUE_BYTES_MAX_DEFAULT = 1024 * 1024
"""Default of ``Limits.send_queue_bytes_max``."""
WRITE_BYTES_MAX = 64 * 1024
"""Most bytes the outbox's writer joins into one write when frames have queued up."""

# Rooms and the broker (realtime/, broker/).
ROOM_BUFFER_EVENTS_MAX = 10_000
"""Live events a room holds while it reads the feed to fill a gap."""
ROOM_RECENT_SEQS_MAX = 1024
"""Transfer ids a room remembers, by sequence, to tell a replay from a rollback."""
BROADCAST_CHUNK_MAX = 500
"""Connections a droppable room broadcast (stats, leaderboard) reaches per loop turn."""
PUBSUB_DRAIN_MAX = 1000
"""Most buffered pub/sub messages dispatched in one go before yielding to the loop."""
TOP_MAX = 10
"""Rows of a room's leaderboard sent to viewers."""
ROOM_ANNOUNCEMENTS_MAX = 64
"""level_up events a hot room holds until the tick that sends their gifts; more are dropped
(each gift carries its sender's level). goal_reached is never dropped (at most one per goal)."""

# Stream goals and gifter levels (domain/goals.py, domain/levels.py).
GOALS_PER_STREAM_MAX = 5
"""Goals one stream may hold at once: each gift advances at most this many (send_gift.lua
reads only the goals that count its gift, so a gift's cost never grows beyond it)."""
GOAL_TITLE_LENGTH_MAX = 64
"""Longest goal title, in characters (at most 4 bytes each in the script's check)."""
GOAL_TARGET_MAX = 10**12
"""Largest goal target (coins, or a count of one gift)."""

# Battles and guests (ledger/battles.py, ledger/guests.py, web/battle_watch.py).
BATTLE_TOP_MAX = 3
"""Top gifters of each side in a battle's score and result messages."""
BATTLE_INVITES_PER_STREAM_MAX = 16
"""Pending battle invitations one stream may hold; beyond, ``invitee_busy``."""
BATTLE_RESULT_TTL_S = 90 * 86_400
"""How long a battle's result stays readable at ``GET /api/battles/{id}`` (s)."""
BATTLE_TICK_S = 0.5
"""How often each process sends a battling room the live score of both sides, and ends
battles whose time is up."""
GUESTS_MAX = 8
"""Guests on one stage (invited or on stage); beyond, ``guest_limit``."""
GUESTS_REMEMBERED_MAX = 64
"""Guests a stage remembers, those who left included (a gift to one of them is
``guest_left``); past it, inviting forgets the ones who left."""
GUEST_GIFT_TRIES_MAX = 3
"""Times a gift to all guests is sent again after ``guests_changed`` (the stage changed
between reading it and the script)."""
# The two legs of a gift on a Redis Cluster (ledger/cluster_*.py, docs/ledger.md).
CREDIT_BATCH_MAX = 64
"""Transfers one credit_gifts call applies into one creator's stream (the script takes at
most 256); more waiting callers go in the next call, one call in flight per stream."""
OUTBOX_ENTRIES_MAX = 100_000
"""Unsettled transfers one slot's outbox may hold; past it, debits of that slot are refused
with ``unavailable`` (nothing written) until the relay drains it."""
RELAY_GRACE_MS = 2_000
"""An outbox entry's idle time before the relay settles it: the fast path usually has."""
RELAY_FULL_SWEEP_S = 10.0
"""How often a relay looks at every slot's outbox (XLEN of 16384 keys), not only the hot."""
STREAM_OWNERS_MAX = 100_000
"""Stream id -> creator pairs a process keeps (an owner never changes)."""
STREAM_STATE_TTL_S = 1.0
"""How long a process trusts a stream's state read before a debit (``debit_gift.lua``)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Tunable limits; defaults are sane for a public deployment."""

    frame_bytes_max: int = 4096
    """Largest incoming WebSocket message; larger ones close the connection with 1009."""
    body_bytes_max: int = 16 * 1024
    """Largest HTTP request body (every endpoint, the webhook too): a larger declared
    ``Content-Length`` is refused before reading, a chunked body at the bound (413)."""
    json_depth_max: int = 4
    string_length_max: int = 256
    messages_per_s_max: int = 20
    """Incoming messages per connection per second (token bucket, burst = 2 s worth)."""
    connections_per_user_max: int = 5
    connections_per_ip_max: int = 200
    send_queue_frames_max: int = 256
    """Frames waiting for one slow connection before its live frames are dropped (it is
    told it lags); twice as many (acks, resumed gifts) close it with 4008."""
    send_queue_bytes_max: int = SEND_QUEUE_BYTES_MAX_DEFAULT
    """Bytes waiting for one slow connection, bounded like ``send_queue_frames_max``."""
    lagging_s_max: float = 5.0
    """How long a connection may stay at its queue limit before it is closed (4008)."""
    gifts_per_s_max: int = 10
    """Per-sender gift sends per second, enforced in Redis across all processes."""
    gift_burst_max: int = 20
    changes_per_minute_max: int = 60
    """State-changing HTTP calls per user per minute (goals, spending limits, guests,
    battles, the admin's catalog and accounts), enforced in Redis across all processes
    (``change_rate.lua``); beyond, 429 ``rate_limited`` with Retry-After."""
    change_burst_max: int = 20
    """Burst of the per-user change rate: calls one user may make at once."""
    daily_spend_coins_max: int = 0
    """Default per-user daily spending cap in coins (any 24 hours); 0 means none. A user's
    own limit (``PUT /api/me/spending``) replaces it."""
    monthly_spend_coins_max: int = 0
    """Default per-user spending cap per calendar month (UTC), coins; 0 means none."""
    spend_raise_cooling_off_s: int = 86_400
    """How long a user's raise of their own spending limit waits before it is in force
    (lowering is at once); 0: at once."""
    minor_daily_spend_coins_max: int = 500
    """The platform's daily cap for an account it marks as a minor, unless the admin names
    another; no own limit passes it. 0: none."""
    minor_monthly_spend_coins_max: int = 2_000
    """The same per calendar month."""
    feed_events_max: int = 10_000
    """Length of each stream's resumable gift feed (Redis stream, approximate trim)."""
    resume_events_max: int = 1_000
    """Most events replayed to one resuming connection; older gaps are sent as ``gap``."""
    batch_events_max: int = 50
    """Most gift events coalesced into one frame."""
    room_frames_per_s_max: int = 40_000
    """Frames per second one hot room may send to all its viewers together: its
    coalescing tick grows with the room (5,000 viewers: 125 ms) to stay under it."""
    redis_timeout_s: float = 2.0
    """Per-call timeout on the hot path; a timeout means *unknown*, not failed."""
    pipeline_calls_max: int = 64
    pipelines_in_flight_max: int = 4
    receipt_ttl_s: int = 86_400
    combo_window_ms: int = 5_000
    cashout_diamonds_min: int = 1_000
    # Connections before their request is complete (slowloris; ``server/web/pending.py``).
    request_timeout_s: float = 10.0
    """Time to send a whole HTTP request, or to finish a WebSocket handshake (then closed;
    408 when nothing was answered yet). Starts again after each keep-alive response."""
    pending_requests_max: int = 512
    """Incomplete requests and handshakes per process; beyond, the oldest is closed (never
    more than half the process's file descriptors)."""
    pending_requests_per_ip_max: int = 128
    """Incomplete requests and handshakes per client address; beyond, it is closed unread."""
    streams_per_creator_max: int = 100
    payout_hold_days: int = 7
    """Days a gift's diamonds stay held before they may be cashed out (``_hold.lua``); a
    chargeback within them takes the diamonds back. 0: no hold."""
    payout_hold_day_s: int = 86_400
    """Length of a hold day in seconds: 86400 in production; tests and staging shorten it
    to watch diamonds mature."""
    payout_hold_entries_max: int = 1_024
    """(creator, day) pairs one sender's gifts may name within the hold; a gift past it is
    refused with ``hold_limit`` (the record a chargeback reverses stays bounded)."""
    """Stream ids one creator may own (live or ended: an ended id stays its owner's, who may
    start it again). A new id past it is refused with ``stream_limit``."""
    battle_seconds_min: int = 60
    """Shortest battle a creator may ask for (invite_battle.lua refuses shorter)."""
    battle_seconds_max: int = 600
    """Longest battle a creator may ask for."""
    battle_seconds_default: int = 300
    """Length of a battle when the invitation names none."""
    battle_invite_ttl_s: int = 60
    """How long a battle invitation waits for its answer before it expires."""
