"""Reading untrusted input at the edge: request bodies with a bound, integers in ASCII.

Both refuse with an ``OperatingError`` (a documented code, nothing changed) instead of
letting a library raise: a body is never held past its bound, and ``int()`` never sees a
string it would reject (or accept in a surprising way).
"""

from __future__ import annotations

from starlette.requests import Request

from server.domain.errors import ErrorCode, RequestError

_ASCII_DIGITS = frozenset("0123456789")
ASCII_INT_LENGTH_MAX = 19
"""Longest integer text accepted (any bound of ours fits in 16 digits); longer is refused
before ``int()`` so that a 5,000-digit number costs nothing."""


def ascii_int(raw: str) -> int | None:
    """``raw`` as a non-negative integer, or None unless it is 1-19 ASCII digits.

    ``str.isdigit()`` is true for ``²`` and ``٣``, which ``int()`` then rejects (``²``) or
    reads as a number (``٣`` is 3): neither belongs in a query string or a header of ours.
    """
    if not 0 < len(raw) <= ASCII_INT_LENGTH_MAX or not _ASCII_DIGITS.issuperset(raw):
        return None
    return int(raw)


def int_param(raw: str | None, name: str, default: int, high: int) -> int:
    """A query parameter 0..``high`` in ASCII digits; else ``invalid_request``."""
    if raw is None:
        return default
    value = ascii_int(raw)
    if value is None or value > high:
        raise RequestError(ErrorCode.INVALID_REQUEST, f"{name} must be an integer 0..{high}")
    return value


def _too_large(bytes_max: int) -> RequestError:
    return RequestError(
        ErrorCode.MESSAGE_TOO_LARGE,
        f"the body is larger than {bytes_max} bytes",
        {"bytes_max": bytes_max},
    )


async def read_body(request: Request, bytes_max: int) -> bytes:
    """The request body, at most ``bytes_max`` bytes, or ``message_too_large``.

    A declared ``Content-Length`` over the bound is refused before a byte of the body is
    read. A chunked body (or one whose length lies) is read only up to the bound: reading
    stops at the first chunk past it, so the server never holds more than ``bytes_max``
    plus one chunk. The caller answers 413 with ``Connection: close`` (``http_api``), so
    the rest is never read either.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        length = ascii_int(declared.strip())
        if length is None:
            raise RequestError(ErrorCode.INVALID_REQUEST, "Content-Length must be an integer")
        if length > bytes_max:
            raise _too_large(bytes_max)
    parts: list[bytes] = []
    held = 0
    async for chunk in request.stream():
        held += len(chunk)
        if held > bytes_max:
            raise _too_large(bytes_max)
        parts.append(chunk)
    return b"".join(parts)
