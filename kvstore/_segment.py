"""The segment format: an immutable sorted run of entries (bytes only, no I/O).

Format 4 is format 3 whose value columns may hold special values as msgpack
ExtType (`EXT_DECODERS`: 1 an expiring put, `_ttl`; 2 atomic operands,
`_operands`; 3 an out-of-line value reference, `_value_refs`).

Layout of format 3 and 4 (docs/format.md has the byte-level description)::

    header     8 bytes   b"KVSG", u16 format, u16 flags (0)
    block*               zstd(msgpack([keys, versions | nil, values])) + u64 xxh3 checksum
    partition*           zstd(msgpack([[first_key, last_key, offset, length, filter], ...])) + u64 xxh3
                         (one row per block, written after the blocks it indexes, between blocks)
    top index            zstd(msgpack([[first_key, last_key, offset, length, block_count], ...])) + u64 xxh3
                         (one row per partition)
    footer     36 bytes  u64 top index offset, u32 top index length, u64 entry count,
                         u16 format, u16 flags, u64 xxh3 of the previous 24 bytes, b"KVSE"

Footer flags: bit 0 (NO_TOMBSTONES) says the segment holds no tombstone, which lets
a compaction move it into its output run as it is (`_compact.py`); bit 1
(HAS_VALUE_REFS) that it holds out-of-line value references (GC reads only those). Writers before
it wrote 0 there ("unknown"), and readers before it ignore the field.

Entries are sorted by key, then by version descending. A key's versions sit
in one block, or, when they exceed a block, fill consecutive blocks that hold
no other key (and may span index partitions). So a reader looks a key up in
the FIRST block (and partition) whose key range holds it, which has its
newest versions, and goes on to the next block only for older versions.

Format 2 (still read) is the same bytes, but its writer kept all versions of
a key in one block (unbounded for a rewritten key): a format-2 reader would
look in the last block whose range holds the key, hence the new number.
Format 1 (still read) has no partitions: its footer points at a single index
block of block rows, which a reader takes as the one partition of a one-row
top index.

Format 4 (written now) is format 3 plus values of other kinds in a block's
values: msgpack ExtType values, one ext code per kind, decoded through the
one registry `EXT_DECODERS` (1: an expiring put, `_ttl`; 2: atomic operands,
`_operands`). A format-3 reader refuses format 4.

A value of nil is a tombstone. A block whose versions
are nil belongs to a *commit segment*: every entry has the version at which
the manifest committed the segment (not known when the segment is written,
since a rebased commit changes it). Its keys are distinct.

Blocks are numbered from 0 across the whole segment; partition p indexes the
`block_count` blocks after those of partitions 0..p-1.

Each block row carries a key filter for its block: a blocked bloom filter
(all of a key's probe bits in one 64-bit word) that lets a point read of an
absent key skip the block. Rows without one (older format-1 writers) answer
"maybe".
"""

from __future__ import annotations

import struct
import sys
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate, repeat
from operator import add
from typing import Any, NamedTuple

import msgpack
import xxhash
import zstandard

from ._errors import CorruptionError, UnsupportedFormatError
from ._operands import EXT_CODE as OPERANDS_EXT_CODE
from ._operands import Operands
from ._operands import Value as Value  # an entry's value (re-exported: segments hold them)
from ._ttl import EXT_CODE as EXPIRING_EXT_CODE
from ._ttl import Expiring
from ._value_refs import EXT_CODE as VALUE_REF_CODE
from ._value_refs import REF_BYTES, ValueRef

# 4: a block's value column may hold special values as msgpack ExtType (EXT_DECODERS).
# Formats 1 (one index block, no partitions), 2 (no key spans blocks) and 3 are still read.
FORMAT = 4
HEADER = struct.Struct("<4sHH")
FOOTER = struct.Struct("<QIQH2xQ4s")
FOOTER_BODY = 24  # bytes of the footer covered by its checksum
# The u16 of flags in the footer (the "2x" of FOOTER: zero in segments written before
# flags existed, which therefore read as "nothing known").
FOOTER_FLAGS = struct.Struct("<H")
FOOTER_FLAGS_AT = 22
NO_TOMBSTONES = 1  # flag: the segment holds no tombstone
HAS_VALUE_REFS = 2  # flag: the segment holds out-of-line value references (GC reads those)
HEADER_MAGIC = b"KVSG"
FOOTER_MAGIC = b"KVSE"
CHECKSUM = struct.Struct("<Q")
BLOCK_TARGET_BYTES = 64 * 1024
ENTRY_OVERHEAD = 12  # bytes counted per entry towards BLOCK_TARGET_BYTES, besides key and value
# A partition closes once its rows reach this many bytes (keys, filter and _ROW_OVERHEAD
# each; filters dominate: 1.25 bytes per key). A 64 MiB segment then has 20 to 60
# partitions (100- to 20-byte values) and a top index under 1 KiB; a 1 GiB one's, about
# 10 KiB, still fits in the reader's first tail read of 64 KiB. Past that, smaller is
# better: a cold point read fetches and decodes one whole partition, and a segment of up
# to a few MiB has one partition, which that tail read then usually holds too.
PARTITION_TARGET_BYTES = 32 * 1024
_ROW_OVERHEAD = 24  # msgpack framing and the two ints of a row, roughly
_ZSTD_LEVEL = 3

# An entry's value: a put's bytes, None (a tombstone), or a special kind carried as a msgpack
# ExtType in the block's value column (format 4), one ext code per kind: `EXT_DECODERS`.
Entry = tuple[bytes, int, Value]

# The one registry of ext-typed values: ext code -> decoder of its payload (ValueError if bad).
# 1: expiring put (TTL); 2: atomic operands (`_operands`); 3: out-of-line value reference.
EXT_DECODERS: dict[int, Callable[[bytes], object]] = {
    EXPIRING_EXT_CODE: Expiring.from_ext,
    OPERANDS_EXT_CODE: Operands.from_ext,
    VALUE_REF_CODE: ValueRef.from_ext,
}


def _ext_hook(code: int, data: bytes) -> object:
    decoder = EXT_DECODERS.get(code)
    if decoder is None:
        raise ValueError(f"unknown entry value kind (msgpack ext code {code})")
    return decoder(data)


def _to_ext(obj: object) -> object:
    """msgpack's `default` for block values: a special kind as its ExtType."""
    to_ext = getattr(obj, "to_ext", None)
    if to_ext is None:
        raise TypeError(f"cannot store a {type(obj).__name__} in a segment")
    return to_ext()


def value_ref_of(value: Value) -> ValueRef | None:
    """The out-of-line value an entry refers to: its own, or that of the put its
    atomic operands apply to (kept while the put is not an integer, `_operands`)."""
    if isinstance(value, Operands):
        value = value.base if isinstance(value.base, ValueRef) else None
    return value if isinstance(value, ValueRef) else None


def value_size(value: Value) -> int:
    """Bytes a value counts for in its segment (block and batch size accounting; a
    reference to an out-of-line value: REF_BYTES)."""
    if value is None:
        return 0
    if isinstance(value, bytes):
        return len(value)
    return REF_BYTES if isinstance(value, ValueRef) else value.size


# Key filters. A key's xxh3_64 digest h picks one 64-bit word of its block's
# filter, (h mod 2**32) mod words, and a pattern of FILTER_PROBES bits,
# _PATTERNS[h >> 52]. All probes in one word make a lookup one word test with
# a pattern computed once per key, which matters more in Python than the
# slightly higher false-positive rate (about 2% at 10 bits per key, against
# 0.8% for an unblocked filter).
FILTER_BITS_PER_KEY = 10
FILTER_PROBES = 6
_WORD_SELECTOR = 0xFFFF_FFFF
_PATTERN_SHIFT = 52  # the top 12 bits of the digest choose one of 4096 patterns


def _pattern(seed: int) -> int:
    """FILTER_PROBES bit positions: consecutive 6-bit fields of xxh3_64(u16 seed)."""
    g = xxhash.xxh3_64_intdigest(seed.to_bytes(2, "little"))
    pattern = 0
    for i in range(FILTER_PROBES):
        pattern |= 1 << ((g >> (6 * i)) & 63)
    return pattern


_PATTERNS: tuple[int, ...] = tuple(map(_pattern, range(1 << (64 - _PATTERN_SHIFT))))
_NO_FILTER = array("Q")  # a block without a filter: every key may be there

# (word selector, bit pattern): what a filter lookup needs of a key, computed once.
Probe = tuple[int, int]


def probe(key: bytes) -> Probe:
    """The filter probe of `key`, the same for every segment."""
    h = xxhash.xxh3_64_intdigest(key)
    return h & _WORD_SELECTOR, _PATTERNS[h >> _PATTERN_SHIFT]


def build_filter(keys: Iterable[bytes]) -> bytes:
    """The filter of one block's keys: FILTER_BITS_PER_KEY bits per distinct key, as u64 LE words."""
    digests = set(map(xxhash.xxh3_64_intdigest, keys))  # a key's versions count once
    n = -(-len(digests) * FILTER_BITS_PER_KEY // 64)
    words = [0] * n
    patterns = _PATTERNS
    for h in digests:
        words[(h & _WORD_SELECTOR) % n] |= patterns[h >> _PATTERN_SHIFT]
    packed = array("Q", words)
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def _filter_words(data: bytes) -> array[int]:
    words = array("Q", data)  # ValueError unless a whole number of words
    if sys.byteorder == "big":
        words.byteswap()
    return words


@dataclass(frozen=True)
class EncodedSegment:
    """A segment's bytes and the facts the manifest records about it."""

    data: bytes
    count: int
    min_key: bytes
    max_key: bytes
    min_version: int
    max_version: int


class Footer(NamedTuple):
    index_offset: int  # of the top index (format 1: of the index block)
    index_length: int  # checksum included
    entry_count: int
    format: int
    flags: int = 0  # NO_TOMBSTONES, ...


@dataclass(frozen=True)
class TopIndex:
    """Where each index partition is, the key range it covers and the blocks it indexes."""

    first_keys: list[bytes]
    last_keys: list[bytes]
    offsets: list[int]
    lengths: list[int]
    first_blocks: list[int]  # partition p indexes blocks first_blocks[p] to first_blocks[p + 1] - 1
    flags: int = 0  # the footer's (NO_TOMBSTONES, ...): kept with the index, which is cached

    def partition_for(self, key: bytes) -> int | None:
        """The first partition whose key range holds `key` (the key's newest versions), or None."""
        return _first_holding(self.first_keys, self.last_keys, key)

    def partitions_between(self, start: bytes | None, end: bytes | None) -> range:
        """Partitions that may hold keys in [start, end)."""
        return _between(self.first_keys, self.last_keys, start, end)

    def span(self, partition: int) -> tuple[int, int]:
        """Where a partition's bytes (checksum included) start and end in the segment."""
        return self.offsets[partition], self.offsets[partition] + self.lengths[partition]

    @property
    def size(self) -> int:
        """Decoded bytes, for cache accounting."""
        return _rows_size(self.first_keys, self.last_keys, ints=3)


@dataclass(frozen=True)
class IndexPartition:
    """Consecutive block rows of the index: where each block is, its key range and filter."""

    first_block: int  # the number of its first block in the segment
    first_keys: list[bytes]
    last_keys: list[bytes]
    offsets: list[int]
    lengths: list[int]
    filters: list[array[int]]  # per block; empty: no filter

    def block_for(self, key: bytes, key_probe: Probe | None = None) -> int | None:
        """The number of the first block that may hold `key` (its newest versions), or None
        if no block can (by key range, and by the block's filter when given the key's probe)."""
        i = _first_holding(self.first_keys, self.last_keys, key)
        if i is None:
            return None
        if key_probe is not None:
            words = self.filters[i]
            if words:
                selector, pattern = key_probe
                if words[selector % len(words)] & pattern != pattern:
                    return None
        return self.first_block + i

    def blocks_between(self, start: bytes | None, end: bytes | None) -> range:
        """Numbers of its blocks that may hold keys in [start, end)."""
        r = _between(self.first_keys, self.last_keys, start, end)
        return range(self.first_block + r.start, self.first_block + r.stop)

    def sole_key(self, block_no: int) -> bytes | None:
        """The key of a block whose entries are all of one key, else None."""
        i = block_no - self.first_block
        return self.first_keys[i] if self.first_keys[i] == self.last_keys[i] else None

    def next_holds(self, block_no: int, key: bytes) -> bool | None:
        """Whether the block after `block_no` holds `key` too (older versions of a key whose
        versions span blocks); None when that block is not in this partition."""
        i = block_no + 1 - self.first_block
        return self.first_keys[i] == key if i < len(self.first_keys) else None

    def span(self, block_no: int) -> tuple[int, int]:
        """Where a block's bytes (checksum included) start and end in the segment."""
        i = block_no - self.first_block
        return self.offsets[i], self.offsets[i] + self.lengths[i]

    @property
    def size(self) -> int:
        """Decoded bytes, for cache accounting (filters stay packed words)."""
        filters = sum(8 * len(words) + _ARRAY_OBJECT + _SLOT for words in self.filters)
        return _rows_size(self.first_keys, self.last_keys, ints=2) + filters


def _first_holding(first_keys: list[bytes], last_keys: list[bytes], key: bytes) -> int | None:
    """The first row, sorted by key range, whose range holds `key` (rows of a key whose
    versions span blocks all hold it: the first has the newest), or None."""
    i = bisect_left(last_keys, key)
    return i if i < len(first_keys) and first_keys[i] <= key else None


def _between(first_keys: list[bytes], last_keys: list[bytes], start: bytes | None, end: bytes | None) -> range:
    """Rows, sorted by key range, whose range may hold keys in [start, end)."""
    lo = 0 if start is None else bisect_left(last_keys, start)
    hi = len(first_keys) if end is None else bisect_left(first_keys, end)
    return range(lo, hi)


# In-memory cost of decoded rows and blocks beyond their data (cache accounting): a bytes
# object per key and value, a list slot for each, an int object per large int.
_BYTES_OBJECT = sys.getsizeof(b"")
_INT_OBJECT = sys.getsizeof(2**40)
_ARRAY_OBJECT = sys.getsizeof(array("Q"))
_SLOT = 8


def _rows_size(first_keys: list[bytes], last_keys: list[bytes], ints: int) -> int:
    """Decoded bytes of index rows held as parallel lists: two keys and `ints` ints a row."""
    per_row = 2 * _BYTES_OBJECT + ints * _INT_OBJECT + (2 + ints) * _SLOT
    return sum(map(len, first_keys)) + sum(map(len, last_keys)) + per_row * len(first_keys)


@dataclass(frozen=True)
class Block:
    """A decoded data block: parallel lists, sorted by key then version descending."""

    keys: list[bytes]
    versions: list[int] | None  # None: every entry has the segment's commit version
    values: list[Value]
    size: int  # decoded bytes, for cache accounting

    def find(self, key: bytes) -> int | None:
        """Position of the newest entry for `key`, or None."""
        i = bisect_left(self.keys, key)
        return i if i < len(self.keys) and self.keys[i] == key else None


class SegmentWriter:
    """Builds a segment from entries added in order, handing out bytes as blocks fill.

    Memory holds one block being filled, the bytes not yet taken, the rows of
    the index partition being filled and the top index (one row per
    partition), so a segment of any size can be streamed.
    """

    def __init__(self, *, uniform_version: bool) -> None:
        self._uniform = uniform_version
        self._compressor = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
        self._out = bytearray(HEADER.pack(HEADER_MAGIC, FORMAT, 0))
        self._written = 0  # bytes already taken from _out
        # rows as tuples: the garbage collector stops tracking them
        self._rows: list[tuple[bytes, bytes, int, int, bytes]] = []  # the partition being filled
        self._row_bytes = 0
        self._top: list[tuple[bytes, bytes, int, int, int]] = []
        self._min_key = self._max_key = b""
        self._keys: list[bytes] = []
        self._versions: list[int] = []
        self._values: list[Value] = []
        self.value_refs = 0  # entries whose value is a ValueRef
        self._raw_bytes = 0
        # Where the last key's entries begin in the open block, and the raw bytes before them.
        self._key_start = 0
        self._raw_before_key = 0
        self._spanning = False  # the last key's earlier versions are in closed blocks
        self.last_key: bytes | None = None  # of the last entry added
        self.count = 0
        self.tombstones = 0
        self.min_version = 0
        self.max_version = 0

    def add(self, key: bytes, version: int, value: Value) -> None:
        """Append an entry; keys ascending, a key's versions descending.

        A block closes at a key boundary once it reaches BLOCK_TARGET_BYTES. A key whose
        versions alone exceed that fills blocks of its own: the block closes before the
        key's first entry, then every time the key's entries reach the target, and after
        its last entry. So a block is at most the target plus one entry, whatever a key's
        history, and a key either lies in one block or has its blocks to itself.
        """
        keys = self._keys
        if keys and key != keys[-1]:
            if self._raw_bytes >= BLOCK_TARGET_BYTES or self._spanning:
                self._flush()
                self._spanning = False
            self._key_start, self._raw_before_key = len(self._keys), self._raw_bytes
        elif keys and self._raw_bytes >= BLOCK_TARGET_BYTES:  # a version of the key ending the block
            if self._key_start:  # the key's first entries share the block with other keys
                self._flush(self._key_start)
            if self._raw_bytes >= BLOCK_TARGET_BYTES:
                self._flush()
                self._spanning = True
        self._keys.append(key)
        self._versions.append(version)
        self._values.append(value)
        self.last_key = key
        if value is None:
            self.tombstones += 1
        elif value_ref_of(value) is not None:
            self.value_refs += 1
        self._raw_bytes += len(key) + value_size(value) + ENTRY_OVERHEAD
        self._count_versions(version, 1)

    def add_many(self, keys: Sequence[bytes], values: Sequence[bytes], version: int) -> Iterator[None]:
        # Plain bytes only (bulk loads): a reference goes through `add`.
        """Append entries with distinct ascending keys (above those added before), all at
        `version` and none a tombstone: the blocks `add` would make, without a call per entry.

        A generator, to run to its end: it pauses after each block it closes, so that the
        caller can take the bytes as they fill.
        """
        if not keys:
            return
        if self._raw_bytes >= BLOCK_TARGET_BYTES or self._spanning:
            self._flush()
            self._spanning = False
            yield
        self._count_versions(version, len(keys))
        # ends[i]: raw bytes of the first i entries, as `add` counts them
        sizes = map(add, map(len, keys), map(len, values))
        ends = list(accumulate(map(add, sizes, repeat(ENTRY_OVERHEAD)), initial=0))
        start = 0
        while start < len(keys):
            # the block closes with the entry that takes it to the target (as in `add`)
            end = min(len(keys), bisect_left(ends, BLOCK_TARGET_BYTES - self._raw_bytes + ends[start], start + 1))
            self._keys.extend(keys[start:end])
            self._values.extend(values[start:end])
            self._versions.extend(repeat(version, end - start))
            self._raw_bytes += ends[end] - ends[start]
            start = end
            if start < len(keys):
                self._flush()
                yield
        # the last key's entry, as `add` would have left it
        self.last_key = keys[-1]
        self._key_start = len(self._keys) - 1
        self._raw_before_key = self._raw_bytes - (ends[-1] - ends[-2])

    def _count_versions(self, version: int, entries: int) -> None:
        if not self.count:
            self.min_version = self.max_version = version
        self.min_version = min(self.min_version, version)
        self.max_version = max(self.max_version, version)
        self.count += entries

    def take(self) -> bytes:
        """The bytes produced since the last call (whole blocks and partitions only)."""
        data = bytes(self._out)
        self._written += len(data)
        self._out.clear()
        return data

    @property
    def pending_bytes(self) -> int:
        return len(self._out)

    @property
    def open_block_bytes(self) -> int:
        """Raw bytes of the entries in the block being filled (not encoded yet)."""
        return self._raw_bytes

    def finish(self) -> bytes:
        """Close the segment: the last block and partition, the top index and the footer
        (plus untaken bytes)."""
        if not self.count:
            raise ValueError("a segment needs at least one entry")
        if self._keys:
            self._flush()
        if self._rows:
            self._flush_partition()
        index_offset, index_length = self._append_checked(self._top)
        body = bytearray(FOOTER.pack(index_offset, index_length, self.count, FORMAT, 0, FOOTER_MAGIC)[:FOOTER_BODY])
        flags = (0 if self.tombstones else NO_TOMBSTONES) | (HAS_VALUE_REFS if self.value_refs else 0)
        FOOTER_FLAGS.pack_into(body, FOOTER_FLAGS_AT, flags)
        self._out += body
        self._out += FOOTER.pack(0, 0, 0, 0, xxhash.xxh3_64_intdigest(body), FOOTER_MAGIC)[FOOTER_BODY:]
        return self.take()

    @property
    def min_key(self) -> bytes:
        """The first key of the blocks closed so far (all of them after `finish`)."""
        return self._min_key

    @property
    def max_key(self) -> bytes:
        """The last key of the blocks closed so far (all of them after `finish`)."""
        return self._max_key

    def _flush(self, end: int | None = None) -> None:
        """Close a block of the open entries: all of them, or (`end`, the start of the last
        key's entries) those of the keys before the last, which stays open."""
        if end is None:
            keys, versions, values = self._keys, self._versions, self._values
            self._keys, self._versions, self._values = [], [], []
            self._raw_bytes = 0
        else:
            keys, versions, values = self._keys[:end], self._versions[:end], self._values[:end]
            del self._keys[:end], self._versions[:end], self._values[:end]
            self._raw_bytes -= self._raw_before_key
        self._key_start = self._raw_before_key = 0
        offset, length = self._append_checked([keys, None if self._uniform else versions, values])
        first, last, key_filter = keys[0], keys[-1], build_filter(keys)
        if not self._top and not self._rows:
            self._min_key = first
        self._max_key = last
        self._rows.append((first, last, offset, length, key_filter))
        self._row_bytes += len(first) + len(last) + len(key_filter) + _ROW_OVERHEAD
        if self._row_bytes >= PARTITION_TARGET_BYTES:
            self._flush_partition()

    def _flush_partition(self) -> None:
        offset, length = self._append_checked(self._rows)
        self._top.append((self._rows[0][0], self._rows[-1][1], offset, length, len(self._rows)))
        self._rows = []
        self._row_bytes = 0

    def _append_checked(self, obj: object) -> tuple[int, int]:
        """Append zstd(msgpack(obj)) and its checksum; returns their offset and length."""
        compressed = self._compressor.compress(msgpack.packb(obj, use_bin_type=True, default=_to_ext))
        offset = self._written + len(self._out)
        self._out.extend(compressed)
        self._out.extend(CHECKSUM.pack(xxhash.xxh3_64_intdigest(compressed)))
        return offset, len(compressed) + CHECKSUM.size


def encode_segment(entries: Iterable[Entry], *, uniform_version: bool) -> EncodedSegment:
    """Encode entries sorted by (key, version descending) into one segment in memory.

    With `uniform_version` the versions are not stored (commit segments).
    """
    writer = SegmentWriter(uniform_version=uniform_version)
    for key, version, value in entries:
        writer.add(key, version, value)
    data = writer.finish()
    return EncodedSegment(data, writer.count, writer.min_key, writer.max_key, writer.min_version, writer.max_version)


def parse_footer(tail: bytes, object_name: str) -> Footer:
    """The footer, from bytes ending at the object's end."""
    if len(tail) < FOOTER.size:
        raise CorruptionError(
            f"segment {object_name} is truncated (no footer)", object_name=object_name, block="footer"
        )
    footer = tail[-FOOTER.size :]
    index_offset, index_length, count, fmt, checksum, magic = FOOTER.unpack(footer)
    if magic != FOOTER_MAGIC or xxhash.xxh3_64_intdigest(footer[:FOOTER_BODY]) != checksum or fmt == 0:
        raise CorruptionError(
            f"segment {object_name} has a damaged footer: run `Store.verify()`; "
            "restore the object from a backup or a replica if it fails again",
            object_name=object_name,
            block="footer",
        )
    _check_format(fmt, object_name)
    return Footer(index_offset, index_length, count, fmt, FOOTER_FLAGS.unpack_from(footer, FOOTER_FLAGS_AT)[0])


def check_header(head: bytes, object_name: str) -> None:
    """Refuse a segment whose header is damaged or from a newer format."""
    if len(head) < HEADER.size:
        raise CorruptionError(
            f"segment {object_name} is truncated (no header)", object_name=object_name, block="header"
        )
    magic, fmt, flags = HEADER.unpack_from(head)
    if magic != HEADER_MAGIC or flags != 0 or fmt == 0:
        raise CorruptionError(f"segment {object_name} has a damaged header", object_name=object_name, block="header")
    _check_format(fmt, object_name)


def parse_index(data: bytes, footer: Footer, object_name: str) -> tuple[TopIndex, IndexPartition | None]:
    """Decode what the footer points at (checksum included): the top index, and None.
    Format 1's single index block is read as the one partition of a one-row top index:
    (that top index, that partition)."""
    rows = _unpack_checked(data, object_name, "index")
    if footer.format == 1:
        part = _partition(rows, 0, object_name, "index")
        offsets, lengths, first_blocks = [footer.index_offset], [footer.index_length], [0, len(part.offsets)]
        return TopIndex([part.first_keys[0]], [part.last_keys[-1]], offsets, lengths, first_blocks, footer.flags), part
    try:
        block_counts = [r[4] for r in rows]
        if not rows or min(block_counts) < 1:
            raise ValueError("a top index row per partition, each of at least one block")
        top = TopIndex(
            first_keys=[r[0] for r in rows],
            last_keys=[r[1] for r in rows],
            offsets=[r[2] for r in rows],
            lengths=[r[3] for r in rows],
            first_blocks=list(accumulate(block_counts, initial=0)),
            flags=footer.flags,
        )
    except (TypeError, IndexError, KeyError, ValueError) as exc:
        raise _undecodable(object_name, "index") from exc
    return top, None


def parse_partition(data: bytes, top: TopIndex, partition: int, object_name: str) -> IndexPartition:
    """Decode one index partition of a format-2 segment (checksum included)."""
    label = f"index partition {partition}"
    part = _partition(_unpack_checked(data, object_name, label), top.first_blocks[partition], object_name, label)
    if len(part.offsets) != top.first_blocks[partition + 1] - top.first_blocks[partition]:
        raise _undecodable(object_name, label)  # not the block count the top index gives it
    return part


def _partition(rows: Any, first_block: int, object_name: str, label: str) -> IndexPartition:
    try:
        if not rows:
            raise ValueError("an index partition has at least one row")
        return IndexPartition(
            first_block=first_block,
            first_keys=[r[0] for r in rows],
            last_keys=[r[1] for r in rows],
            offsets=[r[2] for r in rows],
            lengths=[r[3] for r in rows],
            filters=[_filter_words(r[4]) if len(r) > 4 else _NO_FILTER for r in rows],
        )
    except (TypeError, IndexError, KeyError, ValueError) as exc:
        raise _undecodable(object_name, label) from exc


def _undecodable(object_name: str, label: str) -> CorruptionError:
    return CorruptionError(f"segment {object_name} has an undecodable {label}", object_name=object_name, block=label)


def decode_block(data: bytes, object_name: str, block_no: int) -> Block:
    """Decode one data block (including its trailing checksum)."""
    label = f"data block {block_no}"
    decoded = _unpack_checked(data, object_name, label)
    try:
        keys, versions, values = decoded
        per_entry = _BYTES_OBJECT + 2 * _SLOT + (0 if versions is None else _SLOT + _INT_OBJECT)
        size = (
            sum(map(len, keys))
            + sum(value_size(v) + _BYTES_OBJECT for v in values if v is not None)
            + per_entry * len(keys)
        )
        return Block(keys, versions, values, size)
    except (TypeError, ValueError) as exc:
        raise _undecodable(object_name, label) from exc


def _unpack_checked(data: bytes, object_name: str, label: str):  # type: ignore[no-untyped-def]
    body, trailer = data[: -CHECKSUM.size], data[-CHECKSUM.size :]
    if len(trailer) != CHECKSUM.size or xxhash.xxh3_64_intdigest(body) != CHECKSUM.unpack(trailer)[0]:
        raise CorruptionError(
            f"segment {object_name}: checksum mismatch in its {label}; run `Store.verify()` to list damaged objects",
            object_name=object_name,
            block=label,
        )
    try:
        return msgpack.unpackb(
            zstandard.ZstdDecompressor().decompress(body), raw=False, use_list=True, ext_hook=_ext_hook
        )
    except (zstandard.ZstdError, ValueError, msgpack.UnpackException) as exc:
        raise CorruptionError(
            f"segment {object_name}: cannot decode its {label}", object_name=object_name, block=label
        ) from exc


def _check_format(fmt: int, object_name: str) -> None:
    if fmt > FORMAT:
        raise UnsupportedFormatError(
            f"segment {object_name} has format {fmt}, newer than this kvstore's {FORMAT}: upgrade kvstore to read it"
        )
