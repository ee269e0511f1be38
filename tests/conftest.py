"""Shared fixtures.  S3 endpoints come from ``tests/servers.py``; they start lazily (only when a
test asks for them) and stop at the end of the session."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

# `servers` is imported by its plain name in every import mode, with or without tests/__init__.py.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import (  # noqa: E402
    TEST_CREDENTIALS,
    TEST_REGION,
    s3_client,
    start_localstack,
    start_moto,
    start_shield,
    unique_bucket_name,
)


def set_default_aws_env() -> None:
    """Make the default credential chain work against LocalStack, here and in subprocesses.
    Values already set in the environment win."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", TEST_CREDENTIALS["aws_access_key_id"])
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", TEST_CREDENTIALS["aws_secret_access_key"])
    os.environ.setdefault("AWS_DEFAULT_REGION", TEST_REGION)


def bypass_proxy_for_loopback() -> None:
    """If an HTTP proxy is configured, keep requests to the local emulators off it."""
    if not any(
        os.environ.get(v) for v in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
    ):
        return
    for var in ("NO_PROXY", "no_proxy"):
        entries = [e for e in os.environ.get(var, "").split(",") if e.strip()]
        entries += [h for h in ("127.0.0.1", "localhost") if h not in entries]
        os.environ[var] = ",".join(entries)


set_default_aws_env()
bypass_proxy_for_loopback()


@pytest.fixture(scope="session")
def localstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Endpoint URL of a LocalStack S3 shared by the session, behind a shield: a
    store-and-forward proxy that keeps clients which die or give up mid-answer from
    hanging LocalStack (see `servers.start_shield`)."""
    workdir = tmp_path_factory.mktemp("localstack")
    server = start_localstack(workdir)
    try:
        shield = start_shield(server.endpoint_url, workdir)
        try:
            yield shield.endpoint_url
        finally:
            shield.stop()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Endpoint URL of a moto server that authenticates every request: all credentials are
    unknown to it, so every S3 call gets 403 InvalidAccessKeyId."""
    server = start_moto(auth=True, log_dir=tmp_path_factory.mktemp("moto-auth"))
    try:
        yield server.endpoint_url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Endpoint URL of a moto server that accepts any credentials. Its conditional writes
    are check-then-act, not atomic: never judge a race by it."""
    server = start_moto(auth=False, log_dir=tmp_path_factory.mktemp("moto"))
    try:
        yield server.endpoint_url
    finally:
        server.stop()


@pytest.fixture
async def moto_bucket(moto: str) -> AsyncIterator[tuple[str, str]]:
    """A fresh, empty bucket on moto: ``(endpoint_url, bucket_name)``."""
    name = unique_bucket_name()
    async with s3_client(moto) as s3:
        await s3.create_bucket(Bucket=name)
    yield moto, name


@pytest.fixture
async def s3_bucket(localstack: str) -> AsyncIterator[tuple[str, str]]:
    """A fresh, empty bucket on LocalStack: ``(endpoint_url, bucket_name)``.  Not deleted
    afterwards: LocalStack's state goes away with the session."""
    name = unique_bucket_name()
    async with s3_client(localstack) as s3:
        await s3.create_bucket(Bucket=name)
    yield localstack, name


# kvstore fixtures: the same behavioural test on every backend.
from fixtures import dask_client, durable_target, target  # noqa: E402,F401
