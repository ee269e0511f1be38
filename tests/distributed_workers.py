"""Functions that worker processes (a ProcessPoolExecutor, Dask workers) run in the
distributed-write tests: importable by name from a spawned process."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import kvstore


def pairs(index: int, count: int, tag: str = "") -> list[tuple[bytes, bytes]]:
    """Part `index`'s pairs: keys k<index>-<i>, values naming the part (and `tag`)."""
    return [(f"k{index:03d}-{i:05d}".encode(), f"{tag}part{index}-{i}".encode()) for i in range(count)]


def write_part(job: kvstore.DistributedWrite, index: int, count: int) -> kvstore.Part:
    """A task: write part `index` of `count` pairs."""
    return job.write(pairs(index, count), index=index)


def write_part_and_pid(job: kvstore.DistributedWrite, index: int, count: int) -> tuple[kvstore.Part, int]:
    return job.write(pairs(index, count), index=index), os.getpid()


def announce(marker: Path, text: str) -> None:
    """Write `marker` atomically (rename), so a reader never sees half of it."""
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, marker)


def stall_at(pair: tuple[bytes, bytes], key: bytes, markers: str, deadline: float) -> tuple[bytes, bytes]:
    """Pass `pair` through (mapped over a Bag); at `key`, on the first attempt only,
    announce the process (marker `<markers>/stalled` holding its pid) and block until it
    is killed; past `deadline` (epoch seconds) fail instead."""
    marker = Path(markers) / "stalled"
    if pair[0] == key and not marker.exists():
        announce(marker, f"{os.getpid()}\n")
        threading.Event().wait(max(0.0, deadline - time.time()))  # never set: SIGKILL ends it
        raise TimeoutError("the stalled task was never killed")
    return pair
