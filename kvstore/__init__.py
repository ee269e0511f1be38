"""kvstore: a transactional, ordered key-value store whose only server is an S3 bucket.

    async with kvstore.open("s3://bucket/prefix") as db:
        await db.put(b"k", b"v")
        async with db.transaction() as tx:
            tx.put(b"b", await tx.get(b"k"))

See README.md for a tour and docs/ for concepts, formats and operations.
"""

from ._compact import CompactionResult
from ._distributed import DistributedWrite, Part
from ._doctor import DoctorCheck, DoctorReport, doctor
from ._engine import VerifyReport
from ._errors import (
    AccessDeniedError,
    AtomicOperandError,
    ClosedError,
    CodecMismatchError,
    CommitOutcomeUnknownError,
    CompactionTooSlowError,
    ConflictError,
    ContentionError,
    CorruptionError,
    FutureVersionError,
    GracePeriodTooShortError,
    InvalidKeyError,
    InvalidPartError,
    InvalidURLError,
    InvalidValueError,
    JobAlreadyCommittedError,
    KvStoreError,
    NestedTransactionError,
    PartitionMovedError,
    PartTooOldError,
    ReadOnlyError,
    StoreNotFoundError,
    StoreUnavailableError,
    SyncInAsyncError,
    TagExistsError,
    TagNotFoundError,
    TransactionStateError,
    TransactionTooLargeError,
    TransactionTooOldError,
    UnsafeEndpointError,
    UnsafeStoreError,
    UnsupportedFormatError,
    UsedAfterForkError,
    ValidationError,
    ValueDecodeError,
    VersionNotRetainedError,
)
from ._gc import GcReport
from ._objectstore import RetryPolicy, S3Options
from ._options import StoreOptions
from ._reader import Reader
from ._snapshot import Snapshot
from ._store import Change, CommitInfo, PartitionInfo, Store, StoreInfo, StoreOpener, open  # noqa: A004 - mirrors the builtin, like aiosqlite.connect
from ._sync import SyncDistributedWrite, SyncSnapshot, SyncStore, SyncTransaction, doctor_sync, open_sync
from ._tags import Tag
from ._transaction import Transaction
from ._version import __version__ as __version__

__all__ = [
    "AccessDeniedError",
    "AtomicOperandError",
    "Change",
    "ClosedError",
    "CodecMismatchError",
    "CommitInfo",
    "CommitOutcomeUnknownError",
    "CompactionResult",
    "CompactionTooSlowError",
    "ConflictError",
    "ContentionError",
    "CorruptionError",
    "DistributedWrite",
    "DoctorCheck",
    "DoctorReport",
    "FutureVersionError",
    "GcReport",
    "GracePeriodTooShortError",
    "InvalidKeyError",
    "InvalidPartError",
    "InvalidURLError",
    "InvalidValueError",
    "JobAlreadyCommittedError",
    "KvStoreError",
    "NestedTransactionError",
    "Part",
    "PartTooOldError",
    "PartitionInfo",
    "PartitionMovedError",
    "ReadOnlyError",
    "Reader",
    "RetryPolicy",
    "S3Options",
    "Snapshot",
    "Store",
    "StoreInfo",
    "StoreNotFoundError",
    "StoreOpener",
    "StoreOptions",
    "StoreUnavailableError",
    "SyncDistributedWrite",
    "SyncInAsyncError",
    "SyncSnapshot",
    "SyncStore",
    "SyncTransaction",
    "Tag",
    "TagExistsError",
    "TagNotFoundError",
    "Transaction",
    "TransactionStateError",
    "TransactionTooLargeError",
    "TransactionTooOldError",
    "UnsafeEndpointError",
    "UnsafeStoreError",
    "UnsupportedFormatError",
    "UsedAfterForkError",
    "ValidationError",
    "ValueDecodeError",
    "VerifyReport",
    "VersionNotRetainedError",
    "doctor",
    "doctor_sync",
    "open",
    "open_sync",
]
