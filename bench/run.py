"""kvstore benchmark suite: one command, against the physical floor and the peers.

    .venv/bin/python bench/run.py [--quick] [--latency-ms 0,20] [--out bench/results]
                                  [--bulk-entries N] [--duration S] [--skip SECTIONS]

Starts its own LocalStack (tests/servers.py) and uses a local directory too. For every
injected latency it measures the floor (raw aiobotocore round trips), the naive baseline
(one object per key), the peers (SlateDB, Icechunk; in bench/.venv-peers) and kvstore, and
prints every kvstore figure next to its baseline as a ratio, then the targets of issue #4
as PASS/MISS. Writes ``results.json``, ``table.md`` and ``commit-throughput.png`` to --out.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _pin_kvstore() -> None:
    """``--kvstore-ref REF``: measure kvstore as committed at REF, not the working tree.

    The package is extracted (``git archive``) into a temporary directory that goes first
    on PYTHONPATH for this process (re-executed) and every child, so edits made to the
    working tree while the suite runs cannot mix two engines into one set of results.
    """
    argv = sys.argv[1:]
    ref = None
    for i, arg in enumerate(argv):
        if arg == "--kvstore-ref" and i + 1 < len(argv):
            ref = argv[i + 1]
        elif arg.startswith("--kvstore-ref="):
            ref = arg.split("=", 1)[1]
    if not ref or ref == "worktree" or os.environ.get("KVBENCH_KVSTORE_PATH"):
        return
    root = Path(__file__).resolve().parent.parent
    sha = subprocess.run(
        ["git", "rev-parse", "--short", ref], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()
    dest = tempfile.mkdtemp(prefix="kvbench-kvstore-")
    archive = subprocess.Popen(["git", "archive", ref, "kvstore"], cwd=root, stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", dest], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise SystemExit(f"git archive {ref} kvstore failed")
    env = dict(os.environ, KVBENCH_KVSTORE_PATH=dest, KVBENCH_KVSTORE_REF=f"{ref} = {sha}", PYTHONPATH=dest)
    os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *argv], env)


if __name__ == "__main__":
    _pin_kvstore()

import floor  # noqa: E402
import kv  # noqa: E402
import naive  # noqa: E402
import procs  # noqa: E402
import report  # noqa: E402
from common import (  # noqa: E402
    MAIN_PYTHON,
    PEERS_PYTHON,
    REPO_ROOT,
    Target,
    ensure_bucket,
    env_for_children,
    log,
)

SECTIONS = ("floor", "naive", "kvstore", "procs", "ceiling", "peers", "bulk", "memory", "fs", "profile")


class Suite:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.results: dict[str, Any] = {"meta": meta(args), "latency": {}, "once": {}}
        self.s3: Target | None = None
        self.fs: Target | None = None
        self.endpoint = ""

    # -- bookkeeping ----------------------------------------------------------------

    def save(self) -> None:
        path = self.out / "results.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.results, indent=1, default=str))
        os.replace(tmp, path)

    async def section(self, where: dict[str, Any], key: str, coro_fn: Any, *a: Any, **kw: Any) -> Any:
        """Run one measurement; a failure is recorded as "unavailable: ..." and the suite goes on."""
        t0 = time.perf_counter()
        log(f"{key} ...")
        try:
            value = coro_fn(*a, **kw)
            if asyncio.iscoroutine(value):
                value = await value
        except Exception as exc:  # noqa: BLE001 - keep going: one broken measurement must not hide the rest
            traceback.print_exc()
            value = {"unavailable": f"{type(exc).__name__}: {exc}"[:800]}
        if isinstance(value, dict):
            value.setdefault("wall_seconds", round(time.perf_counter() - t0, 2))
        where[key] = value
        self.save()
        return value

    def on(self, name: str) -> bool:
        return name not in self.args.skip

    # -- the run --------------------------------------------------------------------

    async def run(self) -> None:
        a = self.args
        workdir = Path(tempfile.mkdtemp(prefix="kvbench-"))
        self.fs = Target("fs", root=str(workdir / "fs"))
        from servers import start_localstack

        log(f"starting LocalStack in {workdir}")
        server = start_localstack(workdir / "localstack")
        self.results["meta"]["localstack_log"] = str(server.log_path)
        try:
            self.endpoint = server.endpoint_url
            bucket = "kvbench"
            await ensure_bucket(self.endpoint, bucket)
            self.s3 = Target("s3", endpoint_url=self.endpoint, bucket=bucket)
            self.results["meta"]["endpoint"] = self.endpoint
            for lat_ms in a.latencies:
                await self.run_latency(lat_ms)
            await self.run_once()
        finally:
            self.results["meta"]["loadavg_end"] = loadavg()
            self.results["meta"]["finished"] = dt.datetime.now().isoformat(timespec="seconds")
            self.save()
            server.stop()
            shutil.rmtree(workdir, ignore_errors=True)

    async def run_latency(self, lat_ms: float) -> None:
        a = self.args
        L = lat_ms / 1e3
        assert self.s3 is not None
        res: dict[str, Any] = {}
        self.results["latency"][fmt_ms(lat_ms)] = res
        d = a.duration
        seq_n = a.seq_count
        log(f"=== latency {lat_ms} ms ===")
        if self.on("floor"):
            await self.section(res, "floor", floor.s3_floor, self.endpoint, self.s3.bucket, L, seq_n, d)
        if self.on("naive"):
            await self.section(
                res, "naive", naive.naive, self.endpoint, self.s3.bucket, L, a.writers, d, seq_n, 200, warmup=a.warmup
            )
        if self.on("kvstore"):
            await self.section(res, "kv_sequential", kv.sequential_commits, self.s3, L, seq_n, d)
            cvf = res.setdefault("kv_commit_vs_floor", {})
            await self.section(cvf, "default", kv.commit_vs_floor, self.s3, L, seq_n, 2 * d)
            if kv.has_option("auto_compact") and a.diagnostics:
                await self.section(
                    cvf, "no_compaction", kv.commit_vs_floor, self.s3, L, seq_n, 2 * d, auto_compact=False
                )
            if kv.has_option("inline_segment_bytes") and a.diagnostics:  # what inline segments win
                await self.section(
                    cvf, "no_inline", kv.commit_vs_floor, self.s3, L, seq_n, 2 * d, inline_segment_bytes=0
                )
            w = res.setdefault("kv_writers", {})
            for n in a.writers:
                await self.section(w, str(n), kv.concurrent_writers, self.s3, L, n, d, warmup=a.warmup)
            await self.section(res, "kv_contended_1x64", kv.contended_writers, self.s3, L, 64, d, 256, warmup=a.warmup)
            if kv.has_option("auto_compact") and a.diagnostics:  # what background compaction costs
                await self.section(
                    res,
                    "kv_writers_64_no_compaction",
                    kv.concurrent_writers,
                    self.s3,
                    L,
                    64,
                    d,
                    warmup=a.warmup,
                    auto_compact=False,
                )
            if kv.has_option("inline_segment_bytes") and a.diagnostics:
                await self.section(
                    res,
                    "kv_writers_64_no_inline",
                    kv.concurrent_writers,
                    self.s3,
                    L,
                    64,
                    d,
                    warmup=a.warmup,
                    inline_segment_bytes=0,
                )
            await self.section(res, "kv_warm_reads", kv.warm_reads, self.s3, L, 10_000, d)
            w64 = res.get("kv_writers", {}).get("64", {})
            if "store" in w64:
                await self.section(
                    res, "kv_warm_reads_after_writers", kv.reads_after_writers, self.s3, L, w64["store"], 64, d
                )
            await self.section(
                res, "kv_cold_reads", kv.cold_reads, self.s3, L, a.cold_samples, a.cold_entries, a.cold_overlay
            )
        if self.on("procs"):
            for mode, key in (("put", "kv_4x16_disjoint"), ("increment", "kv_4x16_contended")):
                await self.section(res, key, self.fleet, self.s3, L, 4, 16, d, mode)
            if kv.has_option("auto_compact") and a.diagnostics:
                await self.section(
                    res,
                    "kv_4x16_disjoint_no_compaction",
                    self.fleet,
                    self.s3,
                    L,
                    4,
                    16,
                    d,
                    "put",
                    {"auto_compact": False},
                )
            if kv.has_option("inline_segment_bytes") and a.diagnostics:
                await self.section(
                    res,
                    "kv_4x16_disjoint_no_inline",
                    self.fleet,
                    self.s3,
                    L,
                    4,
                    16,
                    d,
                    "put",
                    {"inline_segment_bytes": 0},
                )
        if self.on("ceiling"):
            c = res.setdefault("ceiling", {})
            for n in a.ceiling_processes:
                await self.section(c, str(n), self.fleet, self.s3, L, n, a.ceiling_writers, d, "put")
        if self.on("peers"):
            await self.run_peers(res, lat_ms)
        self.save()

    async def fleet(
        self, target: Target, L: float, n: int, writers: int, d: float, mode: str, opts: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        name = kv.unique(f"fleet{n}x{writers}-{mode}")
        async with kv.open_store(target, name, L) as db:  # create it once, before the race
            await db.put(b"created", b"1")
        return await asyncio.to_thread(procs.fleet, target, name, L, n, writers, d, mode, 256, self.args.warmup, opts)

    async def run_peers(self, res: dict[str, Any], lat_ms: float) -> None:
        a = self.args
        assert self.s3 is not None
        peers = res.setdefault("peers", {})
        endpoint = self.endpoint
        proxy = None
        if lat_ms > 0:
            proxy, endpoint = start_proxy(self.endpoint, lat_ms)
            peers["proxy"] = {"endpoint": endpoint, "delay_ms": lat_ms}
        try:
            if lat_ms > 0:
                # the proxy's own floor, and kvstore through it (a network-delay model)
                await self.section(
                    peers, "floor_via_proxy", floor.s3_floor, endpoint, self.s3.bucket, 0.0, a.proxy_count, a.duration
                )
                via = Target("s3", endpoint_url=endpoint, bucket=self.s3.bucket)
                await self.section(
                    peers, "kv_sequential_via_proxy", kv.sequential_commits, via, 0.0, a.proxy_count, a.duration
                )
            if not PEERS_PYTHON.exists():
                reason = "unavailable: bench/.venv-peers missing (run bench/setup.sh)"
                peers["slatedb_default"] = peers["slatedb_tuned"] = peers["icechunk"] = {"unavailable": reason}
                return
            common_args = [
                "--endpoint",
                endpoint,
                "--bucket",
                self.s3.bucket,
                "--duration",
                str(a.duration),
                "--warmup",
                str(a.warmup),
                "--writers",
                ",".join(map(str, a.writers)),
            ]
            for config in ("default", "tuned"):
                await self.section(
                    peers,
                    f"slatedb_{config}",
                    run_peer,
                    [
                        "slatedb",
                        *common_args,
                        "--config",
                        config,
                        "--seq",
                        str(a.peer_seq),
                        "--read-keys",
                        str(a.peer_read_keys),
                        "--scan-entries",
                        str(a.peer_scan_entries),
                    ],
                    a.duration,
                )
            await self.section(
                peers,
                "icechunk",
                run_peer,
                [
                    "icechunk",
                    *common_args,
                    "--writers",
                    ",".join(map(str, a.icechunk_writers)),
                    "--seq",
                    str(a.peer_seq),
                    "--processes",
                    str(a.icechunk_processes),
                    "--proc-writers",
                    "16",
                ],
                a.duration,
            )
        finally:
            if proxy is not None:
                proxy.terminate()
                proxy.wait(10)

    async def run_once(self) -> None:
        a = self.args
        once = self.results["once"]
        assert self.s3 is not None and self.fs is not None
        log("=== once (0 ms) ===")
        if self.on("bulk"):
            bulk = await self.section(once, "bulk", kv.bulk_load, self.s3, 0.0, a.bulk_entries)
            seg_bytes = kv.BULK_TXN_KEYS * 115
            await self.section(
                once, "put_bandwidth", floor.s3_put_bandwidth, self.endpoint, self.s3.bucket, seg_bytes, a.duration
            )
            if self.on("memory") and "store" in bulk:
                mem = once.setdefault("memory", {})
                for cache in a.memory_caches:
                    await self.section(mem, str(cache), run_memory, self.s3, bulk["store"], cache)
        if self.on("kvstore"):
            await self.section(once, "kv_scans", kv.scans, self.s3, 0.0, a.scan_entries)
        if self.on("fs"):
            fs: dict[str, Any] = once.setdefault("fs", {})
            Path(self.fs.root).mkdir(parents=True, exist_ok=True)
            await self.section(fs, "floor", floor.fs_floor, Path(self.fs.root), a.seq_count, a.duration)
            await self.section(fs, "kv_sequential", kv.sequential_commits, self.fs, 0.0, a.seq_count, a.duration)
            w = fs.setdefault("kv_writers", {})
            for n in a.writers:
                await self.section(w, str(n), kv.concurrent_writers, self.fs, 0.0, n, a.duration, warmup=a.warmup)
            await self.section(fs, "kv_4x16_disjoint", self.fleet, self.fs, 0.0, 4, 16, a.duration, "put")
        if self.on("profile"):
            import profile_kv

            prof = once.setdefault("profile", {})
            for workload in a.profile_workloads:
                await self.section(
                    prof,
                    workload,
                    asyncio.to_thread,
                    profile_kv.profile,
                    workload,
                    self.s3,
                    a.profile_seconds,
                    self.out,
                )


# --------------------------------------------------------------------------- helpers


def fmt_ms(ms: float) -> str:
    return str(int(ms)) if float(ms).is_integer() else str(ms)


async def run_peer(argv: list[str], duration: float) -> dict[str, Any]:
    cmd = [str(PEERS_PYTHON), str(HERE / "peers.py"), *argv]
    timeout = duration * 40 + 240
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env_for_children()
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        return {"unavailable": f"timed out after {timeout:.0f} s"}
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        return {"unavailable": f"exit {proc.returncode}: {err.decode(errors='replace')[-800:]}"}
    return json.loads(out.decode().strip().splitlines()[-1])


async def run_memory(target: Target, store: str, cache: int) -> dict[str, Any]:
    spec = json.dumps({"target": target.to_json(), "store": store, "cache_bytes": cache})
    proc = await asyncio.create_subprocess_exec(
        str(MAIN_PYTHON),
        str(HERE / "memory.py"),
        spec,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env_for_children(),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 900)
    if proc.returncode != 0:
        raise RuntimeError(err.decode(errors="replace")[-800:])
    return json.loads(out.decode().strip().splitlines()[-1])


def start_proxy(endpoint: str, delay_ms: float) -> tuple[subprocess.Popen[str], str]:
    upstream = endpoint.split("://", 1)[1]
    p = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "proxy.py"),
            "--upstream",
            upstream,
            "--delay-ms",
            str(delay_ms),
            "--max-seconds",
            "3600",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None
    line = p.stdout.readline().split()
    if len(line) != 2 or line[0] != "LISTENING":
        p.kill()
        raise RuntimeError(f"latency proxy did not start: {line}")
    return p, f"http://127.0.0.1:{line[1]}"


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "?"


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def kvstore_source() -> dict[str, Any]:
    import kvstore

    return {"path": str(Path(kvstore.__file__).parent), "ref": os.environ.get("KVBENCH_KVSTORE_REF", "working tree")}


def git_state() -> dict[str, Any]:
    def git(*cmd: str) -> str:
        try:
            return subprocess.run(
                ["git", *cmd], cwd=REPO_ROOT, capture_output=True, text=True, timeout=20
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = git("status", "--porcelain", "--", "kvstore")
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "kvstore_dirty": bool(dirty),
        "kvstore_changed_files": dirty.splitlines()[:30],
    }


def versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {}
    for dist in ("kvstore", "aiobotocore", "botocore", "aiohttp"):
        try:
            out[dist] = version(dist)
        except Exception:  # noqa: BLE001 - any failure: the version is unknown
            out[dist] = "?"
    return out


def meta(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "mode": "quick" if args.quick else "full",
        "command": " ".join([".venv/bin/python", "bench/run.py", *sys.argv[1:]]),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "loadavg_start": loadavg(),
        "git": git_state(),
        "kvstore": kvstore_source(),
        "versions": versions(),
        "settings": {k: v for k, v in vars(args).items() if k != "skip"},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short runs (~2-3 minutes in all)")
    ap.add_argument("--latency-ms", default="0,20", help="injected per-request latencies, ms (default 0,20)")
    ap.add_argument("--out", default=str(HERE / "results"), help="directory for results.json, table.md, the chart")
    ap.add_argument("--bulk-entries", type=int, default=None, help="bulk load size (default 1,000,000; quick 100,000)")
    ap.add_argument("--duration", type=float, default=None, help="seconds per throughput measurement (5; quick 1)")
    ap.add_argument("--skip", default="", help=f"comma-separated sections to skip: {','.join(SECTIONS)}")
    ap.add_argument("--chart", default="", help="also copy the chart PNG here")
    ap.add_argument(
        "--kvstore-ref",
        default="worktree",
        help="measure kvstore as committed at this git ref (e.g. HEAD) instead of the working tree",
    )
    args = ap.parse_args(argv)
    args.latencies = [float(x) for x in args.latency_ms.split(",") if x.strip()]
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = args.skip - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; known: {SECTIONS}")
    q = args.quick
    args.duration = args.duration or (1.0 if q else 5.0)
    args.warmup = 0.3 if q else 1.0
    args.diagnostics = not q  # the auto_compact-off variants
    args.proxy_count = 15 if q else 40
    args.bulk_entries = args.bulk_entries or (100_000 if q else 1_000_000)
    args.seq_count = 30 if q else 200
    args.writers = (1, 8, 64)
    args.icechunk_writers = (1,) if q else (1, 8, 64)
    args.icechunk_processes = 0 if q else 4
    args.ceiling_processes = (1, 4, 16)
    args.ceiling_writers = 8
    args.cold_samples = 2 if q else 12
    args.cold_overlay = 10 if q else 20
    args.cold_entries = 60_000 if q else 200_000
    args.scan_entries = 50_000 if q else 200_000
    args.peer_scan_entries = 0 if q else 200_000
    args.peer_read_keys = 1_000 if q else 10_000
    args.peer_seq = 5 if q else 50
    args.memory_caches = (4 << 20, 16 << 20) if q else (8 << 20, 64 << 20)
    args.profile_seconds = 1.0 if q else 6.0
    args.profile_workloads = ("commits", "reads") if q else ("commits", "writers", "reads", "scans", "bulk")
    return args


def ensure_peers_env(args: argparse.Namespace) -> None:
    """Create bench/.venv-peers with bench/setup.sh when it is missing (one command)."""
    if PEERS_PYTHON.exists() or ("peers" in args.skip and "profile" in args.skip):
        return
    log("bench/.venv-peers is missing: running bench/setup.sh")
    try:
        subprocess.run(["bash", str(HERE / "setup.sh")], check=True, timeout=900)
    except (OSError, subprocess.SubprocessError) as exc:
        log(f"bench/setup.sh failed ({exc}); peers will be recorded as unavailable")


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    args = parse_args()
    ensure_peers_env(args)
    t0 = time.perf_counter()
    suite = Suite(args)
    try:
        asyncio.run(suite.run())
    finally:
        pinned = os.environ.get("KVBENCH_KVSTORE_PATH", "")
        if pinned and Path(pinned).name.startswith("kvbench-kvstore-"):
            shutil.rmtree(pinned, ignore_errors=True)
    suite.results["meta"]["wall_seconds"] = round(time.perf_counter() - t0, 1)
    rows, targets = report.build(suite.results)
    suite.results["table"] = rows
    suite.results["targets"] = targets
    suite.save()
    text = report.render_text(suite.results)
    print(text)
    (suite.out / "table.md").write_text(report.render_markdown(suite.results))
    png = suite.out / "commit-throughput.png"
    if PEERS_PYTHON.exists():
        r = subprocess.run(
            [str(PEERS_PYTHON), str(HERE / "chart.py"), str(suite.out / "results.json"), str(png)],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            log(f"chart failed: {r.stderr[-800:]}")
        elif args.chart:
            shutil.copy(png, args.chart)
    else:
        log("no chart: bench/.venv-peers (matplotlib) missing; run bench/setup.sh")
    log(f"done in {time.perf_counter() - t0:.0f} s; results in {suite.out}")


if __name__ == "__main__":
    main()
