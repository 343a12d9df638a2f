"""The few HTTP calls a load run needs: start streams, top up gifters, read /metrics.

Blocking urllib calls, run in a thread by the asyncio generator (there are only a handful
per run) and called directly by the Locust users (gevent makes them cooperative).
"""

from __future__ import annotations

import hashlib
import hmac
import urllib.error
import urllib.request
from typing import Any

import orjson


def http_json(
    method: str,
    url: str,
    body: object = None,
    *,
    bearer: str | None = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    timeout_s: float = 10.0,
) -> tuple[int, Any]:
    data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("content-type", "application/json")
    if bearer:
        request.add_header("authorization", f"Bearer {bearer}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, orjson.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read() or b"null")


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


def post_webhook(base_url: str, secret: str, event: dict[str, object]) -> tuple[int, Any]:
    """POST a payment-provider event, signed with HMAC-SHA256 as the server expects."""
    body = orjson.dumps(event)
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return http_json(
        "POST",
        f"{base_url}/api/webhooks/payments",
        raw=body,
        headers={"x-giftwire-signature": signature},
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
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total
