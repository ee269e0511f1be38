"""Every exception kvstore raises.

Lower-level errors (botocore, aiohttp, OS errors) are translated at the
object-store boundary, so callers only ever catch these::

    KvStoreError
    ├── ValidationError (also ValueError)       bad input; nothing was written
    │   ├── InvalidKeyError (also TypeError)
    │   ├── InvalidValueError (also TypeError)
    │   ├── TransactionTooLargeError
    │   ├── InvalidURLError
    │   ├── CodecMismatchError                  values= differs from the store's codec
    │   ├── FutureVersionError                  the asked-for version is not committed yet
    │   ├── GracePeriodTooShortError            GC below the writers' grace period
    │   └── InvalidPartError                    a distributed write's commit given wrong parts
    ├── ConflictError                           lost a race; retry the transaction
    │   ├── TransactionTooOldError
    │   └── PartitionMovedError                 read a partition that was split meanwhile
    ├── CommitOutcomeUnknownError               may or may not have committed
    ├── JobAlreadyCommittedError                a distributed write committed already
    ├── PartTooOldError                         a distributed write's part is too old to commit
    ├── StoreNotFoundError                      no store, or no bucket
    ├── AccessDeniedError                       credentials missing, wrong or not allowed
    ├── StoreUnavailableError                   endpoint unreachable or failing
    ├── ContentionError                         lost too many races for a shared object
    ├── UnsafeStoreError                        cannot be used safely
    │   ├── UnsafeEndpointError                 ignores conditional writes
    │   └── UnsupportedFormatError              written by a newer kvstore
    ├── CorruptionError                         stored bytes fail their checksum
    ├── ValueDecodeError                        a stored value is not in the store's codec
    ├── AtomicOperandError                      add/max/min applied to a value that is not an int
    ├── VersionNotRetainedError                 the asked-for past version is gone
    ├── TagNotFoundError                        no tag of that name
    ├── TagExistsError                          a tag of that name exists
    ├── ReadOnlyError                           a write to a store opened read-only
    ├── ClosedError                             the store was closed
    ├── UsedAfterForkError                      an object from before a fork used in the child
    ├── SyncInAsyncError (also RuntimeError)    the blocking API called inside an event loop
    └── TransactionStateError                   a transaction used after it ended
        └── NestedTransactionError              a transaction started inside another
"""

from __future__ import annotations


class KvStoreError(Exception):
    """Base class of every error raised by kvstore."""


class ValidationError(KvStoreError, ValueError):
    """An argument is not acceptable. Nothing was read or written."""


class InvalidKeyError(ValidationError, TypeError):
    """A key has the wrong type, is empty, or is longer than the limit."""


class InvalidValueError(ValidationError, TypeError):
    """A value has the wrong type, cannot be encoded, or is larger than the limit."""


class TransactionTooLargeError(ValidationError):
    """A transaction buffers more writes than one commit may carry."""


class InvalidURLError(ValidationError):
    """A store URL or an option of `kvstore.open` is not understood.

    A mistyped scheme (``s3:/bucket``, ``file:relative``) is refused rather than
    taken as a local directory named ``s3:``; the message gives the corrected URL.
    """


class InvalidPartError(ValidationError):
    """`DistributedWrite.commit` was given a part it cannot take: not a `Part`, a part
    of another job, or the same part (or two parts of one index) twice. Nothing was
    committed; pass each task's part once."""


class CodecMismatchError(ValidationError):
    """`values=` differs from the value codec the store records (chosen at its creation).

    Opening a store of bytes as msgpack (or the reverse) would misread every
    value, so it is refused at open. `recorded` is the store's codec: pass
    ``values=recorded`` or leave `values` out (a store uses the codec it
    records); ``values="raw"`` reads the stored bytes of any store. Also
    raised, with nothing written, by a write of a handle opened before an
    empty store took up another codec: open the store again.
    """

    def __init__(self, message: str, *, recorded: str) -> None:
        super().__init__(message)
        self.recorded = recorded


class FutureVersionError(ValidationError):
    """`snapshot(version=N)` asked for a version no commit has made yet.

    The store was read afresh and its latest version is older than N: the
    version number did not come from this store (or from a commit that was
    never made). Unlike VersionNotRetainedError (a past version that is
    gone), waiting or retrying the same read is no help. `latest` is the
    store's latest version.
    """

    def __init__(self, message: str, *, latest: int) -> None:
        super().__init__(message)
        self.latest = latest


class GracePeriodTooShortError(ValidationError):
    """A garbage collection was asked for a grace period shorter than the store's.

    The store records the `segment_grace_period` of its writers (the longest any
    writer opened it with); a writer may commit a segment up to half of it old (I8),
    so a shorter grace period could let GC delete the segment of a commit in flight.
    `minimum` is the recorded period: give at least that, or no grace period at all.
    """

    def __init__(self, message: str, *, requested: float, minimum: float) -> None:
        super().__init__(message)
        self.requested = requested
        self.minimum = minimum


class ConflictError(KvStoreError):
    """A transaction read data that another commit changed before it could commit.

    Nothing of the transaction was applied. Run it again from the start
    (`Store.transact` does this for you) — unless `retryable` is False: then
    the conflict comes from the transaction's own code (it committed other
    transactions on the same store while it ran), every retry would conflict
    again, and `transact` raises at once instead of retrying.
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class PartitionMovedError(ConflictError):
    """The transaction read or wrote a partition that a split or merge retired meanwhile.

    Nothing of it was applied. Its reads cannot be checked in the partitions that
    replaced it, so run it again (`Store.transact` does); the store's face re-routes
    blind writes (`put`, `delete`, transactions that read nothing) by itself.
    """


class TransactionTooOldError(ConflictError):
    """A transaction started too long ago to be checked for conflicts.

    Its read version is older than the commit log kept in the manifest, or
    older than `StoreOptions.max_transaction_age`. Retrying it from the start
    succeeds unless it is slow again.
    """


class CompactionTooSlowError(KvStoreError):
    """A step of a compaction ran longer than half of `StoreOptions.segment_grace_period`.

    A compaction commits in steps of bounded size (about a minute each with the
    defaults). A step whose outputs could be collected by garbage collection
    before its commit made them live (I8) is abandoned, its outputs left to
    GC; the steps committed before it stay. Raise `segment_grace_period` above
    twice the longest step, or lower `compaction_memory_bytes` (smaller steps).
    """


class CommitOutcomeUnknownError(KvStoreError):
    """The commit request's outcome could not be determined.

    The store could not be reached to find out whether the transaction was
    applied (or the evidence had already been trimmed from the commit log).
    Read the data to learn the outcome before retrying a non-idempotent
    transaction.
    """


class JobAlreadyCommittedError(KvStoreError):
    """A distributed write (`Store.distributed_write`) was committed a second time.

    A job commits at most once: its parts are in the store already (this
    commit changed nothing). The commit log names the job's id, so this is
    found from any process while that commit is among the last
    `StoreOptions.commit_log_length` commits (or its segments are still
    live). Start a new job to write more.
    """


class PartTooOldError(KvStoreError):
    """A distributed write's part was written longer ago than half of
    `StoreOptions.segment_grace_period`.

    Garbage collection may already delete its segments (I8), so the commit
    was refused and nothing was committed. Write the parts again with a new
    job, or open the store with a grace period above twice the job's length.
    """


class StoreNotFoundError(KvStoreError):
    """The bucket or the store does not exist."""


class AccessDeniedError(KvStoreError):
    """Credentials are missing, invalid, expired or lack a permission."""


class StoreUnavailableError(KvStoreError):
    """The object store kept failing or could not be reached after retries."""


class ContentionError(KvStoreError):
    """A compaction, tag or garbage collection lost compare-and-swap races to other
    writers too many times in a row. Retrying later is safe."""


class UnsafeStoreError(KvStoreError):
    """The store or its endpoint cannot be used safely by this version of kvstore."""


class UnsafeEndpointError(UnsafeStoreError):
    """The endpoint ignores conditional writes (`If-None-Match`, `If-Match`).

    Writers would silently overwrite each other there, so kvstore refuses to
    write. Open the store with ``read_only=True`` to read it.
    """


class UnsupportedFormatError(UnsafeStoreError):
    """An object was written in a format newer than this kvstore understands."""


class CorruptionError(KvStoreError):
    """Stored bytes do not match their checksum or cannot be decoded.

    The message names the object (and the block, for segments). Other keys
    stay readable; `Store.verify` lists every damaged object.
    """

    def __init__(self, message: str, *, object_name: str, block: str | None = None) -> None:
        super().__init__(message)
        self.object_name = object_name
        self.block = block


class ValueDecodeError(KvStoreError):
    """A stored value cannot be decoded with the store's value codec.

    The bytes are intact (they passed their checksum): they were written in
    another codec, e.g. raw bytes put into a msgpack store by an opener with
    another `values=`. The message names the store and the key; read that
    key's stored bytes by opening with ``values="raw"``, and rewrite or delete it.
    """

    def __init__(self, message: str, *, store: str, key: bytes) -> None:
        super().__init__(message)
        self.store = store
        self.key = key


class AtomicOperandError(KvStoreError):
    """A key's value cannot be read because `add`, `max` or `min` was applied to a value
    that is not a signed 64-bit integer in the store's codec (a msgpack int, or 8 bytes
    little-endian in a bytes store).

    Raised by the read, not the write: atomic operations are blind. Put an integer to
    the key, or delete it, to give it a value again.
    """

    def __init__(self, message: str, *, key: bytes) -> None:
        super().__init__(message)
        self.key = key


class VersionNotRetainedError(KvStoreError):
    """A past version was asked for that the store no longer retains."""


class TagNotFoundError(KvStoreError):
    """No tag of that name exists (`Store.tags()` lists them)."""


class TagExistsError(KvStoreError):
    """A tag of that name exists already; tags are never moved. Delete it first."""


class ReadOnlyError(KvStoreError):
    """A write was attempted on a store opened with ``read_only=True``."""


class ClosedError(KvStoreError):
    """The store was used after `close()`, or after the event-loop thread of a
    `SyncStore` stopped (an operation on it raised SystemExit or KeyboardInterrupt)."""


class UsedAfterForkError(KvStoreError):
    """An object opened or begun before `os.fork()` was used in the forked child.

    The child has the parent's memory but not its threads: the store's
    connections, queued commits and background work belong to the parent.
    A `SyncStore` opens the store again in the child by itself. An async
    `Store` raises this: open the store again in the child (in its own event
    loop, e.g. in a worker's start-up hook). A transaction, snapshot or scan
    begun before the fork raises this too: begin a new one in the child.
    """


class SyncInAsyncError(KvStoreError, RuntimeError):
    """A blocking `SyncStore` method was called from a thread running an event loop.

    It would block that loop (every other task) until the store answered.
    In async code use the async API, `kvstore.open`; or run the blocking call
    in a worker thread (`asyncio.to_thread`).
    """


class TransactionStateError(KvStoreError):
    """A transaction was used after it committed or was discarded, or misused."""


class NestedTransactionError(TransactionStateError):
    """A transaction on a store was started inside a running `transact` function
    or ``async with db.transaction()`` block on the same store.

    Its commit would be separate from the outer transaction's — made again on
    every retry, and a conflict for the outer one each time. Use the outer
    `tx` (pass it down) for reads and writes that belong to the same
    transaction; start independent transactions before or after it.
    """
