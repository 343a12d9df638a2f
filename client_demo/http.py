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


def http_json(
    method: str,
    url: str,
    body: object = None,
    *,
    bearer: str | None = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    timeout_s: float = TIMEOUT_S,
) -> tuple[int, Any]:
    """``(status, decoded JSON body)``; an error body that is not JSON becomes giftwire's
    error shape with code ``http_error``. Raises OSError when the server cannot be reached."""
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
            return response.status, orjson.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        text = error.read()
        try:
            return error.code, orjson.loads(text or b"null")
        except orjson.JSONDecodeError:
            return error.code, {"error": {"code": "http_error", "message": text.decode()[:200]}}


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
