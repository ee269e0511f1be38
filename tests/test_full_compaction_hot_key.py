"""A full compaction of a store whose only segment is one key's history: a segment never
ends inside a key, so it cannot be split; once written, compacting it again changes nothing
and must cost nothing (no rewrite, no new version)."""

from __future__ import annotations

import os

from targets import Target, engine_of

import kvstore

TARGET = 64 * 1024


async def test_a_lone_hot_key_segment_is_not_rewritten_by_every_full_compaction(target: Target) -> None:
    options = kvstore.StoreOptions(auto_compact=False, target_segment_bytes=TARGET, history_versions=100)
    async with target.open(options=options) as db:
        values = [os.urandom(16 * 1024) for _ in range(20)]
        for value in values:
            await db.put(b"doc", value)
        first = await db.compact(full=True)
        assert [(r.inputs, r.outputs) for r in first] == [(20, 1)]
        (segment,) = engine_of(db).manifest.segments
        assert segment.size > TARGET and segment.min_key == segment.max_key == b"doc"
        version = db.version
        requests = engine_of(db).objects.requests
        writes = requests["PUT"] + requests["POST"]
        assert await db.compact(full=True) == []
        assert db.version == version
        assert engine_of(db).manifest.segments == (segment,)
        assert requests["PUT"] + requests["POST"] == writes  # nothing uploaded
        # Every kept version still reads back.
        for n, value in enumerate(values, start=1):
            assert await (await db.snapshot(version=n)).get(b"doc") == value
        # A store with another key is compacted as before.
        await db.put(b"other", b"x")
        assert [r.inputs for r in await db.compact(full=True)] == [2]
