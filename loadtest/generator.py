"""``python -m loadtest run``: thousands of viewers in hot and cold rooms, a set of gifters.

One asyncio process, one lightweight protocol object per connection (``loadtest.wsclient``),
so a run holds far more connections than Locust's per-user cost allows. The run is bounded
by a gift count and a duration, prints a live progress line on stderr, and returns a JSON
result; with ``--redis-url`` it also reconciles the books afterwards (the same check as
``giftwire reconcile``).

Setup goes through the server's own API: creators start the rooms' streams with
``POST /api/streams`` and gifters are topped up through the signed payment webhook, so the
generator needs the server's token and webhook secrets and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from client_demo import http
from loadtest.clients import DeliveryClock, GiftBudget, Gifter, Totals, Viewer
from loadtest.wsclient import HandshakeError
from server.domain.accounts import Role
from server.web.auth import issue_token

CONNECTS_IN_FLIGHT_MAX = 64
TOKEN_TTL_S = 6 * 3600


@dataclass(frozen=True, slots=True)
class RunConfig:
    url: str = "http://127.0.0.1:8000"
    jwt_secret: str = ""
    webhook_secret: str = ""
    redis_url: str | None = None
    """Set it (with ``key_prefix``) to reconcile the books after the run."""
    database_url: str | None = None
    """The server's durable record: then the books are reconciled across both stores (the
    server's archiver trims Redis' log, which alone no longer holds the history)."""
    key_prefix: str = "gw:"
    hot_rooms: int = 1
    cold_rooms: int = 3
    viewers: int = 1000
    hot_viewer_share: float = 0.8
    """Share of the viewers that join the hot rooms; the rest spread over the cold ones."""
    gifters: int = 20
    hot_gifter_share: float = 0.8
    gift: str = "rose"
    gift_rate_per_s: float = 5.0
    """Per gifter; 0 sends as fast as the window allows."""
    window: int = 16
    """Gifts one gifter may have unanswered at once."""
    gifts_max: int = 10_000
    duration_s: float = 30.0
    drain_s: float = 5.0
    probe_viewers_per_room: int = 10
    connections_per_source_ip: int = 150
    """Against a loopback server, spread connections over 127.0.0.x so that each address
    stays under the server's per-IP connection limit (default 200)."""
    run_id: str = ""
    progress: bool = True
    battle_s: int = 0
    """Above 0: the rooms battle in pairs (room 0 against 1, 2 against 3, …) for this many
    seconds, started before the gifts are sent, so that every gift also scores."""
    goals_per_room: int = 0
    """Goals set on each room before the gifts (alternately coins and a count of ``gift``,
    targets past what the run sends): the cost of goals on the hot path."""


@dataclass(slots=True)
class _Room:
    stream_id: str
    creator_id: str
    hot: bool
    viewers: list[Viewer]
    gifters: list[Gifter]


def _split(total: int, share: float, hot: int, cold: int) -> list[int]:
    """How many of ``total`` go to each room: ``share`` over the hot ones, the rest cold."""
    if not cold:
        share = 1.0
    if not hot:
        share = 0.0
    hot_total = round(total * share)
    counts = [hot_total // hot + (i < hot_total % hot) for i in range(hot)] if hot else []
    cold_total = total - hot_total
    counts += [cold_total // cold + (i < cold_total % cold) for i in range(cold)] if cold else []
    return counts


class Run:
    def __init__(
        self,
        config: RunConfig,
        out: Callable[[str], None] | None = None,
        phase: Callable[[str], None] | None = None,
    ) -> None:
        """``phase(name)`` is called when sending starts ("sending") and when every gift
        was answered ("acked"): a benchmark reads the server's CPU time there."""
        if not config.jwt_secret or not config.webhook_secret:
            raise ValueError("the run needs the server's JWT and webhook secrets")
        self.config = config
        self.run_id = config.run_id or uuid.uuid4().hex[:6]
        parts = urlsplit(config.url)
        self.base = f"http://{parts.hostname}:{parts.port or 80}"
        self.ws_base = f"ws://{parts.hostname}:{parts.port or 80}/ws/streams/"
        self._loopback = _is_loopback(parts.hostname or "")
        self.totals = Totals()
        self.clock = DeliveryClock()
        self.rooms: list[_Room] = []
        self._connections = 0
        self._out = out or (lambda line: print(line, file=sys.stderr, flush=True))
        self._started = time.monotonic()
        self._phase = phase or (lambda name: None)

    def _token(self, user: str, role: Role = Role.VIEWER) -> str:
        return issue_token(self.config.jwt_secret, user, role, name=user, ttl_s=TOKEN_TTL_S)

    def _source_ip(self) -> str | None:
        if not self._loopback:
            return None
        index = self._connections // self.config.connections_per_source_ip
        self._connections += 1
        return f"127.0.{index // 250}.{index % 250 + 1}"

    # Setup.

    async def _setup(self) -> None:
        c = self.config
        viewer_counts = _split(c.viewers, c.hot_viewer_share, c.hot_rooms, c.cold_rooms)
        gifter_counts = _split(c.gifters, c.hot_gifter_share, c.hot_rooms, c.cold_rooms)
        coins = c.gifts_max + 10
        for index in range(c.hot_rooms + c.cold_rooms):
            hot = index < c.hot_rooms
            stream_id = f"lt{self.run_id}{'h' if hot else 'c'}{index}"
            creator = f"lt{self.run_id}cr{index}"
            await asyncio.to_thread(
                http.start_stream, self.base, self._token(creator, Role.CREATOR), stream_id, "load"
            )
            for g in range(c.goals_per_room):
                goal: dict[str, object] = {"goal_id": f"lg{g}", "target": 10**12}
                goal.update({"kind": "gift", "gift_id": c.gift} if g % 2 else {"kind": "coins"})
                await asyncio.to_thread(
                    http.add_goal, self.base, self._token(creator, Role.CREATOR), stream_id, goal
                )
            room = _Room(stream_id, creator, hot, [], [])
            for n in range(viewer_counts[index]):
                user = f"lt{self.run_id}r{index}v{n}"
                probe = n < c.probe_viewers_per_room
                room.viewers.append(
                    Viewer(
                        self.ws_base + stream_id,
                        stream_id,
                        self._token(user),
                        self.totals,
                        self.clock,
                        probe=probe,
                    )
                )
            for n in range(gifter_counts[index]):
                user = f"lt{self.run_id}r{index}g{n}"
                await asyncio.to_thread(
                    http.top_up, self.base, c.webhook_secret, f"{user}-pay", user, coins
                )
                room.gifters.append(
                    Gifter(
                        self.ws_base + stream_id,
                        user,
                        stream_id,
                        self._token(user),
                        self.totals,
                        self.clock,
                        gift=c.gift,
                        rate_per_s=c.gift_rate_per_s,
                        window=c.window,
                        source_ip=None,
                    )
                )
            self.rooms.append(room)
        if c.battle_s > 0:
            await self._start_battles()

    async def _start_battles(self) -> None:
        for a, b in zip(self.rooms[::2], self.rooms[1::2], strict=False):
            invite = await asyncio.to_thread(
                http.invite_battle, self.base, self._token(a.creator_id, Role.CREATOR),
                a.stream_id, b.stream_id, self.config.battle_s,
            )  # fmt: skip
            await asyncio.to_thread(
                http.answer_battle, self.base, self._token(b.creator_id, Role.CREATOR), invite
            )

    async def _connect_all(self) -> None:
        gate = asyncio.Semaphore(CONNECTS_IN_FLIGHT_MAX)

        async def one(connect: Callable[[], Any]) -> None:
            async with gate:
                try:
                    await connect()
                except HandshakeError as e:
                    self.totals.connect_failures[f"http_{e.status}"] += 1
                except (OSError, TimeoutError, ConnectionError) as e:
                    self.totals.connect_failures[type(e).__name__] += 1

        jobs = []
        for room in self.rooms:
            for viewer in room.viewers:
                ip = self._source_ip()
                jobs.append(one(lambda v=viewer, ip=ip: v.connect(ip)))  # type: ignore[misc]
            for gifter in room.gifters:
                gifter.source_ip = self._source_ip()
                jobs.append(one(gifter.connect))
        await asyncio.gather(*jobs)

    # The run.

    async def run(self) -> dict[str, Any]:
        c = self.config
        await self._setup()
        drops_before = await asyncio.to_thread(self._server_drops)
        progress = asyncio.get_running_loop().create_task(self._progress_forever())
        try:
            connect_started = time.monotonic()
            await self._connect_all()
            connect_s = time.monotonic() - connect_started
            gifters = [g for room in self.rooms for g in room.gifters if g.proto is not None]
            budget = GiftBudget(c.gifts_max, time.monotonic() + c.duration_s)
            self._phase("sending")
            self._started = time.monotonic()
            watchers = [asyncio.get_running_loop().create_task(g.watch()) for g in gifters]
            await asyncio.gather(*(g.run(budget) for g in gifters))
            sending_s = time.monotonic() - self._started
            await asyncio.gather(*(g.drain(c.drain_s) for g in gifters))
            acked_s = time.monotonic() - self._started
            self._phase("acked")
            for watcher in watchers:
                watcher.cancel()
            await self._wait_deliveries(c.drain_s)
            delivered_s = time.monotonic() - self._started
            held = self._held()
        finally:
            progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await progress
        drops_after = await asyncio.to_thread(self._server_drops)
        for room in self.rooms:
            for member in (*room.viewers, *room.gifters):
                member.close()
        await asyncio.sleep(0.2)
        reconciled = await self._reconcile()
        return self._result(
            connect_s,
            sending_s,
            acked_s,
            delivered_s,
            held,
            drops_after - drops_before,
            reconciled,
        )

    async def _wait_deliveries(self, timeout_s: float) -> None:
        """Wait until every probe viewer saw its room's last acked gift, or deliveries stop."""
        deadline = time.monotonic() + timeout_s
        last, still = -1, 0
        while time.monotonic() < deadline:
            if all(self._probes_done(room) for room in self.rooms):
                return
            events = self.totals.events
            still = still + 1 if events == last else 0
            if still >= 10:
                return
            last = events
            await asyncio.sleep(0.05)

    def _probes_done(self, room: _Room) -> bool:
        last = self.totals.max_seq.get(room.stream_id, 0)
        return all(v.seqs and v.seqs[-1] >= last for v in room.viewers if v.probe and v.proto) or (
            last == 0
        )

    def _held(self) -> int:
        return sum(
            1
            for room in self.rooms
            for member in (*room.viewers, *room.gifters)
            if member.proto is not None and not member.proto.closed.done()
        )

    def _server_drops(self) -> float:
        try:
            return http.metric_total(self.base, "giftwire_fanout_dropped_total")
        except OSError:
            return 0.0

    async def _reconcile(self) -> dict[str, Any] | None:
        if not self.config.redis_url:
            return None
        from redis.asyncio import Redis

        from server.ledger.keys import Keys
        from server.ledger.reconcile import reconcile

        redis = Redis.from_url(self.config.redis_url, decode_responses=False)
        try:
            if self.config.database_url:
                from server.record.connection import open_record
                from server.record.reconcile import reconcile_across

                pool = await open_record(self.config.database_url)
                try:
                    across = await reconcile_across(redis, Keys(self.config.key_prefix), pool)
                finally:
                    await pool.close()
                return across.to_json()
            report = await reconcile(redis, Keys(self.config.key_prefix))
        finally:
            await redis.aclose()
        return report.to_json()

    async def _progress_forever(self) -> None:
        if not self.config.progress:
            return
        tty = sys.stderr.isatty()
        last_events, last_at = 0, time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            t = self.totals
            now = time.monotonic()
            rate = (t.events - last_events) / max(now - last_at, 1e-9)
            last_events, last_at = t.events, now
            line = (
                f"  {now - self._started:5.1f}s  conns {self._held():,}"
                f"  sent {t.sent:,}  acked {t.acked:,}  refused {sum(t.refused.values()):,}"
                f"  events {t.events:,} ({rate:,.0f}/s)"
                f"  ack p99 {t.ack_latency.percentile_s(0.99) * 1000:.1f} ms"
            )
            if tty:
                print("\r" + line.ljust(110), end="", file=sys.stderr, flush=True)
            else:
                self._out(line)

    def _result(
        self,
        connect_s: float,
        sending_s: float,
        acked_s: float,
        delivered_s: float,
        held: int,
        drops: float,
        reconciled: dict[str, Any] | None,
    ) -> dict[str, Any]:
        if self.config.progress and sys.stderr.isatty():
            print(file=sys.stderr)
        t = self.totals
        probes = [v for room in self.rooms for v in room.viewers if v.probe and v.proto]
        complete = sum(v.complete(t.max_seq.get(v.stream_id, 0)) for v in probes)
        unanswered = sum(len(g.in_flight) for room in self.rooms for g in room.gifters)
        config = asdict(self.config)
        config.pop("jwt_secret")
        config.pop("webhook_secret")
        return {
            "run_id": self.run_id,
            "config": config,
            "rooms": [
                {
                    "stream_id": r.stream_id,
                    "hot": r.hot,
                    "viewers": len(r.viewers),
                    "gifters": len(r.gifters),
                    "last_seq": t.max_seq.get(r.stream_id, 0),
                }
                for r in self.rooms
            ],
            "connect_s": round(connect_s, 3),
            "sending_s": round(sending_s, 3),
            "connections": {
                "attempted": sum(len(r.viewers) + len(r.gifters) for r in self.rooms),
                "held": held,
                "failed": dict(t.connect_failures),
                "closed_by_server": dict(t.closes),
                "gifter_reconnects": t.reconnects,
            },
            "connect_ms": t.connect_time.summary_ms(),
            "gifts": {
                "sent": t.sent,
                "acked": t.acked,
                "replayed": t.replayed,
                "refused": dict(t.refused),
                "unanswered": unanswered,
                "retries": t.retries,
                "errors_without_id": dict(t.errors_without_id),
            },
            "acks_per_s": round(t.acked / max(acked_s, 1e-9), 1),
            "ack_latency_ms": t.ack_latency.summary_ms(),
            "deliveries": {
                "events": t.events,
                "frames": t.frames,
                "events_per_s": round(t.events / max(delivered_s, 1e-9), 1),
                "lag_notices": t.lag_notices,
            },
            "delivery_latency_ms": self.clock.latency.summary_ms(),
            "probes": {"viewers": len(probes), "complete": complete},
            "server": {"fanout_drops": int(drops)},
            "reconcile": reconciled,
        }


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback and ipaddress.ip_address(host).version == 4
    except ValueError:
        return False


async def run(config: RunConfig) -> dict[str, Any]:
    return await Run(config).run()
