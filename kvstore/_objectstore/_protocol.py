"""The small async object-store protocol every backend implements.

Backends make exactly one attempt per call and translate their native errors
into the classes below (or into public `kvstore` errors for conditions a
retry cannot fix: missing bucket, bad credentials). Retries, backoff and the
resolution of ambiguous conditional writes live one layer up, in
`kvstore._objectstore._retry`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

MAX_DELETE_BATCH = 1000  # names per delete_many: S3 DeleteObjects' limit
LIST_PAGE = 1000  # names per page of a listing: S3 ListObjectsV2's MaxKeys


@dataclass(frozen=True)
class Blob:
    """The body of an object and its ETag (quoted, as S3 returns it).

    `etag` is None for ranged reads of backends that cannot compute it cheaply.
    """

    data: bytes
    etag: str | None


@dataclass(frozen=True)
class ObjectInfo:
    """What a HEAD or a listing tells about an object."""

    name: str
    size: int
    etag: str
    last_modified: float  # seconds since the epoch


class ObjectNotFound(Exception):
    """The object does not exist (404)."""


class PreconditionFailed(Exception):
    """A conditional request's precondition did not hold (412).

    It says the condition fails now, never who made it fail: an earlier
    attempt of the same write, whose answer was lost, may have been applied.
    Callers resolve that (design I5).
    """


class TransientError(Exception):
    """A failure that a retry may cure: 409 conflict, 5xx, throttling, timeout, reset.

    A write that failed this way may still have been applied.
    """


class ObjectStore(Protocol):
    """An object store with conditional writes. Names are '/'-separated keys."""

    @property
    def description(self) -> str:
        """Where the objects live, for messages (never contains credentials)."""
        ...

    async def get(
        self,
        name: str,
        *,
        byte_range: tuple[int, int] | None = None,
        if_none_match: str | None = None,
    ) -> Blob | None:
        """Read an object, or bytes [start, end) of it.

        Returns None when `if_none_match` equals the current ETag (304).
        Raises ObjectNotFound.
        """
        ...

    async def put_if_absent(self, name: str, data: bytes) -> str:
        """Create an object only if none exists (If-None-Match: *). Returns its ETag.

        Raises PreconditionFailed if the object exists.
        """
        ...

    async def put_if_match(self, name: str, data: bytes, etag: str) -> str:
        """Replace an object only if its ETag is `etag` (If-Match). Returns the new ETag.

        Raises PreconditionFailed if the ETag differs, ObjectNotFound if absent.
        """
        ...

    async def copy_if_match(self, source: str, destination: str, etag: str) -> str:
        """Copy `source` to a new object `destination`, only if the source's ETag is
        `etag` (CopySourceIfMatch) and `destination` does not exist (If-None-Match: *).

        Returns the copy's ETag. Raises PreconditionFailed if either condition
        fails, ObjectNotFound if the source is absent.
        """
        ...

    async def start_multipart(self, name: str) -> str:
        """Begin a multipart upload of `name`; returns its upload id."""
        ...

    async def upload_part(self, name: str, upload_id: str, part_number: int, data: bytes) -> str:
        """Upload part `part_number` (1-based; all but the last >= 5 MiB); returns its ETag."""
        ...

    async def complete_multipart_if_absent(self, name: str, upload_id: str, parts: Sequence[tuple[int, str]]) -> str:
        """Assemble the parts into `name` only if it does not exist (If-None-Match: *).

        Returns the object's ETag; raises PreconditionFailed if it exists.
        """
        ...

    async def abort_multipart(self, name: str, upload_id: str) -> None:
        """Discard an unfinished upload and its parts."""
        ...

    async def head(self, name: str) -> ObjectInfo:
        """Describe an object. Raises ObjectNotFound."""
        ...

    def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Every object whose name starts with `prefix`, in name order.

        A backend that lists in requests asks for `LIST_PAGE` names a request: the
        retry layer gives each `LIST_PAGE` names one deadline.
        """
        ...

    async def delete(self, name: str) -> None:
        """Delete an object; deleting a missing object is not an error."""
        ...

    async def delete_many(self, names: Sequence[str]) -> None:
        """Delete these objects (at most `MAX_DELETE_BATCH`); missing ones are not an error.

        One request where the backend has a batch delete. A failure may leave
        any subset deleted: deleting again is harmless.
        """
        ...

    async def close(self) -> None:
        """Release connections. The store is unusable afterwards."""
        ...
