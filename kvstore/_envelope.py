"""The checksummed envelope around small documents (manifests, tags).

    magic (4 bytes) | u16 format | u8 compression (0 none, 1 zstd) | u8 0 | payload | u64 xxh3 of all before
"""

from __future__ import annotations

import struct

import xxhash
import zstandard

from ._errors import CorruptionError, UnsupportedFormatError

_HEADER = struct.Struct("<4sHBx")
_CHECKSUM = struct.Struct("<Q")
_COMPRESS_ABOVE = 4096


def seal(magic: bytes, fmt: int, payload: bytes) -> bytes:
    """Wrap `payload`, zstd-compressing it when larger than 4 KiB."""
    compression = 0
    if len(payload) > _COMPRESS_ABOVE:
        payload = zstandard.ZstdCompressor(level=1).compress(payload)
        compression = 1
    body = _HEADER.pack(magic, fmt, compression) + payload
    return body + _CHECKSUM.pack(xxhash.xxh3_64_intdigest(body))


def unseal(data: bytes, magic: bytes, supported: int, object_name: str, what: str) -> bytes:
    """The payload, or CorruptionError / UnsupportedFormatError naming the object."""

    def corrupt(reason: str) -> CorruptionError:
        return CorruptionError(
            f"{what} {object_name} is damaged ({reason}); run `Store.verify()` to list damaged objects",
            object_name=object_name,
            block=what,
        )

    if len(data) < _HEADER.size + _CHECKSUM.size:
        raise corrupt("truncated")
    found_magic, fmt, compression = _HEADER.unpack_from(data)
    if found_magic != magic:
        raise corrupt("bad magic")
    if fmt > supported:
        raise UnsupportedFormatError(
            f"{what} {object_name} has format {fmt}, newer than this kvstore's {supported}: upgrade kvstore to read it"
        )
    body, trailer = data[: -_CHECKSUM.size], data[-_CHECKSUM.size :]
    if fmt == 0 or compression > 1 or xxhash.xxh3_64_intdigest(body) != _CHECKSUM.unpack(trailer)[0]:
        raise corrupt("checksum mismatch")
    payload = body[_HEADER.size :]
    if compression:
        try:
            payload = zstandard.ZstdDecompressor().decompress(payload)
        except zstandard.ZstdError as exc:
            raise corrupt("undecodable") from exc
    return payload
