"""A store opened before `fork()`, used in the child: `multiprocessing`'s "fork" start method,
`os.fork`, and gunicorn's preloading master, on the local filesystem and on S3 (LocalStack).

A `SyncStore` re-opens in the child; an async `Store`, and a transaction, snapshot or scan begun
before the fork, raise UsedAfterForkError there. Nothing hangs: every wait in these tests has a
deadline, so a store that hangs in a child fails the test instead of stalling the suite.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from targets import Target

import kvstore

T = TypeVar("T")
DEADLINE = 90.0  # seconds for any one wait below; a healthy run needs a few
ROOT = Path(__file__).resolve().parent.parent
CONCEPTS = ROOT / "docs" / "concepts.md"

_SHARED: dict[str, Any] = {}  # what forked pool workers inherit from the test that forks them


def _increment(tx: kvstore.SyncTransaction) -> None:
    tx.put("n", tx.get("n", 0) + 1)


def _pool_task(_: int) -> int:
    _SHARED["db"].transact(_increment)
    return os.getpid()


def _fork(child: Callable[[], object]) -> int:
    """Fork; the child runs `child` and exits 0, or 1 after printing its traceback. The child
    never returns into pytest."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            child()
            code = 0
        except BaseException:  # noqa: BLE001 - reported through the exit code
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    return pid


def _exit_code(pid: int, seconds: float = DEADLINE) -> int:
    """The exit code of forked child `pid`; kills it and fails the test if it runs past `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the forked child did not finish within {seconds:g} s: it hung")
        time.sleep(0.02)  # a bounded poll of the child's state, not a wait for a race


def _within(seconds: float, call: Callable[[], T]) -> T:
    """`call()`, run in a daemon thread so that a hang fails the test after `seconds`."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            outcome.append((False, exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"the call did not return within {seconds:g} s: it hung")
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


# -- SyncStore: re-opened in the child ------------------------------------------------------


def test_pool_workers_and_the_parent_count_exactly(durable_target: Target) -> None:
    """The issue's counter: forked pool workers (2 of them, 8 tasks) and the parent increment one key."""
    db = durable_target.open_sync(values="msgpack")
    _SHARED["db"] = db
    try:
        db.transact(_increment)
        with multiprocessing.get_context("fork").Pool(2) as pool:
            pending = pool.map_async(_pool_task, range(8), chunksize=1)
            for _ in range(4):
                db.transact(_increment)  # the parent, meanwhile
            pids = pending.get(timeout=DEADLINE)
        assert os.getpid() not in pids  # the tasks ran in the forked workers
        assert db.get("n") == 1 + 8 + 4
    finally:
        _SHARED.clear()
        db.close()


def test_os_fork_child_and_parent_share_the_store(durable_target: Target) -> None:
    with durable_target.open_sync(values="msgpack") as db:
        db.transact(_increment)

        def child() -> None:
            for _ in range(5):
                db.transact(_increment)
            assert db.get("n") >= 6

        pid = _fork(child)
        for _ in range(5):
            db.transact(_increment)
        assert _exit_code(pid) == 0
        assert db.get("n") == 11


def test_fork_while_the_parent_commits(durable_target: Target) -> None:
    """The fork lands while the parent's loop thread commits: the child carries no batch of the
    parent's (it would commit it twice) and waits on none of its locks."""
    with durable_target.open_sync(values="msgpack") as db:
        db.put("n", 0)
        committing = threading.Event()

        def parent_writer() -> None:
            for _ in range(40):
                db.transact(_increment)
                committing.set()

        writer = threading.Thread(target=parent_writer)
        writer.start()
        try:
            assert committing.wait(DEADLINE)
            pid = _fork(lambda: [db.transact(_increment) for _ in range(10)])
        finally:
            writer.join(DEADLINE)
        assert not writer.is_alive()
        assert _exit_code(pid) == 0
        assert db.get("n") == 50


def test_a_store_closed_before_the_fork_stays_closed(tmp_path: Path) -> None:
    db = kvstore.open_sync(tmp_path / "s")
    db.close()

    def child() -> None:
        with pytest.raises(kvstore.ClosedError):
            db.get("k")
        db.close()

    assert _exit_code(_fork(child)) == 0


# -- what was begun before the fork fails in the child, at once --------------------------------


def test_sync_transaction_snapshot_and_scan_begun_before_the_fork_fail_in_the_child(
    durable_target: Target,
) -> None:
    with durable_target.open_sync(values="msgpack") as db:
        with db.transaction() as setup:
            setup.put("n", 1)
            for i in range(300):  # more than one batch of a blocking scan
                setup.put(f"k/{i:03d}", i)
        tx = db.transaction()
        assert tx.get("n") == 1
        tx.put("n", 2)
        snap = db.snapshot()
        scan = db.scan(prefix="k/")
        assert next(scan) == (b"k/000", 0)

        def child() -> None:
            uses: list[Callable[[], object]] = [
                lambda: tx.get("n"),
                lambda: tx.put("x", 1),
                tx.commit,
                lambda: snap.get("n"),
                lambda: list(scan),
            ]
            for use in uses:
                with pytest.raises(kvstore.UsedAfterForkError, match="before it forked"):
                    _within(10, use)
            assert _within(DEADLINE, lambda: db.get("n")) == 1  # the store itself re-opens
            db.put("child", 1)

        assert _exit_code(_fork(child)) == 0
        assert tx.commit() == 3  # the parent's transaction is unharmed
        assert db.get("n") == 2 and db.get("child") == 1


async def _open(target: Target) -> kvstore.Store:
    return await target.open(values="msgpack")


def test_async_store_in_a_forked_child_raises_at_once(durable_target: Target) -> None:
    loop = asyncio.new_event_loop()
    db = loop.run_until_complete(_open(durable_target))
    try:
        loop.run_until_complete(db.put("n", 1))
        tx = db.transaction()
        assert loop.run_until_complete(tx.get("n")) == 1
        tx.put("n", 2)

        def child() -> None:
            async def use() -> None:
                uses = [
                    lambda: db.get("n"),
                    lambda: db.put("x", 1),
                    lambda: db.snapshot(),
                    lambda: db.describe(),
                    lambda: tx.get("n"),
                    lambda: tx.commit(),
                ]
                for awaitable in uses:
                    with pytest.raises(kvstore.UsedAfterForkError, match="Open the store again in this process"):
                        await awaitable()
                for call in (db.transaction, lambda: tx.put("x", 1)):
                    with pytest.raises(kvstore.UsedAfterForkError, match="Open the store again in this process"):
                        call()
                await db.close()  # only marks the child's copy closed
                async with durable_target.open(values="msgpack") as own:  # what the message says to do
                    assert await own.get("n") == 1
                    await own.put("child", 1)

            asyncio.run(asyncio.wait_for(use(), DEADLINE))

        assert _exit_code(_fork(child)) == 0
        # The parent's store, connections and transaction are unharmed.
        assert loop.run_until_complete(tx.commit()) == 3
        assert loop.run_until_complete(db.get("child")) == 1
        assert loop.run_until_complete(db.get("n")) == 2
    finally:
        loop.run_until_complete(db.close())
        loop.close()


# -- the parent's objects are left alone ---------------------------------------------------------

_CHILD_EXITS_NORMALLY = """
import gc, os, sys, time
import kvstore

url, endpoint = sys.argv[1], sys.argv[2]
patient = kvstore.StoreOptions(retry=kvstore.RetryPolicy(attempt_timeout=60, total_timeout=120))
db = kvstore.open_sync(url, endpoint_url=endpoint, values="msgpack", options=patient,
                       s3_options=kvstore.S3Options(read_timeout=60))
for i in range(10):
    db.put(f"k{i}", i)


def read_all():
    # The parent's reads, on its pooled connections: seconds the slowest took, requests sent.
    sent, worst = db.statistics()["requests"]["GET"], 0.0
    for i in range(10):
        started = time.monotonic()
        assert db.get(f"k{i}") == i
        worst = max(worst, time.monotonic() - started)
    return worst, db.statistics()["requests"]["GET"] - sent


read_all()  # warm: what a first read costs once
before = read_all()
pid = os.fork()
if pid == 0:
    db.put("child", 1)  # re-opens in the child
    del db
    gc.collect()  # what the child dropped is finalised now, not at some later collection
    sys.exit(0)  # then a normal exit: the interpreter finalises the rest
os.waitpid(pid, 0)
worst, sent = read_all()
assert db.get("child") == 1
print(f"after the child exited: slowest read {worst:.3f} s, {sent} GETs (before the fork: {before[1]})")
db.close()
"""


def test_a_child_that_exits_leaves_the_parents_connections_alone(s3_bucket: tuple[str, str], tmp_path: Path) -> None:
    """Finalising the parent's connection pool in a child would break the parent's pooled
    connections: a request on one fails and is sent again, or, where the server keeps the
    connection open, its answer is never heard (the socket was unregistered from the epoll set
    the parent's event loop shares with the child) and the read stalls for its 60 s timeout."""
    endpoint, bucket = s3_bucket
    done = subprocess.run(
        [sys.executable, "-c", _CHILD_EXITS_NORMALLY, f"s3://{bucket}/fork-exit", endpoint],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=DEADLINE * 2,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found = re.search(r"slowest read ([0-9.]+) s, (\d+) GETs \(before the fork: (\d+)\)", done.stdout)
    assert found is not None, done.stdout
    assert float(found[1]) < 10, done.stdout  # milliseconds when healthy
    assert found[2] == found[3], done.stdout  # no request was sent twice


# -- no wait is endless -----------------------------------------------------------------------


def test_a_dead_loop_thread_ends_the_wait(tmp_path: Path) -> None:
    db = kvstore.open_sync(tmp_path / "s")

    async def stop_the_loop(tx: kvstore.Transaction) -> None:
        raise SystemExit("raised on the store's loop thread, which it ends")

    with pytest.raises(kvstore.ClosedError, match="loop thread of this store has stopped: .*SystemExit"):
        _within(10, lambda: db.transact(stop_the_loop))
    with pytest.raises(kvstore.ClosedError, match="loop thread of this store has stopped"):
        _within(10, lambda: db.get("k"))
    _within(10, db.close)


# -- the examples of docs/concepts.md ----------------------------------------------------------


def _concepts_block(heading: str) -> str:
    """The python block that follows `heading` in docs/concepts.md's "Processes and fork"."""
    section = CONCEPTS.read_text().split("\n## Processes and fork\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(re.escape(heading) + r".*?^```python\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)
    assert match is not None, heading
    return match[1]


def test_concepts_multiprocessing_example(tmp_path: Path) -> None:
    section = CONCEPTS.read_text().split("\n## Processes and fork\n", 1)[1]
    code = re.search(r"^```python\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)[1]  # type: ignore[index]
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=DEADLINE, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "n = 9\n"


def test_concepts_async_example(tmp_path: Path) -> None:
    code = _concepts_block("An async application")
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=DEADLINE, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[1, 1]\n"


def test_concepts_gunicorn_example(tmp_path: Path) -> None:
    """A preloading gunicorn master opens the store; its two forked workers serve 40 concurrent
    increments, each of which sees a distinct count."""
    (tmp_path / "gunicorn.conf.py").write_text(_concepts_block("**`gunicorn.conf.py`**"))
    (tmp_path / "app.py").write_text(_concepts_block("**`app.py`**"))
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", "127.0.0.1:0", "app:app"],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        base, lines = _listening_address(server.stderr)

        def hit(_: int) -> tuple[int, int]:
            with urllib.request.urlopen(urllib.request.Request(f"{base}/hits", method="POST"), timeout=30) as r:
                _, count, pid = r.read().decode().split()
                return int(count), int(pid)

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(hit, range(40)))
    finally:
        server.send_signal(signal.SIGTERM)  # graceful: each worker exits through interpreter shutdown
        try:
            _, rest = server.communicate(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            server.kill()
            _, rest = server.communicate(timeout=DEADLINE)
    log = "".join(lines) + rest
    assert server.returncode == 0, log
    assert sorted(count for count, _ in answers) == list(range(1, 41))
    assert server.pid not in {pid for _, pid in answers}  # served by the forked workers
    assert "Traceback" not in log and "[ERROR]" not in log, log
    with kvstore.open_sync(tmp_path / "counter-store", values="msgpack") as db:
        assert db.get("hits") == 40


def _listening_address(stderr: Any) -> tuple[str, list[str]]:
    """gunicorn's address once its workers are up (from its log), and the lines read so far."""
    lines: list[str] = []
    workers = 0
    base = None
    deadline = time.monotonic() + DEADLINE
    while workers < 2:
        line = stderr.readline()  # gunicorn logs a line per worker booted; "" if it died
        assert line and time.monotonic() < deadline, "".join(lines)
        lines.append(line)
        found = re.search(r"Listening at: (http://127\.0\.0\.1:\d+)", line)
        if found:
            base = found[1]
        workers += "Booting worker with pid" in line
    assert base is not None, "".join(lines)
    return base, lines


# Each blocking call that reaches the store, made as the child's FIRST call: it must re-open the
# store in the child (a call that skips the re-open waits on the parent's loop thread, which the
# child does not have, and hangs).
_FIRST_CALLS: dict[str, Callable[[kvstore.SyncStore], object]] = {
    "get": lambda db: db.get("n"),
    "get_many": lambda db: db.get_many(["n", "m"]),
    "read_value": lambda db: list(db.read_value("n")),
    "get_range": lambda db: db.get_range("n", 0, 1),
    "scan": lambda db: list(db.scan()),
    "snapshot": lambda db: db.snapshot().get("n"),
    "describe": lambda db: db.describe(),
    "refresh": lambda db: db.refresh(),
    "transact": lambda db: db.transact(_increment),
    "distributed_write": lambda db: db.distributed_write().job.job_id,
    "partitions": lambda db: db.partitions(),
    "split": lambda db: db.split("x"),
    "merge_partitions": lambda db: _merge_refused(db),
}


def _merge_refused(db: kvstore.SyncStore) -> None:
    """merge_partitions on the store never split: refused by the store (so it was reached)."""
    with pytest.raises(kvstore.ValidationError, match="not a partition boundary"):
        db.merge_partitions("x")


@pytest.mark.parametrize("call", sorted(_FIRST_CALLS))
def test_every_first_call_in_a_child_reopens_the_store(tmp_path: Path, call: str) -> None:
    with kvstore.open_sync(f"file://{tmp_path}/s", values="msgpack") as db:
        db.put("n", 1)
        pid = _fork(lambda: _FIRST_CALLS[call](db))
        assert _exit_code(pid, 30.0) == 0
        assert db.get("n") in (1, 2)  # the parent's store is unharmed (2 after the child's transact)
