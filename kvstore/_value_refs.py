"""Out-of-line values: the reference a segment entry holds instead of a large value (no I/O).

A value larger than `StoreOptions.large_value_bytes` is written as an immutable
object of its own, `<prefix>values/<id>.val` (`_value_store.py`), before the
commit's manifest CAS; the segment entry holds a `ValueRef` in its value
column, as msgpack ExtType code 3 (segment format 4, docs/format.md). The
reference is small, so a compaction moves it, never the value's bytes.

Ext payload: msgpack array ``[id (str), length (uint), xxh3_64 of the value (uint)]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack
import xxhash

EXT_CODE = 3  # docs/format.md, "Special entry values"; codes 1 and 2 belong to other kinds
# Bytes a reference counts for in a segment block (cache accounting and the block target).
REF_BYTES = 64


def checksum(data: bytes | memoryview) -> int:
    """The checksum a reference records of its value: xxh3_64."""
    return xxhash.xxh3_64_intdigest(data)


@dataclass(frozen=True)
class ValueRef:
    """An entry value stored out of line: the value object's id, its length and checksum."""

    id: str
    length: int
    checksum: int

    def to_ext(self) -> msgpack.ExtType:
        """The reference as it sits in a block's value column."""
        return msgpack.ExtType(EXT_CODE, msgpack.packb([self.id, self.length, self.checksum], use_bin_type=True))

    @classmethod
    def from_ext(cls, data: bytes) -> ValueRef:
        """The reference from its ext payload; ValueError if it is not one."""
        fields = msgpack.unpackb(data, raw=False)
        if not (
            isinstance(fields, list)
            and len(fields) == 3
            and isinstance(fields[0], str)
            and fields[0]
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in fields[1:])
        ):
            raise ValueError("not a value reference: [id, length, checksum] expected")
        return cls(fields[0], fields[1], fields[2])


# What a segment entry's value may be: bytes, a tombstone (None) or a reference.
StoredValue = bytes | ValueRef | None


def stored_size(value: StoredValue) -> int:
    """Bytes an entry's value counts for in its segment (a reference: REF_BYTES)."""
    if value is None:
        return 0
    if isinstance(value, ValueRef):
        return REF_BYTES
    return len(value)


def inline_size(value: StoredValue) -> int:
    """Bytes of a value as the user wrote it (a reference: the value object's length)."""
    if isinstance(value, ValueRef):
        return value.length
    return 0 if value is None else len(value)
