"""Fixtures that open kvstore stores on each backend (loaded from conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from targets import Target, file_target, memory_target, s3_target

if TYPE_CHECKING:
    from distributed import Client


@pytest.fixture(params=["memory", "file", "s3"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    """The same test on the memory, local-filesystem and S3 (LocalStack) backends."""
    return _make_target(request, request.param, tmp_path)


@pytest.fixture(params=["file", "s3"])
def durable_target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    """Backends shared by several processes: the local filesystem and S3 (LocalStack)."""
    return _make_target(request, request.param, tmp_path)


def _make_target(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> Target:
    if kind == "memory":
        return memory_target()
    if kind == "file":
        return file_target(tmp_path)
    endpoint_url, bucket = request.getfixturevalue("s3_bucket")
    return s3_target(endpoint_url, bucket)


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Client]:
    """A Dask client of a real LocalCluster: two worker processes, one thread each (shared
    by a test module; a test that kills a worker waits for its replacement)."""
    from distributed import Client, LocalCluster  # only the modules that use Dask import it

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        yield client
