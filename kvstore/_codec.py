"""Checking and encoding user keys and values."""

from __future__ import annotations

from typing import Any, Literal

import msgpack

from ._errors import InvalidKeyError, InvalidValueError

ValueMode = Literal["bytes", "msgpack"]
VALUE_MODES: tuple[ValueMode, ...] = ("bytes", "msgpack")


def encode_key(key: object, max_bytes: int) -> bytes:
    """A key as bytes: bytes-like as is, str as UTF-8. Raises InvalidKeyError."""
    if isinstance(key, bytes):
        data = key
    elif isinstance(key, str):
        data = key.encode("utf-8")
    elif isinstance(key, (bytearray, memoryview)):
        data = bytes(key)
    else:
        raise InvalidKeyError(f"keys are bytes or str, not {type(key).__name__}")
    if not data:
        raise InvalidKeyError("keys may not be empty")
    if len(data) > max_bytes:
        raise InvalidKeyError(
            f"key of {len(data)} bytes is over the {max_bytes}-byte limit (StoreOptions.max_key_bytes); "
            "store long identifiers in the value and key by a hash"
        )
    return data


def encode_value(value: object, mode: ValueMode, max_bytes: int) -> bytes:
    """A value as stored bytes. Raises InvalidValueError."""
    if mode == "bytes":
        if isinstance(value, bytes):
            data = value
        elif isinstance(value, (bytearray, memoryview)):
            data = bytes(value)
        else:
            raise InvalidValueError(
                f"values are bytes in this store, not {type(value).__name__}; encode it, "
                "or open the store with values='msgpack' to store Python objects"
            )
    else:
        try:
            data = msgpack.packb(value, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidValueError(f"value cannot be encoded with msgpack: {exc}") from exc
    if len(data) > max_bytes:
        raise InvalidValueError(
            f"value of {len(data)} bytes is over the {max_bytes}-byte limit (StoreOptions.max_value_bytes); "
            "split it across keys or keep large blobs as their own S3 objects"
        )
    return data


def decode_value(data: bytes, mode: ValueMode) -> Any:
    if mode == "bytes":
        return data
    return msgpack.unpackb(data, raw=False)


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with `prefix` (None: no bound)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])
