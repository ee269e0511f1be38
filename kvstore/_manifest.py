"""The manifest format: the one mutable object, naming everything committed (no I/O).

Layout (docs/format.md has the details)::

    b"KVMF", u16 format, u8 compression (0 none, 1 zstd), u8 0,
    payload (msgpack map, maybe zstd-compressed), u64 xxh3 of everything before

The payload holds the store id, the version (+1 per commit), the live
segments (newest first; small commit segments carried inline, their bytes in
the manifest itself), a bounded commit log: for every version after
`log_start`, which transactions committed there and which keys they wrote, and
the intents of cross-partition transactions prepared here and not resolved yet
(`Intent`; `_two_phase.py`).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack

from ._envelope import seal, unseal
from ._errors import CorruptionError
from ._ranges import KeyRange, RangeTombstone, cover, range_bytes, with_new

# 2: segment rows may carry an inline segment; 3: rows may name a sorted run;
# 4: range deletes (`range_deletes`, and commit records listing the ranges they
# deleted), clipped segment rows (a compaction in steps) and the intents of
# cross-partition transactions (`intents`). Formats 1-3 are still read. A manifest
# with none of them is still written as format 3, so such stores stay readable by
# releases before format 4; one that has them must not be (they would show deleted
# keys, miss conflicts, read a clipped source's keys twice, or read a committed
# intent's writes as absent and commit over it). 5: intents may hold the keys and
# ranges their transaction read (two more row fields), and a read-only intent has no
# segment; written only when an intent does, so that a release before it (which would
# commit over a prepared transaction's reads, or fail on the absent segment) refuses it.
FORMAT = 5
_FORMAT_4 = 4
_FORMAT_3 = 3
_MAGIC = b"KVMF"
# A commit record lists its written keys exactly when they total at most this many
# bytes; larger write sets are recorded by their key range (conservative conflicts).
LOG_KEYS_MAX_BYTES = 4096
# The whole log lists at most this many bytes of exact keys: past it the oldest
# records keep only their key range. Every CAS uploads (and compresses) the log,
# so this bounds what a busy store's commits cost; transactions whose read
# version is that far behind get range-based (conservative) conflict checks.
LOG_KEYS_BUDGET_BYTES = 256 * 1024


# The settings key recording the longest `segment_grace_period` any writer opened the
# store with: GC never applies a shorter one (I7, I8). Absent in stores made before it.
GRACE_SETTING = "segment_grace_period"
# The settings key of a partition sealed by a split: {"at": split key, "into": [left pid,
# right pid]}. Its final version is copied into the successors; nothing commits after it.
MOVED_SETTING = "moved"
# The longest grace period a writer may use (30 days). A writer may commit a segment up
# to half of it after writing it (I8), so this allows jobs of 15 days; anything longer
# keeps all garbage practically for good (as inf would) and is most likely a unit slip.
MAX_GRACE_PERIOD = 30 * 86400.0


def valid_grace_period(value: object) -> bool:
    """Whether `value` is a usable grace period: a finite number of seconds in
    (0, MAX_GRACE_PERIOD]. Written so that NaN (every comparison False) fails."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return 0 < value <= MAX_GRACE_PERIOD  # False for NaN; inf is above the bound


def recorded_grace_period(m: Manifest) -> float | None:
    """The writers' grace period `m` records, or None if it records none or an invalid
    one (see `invalid_grace_record`): a writable open then records its own."""
    value = m.settings.get(GRACE_SETTING)
    return float(value) if isinstance(value, int | float) and valid_grace_period(value) else None


def invalid_grace_record(m: Manifest) -> object | None:
    """The grace period `m` records if it is not a valid one (NaN, inf, not a number,
    not positive: only a release before the check could write one), else None."""
    value = m.settings.get(GRACE_SETTING)
    return None if value is None or valid_grace_period(value) else value


@dataclass(frozen=True)
class SegmentRef:
    """The manifest's record of one live source: a segment, or a sorted run of them.

    A sorted run (`parts` > 0) is what a compaction writes: `parts` segments with
    disjoint, ascending key ranges, listed by an immutable run object (`_run.py`)
    that `id` names. The manifest holds one row per run, however many segments it
    has, so a commit's manifest does not grow with the store.
    """

    id: str
    min_key: bytes
    max_key: bytes
    count: int
    size: int
    min_version: int
    max_version: int
    # Set for commit segments: every entry has this version.
    commit_version: int | None = None
    level: int = 0
    # The segment's bytes, for a small commit segment kept in the manifest
    # instead of its own object (no PUT to write it, no GET to read it).
    inline: bytes | None = field(default=None, repr=False)
    # > 0: `id` names a run object listing this many segments (`min_key`..`count`,
    # `size` and versions then describe the whole run).
    parts: int = 0
    # True: a compaction in steps has merged the keys below `min_key` already, so this
    # source serves only [min_key, max_key] although its objects hold keys below it
    # (readers clamp every read to that range; `count` and `size` are the objects').
    clipped: bool = False

    @property
    def is_run(self) -> bool:
        return self.parts > 0

    def may_contain(self, key: bytes) -> bool:
        return self.min_key <= key <= self.max_key

    def overlaps(self, start: bytes | None, end: bytes | None) -> bool:
        """Whether [start, end) meets [min_key, max_key]."""
        return (start is None or self.max_key >= start) and (end is None or self.min_key < end)


@dataclass(frozen=True)
class CommitRecord:
    """One committed version in the commit log."""

    version: int
    time: float
    # The id of the batch's first transaction (what I5 looks for; listing every
    # transaction's 16 random bytes made a busy store's log mostly incompressible).
    txn_ids: tuple[bytes, ...]
    segment_id: str | None
    key_count: int
    min_key: bytes
    max_key: bytes
    keys: tuple[bytes, ...] | None  # sorted; None when only the range is recorded
    meta: dict[str, Any] | None = None
    txn_count: int = 1  # transactions the commit carried
    # The [start, end) ranges the commit deleted (range deletes: a write of every key in
    # them). Exact while the record lists its keys; one covering range otherwise.
    ranges: tuple[KeyRange, ...] = ()

    @property
    def job(self) -> str | None:
        """The distributed write (`Store.distributed_write`) this commit published, if any."""
        return None if self.meta is None else self.meta.get("job")

    def only_resolves(self, shown: Collection[str]) -> bool:
        """Whether this commit did nothing but turn committed intents into segments, each
        of a decision in `shown` (the decisions a view showed as committed: nothing
        changed for it)."""
        resolved = None if self.meta is None else self.meta.get("resolves")
        return resolved is not None and all(name in shown for name in resolved)

    def wrote_any(self, keys: Iterable[bytes], ranges: Iterable[tuple[bytes, bytes | None]]) -> bool:
        """Whether this commit wrote one of `keys` or a key in one of the [start, end) ranges."""
        if self.ranges:
            ranges = list(ranges)
            keys = list(keys)
            for start, end in self.ranges:
                if any(start <= k and (end is None or k < end) for k in keys):
                    return True
                if any((end is None or s < end) and (e is None or start < e) for s, e in ranges):
                    return True
        if self.key_count == 0:
            return False
        if self.keys is not None:
            written = self.keys
            written_set = set(written)
            if any(k in written_set for k in keys):
                return True
            return any(_any_in_range(written, start, end) for start, end in ranges)
        if any(self.min_key <= k <= self.max_key for k in keys):
            return True
        return any(self.max_key >= start and (end is None or self.min_key < end) for start, end in ranges)


@dataclass(frozen=True)
class Intent:
    """A cross-partition transaction's part in this partition, prepared and not resolved.

    Its writes become visible at `version` (the prepare's version) once its
    decision object (`decision`) says "committed"; until then no reader sees them,
    and no other commit may read or write its keys (`meets`). Until it is decided,
    no other commit may write what it read here either (`reads_meet`): its reads hold
    from its prepare to its decision. A later CAS of the partition turns it into an
    ordinary segment, or drops it (aborted; or any read-only intent, `segment` None).
    """

    txn_id: bytes
    version: int  # the prepare's version, and its writes' version
    time: float  # wall clock of the prepare (the abort timeout counts from it)
    decision: str  # the decision object's name
    keys: tuple[bytes, ...] | None  # sorted written keys; None: only the segment's range is recorded
    segment: SegmentRef | None  # its writes (inline or an object), commit_version == version; None: wrote nothing
    # Sorted keys and [start, end) ranges its transaction read in this partition (a key
    # set too long to list is recorded as the one range covering it). Format 5.
    reads: tuple[bytes, ...] = ()
    read_ranges: tuple[KeyRange, ...] = ()

    def meets(self, keys: Iterable[bytes], ranges: Iterable[tuple[bytes, bytes | None]]) -> bool:
        """Whether it writes one of `keys` or a key in one of the [start, end) ranges."""
        if self.segment is None:
            return False
        lo, hi = self.segment.min_key, self.segment.max_key
        if self.keys is not None:
            written = set(self.keys)
            if any(k in written for k in keys):
                return True
            return any(_any_in_range(self.keys, start, end) for start, end in ranges)
        if any(lo <= k <= hi for k in keys):
            return True
        return any(hi >= start and (end is None or lo < end) for start, end in ranges)

    def reads_meet(self, keys: Iterable[bytes], ranges: Iterable[tuple[bytes, bytes | None]]) -> bool:
        """Whether its transaction read one of `keys` or a key in one of the [start, end) ranges."""
        if not self.reads and not self.read_ranges:
            return False
        ranges = list(ranges)
        read = set(self.reads)
        for k in keys:
            if k in read or any(s <= k and (e is None or k < e) for s, e in self.read_ranges):
                return True
        for start, end in ranges:
            if _any_in_range(self.reads, start, end):
                return True
            if any((end is None or s < end) and (e is None or start < e) for s, e in self.read_ranges):
                return True
        return False


def _any_in_range(sorted_keys: Sequence[bytes], start: bytes, end: bytes | None) -> bool:
    i = bisect_left(sorted_keys, start)
    return i < len(sorted_keys) and (end is None or sorted_keys[i] < end)


@dataclass(frozen=True)
class Manifest:
    """A decoded manifest. Immutable: a commit makes a new one."""

    store_id: str
    version: int
    created: float
    segments: tuple[SegmentRef, ...] = ()
    log: tuple[CommitRecord, ...] = ()
    log_start: int = 0  # the log holds every commit with version > log_start
    settings: dict[str, Any] = field(default_factory=dict)
    # Every version >= history_floor can be read exactly (compaction keeps them).
    history_floor: int = 0
    # Live range deletes (`_ranges.py`), oldest first; compaction drops them once
    # nothing they hide is left.
    range_deletes: tuple[RangeTombstone, ...] = ()
    # Prepared cross-partition writes not resolved yet, oldest first.
    intents: tuple[Intent, ...] = ()

    @property
    def inline_bytes(self) -> int:
        """Bytes of the segments carried inline (intents' included)."""
        refs = (*self.segments, *(i.segment for i in self.intents if i.segment is not None))
        return sum(len(s.inline) for s in refs if s.inline is not None)

    @property
    def never_written(self) -> bool:
        """Whether no data was ever committed: no segments, and a log reaching back to
        version 1 that holds only settings commits (a writers' grace period or a codec
        recorded). Such a store may still take up another value codec (`open_engine`)."""
        return (
            not self.segments
            and self.log_start == 0
            and all(r.key_count == 0 and r.meta is not None and "settings" in r.meta for r in self.log)
        )

    def commits_after(self, version: int) -> tuple[CommitRecord, ...] | None:
        """Commits with version > `version`, or None if the log no longer reaches back that far."""
        if version < self.log_start:
            return None
        skip = len(self.log) - (self.version - version)
        return self.log[max(skip, 0) :]

    def record_for(self, version: int) -> CommitRecord | None:
        """The commit record of `version`, if the log still holds it."""
        found = self.commits_after(version - 1)
        return found[0] if found else None

    def with_commit(
        self,
        record: CommitRecord,
        log_length: int,
        *,
        add: Sequence[SegmentRef] = (),
        remove: frozenset[str] = frozenset(),
        history_floor: int | None = None,
        delete_ranges: Sequence[KeyRange] = (),
        drop_ranges: Iterable[RangeTombstone] = (),
        intents: tuple[Intent, ...] | None = None,
    ) -> Manifest:
        """The manifest after committing `record` at version + 1.

        `add` takes the place of the first removed segment, or goes in front
        (the list is newest first; equal versions are ordered by position).
        `delete_ranges` become range tombstones at the record's version (the
        record may list them only by a covering range); `drop_ranges` leave (a
        compaction removed everything they hid). `intents` (None: unchanged)
        replaces the live intents.
        """
        assert record.version == self.version + 1, "I3: a commit must increase the version by one"
        log = (*self.log, record)
        log_start = self.log_start
        key_bytes = _log_key_bytes(self) + _key_bytes(record)
        if len(log) > log_length:
            dropped = len(log) - log_length
            log_start = log[dropped - 1].version
            key_bytes -= sum(_key_bytes(r) for r in log[:dropped])
            log = log[dropped:]
        log, key_bytes, stripped = _within_keys_budget(log, key_bytes)
        at = next((i for i, s in enumerate(self.segments) if s.id in remove), 0)
        kept = [s for s in self.segments[:at] if s.id not in remove]
        kept += [*add, *(s for s in self.segments[at:] if s.id not in remove)]
        assert len(kept) == len(self.segments) - len(remove) + len(add), "removing a segment that is not live"
        new = replace(
            self,
            version=record.version,
            segments=tuple(kept),
            log=log,
            log_start=log_start,
            history_floor=self.history_floor if history_floor is None else max(history_floor, self.history_floor),
            range_deletes=with_new(
                self.range_deletes,
                [RangeTombstone(start, end, record.version) for start, end in delete_ranges],
                drop_ranges,
            ),
            intents=self.intents if intents is None else intents,
        )
        object.__setattr__(new, "_log_key_bytes", key_bytes)  # carried forward, not re-summed
        cached = self.__dict__.get("_packed_log")
        if cached is not None and not stripped:  # extend the parent's packed log instead of repacking it
            data, lengths = cached
            dropped = len(self.log) + 1 - len(log)
            row = _packed(record, _record_row)
            object.__setattr__(
                new, "_packed_log", (data[sum(lengths[:dropped]) :] + row, lengths[dropped:] + (len(row),))
            )
        return new


def _within_keys_budget(log: tuple[CommitRecord, ...], total: int) -> tuple[tuple[CommitRecord, ...], int, bool]:
    """`log` (listing `total` bytes of exact keys) with the oldest key lists dropped until
    LOG_KEYS_BUDGET_BYTES holds; its exact-key bytes then, and whether any list was dropped."""
    if total <= LOG_KEYS_BUDGET_BYTES:
        return log, total, False
    trimmed = list(log)
    for i, r in enumerate(trimmed):
        if total <= LOG_KEYS_BUDGET_BYTES:
            break
        if r.keys is not None or len(r.ranges) > 1:
            total -= _key_bytes(r)
            trimmed[i] = replace(r, keys=None, ranges=cover(r.ranges))
            total += _key_bytes(trimmed[i])
    return tuple(trimmed), total, True


def _log_key_bytes(m: Manifest) -> int:
    """Bytes of exact keys `m`'s log lists (summed once per decoded manifest)."""
    cached: int | None = m.__dict__.get("_log_key_bytes")
    if cached is None:
        cached = sum(_key_bytes(r) for r in m.log)
        object.__setattr__(m, "_log_key_bytes", cached)
    return cached


def _key_bytes(r: CommitRecord) -> int:
    cached: int | None = r.__dict__.get("_key_bytes")
    if cached is None:
        cached = (0 if r.keys is None else sum(map(len, r.keys))) + range_bytes(r.ranges)
        object.__setattr__(r, "_key_bytes", cached)  # a cache on a frozen, immutable row
    return cached


def encode_manifest(m: Manifest) -> bytes:
    """The manifest's bytes. Rows of segments and commit records are packed once
    and reused (they are immutable), so a commit costs O(new rows), not O(log)."""
    packer = msgpack.Packer(use_bin_type=True)
    head = {
        "store_id": m.store_id,
        "version": m.version,
        "created": m.created,
        "log_start": m.log_start,
        "settings": m.settings,
        "history_floor": m.history_floor,
    }
    if m.intents:
        head["intents"] = [_intent_row(i) for i in m.intents]
    ranges = bool(m.range_deletes) or any(r.ranges for r in m.log)
    parts = [packer.pack_map_header(len(head) + 2 + bool(m.range_deletes))]
    for key, value in head.items():
        parts += [packer.pack(key), packer.pack(value)]
    parts += [packer.pack("segments"), packer.pack_array_header(len(m.segments))]
    parts += [_packed(s, _segment_row) for s in m.segments]
    parts += [packer.pack("log"), packer.pack_array_header(len(m.log)), _packed_log(m)]
    if m.range_deletes:
        parts += [packer.pack("range_deletes"), packer.pack([t.row() for t in m.range_deletes])]
    # A sealed partition too: a release before format 4 knows no partitions and would
    # commit into it, where no current reader looks.
    needs_4 = ranges or bool(m.intents) or any(s.clipped for s in m.segments) or MOVED_SETTING in m.settings
    needs_5 = any(i.segment is None or i.reads or i.read_ranges for i in m.intents)
    return seal(_MAGIC, FORMAT if needs_5 else _FORMAT_4 if needs_4 else _FORMAT_3, b"".join(parts))


def _intent_row(i: Intent) -> list[Any]:
    keys = None if i.keys is None else list(i.keys)
    segment = None if i.segment is None else _segment_row(i.segment)
    row = [i.txn_id, i.version, i.time, i.decision, keys, segment]
    if i.reads or i.read_ranges:  # format 5; a row without them reads as "read nothing"
        row += [list(i.reads), [list(r) for r in i.read_ranges]]
    return row


def _intent_of(row: list[Any]) -> Intent:
    return Intent(
        row[0],
        row[1],
        row[2],
        row[3],
        None if row[4] is None else tuple(row[4]),
        None if row[5] is None else SegmentRef(*row[5]),
        tuple(row[6]) if len(row) > 6 else (),
        tuple((start, end) for start, end in row[7]) if len(row) > 7 else (),
    )


def _packed_log(m: Manifest) -> bytes:
    cached: tuple[bytes, tuple[int, ...]] | None = m.__dict__.get("_packed_log")
    if cached is None:
        rows = [_packed(r, _record_row) for r in m.log]
        cached = (b"".join(rows), tuple(map(len, rows)))
        object.__setattr__(m, "_packed_log", cached)
    return cached[0]


def _segment_row(s: SegmentRef) -> list[Any]:
    row = [s.id, s.min_key, s.max_key, s.count, s.size, s.min_version, s.max_version, s.commit_version, s.level]
    if s.clipped:
        return [*row, s.inline, s.parts, True]
    if s.parts:
        return [*row, None, s.parts]
    return row if s.inline is None else [*row, s.inline]


def _record_row(r: CommitRecord) -> list[Any]:
    keys = None if r.keys is None else list(r.keys)
    row = [
        r.version,
        r.time,
        list(r.txn_ids),
        r.segment_id,
        r.key_count,
        r.min_key,
        r.max_key,
        keys,
        r.meta,
        r.txn_count,
    ]
    return [*row, [list(kr) for kr in r.ranges]] if r.ranges else row


def _packed(row: Any, to_list: Any) -> bytes:
    packed: bytes | None = row.__dict__.get("_packed")
    if packed is None:
        packed = msgpack.packb(to_list(row), use_bin_type=True)
        object.__setattr__(row, "_packed", packed)  # a cache on a frozen, immutable row
    return packed


def decode_manifest(data: bytes, object_name: str) -> Manifest:
    """Decode and verify a manifest; refuse newer formats and damaged bytes."""
    payload = unseal(data, _MAGIC, FORMAT, object_name, "manifest")
    try:
        doc = msgpack.unpackb(payload, raw=False)
        return Manifest(
            store_id=doc["store_id"],
            version=doc["version"],
            created=doc["created"],
            log_start=doc["log_start"],
            settings=doc["settings"],
            history_floor=doc["history_floor"],
            intents=tuple(_intent_of(row) for row in doc.get("intents", ())),
            segments=tuple(SegmentRef(*row) for row in doc["segments"]),
            log=tuple(
                CommitRecord(
                    r[0],
                    r[1],
                    tuple(r[2]),
                    r[3],
                    r[4],
                    r[5],
                    r[6],
                    None if r[7] is None else tuple(r[7]),
                    r[8],
                    r[9] if len(r) > 9 else len(r[2]),  # format 1: every id listed
                    tuple((start, end) for start, end in r[10]) if len(r) > 10 else (),  # format 4
                )
                for r in doc["log"]
            ),
            range_deletes=tuple(RangeTombstone(s, e, v) for s, e, v in doc.get("range_deletes", ())),
        )
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
        raise CorruptionError(
            f"manifest {object_name} is damaged (undecodable); run `Store.verify()`",
            object_name=object_name,
            block="manifest",
        ) from exc
