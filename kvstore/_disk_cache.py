"""An optional on-disk cache of segment bytes (`StoreOptions.cache_dir`).

Segments never change once written, so bytes fetched from the object store
can be kept on local disk and reused across processes and restarts: a large
store's working set then costs its GETs once per machine, not once per
process. Storage and eviction are `diskcache`'s (SQLite index, files for
large values, safe for many processes, bounded by `cache_dir_bytes`); this
module only frames each entry with a checksum, so a damaged cache file is a
miss (refetched), never a `CorruptionError` blamed on the object store.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import struct
from typing import Any

import xxhash

from ._errors import ValidationError

_CHECKSUM = struct.Struct("<Q")
_log = logging.getLogger("kvstore")


class DiskCache:
    """Immutable byte strings by key, on disk, bounded in size."""

    def __init__(self, directory: str, size_limit: int) -> None:
        try:
            import diskcache
        except ImportError:
            raise ValidationError(
                "StoreOptions.cache_dir needs the diskcache package: pip install 'kvstore[disk-cache]'"
            ) from None
        try:
            # LRU by access, not by insertion: a hot block must outlive a one-off scan.
            self._cache: Any = diskcache.Cache(directory, size_limit=size_limit, eviction_policy="least-recently-used")
        except (OSError, sqlite3.Error) as exc:
            raise ValidationError(
                f"cannot use cache_dir {directory!r}: {exc}; point it at a writable directory"
            ) from exc

    async def get(self, key: str) -> bytes | None:
        """The bytes stored under `key`, or None (absent, evicted, damaged, or the disk failed)."""
        try:
            framed = await asyncio.to_thread(self._cache.get, key)
        except (OSError, sqlite3.Error) as exc:
            _log.warning("disk cache read failed, fetching from the store instead: %s", exc)
            return None
        if not isinstance(framed, bytes) or len(framed) < _CHECKSUM.size:
            return None
        data, trailer = framed[: -_CHECKSUM.size], framed[-_CHECKSUM.size :]
        if xxhash.xxh3_64_intdigest(data) != _CHECKSUM.unpack(trailer)[0]:
            await asyncio.to_thread(self._cache.delete, key)
            return None
        return data

    async def put(self, key: str, data: bytes) -> None:
        """Keep `data` under `key`; a full or failing disk only costs the caching."""
        framed = data + _CHECKSUM.pack(xxhash.xxh3_64_intdigest(data))
        try:
            await asyncio.to_thread(self._cache.set, key, framed)
        except (OSError, sqlite3.Error) as exc:
            _log.warning("disk cache write failed (the read itself succeeded): %s", exc)

    def close(self) -> None:
        self._cache.close()
