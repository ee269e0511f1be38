"""Several writer processes on one store: 4 x 16 writers, and the single-manifest ceiling.

    python bench/procs.py partitions [--latency-ms 0,20,50,30] [--configs 4x8,8x8] [--duration 5]

runs the partition benchmark (issue 18), every request through a `FaultProxy` process
(`kvstore.testing.netproxy`) adding the latency in front of LocalStack:

* P processes x W writers, each process writing its own keys, on a store of P key-range
  partitions (each process in its own partition) against the same run on one partition;
* tx/s against the fraction of transactions that span two partitions (``--fractions``;
  each such transaction also writes a key of the next process's partition), on P
  partitions and on one; a table, the JSON and an SVG plot (``--plot``, docs/img/);
* the raw round trip (a CAS PUT through the same proxy, `floor.s3_floor`) and, in round
  trips of it, the sequential commit latency of one writer: puts on one partition of a
  4-partition store against an unpartitioned store, and transactions (`_transaction_latency`)
  in one partition and across two.

Every run records the load average (`uptime`): the machine is shared, so compare only the
ratios of one invocation. It prints tables and writes JSON (`--out`).

``run_processes`` starts this file (``python bench/procs.py``) with the JSON specs on
stdin; it imports kvstore once and forks one worker per spec. Once every worker has opened
the store (``READY``), all get one start time (``GO <epoch>``) so they measure the same
window. Each worker reports what it completed and the change of its ``db.statistics()``
at the deadline.

Modes:

* ``put``        blind writes of the worker's own keys (disjoint across processes);
* ``increment``  read-modify-write of random keys among ``hot_keys`` shared by every
                 process, through ``db.transact`` (conflicts are retried there);
* ``mixed``      ``put``, except that a ``cross_fraction`` of the transactions also write a
                 key under the next process's prefix (one transaction, two keys).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import select
import statistics
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
        "op_p50_ms": {
            kind: 1e3 * statistics.median(all_s)
            if (all_s := [x for r in results for x in r["op_seconds"][kind]])
            else None
            for kind in ("single", "cross")
        },
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
    cross_fraction: float = 0.0,
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
            "cross_fraction": cross_fraction,
            "processes": processes,
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
    seconds: dict[str, list[float]] = {"cross": [], "single": []}  # mixed mode: each op's latency
    await asyncio.sleep(max(0.0, start - time.time()))
    if spec["mode"] == "put":

        def op(w: int, i: int) -> Any:
            return db.put(b"p%03d/%03d/%08d" % (worker, w, i), VALUE)
    elif spec["mode"] == "mixed":
        # A `cross_fraction` of the transactions also write a key of the next process's
        # prefix (on a partitioned store: the next partition, a two-phase commit).
        fraction, other = spec["cross_fraction"], (worker + 1) % spec["processes"]

        async def cross(w: int, i: int) -> None:
            async with db.transaction() as tx:
                tx.put(b"p%03d/%03d/%08d" % (worker, w, i), VALUE)
                tx.put(b"p%03d/x%03d/%03d/%08d" % (other, worker, w, i), VALUE)

        async def op(w: int, i: int) -> None:
            kind = "cross" if rng.random() < fraction else "single"
            t0 = time.perf_counter()
            await (cross(w, i) if kind == "cross" else db.put(b"p%03d/%03d/%08d" % (worker, w, i), VALUE))
            seconds[kind].append(time.perf_counter() - t0)
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
        "op_seconds": seconds,
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

PARTITIONED_LATENCY_SPLIT = ["p001/", "p002/", "p003/"]  # the latency runs' 4-partition store


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


def _load() -> list[float]:
    """`uptime`'s load averages (1, 5, 15 min), rounded: the machine is shared."""
    return [round(x, 2) for x in os.getloadavg()]


async def _commit_latency(target: Target, store: str, split_keys: list[str] | None, seconds: float) -> dict[str, Any]:
    """One writer's sequential puts (each acknowledged before the next) for `seconds`."""
    from common import timed_sequence

    extra = {} if not split_keys else {"split_keys": split_keys}
    async with open_store(target, store, 0.0, **extra) as db:
        await db.put(b"p000/warm", VALUE)
        lat = await timed_sequence(lambda i: db.put(b"p000/%08d" % i, VALUE), 100_000, seconds)
    return lat.summary()


async def _transaction_latency(target: Target, store: str, seconds: float, pause: float) -> dict[str, Any]:
    """Commit latency of one writer's transactions on a 4-partition store, timed around
    `commit()` only (the reads before it are the same for every kind), one kind after the
    other for `seconds` each:

    * ``single_rmw``: read-modify-write of one key in one partition (one CAS);
    * ``cross_rmw``:  read-modify-write of one key in each of two partitions (two phases);
    * ``cross_blind``: writes of one key in each of two partitions, nothing read.

    After each commit the writer pauses `pause` seconds, untimed, so that the background
    resolve of a cross-partition commit is not queued in front of the next prepare: the
    figure is one commit's latency on an otherwise idle store.
    """
    from common import Latencies

    kinds: dict[str, list[bytes]] = {
        "single_rmw": [b"p000/c"],
        "cross_rmw": [b"p000/c", b"p001/c"],
        "cross_blind": [b"p000/b", b"p001/b"],
    }
    out: dict[str, Any] = {}
    async with open_store(target, store, 0.0, split_keys=PARTITIONED_LATENCY_SPLIT) as db:
        for key in (b"p000/c", b"p001/c"):
            await db.put(key, (0).to_bytes(8, "little"))
        for kind, keys in kinds.items():
            lat = Latencies()
            deadline = time.perf_counter() + seconds
            for n in range(-2, 100_000):  # two warm-up commits
                tx = db.transaction()
                for key in keys:
                    if kind == "cross_blind":
                        tx.put(key, VALUE)
                    else:
                        old = await tx.get(key)
                        tx.put(key, (int.from_bytes(old or b"", "little") + 1).to_bytes(8, "little"))
                t0 = time.perf_counter()
                await tx.commit()
                t1 = time.perf_counter()
                if n >= 0:
                    lat.add(t1 - t0)
                await asyncio.sleep(pause)
                if t1 > deadline and n >= 4:
                    break
            out[kind] = lat.summary()
    return out


def _fraction_row(target: Target, p: int, w: int, fraction: float, duration: float, lat_ms: float) -> dict[str, Any]:
    """tx/s with `fraction` of the transactions spanning two partitions, on P partitions and
    on one (where the same two-key transaction is one ordinary commit)."""
    import uuid

    row: dict[str, Any] = {"latency_ms": lat_ms, "processes": p, "writers": w, "cross_fraction": fraction}
    for name, split in (("one", None), ("partitioned", [f"p{n:03d}/" for n in range(1, p)])):
        row[f"load_{name}"] = _load()
        store = f"frac-{uuid.uuid4().hex[:8]}"
        r = fleet(target, store, 0.0, p, w, duration, mode="mixed", split_keys=split, cross_fraction=fraction)
        keep = ("tx_per_s", "batches_per_s", "cas_retries_per_s", "conflicts_per_s", "errors", "requests_per_tx")
        row[name] = {k: r[k] for k in keep}
        row[name]["requests"] = r["requests"]
        row[name]["commit_p50_ms"] = r["op_p50_ms"]
    row["ratio"] = row["partitioned"]["tx_per_s"] / max(row["one"]["tx_per_s"], 1e-9)
    return row


def _plot(fractions: list[dict[str, Any]], path: Path, meta: dict[str, Any]) -> None:
    """The SVG plot of tx/s against the cross-partition fraction, one colour per latency."""
    from svg_chart import line_chart

    latencies = sorted({r["latency_ms"] for r in fractions})
    series: list[tuple[str, list[tuple[float, float]], bool, int]] = []
    for n, lat in enumerate(latencies):
        rows = [r for r in fractions if r["latency_ms"] == lat]
        p = rows[0]["processes"]
        series.append(
            (
                f"+{lat:g} ms, {p} partitions",
                [(100 * r["cross_fraction"], r["partitioned"]["tx_per_s"]) for r in rows],
                False,
                n,
            )
        )
        series.append(
            (f"+{lat:g} ms, 1 partition", [(100 * r["cross_fraction"], r["one"]["tx_per_s"]) for r in rows], True, n)
        )
    p, w = fractions[0]["processes"], fractions[0]["writers"]
    svg = line_chart(
        series,
        title=f"{p} processes x {w} writers: tx/s vs cross-partition transactions ({meta['started'][:10]})",
        x_label="transactions writing two partitions (%)",
        y_label="committed tx/s (all processes)",
        x_suffix="%",
        legend_x=0.3,  # above the 1-partition lines' middle, clear of the partitioned lines' ends
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(svg)


def partition_bench(argv: list[str]) -> None:
    import argparse
    import datetime as dt
    import uuid

    from common import ensure_bucket
    from floor import s3_floor
    from servers import start_localstack

    ap = argparse.ArgumentParser(prog="procs.py partitions")
    ap.add_argument("--latency-ms", default="0,20,50,30")
    ap.add_argument("--configs", default="4x8,8x8", help="PxW: processes x writers per process")
    ap.add_argument("--target-configs", default="8x8", help="configs also run at the target latency (30 ms)")
    ap.add_argument("--target-latency-ms", type=float, default=30.0)
    ap.add_argument(
        "--fractions", default="0,0.1,0.3,0.5,1", help="cross-partition fractions (not at the target latency)"
    )
    ap.add_argument("--fraction-config", default="4x8", help="PxW of the fraction runs")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--latency-seconds", type=float, default=5.0)
    ap.add_argument("--out", default=str(HERE / "results" / "partitions.json"))
    ap.add_argument("--plot", default=str(HERE.parent / "docs" / "img" / "partitions-cross-fraction.svg"))
    args = ap.parse_args(argv)
    configs = [tuple(int(x) for x in c.split("x")) for c in args.configs.split(",") if c]
    latencies = [float(x) for x in args.latency_ms.split(",") if x]
    fractions = [float(x) for x in args.fractions.split(",") if x]
    fp, fw = (int(x) for x in args.fraction_config.split("x"))
    workdir = Path(__import__("tempfile").mkdtemp(prefix="kvbench-parts-"))
    server = start_localstack(workdir / "localstack")
    results: dict[str, Any] = {
        "meta": {
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "duration": args.duration,
            "load_at_start": _load(),
        },
        "runs": [],
        "latency": [],
        "fractions": [],
    }
    try:
        asyncio.run(ensure_bucket(server.endpoint_url, "kvbench"))
        for lat_ms in latencies:
            proxy, url = _start_proxy(server.endpoint_url, lat_ms / 1e3)
            try:
                target = Target("s3", endpoint_url=url, bucket="kvbench")
                at_target = lat_ms == args.target_latency_ms
                run_configs = (
                    configs
                    if not at_target
                    else [tuple(int(x) for x in c.split("x")) for c in args.target_configs.split(",") if c]
                )
                for p, w in run_configs:
                    row: dict[str, Any] = {"latency_ms": lat_ms, "processes": p, "writers": w}
                    for name, split in (("one", None), ("partitioned", [f"p{n:03d}/" for n in range(1, p)])):
                        row[f"load_{name}"] = _load()
                        store = f"parts-{uuid.uuid4().hex[:8]}"
                        r = fleet(target, store, 0.0, p, w, args.duration, split_keys=split)
                        row[name] = {k: r[k] for k in ("tx_per_s", "batches_per_s", "cas_retries_per_s", "errors")}
                        row[name]["per_process_tx_per_s"] = r["per_process_tx_per_s"]
                    row["ratio"] = row["partitioned"]["tx_per_s"] / max(row["one"]["tx_per_s"], 1e-9)
                    results["runs"].append(row)
                    print(
                        f"+{lat_ms:g} ms {p}x{w}: one partition {row['one']['tx_per_s']:.0f} tx/s, "
                        f"{p} partitions {row['partitioned']['tx_per_s']:.0f} tx/s ({row['ratio']:.2f}x), "
                        f"load {row['load_one'][0]:.1f}",
                        flush=True,
                    )
                if not at_target:
                    for fraction in fractions:
                        frow = _fraction_row(target, fp, fw, fraction, args.duration, lat_ms)
                        results["fractions"].append(frow)
                        print(
                            f"+{lat_ms:g} ms {fp}x{fw}, {100 * fraction:.0f}% cross-partition: one partition "
                            f"{frow['one']['tx_per_s']:.0f} tx/s, {fp} partitions {frow['partitioned']['tx_per_s']:.0f} "
                            f"tx/s ({frow['ratio']:.2f}x), load {frow['load_one'][0]:.1f}",
                            flush=True,
                        )
                # The raw round trip through the same proxy, then the commit latencies.
                load = _load()
                floor = asyncio.run(s3_floor(url, "kvbench", 0.0, 60, 2.0))
                rt = floor["put_cas"]["p50_ms"]
                one = asyncio.run(_commit_latency(target, f"lat-{uuid.uuid4().hex[:8]}", None, args.latency_seconds))
                part = asyncio.run(
                    _commit_latency(
                        target, f"lat-{uuid.uuid4().hex[:8]}", PARTITIONED_LATENCY_SPLIT, args.latency_seconds
                    )
                )
                txs = asyncio.run(
                    _transaction_latency(
                        target, f"tx-{uuid.uuid4().hex[:8]}", args.latency_seconds, max(0.05, 4 * rt / 1e3)
                    )
                )
                entry = {
                    "latency_ms": lat_ms,
                    "load": load,
                    "round_trip": {k: floor[k] for k in ("put_cas", "put_create", "get_304", "get")},
                    "round_trip_ms": rt,
                    "one": one,
                    "partitioned": part,
                    "ratio": part["p50_ms"] / one["p50_ms"],
                    "ratio_mean": part["mean_ms"] / one["mean_ms"],
                    "transactions": txs,
                    "round_trips": {
                        "put_one": one["p50_ms"] / rt,
                        "put_partitioned": part["p50_ms"] / rt,
                        **{k: v["p50_ms"] / rt for k, v in txs.items()},
                    },
                }
                results["latency"].append(entry)
                trips = entry["round_trips"]
                print(
                    f"+{lat_ms:g} ms: round trip (CAS PUT p50) {rt:.1f} ms; put p50 one partition {one['p50_ms']:.1f} ms, "
                    f"1 of 4 {part['p50_ms']:.1f} ms ({entry['ratio']:.2f}x); single-partition RMW "
                    f"{trips['single_rmw']:.2f} RT, cross-partition RMW {trips['cross_rmw']:.2f} RT, blind "
                    f"{trips['cross_blind']:.2f} RT; load {load[0]:.1f}",
                    flush=True,
                )
            finally:
                proxy.terminate()
                proxy.wait(10)
    finally:
        server.stop()
        __import__("shutil").rmtree(workdir, ignore_errors=True)
        results["meta"]["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        results["meta"]["load_at_end"] = _load()
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
    if results["fractions"]:
        _plot(results["fractions"], Path(args.plot), results["meta"])
    _print_tables(results)
    print(f"\nJSON: {args.out}" + (f"\nplot: {args.plot}" if results["fractions"] else ""))


def replot(argv: list[str]) -> None:
    """`procs.py replot RESULTS.json PLOT.svg`: draw the plot again from a results JSON."""
    doc = json.loads(Path(argv[0]).read_text())
    _plot(doc["fractions"], Path(argv[1]), doc["meta"])


def _print_tables(results: dict[str, Any]) -> None:
    print()
    print("| latency | P x W | one partition tx/s | P partitions tx/s | ratio | batches/s one / P | load (1 min) |")
    print("|---|---|---:|---:|---:|---|---:|")
    for r in results["runs"]:
        print(
            f"| +{r['latency_ms']:g} ms | {r['processes']} x {r['writers']} | {r['one']['tx_per_s']:.0f} | "
            f"{r['partitioned']['tx_per_s']:.0f} | {r['ratio']:.2f}x | "
            f"{r['one']['batches_per_s']:.1f} / {r['partitioned']['batches_per_s']:.1f} | {r['load_one'][0]:.1f} |"
        )
    if results["fractions"]:
        print()
        print("| latency | P x W | cross-partition | one partition tx/s | P partitions tx/s | ratio | errors | load |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for r in results["fractions"]:
            print(
                f"| +{r['latency_ms']:g} ms | {r['processes']} x {r['writers']} | {100 * r['cross_fraction']:.0f}% | "
                f"{r['one']['tx_per_s']:.0f} | {r['partitioned']['tx_per_s']:.0f} | {r['ratio']:.2f}x | "
                f"{r['one']['errors'] + r['partitioned']['errors']} | {r['load_one'][0]:.1f} |"
            )
    print()
    print(
        "| latency | round trip (CAS PUT p50) | put p50: one / 1 of 4 partitions | ratio | "
        "single-partition RMW | cross-partition RMW | cross-partition blind | load |"
    )
    print("|---|---:|---|---:|---|---|---|---:|")
    for r in results["latency"]:
        t, rt = r["transactions"], r["round_trips"]
        print(
            f"| +{r['latency_ms']:g} ms | {r['round_trip_ms']:.1f} ms | {r['one']['p50_ms']:.1f} / "
            f"{r['partitioned']['p50_ms']:.1f} ms | {r['ratio']:.2f}x | "
            f"{t['single_rmw']['p50_ms']:.1f} ms ({rt['single_rmw']:.2f} RT) | "
            f"{t['cross_rmw']['p50_ms']:.1f} ms ({rt['cross_rmw']:.2f} RT) | "
            f"{t['cross_blind']['p50_ms']:.1f} ms ({rt['cross_blind']:.2f} RT) | {r['load'][0]:.1f} |"
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["partitions"]:
        partition_bench(sys.argv[2:])
    elif sys.argv[1:2] == ["replot"]:
        replot(sys.argv[2:])
    else:
        _main()
