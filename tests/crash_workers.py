"""Child processes for the SIGKILL crash-point tests (imported by spawned children).

A writer commits one multi-key transaction through a `StallingStore`, which
lets one chosen request reach the store and then, instead of answering,
announces it (a marker file) and waits forever: the parent SIGKILLs the
process at exactly that point of the commit protocol.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kvstore
from kvstore._objectstore import Blob, ObjectInfo, ObjectStore

# Where the writer stops: after its segment PUT was applied, or after its manifest CAS was.
STEPS = ("segment-written", "cas-applied")


class StallingStore:
    """Passes every call through; after the first one matching `step` was applied, stalls."""

    def __init__(self, inner: ObjectStore, step: str, marker: Path) -> None:
        self.inner = inner
        self._step = step
        self._marker = marker

    @property
    def description(self) -> str:
        return self.inner.description

    async def get(
        self, name: str, *, byte_range: tuple[int, int] | None = None, if_none_match: str | None = None
    ) -> Blob | None:
        return await self.inner.get(name, byte_range=byte_range, if_none_match=if_none_match)

    async def put_if_absent(self, name: str, data: bytes) -> str:
        etag = await self.inner.put_if_absent(name, data)
        if self._step == "segment-written" and name.endswith(".seg"):
            await self._stall(name)
        return etag

    async def put_if_match(self, name: str, data: bytes, etag: str) -> str:
        new_etag = await self.inner.put_if_match(name, data, etag)
        if self._step == "cas-applied" and name.endswith("manifest"):
            await self._stall(name)
        return new_etag

    async def head(self, name: str) -> ObjectInfo:
        return await self.inner.head(name)

    async def list(self, prefix: str):  # type: ignore[no-untyped-def]
        async for info in self.inner.list(prefix):
            yield info

    async def delete(self, name: str) -> None:
        await self.inner.delete(name)

    async def close(self) -> None:
        await self.inner.close()

    async def _stall(self, name: str) -> None:
        # Written atomically (rename), so the parent never reads half a marker.
        tmp = self._marker.with_suffix(".tmp")
        tmp.write_text(f"{os.getpid()} {name}\n")
        os.replace(tmp, self._marker)
        await asyncio.Event().wait()  # never set: the parent kills us here


async def kill_when_stalled(worker: Callable[..., None], *args: Any, marker: Path) -> None:
    """Run `worker(*args, str(marker))` in a spawned process, SIGKILL it once it announces
    that it stalled, and check that the kill is what ended it."""
    child = multiprocessing.get_context("spawn").Process(target=worker, args=(*args, str(marker)))
    child.start()
    try:
        await wait_for_marker(marker, child, timeout=60)
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
    finally:
        child.join(10)
    assert child.exitcode == -signal.SIGKILL


async def wait_for_marker(marker: Path, child: Any, timeout: float) -> None:
    """Wait until the child announces it stalled (or fail if it dies or takes too long)."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert child.is_alive(), f"the writer exited with {child.exitcode} before reaching the step"
        assert time.monotonic() < deadline, "the writer never reached the step"
        # Polls a condition another process makes true (a file), bounded by the deadline
        # and the child's liveness: no fixed wait stands in for the event itself.
        await asyncio.sleep(0.02)


def commit_then_stall(url: str, kwargs: dict[str, Any], step: str, marker: str) -> None:
    """Commit {n: n+1, a, b, c} and a delete of the prefix gone/ (the transaction
    `crash-test`) and get killed at `step`."""

    async def main() -> None:
        segment_objects = kvstore.StoreOptions(inline_segment_bytes=0)  # so that "segment-written" exists
        async with kvstore.open(
            url,
            values="msgpack",
            options=segment_objects,
            **kwargs,
            wrap_object_store=lambda inner: StallingStore(inner, step, Path(marker)),
        ) as db:
            async with db.transaction(meta={"name": "crash-test"}) as tx:
                n = await tx.get("n")
                tx.put("n", n + 1)
                for key in ("a", "b", "c"):
                    tx.put(key, "written")
                tx.delete_prefix("gone/")  # the commit carries a range tombstone
        raise AssertionError("the stalling store should have stopped this commit")

    asyncio.run(main())


def compact_then_stall(url: str, kwargs: dict[str, Any], target_segment_bytes: int, marker: str) -> None:
    """Compact the store fully into segments of `target_segment_bytes`, and get killed once
    the first output segment is written (other sub-compactions may be writing theirs)."""

    async def main() -> None:
        options = kvstore.StoreOptions(auto_compact=False, target_segment_bytes=target_segment_bytes)
        async with kvstore.open(
            url,
            options=options,
            **kwargs,
            wrap_object_store=lambda inner: StallingStore(inner, "segment-written", Path(marker)),
        ) as db:
            await db.compact(full=True)
        raise AssertionError("the stalling store should have stopped this compaction")

    asyncio.run(main())
