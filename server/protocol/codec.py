"""JSON (text frames, orjson) and msgpack (binary frames) codecs.

Decoding is strict and bounded: the frame size is limited before this runs (the server's
``ws_max_size``); here the structure is bounded (depth, string and container sizes, key
types) and anything surprising is a ``DecodeError``, never another exception.
"""

from __future__ import annotations

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


def encode_json(message: object) -> str:
    return orjson.dumps(message).decode()


def encode_msgpack(message: object) -> bytes:
    data: bytes = msgpack.packb(message, use_bin_type=True)
    return data


def encode(message: object, fmt: WireFormat) -> str | bytes:
    """Encode one outgoing message. Broadcasts encode once per format, never per viewer."""
    return encode_json(message) if fmt is WireFormat.JSON else encode_msgpack(message)
