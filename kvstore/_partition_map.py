"""The partition map of a store split into key ranges: a pure format, no I/O.

    <prefix>partitions     envelope "KVPM", format 1, msgpack payload:
        store_id    str      the store's id (that of its first manifest)
        version     int      1 when written first, +1 per change (changed only by CAS)
        created     float    seconds since the epoch
        partitions  [[pid, start]]   ascending by start; the first starts at b"";
                                     each ends where the next starts (the last: no end)
        retired     {pid: [successor pid, ...]}   partitions split or merged away, never written again

A store without this object is one partition whose manifest is the root
`<prefix>manifest`: the partition id ROOT_PID names it. Any other partition
lives under `Layout.partition(pid)`.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import msgpack

from ._envelope import seal, unseal
from ._errors import CorruptionError, ValidationError

FORMAT = 1
_MAGIC = b"KVPM"
# The partition whose objects are those of the root layout (a store made without split_keys).
ROOT_PID = ""


@dataclass(frozen=True)
class Partition:
    """One key range [start, end) and the partition that holds it (end None: no upper bound)."""

    pid: str
    start: bytes
    end: bytes | None

    def holds(self, key: bytes) -> bool:
        return self.start <= key and (self.end is None or key < self.end)

    def clip(self, lo: bytes | None, hi: bytes | None) -> tuple[bytes | None, bytes | None]:
        """[lo, hi) narrowed to this partition's range (None: unbounded; b"" stays as given)."""
        start = lo if lo is not None and lo > self.start else self.start or lo
        end = hi if self.end is None or (hi is not None and hi < self.end) else self.end
        return start, end

    def overlaps(self, lo: bytes | None, hi: bytes | None) -> bool:
        """Whether [lo, hi) (None: unbounded) meets this partition's range."""
        return (hi is None or self.start < hi) and (self.end is None or lo is None or lo < self.end)


@dataclass(frozen=True)
class PartitionMap:
    """Boundaries -> partition id, with the map's version and the retired partitions."""

    store_id: str
    version: int
    partitions: tuple[Partition, ...]
    retired: dict[str, tuple[str, ...]] = field(default_factory=dict)
    created: float = 0.0

    @classmethod
    def single(cls, store_id: str, pid: str = ROOT_PID) -> PartitionMap:
        """The map of a store that was never split (version 0: it is not stored)."""
        return cls(store_id, 0, (Partition(pid, b"", None),), {}, 0.0)

    @classmethod
    def initial(cls, store_id: str, split_keys: list[bytes], pids: list[str]) -> PartitionMap:
        """A new store's map: partition pids[i] holds [split_keys[i-1], split_keys[i])."""
        keys = check_split_keys(split_keys)
        if len(pids) != len(keys) + 1:
            raise ValueError("one partition id per range")
        starts = [b"", *keys]
        ends: list[bytes | None] = [*keys, None]
        parts = tuple(Partition(p, s, e) for p, s, e in zip(pids, starts, ends, strict=True))
        return cls(store_id, 1, parts, {}, time.time())

    @cached_property  # every routed key bisects it
    def boundaries(self) -> list[bytes]:
        """The split keys: every partition's start but the first's."""
        return [p.start for p in self.partitions[1:]]

    def partition_for(self, key: bytes) -> Partition:
        """The partition holding `key`."""
        return self.partitions[bisect_right(self.boundaries, key)]

    def by_id(self, pid: str) -> Partition | None:
        return next((p for p in self.partitions if p.pid == pid), None)

    def overlapping(self, lo: bytes | None, hi: bytes | None) -> list[Partition]:
        """The partitions meeting [lo, hi), in key order."""
        return [p for p in self.partitions if p.overlaps(lo, hi)]

    def split(self, pid: str, key: bytes, left: str, right: str) -> PartitionMap:
        """The next map: `pid` retired, `left` holding [start, key) and `right` [key, end)."""
        old = self.by_id(pid)
        if old is None or not old.holds(key) or key == old.start:
            raise ValueError(f"{key!r} is not strictly inside partition {pid!r}")
        parts: list[Partition] = []
        for p in self.partitions:
            parts += [Partition(left, p.start, key), Partition(right, key, p.end)] if p.pid == pid else [p]
        return replace(
            self, version=self.version + 1, partitions=tuple(parts), retired={**self.retired, pid: (left, right)}
        )

    def merge(self, left: str, right: str, into: str) -> PartitionMap:
        """The next map: adjacent `left` and `right` retired, `into` holding both ranges."""
        parts = list(self.partitions)
        i = next((n for n, p in enumerate(parts) if p.pid == left), len(parts))
        if i + 1 >= len(parts) or parts[i + 1].pid != right:
            raise ValueError(f"partitions {left!r} and {right!r} are not adjacent in this map")
        parts[i : i + 2] = [Partition(into, parts[i].start, parts[i + 1].end)]
        return replace(
            self,
            version=self.version + 1,
            partitions=tuple(parts),
            retired={**self.retired, left: (into,), right: (into,)},
        )


def check_split_keys(split_keys: list[bytes]) -> list[bytes]:
    """`split_keys` sorted, or ValidationError if one is empty or repeats."""
    keys = sorted(split_keys)
    if any(not k for k in keys):
        raise ValidationError("split_keys must not contain the empty key: every partition starts after b''")
    if len(set(keys)) != len(keys):
        raise ValidationError(f"split_keys repeat a key: {keys!r}; give each boundary once")
    return keys


def encode_map(pmap: PartitionMap) -> bytes:
    payload: dict[str, Any] = {
        "store_id": pmap.store_id,
        "version": pmap.version,
        "created": pmap.created,
        "partitions": [[p.pid, p.start] for p in pmap.partitions],
        "retired": {k: list(v) for k, v in pmap.retired.items()},
    }
    return seal(_MAGIC, FORMAT, msgpack.packb(payload, use_bin_type=True))


def decode_map(data: bytes, object_name: str) -> PartitionMap:
    """The map in `data`; CorruptionError if it does not hold together."""
    doc = msgpack.unpackb(unseal(data, _MAGIC, FORMAT, object_name, "partition map"), raw=False)
    try:
        starts = [(str(pid), bytes(start)) for pid, start in doc["partitions"]]
        ends: list[bytes | None] = [s for _, s in starts[1:]] + [None]
        parts = tuple(Partition(pid, start, end) for (pid, start), end in zip(starts, ends, strict=True))
        pmap = PartitionMap(
            str(doc["store_id"]),
            int(doc["version"]),
            parts,
            {str(k): tuple(str(x) for x in v) for k, v in doc["retired"].items()},
            float(doc["created"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptionError(
            f"partition map {object_name} is damaged ({exc}); run `Store.verify()`", object_name=object_name
        ) from exc
    keys = [p.start for p in parts]
    if not parts or keys[0] != b"" or keys != sorted(set(keys)) or len({p.pid for p in parts}) != len(parts):
        raise CorruptionError(
            f"partition map {object_name} is damaged (ranges out of order); run `Store.verify()`",
            object_name=object_name,
        )
    return pmap
