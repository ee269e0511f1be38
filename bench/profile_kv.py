"""Profiles of kvstore's hot paths: commits, warm point reads, scans, bulk load.

    .venv/bin/python bench/profile_kv.py --workload commits|writers|reads|scans|bulk --target '<json>'

runs one workload; ``profile(...)`` (used by run.py) runs each under py-spy (sampling,
from bench/.venv-peers; no overhead in the profiled process) when it is installed, else
under cProfile, and condenses the samples into the top self-time functions, the top
inclusive kvstore functions and a breakdown by library.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import (  # noqa: E402
    BENCH_DIR,
    MAIN_PYTHON,
    VALUE,
    Target,
    closed_loop,
    env_for_children,
    open_store,
    random_values,  # noqa: E402
)
from kv import load, options, unique  # noqa: E402

PY_SPY = BENCH_DIR / ".venv-peers" / "bin" / "py-spy"


async def _go() -> None:
    """Tell the parent setup is done; wait for it to start the profiler and say GO."""
    print("READY", flush=True)
    await asyncio.to_thread(sys.stdin.readline)


async def run_workload(workload: str, target: Target, seconds: float, handshake: bool) -> None:
    """Set up, then (after the handshake) run `workload` for `seconds`: only that part is sampled."""

    async def ready() -> None:
        if handshake:
            await _go()

    if workload == "commits":
        async with open_store(target, unique("prof-seq"), 0.0) as db:
            await db.put(b"warm", VALUE)
            await ready()
            deadline = time.perf_counter() + seconds
            i = 0
            while time.perf_counter() < deadline:
                await db.put(b"seq/%08d" % i, VALUE)
                i += 1
    elif workload == "writers":
        async with open_store(target, unique("prof-w64"), 0.0) as db:
            await closed_loop(lambda w, i: db.put(b"w/%03d/%08d" % (w, i), VALUE), 64, 0.5)  # connections
            await ready()
            await closed_loop(lambda w, i: db.put(b"w/%03d/%08d" % (w, i), VALUE), 64, seconds)
    elif workload == "reads":
        keys = [b"r/%08d" % i for i in range(10_000)]
        async with open_store(target, unique("prof-reads"), 0.0) as db:
            await load(db, keys)
            snap = await db.snapshot()
            for k in keys:
                await snap.get(k)
            await ready()
            deadline = time.perf_counter() + seconds
            i = 0
            while time.perf_counter() < deadline:
                for _ in range(1000):
                    await snap.get(keys[(i * 7919) % 10_000])
                    i += 1
    elif workload == "scans":
        keys = [b"bulk/%010d" % i for i in range(200_000)]
        async with open_store(target, unique("prof-scan"), 0.0, options=options(cache_bytes=512 << 20)) as db:
            await load(db, keys)
            snap = await db.snapshot()
            async for _ in snap.scan():
                pass
            await ready()
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                async for _ in snap.scan():
                    pass
    elif workload == "bulk":
        pool = random_values(4096)
        async with open_store(target, unique("prof-bulk"), 0.0) as db:
            await ready()
            n = 200_000
            keys = [b"bulk/%010d" % i for i in range(n)]
            if hasattr(db, "bulk_load"):
                await db.bulk_load((k, pool[i & 4095]) for i, k in enumerate(keys))
            else:
                await load(db, keys)
    else:
        raise SystemExit(f"unknown workload {workload}")


# --------------------------------------------------------------------------- condensing


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _label(frame: str) -> tuple[str, str]:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip(), ""
    file = m.group("file")
    return f"{m.group('func')} ({_short(file)})", file


def _short(file: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def _library(file: str) -> str:
    if "kvstore/" in file and "site-packages" not in file:
        return "kvstore"
    for lib in ("aiobotocore", "botocore", "aiohttp", "yarl", "multidict", "msgpack", "zstandard", "xxhash", "urllib3"):
        if f"/{lib}/" in file or f"{lib}/" in file.split("site-packages/")[-1][: len(lib) + 1]:
            return lib
    if "asyncio/" in file:
        return "asyncio"
    if "bench/" in file:
        return "bench harness"
    return "other (stdlib, C calls)"


def condense_pyspy(raw: str, top: int = 15) -> dict[str, Any]:
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    libraries: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_label(f) for f in stack.split(";")]
        if frames[-1][0].startswith("_worker (concurrent/futures/thread.py)"):
            total -= n  # an idle executor thread waiting for work
            continue
        self_time[frames[-1][0]] += n
        libraries[_library(frames[-1][1])] += n
        for label in {lab for lab, file in frames if "kvstore/" in file}:
            inclusive[label] += n
    pct = lambda c: [(k, round(100 * v / total, 1)) for k, v in c.most_common(top)]  # noqa: E731
    return {
        "profiler": "py-spy (sampling, 200 Hz, idle threads excluded)",
        "samples": total,
        "self_pct": pct(self_time),
        "kvstore_inclusive_pct": pct(inclusive),
        "by_library_pct": pct(libraries),
    }


def condense_cprofile(path: str, top: int = 15) -> dict[str, Any]:
    st = pstats.Stats(path)
    total = st.total_tt  # type: ignore[attr-defined]
    rows = st.stats  # type: ignore[attr-defined]
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    libraries: Counter[str] = Counter()
    for (file, _line, func), (_cc, _nc, tt, ct, _callers) in rows.items():
        label = f"{func} ({_short(file)})"
        self_time[label] += tt
        libraries[_library(file)] += tt
        if "kvstore/" in file:
            inclusive[label] += ct
    pct = lambda c: [(k, round(100 * v / total, 1)) for k, v in c.most_common(top)]  # noqa: E731
    return {
        "profiler": "cProfile (deterministic; inflates call-heavy code)",
        "seconds": total,
        "self_pct": pct(self_time),
        "kvstore_inclusive_pct": pct(inclusive),
        "by_library_pct": pct(libraries),
    }


def profile(workload: str, target: Target, seconds: float, out_dir: Path) -> dict[str, Any]:
    """Profile one workload in a child process; returns the condensed profile.

    With py-spy the child sets up first (imports, client, data), then py-spy attaches
    and samples the measured part only.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(MAIN_PYTHON),
        str(HERE / "profile_kv.py"),
        "--workload",
        workload,
        "--target",
        json.dumps(target.to_json()),
        "--seconds",
        str(seconds),
    ]
    fallback = "py-spy not installed (run bench/setup.sh)"
    if PY_SPY.exists():
        raw_path = out_dir / f"profile-{workload}.pyspy.txt"
        raw_path.unlink(missing_ok=True)
        child = subprocess.Popen(
            [*cmd, "--handshake"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env_for_children()
        )
        try:
            assert child.stdin is not None and child.stdout is not None
            if child.stdout.readline().strip() != "READY":
                raise RuntimeError("profiled workload did not start")
            spy = subprocess.Popen(
                [
                    str(PY_SPY),
                    "record",
                    "--pid",
                    str(child.pid),
                    "-r",
                    "200",
                    "-f",
                    "raw",
                    "-o",
                    str(raw_path),
                    "--duration",
                    str(int(seconds) + 30),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(0.5)  # let it attach
            child.stdin.write("GO\n")
            child.stdin.flush()
            child.wait(timeout=seconds * 4 + 300)
            _, err = spy.communicate(timeout=60)  # stops when the process exits
            if raw_path.exists() and raw_path.stat().st_size:
                result = condense_pyspy(raw_path.read_text())
                result["raw"] = str(raw_path)
                result["window"] = "measured part only (py-spy attached after set-up)"
                return result
            fallback = f"py-spy failed ({spy.returncode}): {err[-500:]}"
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    with tempfile.NamedTemporaryFile(suffix=".pstats", dir=out_dir, delete=False) as f:
        stats_path = f.name
    subprocess.run([*cmd, "--cprofile", stats_path], check=True, env=env_for_children(), timeout=seconds * 4 + 300)
    result = condense_cprofile(stats_path)
    result["note"] = fallback
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--cprofile", default="")
    ap.add_argument("--handshake", action="store_true")
    args = ap.parse_args()
    target = Target.from_json(json.loads(args.target))
    if args.cprofile:  # whole run, set-up included
        prof = cProfile.Profile()
        prof.enable()
        asyncio.run(run_workload(args.workload, target, args.seconds, False))
        prof.disable()
        prof.dump_stats(args.cprofile)
    else:
        asyncio.run(run_workload(args.workload, target, args.seconds, args.handshake))


if __name__ == "__main__":
    main()
