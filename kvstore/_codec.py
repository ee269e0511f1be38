"""Checking and encoding user keys and values.

A value `put` accepts reads back equal: msgpack values are packed with
``strict_types`` so that what msgpack would silently change (a tuple read
back as a list) is refused at `put`, and unpacked with settings that accept
everything packed (map keys of any msgpack type, not only str and bytes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

import msgpack

from ._errors import (
    CodecMismatchError,
    InvalidKeyError,
    InvalidValueError,
    UnsupportedFormatError,
    ValueDecodeError,
)

ValueMode = Literal["bytes", "msgpack", "raw"]
VALUE_MODES: tuple[ValueMode, ...] = ("bytes", "msgpack", "raw")
# The codecs a store can record; "raw" is a way of opening one, never recorded.
Codec = Literal["bytes", "msgpack"]
CODECS: tuple[Codec, ...] = ("bytes", "msgpack")
# The mode a Store works in is the `value_mode` of its codec and the request:
# "bytes" (a store of bytes, whether or not "raw" was asked for), "msgpack",
# or "raw" (the stored bytes of a msgpack store; writes must be msgpack).
# Subclasses of the plain types pack as their base type, to which they compare equal
# (an IntEnum as its int, an OrderedDict as a dict); the unbound methods copy the
# value itself, whatever the subclass's __str__ or __int__ say.
_AS_BASE: tuple[tuple[type, Callable[[Any], object]], ...] = (
    (dict, dict),
    (list, list),
    (str, str.__str__),
    (bytes, lambda b: bytes(memoryview(b))),
    (int, int.__int__),
    (float, float.__float__),
)


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


def encode_keys(keys: object, max_bytes: int) -> list[bytes]:
    """Keys as bytes (`encode_key` each), from any iterable of keys. Raises InvalidKeyError,
    for one key given where several are expected too (a str would be taken letter by letter)."""
    if isinstance(keys, (str, bytes, bytearray, memoryview)):
        raise InvalidKeyError(f"get_many takes a list of keys, not one {type(keys).__name__}: pass [key]")
    if not isinstance(keys, Iterable):
        raise InvalidKeyError(f"get_many takes a list of keys, not a {type(keys).__name__}")
    return [encode_key(key, max_bytes) for key in keys]


# What `encode_value` says of its limit, and what to do about it.
VALUE_LIMIT = (
    "StoreOptions.max_value_bytes",
    "split it across keys or keep large blobs as their own S3 objects",
)
# Bulk loads and distributed writes keep every value in their segments (BULK_MAX_VALUE_BYTES).
BULK_VALUE_LIMIT = (
    "bulk loads and distributed writes keep values in their segments",
    "write larger values with put() or a transaction, which store them out of line",
)


def encode_value(value: object, mode: ValueMode, max_bytes: int, limit: tuple[str, str] = VALUE_LIMIT) -> bytes:
    """A value as stored bytes. Raises InvalidValueError (naming `limit`: what sets it, what to do)."""
    if mode == "bytes":
        if isinstance(value, bytes):
            data = value
        elif isinstance(value, (bytearray, memoryview)):
            data = bytes(value)
        else:
            raise InvalidValueError(
                f"this store records values='bytes', so its values are bytes, not {type(value).__name__}: "
                "encode it, or keep Python objects in a store created with values='msgpack'"
            )
    elif mode == "raw":
        data = _checked_msgpack(value)
    else:
        try:
            data = msgpack.packb(value, use_bin_type=True, strict_types=True, default=_as_base)
        except InvalidValueError:
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidValueError(f"value cannot be encoded with msgpack: {exc}") from exc
    if len(data) > max_bytes:
        raise InvalidValueError(
            f"value of {len(data)} bytes is over the {max_bytes}-byte limit ({limit[0]}); {limit[1]}"
        )
    return data


def _as_base(obj: object) -> object:
    """msgpack's `default` under strict_types: a subclass of a plain type as that type;
    refuse a tuple, which would read back as a (never equal) list."""
    if isinstance(obj, tuple):
        raise InvalidValueError(
            f"value contains a {type(obj).__name__}, which msgpack would give back as a list "
            "(and a list does not compare equal to it); store a list instead"
        )
    for base, plain in _AS_BASE:
        if isinstance(obj, base):
            return plain(obj)
    raise TypeError(f"can not serialize {type(obj).__name__!r} object")


def _checked_msgpack(value: object) -> bytes:
    """`value` as given to a msgpack store opened with values="raw": bytes that are
    already one msgpack object, stored as they are. Anything else would make every
    later read of the key fail, so it is refused (InvalidValueError)."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise InvalidValueError(
            f"this store records values='msgpack' and was opened with values='raw', which takes bytes that "
            f"are already msgpack, not {type(value).__name__}; open it without values= to store Python objects"
        )
    data = bytes(value)
    try:
        msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise InvalidValueError(
            f"this store records values='msgpack', and these {len(data)} bytes are not one msgpack object "
            f"({type(exc).__name__}: {exc}), so every read of the key would fail; open the store without "
            "values= to store them as a bytes value (or any Python object), or pack them with msgpack.packb"
        ) from exc
    return data


def decode_value(data: bytes, mode: ValueMode, key: bytes, store: str) -> Any:
    """A stored value as `put` was given it. Raises ValueDecodeError naming the store and key."""
    if mode != "msgpack":
        return data
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ValueDecodeError(
            f"the value of key {key!r} in {store} is not msgpack ({type(exc).__name__}: {exc}); it was written "
            "with another values= setting: open the store with values='raw' to read its raw bytes, "
            "then rewrite or delete the key",
            store=store,
            key=key,
        ) from exc


def value_mode(recorded: object, requested: ValueMode | None, url: str) -> ValueMode:
    """The mode to open a store in, given the codec its manifest records (None: none).

    `requested` None uses the recorded codec (bytes when none is recorded);
    "raw" gives the stored bytes of any store (see `CODECS` for what the mode
    then does); an explicit codec must match the recorded one.
    CodecMismatchError, or UnsupportedFormatError for a codec this version
    does not know.
    """
    if recorded is not None and recorded not in CODECS:
        raise UnsupportedFormatError(
            f"{url} records values={recorded!r}, a value codec this kvstore does not know; upgrade kvstore"
        )
    codec: ValueMode = "msgpack" if recorded == "msgpack" else "bytes"
    if requested is None:
        return codec
    if requested == "raw":
        return "raw" if codec == "msgpack" else "bytes"
    if recorded is None or recorded == requested:
        return requested
    raw = ", or with values='raw' to read the stored bytes" if recorded == "msgpack" else ""
    raise CodecMismatchError(
        f"{url} stores {recorded} values (it was created with values={recorded!r}), so it cannot be "
        f"opened with values={requested!r}: open it with values={recorded!r} or without values={raw}",
        recorded=str(recorded),
    )


def writes_fit(recorded: object, mode: ValueMode) -> bool:
    """Whether values encoded in `mode` are readable in a store recording the codec
    `recorded` (None: a store made before codecs were recorded, which takes any)."""
    if recorded is None:
        return True
    return recorded == ("bytes" if mode == "bytes" else "msgpack")


def codec_changed(recorded: object, mode: ValueMode) -> CodecMismatchError:
    """The error of a write encoded in `mode` into a store that took up the codec
    `recorded` after the writing handle was opened (`writes_fit` is False)."""
    opened = "values='raw' on a msgpack store" if mode == "raw" else f"values={mode!r}"
    return CodecMismatchError(
        f"the store took values={recorded!r} after this handle was opened (it encodes {opened}), so its "
        "values would be unreadable there; nothing was written. Open the store again (kvstore.open, "
        "without values= or with the recorded one) and write again",
        recorded=str(recorded),
    )


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with `prefix` (None: no bound)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def key_range(
    max_key_bytes: int,
    prefix: object | None,
    start: object | None,
    end: object | None,
) -> tuple[bytes | None, bytes | None]:
    """The [start, end) byte range selected by `prefix`, `start` and `end` together."""
    lo = None if start is None else encode_key(start, max_key_bytes)
    hi = None if end is None else encode_key(end, max_key_bytes)
    if prefix is not None:
        p = _encode_prefix(prefix, max_key_bytes)
        lo = p if lo is None or p > lo else lo
        p_end = prefix_end(p)
        if p_end is not None and (hi is None or p_end < hi):
            hi = p_end
    return lo, hi


def _encode_prefix(prefix: object, max_bytes: int) -> bytes:
    if prefix in (b"", ""):
        return b""
    return encode_key(prefix, max_bytes)
