"""Several writer processes on one store: 4 x 16 writers, and the single-manifest ceiling.

    python bench/procs.py partitions [--latency-ms 0,20,50] [--configs 4x8,8x8] [--duration 5]

runs the partition benchmark (issue 18): P processes x W writers, each process writing its
own keys, on a store of P key-range partitions (each process in its own partition) against
the same run on one partition, every request through a `FaultProxy` adding the latency;
and the sequential commit latency of one writer on one partition of a partitioned store
against an unpartitioned store. It prints a table and writes JSON (`--out`).

``run_processes`` starts this file (``python bench/procs.py``) with the JSON specs on
stdin; it imports kvstore once and forks one worker per spec. Once every worker has opened
the store (``READY``), all get one start time (``GO <epoch>``) so they measure the same
window. Each worker reports what it completed and the change of its ``db.statistics()``
at the deadline.

Modes:

* ``put``        blind writes of the worker's own keys (disjoint across processes);
* ``increment``  read-modify-write of random keys among ``hot_keys`` shared by every
                 process, through ``db.transact`` (conflicts are retried there).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from common import MAIN_PYTHON, VALUE, Target, closed_loop, env_for_children, open_store  # noqa: E402
from kv import options  # noqa: E402

READY_TIMEOUT = 120.0


def run_processes(specs: list[dict[str, Any]], duration: float) -> dict[str, Any]:
    """Run one worker per spec over the same window; aggregate their results.

    One child process (this file) imports kvstore once and forks the workers, so starting
    16 of them costs one interpreter start, not 16.
    """
    proc = subprocess.run(
        [str(MAIN_PYTHON), str(HERE / "procs.py")],
        input=json.dumps(specs),
        capture_output=True,
        text=True,
        env=env_for_children(),
        timeout=READY_TIMEOUT + duration + 180,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"fleet failed ({proc.returncode}): {proc.stderr[-2000:]}")
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    results = doc["workers"]
    elapsed = max(r["seconds"] for r in results)
    total = {
        k: sum(r[k] for r in results) for k in ("ops", "errors", "commits", "conflicts", "cas_retries", "unfinished")
    }
    requests: dict[str, int] = {}
    for r in results:
        for k, v in r["requests"].items():
            requests[k] = requests.get(k, 0) + v
    return {
        "processes": len(specs),
        "writers_per_process": specs[0]["writers"],
        "seconds": elapsed,
        "ready_seconds": doc["ready_seconds"],
        **total,
        "tx_per_s": total["ops"] / elapsed,
        "batches_per_s": total["commits"] / elapsed,
        "cas_retries_per_s": total["cas_retries"] / elapsed,
        "conflicts_per_s": total["conflicts"] / elapsed,
        "tx_per_batch": total["ops"] / total["commits"] if total["commits"] else None,
        "requests": requests,
        "requests_per_tx": sum(requests.values()) / total["ops"] if total["ops"] else None,
        "per_process_tx_per_s": [r["ops"] / r["seconds"] for r in results],
    }


def fleet(
    target: Target,
    store: str,
    latency: float,
    processes: int,
    writers: int,
    duration: float,
    mode: str = "put",
    hot_keys: int = 256,
    warmup: float = 0.5,
    opts: dict[str, Any] | None = None,
    split_keys: list[str] | None = None,
) -> dict[str, Any]:
    specs = [
        {
            "target": target.to_json(),
            "store": store,
            "latency": latency,
            "writers": writers,
            "duration": duration,
            "warmup": warmup,
            "mode": mode,
            "hot_keys": hot_keys,
            "worker": n,
            "options": opts or {},
            "split_keys": split_keys,
        }
        for n in range(processes)
    ]
    return run_processes(specs, duration)


# --------------------------------------------------------------------------- worker side


async def _work(spec: dict[str, Any], ready_fd: int, go_fd: int) -> dict[str, Any]:
    target = Target.from_json(spec["target"])
    worker = spec["worker"]
    rng = random.Random(worker)

    async def increment(tx: Any, key: bytes) -> None:
        old = await tx.get(key)
        tx.put(key, ((int.from_bytes(old, "little") if old else 0) + 1).to_bytes(8, "little"))

    # The store is left open on purpose: the process exits right after reporting, so
    # commits still in flight at the deadline (under CAS contention they can take long)
    # neither delay the run nor count.
    db = await open_store(target, spec["store"], spec["latency"], options=options(**spec.get("options", {})))
    await db.snapshot()  # connections up, manifest read
    os.write(ready_fd, b"READY\n")
    line = await asyncio.to_thread(_read_line, go_fd)
    start = float(line.split()[1])
    await asyncio.sleep(max(0.0, start - time.time()))
    if spec["mode"] == "put":

        def op(w: int, i: int) -> Any:
            return db.put(b"p%03d/%03d/%08d" % (worker, w, i), VALUE)
    else:
        hot = spec["hot_keys"]

        def op(w: int, i: int) -> Any:
            return db.transact(increment, b"hot/%05d" % rng.randrange(hot))

    r = await closed_loop(
        op,
        spec["writers"],
        spec["duration"],
        warmup=spec["warmup"],
        grace=0.0,
        probe=db.statistics,
        wait_for_warm=False,
    )  # one window for every process
    before, after = r.pop("probe_start"), r.pop("probe_end")
    requests = {k: v - before["requests"].get(k, 0) for k, v in after["requests"].items()}
    return {
        **r,
        "commits": after["commits"] - before["commits"],
        "conflicts": after["conflicts"] - before["conflicts"],
        "cas_retries": after["cas_retries"] - before["cas_retries"],
        "requests": {k: v for k, v in requests.items() if v},
    }


async def _warm(spec: dict[str, Any]) -> None:
    split = spec.get("split_keys")
    extra = {} if not split else {"split_keys": split}
    async with open_store(Target.from_json(spec["target"]), spec["store"], 0.0, **extra) as db:
        await db.snapshot()


def _read_line(fd: int, timeout: float | None = None) -> str:
    data = b""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not data.endswith(b"\n"):
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError("worker did not answer")
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode()


def _child(spec: dict[str, Any], ready_w: int, go_r: int, result_w: int) -> None:
    try:
        loop = asyncio.new_event_loop()
        result = loop.run_until_complete(_work(spec, ready_w, go_r))
        os.write(result_w, (json.dumps(result) + "\n").encode())
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        os.write(ready_w, f"FAILED {type(exc).__name__}: {exc}\n".encode())
        os.write(result_w, (json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n").encode())
    finally:
        os._exit(0)  # see _work: do not wait for in-flight commits


def _preload_botocore() -> None:
    """Load botocore's S3 model once, before forking, for every worker to share.

    kvstore's S3 backend makes a new aiobotocore session per store and loads the S3 service
    model into it (~0.2-0.5 s of CPU per open). Workers inherit one session with the model
    already loaded instead, so starting 16 of them on 2 cores takes seconds, not tens of
    seconds. Only the start-up changes: the measured requests are the same.
    """
    try:
        from aiobotocore.session import get_session

        import kvstore._objectstore._s3 as s3_backend

        session = get_session()
        loader = session.get_component("data_loader")
        loader.load_service_model("s3", "service-2")
        loader.load_service_model("s3", "endpoint-rule-set-1")
        s3_backend.get_session = lambda: session  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001, S110 - an engine that no longer works this way: start slower, but start
        pass


def _main() -> None:
    import kvstore  # noqa: F401 - imported once, before forking

    specs = json.loads(sys.stdin.read())
    _preload_botocore()
    asyncio.run(_warm(specs[0]))  # the endpoint probe, once for all workers
    t0 = time.monotonic()
    children = []
    for spec in specs:
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()
        result_r, result_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            for fd in (ready_r, go_w, result_r):
                os.close(fd)
            _child(spec, ready_w, go_r, result_w)
        for fd in (ready_w, go_r, result_w):
            os.close(fd)
        children.append((pid, ready_r, go_w, result_r))
    try:
        for _, ready_r, _, _ in children:
            line = _read_line(ready_r, READY_TIMEOUT)
            if line.strip() != "READY":
                raise RuntimeError(f"worker not ready: {line.strip()!r}")
        ready_seconds = time.monotonic() - t0
        start = time.time() + 0.2
        for _, _, go_w, _ in children:
            os.write(go_w, f"GO {start}\n".encode())
        results = []
        for _, _, _, result_r in children:
            line = _read_line(result_r, float(specs[0]["duration"]) + float(specs[0]["warmup"]) + 60)
            result = json.loads(line)
            if "error" in result:
                raise RuntimeError(result["error"])
            results.append(result)
    finally:
        for pid, *_ in children:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
    print(json.dumps({"ready_seconds": ready_seconds, "workers": results}), flush=True)


# --------------------------------------------------------------------------- issue 18: partitions


def _start_proxy(upstream: str, latency: float) -> tuple[subprocess.Popen[str], str]:
    """A FaultProxy process adding `latency` seconds before forwarding each request."""
    proc = subprocess.Popen(
        [str(MAIN_PYTHON), "-m", "kvstore.testing.netproxy", "--upstream", upstream, "--latency", str(latency)],
        stdout=subprocess.PIPE,
        text=True,
        env=env_for_children(),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("http"):
        proc.kill()
        raise RuntimeError(f"FaultProxy did not start: {line!r}")
    return proc, line


async def _commit_latency(target: Target, store: str, split_keys: list[str] | None, seconds: float) -> dict[str, Any]:
    """One writer's sequential puts (each acknowledged before the next) for `seconds`."""
    from common import timed_sequence

    extra = {} if not split_keys else {"split_keys": split_keys}
    async with open_store(target, store, 0.0, **extra) as db:
        await db.put(b"p000/warm", VALUE)
        lat = await timed_sequence(lambda i: db.put(b"p000/%08d" % i, VALUE), 100_000, seconds)
    return lat.summary()


def partition_bench(argv: list[str]) -> None:
    import argparse
    import datetime as dt
    import uuid

    from common import ensure_bucket
    from servers import start_localstack

    ap = argparse.ArgumentParser(prog="procs.py partitions")
    ap.add_argument("--latency-ms", default="0,20,50,30")
    ap.add_argument("--configs", default="4x8,8x8", help="PxW: processes x writers per process")
    ap.add_argument("--target-configs", default="8x8", help="configs also run at the target latency (30 ms)")
    ap.add_argument("--target-latency-ms", type=float, default=30.0)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--latency-seconds", type=float, default=5.0)
    ap.add_argument("--out", default=str(HERE / "results" / "partitions.json"))
    args = ap.parse_args(argv)
    configs = [tuple(int(x) for x in c.split("x")) for c in args.configs.split(",") if c]
    latencies = [float(x) for x in args.latency_ms.split(",") if x]
    workdir = Path(__import__("tempfile").mkdtemp(prefix="kvbench-parts-"))
    server = start_localstack(workdir / "localstack")
    results: dict[str, Any] = {
        "meta": {"started": dt.datetime.now().isoformat(timespec="seconds"), "duration": args.duration},
        "runs": [],
        "latency": [],
    }
    try:
        asyncio.run(ensure_bucket(server.endpoint_url, "kvbench"))
        for lat_ms in latencies:
            proxy, url = _start_proxy(server.endpoint_url, lat_ms / 1e3)
            try:
                target = Target("s3", endpoint_url=url, bucket="kvbench")
                run_configs = (
                    configs
                    if lat_ms != args.target_latency_ms
                    else [tuple(int(x) for x in c.split("x")) for c in args.target_configs.split(",") if c]
                )
                for p, w in run_configs:
                    row: dict[str, Any] = {"latency_ms": lat_ms, "processes": p, "writers": w}
                    for name, split in (("one", None), ("partitioned", [f"p{n:03d}/" for n in range(1, p)])):
                        store = f"parts-{uuid.uuid4().hex[:8]}"
                        r = fleet(target, store, 0.0, p, w, args.duration, split_keys=split)
                        row[name] = {k: r[k] for k in ("tx_per_s", "batches_per_s", "cas_retries_per_s", "errors")}
                        row[name]["per_process_tx_per_s"] = r["per_process_tx_per_s"]
                    row["ratio"] = row["partitioned"]["tx_per_s"] / max(row["one"]["tx_per_s"], 1e-9)
                    results["runs"].append(row)
                    print(
                        f"+{lat_ms:g} ms {p}x{w}: one partition {row['one']['tx_per_s']:.0f} tx/s, "
                        f"{p} partitions {row['partitioned']['tx_per_s']:.0f} tx/s ({row['ratio']:.2f}x)",
                        flush=True,
                    )
                one = asyncio.run(_commit_latency(target, f"lat-{uuid.uuid4().hex[:8]}", None, args.latency_seconds))
                part = asyncio.run(
                    _commit_latency(
                        target, f"lat-{uuid.uuid4().hex[:8]}", ["p001/", "p002/", "p003/"], args.latency_seconds
                    )
                )
                results["latency"].append(
                    {"latency_ms": lat_ms, "one": one, "partitioned": part, "ratio": part["mean_ms"] / one["mean_ms"]}
                )
                print(
                    f"+{lat_ms:g} ms commit latency: one partition {one['mean_ms']:.1f} ms (p50 {one['p50_ms']:.1f}), "
                    f"one of 4 partitions {part['mean_ms']:.1f} ms (p50 {part['p50_ms']:.1f})",
                    flush=True,
                )
            finally:
                proxy.terminate()
                proxy.wait(10)
    finally:
        server.stop()
        __import__("shutil").rmtree(workdir, ignore_errors=True)
        results["meta"]["finished"] = dt.datetime.now().isoformat(timespec="seconds")
        results["meta"]["loadavg"] = os.getloadavg()
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
    print()
    print("| latency | P x W | one partition tx/s | P partitions tx/s | ratio | batches/s one / P |")
    print("|---|---|---:|---:|---:|---|")
    for r in results["runs"]:
        print(
            f"| +{r['latency_ms']:g} ms | {r['processes']} x {r['writers']} | {r['one']['tx_per_s']:.0f} | "
            f"{r['partitioned']['tx_per_s']:.0f} | {r['ratio']:.2f}x | "
            f"{r['one']['batches_per_s']:.1f} / {r['partitioned']['batches_per_s']:.1f} |"
        )
    print()
    print("| latency | commit, one partition: mean / p50 ms | commit, 1 of 4 partitions: mean / p50 ms | ratio |")
    print("|---|---:|---:|---:|")
    for r in results["latency"]:
        print(
            f"| +{r['latency_ms']:g} ms | {r['one']['mean_ms']:.1f} / {r['one']['p50_ms']:.1f} | "
            f"{r['partitioned']['mean_ms']:.1f} / {r['partitioned']['p50_ms']:.1f} | {r['ratio']:.2f}x |"
        )
    print(f"\nJSON: {args.out}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["partitions"]:
        partition_bench(sys.argv[2:])
    else:
        _main()
