"""Range deletes (issue 19): `delete_prefix` over 1 million keys, against deleting them key by key.

    .venv/bin/python bench/delete_range.py [--entries 1000000] [--latency-ms 20] [--skip-s3] \
        [--out bench/results]

For each backend (the local filesystem, and LocalStack S3 through ``bench/proxy.py`` with
``--latency-ms`` added to every request, as S3 over a network) a store of ``--entries`` keys
``ds/old/<n>`` (16-byte keys, 100-byte random values) and 1,000 other keys is bulk-loaded
(directly: only the measured operations pay the latency), then:

* ``delete_prefix("ds/old/")``: seconds, requests and bytes uploaded (every PUT body);
* a ``get`` of a deleted key and a ``scan`` of the deleted prefix in a freshly opened
  store (nothing cached): seconds and GETs;
* ``compact(full=True)``: seconds, bytes written, entries in and out, and whether the range
  left the manifest (with ``history_versions=0``, so nothing old must stay readable);
* the baseline, in the same invocation on a second copy of the store: the same keys deleted
  by ``Transaction.delete`` in transactions of 100,000 keys (``max_transaction_keys``, the
  most one may write), reading the keys with a scan first: not atomic, as a user must split it
  today. And the floor: one ``put`` of one key (a one-key commit, the smallest there is).

Prints a table and writes ``delete_range.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from common import VALUE_BYTES, log
from local_s3 import finish_meta, local_s3, run_meta

import kvstore

PREFIX = b"ds/old/"
TXN_KEYS = 100_000  # the default StoreOptions.max_transaction_keys


class CountingStore:
    """Passes every call through; counts request kinds and the bytes of every body uploaded."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.uploaded = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def put_if_absent(self, name: str, data: bytes) -> str:
        self.uploaded += len(data)
        return str(await self.inner.put_if_absent(name, data))

    async def put_if_match(self, name: str, data: bytes, etag: str) -> str:
        self.uploaded += len(data)
        return str(await self.inner.put_if_match(name, data, etag))

    async def upload_part(self, name: str, upload_id: str, number: int, data: bytes) -> str:
        self.uploaded += len(data)
        return str(await self.inner.upload_part(name, upload_id, number, data))


def _key(i: int) -> bytes:
    return PREFIX + b"%09d" % i


async def _load(url: str, entries: int, kw: dict[str, Any]) -> None:
    rng = random.Random(entries)
    async with kvstore.open(url, create=True, **kw) as db:
        await db.bulk_load((_key(i), rng.randbytes(VALUE_BYTES)) for i in range(entries))
        await db.bulk_load((b"ds/new/%09d" % i, rng.randbytes(VALUE_BYTES)) for i in range(1000))


def _requests(db: Any) -> dict[str, int]:
    return dict(db.statistics()["requests"])


def _diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}


async def _measure(url: str, copy_url: str, entries: int, kw: dict[str, Any]) -> dict[str, Any]:
    made: list[CountingStore] = []

    def counting(inner: Any) -> CountingStore:
        made.append(CountingStore(inner))
        return made[-1]

    options = kvstore.StoreOptions(auto_compact=False, history_versions=0)
    out: dict[str, Any] = {}
    async with kvstore.open(url, options=options, wrap_object_store=counting, **kw) as db:
        counter = made[-1]
        # the floor: a one-key commit
        before, sent = _requests(db), counter.uploaded
        t0 = time.perf_counter()
        await db.put(b"one", b"x" * VALUE_BYTES)
        out["one_key_put"] = {
            "seconds": time.perf_counter() - t0,
            "requests": _diff(_requests(db), before),
            "bytes_uploaded": counter.uploaded - sent,
        }
        manifest_before = len(kvstore_manifest_bytes(db))
        before, sent = _requests(db), counter.uploaded
        t0 = time.perf_counter()
        version = await db.delete_prefix(PREFIX)
        out["delete_prefix"] = {
            "seconds": time.perf_counter() - t0,
            "requests": _diff(_requests(db), before),
            "bytes_uploaded": counter.uploaded - sent,
            "manifest_growth_bytes": len(kvstore_manifest_bytes(db)) - manifest_before,
            "version": version,
            "keys_deleted": entries,
        }
    async with kvstore.open(url, options=options, **kw) as db:  # cold: nothing cached
        before = _requests(db)
        t0 = time.perf_counter()
        found = await db.get(_key(entries // 2))
        out["get_deleted_key_cold"] = {"seconds": time.perf_counter() - t0, "requests": _diff(_requests(db), before)}
        assert found is None
        before = _requests(db)
        t0 = time.perf_counter()
        left = [k async for k, _ in db.scan(PREFIX)]
        out["scan_deleted_prefix_cold"] = {
            "seconds": time.perf_counter() - t0,
            "requests": _diff(_requests(db), before),
            "keys": len(left),
        }
        assert not left
        await db.put(b"z", b"a commit after the delete")  # the history floor passes it
    made.clear()
    async with kvstore.open(url, options=options, wrap_object_store=counting, **kw) as db:
        counter = made[-1]
        t0 = time.perf_counter()
        [result] = await db.compact(full=True)
        out["compaction"] = {
            "seconds": time.perf_counter() - t0,
            "entries_in": result.entries_in,
            "entries_out": result.entries_out,
            "bytes_in": result.bytes_in,
            "bytes_written": result.bytes_written,
            "bytes_uploaded": counter.uploaded,
            "range_deletes_left": len(engine_manifest(db).range_deletes),
        }
        assert [k async for k, _ in db.scan(PREFIX)] == []
    # The baseline: the same keys deleted one by one, in the largest transactions allowed.
    made.clear()
    async with kvstore.open(copy_url, options=options, wrap_object_store=counting, **kw) as db:
        counter = made[-1]
        before, sent = _requests(db), counter.uploaded
        t0 = time.perf_counter()
        transactions = 0
        keys = [k async for k, _ in db.scan(PREFIX)]
        for start in range(0, len(keys), TXN_KEYS):
            async with db.transaction() as tx:
                for k in keys[start : start + TXN_KEYS]:
                    tx.delete(k)
            transactions += 1
        out["point_deletes"] = {
            "seconds": time.perf_counter() - t0,
            "requests": _diff(_requests(db), before),
            "bytes_uploaded": counter.uploaded - sent,
            "transactions": transactions,
            "keys_deleted": len(keys),
        }
        assert await db.get(_key(entries // 2)) is None
    return out


def engine_manifest(db: Any) -> Any:
    """The manifest the store holds (white-box, as the tests' `engine_of`)."""
    return db._engine.manifest


def kvstore_manifest_bytes(db: Any) -> bytes:
    from kvstore._manifest import encode_manifest

    return encode_manifest(engine_manifest(db))


async def main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"meta": run_meta(entries=args.entries, latency_ms=args.latency_ms)}
    workdir = Path(tempfile.mkdtemp(prefix="kvbench-delrange-"))
    try:
        log("local filesystem")
        a, b = str(workdir / "fs-a"), str(workdir / "fs-b")
        await asyncio.gather(_load(a, args.entries, {}), _load(b, args.entries, {}))
        results["fs"] = await _measure(a, b, args.entries, {})
        if not args.skip_s3:
            log("starting LocalStack")
            async with local_s3(workdir) as s3:
                a, b = f"s3://{s3.bucket}/delrange-a", f"s3://{s3.bucket}/delrange-b"
                await _load(a, args.entries, s3.direct)
                await _load(b, args.entries, s3.direct)
                log(f"S3 at +{args.latency_ms} ms")
                results["s3"] = await _measure(a, b, args.entries, s3.proxied(args.latency_ms))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return finish_meta(results)


def _requests_text(r: dict[str, int]) -> str:
    return " ".join(f"{n} {kind}" for kind, n in sorted(r.items())) or "none"


def table(results: dict[str, Any]) -> list[str]:
    lines = []
    for backend, title in (
        ("fs", "local filesystem"),
        ("s3", f"S3 (LocalStack) at +{results['meta']['latency_ms']:g} ms"),
    ):
        if backend not in results:
            continue
        r = results[backend]
        dp, base, one = r["delete_prefix"], r["point_deletes"], r["one_key_put"]
        lines += [
            f"{title}: {dp['keys_deleted']:,} keys",
            f"  {'operation':42} {'seconds':>9} {'uploaded':>12}  requests",
            f"  {'delete_prefix (one commit)':42} {dp['seconds']:9.3f} {dp['bytes_uploaded']:10,d} B  "
            f"{_requests_text(dp['requests'])}  (manifest +{dp['manifest_growth_bytes']} B)",
            f"  {'one-key put (the smallest commit)':42} {one['seconds']:9.3f} {one['bytes_uploaded']:10,d} B  "
            f"{_requests_text(one['requests'])}",
            f"  {'baseline: point deletes, ' + str(base['transactions']) + ' transactions':42} {base['seconds']:9.3f} "
            f"{base['bytes_uploaded']:10,d} B  {_requests_text(base['requests'])}",
            f"  {'  ratio baseline / delete_prefix':42} {base['seconds'] / dp['seconds']:8.0f}x "
            f"{base['bytes_uploaded'] / max(dp['bytes_uploaded'], 1):11,.0f}x",
            f"  {'get of a deleted key, cold':42} {r['get_deleted_key_cold']['seconds']:9.3f} {'':>12}  "
            f"{_requests_text(r['get_deleted_key_cold']['requests'])}",
            f"  {'scan of the deleted prefix, cold':42} {r['scan_deleted_prefix_cold']['seconds']:9.3f} {'':>12}  "
            f"{_requests_text(r['scan_deleted_prefix_cold']['requests'])}",
        ]
        c = r["compaction"]
        lines.append(
            f"  {'compact(full=True) afterwards':42} {c['seconds']:9.3f} {c['bytes_uploaded']:10,d} B  "
            f"entries {c['entries_in']:,} -> {c['entries_out']:,}; range deletes left: {c['range_deletes_left']}"
        )
    return lines


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--skip-s3", action="store_true")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    results = asyncio.run(main(args))
    print("\n".join(table(results)))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "delete_range.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {out / 'delete_range.json'}")


if __name__ == "__main__":
    cli()
