"""Range tombstones: a deletion of every key in [start, end) at one version (no I/O).

A range delete is not an entry of a segment: deleting a million keys must not
write a million tombstones. It is a record `(start, end, version)` in the
manifest (`Manifest.range_deletes`), which every reader already holds, so a
read of key k finds every range covering k without searching the keys before
it. An entry of a key in [start, end) with a version below `version` is hidden
from every snapshot at `version` or later; an entry at `version` itself (a put
by the same commit, after the delete) and any later one is not. Compaction
drops the entries a range hides (below the history floor) and then the range
itself (`_compact.py`). docs/design.md says why the manifest, docs/format.md
gives the bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

KeyRange = tuple[bytes, bytes | None]  # [start, end); end None: to the end of the key space


@dataclass(frozen=True)
class RangeTombstone:
    """Every key in [start, end) (`end` None: every key from `start` on) deleted at `version`."""

    start: bytes
    end: bytes | None
    version: int

    def covers(self, key: bytes) -> bool:
        """Whether `key` is in [start, end)."""
        return self.start <= key and (self.end is None or key < self.end)

    def meets(self, lo: bytes | None, hi: bytes | None) -> bool:
        """Whether [start, end) meets the range [lo, hi) (None: unbounded)."""
        return (hi is None or self.start < hi) and (lo is None or self.end is None or lo < self.end)

    def meets_keys(self, min_key: bytes, max_key: bytes) -> bool:
        """Whether [start, end) holds a key of [min_key, max_key] (both included)."""
        return self.start <= max_key and (self.end is None or min_key < self.end)

    def hides(self, key: bytes, version: int) -> bool:
        """Whether this range hides the entry (`key`, `version`)."""
        return version < self.version and self.covers(key)

    def row(self) -> list[object]:
        """The manifest row: [start, end | nil, version] (docs/format.md)."""
        return [self.start, self.end, self.version]


def in_ranges(key: bytes, ranges: Iterable[KeyRange]) -> bool:
    """Whether `key` lies in one of the [start, end) `ranges`."""
    return any(start <= key and (end is None or key < end) for start, end in ranges)


def ranges_meet(a: KeyRange, lo: bytes, hi: bytes | None) -> bool:
    """Whether [a0, a1) meets [lo, hi)."""
    start, end = a
    return (hi is None or start < hi) and (end is None or lo < end)


def normalized(ranges: Iterable[KeyRange]) -> list[KeyRange]:
    """`ranges` sorted, with overlapping or touching ones joined (empty ones dropped)."""
    out: list[KeyRange] = []
    for start, end in sorted(ranges, key=lambda r: r[0]):
        if end is not None and end <= start:
            continue
        if out and (out[-1][1] is None or start <= out[-1][1]):
            last_end = out[-1][1]
            joined = None if last_end is None or end is None else max(last_end, end)
            out[-1] = (out[-1][0], joined)
        else:
            out.append((start, end))
    return out


def cover(ranges: Sequence[KeyRange]) -> tuple[KeyRange, ...]:
    """One range holding all of `ranges` (what a commit record keeps when they are too many)."""
    if len(ranges) <= 1:
        return tuple(ranges)
    ends = [end for _, end in ranges]
    return ((min(start for start, _ in ranges), None if None in ends else max(e for e in ends if e is not None)),)


def range_bytes(ranges: Iterable[KeyRange]) -> int:
    """The bytes of keys that `ranges` spell (what they cost a commit record)."""
    return sum(len(start) + len(end or b"") for start, end in ranges)


def with_new(
    old: Sequence[RangeTombstone], new: Sequence[RangeTombstone], dropped: Iterable[RangeTombstone] = ()
) -> tuple[RangeTombstone, ...]:
    """The live range tombstones after adding `new` and removing `dropped` (compaction's)."""
    gone = set(dropped)
    return (*(t for t in old if t not in gone), *new)


def inside(inner: RangeTombstone, outer: RangeTombstone) -> bool:
    """Whether `inner`'s key range lies within `outer`'s."""
    return outer.start <= inner.start and (outer.end is None or (inner.end is not None and inner.end <= outer.end))


class RangeIndex:
    """The range tombstones a snapshot at `version` sees, for its reads."""

    def __init__(self, tombstones: Sequence[RangeTombstone], version: int) -> None:
        self._ranges = sorted((t for t in tombstones if t.version <= version), key=lambda t: t.start)

    def __bool__(self) -> bool:
        return bool(self._ranges)

    def floor(self, key: bytes) -> int:
        """The newest version of a range covering `key` (0: none): entries of `key` older
        than it are deleted, that one and newer are not."""
        best = 0
        for t in self._ranges:
            if t.start > key:
                break  # sorted by start: no later one covers it
            if t.version > best and (t.end is None or key < t.end):
                best = t.version
        return best

    def hides(self, key: bytes, version: int) -> bool:
        """Whether the entry (`key`, `version`) is deleted by a range."""
        return version < self.floor(key)

    def unhidden(self, max_version: int, lo: bytes | None, hi: bytes | None) -> list[tuple[bytes | None, bytes | None]]:
        """[lo, hi) less the ranges deleted at a version above `max_version`, in key order:
        where a source whose entries are all at most `max_version` old may still show a key.
        A scan reads a source only there, so a deleted range costs it no block reads."""
        holes = normalized((t.start, t.end) for t in self._ranges if t.version > max_version and t.meets(lo, hi))
        out: list[tuple[bytes | None, bytes | None]] = []
        at = lo
        for start, end in holes:
            if start > (at or b""):  # (nothing lies before the empty key)
                out.append((at, start))
            if end is None:
                return out
            at = end if at is None else max(at, end)
        if hi is None or at is None or at < hi:
            out.append((at, hi))
        return out
