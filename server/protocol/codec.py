"""JSON (text frames, orjson) and msgpack (binary frames) codecs.

Decoding is strict and bounded: the frame size is limited before this runs (the server's
``ws_max_size``); here the structure is bounded (depth, string and container sizes, key
types) and anything surprising is a ``DecodeError``, never another exception.
"""

from __future__ import annotations

import struct
from enum import StrEnum
from typing import Any

import msgpack
import orjson

from server.domain.limits import Limits


class WireFormat(StrEnum):
    JSON = "json"
    MSGPACK = "msgpack"

    @property
    def subprotocol(self) -> str:
        return f"giftwire.{self.value}"


SUBPROTOCOLS = {fmt.subprotocol: fmt for fmt in WireFormat}


class DecodeError(ValueError):
    """The frame is not a well-formed message of this codec."""


def _check_shape(value: object, depth_max: int, string_max: int, depth: int = 1) -> None:
    """Walk the decoded value: bound the depth and lengths, allow only JSON-like types."""
    if depth > depth_max:
        raise DecodeError("nested too deeply")
    if isinstance(value, dict):
        if len(value) > 64:
            raise DecodeError("too many keys")
        for key, item in value.items():
            if type(key) is not str:
                raise DecodeError("keys must be strings")
            if len(key) > string_max:
                raise DecodeError("key too long")
            _check_shape(item, depth_max, string_max, depth + 1)
    elif isinstance(value, list):
        if len(value) > 256:
            raise DecodeError("array too long")
        for item in value:
            _check_shape(item, depth_max, string_max, depth + 1)
    elif isinstance(value, str):
        if len(value) > string_max:
            raise DecodeError("string too long")
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise DecodeError("NaN and Infinity are not numbers here")
    elif value is not None and not isinstance(value, bool | int):
        raise DecodeError(f"unsupported type {type(value).__name__}")


def _refuse_ext(code: int, data: bytes) -> object:
    raise DecodeError("msgpack extension types are not accepted")


def decode(data: str | bytes, fmt: WireFormat, limits: Limits) -> dict[str, Any]:
    """Decode one incoming frame into a dict with string keys, or raise DecodeError."""
    try:
        if fmt is WireFormat.JSON:
            if not isinstance(data, str):
                raise DecodeError("expected a text frame")
            value = orjson.loads(data)
        else:
            if not isinstance(data, bytes):
                raise DecodeError("expected a binary frame")
            value = msgpack.unpackb(
                data,
                raw=False,
                strict_map_key=True,
                use_list=True,
                ext_hook=_refuse_ext,
                max_str_len=limits.string_length_max,
                max_bin_len=0,
                max_array_len=256,
                max_map_len=64,
                max_ext_len=0,
            )
    except DecodeError:
        raise
    except (ValueError, TypeError, OverflowError, UnicodeError, RecursionError) as exc:
        raise DecodeError(f"not valid {fmt.value}: {type(exc).__name__}") from None
    if not isinstance(value, dict):
        raise DecodeError("a message must be an object")
    _check_shape(value, limits.json_depth_max, limits.string_length_max)
    return value


def encode_msgpack(message: object) -> bytes:
    data: bytes = msgpack.packb(message, use_bin_type=True)
    return data


OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2


class OutFrame:
    """One outgoing message, encoded once however many connections it goes to.

    ``wire`` is the complete WebSocket frame as a server sends it (final, unmasked, no
    extension): the same bytes for every receiver, so a broadcast frames it once and hands
    the same object to each connection. ``asgi`` is the ASGI ``websocket.send`` event for
    servers that cannot take pre-framed bytes.
    """

    __slots__ = ("_wire", "payload", "text")

    def __init__(self, payload: bytes, *, text: bool) -> None:
        self.payload = payload
        self.text = text
        self._wire: bytes | None = None

    def __len__(self) -> int:
        return len(self.payload)

    @property
    def wire(self) -> bytes:
        if self._wire is None:
            self._wire = wire_frame(self.payload, OPCODE_TEXT if self.text else OPCODE_BINARY)
        return self._wire

    def asgi(self) -> dict[str, Any]:
        if self.text:
            return {"type": "websocket.send", "text": self.payload.decode()}
        return {"type": "websocket.send", "bytes": self.payload}


def wire_frame(payload: bytes, opcode: int) -> bytes:
    """A final, unmasked WebSocket frame (RFC 6455 section 5.2) carrying ``payload``."""
    length = len(payload)
    if length < 126:
        head = bytes((0x80 | opcode, length))
    elif length < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, length)
    return head + payload


def encode_frame(message: object, fmt: WireFormat) -> OutFrame:
    """Encode one outgoing message into a frame (text for JSON, binary for msgpack).

    Broadcasts encode once per format, never per viewer.
    """
    if fmt is WireFormat.JSON:
        return OutFrame(orjson.dumps(message), text=True)
    return OutFrame(encode_msgpack(message), text=False)
