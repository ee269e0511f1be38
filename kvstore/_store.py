"""The public asyncio API: `open`, `Store` and `Snapshot`."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import random
import time
import warnings
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Sequence,
)
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, TypeVar, overload

from ._bulk import ChunkBuffer, ChunkUploads, encoded_batches
from ._cache import ByteLRU
from ._codec import VALUE_MODES, ValueMode, decode_value, encode_key, value_mode
from ._commit import CommitRequest, Committer
from ._compact import CompactionResult, Compactor, choose_inputs
from ._disk_cache import DiskCache
from ._errors import (
    ClosedError,
    ConflictError,
    CorruptionError,
    ReadOnlyError,
    StoreNotFoundError,
    UnsupportedFormatError,
    ValidationError,
    VersionNotRetainedError,
)
from ._gc import GarbageCollector, GcReport
from ._layout import Layout
from ._manifest import CommitRecord, Manifest
from ._manifest_store import ManifestStore
from ._nesting import enter, leave, refuse_nested, retryable
from ._objectstore import (
    ObjectNotFound,
    ObjectStore,
    RetryingObjectStore,
    S3Options,
)
from ._options import StoreOptions
from ._probe import check_conditional_writes
from ._segment_store import SegmentStore
from ._snapshot import SnapshotView
from ._tags import Tag, TagStore
from ._transaction import Transaction, key_range
from ._url import Location, parse_url

T = TypeVar("T")
_log = logging.getLogger("kvstore")
# `verify` reads each small segment whole once, then its blocks from this.
_VERIFY_CACHE_BYTES = 2 * 1024 * 1024


class Snapshot:
    """A consistent, read-only view of the store at one version.

    Reads through a snapshot are repeatable and cost no manifest requests;
    segment data comes from the cache or from ranged GETs.
    """

    def __init__(self, view: SnapshotView, options: StoreOptions, values: ValueMode, url: str) -> None:
        self._view = view
        self._options = options
        self._values = values
        self._url = url

    @property
    def version(self) -> int:
        """The store version this snapshot shows."""
        return self._view.version

    async def get(self, key: str | bytes, default: Any = None) -> Any:
        """The value of `key` at this version, or `default`."""
        k = encode_key(key, self._options.max_key_bytes)
        raw = await self._view.get(k)
        return default if raw is None else decode_value(raw, self._values, k, self._url)

    def scan(
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
        pairs = self._view.scan(lo, hi, reverse=reverse)
        if self._values == "bytes" and limit is None:
            return pairs  # no per-pair work to add: hand out the view's iterator itself
        return self._decoded(pairs, limit)

    async def _decoded(self, pairs: AsyncIterator[tuple[bytes, bytes]], limit: int | None) -> AsyncIterator[tuple[bytes, Any]]:
        if limit == 0:
            return
        count = 0
        values, url = self._values, self._url
        async for key, raw in pairs:
            yield key, decode_value(raw, values, key, url)
            count += 1
            if limit is not None and count >= limit:
                return


@dataclass(frozen=True)
class StoreInfo:
    """A summary of a store, from its manifest (`Store.describe`).

    `entries` counts stored entries, including shadowed versions and
    tombstones not yet compacted away: an upper bound on the number of keys.
    """

    url: str
    store_id: str
    created: float
    version: int
    oldest_readable_version: int
    segments: int
    segment_bytes: int
    entries: int
    segments_per_level: dict[int, int]
    commit_log_length: int


@dataclass
class VerifyReport:
    """What `Store.verify` found: every object checked and every damaged one."""

    version: int
    objects_checked: int = 0
    damaged: dict[str, str] = field(default_factory=dict)  # object name -> what is wrong

    @property
    def ok(self) -> bool:
        """True when nothing damaged or missing was found."""
        return not self.damaged


@dataclass(frozen=True)
class CommitInfo:
    """One commit, as `Store.history` reports it."""

    version: int
    time: float  # seconds since the epoch
    kind: str  # "commit", "compaction", "gc" or "settings" (values= recorded in an empty store)
    transactions: int
    key_count: int
    meta: list[dict[str, Any] | None] | None  # per transaction, as given to `transaction(meta=...)`

    @classmethod
    def from_record(cls, record: CommitRecord) -> CommitInfo:
        """The public view of one commit-log record."""
        meta = record.meta or {}
        kind = next((k for k in ("compaction", "gc", "settings") if k in meta), "commit")
        return cls(record.version, record.time, kind, record.txn_count, record.key_count, meta.get("txns"))


@dataclass(frozen=True)
class Change:
    """A commit seen by `Store.watch`: its version and the watched keys it wrote.

    `keys` is None when the commit wrote too many keys for the log to list
    them; rescan the watched range then.
    """

    version: int
    time: float
    keys: list[bytes] | None


def _changed_keys(record: CommitRecord, lo: bytes | None, hi: bytes | None) -> list[bytes] | None:
    """The keys of `record` inside [lo, hi): None if it wrote nothing there."""
    if record.key_count == 0:
        return None
    if record.keys is None:
        overlaps = (lo is None or record.max_key >= lo) and (hi is None or record.min_key < hi)
        return [] if overlaps else None
    inside = [k for k in record.keys if (lo is None or k >= lo) and (hi is None or k < hi)]
    return inside or None


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
        self._store_id = manifests.current[0].store_id
        self.options = options
        self._values = values
        self._objects = objects
        self._manifests = manifests
        self._cache = ByteLRU(options.cache_bytes)
        self._disk_cache = None if options.cache_dir is None else DiskCache(options.cache_dir, options.cache_dir_bytes)
        self._layout = Layout(location.prefix)
        self._segments = SegmentStore(objects, self._layout, self._cache, self._disk_cache)
        self._committer = Committer(manifests, self._segments, options, self._after_commit)
        self._compactor = Compactor(manifests, self._segments, options)
        self._tags = TagStore(objects, self._layout)
        self._gc = GarbageCollector(objects, manifests, self._tags, self._layout)
        self._last_gc = time.monotonic()
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
        """A new serializable transaction; use ``async with``. `meta` is kept in the commit log.

        Raises NestedTransactionError inside a `transact` function or an
        ``async with db.transaction()`` block on the same store in the same
        task (use that `tx`); store-level `put` and `delete` are refused there too.
        """
        self._check_open()
        refuse_nested(self._store_id, self.url)
        return Transaction(
            self._latest_view,
            self._committer,
            self.options,
            self._values,
            meta,
            self.read_only,
            url=self.url,
            store_id=self._store_id,
        )

    @overload
    async def transact(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T: ...

    @overload
    async def transact(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...

    async def transact(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(tx, *args, **kwargs)`` in a transaction and commit it,
        retrying from the start on ConflictError (with jittered backoff) up to
        `StoreOptions.transact_max_attempts` times. Returns fn's result.

        `fn` may be ``async def`` (its result is awaited) or a plain function
        (its result is used as is, so ``lambda tx: tx.put(k, v)`` works).
        It may run more than once: keep side effects out of it. Starting
        another transaction on this store inside it raises
        NestedTransactionError (use `tx`); a conflict that a retry cannot cure
        — fn committed other transactions on this store, e.g. from tasks it
        started — is raised at once with ``retryable=False``.
        """
        attempts = self.options.transact_max_attempts
        for attempt in range(attempts):
            tx = self.transaction()
            scope = enter(self._store_id, tx)
            try:
                result = fn(tx, *args, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
                await tx.commit()
                return result
            except ConflictError as exc:
                tx.discard()
                if attempt + 1 == attempts or not retryable(exc, scope, self.url):
                    raise
                await asyncio.sleep(self._rng.uniform(0, min(0.5, 0.002 * 2**attempt)))
            except BaseException:
                tx.discard()
                raise
            finally:
                leave(scope)
        raise AssertionError("unreachable")

    async def bulk_load(
        self,
        items: Iterable[tuple[str | bytes, Any]] | AsyncIterable[tuple[str | bytes, Any]],
        *,
        progress: Callable[[int], None] | None = None,
        chunk_bytes: int = 64 * 1024 * 1024,
    ) -> int:
        """Write many (key, value) pairs, in any order, as one transaction; returns its version.

        Pairs are gathered into chunks of about `chunk_bytes` (a repeated key
        counts again), each sorted and streamed into its own segment (multipart
        uploads for large ones, parts uploading while the next are encoded, and
        a chunk's upload finishing while the next chunk fills); all segments
        commit together in one manifest CAS, so readers see all or nothing. If a
        key repeats, its last value wins. Memory stays around one chunk plus a
        few upload parts. Input already in ascending key order is cheapest.
        `progress(n)` is called with the number of pairs written so far after
        each chunk's upload. The write-size limits of ordinary transactions do
        not apply; the key and value limits do.
        """
        self._check_open()
        if self.read_only:
            raise ReadOnlyError("this store was opened with read_only=True; open it without to write")
        refuse_nested(self._store_id, self.url)
        started = time.monotonic()
        chunk = ChunkBuffer(chunk_bytes)
        uploads = ChunkUploads(progress)

        async def write(keys: Sequence[bytes], values: Sequence[bytes]) -> None:
            await uploads.add(await self._segments.write_sorted(keys, values), chunk.taken)

        limits = self.options.max_key_bytes, self.options.max_value_bytes
        try:
            async for batch in encoded_batches(items, self._values, *limits):
                for full in chunk.add(batch):
                    await write(*full)
                await uploads.let_run()
            if len(chunk):
                await write(*chunk.take())
            refs = await uploads.finish()
        except BaseException:
            await uploads.cancel()
            raise
        if not refs:
            raise ValidationError("bulk_load got no items")
        request = CommitRequest(
            txn_id=self._committer.new_txn_id(),
            read_version=None,
            started=started,
            read_keys=set(),
            read_ranges=[],
            writes={},
            segments=refs[::-1],  # newest first: a later chunk wins a repeated key
        )
        return await self._committer.commit(request)

    async def snapshot(self, *, version: int | None = None, tag: str | None = None) -> Snapshot:
        """A consistent read-only view of the latest version, or of the past.

        `version=N` reads version N exactly: any of the last
        `StoreOptions.history_versions` versions, or a tagged one.
        `tag="name"` reads the version retained under that tag. A version no
        longer retained raises VersionNotRetainedError, never a wrong answer.
        """
        if tag is not None:
            if version is not None:
                raise ValidationError("pass version= or tag=, not both")
            self._check_open()
            found = await self._tags.get(tag)
            view = SnapshotView(await self._tags.manifest(found), self._segments)
            return Snapshot(view, self.options, self._values, self.url)
        latest = await self._latest_view()
        if version is None or version == latest.version:
            return Snapshot(latest, self.options, self._values, self.url)
        view = await self._past_view(latest.manifest, version)
        return Snapshot(view, self.options, self._values, self.url)

    async def tag(self, name: str, *, version: int | None = None) -> Tag:
        """Retain the latest version (or `version`, if still readable) under `name`.

        Copies the manifest server-side (CopyObject with CopySourceIfMatch: the
        exact bytes of that version) and creates the tag object: one COPY and
        one PUT. Tags never move: TagExistsError if the name is taken.
        """
        self._check_open()
        if self.read_only:
            raise ReadOnlyError("this store was opened with read_only=True; tags are writes")
        if version is not None:
            raise ValidationError("tagging a past version is not supported yet: tag the latest version")
        return await self._tags.create_at_latest(name, self._manifests)

    async def tags(self) -> list[Tag]:
        """Every tag, oldest version first. One LIST and one GET per tag."""
        self._check_open()
        return await self._tags.list()

    async def delete_tag(self, name: str) -> None:
        """Forget a tag. What only it kept alive is deleted by a later `gc()`."""
        self._check_open()
        if self.read_only:
            raise ReadOnlyError("this store was opened with read_only=True")
        await self._tags.delete(name)

    async def history(self, *, limit: int | None = None) -> list[CommitInfo]:
        """Recent commits, newest first, from the manifest's commit log (one conditional GET).

        The log holds the last `StoreOptions.commit_log_length` commits.
        """
        manifest = (await self._latest_view()).manifest
        records = list(reversed(manifest.log))[: limit if limit is not None else None]
        return [CommitInfo.from_record(r) for r in records]

    async def watch(
        self,
        prefix: str | bytes | None = None,
        *,
        start: str | bytes | None = None,
        end: str | bytes | None = None,
        interval: float = 1.0,
        since: int | None = None,
    ) -> AsyncIterator[Change]:
        """Yield every commit after `since` (default: now) that wrote keys in the range, in order.

        Polls the manifest with a conditional GET every `interval` seconds (a
        304 costs no body). Raises VersionNotRetainedError if it falls more
        than `commit_log_length` commits behind.
        """
        lo, hi = key_range(self.options, prefix, start, end)
        last = since if since is not None else (await self._latest_view()).version
        while True:
            self._check_open()
            manifest = await self._manifests.refresh()
            records = manifest.commits_after(last)
            if records is None:
                raise VersionNotRetainedError(
                    f"watch fell behind: commits after version {last} have left the commit log; "
                    "rescan the range and watch again from the current version"
                )
            for record in records:
                last = record.version
                keys = _changed_keys(record, lo, hi)
                if keys is not None:
                    yield Change(record.version, record.time, keys if record.keys is not None else None)
            await asyncio.sleep(interval)

    async def gc(self, *, dry_run: bool = False, grace_period: float | None = None) -> GcReport:
        """Delete objects nothing references any more (I7); report what was kept and why.

        Only objects older than `grace_period` (default
        `StoreOptions.segment_grace_period`) are deleted, which protects
        commits in progress and readers of snapshots younger than that.
        """
        self._check_open()
        if self.read_only and not dry_run:
            raise ReadOnlyError("this store was opened with read_only=True; use dry_run=True")
        grace = self.options.segment_grace_period if grace_period is None else grace_period
        return await self._gc.collect(grace_period=grace, dry_run=dry_run)

    async def refresh(self) -> int:
        """Fetch the latest manifest now (one conditional GET); returns its version."""
        self._check_open()
        return (await self._manifests.refresh()).version

    async def describe(self) -> StoreInfo:
        """What the latest manifest says about the store (one conditional GET)."""
        manifest = (await self._latest_view()).manifest
        levels: dict[int, int] = {}
        for ref in manifest.segments:
            levels[ref.level] = levels.get(ref.level, 0) + 1
        return StoreInfo(
            url=self.url,
            store_id=manifest.store_id,
            created=manifest.created,
            version=manifest.version,
            oldest_readable_version=manifest.history_floor,
            segments=len(manifest.segments),
            segment_bytes=sum(r.size for r in manifest.segments),
            entries=sum(r.count for r in manifest.segments),
            segments_per_level=levels,
            commit_log_length=len(manifest.log),
        )

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
            "ambiguous_creates_resolved": self._objects.own_creates_found,
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
        # Read the objects themselves, not what the caches hold.
        uncached = SegmentStore(self._objects, self._layout, ByteLRU(_VERIFY_CACHE_BYTES))
        for ref in manifest.segments:
            report.objects_checked += 1
            try:
                await uncached.read_all(ref)
            except (CorruptionError, UnsupportedFormatError) as exc:
                report.damaged[self._segments.object_name(ref.id)] = str(exc)
            except VersionNotRetainedError:
                report.damaged[self._segments.object_name(ref.id)] = "missing: referenced by the manifest but absent"
        return report

    async def compact(self, *, full: bool = False) -> list[CompactionResult]:
        """Merge segments until no level is due (or everything into one, with `full`).

        Compaction commits never conflict with transactions. Costs a GET per
        uncached input segment, a PUT per merged segment and a manifest CAS each.
        """
        self._check_open()
        await self._manifests.refresh()
        results: list[CompactionResult] = []
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
            if self._disk_cache is not None:
                self._disk_cache.close()

    def _after_commit(self, manifest: Manifest) -> None:
        if not self.options.auto_compact or self._closed:
            return
        if self._background is not None and not self._background.done():
            return
        if _ours_to_compact(manifest, self.options.compaction_fanout):
            self._background = asyncio.create_task(self._compact_in_background())

    async def _compact_in_background(self) -> None:
        try:
            while await self._compactor.compact() is not None:
                pass
            interval = self.options.auto_gc_interval
            if interval is not None and time.monotonic() - self._last_gc >= interval:
                self._last_gc = time.monotonic()
                await self._gc.collect(grace_period=self.options.segment_grace_period, dry_run=False)
        except Exception as exc:  # noqa: BLE001 - a background task has no caller to raise to
            _log.warning(
                "background compaction or GC of %s failed (retried after a later commit): %s: %s",
                self.url, type(exc).__name__, exc,
            )

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            warnings.warn(f"{self!r} was never closed; use `async with kvstore.open(...)`", ResourceWarning, stacklevel=1)

    async def _past_view(self, latest: Manifest, version: int) -> SnapshotView:
        if latest.history_floor <= version < latest.version:
            return SnapshotView(latest, self._segments, version)
        for tag in await self._tags.list():
            if tag.version == version:
                return SnapshotView(await self._tags.manifest(tag), self._segments)
        raise VersionNotRetainedError(
            f"version {version} is not retained: readable versions are {latest.history_floor}.."
            f"{latest.version} and tagged ones; keep more with StoreOptions.history_versions or tag versions"
        )

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


def _ours_to_compact(manifest: Manifest, fanout: int) -> bool:
    """Whether the writer that just committed `manifest` should start compacting.

    Every process sees a level fill up, but only one merge of it can commit:
    the others would each upload a merged segment and lose the CAS. So the
    writer whose commit made the level due compacts it, and anyone does once
    the level holds twice the fanout (that writer died or fell behind).
    """
    inputs = choose_inputs(manifest, fanout)
    if len(inputs) >= 2 * fanout:
        return True
    newest = manifest.log[-1].segment_id if manifest.log else None
    return len(inputs) == fanout and any(r.id == newest for r in inputs)


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
    values: ValueMode | None = None,
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
    object instead of bytes (a value that would not read back equal, such as
    a tuple, is refused at `put`). A store records the `values` it was
    created with (bytes by default) and refuses another explicit one with
    CodecMismatchError; leaving `values` out reads and writes raw bytes in
    any store. A store that has never committed takes the `values` of the
    first writable opener that names one. `wrap_object_store` wraps the
    backend (used to inject faults in tests).

    Opening costs one GET of the manifest, plus, the first time a process
    opens a store for writing, two or three PUTs that prove the endpoint
    honours conditional writes (and one manifest PUT when an empty store
    takes a new `values`).
    """
    if values is not None and values not in VALUE_MODES:
        raise ValidationError(f"values must be one of {VALUE_MODES}, not {values!r}")
    s3 = s3_options or S3Options()
    explicit: dict[str, Any] = {
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
        layout = Layout(location.prefix)
        manifests = ManifestStore(objects, layout)
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
                await check_conditional_writes(objects, layout)
            if not exists:
                await manifests.create({"values": values or "bytes"})
            manifest = manifests.current[0]
            recorded = manifest.settings.get("values")
            if values is not None and recorded != values and manifest.version == 0 and not read_only:
                manifest = await manifests.settle_empty({"values": values}, store_options.commit_log_length)
                recorded = manifest.settings.get("values")
            mode = value_mode(recorded, values, location.url)
            return Store(location, objects, manifests, store_options, mode, read_only)
        except BaseException:
            await objects.close()
            raise

    return StoreOpener(open_store)

