"""Reads at one manifest version: `SnapshotView` (bytes, for the engine and
transactions) and the public `Snapshot` over it (keys and values encoded)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from . import _ttl as ttl
from ._codec import ValueMode, decode_value, encode_key, encode_keys, key_range
from ._errors import UnsafeStoreError, ValidationError
from ._manifest import Intent, Manifest, SegmentRef
from ._merge import merge, newest, visible
from ._operands import codec_of, resolve, stacks
from ._options import StoreOptions
from ._ranges import RangeIndex
from ._segment import Value, probe
from ._segment_store import NOT_CACHED, Entry, Miss, scan_readahead
from ._sources import Sources
from ._tasks import run_bounded
from ._value_refs import StoredValue, ValueRef
from ._value_store import ValueStore

if TYPE_CHECKING:
    from ._two_phase import Decisions

# Keys of one `get_many` read at once. Each has at most one GET of its own in flight
# (keys sharing a block share its GET); a batch of 100 cold keys then issues its
# block GETs together. The S3 client's connection pool bounds the sockets beneath.
READS_IN_FLIGHT = 128


class SnapshotView:
    """The store as of `manifest.version`. Costs no manifest reads; segments are cached.

    A read meeting an unresolved intent of a cross-partition transaction (`_two_phase`)
    consults its decision once per view (one GET, cached in `decisions` once decided)
    and sees its writes iff committed; the view keeps what it found, so its reads repeat.
    """

    def __init__(
        self,
        manifest: Manifest,
        segments: Sources,
        version: int | None = None,
        decisions: Decisions | None = None,
        seen: dict[str, bool] | None = None,
    ) -> None:
        """A view of `manifest` as of `version` (default: the manifest's own).

        An older version is exact only if it is >= manifest.history_floor. `seen`:
        what the views of one snapshot of several partitions found of the decisions,
        shared among them, so that each intent is looked up once for all of them (two
        lookups could straddle its decision and show it in one partition only).
        """
        self.manifest = manifest
        self.version = manifest.version if version is None else version
        self._segments = segments
        # Newest first: for commit segments this is commit order.
        self._refs = sorted(manifest.segments, key=lambda s: s.max_version, reverse=True)
        self._overlapping = _any_overlap(self._refs)
        self._ranges = RangeIndex(manifest.range_deletes, self.version)
        # Atomic operands resolve to an int in the recorded codec (none recorded: bytes).
        self.codec = codec_of(manifest.settings.get("values"))
        # Intents that wrote something (a read-only one has nothing to show).
        self._intents = [i for i in manifest.intents if i.version <= self.version and i.segment is not None]
        self._decisions = decisions
        # Decision name -> whether this view shows its writes.
        self._visible: dict[str, bool] = {} if seen is None else seen
        # Whether a read found an intent undecided, and how many lookups are in flight: a
        # later transaction must not reuse such a view (`reusable`), or it could miss a
        # decision made since it began (real-time order).
        self.saw_undecided = False
        self._lookups = 0

    async def _refs_for(self, start: bytes | None, end: bytes | None) -> list[SegmentRef]:
        """The sources a read of [start, end) consults: the segments and the committed intents
        meeting the range (their decisions looked up once per view)."""
        meeting = [i for i in self._intents if i.segment is not None and i.segment.overlaps(start, end)]
        if not meeting:
            return self._refs
        unknown = [i for i in meeting if i.decision not in self._visible]
        if unknown:
            decisions = self._decisions
            if decisions is None:
                raise UnsafeStoreError(
                    "this partition holds intents of cross-partition transactions, which this handle cannot "
                    "look up: open the partitioned store at its root URL (kvstore.open), not one partition"
                )
            names = list(dict.fromkeys(i.decision for i in unknown))
            self._lookups += 1
            try:
                outcomes = await run_bounded(decisions.outcome, names, READS_IN_FLIGHT)
            finally:
                self._lookups -= 1
            for name, outcome in zip(names, outcomes, strict=True):
                self._visible.setdefault(name, outcome == "committed")
                self.saw_undecided |= outcome is None
        return self._with_intents(meeting)

    @property
    def shown(self) -> Mapping[str, bool]:
        """The decisions this view looked up: name -> whether it showed that transaction."""
        return self._visible

    @property
    def reusable(self) -> bool:
        """Whether a transaction starting now may read through this view: it found no
        intent undecided and looks none up (an answer in flight may predate the start)."""
        return not self.saw_undecided and self._lookups == 0

    def _with_intents(self, meeting: list[Intent]) -> list[SegmentRef]:
        shown = [i.segment for i in meeting if self._visible[i.decision] and i.segment is not None]
        if not shown:
            return self._refs
        return sorted([*self._refs, *shown], key=lambda s: s.max_version, reverse=True)

    def _cached_refs_for(self, key: bytes) -> list[SegmentRef] | None:
        """`_refs_for(key)` if no decision needs a request, else None."""
        meeting = [i for i in self._intents if i.segment is not None and i.segment.may_contain(key)]
        if not meeting:
            return self._refs
        if any(i.decision not in self._visible for i in meeting):
            return None
        return self._with_intents(meeting)

    async def get(self, key: bytes) -> bytes | None:
        """The value of `key`, or None if absent or deleted."""
        value = await self.get_stored(key)
        return await self._segments.values.read(value, key) if isinstance(value, ValueRef) else value

    @property
    def values(self) -> ValueStore:
        """The out-of-line value objects this view's references name."""
        return self._segments.values

    def view_for(self, key: bytes) -> SnapshotView:
        """The view holding `key`: this one (a view of several partitions: its partition's)."""
        return self

    async def get_stored(self, key: bytes) -> bytes | ValueRef | None:
        """The value of `key` as stored: its bytes, or the reference to its value object
        (not read); None if absent or deleted."""
        best: tuple[int, Value] | None = None
        segments, version = self._segments, self.version
        refs = await self._refs_for(key, key + b"\0") if self._intents else self._refs
        # Where segments overlap, most of those covering a key lack it, and their filters
        # (the key hashed once, here) spare searching their blocks. A key's only candidate
        # is cheaper to search than to filter when its block is cached; `get` still
        # filters before fetching a block.
        key_probe = probe(key) if self._overlapping or refs is not self._refs else None
        floor = self._ranges.floor(key) if self._ranges else 0  # older entries are range-deleted
        for ref in refs:
            if best is not None and ref.max_version <= best[0]:
                break  # no older segment can hold a newer entry
            if ref.max_version < floor:
                break  # this one and every older one hold only range-deleted entries of `key`
            if not ref.min_key <= key <= ref.max_key:
                continue
            found = segments.get_cached(ref, key, key_probe, version)
            if found is NOT_CACHED:
                found = await segments.get(ref, key, key_probe or probe(key), version)
            if found is not None and (best is None or found[0] > best[0]):
                best = found
        if best is None or best[0] < floor:
            return None
        return await self._folded(key, refs) if stacks(best[1]) else resolve(best[1], self.codec, key, ttl.clock())

    async def _folded(self, key: bytes, refs: list[SegmentRef]) -> bytes | None:
        """The value of a key whose newest entry is stacking operands: its entries at or
        below the view's version, newest first, folded down to a put or tombstone (or
        to its oldest entry), the way a scan resolves them (`_merge.visible`)."""
        end = key + b"\x00"
        sources = [self._segments.blocks(r, key, end, False) for r in refs if r.min_key <= key <= r.max_key]
        hidden = self._ranges.hides if self._ranges else None
        read_value = self._segments.values.read
        async for pair in visible(merge(sources), self.version, self.codec, ttl.clock(), read_value, hidden):
            return pair[1]
        return None

    async def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """The values of `keys` in order (None: absent or deleted); a key may repeat.

        Each distinct key is looked up once. Those whose index, partition and blocks
        are cached are answered without awaiting; the others are read concurrently,
        up to READS_IN_FLIGHT at a time, each along the path `get` takes. Keys that
        meet at a top index, partition, run object or block wait on one load of it
        (the cache loads each once for all its waiters), so a batch costs at most one
        GET per distinct block it needs that is not cached, plus the indexes and
        partitions that lead there, and never more than `get` of each key would.
        """
        found: dict[bytes, bytes | None] = {}
        cold: list[bytes] = []
        for key in dict.fromkeys(keys):
            value = self._get_cached(key)
            if value is NOT_CACHED or isinstance(value, ValueRef):
                cold.append(key)  # a value stored out of line is read by `get` (one GET)
            else:
                found[key] = value
        if cold:
            found.update(zip(cold, await run_bounded(self.get, cold, READS_IN_FLIGHT), strict=True))
        return [found[key] for key in keys]

    async def locate(self, keys: Sequence[bytes]) -> None:
        """Load, for each key, what `get` reads before any block in the newest segment
        covering it (its run object, top index and partition), which `get` reads
        whatever it finds; concurrently, READS_IN_FLIGHT at a time."""
        firsts = {}
        for key in dict.fromkeys(keys):
            ref = next((r for r in self._refs if r.min_key <= key <= r.max_key), None)
            if ref is not None:
                firsts[key] = ref
        await run_bounded(lambda key: self._segments.locate(firsts[key], key), list(firsts), READS_IN_FLIGHT)

    def _get_cached(self, key: bytes) -> StoredValue | Miss:
        """`get` from the cache alone: NOT_CACHED when it would have to fetch something
        (a reference to an out-of-line value is returned as it is, and so is a key
        meeting an intent whose decision this view has not looked up yet)."""
        best: tuple[int, Value] | None = None
        refs = self._cached_refs_for(key) if self._intents else self._refs
        if refs is None:
            return NOT_CACHED
        floor = self._ranges.floor(key) if self._ranges else 0
        for ref in refs:
            if best is not None and ref.max_version <= best[0]:
                break  # as in `get`
            if ref.max_version < floor:
                break
            if not ref.min_key <= key <= ref.max_key:
                continue
            found = self._segments.get_cached(ref, key, None, self.version)
            if found is NOT_CACHED:
                return NOT_CACHED
            if found is not None and (best is None or found[0] > best[0]):
                best = found
        if best is None or best[0] < floor:
            return None
        if stacks(best[1]):
            return NOT_CACHED  # needs the key's older entries: `get` folds them
        return resolve(best[1], self.codec, key, ttl.clock())

    def scan(
        self, start: bytes | None, end: bytes | None, *, reverse: bool = False
    ) -> AsyncIterator[tuple[bytes, bytes]]:
        """Live (key, value) pairs in [start, end), in key order (or reversed).

        A source is read only outside the ranges deleted after its newest entry
        (`RangeIndex.unhidden`): a scan over a deleted range reads none of the blocks
        that the range delete hid, even before compaction removes them."""
        if self._intents:
            return self._scan_with_intents(start, end, reverse)
        return self._scan_refs(self._refs, start, end, reverse)

    def _scan_refs(
        self, all_refs: list[SegmentRef], start: bytes | None, end: bytes | None, reverse: bool
    ) -> AsyncIterator[tuple[bytes, bytes]]:
        merged, hidden = self._merged(all_refs, start, end, reverse)
        return visible(merged, self.version, self.codec, ttl.clock(), self._segments.values.read, hidden)

    def _merged(
        self, all_refs: list[SegmentRef], start: bytes | None, end: bytes | None, reverse: bool
    ) -> tuple[AsyncIterator[list[Entry]], Callable[[bytes, int], bool] | None]:
        """The entries of the sources meeting [start, end), merged, and what hides them."""
        refs = [r for r in all_refs if r.overlaps(start, end)]
        readahead = scan_readahead(len(refs))
        if not self._ranges:
            sources = [self._segments.blocks(r, start, end, reverse, readahead=readahead) for r in refs]
            return merge(sources, reverse=reverse), None
        sources = []
        for ref in refs:
            pieces = [(lo, hi) for lo, hi in self._ranges.unhidden(ref.max_version, start, end) if ref.overlaps(lo, hi)]
            if pieces:
                sources.append(self._segments.blocks_in(ref, pieces, reverse, readahead=readahead))
        return merge(sources, reverse=reverse), self._ranges.hides

    async def stored(self, start: bytes | None, end: bytes | None) -> AsyncIterator[tuple[bytes, Value]]:
        """Every key in [start, end) with its state as stored (`_merge.newest`: a put's
        expiry, a reference to an out-of-line value and atomic operands kept, nothing
        read out of line), tombstones included, in key order. What a split copies."""
        merged, hidden = self._merged(await self._refs_for(start, end), start, end, False)
        async for states in newest(merged, self.version, self.codec, hidden):
            for pair in states:
                yield pair

    async def _scan_with_intents(
        self, start: bytes | None, end: bytes | None, reverse: bool
    ) -> AsyncIterator[tuple[bytes, bytes]]:
        refs = await self._refs_for(start, end)
        async for pair in self._scan_refs(refs, start, end, reverse):
            yield pair


class Snapshot:
    """A consistent, read-only view of the store at one version.

    Reads through a snapshot are repeatable and cost no manifest requests;
    segment data comes from the cache or from ranged GETs.
    """

    def __init__(
        self,
        view: SnapshotView,
        options: StoreOptions,
        values: ValueMode,
        url: str,
        check_process: Callable[[], None] | None = None,
    ) -> None:
        self._view = view
        self._options = options
        self._values = values
        self._url = url
        # Raises in a forked child: the view's connections and caches are the parent's.
        self._check_process = check_process or _no_check

    @property
    def version(self) -> int:
        """The store version this snapshot shows."""
        return self._view.version

    async def get(self, key: str | bytes, default: Any = None) -> Any:
        """The value of `key` at this version, or `default`."""
        self._check_process()
        k = encode_key(key, self._options.max_key_bytes)
        raw = await self._view.get(k)
        return default if raw is None else decode_value(raw, self._values, k, self._url)

    async def read_value(self, key: str | bytes, *, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The stored bytes of `key`'s value at this version, [start, end) of them (`end`
        None: to its end; both clipped to its length), as chunks given out in order,
        without holding the value whole: a value stored out of line is read as ranged
        GETs of 16 MiB (`_value_store.VALUE_PART_BYTES`), 4 ahead of the consumer, so
        memory holds about 5 chunks however large it is. A missing key yields nothing.
        The stored bytes are the value itself on a values="bytes" or "raw" store, its
        msgpack encoding on a "msgpack" one.

        The whole value (start 0, end None) is checked against its recorded length and
        checksum when its last chunk is read: a damaged object raises CorruptionError
        then, after the chunks before it were given out (discard them). A part of a
        value cannot be checked against the whole value's checksum, only for length.
        """
        self._check_process()
        k = encode_key(key, self._options.max_key_bytes)
        _check_span(start, end)
        view = self._view.view_for(k)
        stored = await view.get_stored(k)
        if isinstance(stored, ValueRef):
            async for chunk in view.values.stream(stored, k, start, end):
                yield chunk
        elif stored is not None and stored[start:end]:
            yield stored[start:end]  # held inline: small (StoreOptions.large_value_bytes at most)

    async def get_range(self, key: str | bytes, start: int, end: int | None = None) -> bytes | None:
        """Bytes [start, end) of the stored bytes of `key`'s value at this version (clipped
        to its length, as a slice; `end` None: to its end), or None if the key is absent.
        A value stored out of line costs one ranged GET per 16 MiB of the range (4 at a
        time), none of the rest of it; an inline one is sliced. The range is checked for
        length only: the value's checksum covers it whole (`read_value` of the whole value
        checks it). See `read_value` for what the stored bytes are."""
        self._check_process()
        k = encode_key(key, self._options.max_key_bytes)
        _check_span(start, end)
        view = self._view.view_for(k)
        stored = await view.get_stored(k)
        if not isinstance(stored, ValueRef):
            return None if stored is None else stored[start:end]
        return b"".join([chunk async for chunk in view.values.stream(stored, k, start, end)])

    async def get_many(self, keys: Iterable[str | bytes], default: Any = None) -> list[Any]:
        """The values of `keys` at this version, in order; `default` for each absent one.

        A key may repeat (each place gets its answer). Keys not cached are read
        concurrently: at most one GET per distinct block they need that is not cached
        (plus the indexes leading there), never one per key.
        """
        ks = encode_keys(keys, self._options.max_key_bytes)
        raws = await self._view.get_many(ks)
        values, url = self._values, self._url
        return [default if raw is None else decode_value(raw, values, k, url) for k, raw in zip(ks, raws, strict=True)]

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
        self._check_process()
        if limit is not None and limit < 0:
            raise ValidationError(f"limit must be >= 0, not {limit}")
        lo, hi = key_range(self._options.max_key_bytes, prefix, start, end)
        pairs = self._view.scan(lo, hi, reverse=reverse)
        if self._values != "msgpack" and limit is None:
            return pairs  # no per-pair work to add: hand out the view's iterator itself
        return self._decoded(pairs, limit)

    async def _decoded(
        self, pairs: AsyncIterator[tuple[bytes, bytes]], limit: int | None
    ) -> AsyncIterator[tuple[bytes, Any]]:
        if limit == 0:
            return
        count = 0
        values, url = self._values, self._url
        async for key, raw in pairs:
            yield key, decode_value(raw, values, key, url)
            count += 1
            if limit is not None and count >= limit:
                return


def _no_check() -> None:
    pass


def _any_overlap(refs: list[SegmentRef]) -> bool:
    """Whether any two segments' key ranges overlap."""
    by_start = sorted(refs, key=lambda r: r.min_key)
    return any(later.min_key <= earlier.max_key for earlier, later in pairwise(by_start))


def _check_span(start: int, end: int | None) -> None:
    """Refuse a byte span `read_value` and `get_range` cannot serve."""
    if not isinstance(start, int) or start < 0 or (end is not None and (not isinstance(end, int) or end < 0)):
        raise ValidationError(
            f"a byte range needs start >= 0 and end >= 0 or None (integers), not start={start!r}, end={end!r}"
        )
