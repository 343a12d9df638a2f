"""HS256 access tokens: ``sub`` (user id), ``role``, ``name`` (display name), ``exp``, and
for the read-only ``overlay`` role ``stream``, the one stream the token may watch.

Browsers cannot set headers on a WebSocket, so a token may also arrive as the subprotocol
``bearer.<token>``: unlike a query string, it never appears in access logs.
"""

from __future__ import annotations

import time

import jwt

from server.domain.accounts import Identity, Role, clean_display_name, is_valid_id
from server.domain.errors import ErrorCode, RequestError

ALGORITHM = "HS256"
BEARER_SUBPROTOCOL_PREFIX = "bearer."


def issue_token(
    secret: str,
    user_id: str,
    role: Role,
    *,
    name: str | None = None,
    ttl_s: int = 3600,
    stream: str | None = None,
) -> str:
    """A signed token; ``stream`` is required for (and only for) ``Role.OVERLAY``."""
    if (role is Role.OVERLAY) != (stream is not None):
        raise ValueError("an overlay token names its stream, and only an overlay token does")
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": user_id,
        "role": role.value,
        "name": name or user_id,
        "iat": now,
        "exp": now + ttl_s,
    }
    if stream is not None:
        claims["stream"] = stream
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(secret: str, token: str) -> Identity:
    """Return the token's identity, or raise RequestError(unauthorized | token_expired)."""
    return verify_token_until(secret, token)[0]


def verify_token_until(secret: str, token: str) -> tuple[Identity, float]:
    """The token's identity and its ``exp`` (Unix seconds), or raise like ``verify_token``.

    A WebSocket outlives the check at its handshake: it keeps ``exp`` and refuses gifts
    from then on (``docs/protocol.md``, close 4001).
    """
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["exp", "sub"]}
        )
    except jwt.ExpiredSignatureError:
        raise RequestError(ErrorCode.TOKEN_EXPIRED) from None
    except jwt.PyJWTError:
        raise RequestError(ErrorCode.UNAUTHORIZED) from None
    user_id, role, name = claims.get("sub"), claims.get("role", "viewer"), claims.get("name")
    expires_at_s = float(claims["exp"])  # PyJWT checked it is a number, not yet passed
    if not is_valid_id(user_id) or role not in Role.__members__.values():
        raise RequestError(ErrorCode.UNAUTHORIZED)
    stream = claims.get("stream")
    if role == Role.OVERLAY and not is_valid_id(stream):
        raise RequestError(ErrorCode.UNAUTHORIZED)  # an overlay token without its stream
    identity = Identity(
        user_id,
        Role(role),
        clean_display_name(name if isinstance(name, str) else user_id),
        stream if role == Role.OVERLAY else None,
    )
    return identity, expires_at_s


def bearer_from_header(value: str | None) -> str | None:
    if value and value[:7].lower() == "bearer ":
        return value[7:].strip() or None
    return None


def bearer_from_subprotocols(offered: list[str]) -> str | None:
    for protocol in offered:
        if protocol.startswith(BEARER_SUBPROTOCOL_PREFIX):
            return protocol[len(BEARER_SUBPROTOCOL_PREFIX) :]
    return None
