"""Several writer processes on one store: 4 x 16 writers, and the single-manifest ceiling.

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
    async with open_store(Target.from_json(spec["target"]), spec["store"], 0.0) as db:
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


if __name__ == "__main__":
    _main()
