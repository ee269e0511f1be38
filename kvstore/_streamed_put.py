"""`Store.put` of a streamed value: its value object uploaded as it is read, then one commit.

The value is always stored out of line, whatever its length (`ValueStore.write_stream`:
parts uploaded as they are read, so memory is bounded by a few parts, not the value).
The commit is a blind write of the one key, as `Store.put` of bytes is, holding the
reference. A split of the key's partition between the upload and the commit routes the
commit to the partition now holding the key, and the value object is copied there
server-side first (each partition owns the value objects it references; the stream
itself cannot be read twice).
"""

from __future__ import annotations

import time

from ._commit import CommitRequest
from ._errors import PartitionMovedError, TransactionTooOldError
from ._options import grace_period_of
from ._router import MAX_REDIRECTS, Router
from ._value_store import ValueSource

# `Store.put` with a streamed value, on a store whose values are not bytes.
NOT_BYTES = (
    "a streamed value (a binary file-like object or an async iterable of bytes) can be put only on a "
    "store with values='bytes': this one records values={values!r}, whose values are checked whole "
    "when put; read the value into memory and put it, or keep large binary values in a values='bytes' store"
)


async def put_stream(router: Router, key: bytes, source: ValueSource, max_bytes: int) -> int:
    """Upload the bytes of `source` as a value object of `key`'s partition, then commit
    `key` -> its reference; the commit's version. Lost answers and refusals of the upload
    follow the value objects' rules (`ValueStore.write_stream`), the commit's the
    committer's; an upload that fails or runs past `max_bytes` commits nothing."""
    part, engine = router.engine_for(key)
    values = engine.values
    ref, written_at = await values.write_stream(source, max_bytes, key)
    grace_period = grace_period_of(engine.options)
    if (took := time.monotonic() - written_at) > grace_period / 2:
        # The committer would refuse it too (I8), saying "retry": a stream cannot be.
        raise TransactionTooOldError(
            f"the value streamed to key {key!r} took {took:.0f} s to upload, over half the GC grace "
            f"period ({grace_period:.0f} s), so GC may already have deleted its object (I8); nothing was "
            "committed: put it again, opening the store with a longer StoreOptions.segment_grace_period "
            "if the upload is that slow"
        )
    for _ in range(MAX_REDIRECTS):
        request = CommitRequest(
            txn_id=engine.new_txn_id(),
            read_version=None,
            started=time.monotonic(),
            read_keys=set(),
            read_ranges=[],
            writes={key: ref},
            values="bytes",
            values_written_at=written_at,
        )
        try:
            return await engine.commit(request)
        except PartitionMovedError:
            await router.redirect(part.pid)  # a blind write: follow the split and route again
            part, engine = router.engine_for(key)
            if engine.values is not values:
                written_at = time.monotonic()
                ref = await engine.values.copy_from(values, ref, key)
                values = engine.values
    raise PartitionMovedError(f"the partitions kept splitting under the put of key {key!r}; retry it")
