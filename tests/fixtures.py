"""Fixtures that open kvstore stores on each backend (loaded from conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from targets import Target, file_target, memory_target, s3_target


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
