"""The run object format: the segments of one sorted run (bytes only, no I/O).

A compaction writes its output as a sorted run: segments of bounded size with
disjoint key ranges, in key order. The run object lists them, so the manifest
carries one row per run instead of one per segment (docs/format.md)::

    envelope("KVRN", format 1, msgpack([[id, min_key, max_key, count, size,
                                         min_version, max_version], ...]))

Format 2: a row may carry an eighth element, the segment's commit version: a
commit segment (its entries carry no versions) that a compaction moved into
the run as it was. A run with no such segment is still written as format 1.

Format 3: the rows of format 1, but every segment is a commit segment whose
entries take the version the run itself commits at, which only the
manifest's row of the run knows (a bulk load's run is written before its
commit's CAS, which may be rebased to another version). Readers before it
would take those segments for versioned ones: the format number keeps them out.

Run objects are immutable (safe create) and named `segments/<id>.run`.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgpack

from ._envelope import seal, unseal
from ._errors import CorruptionError
from ._manifest import SegmentRef

FORMAT = 3  # formats 1 (no commit versions) and 2 are still read, and written when they suffice
_MAGIC = b"KVRN"
_WITH_COMMIT_VERSIONS = 2


def encode_run(parts: Sequence[SegmentRef], *, commit_segments: bool = False) -> bytes:
    """The run object listing `parts` (segments in ascending, disjoint key order).
    With `commit_segments`, every part's entries take the version the run commits at
    (format 3)."""
    rows: list[list[object]] = [
        [p.id, p.min_key, p.max_key, p.count, p.size, p.min_version, p.max_version] for p in parts
    ]
    if commit_segments:
        return seal(_MAGIC, FORMAT, msgpack.packb(rows, use_bin_type=True))
    if all(p.commit_version is None for p in parts):
        return seal(_MAGIC, 1, msgpack.packb(rows, use_bin_type=True))  # what readers before format 2 read
    for row, p in zip(rows, parts, strict=True):
        if p.commit_version is not None:
            row.append(p.commit_version)
    return seal(_MAGIC, _WITH_COMMIT_VERSIONS, msgpack.packb(rows, use_bin_type=True))


@dataclass(frozen=True)
class Run:
    """A decoded run object: its segments, in key order."""

    parts: tuple[SegmentRef, ...]
    _min_keys: list[bytes] = field(init=False, repr=False, compare=False)
    _max_keys: list[bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_min_keys", [p.min_key for p in self.parts])
        object.__setattr__(self, "_max_keys", [p.max_key for p in self.parts])

    def part_for(self, key: bytes) -> SegmentRef | None:
        """The segment whose key range holds `key`, if any."""
        i = bisect_right(self._min_keys, key) - 1
        return self.parts[i] if i >= 0 and key <= self.parts[i].max_key else None

    def parts_between(self, start: bytes | None, end: bytes | None) -> list[SegmentRef]:
        """The segments that may hold keys in [start, end), in key order."""
        lo = 0 if start is None else bisect_left(self._max_keys, start)  # the first ending at or past start
        hi = len(self.parts) if end is None else bisect_left(self._min_keys, end)  # those starting before end
        return list(self.parts[lo:hi])

    @property
    def size(self) -> int:
        """Approximate memory of the decoded run (cache accounting)."""
        return sum(200 + len(p.id) + len(p.min_key) + len(p.max_key) for p in self.parts)


def decode_run(data: bytes, level: int, object_name: str, commit_version: int | None = None) -> Run:
    """The run an object lists, its segments as records at the run's `level`; a
    format-3 run's segments take `commit_version`, its manifest row's."""
    payload = unseal(data, _MAGIC, FORMAT, object_name, "run")
    try:
        rows = msgpack.unpackb(payload, raw=False)
        if commit_version is not None:  # only a format-3 run's row records one
            v = commit_version
            return Run(tuple(SegmentRef(r[0], r[1], r[2], r[3], r[4], v, v, v, level) for r in rows))
        return Run(
            tuple(
                SegmentRef(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7] if len(r) > 7 else None, level) for r in rows
            )
        )
    except (ValueError, TypeError, IndexError, msgpack.UnpackException) as exc:
        raise CorruptionError(
            f"run {object_name} is damaged (undecodable); run `Store.verify()`",
            object_name=object_name,
            block="run",
        ) from exc


def run_ref(run_id: str, parts: Sequence[SegmentRef], level: int) -> SegmentRef:
    """The manifest row of a run made of `parts`."""
    return SegmentRef(
        run_id,
        parts[0].min_key,
        parts[-1].max_key,
        sum(p.count for p in parts),
        sum(p.size for p in parts),
        min(p.min_version for p in parts),
        max(p.max_version for p in parts),
        None,
        level,
        None,
        len(parts),
    )
