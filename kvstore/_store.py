"""The public asyncio API: `open`, `Store` and `Snapshot`."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, TypeVar

from ._cache import ByteLRU
from ._codec import VALUE_MODES, ValueMode, decode_value, encode_key
from ._commit import Committer
from ._compact import CompactionResult, Compactor, choose_inputs
from ._errors import (
    ClosedError,
    ConflictError,
    CorruptionError,
    KvStoreError,
    StoreNotFoundError,
    UnsupportedFormatError,
    ValidationError,
)
from ._manifest import Manifest
from ._manifest_store import ManifestStore
from ._objectstore import ObjectNotFound, ObjectStore, RetryingObjectStore, S3Options
from ._options import StoreOptions
from ._probe import check_conditional_writes
from ._segment_store import SegmentStore
from ._snapshot import SnapshotView
from ._transaction import Transaction, key_range
from ._url import Location, parse_url

T = TypeVar("T")
_log = logging.getLogger("kvstore")


class Snapshot:
    """A consistent, read-only view of the store at one version.

    Reads through a snapshot are repeatable and cost no manifest requests;
    segment data comes from the cache or from ranged GETs.
    """

    def __init__(self, view: SnapshotView, options: StoreOptions, values: ValueMode) -> None:
        self._view = view
        self._options = options
        self._values = values

    @property
    def version(self) -> int:
        """The store version this snapshot shows."""
        return self._view.version

    async def get(self, key: str | bytes, default: Any = None) -> Any:
        """The value of `key` at this version, or `default`."""
        raw = await self._view.get(encode_key(key, self._options.max_key_bytes))
        return default if raw is None else decode_value(raw, self._values)

    async def scan(
        self,
        prefix: str | bytes | None = None,
        *,
        start: str | bytes | None = None,
        end: str | bytes | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> AsyncIterator[tuple[bytes, Any]]:
        """(key, value) pairs with keys starting with `prefix` and in [start, end), in key order."""
        if limit is not None and limit < 0:
            raise ValidationError(f"limit must be >= 0, not {limit}")
        lo, hi = key_range(self._options, prefix, start, end)
        if limit == 0:
            return
        count = 0
        async for key, raw in self._view.scan(lo, hi, reverse=reverse):
            yield key, decode_value(raw, self._values)
            count += 1
            if limit is not None and count >= limit:
                return


@dataclass
class VerifyReport:
    """What `Store.verify` found: every object checked and every damaged one."""

    version: int
    objects_checked: int = 0
    damaged: dict[str, str] = field(default_factory=dict)  # object name -> what is wrong

    @property
    def ok(self) -> bool:
        return not self.damaged


class Store:
    """An open store. Create it with `kvstore.open(url)`.

    Store-level `get`, `scan` and `snapshot` read the latest version (one
    conditional GET of the manifest each, unless `max_staleness` allows
    reuse); `put` and `delete` are one-write transactions. Use `transaction`
    or `transact` to read and write several keys atomically.
    """

    def __init__(
        self,
        location: Location,
        objects: RetryingObjectStore,
        manifests: ManifestStore,
        options: StoreOptions,
        values: ValueMode,
        read_only: bool,
    ) -> None:
        self.url = location.url
        self.read_only = read_only
        self.options = options
        self._values = values
        self._objects = objects
        self._manifests = manifests
        self._cache = ByteLRU(options.cache_bytes)
        self._segments = SegmentStore(objects, location.prefix, self._cache)
        self._committer = Committer(manifests, self._segments, options, self._after_commit)
        self._compactor = Compactor(manifests, self._segments, options)
        self._background: asyncio.Task[None] | None = None
        self._views: dict[int, SnapshotView] = {}
        self._rng = random.Random()
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"version {self.version}"
        return f"<kvstore.Store {self.url} {state}{' read-only' if self.read_only else ''}>"

    @property
    def version(self) -> int:
        """The newest store version this process has seen (no request)."""
        return self._manifests.current[0].version

    async def get(self, key: str | bytes, default: Any = None) -> Any:
        """The latest value of `key`, or `default` if it is absent."""
        return await (await self.snapshot()).get(key, default)

    async def put(self, key: str | bytes, value: Any) -> int:
        """Write one key; returns the version it committed at."""
        tx = self.transaction()
        tx.put(key, value)
        version = await tx.commit()
        assert version is not None
        return version

    async def delete(self, key: str | bytes) -> int:
        """Delete one key (a missing key is not an error); returns the commit version."""
        tx = self.transaction()
        tx.delete(key)
        version = await tx.commit()
        assert version is not None
        return version

    async def scan(
        self,
        prefix: str | bytes | None = None,
        *,
        start: str | bytes | None = None,
        end: str | bytes | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> AsyncIterator[tuple[bytes, Any]]:
        """(key, value) pairs of the latest version; see `Snapshot.scan`."""
        snapshot = await self.snapshot()
        async for item in snapshot.scan(prefix, start=start, end=end, limit=limit, reverse=reverse):
            yield item

    def transaction(self, *, meta: dict[str, Any] | None = None) -> Transaction:
        """A new serializable transaction; use ``async with``. `meta` is kept in the commit log."""
        self._check_open()
        return Transaction(self._latest_view, self._committer, self.options, self._values, meta, self.read_only)

    async def transact(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run ``await fn(tx, *args, **kwargs)`` in a transaction and commit it,
        retrying from the start on ConflictError (with jittered backoff) up to
        `StoreOptions.transact_max_attempts` times. Returns fn's result.

        `fn` may run more than once: keep side effects out of it.
        """
        attempts = self.options.transact_max_attempts
        for attempt in range(attempts):
            tx = self.transaction()
            try:
                result = await fn(tx, *args, **kwargs)
                await tx.commit()
                return result
            except ConflictError:
                tx.discard()
                if attempt + 1 == attempts:
                    raise
                await asyncio.sleep(self._rng.uniform(0, min(0.5, 0.002 * 2**attempt)))
            except BaseException:
                tx.discard()
                raise
        raise AssertionError("unreachable")

    async def snapshot(self) -> Snapshot:
        """A consistent read-only view of the latest version."""
        return Snapshot(await self._latest_view(), self.options, self._values)

    async def refresh(self) -> int:
        """Fetch the latest manifest now (one conditional GET); returns its version."""
        self._check_open()
        return (await self._manifests.refresh()).version

    def statistics(self) -> dict[str, Any]:
        """Counters: object-store requests by kind, cache use, commits and conflicts."""
        c = self._committer.stats
        return {
            "version": self.version,
            "requests": dict(self._objects.requests),
            "cache": {"bytes": self._cache.size, "hits": self._cache.hits, "misses": self._cache.misses},
            "commits": c.commits,
            "transactions_committed": c.transactions,
            "conflicts": c.conflicts,
            "cas_retries": c.cas_retries,
            "ambiguous_commits_resolved": c.ambiguous_resolved,
        }

    async def verify(self) -> VerifyReport:
        """Read and check every object the latest version references.

        Costs one GET of the manifest and one GET per segment (ranged for large
        ones). Damaged objects are reported, not raised.
        """
        self._check_open()
        try:
            manifest = await self._manifests.refresh()
        except CorruptionError as exc:
            return VerifyReport(self.version, 1, {exc.object_name: str(exc)})
        report = VerifyReport(manifest.version, 1)
        for ref in manifest.segments:
            report.objects_checked += 1
            try:
                await self._segments.read_all(ref)
            except (CorruptionError, UnsupportedFormatError) as exc:
                report.damaged[self._segments.object_name(ref.id)] = str(exc)
            except ObjectNotFound:
                report.damaged[self._segments.object_name(ref.id)] = "missing: referenced by the manifest but absent"
        return report

    async def compact(self, *, full: bool = False) -> list[CompactionResult]:
        """Merge segments until no level is due (or everything into one, with `full`).

        Compaction commits never conflict with transactions. Costs a GET per
        uncached input segment, a PUT per merged segment and a manifest CAS each.
        """
        self._check_open()
        await self._manifests.refresh()
        results = []
        while True:
            result = await self._compactor.compact(full=full)
            if result is None:
                return results
            results.append(result)
            if full:
                return results

    async def close(self) -> None:
        """Finish queued commits and release connections. Idempotent.

        A background compaction in progress is cancelled; its half-done work
        is invisible (an orphan segment for garbage collection).
        """
        if self._closed:
            return
        self._closed = True
        try:
            await self._committer.wait_idle()
            if self._background is not None:
                self._background.cancel()
                await asyncio.wait([self._background])
        finally:
            await self._objects.close()

    def _after_commit(self, manifest: Manifest) -> None:
        if not self.options.auto_compact or self._closed:
            return
        if self._background is not None and not self._background.done():
            return
        if choose_inputs(manifest, self.options.compaction_fanout):
            self._background = asyncio.create_task(self._compact_in_background())

    async def _compact_in_background(self) -> None:
        try:
            while await self._compactor.compact() is not None:
                pass
        except KvStoreError as exc:
            _log.warning("background compaction of %s failed (will retry after a later commit): %s", self.url, exc)

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            warnings.warn(f"{self!r} was never closed; use `async with kvstore.open(...)`", ResourceWarning, stacklevel=1)

    async def _latest_view(self) -> SnapshotView:
        self._check_open()
        manifest = await self._manifests.refresh_if_older_than(self.options.max_staleness)
        view = self._views.get(manifest.version)
        if view is None:
            view = SnapshotView(manifest, self._segments)
            self._views = {manifest.version: view}  # keep only the newest
        return view

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"{self.url} was closed; open it again with kvstore.open()")


class StoreOpener:
    """What `kvstore.open` returns: ``await`` it, or use it with ``async with``."""

    def __init__(self, open_store: Callable[[], Awaitable[Store]]) -> None:
        self._open_store = open_store
        self._store: Store | None = None

    def __await__(self) -> Generator[Any, None, Store]:
        return self._open_store().__await__()

    async def __aenter__(self) -> Store:
        self._store = await self._open_store()
        return self._store

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._store is not None:
            await self._store.close()


def open(  # noqa: A001 - mirrors the builtin on purpose, like aiosqlite.connect
    url: str | os.PathLike[str],
    *,
    create: bool = True,
    read_only: bool = False,
    values: ValueMode = "bytes",
    options: StoreOptions | None = None,
    endpoint_url: str | None = None,
    region_name: str | None = None,
    profile: str | None = None,
    aws_access_key_id: str | None = None,
    aws_secret_access_key: str | None = None,
    aws_session_token: str | None = None,
    s3_options: S3Options | None = None,
    wrap_object_store: Callable[[ObjectStore], ObjectStore] | None = None,
) -> StoreOpener:
    """Open the store at `url`, creating it if it does not exist (unless `create=False`).

    URLs: ``s3://bucket/prefix``, ``file:///absolute/path`` or a plain path,
    ``memory://name`` (tests only). S3 settings default to the AWS chain
    (environment, profile, instance role); `endpoint_url` selects any
    S3-compatible service. `values="msgpack"` stores any msgpack-serializable
    object instead of bytes. `wrap_object_store` wraps the backend (used to
    inject faults in tests).

    Opening costs one GET of the manifest, plus, the first time a process
    opens a store for writing, two or three PUTs that prove the endpoint
    honours conditional writes.
    """
    if values not in VALUE_MODES:
        raise ValidationError(f"values must be one of {VALUE_MODES}, not {values!r}")
    s3 = s3_options or S3Options()
    explicit = {
        "endpoint_url": endpoint_url,
        "region_name": region_name,
        "profile": profile,
        "aws_access_key_id": aws_access_key_id,
        "aws_secret_access_key": aws_secret_access_key,
        "aws_session_token": aws_session_token,
    }
    s3 = replace(s3, **{k: v for k, v in explicit.items() if v is not None})
    location = parse_url(url, s3)
    store_options = options or StoreOptions()

    async def open_store() -> Store:
        backend = location.objects if wrap_object_store is None else wrap_object_store(location.objects)
        objects = RetryingObjectStore(backend, store_options.retry)
        manifests = ManifestStore(objects, location.prefix)
        try:
            try:
                await manifests.refresh()
                exists = True
            except ObjectNotFound:
                if read_only or not create:
                    raise StoreNotFoundError(
                        f"no kvstore at {location.url}: open it with create=True (and not read_only) "
                        "to make one, or check the URL"
                    ) from None
                exists = False
            if not read_only:
                await check_conditional_writes(objects, location.prefix)
            if not exists:
                await manifests.create()
        except BaseException:
            await objects.close()
            raise
        return Store(location, objects, manifests, store_options, values, read_only)

    return StoreOpener(open_store)

