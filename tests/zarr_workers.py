"""What Dask workers run in the Zarr session tests: importable by name from a worker process."""

from __future__ import annotations

import os
import signal

import numpy as np
import zarr

from kvstore.zarr import ZarrStore


def write_rows(store: ZarrStore, start: int, stop: int) -> tuple[ZarrStore, int]:
    """A task: write rows [start, stop) of array "x" through this copy of a session's store
    (blocking zarr, on zarr's loop thread); return the copy, which carries what it staged,
    and this process's id."""
    arr = zarr.open_array(store, path="x", mode="r+")
    arr[start:stop] = np.arange(start * 4, stop * 4, dtype="int32").reshape(stop - start, 4)
    return store, os.getpid()


def write_rows_dying_once(store: ZarrStore, start: int, stop: int, marker: str) -> int:
    """A task whose first attempt (anywhere) writes rows [start, stop) of "x" as -7s and
    then SIGKILLs its own worker process; Dask retries it on a new worker, where it writes
    the real rows. Returns this process's id."""
    arr = zarr.open_array(store, path="x", mode="r+")
    if not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        arr[start:stop] = np.full((stop - start, 4), -7, dtype="int32")
        os.kill(os.getpid(), signal.SIGKILL)
    arr[start:stop] = np.arange(start * 4, stop * 4, dtype="int32").reshape(stop - start, 4)
    return os.getpid()
