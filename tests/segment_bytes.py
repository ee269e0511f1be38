"""Reading segment bytes in memory for tests: the whole index at once, and formats 1 and 2."""

from __future__ import annotations

import msgpack
import xxhash
import zstandard

from kvstore._segment import (
    CHECKSUM,
    FOOTER,
    FOOTER_BODY,
    FOOTER_MAGIC,
    HEADER,
    HEADER_MAGIC,
    IndexPartition,
    TopIndex,
    parse_footer,
    parse_index,
    parse_partition,
)


def index_of(data: bytes, name: str = "s") -> tuple[TopIndex, list[IndexPartition]]:
    """A segment's top index and all its partitions."""
    footer = parse_footer(data, name)
    top, only = parse_index(data[footer.index_offset : footer.index_offset + footer.index_length], footer, name)
    if only is not None:
        return top, [only]
    return top, [parse_partition(data[slice(*top.span(p))], top, p, name) for p in range(len(top.offsets))]


def whole_index(data: bytes) -> IndexPartition:
    """Every block row of a segment, as one partition."""
    _, parts = index_of(data)
    return IndexPartition(
        0,
        [k for p in parts for k in p.first_keys],
        [k for p in parts for k in p.last_keys],
        [o for p in parts for o in p.offsets],
        [n for p in parts for n in p.lengths],
        [f for p in parts for f in p.filters],
    )


def as_format_1(data: bytes, *, filters: bool = True) -> bytes:
    """A one-partition segment as format 1 wrote it: that partition is format 1's index
    block, which the footer points at. Without `filters`, as written before key filters."""
    footer = parse_footer(data, "s")
    top, _ = index_of(data)
    assert len(top.offsets) == 1, "format 1 has a single index block"
    offset, end = top.span(0)
    index = data[offset : end - CHECKSUM.size]
    if not filters:
        rows = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(index))
        index = zstandard.ZstdCompressor(level=3).compress(msgpack.packb([r[:4] for r in rows], use_bin_type=True))
    length = len(index) + CHECKSUM.size
    body = FOOTER.pack(offset, length, footer.entry_count, 1, 0, FOOTER_MAGIC)[:FOOTER_BODY]
    return b"".join(
        [
            HEADER.pack(HEADER_MAGIC, 1, 0),
            data[HEADER.size : offset],
            index,
            CHECKSUM.pack(xxhash.xxh3_64_intdigest(index)),
            FOOTER.pack(offset, length, footer.entry_count, 1, xxhash.xxh3_64_intdigest(body), FOOTER_MAGIC),
        ]
    )


def as_format_2(data: bytes) -> bytes:
    """A segment with no key over several blocks as format 2 wrote it: the same bytes but
    the format number in the header and the footer (and the footer's checksum)."""
    footer = parse_footer(data, "s")
    body = FOOTER.pack(footer.index_offset, footer.index_length, footer.entry_count, 2, 0, FOOTER_MAGIC)[:FOOTER_BODY]
    return b"".join(
        [
            HEADER.pack(HEADER_MAGIC, 2, 0),
            data[HEADER.size : -FOOTER.size],
            FOOTER.pack(
                footer.index_offset,
                footer.index_length,
                footer.entry_count,
                2,
                xxhash.xxh3_64_intdigest(body),
                FOOTER_MAGIC,
            ),
        ]
    )


def as_format_3(data: bytes) -> bytes:
    """A segment without ext-typed values as format 3 wrote it: the same bytes but the
    format number in the header and the footer (and the footer's checksum); flags kept."""
    footer = parse_footer(data, "s")
    body = bytearray(data[-FOOTER.size : -FOOTER.size + FOOTER_BODY])
    body[20:22] = (3).to_bytes(2, "little")  # the footer's u16 format, after u64 u32 u64
    tail = FOOTER.pack(0, 0, 0, 0, xxhash.xxh3_64_intdigest(bytes(body)), FOOTER_MAGIC)[FOOTER_BODY:]
    assert footer.format == 4
    return HEADER.pack(HEADER_MAGIC, 3, 0) + data[HEADER.size : -FOOTER.size] + bytes(body) + tail
