"""The few HTTP API calls the terminal client makes (standard library only, off the loop)."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from typing import Any

import orjson

TIMEOUT_S = 10.0


def _request(method: str, url: str, token: str | None, body: object) -> tuple[int, Any]:
    data = orjson.dumps(body) if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("accept", "application/json")
    if data is not None:
        request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.status, orjson.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        raw = error.read()
        try:
            return error.code, orjson.loads(raw or b"null")
        except orjson.JSONDecodeError:
            return error.code, {"error": {"code": "http_error", "message": raw.decode()[:200]}}


async def call(
    method: str, url: str, *, token: str | None = None, body: object = None
) -> tuple[int, Any]:
    """``(status, decoded JSON body)``; raises OSError when the server cannot be reached."""
    return await asyncio.to_thread(_request, method, url, token, body)


def error_of(body: Any) -> tuple[str, str]:
    """``(code, message)`` of an API error body."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("code")), str(body["error"].get("message"))
    return "http_error", str(body)
