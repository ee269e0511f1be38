"""Tunable limits and behaviour of a store, with their documented defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from ._errors import ValidationError
from ._objectstore import RetryPolicy

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True)
class StoreOptions:
    """Options of an open store. Every limit is enforced with a clear error.

    Attributes:
        max_key_bytes: longest key accepted (keys may not be empty).
        max_value_bytes: largest value accepted, after encoding.
        max_transaction_bytes: keys + values one transaction may write.
        max_transaction_keys: distinct keys one transaction may write.
        max_transaction_age: seconds a transaction may run before its commit
            is refused with `TransactionTooOldError`. Must stay well below
            `segment_grace_period`. A bulk load is not held to it (it reads
            nothing), only to committing its first segment within half of
            `segment_grace_period` (I8).
        commit_log_length: commits kept in the manifest's log. A transaction
            whose read version is older than the log cannot be checked and
            fails with `TransactionTooOldError`.
        segment_grace_period: seconds a written-but-uncommitted segment is
            protected from garbage collection (I7). A commit never references
            a segment older than half of it (I8); it rewrites it instead.
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
            + 512 KiB per input), whatever the store size.
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
    max_value_bytes: int = 8 * MiB
    max_transaction_bytes: int = 64 * MiB
    max_transaction_keys: int = 100_000
    max_transaction_age: float = 600.0
    commit_log_length: int = 1000
    segment_grace_period: float = 3600.0
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
        if self.max_transaction_age * 2 >= self.segment_grace_period:
            raise ValidationError("max_transaction_age must be under half of segment_grace_period (I8)")
        if self.commit_log_length < 1 or self.max_batch_transactions < 1:
            raise ValidationError("commit_log_length and max_batch_transactions must be positive")
        if self.compaction_fanout < 2 or self.history_versions < 0 or self.history_seconds < 0:
            raise ValidationError("compaction_fanout must be >= 2; history_versions and history_seconds >= 0")
        if self.target_segment_bytes < 256 or self.compaction_memory_bytes < 1 * MiB:
            raise ValidationError("target_segment_bytes must be >= 256 and compaction_memory_bytes >= 1 MiB")
        if not 0 <= self.inline_segment_bytes <= self.manifest_inline_bytes:
            raise ValidationError("inline_segment_bytes must be between 0 and manifest_inline_bytes")
