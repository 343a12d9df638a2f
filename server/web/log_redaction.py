"""Keep access tokens out of every log line, at every log level.

giftwire reads tokens only from the ``Authorization`` header or the ``bearer.<jwt>``
subprotocol, but other code prints them anyway: uvicorn's access lines print the path with
its query string (a client that puts ``?token=…`` in the URL, although the server ignores
it there), and at log level ``debug`` the websockets protocol prints every handshake header,
``Sec-WebSocket-Protocol: bearer.<jwt>`` included.

A filter on each log handler rewrites the record before any formatter sees it: anything
shaped like a JWT, and whatever follows ``bearer.``, ``Bearer `` or a ``token=`` query
parameter, becomes ``[redacted]``. Arguments are rewritten one by one, not merged into the
message, because uvicorn's access formatter reads them by position.

Alternatives that lost: turning the debug header log off would hide what debug is for;
a filter on the loggers would miss records that propagate from child loggers.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

REDACTED = "[redacted]"
_PATTERNS = [
    re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*)?"),
    re.compile(r"(?i)(?<=bearer[ .])[^\s,;\"']+"),
    re.compile(r"(?i)(?<=token=)[^&\s\"']+"),
]
LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "giftwire")
"""Loggers whose handlers get the filter: the root, uvicorn's and giftwire's."""


def redact(text: str) -> str:
    for pattern in _PATTERNS:
        text = pattern.sub(REDACTED, text)
    return text


def _redact_arg(value: object) -> object:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bool | int | float) or value is None:
        return value
    text = str(value)
    cleaned = redact(text)
    return value if cleaned == text else cleaned


class RedactTokens(logging.Filter):
    """Rewrites a record's message and arguments; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_arg(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: _redact_arg(arg) for key, arg in record.args.items()}
        return True


def install(logger_names: Iterable[str] = LOGGERS) -> None:
    """Add the filter to every handler of these loggers (once). Call after logging is set up."""
    for name in logger_names:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactTokens) for f in handler.filters):
                handler.addFilter(RedactTokens())
