"""The test harness itself, and the S3 semantics kvstore depends on, checked on the emulators.

Conditional-request semantics and the CAS race run on LocalStack (moto is not atomic under
concurrent conditional writes); moto serves only the "bad credentials" case.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import stat
import uuid
from pathlib import Path

import pytest
from aiobotocore.session import get_session
from botocore.exceptions import ClientError
from servers import (
    LOCALSTACK_PYTHON_ENV,
    s3_client,
    start_localstack,
    start_moto,
    unique_bucket_name,
)

AUTH_ERROR_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "InvalidToken",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
}


def code(exc: ClientError) -> str:
    return str(exc.response["Error"]["Code"])


def status(exc: ClientError) -> int:
    return int(exc.response["ResponseMetadata"]["HTTPStatusCode"])


def md5_etag(data: bytes) -> str:
    return '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'


async def read_object(s3, bucket: str, key: str) -> tuple[bytes, str]:  # type: ignore[no-untyped-def]
    got = await s3.get_object(Bucket=bucket, Key=key)
    async with got["Body"] as body:
        return await body.read(), got["ETag"]


# --------------------------------------------------------------------------- harness


async def test_s3_bucket_fixture_gives_a_fresh_empty_bucket(s3_bucket: tuple[str, str]) -> None:
    endpoint, bucket = s3_bucket
    assert endpoint.startswith("http://127.0.0.1:")
    async with s3_client(endpoint) as s3:
        await s3.head_bucket(Bucket=bucket)
        assert (await s3.list_objects_v2(Bucket=bucket))["KeyCount"] == 0
        names = {b["Name"] for b in (await s3.list_buckets())["Buckets"]}
    assert bucket in names
    # servers.py moved LocalStack's S3 store out of the machine-wide default
    assert not (Path("/tmp/localstack-s3-storage") / bucket).exists()


async def test_default_credential_chain_reaches_localstack(s3_bucket: tuple[str, str]) -> None:
    """conftest exports AWS_* defaults, so a client built like kvstore's (no explicit
    credentials or region) works against LocalStack."""
    endpoint, bucket = s3_bucket
    assert os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY")
    async with get_session().create_client("s3", endpoint_url=endpoint) as s3:
        assert s3.meta.region_name == os.environ["AWS_DEFAULT_REGION"]
        await s3.put_object(Bucket=bucket, Key="k", Body=b"v")
        assert (await read_object(s3, bucket, "k"))[0] == b"v"


def test_missing_localstack_venv_says_how_to_make_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LOCALSTACK_PYTHON_ENV, str(tmp_path / "no-venv" / "bin" / "python"))
    with pytest.raises(RuntimeError, match=r"\./scripts/test\.sh"):
        start_localstack(tmp_path / "ls")


def _fake_python(tmp_path: Path, script: str) -> Path:
    path = tmp_path / "fake-python"
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_server_that_dies_at_start_is_reported_with_its_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LOCALSTACK_PYTHON_ENV, str(_fake_python(tmp_path, "echo 'boom: cannot start'; exit 3")))
    with pytest.raises(RuntimeError, match=r"(?s)exited with code 3.*boom: cannot start"):
        start_localstack(tmp_path / "ls")


def test_server_that_never_gets_ready_times_out_and_is_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pid_file = tmp_path / "pid"
    monkeypatch.setenv(
        LOCALSTACK_PYTHON_ENV,
        str(_fake_python(tmp_path, f"echo $$ > {pid_file}; echo 'still warming up'; exec sleep 60")),
    )
    with pytest.raises(RuntimeError, match=r"(?s)not ready.*still warming up"):
        start_localstack(tmp_path / "ls", timeout=0.5)
    pid = int(pid_file.read_text())
    assert not Path(f"/proc/{pid}").exists()  # terminated and reaped


# --------------------------------------------------------------------------- LocalStack semantics


async def test_put_if_none_match_creates_only_once(s3_bucket: tuple[str, str]) -> None:
    endpoint, bucket = s3_bucket
    async with s3_client(endpoint) as s3:
        first = await s3.put_object(Bucket=bucket, Key="k", Body=b"one", IfNoneMatch="*")
        assert first["ETag"] == md5_etag(b"one")  # quoted MD5, as kvstore's content_etag
        with pytest.raises(ClientError) as info:
            await s3.put_object(Bucket=bucket, Key="k", Body=b"two", IfNoneMatch="*")
        assert (code(info.value), status(info.value)) == ("PreconditionFailed", 412)
        assert await read_object(s3, bucket, "k") == (b"one", first["ETag"])


async def test_put_if_match_is_compare_and_swap(s3_bucket: tuple[str, str]) -> None:
    endpoint, bucket = s3_bucket
    async with s3_client(endpoint) as s3:
        v1 = (await s3.put_object(Bucket=bucket, Key="k", Body=b"v1"))["ETag"]
        v2 = (await s3.put_object(Bucket=bucket, Key="k", Body=b"v2", IfMatch=v1))["ETag"]
        assert v2 == md5_etag(b"v2") != v1
        with pytest.raises(ClientError) as info:
            await s3.put_object(Bucket=bucket, Key="k", Body=b"v3", IfMatch=v1)  # stale
        assert (code(info.value), status(info.value)) == ("PreconditionFailed", 412)
        assert await read_object(s3, bucket, "k") == (b"v2", v2)

        with pytest.raises(ClientError) as info:
            await s3.put_object(Bucket=bucket, Key="missing", Body=b"x", IfMatch=v2)
        assert (code(info.value), status(info.value)) == ("NoSuchKey", 404)


async def test_conditional_get(s3_bucket: tuple[str, str]) -> None:
    endpoint, bucket = s3_bucket
    async with s3_client(endpoint) as s3:
        old = (await s3.put_object(Bucket=bucket, Key="k", Body=b"old"))["ETag"]
        new = (await s3.put_object(Bucket=bucket, Key="k", Body=b"new"))["ETag"]

        with pytest.raises(ClientError) as info:
            await s3.get_object(Bucket=bucket, Key="k", IfNoneMatch=new)
        assert (code(info.value), status(info.value)) == ("304", 304)

        got = await s3.get_object(Bucket=bucket, Key="k", IfNoneMatch=old)
        async with got["Body"] as body:
            assert (await body.read(), got["ETag"]) == (b"new", new)

        with pytest.raises(ClientError) as info:
            await s3.get_object(Bucket=bucket, Key="k", IfMatch=old)
        assert (code(info.value), status(info.value)) == ("PreconditionFailed", 412)


CAS_ROUNDS = 30
CAS_WRITERS = 16


async def _cas_put(
    s3,
    bucket: str,
    body: bytes,
    expected: str,  # type: ignore[no-untyped-def]
    go: asyncio.Event,
) -> tuple[bytes, str | ClientError]:
    await go.wait()
    try:
        resp = await s3.put_object(Bucket=bucket, Key="cas", Body=body, IfMatch=expected)
    except ClientError as exc:
        return body, exc
    return body, resp["ETag"]


async def test_cas_race_has_exactly_one_winner_per_round(s3_bucket: tuple[str, str]) -> None:
    """CAS_WRITERS tasks PUT with If-Match of the same ETag at once: one wins, the rest get 412
    (real S3 may answer 409 ConditionalRequestConflict instead).  No automatic retries, so a
    retried own write cannot masquerade as a 412."""
    endpoint, bucket = s3_bucket
    async with s3_client(endpoint, max_pool_connections=CAS_WRITERS, retries={"total_max_attempts": 1}) as s3:
        etag = (await s3.put_object(Bucket=bucket, Key="cas", Body=b"round-0"))["ETag"]
        for rnd in range(1, CAS_ROUNDS + 1):
            go = asyncio.Event()
            tasks = [
                asyncio.create_task(_cas_put(s3, bucket, f"round-{rnd}-writer-{i}".encode(), etag, go))
                for i in range(CAS_WRITERS)
            ]
            await asyncio.sleep(0)  # every writer is parked on the event
            go.set()
            results = await asyncio.gather(*tasks)

            winners = [(body, tag) for body, tag in results if isinstance(tag, str)]
            losers = [exc for _, exc in results if isinstance(exc, ClientError)]
            assert len(winners) == 1, f"round {rnd}: {len(winners)} winners"
            assert len(losers) == CAS_WRITERS - 1, results
            assert {code(e) for e in losers} <= {"PreconditionFailed", "ConditionalRequestConflict"}, results
            ((won_body, won_etag),) = winners
            assert won_etag == md5_etag(won_body)
            assert await read_object(s3, bucket, "cas") == (won_body, won_etag)
            etag = won_etag


# --------------------------------------------------------------------------- moto with auth


@pytest.mark.parametrize("key_id", ["AKIA" + uuid.uuid4().hex[:16].upper(), "test"])
async def test_moto_auth_rejects_unknown_credentials(moto_auth: str, key_id: str) -> None:
    credentials = {"aws_access_key_id": key_id, "aws_secret_access_key": uuid.uuid4().hex}
    async with s3_client(moto_auth, credentials=credentials, retries={"total_max_attempts": 1}) as s3:
        with pytest.raises(ClientError) as info:
            await s3.put_object(Bucket=unique_bucket_name(), Key="k", Body=b"x")
    assert status(info.value) == 403
    assert code(info.value) in AUTH_ERROR_CODES


async def test_moto_without_auth_accepts_the_same_credentials(tmp_path: Path) -> None:
    """The rejection above comes from the auth switch, not from the request; also: stop()
    really stops the server."""
    server = start_moto(auth=False, log_dir=tmp_path)
    try:
        credentials = {
            "aws_access_key_id": "AKIA" + uuid.uuid4().hex[:16].upper(),
            "aws_secret_access_key": uuid.uuid4().hex,
        }
        bucket = unique_bucket_name()
        async with s3_client(server.endpoint_url, credentials=credentials) as s3:
            await s3.create_bucket(Bucket=bucket)
            await s3.put_object(Bucket=bucket, Key="k", Body=b"x")
            assert (await read_object(s3, bucket, "k"))[0] == b"x"
    finally:
        server.stop()
    assert not server.running()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
    assert server.log_path.is_file()
