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

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import xxhash

from ._errors import ContentionError, CorruptionError, InvalidValueError, KvStoreError
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


class BinaryReader(Protocol):
    """A binary file-like object: what `Store.put` streams from besides an async iterable."""

    def read(self, n: int = -1, /) -> bytes: ...


# What `Store.put` accepts as a streamed value.
ValueSource = BinaryReader | AsyncIterable[bytes]


def is_stream(value: object) -> bool:
    """Whether `value` is a streamed value (a binary file-like object or an async iterable),
    not a value held whole (bytes, or a Python object of a msgpack store)."""
    if isinstance(value, (bytes, bytearray, memoryview, str)):
        return False
    return callable(getattr(value, "read", None)) or hasattr(value, "__aiter__")


async def _chunks_of(source: ValueSource, size: int) -> AsyncIterator[bytes]:
    """The bytes of `source` in chunks; a file's `read` runs in a thread (it may block)."""
    if hasattr(source, "__aiter__"):
        async for chunk in source:
            if not isinstance(chunk, (bytes, bytearray, memoryview)):
                raise InvalidValueError(
                    f"a streamed value's async iterable yielded {type(chunk).__name__}, not bytes: yield bytes"
                )
            yield bytes(chunk)
        return
    read: Callable[[int], Any] = source.read
    while True:
        chunk = await asyncio.to_thread(read, size)
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise InvalidValueError(
                f"a streamed value's read() returned {type(chunk).__name__}, not bytes: open the file in binary mode"
            )
        if not chunk:
            return
        yield bytes(chunk)


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

    async def write_stream(self, source: ValueSource, max_bytes: int, key: bytes) -> tuple[ValueRef, float]:
        """Safe-create a new value object from the bytes `source` gives, uploaded as they
        are read: parts of VALUE_PART_BYTES, VALUE_PARTS_IN_FLIGHT at a time, so memory
        holds about VALUE_PARTS_IN_FLIGHT + 3 parts (in flight, being filled, one read) whatever the value's length (a value
        under one part is one PUT, If-None-Match: *). Past `max_bytes` the upload is
        aborted and InvalidValueError raised (nothing is committed; a part left behind is
        never part of the store). Returns the reference and time.monotonic() before the
        upload began (its objects' age for the commit's grace-period check, I8)."""
        written_at = time.monotonic()
        ref_id = new_object_id()
        name = self._layout.value(ref_id)
        part_bytes = VALUE_PART_BYTES
        upload = PartUploads(self._objects, name, VALUE_PARTS_IN_FLIGHT)
        digest = xxhash.xxh3_64()
        size = 0
        pending = bytearray()
        try:
            async for chunk in _chunks_of(source, part_bytes):
                size += len(chunk)
                if size > max_bytes:
                    raise InvalidValueError(
                        f"the value streamed to key {key!r} is over the {max_bytes}-byte limit "
                        "(StoreOptions.max_value_bytes); nothing was written: raise the limit "
                        "or split the value across keys"
                    )
                digest.update(chunk)
                pending += chunk
                # keep the last part back: it is the evidence `complete_checked` compares
                while len(pending) > part_bytes:
                    await upload.send(bytes(pending[:part_bytes]))
                    del pending[:part_bytes]
            tail = bytes(pending)
            ref = ValueRef(ref_id, size, digest.intdigest())
            if upload.upload_id is None:
                await self._objects.put_if_absent(name, tail)
                return ref, written_at
            await upload.send(tail)
            await complete_checked(self._objects, name, upload.upload_id, await upload.parts(), tail, size)
        except BaseException:
            await upload.abort()
            raise
        return ref, written_at

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
        starts = list(range(0, ref.length, step or 1))
        # the last range asks one byte past the end (a range starting there would be a 416)
        ends = [*starts[1:], ref.length + 1]
        ranges = list(zip(starts, ends, strict=False))  # none for an empty value
        try:
            if not ranges:  # an empty value (streamed): no range to ask, a plain GET
                blob = await self._objects.get(name)
                assert blob is not None
                pieces = [blob.data]
            else:
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

    async def stream(self, ref: ValueRef, key: bytes, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Bytes [start, end) of the value `ref` names (clipped to its length), in order, as
        chunks of up to VALUE_PART_BYTES: ranged GETs, VALUE_PARTS_IN_FLIGHT ahead of the
        consumer. The whole value (start 0, end None) is checked against the reference's
        length and checksum once its last chunk is read (CorruptionError then, after the
        chunks before it were given out); a part of it can only be checked for length."""
        whole = start == 0 and (end is None or end >= ref.length)
        end = ref.length if end is None else min(end, ref.length)
        if start >= end:
            return
        name = self.object_name(ref)
        get = self._get_range(name)
        starts = list(range(start, end, VALUE_PART_BYTES))
        ranges = [(s, min(s + VALUE_PART_BYTES, end)) for s in starts]
        if whole:  # the last range asks one byte past the end, so a longer object shows
            ranges[-1] = (ranges[-1][0], end + 1)
        digest = xxhash.xxh3_64()
        size = 0
        ahead: list[asyncio.Task[bytes]] = []
        try:
            for i in range(len(ranges)):
                while len(ahead) < VALUE_PARTS_IN_FLIGHT and i + len(ahead) < len(ranges):
                    ahead.append(asyncio.ensure_future(get(ranges[i + len(ahead)])))
                try:
                    chunk = await ahead.pop(0)
                except ObjectNotFound:
                    await self.read(ref, key)  # raises the missing object's CorruptionError
                    raise AssertionError("unreachable") from None
                size += len(chunk)
                if whole:
                    digest.update(chunk)
                elif len(chunk) != ranges[i][1] - ranges[i][0]:
                    raise self._damaged(ref, key, size, None)
                if whole and i == len(ranges) - 1 and (size != ref.length or digest.intdigest() != ref.checksum):
                    raise self._damaged(ref, key, size, digest.intdigest())
                yield chunk
        finally:
            for task in ahead:
                task.cancel()
            await asyncio.gather(*ahead, return_exceptions=True)

    def _damaged(self, ref: ValueRef, key: bytes, size: int, digest: int | None) -> CorruptionError:
        name = self.object_name(ref)
        found = f"{size} bytes" if digest is None else f"{size} bytes with checksum {digest:016x}"
        return CorruptionError(
            f"the value of key {key!r} (out of line in {name}) is damaged: read {found}, while its segment "
            f"entry records {ref.length} bytes with checksum {ref.checksum:016x}. Discard what was read; "
            "run `Store.verify()`; restore the object from a backup or a replica, or write the key again",
            object_name=name,
        )

    async def check(self, ref: ValueRef) -> str | None:
        """Why the value object of `ref` is damaged, or None if it reads back whole (verify)."""
        try:
            await self.read(ref, b"")
        except CorruptionError as exc:
            return str(exc)
        except KvStoreError as exc:
            return f"unreadable: {exc}"
        return None
