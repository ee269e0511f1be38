"""Lost answers at the object-store protocol: a write applied, its answer lost, and
the request sent again unseen (as aiohttp does for a PUT on a dropped keep-alive
connection), so kvstore sees only the resend's 412 for its own write.

Design I5: committed once, reported once. Every conditional write must resolve a
412 by looking for its own write, never by assuming a rival's. The same faults on
the wire, through a TCP proxy in front of LocalStack, are in `test_wire_faults.py`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from targets import Target, engine_of, fault_injecting, gc_later, s3_target

import kvstore
from kvstore._objectstore import ObjectNotFound, TransientError
from kvstore.testing.faults import FaultPlan, FaultRule

pytestmark = pytest.mark.timeout(120)


async def _increment(tx: kvstore.Transaction) -> int:
    n = int(await tx.get(b"n", b"0")) + 1
    tx.put(b"n", str(n).encode())
    return n


async def test_a_single_writer_never_conflicts_with_its_own_resent_commits(target: Target) -> None:
    # Before the fix, 1 in 5 of these reported ConflictError for a committed transaction.
    plan = FaultPlan(seed=3, rules={"put_if_match": FaultRule(resent=0.3)})
    made, wrap = fault_injecting(plan)
    async with target.open(wrap_object_store=wrap) as db:
        for _ in range(60):
            async with db.transaction() as tx:
                await _increment(tx)
        assert made[0].injected["put_if_match:resent"] >= 10
        assert db.statistics()["conflicts"] == 0
        assert db.statistics()["ambiguous_commits_resolved"] >= 10  # (others hit compaction and the probe)
        assert await db.get(b"n") == b"60"


async def test_transact_applies_each_increment_once_when_commits_are_resent(target: Target) -> None:
    # Before the fix, `transact` retried committed increments: the counter overshot.
    plan = FaultPlan(seed=5, rules={"put_if_match": FaultRule(resent=0.25)})
    made, wrap = fault_injecting(plan)
    async with target.open(wrap_object_store=wrap) as db:

        async def worker() -> int:
            return len([await db.transact(_increment) for _ in range(8)])

        acknowledged = sum(await asyncio.gather(*(worker() for _ in range(6))))
        assert made[0].injected["put_if_match:resent"] >= 3
        assert await db.get(b"n") == str(acknowledged).encode() == b"48"


async def test_a_resent_segment_create_is_recognised_as_ours(target: Target) -> None:
    made, wrap = fault_injecting(FaultPlan())
    async with target.open(wrap_object_store=wrap) as db:
        made[0].script("put_if_absent", "resent")
        big = os.urandom(64 * 1024)  # incompressible, over the inline limit: a segment object
        version = await db.put(b"big", big)
        assert made[0].injected["put_if_absent:resent"] == 1
        assert db.statistics()["ambiguous_creates_resolved"] == 1
        assert await db.get(b"big") == big
        assert db.version == version


async def test_compaction_with_resent_writes_neither_fails_nor_duplicates(target: Target) -> None:
    made, wrap = fault_injecting(FaultPlan())
    async with target.open(
        wrap_object_store=wrap, options=kvstore.StoreOptions(auto_compact=False, inline_segment_bytes=0)
    ) as db:
        for i in range(10):
            await db.put(f"k{i}", f"v{i}".encode())
        made[0].script("put_if_absent", "resent")  # the merged segment
        made[0].script("put_if_match", "resent")  # the compaction's manifest CAS
        results = await db.compact(full=True)
        assert len(results) == 1
        assert made[0].injected["put_if_absent:resent"] == 1
        assert made[0].injected["put_if_match:resent"] == 1
        history = await db.history()
        compactions = [c for c in history if c.kind == "compaction"]
        assert len(compactions) == 1
        assert [k async for k, _ in db.scan()] == [f"k{i}".encode() for i in range(10)]
        assert (await db.describe()).segments == 1


async def test_tagging_with_resent_writes_creates_the_tag_once(target: Target) -> None:
    made, wrap = fault_injecting(FaultPlan())
    async with target.open(wrap_object_store=wrap) as db:
        await db.put(b"k", b"v1")
        made[0].script("copy_if_match", "resent")  # the manifest copy
        made[0].script("put_if_absent", "resent")  # the tag object
        tag = await db.tag("release")
        assert made[0].injected["copy_if_match:resent"] == 1
        assert made[0].injected["put_if_absent:resent"] == 1
        assert [t.name for t in await db.tags()] == ["release"]
        await db.put(b"k", b"v2")
        assert await (await db.snapshot(tag="release")).get(b"k") == b"v1"
        assert tag.version == 1


async def test_gc_with_a_resent_marks_write_completes(target: Target) -> None:
    made, wrap = fault_injecting(FaultPlan())
    options = kvstore.StoreOptions(auto_compact=False, inline_segment_bytes=0, commit_log_length=2)
    async with target.open(wrap_object_store=wrap, options=options) as db:
        for i in range(3):
            await db.put(f"k{i}", b"x" * 100)
        await db.compact(full=True)  # the three level-0 segments become garbage
        made[0].script("put_if_absent", "resent")  # the first marks object
        report = await db.gc()
        assert made[0].injected["put_if_absent:resent"] == 1
        assert report.deleted == []  # younger than the grace period
        for i in range(3, 5):  # push the compacted segments' commits out of the log
            await db.put(f"k{i}", b"x" * 100)
        again = await gc_later(db)
        assert len(again.deleted) == 3
        assert [k async for k, _ in db.scan()] == [f"k{i}".encode() for i in range(5)]


async def test_a_resent_abort_of_a_multipart_upload_succeeds(s3_bucket: tuple[str, str]) -> None:
    # S3 answers the resent abort with 404 NoSuchUpload: the upload is gone, as asked.
    # A failed bulk load aborts its uploads while handling its own error, which must not
    # be replaced by that second answer.
    made, wrap = fault_injecting(FaultPlan())
    async with s3_target(*s3_bucket).open(wrap_object_store=wrap) as db:
        objects = engine_of(db).objects
        upload = await objects.start_multipart("scratch/upload")
        await objects.upload_part("scratch/upload", upload, 1, b"x" * 1024)
        made[0].script("abort_multipart", "resent")
        await objects.abort_multipart("scratch/upload", upload)
        assert made[0].injected["abort_multipart:resent"] == 1
        with pytest.raises(ObjectNotFound):  # it was aborted, once
            await objects.complete_multipart_if_absent("scratch/upload", upload, [(1, '"x"')])


class _Interposer:
    """Delegates to a backend; `before_copy` runs once before the next copy, and
    `expire_after_lost_cas` makes the next manifest CAS apply, lose its answer, and
    meet expired credentials when retried."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.before_copy: Callable[[], Awaitable[object]] | None = None
        self.expire_after_lost_cas = False
        self._cas_calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def copy_if_match(self, source: str, destination: str, etag: str) -> str:
        if self.before_copy is not None:
            hook, self.before_copy = self.before_copy, None
            await hook()
        return str(await self._inner.copy_if_match(source, destination, etag))

    async def put_if_match(self, name: str, data: bytes, etag: str) -> str:
        if not self.expire_after_lost_cas:
            return str(await self._inner.put_if_match(name, data, etag))
        self._cas_calls += 1
        if self._cas_calls == 1:
            await self._inner.put_if_match(name, data, etag)
            raise TransientError("the answer was lost")
        raise kvstore.AccessDeniedError("the credentials expired")


def _interposing() -> tuple[list[_Interposer], Callable[[Any], Any]]:
    made: list[_Interposer] = []

    def wrap(inner: Any) -> _Interposer:
        made.append(_Interposer(inner))
        return made[-1]

    return made, wrap


async def test_a_lasting_error_after_a_lost_answer_does_not_hide_the_commit(target: Target) -> None:
    # The retry after a lost answer meets expired credentials. The commit was applied:
    # it must be reported committed, not failed (a caller would apply it twice).
    made, wrap = _interposing()
    async with target.open(wrap_object_store=wrap) as db:
        await db.put(b"k", b"1")
        made[0].expire_after_lost_cas = True
        version = await db.put(b"k", b"2")
        made[0].expire_after_lost_cas = False
        assert version == 2
        assert await db.get(b"k") == b"2"
        assert [c.version for c in await db.history()] == [2, 1]


async def test_tagging_a_version_never_tags_a_later_one(target: Target) -> None:
    made, wrap = _interposing()
    async with target.open(wrap_object_store=wrap) as db, target.open() as other:
        version = await db.put(b"k", b"1")
        made[0].before_copy = lambda: other.put(b"k", b"2")  # a commit lands just before the copy
        with pytest.raises(kvstore.ValidationError, match=f"version {version} is no longer the latest"):
            await db.tag("release", version=version)
        assert await db.tags() == []
        tag = await db.tag("release", version=db.version)
        assert tag.version == version + 1
