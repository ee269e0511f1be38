"""Shared pieces of the benchmark suite: where to send requests, timing, and result rows.

Everything here runs in the project's own ``.venv`` (kvstore, aiobotocore). The peers run
in ``bench/.venv-peers`` (see ``peers.py``) and only exchange JSON with this side.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
PEERS_PYTHON = BENCH_DIR / ".venv-peers" / "bin" / "python"
MAIN_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
if str(REPO_ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "tests"))  # servers.py: start_localstack

CREDENTIALS = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
REGION = "us-east-1"
VALUE_BYTES = 100  # every small write stores a 100-byte value


@dataclass(frozen=True)
class Target:
    """Where a benchmark sends its requests: LocalStack S3 (a bucket) or a local directory."""

    kind: str  # "s3" or "fs"
    endpoint_url: str = ""
    bucket: str = ""
    root: str = ""

    def url(self, name: str) -> str:
        if self.kind == "s3":
            return f"s3://{self.bucket}/{name}"
        return str(Path(self.root) / name)

    def open_kwargs(self) -> dict[str, Any]:
        if self.kind == "s3":
            return {"endpoint_url": self.endpoint_url, "region_name": REGION, **CREDENTIALS}
        return {}

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "endpoint_url": self.endpoint_url, "bucket": self.bucket, "root": self.root}

    @staticmethod
    def from_json(d: dict[str, str]) -> Target:
        return Target(**d)


def open_store(target: Target, name: str, latency: float, **kwargs: Any) -> Any:
    """`kvstore.open` on `target`, with `latency` seconds injected before every request."""
    import kvstore
    from kvstore.testing.faults import FaultInjectingStore, FaultPlan, FaultRule

    wrap = None
    if latency > 0:
        plan = FaultPlan(default=FaultRule(latency=latency))

        def wrap(inner: Any) -> Any:
            return FaultInjectingStore(inner, plan)

    return kvstore.open(target.url(name), wrap_object_store=wrap, **target.open_kwargs(), **kwargs)


@functools.cache
def _aio_session() -> Any:
    from aiobotocore.session import get_session

    return get_session()


def s3_client(endpoint_url: str, max_pool_connections: int = 64) -> Any:
    """A raw aiobotocore client configured like kvstore's S3 backend: no botocore retries,
    checksums only where S3 requires them (so a floor PUT does exactly the work a kvstore PUT
    does: no CRC32 of the body)."""
    from aiobotocore.config import AioConfig

    config = AioConfig(
        retries={"total_max_attempts": 1},
        max_pool_connections=max_pool_connections,
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return _aio_session().create_client(
        "s3", endpoint_url=endpoint_url, region_name=REGION, config=config, **CREDENTIALS
    )


async def ensure_bucket(endpoint_url: str, bucket: str) -> None:
    async with s3_client(endpoint_url) as client:
        try:
            await client.create_bucket(Bucket=bucket)
        except Exception as exc:  # already there
            if "BucketAlready" not in type(exc).__name__ and "BucketAlready" not in str(exc):
                raise


# --------------------------------------------------------------------------- timing


@dataclass
class Latencies:
    """Seconds per operation, summarised."""

    samples: list[float] = field(default_factory=list)

    def add(self, seconds: float) -> None:
        self.samples.append(seconds)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples) if self.samples else float("nan")

    def pct(self, q: float) -> float:
        if not self.samples:
            return float("nan")
        s = sorted(self.samples)
        return s[min(len(s) - 1, int(q * len(s)))]

    def summary(self) -> dict[str, float]:
        return {
            "n": len(self.samples),
            "mean_ms": self.mean * 1e3,
            "p50_ms": self.pct(0.5) * 1e3,
            "p99_ms": self.pct(0.99) * 1e3,
        }


async def timed_sequence(op: Callable[[int], Awaitable[Any]], count: int, max_seconds: float) -> Latencies:
    """Run `op(i)` one after another, `count` times or until `max_seconds` passed."""
    lat = Latencies()
    deadline = time.perf_counter() + max_seconds
    for i in range(count):
        t0 = time.perf_counter()
        await op(i)
        t1 = time.perf_counter()
        lat.add(t1 - t0)
        if t1 > deadline:
            break
    return lat


WARMUP_CAP = 30.0  # seconds a closed loop waits for every worker's first operation


async def closed_loop(
    op: Callable[[int, int], Awaitable[Any]],
    workers: int,
    duration: float,
    *,
    warmup: float = 0.0,
    grace: float = 60.0,
    probe: Callable[[], Any] | None = None,
    wait_for_warm: bool = True,
) -> dict[str, Any]:
    """`workers` coroutines call `op(worker, i)` back to back; measured over one window.

    The window opens `warmup` seconds after the start (connections opened, pools warm)
    and lasts `duration` seconds; the rate counts operations completed inside it. Workers
    start no operation after the window; those still in flight get `grace` seconds to
    finish (`late`), then are cancelled (`unfinished`). `probe()` is called when the window
    opens and when it closes; both values are returned (`probe_start`, `probe_end`), e.g.
    the store's statistics, so counters cover exactly the window.

    With `wait_for_warm=False` the window opens exactly `warmup` seconds after the start,
    whatever the workers did: several processes started at one moment then measure the
    same window (a writer starved by the others must count as slow, not open its window
    late and be measured alone).
    """
    done = 0
    late = 0
    completed = 0
    errors = 0
    last_error = ""
    start = time.perf_counter()
    # The window opens once every worker has completed one operation (connections are
    # open) and `warmup` has passed; at most WARMUP_CAP seconds after the start.
    opens = start + WARMUP_CAP
    deadline = opens + duration
    warmed = 0
    window = asyncio.Event()

    if not wait_for_warm:
        opens = start + warmup
        deadline = opens + duration
        window.set()

    def warm_one() -> None:
        nonlocal warmed, opens, deadline
        warmed += 1
        if warmed == workers and not window.is_set():
            opens = max(time.perf_counter(), start + warmup)
            deadline = opens + duration
            window.set()

    captured: dict[str, Any] = {}

    async def worker(w: int) -> None:
        nonlocal done, late, completed, errors, last_error
        i = 0
        while time.perf_counter() < deadline:
            try:
                await op(w, i)
            except Exception as exc:  # counted, reported; a benchmark does not stop on one failure
                errors += 1
                last_error = f"{type(exc).__name__}: {exc}"[:300]
                if errors > 1000:
                    raise
            else:
                completed += 1
                now = time.perf_counter()
                if now > deadline:
                    late += 1
                elif now >= opens:
                    done += 1
            if i == 0:
                warm_one()
            i += 1

    async def clock() -> None:
        try:
            await asyncio.wait_for(window.wait(), WARMUP_CAP)
        except asyncio.TimeoutError:
            pass
        await asyncio.sleep(max(0.0, opens - time.perf_counter()))
        if probe is not None:
            captured["start"] = probe()
        await asyncio.sleep(max(0.0, deadline - time.perf_counter()))
        if probe is not None:
            captured["end"] = probe()

    timer = asyncio.ensure_future(clock())
    tasks = [asyncio.ensure_future(worker(w)) for w in range(workers)]
    _, pending = await asyncio.wait(tasks, timeout=WARMUP_CAP + duration + grace)
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.wait(pending, timeout=5)
    await timer
    for t in tasks:
        if t.done() and not t.cancelled() and t.exception() is not None:
            raise t.exception()  # type: ignore[misc]
    out: dict[str, Any] = {
        "ops": done,
        "late": late,
        "completed": completed,
        "unfinished": len(pending),
        "errors": errors,
        "seconds": duration,
        "warmup": round(opens - start, 3),
        "rate": done / duration,
    }
    if last_error:
        out["last_error"] = last_error
    if probe is not None:
        out["probe_start"], out["probe_end"] = captured.get("start"), captured.get("end")
    return out


def drop_os_cache(target: Target, name: str) -> None:
    """Make the store `name` cold in the operating system's page cache as well (a local
    store only: LocalStack keeps its objects in its own memory): write back what is
    dirty, then drop the store's files' cached pages. A cold read after it reads the
    disk, as one after a load too big for the page cache does; without it, which blocks
    an earlier phase happened to read, or the load happened to leave cached, decides
    what a cold get costs."""
    if target.kind != "fs":
        return
    os.sync()
    for root, _, files in os.walk(Path(target.root) / name):
        for file in files:
            fd = os.open(os.path.join(root, file), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def random_values(count: int, size: int = VALUE_BYTES) -> list[bytes]:
    """`count` incompressible values (so zstd in the segment format gains nothing)."""
    blob = os.urandom(count * size)
    return [blob[i * size : (i + 1) * size] for i in range(count)]


VALUE = random_values(1)[0]  # the value of every small write

# The data of the scale benchmark (bench/scale.py) and its SlateDB peer: pair i is a
# random 16-byte key and a random 100-byte value, both from a seed, drawn in batches of
# SCALE_BATCH so that pair i is the same whatever the count. Stdlib only: the peers' venv
# runs it too.
SCALE_KEY_BYTES = 16
SCALE_BATCH = 65_536


def scale_batches(seed: int, count: int) -> Iterator[tuple[list[bytes], list[bytes]]]:
    """The first `count` pairs of `seed`, as (keys, values) lists of up to SCALE_BATCH."""
    keys_rng, values_rng = random.Random(seed), random.Random(seed + 1)
    kb, vb = SCALE_KEY_BYTES, VALUE_BYTES
    for start in range(0, count, SCALE_BATCH):
        n = min(SCALE_BATCH, count - start)
        keys, values = keys_rng.randbytes(kb * n), values_rng.randbytes(vb * n)
        yield [keys[i : i + kb] for i in range(0, kb * n, kb)], [values[i : i + vb] for i in range(0, vb * n, vb)]


def scale_pairs(seed: int, count: int) -> Iterator[tuple[bytes, bytes]]:
    for keys, values in scale_batches(seed, count):
        yield from zip(keys, values, strict=True)


def scale_sample(seed: int, count: int, n: int, pick_seed: int = 7) -> list[tuple[bytes, bytes]]:
    """`n` of the first `count` pairs of `seed`, chosen at random (by `pick_seed`)."""
    wanted = sorted(random.Random(pick_seed).sample(range(count), min(n, count)))
    out: list[tuple[bytes, bytes]] = []
    base = 0
    for keys, values in scale_batches(seed, (wanted[-1] + 1) if wanted else 0):
        while len(out) < len(wanted) and wanted[len(out)] < base + len(keys):
            i = wanted[len(out)] - base
            out.append((keys[i], values[i]))
        base += len(keys)
    random.Random(pick_seed).shuffle(out)  # not in key-index order
    return out


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def env_for_children() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        env.pop(name, None)
    env["AWS_ACCESS_KEY_ID"] = CREDENTIALS["aws_access_key_id"]
    env["AWS_SECRET_ACCESS_KEY"] = CREDENTIALS["aws_secret_access_key"]
    env["AWS_DEFAULT_REGION"] = REGION
    env["NO_PROXY"] = "127.0.0.1,localhost"
    if os.environ.get("KVBENCH_KVSTORE_PATH"):  # run.py --kvstore-ref: the pinned engine
        env["PYTHONPATH"] = os.environ["KVBENCH_KVSTORE_PATH"]
    return env
