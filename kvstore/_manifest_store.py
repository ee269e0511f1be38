"""Reading, creating and compare-and-swapping the manifest object."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Generic, TypeVar

from ._cas import read_modify_cas
from ._layout import Layout
from ._manifest import (
    GRACE_SETTING,
    MOVED_SETTING,
    CommitRecord,
    Manifest,
    decode_manifest,
    encode_manifest,
    recorded_grace_period,
)
from ._objectstore import PreconditionFailed, RetryingObjectStore

T = TypeVar("T")


class ManifestStore:
    """The manifest at `<prefix>manifest` and the newest copy this process has seen.

    `current` only moves forward: versions strictly increase (I3), so a copy
    with a higher version is always the newer one.
    """

    def __init__(self, objects: RetryingObjectStore, layout: Layout) -> None:
        self._objects = objects
        self.name = layout.manifest
        self._manifest: Manifest | None = None
        self._etag = ""
        self.fetched_at = float("-inf")  # monotonic time the last fetch started
        self._refresh = _Coalescer(self._fetch)
        # Held by whoever is building and CASing a new manifest in this process
        # (the committer, a compaction): they take turns instead of failing each
        # other's CAS with 412s. Fair (FIFO), so neither starves the other.
        self.writing = asyncio.Lock()

    @property
    def current(self) -> tuple[Manifest, str]:
        """The newest manifest seen and its ETag."""
        assert self._manifest is not None, "load() first"
        return self._manifest, self._etag

    async def create(self, settings: dict[str, Any]) -> Manifest:
        """Create an empty store (safe create), or read the one a racing process made."""
        fresh = Manifest(store_id=uuid.uuid4().hex, version=0, created=time.time(), settings=settings)
        try:
            etag = await self._objects.put_if_absent(self.name, encode_manifest(fresh))
        except PreconditionFailed:
            return await self.refresh()  # another process created it first
        self.install(fresh, etag)
        return fresh

    async def settle_empty(self, settings: dict[str, Any], log_length: int) -> Manifest:
        """Record `settings` in a store that has never committed data
        (`Manifest.never_written`), as its next version.

        Safe only there: no data exists that was written under other
        settings (a commit under way elsewhere is checked against the codec
        of the manifest it lands on, `Committer`). Returns the latest
        manifest, which records other settings if another process committed first.
        """
        async with self.writing:
            manifest, etag = self.current
            if not manifest.never_written:
                return manifest
            new = _with_settings(manifest, settings, log_length)
            try:
                await self.compare_and_swap(new, etag)
            except PreconditionFailed:
                return await self.refresh()  # another process committed (or ours landed): read which
            return new

    async def raise_grace_period(self, seconds: float, log_length: int) -> Manifest:
        """Make the store record a writers' grace period of at least `seconds` (one settings
        commit, unless it already does); returns the latest manifest.

        The record only ever rises, so GC (which never applies less than it) keeps the
        segments of this writer's commits in flight for as long as its I8 allows them.
        A CAS whose answer was lost is recognised by the record it left (idempotent).
        """

        async def load(fresh: bool) -> tuple[Manifest, str]:
            if fresh:
                await self.refresh()
            return self.current

        async def write(state: tuple[Manifest, str]) -> Manifest:
            manifest, etag = state
            recorded = recorded_grace_period(manifest)
            if recorded is not None and recorded >= seconds:
                return manifest
            await self.compare_and_swap(_with_settings(manifest, {GRACE_SETTING: seconds}, log_length), etag)
            return self.current[0]

        async with self.writing:
            return await read_modify_cas("recording the store's grace period", load, write)

    async def seal(self, moved: dict[str, Any], log_length: int) -> Manifest | None:
        """Record `moved` (`MOVED_SETTING`) as the partition's final commit; returns that
        final manifest. Idempotent: a seal already recorded (by this split, its lost-answer
        retry, or a rival finishing the same split) is returned as it is. None, sealing
        nothing, while the manifest holds intents of cross-partition transactions: a split
        copies only what is decided (`Engine.seal` resolves them first)."""

        async def load(fresh: bool) -> tuple[Manifest, str]:
            await self.refresh()
            return self.current

        async def write(state: tuple[Manifest, str]) -> Manifest | None:
            manifest, etag = state
            if manifest.settings.get(MOVED_SETTING) is not None:
                return manifest
            if manifest.intents:
                return None
            await self.compare_and_swap(_with_settings(manifest, {MOVED_SETTING: moved}, log_length), etag)
            return self.current[0]

        async with self.writing:
            return await read_modify_cas("sealing a partition for a split", load, write)

    async def refresh(self) -> Manifest:
        """The latest manifest: one conditional GET (304 and no body if unchanged).

        Raises ObjectNotFound if there is no manifest. Concurrent callers share fetches; each gets one started after its call.
        """
        return await self._refresh()

    async def refresh_if_older_than(self, max_staleness: float) -> Manifest:
        if time.monotonic() - self.fetched_at > max_staleness or self._manifest is None:
            return await self.refresh()
        return self._manifest

    async def compare_and_swap(self, new: Manifest, etag: str) -> str:
        """Replace the manifest if its ETag is still `etag`. One PUT with If-Match.

        Raises PreconditionFailed when it changed, possibly by an earlier attempt of
        this very write whose answer was lost: the caller must look for its own
        commit before concluding otherwise (I5).
        """
        new_etag = await self._objects.put_if_match(self.name, encode_manifest(new), etag)
        self.install(new, new_etag)
        return new_etag

    def install(self, manifest: Manifest, etag: str) -> None:
        if self._manifest is None or manifest.version > self._manifest.version:
            self._manifest, self._etag = manifest, etag

    async def _fetch(self) -> Manifest:
        self.fetched_at = time.monotonic()
        known = self._etag if self._manifest is not None else None
        blob = await self._objects.get(self.name, if_none_match=known)
        if blob is None:  # 304: unchanged
            assert self._manifest is not None
            return self._manifest
        assert blob.etag is not None
        self.install(decode_manifest(blob.data, self._objects.description + "/" + self.name), blob.etag)
        assert self._manifest is not None
        return self._manifest


class _Coalescer(Generic[T]):
    """Shares calls of `fetch` among concurrent callers.

    A caller joins the fetch that starts next if one is already running, so
    the result it gets was fetched after it asked (no stale joins).
    """

    def __init__(self, fetch: Callable[[], Awaitable[T]]) -> None:
        self._fetch = fetch
        self._running: asyncio.Future[T] | None = None
        self._queued: asyncio.Future[T] | None = None

    async def __call__(self) -> T:
        if self._running is None:
            self._running = asyncio.ensure_future(self._run(None))
            self._running.add_done_callback(_retrieve)
            return await asyncio.shield(self._running)
        if self._queued is None:
            self._queued = asyncio.ensure_future(self._run(self._running))
            self._queued.add_done_callback(_retrieve)
        return await asyncio.shield(self._queued)

    async def _run(self, after: asyncio.Future[T] | None) -> T:
        if after is not None:
            await asyncio.wait([after])
            self._running, self._queued = self._queued, None
        try:
            return await self._fetch()
        finally:
            if self._queued is None:
                self._running = None
            # else: the queued fetch takes over `_running` when it wakes.


def _retrieve(done: asyncio.Future[Any]) -> None:
    """Mark a shared fetch's failure retrieved: its waiters may all have been cancelled
    (they wait through `shield`), and asyncio would log "Task exception was never retrieved"."""
    if not done.cancelled():
        done.exception()


def _with_settings(manifest: Manifest, settings: dict[str, Any], log_length: int) -> Manifest:
    """`manifest` with `settings` recorded, as the next version: a commit that writes no key."""
    record = CommitRecord(
        version=manifest.version + 1,
        time=time.time(),
        txn_ids=(os.urandom(16),),
        segment_id=None,
        key_count=0,
        min_key=b"",
        max_key=b"",
        keys=(),
        meta={"settings": settings},
        txn_count=0,
    )
    return replace(manifest.with_commit(record, log_length), settings={**manifest.settings, **settings})
