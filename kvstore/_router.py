"""Key-range partitions under one face: the partition map and one engine per partition.

A store opened without a partition map is one partition at the root layout, and
the router only hands out that one engine. A split store has a map
(`_partition_map`) naming the partition of every key range; the router opens
one engine per live partition, all sharing one object store, and routes keys
and ranges to them. Engines know nothing of each other or of the map.

A split (`Router.split`) is online:

1. seal the partition: a final settings commit recording `MOVED_SETTING`
   (`{"at": key, "into": [left, right]}`), after which its committer refuses
   every commit (`PartitionMovedError`), so a writer with a stale map never
   commits there: its commit's CAS loses to the seal and the rebase refuses it;
   the seal waits until the partition holds no intent (`Engine.seal`);
2. copy the sealed version's keys into the two successors as stored
   (`SnapshotView.stored`: a put's expiry, atomic operands, a reference to an
   out-of-line value; tombstones, range-deleted keys and expired puts are left
   out), as segments under their own prefixes (`Engine.commit_entries`). A
   value stored out of line is copied server-side into the successor under a
   new id (`ValueStore.copy_from`: a HEAD and a COPY, no bytes through the
   client). So a successor never references a predecessor's objects: GC of any
   partition may delete what its own manifest no longer references, and a
   retired partition is never collected (a tag may still read it). Each copy
   commits only on the successor as it was when the copy started
   (`read_version`), so a late copier never overwrites newer writes;
3. CAS the map (read back on every 412 or lost answer: the map says whether
   the split is already in it).

A merge (`Router.merge`) of the partitions on either side of boundary `b` is
the same three steps: seal the left one (`{"merge_at": b, "into": id}`: that
seal decides the merge), then the one now starting at `b` (`{"merged_into":
id, "with": left}`; if a rival split or merge sealed it first, that move is
finished and the partition then starting at `b` is sealed instead), copy both
into the new partition in one commit, CAS the map. Seals go left to right, so
two merges never wait on each other.

Every step is idempotent and the seals name the successors, so whoever meets a
sealed partition still listed in the map (a writer redirected mid-split, a
reader, a splitter or merger that died) finishes the move itself
(`Router.redirect`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from . import _ttl as ttl
from ._engine import Engine, open_engine
from ._errors import ConflictError, ContentionError, PartitionMovedError, StoreNotFoundError, ValidationError
from ._layout import Layout, new_object_id
from ._manifest import MOVED_SETTING, Manifest
from ._manifest_store import ManifestStore
from ._objectstore import ObjectNotFound, RetryingObjectStore
from ._operands import Operands
from ._options import StoreOptions
from ._partition_map import ROOT_PID, Partition, PartitionMap, check_split_keys
from ._partition_map_store import PartitionMapStore
from ._probe import check_conditional_writes
from ._segment import Value
from ._snapshot import SnapshotView
from ._tasks import gather_all
from ._ttl import Expiring
from ._two_phase import Decisions
from ._url import Location
from ._value_refs import ValueRef
from ._value_store import ValueStore

# Seconds of commit times `PartitionInfo.commit_rate` looks back over.
RATE_WINDOW = 60.0
# Rounds of conditional GETs a snapshot of every partition takes before giving up.
SNAPSHOT_ROUNDS = 50
# Redirects one operation follows before giving up (each means a split finished meanwhile).
MAX_REDIRECTS = 20
# The field of the seal a store created with split keys gets at its root manifest, naming
# them: the root manifest is the create-once object that decides the store's shape.
CREATED_SPLIT = "created_split"


class Router:
    """The engines of one store's partitions and the map that routes keys to them."""

    def __init__(
        self,
        location: Location,
        options: StoreOptions,
        objects: RetryingObjectStore,
        maps: PartitionMapStore,
        pmap: PartitionMap,
        engines: dict[str, Engine],
        *,
        read_only: bool,
        adopt_settings: Mapping[str, Any],
        decisions: Decisions,
    ) -> None:
        self.location = location
        self.options = options
        self.objects = objects
        self.root = Layout(location.prefix)
        self._maps = maps
        self.pmap = pmap
        self.engines = engines
        self.read_only = read_only
        self._adopt = dict(adopt_settings)
        self._redirecting: dict[str, asyncio.Future[None]] = {}
        self._retired: list[Engine] = []  # closed with the store: their commits may still be finishing
        # Every partition engine reads intents through it (one per opened store: one cache).
        self._decisions = decisions

    # ------------------------------------------------------------------ routing, no requests

    @property
    def partitioned(self) -> bool:
        """Whether the store has a partition map (False: one partition at the root, as ever)."""
        return self.pmap.version > 0

    @property
    def first(self) -> Engine:
        """The engine of the first partition (the only one of a store never split)."""
        return self.engines[self.pmap.partitions[0].pid]

    @property
    def store_id(self) -> str:
        return self.pmap.store_id if self.partitioned else self.first.store_id

    def layout_of(self, pid: str) -> Layout:
        return self.root if pid == ROOT_PID else self.root.partition(pid)

    def engine_for(self, key: bytes) -> tuple[Partition, Engine]:
        part = self.pmap.partition_for(key)
        return part, self.engines[part.pid]

    def route(self, lo: bytes | None, hi: bytes | None) -> list[tuple[Partition, Engine]]:
        """The partitions meeting [lo, hi), in key order, with their engines."""
        return [(p, self.engines[p.pid]) for p in self.pmap.overlapping(lo, hi)]

    def parts(self) -> list[tuple[Partition, Engine]]:
        return [(p, self.engines[p.pid]) for p in self.pmap.partitions]

    def all_engines(self) -> list[Engine]:
        return [self.engines[p.pid] for p in self.pmap.partitions]

    async def engine_of(self, pid: str) -> Engine:
        """The engine of partition `pid`, live or retired (a tag may name a retired one)."""
        return (
            self.engines.get(pid)
            or next((e for e in self._retired if e.layout == self.layout_of(pid)), None)
            or await self._open_retired(pid)
        )

    async def _open_retired(self, pid: str) -> Engine:
        engine = await open_engine(
            self.location,
            self.options,
            create=False,
            read_only=self.read_only,
            new_settings={},
            adopt_settings={},
            layout=self.layout_of(pid),
            objects=self.objects,
            decisions=self._decisions,
        )
        self._retired.append(engine)
        return engine

    def decisions(self) -> Decisions:
        """The store's `_two_phase.Decisions` (cross-partition commits): the one its engines
        were opened with (one per opened store: its cache is shared)."""
        return self._decisions

    # ------------------------------------------------------------------ reads that follow splits

    async def latest_view(self, part: Partition, engine: Engine, keys: Sequence[bytes] = ()) -> SnapshotView:
        """`engine.latest_view()` (`latest_view_for(keys)` with keys), raising
        PartitionMovedError (after following the split) when the partition was sealed:
        a stale map must not serve old data."""
        view = await (engine.latest_view_for(keys) if keys else engine.latest_view())
        if view.manifest.settings.get(MOVED_SETTING) is not None:
            await self.redirect(part.pid)
            raise self._moved(part.pid)
        return view

    async def read_view(self, part: Partition, engine: Engine) -> SnapshotView:
        """`latest_view`, for a read on its own (no later check): a sealed partition that the
        map still lists once its move was followed (a read-only handle cannot finish a split
        or merge, so it meets one between the seal and the map CAS) is read as sealed. Its
        final version is exactly what its successors will hold, and no commit lands anywhere
        in its range until the map changes: the map was read after the seal was seen, so the
        read is at that moment."""
        view = await engine.latest_view()
        if view.manifest.settings.get(MOVED_SETTING) is None:
            return view
        await self.redirect(part.pid)
        if self.pmap.by_id(part.pid) is not None:
            return view
        raise self._moved(part.pid)

    async def _view_of(self, part: Partition, engine: Engine, manifest: Manifest) -> SnapshotView:
        if manifest.settings.get(MOVED_SETTING) is not None:
            await self.redirect(part.pid)
            raise self._moved(part.pid)
        return SnapshotView(manifest, engine.sources, decisions=engine.decisions)

    async def validate(
        self, engine: Engine, view: SnapshotView, keys: set[bytes], ranges: list[tuple[bytes, bytes | None]]
    ) -> None:
        """Raise ConflictError if a commit after `view`'s version in `engine`'s partition
        wrote what `keys` and `ranges` cover (or an intent the view did not show was
        decided committed since), or if the partition was split since (its keys now
        change elsewhere). One conditional GET of the manifest."""
        version = view.version
        changed = await engine.changed_since(version, keys, ranges, view.shown)
        manifest = engine.manifest
        if manifest.settings.get(MOVED_SETTING) is not None:
            raise self._moved("")
        if changed:
            raise ConflictError(
                f"transaction read data that a commit after its read version {version} changed (it read "
                "several partitions, checked before returning); retry it (Store.transact does)"
            )

    def _moved(self, pid: str) -> PartitionMovedError:
        return PartitionMovedError(
            f"a partition{f' ({pid!r})' if pid else ''} of {self.location.url} was split or merged while this read it; "
            "nothing was written: retry (Store.transact does)"
        )

    async def consistent_views(self) -> tuple[PartitionMap, dict[str, SnapshotView]]:
        """A view of every partition, all at one instant: their manifests read (in
        parallel), then read again until a round finds none changed (304s). Each view
        then held throughout an interval containing the end of one round and the start
        of the next: one point in time, so a cross-partition commit is seen in all its
        partitions or none, and any commit acknowledged before the call is seen. The
        decisions of the views' intents are looked up within that instant too (one GET
        each per round, none for one cached as decided).

        No reader can do this with fewer reads without the writers' help: a round in
        which some partition committed says nothing of when it did. So a store whose
        partitions all commit continuously may need many rounds (each one conditional
        GET per partition); ContentionError after SNAPSHOT_ROUNDS."""
        pmap = await self.reload()
        parts = self.parts()
        views = await gather_all(self.latest_view(p, e) for p, e in parts)
        for _ in range(SNAPSHOT_ROUNDS):
            # The decisions of the views' intents, looked up between the two reads of every
            # manifest, i.e. within the instant the views show. Looked up later (at read time),
            # a transaction prepared in some partitions only at that instant, and decided
            # "committed" since, would show in those and not in the others (their views
            # predate its prepare there). Decided by now means prepared everywhere before the
            # second reads, so in every view: one lookup, shared by all the views.
            seen = await self._decisions_of(views)
            again = await gather_all(e.refresh() for _, e in parts)
            if all(m is v.manifest for m, v in zip(again, views, strict=True)):
                return pmap, {
                    p.pid: SnapshotView(v.manifest, e.sources, decisions=e.decisions, seen=seen)
                    for (p, e), v in zip(parts, views, strict=True)
                }
            if (await self.reload()).version != pmap.version:  # a split: start over on the new map
                pmap, parts = self.pmap, self.parts()
                views = await gather_all(self.latest_view(p, e) for p, e in parts)
                continue
            # This round's reads become the views the next one checks.
            views = [await self._view_of(p, e, m) for (p, e), m in zip(parts, again, strict=True)]
        raise ContentionError(
            f"the partitions of {self.location.url} committed in each of {SNAPSHOT_ROUNDS} rounds of reading them "
            "all, so no round showed them at one instant: retry the snapshot, or read through a transaction "
            "(it checks only the partitions and keys it read)"
        )

    async def _decisions_of(self, views: Sequence[SnapshotView]) -> dict[str, bool]:
        """Whether each intent of `views` is committed (decision name -> visible), looked up
        now (one GET per decision not cached as decided)."""
        names = list(dict.fromkeys(i.decision for v in views for i in v.manifest.intents))
        if not names:
            return {}
        outcomes = await gather_all(self._decisions.outcome(n) for n in names)
        return {n: o == "committed" for n, o in zip(names, outcomes, strict=True)}

    # ------------------------------------------------------------------ splits

    async def split(self, key: bytes) -> PartitionMap:
        """Split the partition holding `key` so that a new one starts at `key` (online)."""
        self.first.check_writable("splitting is a write")
        check_split_keys([key])
        for _ in range(MAX_REDIRECTS):
            await self.reload()
            part = self.pmap.partition_for(key)
            if part.start == key:
                return self.pmap  # already a boundary (a split of ours whose answer was lost, or a rival's)
            if await self._move(part.pid, {"at": key, "into": [new_object_id(), new_object_id()]}, "at"):
                return self.pmap
        raise ConflictError(f"splitting at {key!r} kept meeting other splits of {self.location.url}; retry it")

    async def merge(self, key: bytes) -> PartitionMap:
        """Merge the partitions on either side of boundary `key` into one (online)."""
        self.first.check_writable("merging partitions is a write")
        for _ in range(MAX_REDIRECTS):
            await self.reload()
            if key not in self.pmap.boundaries:
                raise ValidationError(
                    f"{key!r} is not a partition boundary of {self.location.url} (its boundaries: "
                    f"{self.pmap.boundaries!r}); merge_partitions takes one of them (a merge at it whose "
                    "answer was lost has finished)"
                )
            left = self.pmap.partitions[self.pmap.boundaries.index(key)]
            if await self._move(left.pid, {"merge_at": key, "into": new_object_id()}, "merge_at"):
                return self.pmap
        raise ConflictError(f"merging at {key!r} kept meeting other splits of {self.location.url}; retry it")

    async def _move(self, pid: str, moved: dict[str, Any], field: str) -> bool:
        """Seal live partition `pid` with `moved` and finish that move; False if a rival's
        move (a seal whose `field` differs) was there first: it is finished instead (a
        rival's seal with the same `field` is the same move, and is ours)."""
        final = await self.engines[pid].seal(moved)
        await self.redirect(pid)
        return bool(final.settings[MOVED_SETTING].get(field) == moved[field])

    async def redirect(self, pid: str) -> None:
        """Follow the split or merge of sealed partition `pid`: finish it if the map does not
        show it yet (idempotent), then reload the map. Concurrent callers in this process share it."""
        running = self._redirecting.get(pid)
        if running is None:
            running = asyncio.ensure_future(self._finish_move(pid))
            self._redirecting[pid] = running
            running.add_done_callback(lambda _: self._redirecting.pop(pid, None))
        await asyncio.shield(running)

    async def _finish_move(self, pid: str) -> None:
        pmap = await self._load()
        old = pmap.by_id(pid)
        if old is None:  # the move is in the map already
            await self.reload()
            return
        engine = self.engines.get(pid) or await self._open(pid, create=False)
        final = await engine.refresh()
        moved = final.settings.get(MOVED_SETTING)
        if moved is None:
            return  # not sealed: nothing to follow
        if "merged_into" in moved:  # the right side of a merge: its left side's seal leads it
            if pmap.by_id(moved["with"]) is not None:
                await self._finish_move(moved["with"])
        elif "merge_at" in moved:
            await self._finish_merge(pid, final)
        elif not self.read_only and "at" in moved:  # (a root sealed at creation holds nothing to copy)
            await self._finish_split(old, engine, final)
        await self.reload()

    async def _finish_split(self, old: Partition, engine: Engine, final: Manifest) -> None:
        moved = final.settings[MOVED_SETTING]
        at, (left, right) = bytes(moved["at"]), moved["into"]
        values = final.settings.get("values") or "bytes"
        await asyncio.gather(
            self._copy(left, [(engine, final, old.start, at)], values),
            self._copy(right, [(engine, final, at, old.end)], values),
        )

        def derive(current: PartitionMap | None) -> PartitionMap | None:
            base = current if current is not None else self.pmap
            return base.split(old.pid, at, left, right) if base.by_id(old.pid) is not None else None

        await self._maps.change(f"recording the split of partition {old.pid!r}", derive)

    async def _finish_merge(self, pid: str, final: Manifest) -> None:
        """Finish the merge that sealed `pid` (its left side): seal the partition now to its
        right (following any rival move of it first), copy both into the merged one, CAS
        the map. The left's seal fixed the merge, so every finisher completes the same one."""
        into = final.settings[MOVED_SETTING]["into"]
        for _ in range(MAX_REDIRECTS):
            pmap = await self._load()
            left = pmap.by_id(pid)
            if left is None or self.read_only:
                return
            right = pmap.partitions[pmap.partitions.index(left) + 1]
            engine = self.engines.get(right.pid) or await self._open(right.pid, create=False)
            right_final = await engine.seal({"merged_into": into, "with": pid})
            if right_final.settings[MOVED_SETTING].get("merged_into") != into:
                await self.redirect(right.pid)  # split or merged rightwards first: merge with what follows
                continue
            values = final.settings.get("values") or "bytes"
            sources = [
                (await self.engine_of(pid), final, left.start, right.start),
                (engine, right_final, right.start, right.end),
            ]
            await self._copy(into, sources, values)

            await self._maps.change(
                f"recording the merge of partitions {pid!r} and {right.pid!r}", _merged(self.pmap, pid, right.pid, into)
            )
            return
        raise ContentionError(
            f"merging partition {pid!r} of {self.location.url} kept meeting splits of its right neighbour; "
            "retry the merge (any reader or writer also finishes it)"
        )

    async def _copy(self, pid: str, sources: list[tuple[Engine, Manifest, bytes, bytes | None]], values: str) -> None:
        """Copy the keys of each sealed `(engine, final manifest, lo, hi)` into successor `pid`
        (made if absent), as stored (`SnapshotView.stored`), unless a copy is already there."""
        target = await self._open(pid, create=True, settings={"values": values})
        manifest = await target.refresh()
        if any(_split_from(r.meta) for r in manifest.log):
            return
        if not manifest.never_written:
            return  # writes landed there: the map already routes to it, so a copy did too

        async def pairs() -> AsyncIterator[tuple[bytes, Value]]:
            for source, final, lo, hi in sources:
                view = SnapshotView(final, source.sources, decisions=source.decisions)
                now = ttl.clock()
                async for key, value in view.stored(lo, hi):
                    kept = await _kept(value, key, now, source.values, target.values)
                    if kept is not None:
                        yield key, kept

        try:
            await target.commit_entries(
                pairs(),
                values="msgpack" if values == "msgpack" else "bytes",
                read_version=manifest.version,
                meta={"split_from": sources[0][1].store_id},
            )
        except ConflictError:
            pass  # a rival copier committed first (or writes began after its map CAS): theirs stands

    # ------------------------------------------------------------------ the map

    async def _load(self) -> PartitionMap:
        loaded = await self._maps.load()
        return loaded if loaded is not None else self.pmap

    async def follow_sealed(self) -> None:
        """Follow every split or merge whose seal this process's engines have met (their
        latest manifests say `moved`): the map then routes around the retired partitions."""
        for pid, engine in list(self.engines.items()):
            if engine.manifest.settings.get(MOVED_SETTING) is not None:
                await self.redirect(pid)

    async def reload(self) -> PartitionMap:
        """Read the map again (one conditional GET) and open engines for new partitions."""
        pmap = await self._load()
        if pmap.version > self.pmap.version:
            for part in pmap.partitions:
                if part.pid not in self.engines:
                    self.engines[part.pid] = await self._open(part.pid, create=False)
            live = {p.pid for p in pmap.partitions}
            for pid in [p for p in self.engines if p not in live]:
                self._retired.append(self.engines.pop(pid))
            self.pmap = pmap
        return self.pmap

    async def _open(self, pid: str, *, create: bool, settings: Mapping[str, Any] | None = None) -> Engine:
        if pid in self.engines:
            return self.engines[pid]
        engine = await open_engine(
            self.location,
            self.options,
            create=create,
            read_only=self.read_only,
            new_settings=dict(settings or {}),
            adopt_settings={} if settings else self._adopt,
            layout=self.layout_of(pid),
            objects=self.objects,
            decisions=self._decisions,
        )
        if pid in self.engines:  # opened meanwhile by a concurrent caller
            await engine.close()
            return self.engines[pid]
        self.engines[pid] = engine
        return engine

    async def close(self) -> None:
        try:
            for engine in [*self.engines.values(), *self._retired]:
                await engine.close()
        finally:
            if not self.first.forked:
                await self.objects.close()


def _split_from(meta: dict[str, Any] | None) -> bool:
    return any(t is not None and "split_from" in t for t in (meta or {}).get("txns") or ())


def _merged(
    fallback: PartitionMap, left: str, right: str, into: str
) -> Callable[[PartitionMap | None], PartitionMap | None]:
    """The map change of a merge: None (nothing to do) once the map shows it."""

    def derive(current: PartitionMap | None) -> PartitionMap | None:
        base = current if current is not None else fallback
        if base.by_id(left) is None or base.by_id(right) is None:
            return None
        return base.merge(left, right, into)

    return derive


async def _kept(value: Value, key: bytes, now: float, source: ValueStore, target: ValueStore) -> Value:
    """What a split or merge copies of a key's stored state: nothing for a tombstone or an
    expired put; a put's expiry, and atomic operands (unfolded), as they are; a value stored
    out of line as a reference to a server-side copy in the successor (`ValueStore.copy_from`)."""
    if value is None or (isinstance(value, Expiring) and value.expired(now)):
        return None
    if isinstance(value, ValueRef):
        return await target.copy_from(source, value, key)
    if isinstance(value, Operands) and isinstance(value.base, ValueRef):
        return replace(value, base=await target.copy_from(source, value.base, key))
    return value


async def open_router(
    location: Location,
    options: StoreOptions,
    objects: RetryingObjectStore,
    *,
    create: bool,
    read_only: bool,
    split_keys: Sequence[bytes] | None,
    new_settings: Mapping[str, Any],
    adopt_settings: Mapping[str, Any],
) -> Router:
    """Open the store at `location`: its partition map if it has one, else its root
    manifest (creating the store, with `split_keys` as its partitions, if absent)."""
    root = Layout(location.prefix)
    maps = PartitionMapStore(objects, root)
    keys = check_split_keys(list(split_keys or ()))
    pmap = await maps.load()
    decisions = Decisions(objects, root)
    if pmap is not None and not read_only:
        await check_conditional_writes(objects, root)  # the root engine's open does it otherwise

    async def engine_at(pid: str, create_it: bool) -> Engine:
        return await open_engine(
            location,
            options,
            create=create_it,
            read_only=read_only,
            new_settings=new_settings,
            adopt_settings=adopt_settings,
            layout=root if pid == ROOT_PID else root.partition(pid),
            objects=objects,
            decisions=decisions,
        )

    engines: dict[str, Engine] = {}

    async def made_split(keys: list[bytes]) -> PartitionMap:
        # Partitions first, then the map that makes them the store: a creator dying in
        # between leaves empty manifests no map names, and whoever opens the store next
        # finishes (racing creators with the same split keys share them: their ids are
        # positional).
        pids = [f"{i:04d}" for i in range(len(keys) + 1)]
        for pid in pids:
            engines[pid] = await engine_at(pid, True)
        return await maps.create(PartitionMap.initial(engines[pids[0]].store_id, keys, pids))

    try:
        if pmap is None:
            if not keys:
                engines[ROOT_PID] = await engine_at(ROOT_PID, create)
                pmap = PartitionMap.single(engines[ROOT_PID].store_id)
                made = _created_split(engines[ROOT_PID].manifest)
                if made is not None:  # a creator with split_keys won: the store is its partitions
                    pmap = await maps.load() or await _finish_creation(location.url, read_only, made, made_split)
                elif engines[ROOT_PID].manifest.never_written:
                    # An empty root: a racing creator (of a release before the root was created
                    # sealed) may have made partitions and a map meanwhile.
                    pmap = await maps.load() or pmap
            else:
                manifests = ManifestStore(objects, root)
                try:
                    found: Manifest | None = await manifests.refresh()
                except ObjectNotFound:
                    found = None
                if found is None and not read_only and create:
                    # One create-once object decides the store's shape: the root manifest,
                    # made already sealed (every committer refuses it). A creator without
                    # split_keys then finds it (its own safe create loses) and opens the
                    # partitions; if that creator won, this one is refused below.
                    await check_conditional_writes(objects, root)
                    found = await manifests.create({MOVED_SETTING: {CREATED_SPLIT: list(keys), "into": []}})
                if found is None:
                    await engine_at(ROOT_PID, False)  # raises StoreNotFoundError
                    raise AssertionError("unreachable")
                made = _created_split(found)
                if made is None:
                    raise _not_boundaries(location.url, keys, [])
                pmap = await maps.load() or await _finish_creation(location.url, read_only, made, made_split)
        if pmap.version > 0:
            if not set(keys) <= set(pmap.boundaries):
                raise _not_boundaries(location.url, keys, pmap.boundaries)
            for part in pmap.partitions:
                if part.pid not in engines:
                    engines[part.pid] = await engine_at(part.pid, False)
            for pid in [p for p in engines if pmap.by_id(p) is None]:
                await engines.pop(pid).close()  # a racing creator's map won with other partitions
    except BaseException:
        for engine in engines.values():
            await engine.close()
        raise
    return Router(
        location,
        options,
        objects,
        maps,
        pmap,
        engines,
        read_only=read_only,
        adopt_settings=adopt_settings,
        decisions=decisions,
    )


def _created_split(manifest: Manifest) -> list[bytes] | None:
    """The split keys the store was created with, if its root manifest says it was created
    split (sealed at creation, `open_router`); else None."""
    moved = manifest.settings.get(MOVED_SETTING)
    if moved is None or CREATED_SPLIT not in moved:
        return None
    return [bytes(k) for k in moved[CREATED_SPLIT]]


async def _finish_creation(
    url: str, read_only: bool, keys: list[bytes], made_split: Callable[[list[bytes]], Awaitable[PartitionMap]]
) -> PartitionMap:
    """The map of a store created split whose map is not written yet: its creator is
    still making the partitions, or died; a writer finishes (idempotent), a reader cannot."""
    if read_only:
        raise StoreNotFoundError(
            f"the store at {url} is being created with split keys and has no partition map yet (or its creator "
            "died before writing it): open it again in a moment; opening it once read-write finishes the creation"
        )
    return await made_split(keys)


def _not_boundaries(url: str, keys: list[bytes], boundaries: list[bytes]) -> ValidationError:
    return ValidationError(
        f"split_keys {keys!r} are not all boundaries of the existing store at {url} (its boundaries: "
        f"{boundaries!r}); split_keys only apply when a store is created: open it without them, or "
        "add a boundary with `await db.split(key)`"
    )


def recent_commit_rate(manifest: Manifest, now: float | None = None) -> float:
    """Commits per second in the manifest's log over the last RATE_WINDOW seconds."""
    since = (time.time() if now is None else now) - RATE_WINDOW
    return sum(1 for r in manifest.log if r.time >= since and r.key_count > 0) / RATE_WINDOW


class PartitionedView(SnapshotView):
    """One consistent view of several partitions: a `SnapshotView` per partition, taken at
    one instant (`Router.consistent_views`), read through the map they were taken under."""

    def __init__(self, pmap: PartitionMap, views: dict[str, SnapshotView]) -> None:
        self._pmap = pmap
        self._views = views
        self.manifest = views[pmap.partitions[0].pid].manifest
        self.version = sum(v.version for v in views.values())
        self.versions = {pid: v.version for pid, v in views.items()}

    async def get(self, key: bytes) -> bytes | None:
        return await self._views[self._pmap.partition_for(key).pid].get(key)

    def view_for(self, key: bytes) -> SnapshotView:
        return self._views[self._pmap.partition_for(key).pid]

    async def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        groups: dict[str, list[bytes]] = {}
        for key in keys:
            groups.setdefault(self._pmap.partition_for(key).pid, []).append(key)
        found: dict[bytes, bytes | None] = {}

        async def read(pid: str, group: list[bytes]) -> None:
            found.update(zip(group, await self._views[pid].get_many(group), strict=True))

        await gather_all(read(pid, group) for pid, group in groups.items())
        return [found[k] for k in keys]

    async def locate(self, keys: Sequence[bytes]) -> None:
        return None

    def scan(
        self, start: bytes | None, end: bytes | None, *, reverse: bool = False
    ) -> AsyncIterator[tuple[bytes, bytes]]:
        return self._scan(start, end, reverse)

    async def _scan(self, start: bytes | None, end: bytes | None, reverse: bool) -> AsyncIterator[tuple[bytes, bytes]]:
        parts = self._pmap.overlapping(start, end)
        for part in reversed(parts) if reverse else parts:
            lo, hi = part.clip(start, end)
            async for pair in self._views[part.pid].scan(lo, hi, reverse=reverse):
                yield pair
