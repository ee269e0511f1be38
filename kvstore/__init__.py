"""kvstore: a transactional, ordered key-value store whose only server is an S3 bucket.

    async with kvstore.open("s3://bucket/prefix") as db:
        await db.put(b"k", b"v")
        async with db.transaction() as tx:
            tx.put(b"b", await tx.get(b"k"))

See README.md for a tour and docs/ for concepts, formats and operations.
"""

from ._errors import (
    AccessDeniedError,
    ClosedError,
    CommitOutcomeUnknownError,
    ConflictError,
    CorruptionError,
    InvalidKeyError,
    InvalidURLError,
    InvalidValueError,
    KvStoreError,
    ReadOnlyError,
    StoreNotFoundError,
    StoreUnavailableError,
    TagExistsError,
    TagNotFoundError,
    TransactionStateError,
    TransactionTooLargeError,
    TransactionTooOldError,
    UnsafeEndpointError,
    UnsafeStoreError,
    UnsupportedFormatError,
    ValidationError,
    VersionNotRetainedError,
)
from ._objectstore import RetryPolicy, S3Options
from ._version import __version__
from ._compact import CompactionResult
from ._gc import GcReport
from ._options import StoreOptions
from ._reader import Reader
from ._store import Change, CommitInfo, Snapshot, Store, StoreInfo, StoreOpener, VerifyReport, open
from ._sync import SyncSnapshot, SyncStore, SyncTransaction, open_sync
from ._tags import Tag
from ._transaction import Transaction


__all__ = [
    "AccessDeniedError",
    "Change",
    "ClosedError",
    "CommitInfo",
    "CommitOutcomeUnknownError",
    "CompactionResult",
    "ConflictError",
    "CorruptionError",
    "GcReport",
    "InvalidKeyError",
    "InvalidURLError",
    "InvalidValueError",
    "KvStoreError",
    "ReadOnlyError",
    "Reader",
    "RetryPolicy",
    "S3Options",
    "Snapshot",
    "Store",
    "StoreNotFoundError",
    "StoreInfo",
    "StoreOpener",
    "StoreOptions",
    "StoreUnavailableError",
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
    "ValidationError",
    "VerifyReport",
    "VersionNotRetainedError",
    "open",
    "open_sync",
]
