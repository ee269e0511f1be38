"""Engines on the partitions of one store root, for tests and campaigns of cross-partition
transactions at the engine level (`kvstore._two_phase`), before a face routes a
partitioned store: partition `n` lives under `<url>/p/<n>/`, decisions under the root.

    parts = await open_parts("file:///tmp/s", 2)
    ...  # parts.engines[0].commit(...), commit_across([...], parts.decisions)
    await parts.close()
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kvstore._codec import ValueMode
from kvstore._commit import CommitRequest
from kvstore._engine import Engine, open_engine
from kvstore._layout import Layout
from kvstore._objectstore import ObjectStore, RetryingObjectStore, S3Options
from kvstore._options import StoreOptions
from kvstore._snapshot import SnapshotView
from kvstore._two_phase import Decisions
from kvstore._url import parse_url

Wrap = Callable[[ObjectStore], ObjectStore]


@dataclass
class Parts:
    """Engines on the partitions of one store root, and the root's decisions."""

    engines: list[Engine]
    decisions: Decisions
    root_objects: RetryingObjectStore

    async def close(self) -> None:
        """Close every engine (finishing their background resolves), then the root's store."""
        try:
            for engine in self.engines:
                await engine.close()
        finally:
            await self.root_objects.close()


async def open_parts(
    url: str,
    count: int,
    *,
    options: StoreOptions | None = None,
    s3: S3Options | None = None,
    create: bool = True,
    wrap: Wrap | None = None,
    wrap_root: Wrap | None = None,
) -> Parts:
    """Open (with `create`, making) partitions `p/0/` .. `p/<count-1>/` under `url`. `wrap`
    wraps each partition's backend, `wrap_root` the root's (where decisions live)."""
    options = options or StoreOptions()
    s3 = s3 or S3Options()
    root = parse_url(url, s3)
    backend = root.objects if wrap_root is None else wrap_root(root.objects)
    root_objects = RetryingObjectStore(backend, options.retry)
    decisions = Decisions(root_objects, Layout(root.prefix))
    engines: list[Engine] = []
    try:
        for n in range(count):
            engines.append(
                await open_engine(
                    parse_url(f"{url.rstrip('/')}/p/{n}", s3),
                    options,
                    create=create,
                    read_only=False,
                    new_settings={"values": "bytes"},
                    adopt_settings={},
                    wrap_object_store=wrap,
                    decisions=decisions,
                )
            )
    except BaseException:
        await Parts(engines, decisions, root_objects).close()
        raise
    return Parts(engines, decisions, root_objects)


def request(
    engine: Engine,
    view: SnapshotView | None,
    reads: set[bytes],
    writes: dict[bytes, bytes | None],
    txn_id: bytes = b"",
    values: ValueMode = "bytes",
) -> CommitRequest:
    """A commit request of `engine` that read `reads` at `view` (None: read nothing)."""
    return CommitRequest(
        txn_id=txn_id or engine.new_txn_id(),
        read_version=None if view is None else view.version,
        started=time.monotonic(),
        read_keys=reads,
        read_ranges=[],
        writes=writes,
        values=values,
    )


async def read_validated(parts: Parts, keys: Sequence[Sequence[bytes]]) -> list[list[bytes | None]] | None:
    """The values of `keys[p]` in partition p, read in every partition at once and then
    validated as a read-only transaction across partitions is (`Engine.changed_since`):
    None if a commit, or a decision of an intent on them, came between the reads."""
    views = await asyncio.gather(*(e.latest_view() for e in parts.engines))
    found = await asyncio.gather(*(v.get_many(ks) for v, ks in zip(views, keys, strict=True)))
    changed = await asyncio.gather(
        *(e.changed_since(v.version, ks, [], v.shown) for e, v, ks in zip(parts.engines, views, keys, strict=True))
    )
    return None if any(changed) else list(found)


async def read_balances(parts: Parts, accounts: int, account: Callable[[int], bytes]) -> list[int] | None:
    """Every balance of a bank whose account i (key `account(i)`) lives in partition
    i % partitions, read with `read_validated`; None if validation failed."""
    n = len(parts.engines)
    keys = [[account(i) for i in range(p, accounts, n)] for p in range(n)]
    found = await read_validated(parts, keys)
    if found is None:
        return None
    balances = [0] * accounts
    for p, values in enumerate(found):
        for i, raw in zip(range(p, accounts, n), values, strict=True):
            balances[i] = int(raw or b"0")
    return balances
