"""Out-of-line value objects: writing them (safe create) and reading them back, verified.

A value object `<prefix>values/<id>.val` holds exactly the bytes of one value
and is never changed. It is written before the commit that references it
(`Engine.commit`), so a commit never names an object that is not there;
one written for a commit that never lands is garbage that `_gc.py` deletes
once it is older than the grace period, like an uncommitted segment.

Writes: up to MULTIPART_MIN_BYTES, one PUT with If-None-Match: * (the retry
layer reads a 412's object back: equal bytes mean our own earlier attempt);
larger ones, a multipart upload of VALUE_PART_BYTES parts, VALUE_PARTS_IN_FLIGHT
at a time, completed with If-None-Match: * (a 412 or a vanished upload is
decided by the object's tail, `complete_checked`). Measured on LocalStack and
the local filesystem (bench/large_values.py), one PUT of 64 MiB is as fast as
parallel parts or faster (the local backend writes parts twice), so parts
start above that: S3's single PUT stops at 5 GB, and a failed part is resent
alone.

Reads: one GET of the whole object as the range [0, length + 1): as fast as a
plain GET on LocalStack (1.01 s against 1.00 s for 64 MiB, medians of 5), and
a backend computes no ETag for a range, where the local one would MD5 the
whole value. A value of MULTIPART_MIN_BYTES or more is read as ranged GETs of
VALUE_PART_BYTES, VALUE_PARTS_IN_FLIGHT at a time. Either way the last range
asks one byte past the end, so an object longer than the reference shows. The
value is then checked against the reference's length and checksum. Values are not cached (a single large value would evict the
block cache's indexes and blocks): every read of one is a GET.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ._errors import ContentionError, CorruptionError, KvStoreError
from ._layout import Layout, new_object_id
from ._objectstore import ObjectNotFound, PreconditionFailed, RetryingObjectStore
from ._segment_store import PartUploads, complete_checked
from ._tasks import run_bounded
from ._value_refs import ValueRef, checksum

# Larger values go up as multipart uploads: parallel parts beat one PUT's stream.
MULTIPART_MIN_BYTES = 64 * 1024 * 1024 + 1
VALUE_PART_BYTES = 16 * 1024 * 1024  # S3 needs >= 5 MiB for every part but the last
VALUE_PARTS_IN_FLIGHT = 4
# S3 allows at most 10,000 parts: with 16 MiB parts that is 156 GiB, above any value limit.


class ValueStore:
    """The out-of-line values of one store."""

    def __init__(self, objects: RetryingObjectStore, layout: Layout) -> None:
        self._objects = objects
        self._layout = layout

    def object_name(self, ref: ValueRef) -> str:
        return self._layout.value(ref.id)

    async def write(self, data: bytes) -> ValueRef:
        """Safe-create a new value object holding `data`; its reference (I1)."""
        ref = ValueRef(new_object_id(), len(data), checksum(data))
        name = self.object_name(ref)
        if len(data) < MULTIPART_MIN_BYTES:
            await self._objects.put_if_absent(name, data)
            return ref
        upload = PartUploads(self._objects, name, VALUE_PARTS_IN_FLIGHT)
        view = memoryview(data)
        try:
            for start in range(0, len(data), VALUE_PART_BYTES):
                await upload.send(bytes(view[start : start + VALUE_PART_BYTES]))
            assert upload.upload_id is not None
            last = len(data) - (len(data) - 1) % VALUE_PART_BYTES - 1
            await complete_checked(self._objects, name, upload.upload_id, await upload.parts(), data[last:], len(data))
        except BaseException:
            await upload.abort()
            raise
        return ref

    async def copy_from(self, source: ValueStore, ref: ValueRef, key: bytes) -> ValueRef:
        """A new value object of this store holding what `ref` names in `source` (another
        partition's values), copied server-side: one HEAD and one COPY (CopySourceIfMatch,
        If-None-Match: *), no value bytes sent or received. Its reference: a new id, the
        same length and checksum. Each partition so owns every value object it references,
        and GC of one never deletes what another references."""
        name = source.object_name(ref)
        copy = ValueRef(new_object_id(), ref.length, ref.checksum)
        destination = self.object_name(copy)
        try:
            info = await self._objects.head(name)
            if info.size != ref.length:
                raise CorruptionError(
                    f"the value of key {key!r} (out of line in {name}) is {info.size} bytes while its segment "
                    f"entry records {ref.length}: run `Store.verify()`",
                    object_name=name,
                )
            await self._objects.copy_if_match(name, destination, info.etag)
        except ObjectNotFound:
            await self.read(ref, key)  # raises the missing object's CorruptionError
            raise AssertionError("unreachable") from None
        except PreconditionFailed:
            # The name is fresh and the source never changes: the copy is there only if an
            # attempt of ours whose answer was lost made it.
            try:
                made: int | None = (await self._objects.head(destination)).size
            except ObjectNotFound:
                made = None
            if made != ref.length:
                raise ContentionError(
                    f"copying the value of key {key!r} ({name}) to {destination} was refused; retry the operation"
                ) from None
        return copy

    async def read(self, ref: ValueRef, key: bytes) -> bytes:
        """The value `ref` names, checked; CorruptionError if missing or damaged."""
        name = self.object_name(ref)
        step = VALUE_PART_BYTES if ref.length >= MULTIPART_MIN_BYTES else ref.length
        starts = list(range(0, ref.length, step))
        # the last range asks one byte past the end (a range starting there would be a 416)
        ends = [*starts[1:], ref.length + 1]
        ranges = list(zip(starts, ends, strict=True))
        try:
            pieces = await run_bounded(self._get_range(name), ranges, VALUE_PARTS_IN_FLIGHT)
        except ObjectNotFound:
            raise CorruptionError(
                f"the value of key {key!r} is stored out of line in {name}, which is missing: it was "
                "deleted outside kvstore (or by a GC with a grace period shorter than a reader's "
                "snapshot). Run `Store.verify()` to list what else is damaged; restore the object from "
                "a backup or a replica, or write the key again",
                object_name=name,
            ) from None
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        if len(data) != ref.length or checksum(data) != ref.checksum:
            raise CorruptionError(
                f"the value of key {key!r} (out of line in {name}) is damaged: {len(data)} bytes with "
                f"checksum {checksum(data):016x}, while its segment entry records {ref.length} bytes with "
                f"checksum {ref.checksum:016x}. Run `Store.verify()`; restore the object from a backup "
                "or a replica, or write the key again",
                object_name=name,
            )
        return data

    def _get_range(self, name: str) -> Callable[[tuple[int, int]], Awaitable[bytes]]:
        async def get(byte_range: tuple[int, int]) -> bytes:
            blob = await self._objects.get(name, byte_range=byte_range)
            assert blob is not None
            return blob.data

        return get

    async def read_range(self, ref: ValueRef, key: bytes, start: int, end: int) -> bytes:
        """Bytes [start, end) of the value `ref` names (clipped to its length): one ranged
        GET. A range cannot be checked against the whole value's checksum; its length is."""
        end = min(end, ref.length)
        if start >= end:
            return b""
        name = self.object_name(ref)
        try:
            blob = await self._objects.get(name, byte_range=(start, end))
        except ObjectNotFound:
            return await self.read(ref, key)  # raises the missing object's CorruptionError
        assert blob is not None
        if len(blob.data) != end - start:
            raise CorruptionError(
                f"the value of key {key!r} (out of line in {name}) is shorter than its segment entry's "
                f"{ref.length} bytes: run `Store.verify()`",
                object_name=name,
            )
        return blob.data

    async def check(self, ref: ValueRef) -> str | None:
        """Why the value object of `ref` is damaged, or None if it reads back whole (verify)."""
        try:
            await self.read(ref, b"")
        except CorruptionError as exc:
            return str(exc)
        except KvStoreError as exc:
            return f"unreadable: {exc}"
        return None
