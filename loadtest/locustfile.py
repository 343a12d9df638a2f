"""Locust users for giftwire: Viewer, Gifter and Creator on one live stream.

    ./dev locust --headless -u 50 -r 10 -t 60s \\
        --host http://127.0.0.1:8000 --gw-stream loadtest --gw-gift-rate 2

(``./dev locust`` is ``locust -f loadtest/locustfile.py`` from any folder.) Secrets come
from ``--gw-jwt-secret`` / ``--gw-webhook-secret``, else the way ``giftwire token`` finds
them: the server's own ``GIFTWIRE_JWT_SECRET`` / ``GIFTWIRE_WEBHOOK_SECRET``, else the
demo's ``demo-secrets.json`` in the data folder. At test start the stream is started
(idempotent) by its creator; each Gifter is topped up through the signed payment webhook.

Battles and guests: ``--gw-battle-with OTHER`` starts stream OTHER (its creator
``--gw-battle-creator``) and a battle of ``--gw-battle-seconds`` between the two at test
start; ``--gw-guests N`` puts N guests on stage (invited by the creator, joined with their
own tokens) and ``--gw-gift-to`` makes the Gifters send to them: ``guest`` (one each, in
turn) or ``*`` (split between all). Viewers count the battle messages they see
(``battle score`` samples, response time 0).

What lands in Locust's statistics (request type ``WS``):

* ``connect``: the WebSocket handshake up to ``welcome``;
* ``gift ack``: from the first send of a gift to its ``gift_ack``; a refusal is a failure
  named by its error code (``GiftRefused('insufficient_funds')``); ``rate_limited`` and
  ``unavailable`` are retried with the same id first, as a real client must;
* ``gift delivery``: from the first send of a gift to the moment a Viewer (or the Creator)
  saw its event. Send times are shared in memory, so this is measured within one Locust
  process (run the users in one process, or read it per worker).

Locust is an optional extra (``loadtest``, which ``./dev`` installs), never a server
dependency.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections import OrderedDict
from typing import Any

import gevent
from gevent.event import AsyncResult
from locust import User, between, constant, events, task
from locust.env import Environment

from client_demo import http
from client_demo.wire import subprotocols
from loadtest.syncws import ConnectionClosedError, SyncWebSocket
from loadtest.wsclient import HandshakeError
from server.cli.demo_secrets import client_secrets
from server.domain.accounts import Role
from server.web.auth import issue_token

RETRY_CODES = frozenset({"rate_limited", "unavailable"})
ATTEMPTS_MAX = 5
ANSWER_TIMEOUT_S = 10.0
SEND_TIMES_MAX = 200_000
_RUN = uuid.uuid4().hex[:6]
_numbers = itertools.count()


class GiftRefused(Exception):
    """A gift was answered with an error code (the failure's name in Locust's table)."""


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    group = parser.add_argument_group("giftwire")
    group.add_argument("--gw-stream", default="loadtest", help="stream id to load")
    group.add_argument("--gw-creator", default="loadtest_creator", help="the stream's creator")
    found = client_secrets()
    group.add_argument(
        "--gw-jwt-secret", default=found.jwt_secret, help=f"JWT secret (from {found.source})"
    )
    group.add_argument(
        "--gw-webhook-secret",
        default=found.webhook_secret,
        help=f"payment webhook secret, tops up gifters (from {found.source})",
    )
    group.add_argument("--gw-gift", default="rose", help="gift id the Gifters send")
    group.add_argument("--gw-gift-rate", type=float, default=1.0, help="gifts/s per Gifter")
    group.add_argument("--gw-coins", type=int, default=100_000, help="top-up per Gifter")
    group.add_argument("--gw-battle-with", default="", help="battle this stream at test start")
    group.add_argument("--gw-battle-creator", default="loadtest_rival", help="its creator")
    group.add_argument("--gw-battle-seconds", type=int, default=300, help="battle length (s)")
    group.add_argument("--gw-guests", type=int, default=0, help="guests on stage (0-8)")
    group.add_argument(
        "--gw-gift-to", default="", choices=["", "guest", "*"], help="Gifters send to guests"
    )


class _Deliveries:
    """Send times by (stream, seq), learned from acks, joined with what readers saw."""

    def __init__(self) -> None:
        self.sent: OrderedDict[tuple[str, int], float] = OrderedDict()
        self.early: OrderedDict[tuple[str, int], list[float]] = OrderedDict()

    def acked(self, env: Environment, key: tuple[str, int], sent_at: float) -> None:
        self.sent[key] = sent_at
        for seen_at in self.early.pop(key, ()):
            _fire(env, "gift delivery", max(seen_at - sent_at, 0.0))
        _bound(self.sent)

    def seen(self, env: Environment, key: tuple[str, int], at: float) -> None:
        sent_at = self.sent.get(key)
        if sent_at is not None:
            _fire(env, "gift delivery", at - sent_at)
        else:
            self.early.setdefault(key, []).append(at)
            _bound(self.early)


def _bound(table: OrderedDict[Any, Any]) -> None:
    while len(table) > SEND_TIMES_MAX:
        table.popitem(last=False)


DELIVERIES = _Deliveries()


def _fire(env: Environment, name: str, seconds: float, exc: Exception | None = None) -> None:
    env.events.request.fire(
        request_type="WS",
        name=name,
        response_time=seconds * 1000,
        response_length=0,
        exception=exc,
        context={},
    )


def _token(env: Environment, user: str, role: Role) -> str:
    secret = env.parsed_options.gw_jwt_secret
    if not secret:
        raise RuntimeError("no JWT secret: start `./dev demo` once, or set GIFTWIRE_JWT_SECRET")
    return issue_token(secret, user, role, name=user, ttl_s=6 * 3600)


@events.test_start.add_listener
def _start_stream(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None or environment.host is None:
        return
    token = _token(environment, options.gw_creator, Role.CREATOR)
    host, stream = environment.host, options.gw_stream
    http.start_stream(host, token, stream, "locust load test")
    for guest in _guests(options):
        http.invite_guest(host, token, stream, guest)
        http.join_stage(host, _token(environment, guest, Role.VIEWER), stream)
    if options.gw_battle_with:
        rival = _token(environment, options.gw_battle_creator, Role.CREATOR)
        http.start_stream(host, rival, options.gw_battle_with, "locust battle rival")
        battle = http.stream_battle(host, stream)["battle"]
        if battle is None or battle["state"] != "running":
            invite = http.invite_battle(
                host, token, stream, options.gw_battle_with, options.gw_battle_seconds
            )
            http.answer_battle(host, rival, invite)


def _guests(options: Any) -> list[str]:
    return [f"{options.gw_stream}-guest-{i}" for i in range(max(0, min(options.gw_guests, 8)))]


class _GiftwireUser(User):
    """One WebSocket connection to the stream and a greenlet that reads it."""

    abstract = True
    role = Role.VIEWER

    def user_id(self) -> str:
        return f"lc{_RUN}{type(self).__name__[0].lower()}{next(_numbers)}"

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.stream_id: str = options.gw_stream
        self.uid = self.user_id()
        self.prepare()
        url = self.host.replace("http", "ws", 1) + f"/ws/streams/{self.stream_id}"
        protocols = subprotocols(_token(self.environment, self.uid, self.role))
        started = time.perf_counter()
        try:
            self.ws = SyncWebSocket(url, protocols)
            welcome = self.ws.recv(timeout_s=10)
        except HandshakeError as e:
            _fire(self.environment, "connect", time.perf_counter() - started, e)
            self.stop()
            return
        if welcome.get("type") != "welcome":
            _fire(self.environment, "connect", 0, ConnectionError(f"got {welcome}"))
            self.stop()
            return
        _fire(self.environment, "connect", time.perf_counter() - started)
        self.reader = gevent.spawn(self._read_forever)

    def prepare(self) -> None:
        """Before connecting (Gifters top up here)."""

    def on_stop(self) -> None:
        # The test is over: the reader sees its socket close, and that is no failure.
        self.stopping = True
        reader = getattr(self, "reader", None)
        if reader is not None:
            reader.kill(block=False)
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()

    def _read_forever(self) -> None:
        try:
            while True:
                self.on_message(self.ws.recv())
        except (ConnectionClosedError, OSError) as e:
            if getattr(self, "stopping", False):
                return
            code = getattr(e, "code", None)
            _fire(self.environment, "disconnect", 0, ConnectionError(f"closed {code}"))

    def on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind in ("gift", "gifts"):
            now = time.perf_counter()
            for event in message["events"] if kind == "gifts" else [message]:
                DELIVERIES.seen(self.environment, (self.stream_id, event["seq"]), now)
        elif kind in ("battle", "battle_score", "battle_end"):
            _fire(self.environment, kind.replace("_", " "), 0)


class Viewer(_GiftwireUser):
    """Joins the room and reads: every gift event it sees is a ``gift delivery`` sample."""

    weight = 8
    wait_time = constant(1)

    @task
    def watch(self) -> None:
        """Reading happens in the reader greenlet; the task only keeps the user alive."""


class Creator(_GiftwireUser):
    """The stream's creator reading its own feed (one per test)."""

    fixed_count = 1
    role = Role.CREATOR
    wait_time = constant(1)

    def user_id(self) -> str:
        return str(self.environment.parsed_options.gw_creator)

    @task
    def read_feed(self) -> None:
        """The creator's feed arrives on the reader greenlet."""


class Gifter(_GiftwireUser):
    """Sends gifts at ``--gw-gift-rate`` per second; retries with the same id."""

    weight = 2
    wait_time = between(0.0, 0.0)

    def prepare(self) -> None:
        options = self.environment.parsed_options
        self.pending: dict[str, AsyncResult] = {}
        self.sent = 0
        rate = options.gw_gift_rate
        self.interval_s = 1.0 / rate if rate > 0 else 0.0
        self.next_at = time.monotonic()
        if not options.gw_webhook_secret:
            raise RuntimeError("no webhook secret: start `./dev demo` once, or set it")
        http.top_up(
            self.host, options.gw_webhook_secret, f"{self.uid}-pay", self.uid, options.gw_coins
        )

    def on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind in ("gift_ack", "error") and message.get("id") in self.pending:
            self.pending[message["id"]].set(message)
        else:
            super().on_message(message)

    @task
    def send_gift(self) -> None:
        delay = self.next_at - time.monotonic()
        if delay > 0:
            gevent.sleep(delay)
        self.next_at = max(self.next_at + self.interval_s, time.monotonic() - 1.0)
        client_id = f"{self.uid}-{self.sent}"
        self.sent += 1
        options = self.environment.parsed_options
        gift = options.gw_gift
        message: dict[str, Any] = {"type": "send_gift", "id": client_id, "gift": gift, "count": 1}
        if options.gw_gift_to == "*":
            message["to"] = "*"
        elif options.gw_gift_to == "guest" and (guests := _guests(options)):
            message["to"] = guests[self.sent % len(guests)]
        started = time.perf_counter()
        answer: dict[str, Any] | None = None
        for _ in range(ATTEMPTS_MAX):
            result = self.pending[client_id] = AsyncResult()
            self.ws.send(message)
            try:
                answer = result.get(timeout=ANSWER_TIMEOUT_S)
            except gevent.Timeout:
                answer = {"type": "error", "code": "no_answer"}  # unknown: retry, same id
            if answer["type"] == "gift_ack" or answer.get("code") not in RETRY_CODES | {
                "no_answer"
            }:
                break
            detail = answer.get("detail") or {}
            gevent.sleep(min(float(detail.get("retry_after_ms", 100)), 2000.0) / 1000)
        self.pending.pop(client_id, None)
        elapsed = time.perf_counter() - started
        assert answer is not None
        if answer["type"] == "gift_ack":
            _fire(self.environment, "gift ack", elapsed)
            DELIVERIES.acked(self.environment, (self.stream_id, answer["seq"]), started)
        else:
            _fire(self.environment, "gift ack", elapsed, GiftRefused(answer.get("code")))
