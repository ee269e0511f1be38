"""Where behavioural tests run: the same test against memory, the local filesystem and S3.

A `Target` is a store URL plus the keyword arguments `kvstore.open` needs for it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kvstore
from kvstore._engine import Engine
from kvstore.testing.faults import FaultInjectingStore, FaultPlan


@dataclass(frozen=True)
class Target:
    kind: str  # "memory", "file" or "s3"
    url: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def open(self, **extra: Any) -> kvstore.StoreOpener:
        return kvstore.open(self.url, **{**self.kwargs, **extra})

    def open_sync(self, **extra: Any) -> kvstore.SyncStore:
        return kvstore.open_sync(self.url, **{**self.kwargs, **extra})


def memory_target() -> Target:
    return Target("memory", f"memory://test-{uuid.uuid4().hex}")


def file_target(tmp_path: Path) -> Target:
    return Target("file", f"file://{tmp_path / 'store'}")


def s3_target(endpoint_url: str, bucket: str) -> Target:
    return Target("s3", f"s3://{bucket}/stores/{uuid.uuid4().hex[:8]}", {"endpoint_url": endpoint_url})


def engine_of(db: kvstore.Store) -> Engine:
    """The engine under a store, for white-box tests that read its manifest or reach its
    object store (the one place the tests look under the public face)."""
    return db._engine


def engines_of(db: kvstore.Store) -> list[Engine]:
    """The engines of every live partition of a store, in key order (one for a store never split)."""
    return db._router.all_engines()


# How far `gc_later` moves GC's clock on: far beyond any grace period a test uses.
LATER = 100_000_000.0  # about three years


async def gc_later(db: kvstore.Store, *, dry_run: bool = False) -> kvstore.GcReport:
    """A GC pass as if the store had then been left alone for long: every unreferenced object
    is older than the grace period and has been unreferenced for that long. (GC refuses a
    grace period shorter than the writers'; tests move its clock on instead of waiting.)

    Two passes with GC's clock moved on: the first (a real one) marks what is unreferenced,
    the second, LATER after it, deletes (or with `dry_run`, would delete) what was marked.
    """
    engines = engines_of(db)  # every partition's GC, on a partitioned store
    real = engines[0].wall_clock
    try:
        for engine in engines:
            engine.wall_clock = lambda: real() + LATER
        await db.gc()
        for engine in engines:
            engine.wall_clock = lambda: real() + 2 * LATER
        return await db.gc(dry_run=dry_run)
    finally:
        for engine in engines:
            engine.wall_clock = real


async def make_orphans(engine: Engine, count: int) -> set[str]:
    """`count` segments no manifest references, as crashed writers leave them."""
    names = [engine.layout.segment(f"{i:012d}-orphan{i:018d}") for i in range(count)]
    for start in range(0, count, 100):
        await asyncio.gather(*(engine.objects.put_if_absent(n, b"lost") for n in names[start : start + 100]))
    return set(names)


def fault_injecting(plan: FaultPlan | None = None) -> tuple[list[FaultInjectingStore], Callable[[Any], Any]]:
    """A `wrap_object_store` for `kvstore.open` that puts a FaultInjectingStore with
    `plan` over the backend, and the list that receives each one it makes (one per open)."""
    made: list[FaultInjectingStore] = []

    def wrap(inner: Any) -> FaultInjectingStore:
        store = FaultInjectingStore(inner, plan)
        made.append(store)
        return store

    return made, wrap
