"""The segment format: an immutable sorted run of entries (bytes only, no I/O).

Layout (docs/format.md has the byte-level description)::

    header  8 bytes   b"KVSG", u16 format, u16 flags (0)
    block*            zstd(msgpack([keys, versions | nil, values])) + u64 xxh3 checksum
    index             zstd(msgpack([[first_key, last_key, offset, length], ...])) + u64 xxh3
    footer  36 bytes  u64 index offset, u32 index length, u64 entry count,
                      u16 format, 2 zero bytes, u64 xxh3 of the previous 24 bytes, b"KVSE"

Entries are sorted by key, then by version descending; all versions of a
key sit in one block. A value of nil is a tombstone. A block whose versions
are nil belongs to a *commit segment*: every entry has the version at which
the manifest committed the segment (not known when the segment is written,
since a rebased commit changes it).
"""

from __future__ import annotations

import struct
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass

import msgpack
import xxhash
import zstandard

from ._errors import CorruptionError, UnsupportedFormatError

FORMAT = 1
HEADER = struct.Struct("<4sHH")
FOOTER = struct.Struct("<QIQH2xQ4s")
FOOTER_BODY = 24  # bytes of the footer covered by its checksum
HEADER_MAGIC = b"KVSG"
FOOTER_MAGIC = b"KVSE"
CHECKSUM = struct.Struct("<Q")
BLOCK_TARGET_BYTES = 64 * 1024
_ZSTD_LEVEL = 3

Entry = tuple[bytes, int, "bytes | None"]


@dataclass(frozen=True)
class EncodedSegment:
    """A segment's bytes and the facts the manifest records about it."""

    data: bytes
    count: int
    min_key: bytes
    max_key: bytes
    min_version: int
    max_version: int


@dataclass(frozen=True)
class SegmentIndex:
    """Where each block is, and the key range it holds."""

    first_keys: list[bytes]
    last_keys: list[bytes]
    offsets: list[int]
    lengths: list[int]
    count: int

    def block_for(self, key: bytes) -> int | None:
        """The block that may hold `key`, or None if no block can."""
        i = bisect_right(self.first_keys, key) - 1
        if i < 0 or key > self.last_keys[i]:
            return None
        return i

    def blocks_between(self, start: bytes | None, end: bytes | None) -> range:
        """Blocks that may hold keys in [start, end)."""
        lo = 0 if start is None else max(0, bisect_right(self.first_keys, start) - 1)
        hi = len(self.first_keys) if end is None else bisect_left(self.first_keys, end)
        return range(lo, hi)


@dataclass(frozen=True)
class Block:
    """A decoded data block: parallel lists, sorted by key then version descending."""

    keys: list[bytes]
    versions: list[int] | None  # None: every entry has the segment's commit version
    values: list[bytes | None]
    size: int  # decoded bytes, for cache accounting

    def find(self, key: bytes) -> int | None:
        """Position of the newest entry for `key`, or None."""
        i = bisect_left(self.keys, key)
        return i if i < len(self.keys) and self.keys[i] == key else None


def encode_segment(entries: Iterable[Entry], *, uniform_version: bool) -> EncodedSegment:
    """Encode entries sorted by (key, version descending).

    With `uniform_version` the versions are not stored (commit segments).
    """
    compressor = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
    out = bytearray(HEADER.pack(HEADER_MAGIC, FORMAT, 0))
    index: list[list[object]] = []
    keys: list[bytes] = []
    versions: list[int] = []
    values: list[bytes | None] = []
    raw_bytes = 0
    count = 0
    min_version: int | None = None
    max_version: int | None = None

    def flush() -> None:
        nonlocal raw_bytes
        payload = msgpack.packb([keys, None if uniform_version else versions, values], use_bin_type=True)
        block = compressor.compress(payload)
        index.append([keys[0], keys[-1], len(out), len(block) + CHECKSUM.size])
        out.extend(block)
        out.extend(CHECKSUM.pack(xxhash.xxh3_64_intdigest(block)))
        keys.clear()
        versions.clear()
        values.clear()
        raw_bytes = 0

    for key, version, value in entries:
        if keys and key != keys[-1] and raw_bytes >= BLOCK_TARGET_BYTES:
            flush()
        keys.append(key)
        versions.append(version)
        values.append(value)
        raw_bytes += len(key) + (len(value) if value is not None else 0) + 12
        count += 1
        min_version = version if min_version is None else min(min_version, version)
        max_version = version if max_version is None else max(max_version, version)
    if not count:
        raise ValueError("a segment needs at least one entry")
    flush()
    first_key, last_key = index[0][0], index[-1][1]
    index_offset = len(out)
    index_block = compressor.compress(msgpack.packb(index, use_bin_type=True))
    out.extend(index_block)
    out.extend(CHECKSUM.pack(xxhash.xxh3_64_intdigest(index_block)))
    index_length = len(index_block) + CHECKSUM.size
    body = FOOTER.pack(index_offset, index_length, count, FORMAT, 0, FOOTER_MAGIC)[:FOOTER_BODY]
    out.extend(FOOTER.pack(index_offset, index_length, count, FORMAT, xxhash.xxh3_64_intdigest(body), FOOTER_MAGIC))
    assert isinstance(first_key, bytes) and isinstance(last_key, bytes)
    return EncodedSegment(bytes(out), count, first_key, last_key, min_version or 0, max_version or 0)


def parse_footer(tail: bytes, object_name: str) -> tuple[int, int, int]:
    """(index offset, index length, entry count) from bytes ending at the object's end."""
    if len(tail) < FOOTER.size:
        raise CorruptionError(f"segment {object_name} is truncated (no footer)", object_name=object_name, block="footer")
    footer = tail[-FOOTER.size :]
    index_offset, index_length, count, fmt, checksum, magic = FOOTER.unpack(footer)
    if magic != FOOTER_MAGIC or xxhash.xxh3_64_intdigest(footer[:FOOTER_BODY]) != checksum:
        raise CorruptionError(
            f"segment {object_name} has a damaged footer: run `Store.verify()`; "
            "restore the object from a backup or a replica if it fails again",
            object_name=object_name,
            block="footer",
        )
    _check_format(fmt, object_name)
    return index_offset, index_length, count


def check_header(head: bytes, object_name: str) -> None:
    """Refuse a segment whose header is damaged or from a newer format."""
    if len(head) < HEADER.size:
        raise CorruptionError(f"segment {object_name} is truncated (no header)", object_name=object_name, block="header")
    magic, fmt, flags = HEADER.unpack_from(head)
    if magic != HEADER_MAGIC or flags != 0 or fmt == 0:
        raise CorruptionError(f"segment {object_name} has a damaged header", object_name=object_name, block="header")
    _check_format(fmt, object_name)


def parse_index(data: bytes, count: int, object_name: str) -> SegmentIndex:
    """Decode the index block (including its trailing checksum)."""
    rows = _unpack_checked(data, object_name, "index")
    try:
        return SegmentIndex(
            first_keys=[r[0] for r in rows],
            last_keys=[r[1] for r in rows],
            offsets=[r[2] for r in rows],
            lengths=[r[3] for r in rows],
            count=count,
        )
    except (TypeError, IndexError, KeyError) as exc:
        raise CorruptionError(f"segment {object_name} has an undecodable index", object_name=object_name, block="index") from exc


def decode_block(data: bytes, object_name: str, block_no: int) -> Block:
    """Decode one data block (including its trailing checksum)."""
    label = f"data block {block_no}"
    decoded = _unpack_checked(data, object_name, label)
    try:
        keys, versions, values = decoded
        size = sum(map(len, keys)) + sum(len(v) for v in values if v is not None) + 40 * len(keys)
        return Block(keys, versions, values, size)
    except (TypeError, ValueError) as exc:
        raise CorruptionError(f"segment {object_name} has an undecodable {label}", object_name=object_name, block=label) from exc


def _unpack_checked(data: bytes, object_name: str, label: str):  # type: ignore[no-untyped-def]
    body, trailer = data[: -CHECKSUM.size], data[-CHECKSUM.size :]
    if len(trailer) != CHECKSUM.size or xxhash.xxh3_64_intdigest(body) != CHECKSUM.unpack(trailer)[0]:
        raise CorruptionError(
            f"segment {object_name}: checksum mismatch in its {label}; run `Store.verify()` "
            "to list damaged objects",
            object_name=object_name,
            block=label,
        )
    try:
        return msgpack.unpackb(zstandard.ZstdDecompressor().decompress(body), raw=False, use_list=True)
    except (zstandard.ZstdError, ValueError, msgpack.UnpackException) as exc:
        raise CorruptionError(f"segment {object_name}: cannot decode its {label}", object_name=object_name, block=label) from exc


def _check_format(fmt: int, object_name: str) -> None:
    if fmt > FORMAT:
        raise UnsupportedFormatError(
            f"segment {object_name} has format {fmt}, newer than this kvstore's {FORMAT}: upgrade kvstore to read it"
        )
