"""The HTTP half of giftwire's Python client (standard library only).

Shared by the terminal client, the load generator, the Locust users and the tests, so that
each call is written once. Blocking calls; ``call`` runs one off the event loop. Under
Locust, gevent makes the blocking sockets cooperative.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import urllib.error
import urllib.request
from typing import Any

import orjson

TIMEOUT_S = 10.0
SIGNATURE_HEADER = "x-giftwire-signature"


def http_json(method: str, url: str, body: object = None, **options: Any) -> tuple[int, Any]:
    """``(status, decoded JSON body)``; an error body that is not JSON becomes giftwire's
    error shape with code ``http_error``. Raises OSError when the server cannot be reached.
    ``options``: those of ``http_exchange`` (``bearer``, ``headers``, ``raw``, ``timeout_s``)."""
    status, _, decoded = http_exchange(method, url, body, **options)
    return status, decoded


def http_exchange(
    method: str,
    url: str,
    body: object = None,
    *,
    bearer: str | None = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    timeout_s: float = TIMEOUT_S,
) -> tuple[int, dict[str, str], Any]:
    """``http_json`` with the response's headers too (names in lower case): a 429's
    ``retry-after``, for one."""
    data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("accept", "application/json")
    if data is not None:
        request.add_header("content-type", "application/json")
    if bearer:
        request.add_header("authorization", f"Bearer {bearer}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            got = {name.lower(): value for name, value in response.headers.items()}
            return response.status, got, orjson.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        got = {name.lower(): value for name, value in error.headers.items()}
        text = error.read()
        try:
            return error.code, got, orjson.loads(text or b"null")
        except orjson.JSONDecodeError:
            shown = {"error": {"code": "http_error", "message": text.decode()[:200]}}
            return error.code, got, shown


async def call(
    method: str, url: str, *, token: str | None = None, body: object = None
) -> tuple[int, Any]:
    """``http_json`` in a thread, for asyncio code."""
    return await asyncio.to_thread(http_json, method, url, body, bearer=token)


def error_of(body: Any) -> tuple[str, str]:
    """``(code, message)`` of an API error body."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("code")), str(body["error"].get("message"))
    return "http_error", str(body)


def start_stream(base_url: str, creator_token: str, stream_id: str, title: str) -> None:
    """Start (or find already started) a stream; raise when the server refuses."""
    status, body = http_json(
        "POST",
        f"{base_url}/api/streams",
        {"stream_id": stream_id, "title": title},
        bearer=creator_token,
    )
    if status not in (200, 201):
        raise RuntimeError(f"cannot start stream {stream_id}: HTTP {status} {body}")


def add_goal(base_url: str, creator_token: str, stream_id: str, goal: dict[str, object]) -> None:
    """Add a goal to a stream (idempotent by its ``goal_id``); raise when refused."""
    status, body = http_json(
        "POST", f"{base_url}/api/streams/{stream_id}/goals", goal, bearer=creator_token
    )
    if status not in (200, 201):
        raise RuntimeError(f"cannot add goal to {stream_id}: HTTP {status} {body}")


def post_webhook(base_url: str, secret: str, event: dict[str, object]) -> tuple[int, Any]:
    """POST a payment-provider event, signed with HMAC-SHA256 as the server expects."""
    body = orjson.dumps(event)
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return http_json(
        "POST",
        f"{base_url}/api/webhooks/payments",
        raw=body,
        headers={SIGNATURE_HEADER: signature},
    )


def top_up(base_url: str, secret: str, payment_id: str, user_id: str, coins: int) -> int:
    """Credit coins through the signed payment webhook (idempotent by payment id)."""
    event = {"type": "payment.succeeded", "payment_id": payment_id, "user_id": user_id}
    status, reply = post_webhook(base_url, secret, {**event, "coins": coins})
    if status != 200:
        raise RuntimeError(f"top-up of {user_id} refused: HTTP {status} {reply}")
    return int(reply["balance"])


def metric_total(base_url: str, name: str) -> float:
    """Sum of every sample of one Prometheus metric (all label sets); 0 when absent."""
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=TIMEOUT_S) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _ok(what: str, status: int, body: Any) -> Any:
    if status not in (200, 201):
        code, message = error_of(body)
        raise RuntimeError(f"{what} refused: HTTP {status} {code}: {message}")
    return body


def invite_battle(
    base_url: str,
    creator_token: str,
    from_stream: str,
    to_stream: str,
    duration_s: int | None = None,
    battle_id: str | None = None,
) -> dict[str, Any]:
    """Invite ``to_stream`` to a battle with ``from_stream`` (the caller's); the invitation."""
    body: dict[str, object] = {"from_stream": from_stream, "to_stream": to_stream}
    if duration_s is not None:
        body["duration_s"] = duration_s
    if battle_id is not None:
        body["id"] = battle_id
    status, reply = http_json("POST", f"{base_url}/api/battles", body, bearer=creator_token)
    return dict(_ok("battle invitation", status, reply))


def answer_battle(
    base_url: str, creator_token: str, invite: dict[str, Any], *, accept: bool = True
) -> dict[str, Any]:
    """Accept (the battle starts) or decline an invitation as returned by ``invite_battle``."""
    action = "accept" if accept else "decline"
    status, reply = http_json(
        "POST",
        f"{base_url}/api/battles/{invite['battle_id']}/{action}",
        {"from_stream": invite["from_stream"], "to_stream": invite["to_stream"]},
        bearer=creator_token,
    )
    return dict(_ok(f"battle {action}", status, reply))


def end_battle(base_url: str, creator_token: str, stream_id: str) -> dict[str, Any]:
    """End the stream's running battle now; the result."""
    status, reply = http_json(
        "POST", f"{base_url}/api/streams/{stream_id}/battle/end", {}, bearer=creator_token
    )
    return dict(_ok("battle end", status, reply))


def stream_battle(base_url: str, stream_id: str) -> dict[str, Any]:
    """``{battle, outgoing, incoming}`` of a stream (``GET /api/streams/{id}/battle``)."""
    status, reply = http_json("GET", f"{base_url}/api/streams/{stream_id}/battle")
    return dict(_ok("battle state", status, reply))


def battle_result(base_url: str, battle_id: str) -> dict[str, Any]:
    status, reply = http_json("GET", f"{base_url}/api/battles/{battle_id}")
    return dict(_ok("battle result", status, reply))


def invite_guest(base_url: str, creator_token: str, stream_id: str, user_id: str) -> Any:
    """The creator invites ``user_id`` on stage; the stage after."""
    status, reply = http_json(
        "POST", f"{base_url}/api/streams/{stream_id}/guests", {"user_id": user_id},
        bearer=creator_token,
    )  # fmt: skip
    return _ok("guest invitation", status, reply)


def join_stage(base_url: str, guest_token: str, stream_id: str) -> Any:
    """The invited user (the token's) goes on stage; the stage after."""
    status, reply = http_json(
        "POST", f"{base_url}/api/streams/{stream_id}/guests/join", {}, bearer=guest_token
    )
    return _ok("joining the stage", status, reply)
