"""WebSocket close codes giftwire uses (``docs/protocol.md`` explains each)."""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    """The server is shutting down: reconnect (to another process) and resume."""
    PROTOCOL_ERROR = 1002
    """A frame that breaks RFC 6455 (unmasked, reserved bits or opcode, a bad fragment or
    control frame, a length the data does not match): sent by the WebSocket layer."""
    INVALID_DATA = 1007
    """A text frame, or a close reason, that is not UTF-8."""
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    """The server process is stopping (SIGTERM): reconnect, to another process, and resume."""
    # 4003, 4004 and 4009 are reserved: today those refusals happen at the handshake, as
    # HTTP 403, 404 and 429 (docs/protocol.md).
    UNAUTHORIZED = 4001
    """The token expired while the socket was open (a gift after ``exp`` was refused with
    ``token_expired``): get a new token, then reconnect with ``?since=``."""
    FORBIDDEN = 4003
    UNKNOWN_STREAM = 4004
    SLOW_CONSUMER = 4008
    """The client did not read fast enough and stayed behind: reconnect and resume."""
    TOO_MANY_CONNECTIONS = 4009
    RATE_LIMITED = 4029
    """The client sent far more messages than allowed."""
