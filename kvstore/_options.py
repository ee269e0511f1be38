"""Tunable limits and behaviour of a store, with their documented defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from ._errors import ValidationError
from ._manifest import MAX_GRACE_PERIOD, valid_grace_period
from ._objectstore import RetryPolicy

KiB = 1024
MiB = 1024 * KiB
# The largest value a store accepts (`StoreOptions.max_value_bytes` may not exceed it):
# S3's largest single PUT. Larger values are uploaded in parts, but `put` and `get` hold a
# value whole in memory, which bounds them first.
MAX_VALUE_BYTES = 5 * 1024 * MiB
# Bulk loads and distributed writes keep every value in their segments (the old limit
# of every value): `bulk_value_limit`.
BULK_MAX_VALUE_BYTES = 8 * MiB


@dataclass(frozen=True)
class StoreOptions:
    """Options of an open store. Every limit is enforced with a clear error.

    Attributes:
        max_key_bytes: longest key accepted (keys may not be empty).
        max_value_bytes: largest value accepted, after encoding (1 GiB; at most
            MAX_VALUE_BYTES, 5 GiB). A value is held whole in memory by `put` and
            `get`; one over `large_value_bytes` is stored out of line.
        large_value_bytes: a value larger than this (after encoding) is written as an
            immutable object of its own (`<prefix>values/`) before its commit, and its
            segment entry holds a small reference: a compaction moves the reference,
            never the bytes, and a read costs one more GET. 256 KiB, from measurement
            (docs/design.md, "Large values"). Must be >= 1 KiB.
        max_transaction_bytes: keys + values one transaction may write.
        max_transaction_keys: distinct keys one transaction may write.
        max_transaction_age: seconds a transaction may run before its commit
            is refused with `TransactionTooOldError` (finite, >= 0). Must be
            under half of `segment_grace_period`; when that is left to the
            store's record and the record is too short for it, the open uses
            a sixth of the record instead (the defaults' ratio). A bulk load is
            not held to it (it reads nothing), only to committing its first
            segment within half of `segment_grace_period` (I8).
        intent_timeout: seconds after its prepare (by the wall clock recorded in
            it) that an undecided intent of a cross-partition transaction may be
            aborted by any writer of its partition that meets it (its coordinator
            is presumed dead). Safe at any value (the decision object is created
            once: a late coordinator then finds "aborted" and reports a
            conflict); too short aborts slow coordinators, too long holds up
            writers of the intent's keys. Clocks of the hosts must agree to well
            within it.
        commit_log_length: commits kept in the manifest's log. A transaction
            whose read version is older than the log cannot be checked and
            fails with `TransactionTooOldError`.
        segment_grace_period: seconds a written-but-uncommitted segment is
            protected from garbage collection (I7). A commit never references
            a segment older than half of it (I8); it rewrites it instead.
            None (default): the period the store records (the longest any
            writer opened it with; 3600 for a new store or one that records
            none), so a default open never changes the record. A number
            (finite, > 0, at most 30 days) is this writer's own; a writable
            open with one longer than the record raises the record for good
            (GC never applies less than it). `Store.options` shows the
            resolved value.
        cache_bytes: memory for cached segment indexes and blocks.
        cache_dir: a local directory that also caches segment bytes on disk,
            shared by every process (and store) that names it and kept
            across restarts; needs `pip install 'kvstore[disk-cache]'`.
            None (default): memory only.
        cache_dir_bytes: the disk cache's size bound (least recently used
            entries are evicted first).
        max_staleness: seconds a store-level read (`Store.get`, `Store.scan`,
            new transactions) may reuse the last manifest without asking the
            object store whether it changed. 0 means every such read sends one
            conditional GET (304 when nothing changed), so it sees every
            commit acknowledged before it started, by any process.
        max_batch_transactions: transactions group-committed in one manifest CAS.
        transact_max_attempts: attempts `Store.transact` makes before letting
            the last `ConflictError` propagate.
        retry: backoff policy for transient object-store failures.
        auto_compact: merge segments in the background after commits.
        compaction_fanout: sources (segments or sorted runs) of one level
            merged together (tiered).
        target_segment_bytes: size a compaction's output segments are cut at
            (at the first key boundary past it). 64 MiB: large enough that a
            100 GB store is ~1,600 objects and a segment's fixed costs (a PUT,
            a run-object row, a footer read) are noise; small enough that a
            segment is a unit of work one sub-compaction rewrites in about a
            second, and that a multipart upload has 8 parts.
        compaction_memory_bytes: memory a compaction may hold beyond the cache.
            It runs as many key-range sub-compactions at once as fit (at most
            4; at least 1, which needs about 2 x min(target_segment_bytes, 24 MiB)
            + 512 KiB per input), whatever the store size. A bulk load's merge
            of its chunks into one sorted run holds as much: it merges them in
            one pass while this holds a block of each (475 chunks of 64 MiB
            with the defaults), in passes otherwise.
        history_versions: recent versions `snapshot(version=N)` can read
            exactly (compaction keeps their data); tags keep older ones.
        history_seconds: also keep versions committed this recently.
        auto_gc_interval: if set, a writer also garbage-collects after a
            background compaction, at most once per this many seconds.
        inline_segment_bytes: a commit whose segment encodes to at most this
            many bytes carries it inside the manifest: one PUT per commit
            instead of two. 0 turns inlining off.
        manifest_inline_bytes: inline segments the manifest may carry in all;
            past it commits write segment objects until compaction has merged
            the inline ones into an object (every CAS uploads the manifest,
            so this bounds what a commit sends).
    """

    max_key_bytes: int = 4 * KiB
    max_value_bytes: int = 1024 * MiB
    large_value_bytes: int = 256 * KiB
    max_transaction_bytes: int = 64 * MiB
    max_transaction_keys: int = 100_000
    max_transaction_age: float = 600.0
    intent_timeout: float = 5.0
    commit_log_length: int = 1000
    segment_grace_period: float | None = None
    cache_bytes: int = 256 * MiB
    cache_dir: str | None = None
    cache_dir_bytes: int = 4 * 1024 * MiB
    max_staleness: float = 0.0
    max_batch_transactions: int = 1024
    transact_max_attempts: int = 100
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    auto_compact: bool = True
    compaction_fanout: int = 8
    target_segment_bytes: int = 64 * MiB
    compaction_memory_bytes: int = 256 * MiB
    history_versions: int = 100
    history_seconds: float = 0.0
    auto_gc_interval: float | None = None
    inline_segment_bytes: int = 16 * KiB
    manifest_inline_bytes: int = 128 * KiB

    def __post_init__(self) -> None:
        grace, age = self.segment_grace_period, self.max_transaction_age
        if grace is not None and not valid_grace_period(grace):
            raise ValidationError(
                f"segment_grace_period must be a finite number of seconds above 0 and at most "
                f"{MAX_GRACE_PERIOD:.0f} s (30 days), not {grace!r}; leave it out to use the store's"
            )
        if not (math.isfinite(age) and age >= 0):  # written so NaN fails
            raise ValidationError(f"max_transaction_age must be a finite number of seconds >= 0, not {age!r}")
        if grace is not None and not age * 2 < grace:
            raise ValidationError("max_transaction_age must be under half of segment_grace_period (I8)")
        if not (math.isfinite(self.intent_timeout) and self.intent_timeout > 0):
            raise ValidationError(f"intent_timeout must be a finite number of seconds > 0, not {self.intent_timeout!r}")
        if self.commit_log_length < 1 or self.max_batch_transactions < 1:
            raise ValidationError("commit_log_length and max_batch_transactions must be positive")
        if self.compaction_fanout < 2 or self.history_versions < 0 or self.history_seconds < 0:
            raise ValidationError("compaction_fanout must be >= 2; history_versions and history_seconds >= 0")
        if self.target_segment_bytes < 256 or self.compaction_memory_bytes < 1 * MiB:
            raise ValidationError("target_segment_bytes must be >= 256 and compaction_memory_bytes >= 1 MiB")
        if not 1 <= self.max_value_bytes <= MAX_VALUE_BYTES:
            raise ValidationError(
                f"max_value_bytes must be between 1 and {MAX_VALUE_BYTES} (5 GiB), not {self.max_value_bytes!r}"
            )
        if self.large_value_bytes < 1 * KiB:
            raise ValidationError(f"large_value_bytes must be >= 1024, not {self.large_value_bytes!r}")
        if not 0 <= self.inline_segment_bytes <= self.manifest_inline_bytes:
            raise ValidationError("inline_segment_bytes must be between 0 and manifest_inline_bytes")


# The grace period of a store that records none (new, or made by an older release).
DEFAULT_GRACE_PERIOD = 3600.0


def resolve_options(options: StoreOptions, recorded: float | None) -> StoreOptions:
    """`options` with `segment_grace_period` resolved against the store's `recorded` one.

    None becomes the record (DEFAULT_GRACE_PERIOD without one): only an explicit period
    can raise the record. A max_transaction_age that is not under half of the resolved
    period (possible only when it was None) becomes a sixth of it, the defaults' ratio,
    so I8 holds whatever the store records; refusing instead would stop every
    default-option open (the CLI's) of a store whose writers use a short period.
    """
    grace = options.segment_grace_period
    if grace is None:
        grace = DEFAULT_GRACE_PERIOD if recorded is None else recorded
    age = options.max_transaction_age
    if not age * 2 < grace:
        age = grace / 6
    return replace(options, segment_grace_period=grace, max_transaction_age=age)


def bulk_value_limit(options: StoreOptions) -> int:
    """The largest value a bulk load or distributed write takes: values stay in its segments."""
    return min(options.max_value_bytes, BULK_MAX_VALUE_BYTES)


def grace_period_of(options: StoreOptions) -> float:
    """The resolved writers' grace period of an open store's `options` (see `resolve_options`)."""
    grace = options.segment_grace_period
    if grace is None:  # a program error: every open resolves it
        raise AssertionError("StoreOptions.segment_grace_period was not resolved at open")
    return grace
