"""The checksummed envelope around small documents (manifests, tags).

magic (4 bytes) | u16 format | u8 compression (0 none, 1 zstd) | u8 0 | payload | u64 xxh3 of all before
"""

from __future__ import annotations

import struct
import threading

import xxhash
import zstandard

from ._errors import CorruptionError, UnsupportedFormatError

_HEADER = struct.Struct("<4sHBx")
_CHECKSUM = struct.Struct("<Q")
_COMPRESS_ABOVE = 4096
# Measured on manifests of 14 / 150 / 550 KB (payload): level 1 compresses them to
# 36% / 32% / 31% in ~60 / ~600 / ~2200 µs; level 3 to 37% / 34% / 31% in ~80 / ~950 /
# ~3300 µs. Level 1 is as small and faster, and a manifest is sealed on every commit.
_LEVEL = 1


class _Codecs(threading.local):
    """zstd contexts, one pair per thread (they are not thread-safe). Reusing a
    context saves allocating it on every document (~10 µs of ~60 µs for a 14 KB
    manifest); each call resets it, so a failed decompression does not leak into
    the next one."""

    def __init__(self) -> None:
        self.compressor = zstandard.ZstdCompressor(level=_LEVEL)
        self.decompressor = zstandard.ZstdDecompressor()


_codecs = _Codecs()


def seal(magic: bytes, fmt: int, payload: bytes) -> bytes:
    """Wrap `payload`, zstd-compressing it when larger than 4 KiB."""
    compression = 0
    if len(payload) > _COMPRESS_ABOVE:
        payload = _codecs.compressor.compress(payload)
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
            payload = _codecs.decompressor.decompress(payload)
        except zstandard.ZstdError as exc:
            raise corrupt("undecodable") from exc
    return payload
