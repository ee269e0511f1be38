"""Reading, creating and changing the partition map object (`_partition_map` holds its format)."""

from __future__ import annotations

from collections.abc import Callable

from ._cas import read_modify_cas
from ._layout import Layout
from ._objectstore import ObjectNotFound, PreconditionFailed, RetryingObjectStore
from ._partition_map import PartitionMap, decode_map, encode_map


class PartitionMapStore:
    """The map at `Layout.partition_map` and the newest copy this process has seen."""

    def __init__(self, objects: RetryingObjectStore, layout: Layout) -> None:
        self._objects = objects
        self.name = layout.partition_map
        self._map: PartitionMap | None = None
        self._etag = ""

    @property
    def current(self) -> PartitionMap | None:
        return self._map

    async def load(self) -> PartitionMap | None:
        """The latest map (one conditional GET), or None if the store has none (never split)."""
        try:
            blob = await self._objects.get(self.name, if_none_match=self._etag if self._map is not None else None)
        except ObjectNotFound:
            return None
        if blob is not None:
            assert blob.etag is not None
            self._install(decode_map(blob.data, self._objects.description + "/" + self.name), blob.etag)
        return self._map

    async def create(self, pmap: PartitionMap) -> PartitionMap:
        """Write the first map, or return the one a racing creator wrote first."""
        try:
            etag = await self._objects.put_if_absent(self.name, encode_map(pmap))
        except PreconditionFailed:
            found = await self.load()
            assert found is not None
            return found
        self._install(pmap, etag)
        return pmap

    async def change(self, what: str, derive: Callable[[PartitionMap | None], PartitionMap | None]) -> PartitionMap:
        """Apply `derive` to the latest map and CAS the result (a create when there is no map).

        `derive` returns None when the map already says what it wants (this is how a
        CAS whose answer was lost, answered 412 on the retry, is recognised: by reading
        the map back), else the next map.
        """

        async def load(fresh: bool) -> tuple[PartitionMap | None, str]:
            await self.load()
            return self._map, self._etag

        async def write(state: tuple[PartitionMap | None, str]) -> PartitionMap:
            pmap, etag = state
            new = derive(pmap)
            if new is None:
                assert pmap is not None
                return pmap
            data = encode_map(new)
            if pmap is None:
                new_etag = await self._objects.put_if_absent(self.name, data)
            else:
                new_etag = await self._objects.put_if_match(self.name, data, etag)
            self._install(new, new_etag)
            return new

        return await read_modify_cas(what, load, write)

    def _install(self, pmap: PartitionMap, etag: str) -> None:
        if self._map is None or pmap.version >= self._map.version:
            self._map, self._etag = pmap, etag
