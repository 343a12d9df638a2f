"""WebSocket close codes giftwire uses (``docs/protocol.md`` explains each)."""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    """The server is shutting down: reconnect (to another process) and resume."""
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    """A frame of the wrong kind (binary on a JSON connection or the reverse)."""
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    UNAUTHORIZED = 4001
    """The token is missing, invalid or expired: get a new one, then reconnect."""
    FORBIDDEN = 4003
    UNKNOWN_STREAM = 4004
    SLOW_CONSUMER = 4008
    """The client did not read fast enough and stayed behind: reconnect and resume."""
    TOO_MANY_CONNECTIONS = 4009
    RATE_LIMITED = 4029
    """The client sent far more messages than allowed."""
