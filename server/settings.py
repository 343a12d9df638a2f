"""Settings from ``GIFTWIRE_*`` environment variables, validated at start.

Every field of ``Limits`` is also a setting: ``GIFTWIRE_`` + its name in upper case
(``GIFTWIRE_FRAME_BYTES_MAX=8192``). ``giftwire settings`` prints the full table.

Paths are made absolute once, here: a relative value is taken from the folder giftwire
starts in, and nothing later depends on the working directory (redis-server, for one,
changes into its data folder before it opens its log file).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from server.broker.shard_nodes import SubscribeRole
from server.domain.limits import Limits
from server.domain.money import Economics
from server.ledger.keys import DEFAULT_PREFIX
from server.ledger.redis_config import Durability

ENV_PREFIX = "GIFTWIRE_"
EMBEDDED_DURABILITY = Durability.ALWAYS
"""The embedded Redis fsyncs every write before giftwire acknowledges it: measured in
``docs/benchmarks.md`` (durability), it costs a fraction of a millisecond per ack and a
third of the throughput at worst, and buys acks that survive a machine crash."""
CHECKOUT = Path(__file__).resolve().parents[1]
"""Where the ``server`` package lives: the source checkout when giftwire runs from one."""


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    """``var/giftwire`` in the source checkout giftwire runs from; else the XDG data folder.

    The same folder from whichever folder a command is typed, so that ``giftwire demo``,
    ``giftwire token``, ``giftwire reconcile`` and the load tools find the same data and
    demo secrets.
    """
    env = os.environ if env is None else env
    pyproject = CHECKOUT / "pyproject.toml"
    if pyproject.is_file() and 'name = "giftwire"' in pyproject.read_text(errors="replace"):
        return CHECKOUT / "var" / "giftwire"
    xdg = env.get("XDG_DATA_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / "giftwire"


def absolute(path: Path) -> Path:
    """``path`` with ``~`` expanded, relative to the current folder, symlinks resolved."""
    return path.expanduser().resolve()


class SettingsError(ValueError):
    """One or more settings are invalid; the message lists each with the fix."""


@dataclass(frozen=True, slots=True)
class Settings:
    redis_url: str | None = None
    """Redis to use. Unset: start a private redis-server with AOF in ``data_dir``."""
    redis_cluster: bool = False
    """``redis_url`` is one node of a Redis Cluster (``docs/ledger.md``, "Redis Cluster")."""
    cluster_subscribe: str = SubscribeRole.PRIMARY.value
    """Cluster mode: where each room is subscribed, ``primary`` (the primary of its slot)
    or ``replica`` (one of that primary's replicas, chosen per process; the primary while
    it has none up). ``server/broker/shard_nodes.py``, ``docs/fan-out.md``."""
    data_dir: Path = field(default_factory=default_data_dir)
    """Always absolute when loaded by ``load_settings``."""
    database_url: str | None = None
    """PostgreSQL of the durable record. Unset: with an embedded Redis, an embedded
    PostgreSQL in ``data_dir``; with ``redis_url`` set, no record (and no archiver)."""
    key_prefix: str = DEFAULT_PREFIX
    jwt_secret: str = ""
    """HS256 secret for access tokens (at least 32 characters). Required by ``serve``."""
    webhook_secret: str = ""
    """HMAC-SHA256 secret of the payment provider's top-up webhook."""
    payout_webhook_secret: str = ""
    """HMAC-SHA256 secret of the payout provider's webhook; empty: the webhook is refused."""
    catalog_path: Path | None = None
    allowed_origins: tuple[str, ...] = ()
    """Browser origins allowed to open a WebSocket; empty: same host only. ``*``: any."""
    demo_pages: bool = True
    batch_ms: int = 50
    """Coalescing tick of hot rooms, in milliseconds."""
    hot_room_events_per_s: int = 20
    """Above this event rate a room coalesces gift events into batches."""
    stats_interval_s: float = 2.0
    creator_share_bps: int = 5_000
    cents_per_100_diamonds: int = 50
    log_level: str = "info"
    socket_send_buffer_bytes: int = 64 * 1024
    """Kernel send buffer of each WebSocket (``server/web/uvicorn_setup.py`` passes it to
    every connection through the protocol factory)."""
    gc_freeze_every_connections: int = 200
    """``server/web/gc_freeze.py``: freeze the collector's long-lived objects after this
    many accepted WebSockets (keeps full collections short with a crowd); 0: never."""
    durability: str = ""
    """When a write is acknowledged: ``everysec``, ``always`` or ``always+replica``
    (``server/ledger/redis_config.py``, ``docs/operations.md``). Unset: ``always`` for the
    embedded Redis (chosen by measurement, ``docs/benchmarks.md``); an external Redis is
    used as it is configured, with a warning if it runs without AOF."""
    durability_replicas: int = 1
    durability_wait_ms: int = 100
    redis_check_interval_s: float = 1.0
    """How often each process checks Redis' configuration, data and catalog version."""
    access_log: bool = True
    """uvicorn's access log: one line per HTTP request and WebSocket handshake."""
    limits: Limits = field(default_factory=Limits)

    @property
    def economics(self) -> Economics:
        return Economics(self.creator_share_bps, self.cents_per_100_diamonds)

    @property
    def durability_mode(self) -> Durability:
        """What the checks hold Redis to; unset counts as ``everysec`` (warnings only)."""
        return Durability(self.durability or Durability.EVERYSEC)

    def for_embedded_redis(self) -> Settings:
        """These settings with the embedded Redis' default durability filled in."""
        if self.redis_url or self.durability:
            return self
        return dataclasses.replace(self, durability=EMBEDDED_DURABILITY.value)


_SCALARS = [f for f in dataclasses.fields(Settings) if f.name != "limits"]
_ZERO_MEANS_NONE = frozenset(
    {
        "daily_spend_coins_max", "cashout_diamonds_min", "monthly_spend_coins_max",
        "spend_raise_cooling_off_s", "minor_daily_spend_coins_max",
        "minor_monthly_spend_coins_max", "payout_hold_days",
    }
)  # fmt: skip
"""Limits where 0 means "no cap" or "no minimum". Any other limit at 0 would stop the server:
no pipeline ever sent, every call timed out, every gift refused by the scripts."""


def _convert(raw: str, kind: object, name: str) -> object:
    text = str(kind)
    if "bool" in text:
        if raw.lower() in {"1", "true", "yes", "on"}:
            return True
        if raw.lower() in {"0", "false", "no", "off"}:
            return False
        raise ValueError("expected true or false")
    if "tuple" in text:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if "Path" in text:
        return absolute(Path(raw))
    if "float" in text:
        value = float(raw)
        if not math.isfinite(value):
            raise ValueError("expected a finite number")
        return value
    if "int" in text:
        return int(raw)
    return raw


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def load_settings(env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Build settings from the environment; raise ``SettingsError`` listing every bad value."""
    env = os.environ if env is None else env
    errors: list[str] = []
    values: dict[str, object] = {}
    limit_values: dict[str, object] = {}
    for group, target in ((_SCALARS, values), (dataclasses.fields(Limits), limit_values)):
        for f in group:
            raw = env.get(env_name(f.name))
            if raw is None or raw == "":
                continue
            try:
                target[f.name] = _convert(raw, f.type, f.name)
            except ValueError as exc:
                errors.append(f"{env_name(f.name)}={raw!r}: {exc}")
    if "data_dir" not in values:
        values["data_dir"] = default_data_dir(env)
    values.update(overrides)
    for name in ("data_dir", "catalog_path"):
        path = values.get(name)
        if isinstance(path, Path):
            values[name] = absolute(path)
    for name, value in limit_values.items():
        if not isinstance(value, int | float):
            continue
        if value < 0:
            errors.append(f"{env_name(name)}: must not be negative")
        elif value == 0 and name not in _ZERO_MEANS_NONE:
            errors.append(f"{env_name(name)}: must be positive")
    try:
        values["limits"] = Limits(**limit_values)  # type: ignore[arg-type]
        settings = Settings(**values)  # type: ignore[arg-type]
        _ = settings.economics
    except (TypeError, ValueError) as exc:
        errors.append(str(exc))
    if errors:
        raise SettingsError("invalid settings:\n  " + "\n  ".join(errors))
    _check(settings, errors)
    if errors:
        raise SettingsError("invalid settings:\n  " + "\n  ".join(errors))
    return settings


def _check(s: Settings, errors: list[str]) -> None:
    if s.redis_url is not None and not s.redis_url.startswith(("redis://", "rediss://", "unix://")):
        errors.append(f"{env_name('redis_url')}: expected redis://host:port/db")
    if s.database_url is not None and not s.database_url.startswith(
        ("postgresql://", "postgres://")
    ):
        errors.append(f"{env_name('database_url')}: expected postgresql://user@host:port/db")
    if s.redis_cluster and s.redis_url is None:
        errors.append(
            f"{env_name('redis_cluster')}: needs {env_name('redis_url')} (a cluster node)"
        )
    if s.cluster_subscribe not in {r.value for r in SubscribeRole}:
        errors.append(
            f"{env_name('cluster_subscribe')}: expected "
            + " or ".join(r.value for r in SubscribeRole)
        )
    elif s.cluster_subscribe != SubscribeRole.PRIMARY and not s.redis_cluster:
        errors.append(
            f"{env_name('cluster_subscribe')}: needs {env_name('redis_cluster')}=true "
            "(one Redis has no shards)"
        )
    if s.redis_cluster and ("{" in s.key_prefix or "}" in s.key_prefix):
        errors.append(f"{env_name('key_prefix')}: no braces in cluster mode (they set the slot)")
    if s.jwt_secret and len(s.jwt_secret) < 32:
        errors.append(f"{env_name('jwt_secret')}: use at least 32 characters")
    if not 1 <= s.batch_ms <= 1000:
        errors.append(f"{env_name('batch_ms')}: expected 1..1000")
    if s.log_level.lower() not in {"debug", "info", "warning", "error"}:
        errors.append(f"{env_name('log_level')}: expected debug, info, warning or error")
    if s.catalog_path is not None and not s.catalog_path.is_file():
        errors.append(f"{env_name('catalog_path')}: no such file {s.catalog_path}")
    if s.gc_freeze_every_connections < 0:
        errors.append(f"{env_name('gc_freeze_every_connections')}: 0 (never) or more")
    if s.durability and s.durability not in {d.value for d in Durability}:
        errors.append(
            f"{env_name('durability')}: expected " + ", ".join(d.value for d in Durability)
        )
    if not 1 <= s.durability_replicas <= 16:
        errors.append(f"{env_name('durability_replicas')}: expected 1..16")
    if not 1 <= s.durability_wait_ms < s.limits.redis_timeout_s * 1000:
        errors.append(
            f"{env_name('durability_wait_ms')}: expected 1 and below "
            f"{env_name('redis_timeout_s')} ({s.limits.redis_timeout_s * 1000:g} ms)"
        )
    if not 0.1 <= s.redis_check_interval_s <= 60:
        errors.append(f"{env_name('redis_check_interval_s')}: expected 0.1..60")
    if s.limits.frame_bytes_max < 256:
        errors.append(f"{env_name('frame_bytes_max')}: at least 256")
    if s.limits.streams_per_creator_max > 1_000_000:  # start_stream.lua refuses more
        errors.append(f"{env_name('streams_per_creator_max')}: at most 1000000")
    if s.limits.payout_hold_days > 365:  # the scripts refuse more
        errors.append(f"{env_name('payout_hold_days')}: at most 365")
    if s.limits.payout_hold_day_s > 1_000_000:
        errors.append(f"{env_name('payout_hold_day_s')}: at most 1000000")
    if s.limits.payout_hold_entries_max > 100_000:
        errors.append(f"{env_name('payout_hold_entries_max')}: at most 100000")


DESCRIPTIONS: dict[str, str] = {
    "redis_url": "Redis holding the ledger; unset: a private redis-server with AOF in data_dir",
    "redis_cluster": "redis_url is a node of a Redis Cluster (gifts in two legs, docs/ledger.md)",
    "cluster_subscribe": "cluster mode: subscribe each room on the primary of its slot, or on "
    "replica: one of its replicas, chosen per process (the primary while none is up)",
    "data_dir": (
        "embedded Redis data, demo secrets, multiprocess metrics; installed without a "
        "checkout: $XDG_DATA_HOME/giftwire (~/.local/share/giftwire); relative: from the "
        "folder giftwire starts in"
    ),
    "database_url": "PostgreSQL of the durable record; unset: embedded one if Redis is embedded",
    "key_prefix": "prefix of every Redis key",
    "jwt_secret": "HS256 secret of access tokens, 32+ characters (required by serve)",
    "webhook_secret": "HMAC-SHA256 secret of the payment webhook",
    "payout_webhook_secret": "HMAC-SHA256 secret of the payout webhook; empty: refused",
    "catalog_path": "gift catalog JSON file seeding an empty Redis (a different one "
    "refuses to start; see giftwire catalog push); unset: the built-in catalog",
    "allowed_origins": "comma-separated browser origins for WebSockets; empty: same host; *: any",
    "demo_pages": "serve client_demo pages under /demo/",
    "batch_ms": "coalescing tick of hot rooms (ms)",
    "hot_room_events_per_s": "events per second above which a room coalesces",
    "stats_interval_s": "how often stats and leaderboard updates are sent (s)",
    "creator_share_bps": "creator's share of each gift in basis points (5000 = 50 %)",
    "cents_per_100_diamonds": "payout per 100 diamonds cashed out (cents)",
    "log_level": "debug, info, warning or error",
    "socket_send_buffer_bytes": "kernel send buffer per WebSocket (bounds a stalled viewer)",
    "gc_freeze_every_connections": "gc.freeze() after this many accepted WebSockets (0: never)",
    "durability": "acknowledge after: everysec (AOF fsync each second), always (fsync), "
    "always+replica (fsync and WAIT for replicas); unset: always for the embedded Redis, "
    "an external one as configured",
    "durability_replicas": "replicas that must have a write before its ack (always+replica)",
    "durability_wait_ms": "longest WAIT for the replicas; then the caller gets unavailable (ms)",
    "redis_check_interval_s": "how often Redis' policy, data loss and catalog are checked (s)",
    "access_log": "uvicorn's access log, a line per request and handshake (false: quiet)",
    "frame_bytes_max": "largest incoming WebSocket message (bytes; larger: close 1009)",
    "body_bytes_max": "largest HTTP request body (bytes; larger: 413 message_too_large)",
    "json_depth_max": "deepest nesting in a message",
    "string_length_max": "longest string in a message",
    "messages_per_s_max": "messages per connection per second (burst: 2 s worth)",
    "connections_per_user_max": "open WebSockets per user, per process",
    "connections_per_ip_max": "open WebSockets per client address, per process",
    "send_queue_frames_max": "frames queued for one viewer before frames are dropped",
    "send_queue_bytes_max": "bytes queued for one viewer before frames are dropped",
    "lagging_s_max": "how long a viewer may stay at its queue limit before close 4008 (s)",
    "gifts_per_s_max": "gifts per user per second, across all processes",
    "gift_burst_max": "burst of the per-user gift rate",
    "changes_per_minute_max": "state-changing HTTP calls (goals, spending, guests, battles, "
    "admin) per user per minute, across all processes (more: 429 rate_limited)",
    "change_burst_max": "burst of the per-user change rate",
    "daily_spend_coins_max": "default spending cap per user over any 24 hours (coins; 0: none)",
    "monthly_spend_coins_max": "default spending cap per user per calendar month, UTC (coins; "
    "0: none)",
    "spend_raise_cooling_off_s": "wait before a user's raised spending limit is in force (s; "
    "lowering: at once)",
    "minor_daily_spend_coins_max": "daily cap of an account marked minor (coins; 0: none)",
    "minor_monthly_spend_coins_max": "monthly cap of an account marked minor (coins; 0: none)",
    "feed_events_max": "gift events kept per stream for resume and history",
    "resume_events_max": "most events replayed by one resume or gap repair",
    "batch_events_max": "most gift events in one coalesced frame",
    "room_frames_per_s_max": "frames per second a hot room sends to all its viewers together",
    "redis_timeout_s": "timeout of each Redis round trip on the hot path (s)",
    "pipeline_calls_max": "most scripts in one pipeline",
    "pipelines_in_flight_max": "pipelines in flight at once (ordered lanes)",
    "receipt_ttl_s": "how long gift receipts are kept for retries (s)",
    "combo_window_ms": "same gift from the same sender within this window counts as a combo",
    "cashout_diamonds_min": "smallest cash-out (diamonds)",
    "request_timeout_s": "time to send a whole HTTP request or finish a WebSocket handshake (s)",
    "pending_requests_max": "incomplete requests and handshakes per process (oldest closed)",
    "pending_requests_per_ip_max": "incomplete requests and handshakes per client address",
    "streams_per_creator_max": "stream ids one creator may own, live or ended (restartable)",
    "payout_hold_days": "days gift diamonds stay held before a cash-out may take them; 0: none",
    "payout_hold_day_s": "length of a hold day (s); 86400 except in tests and staging",
    "payout_hold_entries_max": "(creator, day) pairs one sender's gifts may name in the hold",
    "battle_seconds_min": "shortest battle a creator may ask for (s)",
    "battle_seconds_max": "longest battle a creator may ask for (s)",
    "battle_seconds_default": "length of a battle when the invitation names none (s)",
    "battle_invite_ttl_s": "how long a battle invitation waits for an answer (s)",
}


DATA_DIR_SHOWN = "<checkout>/var/giftwire"


def settings_table() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting."""
    rows: list[tuple[str, str, str]] = []
    defaults = Settings()
    for f in _SCALARS:
        default = getattr(defaults, f.name)
        shown = "" if default in (None, "", ()) else str(default)
        if f.name == "data_dir":
            shown = DATA_DIR_SHOWN  # the same on every machine, unlike the absolute path
        rows.append((env_name(f.name), shown, DESCRIPTIONS[f.name]))
    for f in dataclasses.fields(Limits):
        rows.append((env_name(f.name), str(getattr(defaults.limits, f.name)), DESCRIPTIONS[f.name]))
    return rows
