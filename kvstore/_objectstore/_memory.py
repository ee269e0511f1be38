"""An in-process object store, for fast unit tests only.

Stores opened with the same name in one process share their objects, so
`memory://name` behaves like one bucket seen by several clients.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from ._etag import content_etag
from ._protocol import Blob, ObjectInfo, ObjectNotFound, PreconditionFailed


@dataclass
class _Object:
    data: bytes
    etag: str
    last_modified: float


_BUCKETS: dict[str, dict[str, _Object]] = {}
_UPLOADS: dict[str, dict[int, bytes]] = {}


class MemoryObjectStore:
    """Objects in a dict. Every call completes without awaiting, so it is atomic."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._objects = _BUCKETS.setdefault(name, {})

    @property
    def description(self) -> str:
        return f"memory://{self._name}"

    async def get(
        self,
        name: str,
        *,
        byte_range: tuple[int, int] | None = None,
        if_none_match: str | None = None,
    ) -> Blob | None:
        obj = self._lookup(name)
        if if_none_match is not None and if_none_match == obj.etag:
            return None
        data = obj.data if byte_range is None else obj.data[byte_range[0] : byte_range[1]]
        return Blob(data, obj.etag)

    async def put_if_absent(self, name: str, data: bytes) -> str:
        if name in self._objects:
            raise PreconditionFailed(f"{name} exists")
        return self._store(name, data)

    async def put_if_match(self, name: str, data: bytes, etag: str) -> str:
        if self._lookup(name).etag != etag:
            raise PreconditionFailed(f"{name} changed")
        return self._store(name, data)

    async def copy_if_match(self, source: str, destination: str, etag: str) -> str:
        obj = self._lookup(source)
        if obj.etag != etag or destination in self._objects:
            raise PreconditionFailed(f"copy {source} -> {destination}: precondition failed")
        return self._store(destination, obj.data)

    async def start_multipart(self, name: str) -> str:
        upload_id = uuid.uuid4().hex
        _UPLOADS[upload_id] = {}
        return upload_id

    async def upload_part(self, name: str, upload_id: str, part_number: int, data: bytes) -> str:
        _UPLOADS[upload_id][part_number] = bytes(data)
        return content_etag(data)

    async def complete_multipart_if_absent(self, name: str, upload_id: str, parts: Sequence[tuple[int, str]]) -> str:
        if name in self._objects:
            raise PreconditionFailed(f"{name} exists")
        if upload_id not in _UPLOADS:
            raise ObjectNotFound(f"no upload {upload_id} for {name}")
        uploaded = _UPLOADS.pop(upload_id)
        return self._store(name, b"".join(uploaded[n] for n, _ in parts))

    async def abort_multipart(self, name: str, upload_id: str) -> None:
        _UPLOADS.pop(upload_id, None)

    async def head(self, name: str) -> ObjectInfo:
        obj = self._lookup(name)
        return ObjectInfo(name, len(obj.data), obj.etag, obj.last_modified)

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        for name in sorted(n for n in self._objects if n.startswith(prefix)):
            obj = self._objects.get(name)
            if obj is not None:
                yield ObjectInfo(name, len(obj.data), obj.etag, obj.last_modified)

    async def delete(self, name: str) -> None:
        self._objects.pop(name, None)

    async def delete_many(self, names: Sequence[str]) -> None:
        for name in names:
            self._objects.pop(name, None)

    async def close(self) -> None:
        pass

    def _lookup(self, name: str) -> _Object:
        try:
            return self._objects[name]
        except KeyError:
            raise ObjectNotFound(name) from None

    def _store(self, name: str, data: bytes) -> str:
        etag = content_etag(data)
        self._objects[name] = _Object(bytes(data), etag, time.time())
        return etag
