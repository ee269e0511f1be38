"""What Dask workers run in the Zarr session tests: importable by name from a worker process."""

from __future__ import annotations

import os

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
