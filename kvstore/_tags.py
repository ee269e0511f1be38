"""Tags: names for retained versions, each with an exact copy of its manifest.

    <prefix>/tags/<hash of name>.tag      the tag: name, version, time (safe create)
    <prefix>/snapshots/<version>.mf       the manifest of that version, copied
                                          server-side with CopySourceIfMatch

A tagged manifest keeps every segment it references alive (garbage
collection reads it), so a tag reads exactly what the store held at its
version, whatever compaction did since. Tag object names are hashes: no
user input reaches an object path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import msgpack

from ._cas import read_modify_cas
from ._envelope import seal, unseal
from ._errors import CorruptionError, TagExistsError, TagNotFoundError, ValidationError
from ._layout import Layout
from ._manifest import Manifest, decode_manifest
from ._manifest_store import ManifestStore
from ._objectstore import ObjectNotFound, PreconditionFailed, RetryingObjectStore

FORMAT = 1
_MAGIC = b"KVTG"
MAX_TAG_NAME = 256


@dataclass(frozen=True)
class Tag:
    """A named, retained version of the store."""

    name: str
    version: int
    created: float  # seconds since the epoch


class TagStore:
    """Tag objects and manifest copies under one store's prefix."""

    def __init__(self, objects: RetryingObjectStore, layout: Layout) -> None:
        self._objects = objects
        self._layout = layout

    async def create_at_latest(self, name: str, manifests: ManifestStore, *, expected: int | None = None) -> Tag:
        """Retain the latest version under `name`: one COPY and one PUT, again with a
        fresh manifest whenever a commit moves it between our read and the copy.

        With `expected`, only that version: if a commit moved the store past it,
        ValidationError (past versions cannot be tagged yet).
        """
        _check_name(name)

        async def load(fresh: bool) -> tuple[Manifest, str]:
            await manifests.refresh()
            return manifests.current

        async def write(current: tuple[Manifest, str]) -> Tag:
            manifest, etag = current
            if expected is not None and manifest.version != expected:
                raise ValidationError(
                    f"version {expected} is no longer the latest (the store is at {manifest.version}), and "
                    "tagging a past version is not supported yet: tag the latest version, or read the past "
                    "one with snapshot(version=...)"
                )
            return await self._create(name, etag, manifest.version)

        return await read_modify_cas(f"tagging {name!r}", load, write)

    async def _create(self, name: str, etag: str, version: int) -> Tag:
        """Retain `version` under `name`. Raises PreconditionFailed if the manifest
        moved past `etag`."""
        try:
            await self._objects.copy_if_match(self._layout.manifest, self._layout.snapshot(version), etag)
        except PreconditionFailed:
            try:
                await self._objects.head(self._layout.snapshot(version))  # copied before, by another tag
            except ObjectNotFound:
                raise PreconditionFailed("the manifest changed") from None
        tag = Tag(name, version, time.time())
        payload = msgpack.packb({"name": name, "version": version, "created": tag.created}, use_bin_type=True)
        try:
            await self._objects.put_if_absent(self._layout.tag(name), seal(_MAGIC, FORMAT, payload))
        except PreconditionFailed:
            existing = await self.get(name)
            raise TagExistsError(
                f"tag {name!r} exists (version {existing.version}); tags never move: delete it first"
            ) from None
        return tag

    async def get(self, name: str) -> Tag:
        _check_name(name)
        return await self._read(self._layout.tag(name), name)

    async def list(self) -> list[Tag]:
        """Every tag, by version. One LIST plus one GET per tag."""
        tags = [await self._read(info.name, None) async for info in self._objects.list(self._layout.tags_prefix)]
        return sorted(tags, key=lambda t: (t.version, t.name))

    async def delete(self, name: str) -> None:
        """Forget a tag; its manifest copy and segments go at the next GC after the grace period."""
        await self.get(name)  # TagNotFoundError if absent
        await self._objects.delete(self._layout.tag(name))

    async def manifest(self, tag: Tag) -> Manifest:
        name = self._layout.snapshot(tag.version)
        try:
            blob = await self._objects.get(name)
        except ObjectNotFound:
            raise CorruptionError(
                f"the manifest copy {name} of tag {tag.name!r} is missing", object_name=name, block="manifest"
            ) from None
        assert blob is not None
        return decode_manifest(blob.data, name)

    async def _read(self, object_name: str, name: str | None) -> Tag:
        try:
            blob = await self._objects.get(object_name)
        except ObjectNotFound:
            raise TagNotFoundError(f"no tag {name!r}: Store.tags() lists the tags") from None
        assert blob is not None
        doc = msgpack.unpackb(unseal(blob.data, _MAGIC, FORMAT, object_name, "tag"), raw=False)
        return Tag(doc["name"], doc["version"], doc["created"])


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name or len(name) > MAX_TAG_NAME or not name.isprintable():
        raise ValidationError(f"a tag name is a printable str of 1-{MAX_TAG_NAME} characters, not {name!r}")
