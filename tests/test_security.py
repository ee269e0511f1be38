"""Security basics: secrets stay secret, user keys never reach object names,
and encryption settings reach every request that needs them."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from targets import Target, engine_of

import kvstore

SSE_C_KEY = b"0123456789abcdef0123456789abcdef"


def _capture_requests(db: kvstore.Store) -> list[tuple[str, dict[str, str]]]:
    """Record (method + path, headers) of every HTTP request the store's S3 client sends."""
    seen: list[tuple[str, dict[str, str]]] = []
    client = engine_of(db).objects.inner._client  # white-box: the real aiobotocore client

    def before_send(request: Any, **_: Any) -> None:
        headers = {k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
        seen.append((f"{request.method} {request.url}", headers))

    client.meta.events.register("before-send.s3", before_send)
    return seen


@pytest.mark.parametrize("sse, kms_key", [("AES256", None), ("aws:kms", "arn:aws:kms:us-east-1:000000000000:key/k1")])
async def test_sse_headers_on_every_write(s3_bucket: tuple[str, str], sse: str, kms_key: str | None) -> None:
    endpoint_url, bucket = s3_bucket
    options = kvstore.S3Options(sse=sse, sse_kms_key_id=kms_key)
    objects = kvstore.StoreOptions(inline_segment_bytes=0)  # the segment is a PUT of its own too
    async with kvstore.open(f"s3://{bucket}/sse", endpoint_url=endpoint_url, s3_options=options, options=objects) as db:
        seen = _capture_requests(db)
        await db.put(b"k", b"v")
        await db.tag("t")
        assert await db.get(b"k") == b"v"
    writes = [(what, headers) for what, headers in seen if what.startswith("PUT")]
    assert len(writes) >= 4  # segment, manifest, manifest copy, tag
    for what, headers in writes:
        assert headers.get("x-amz-server-side-encryption") == sse, what
        assert headers.get("x-amz-server-side-encryption-aws-kms-key-id") == kms_key, what


async def test_sse_c_on_every_read_and_write_and_never_shown(s3_bucket: tuple[str, str]) -> None:
    endpoint_url, bucket = s3_bucket
    options = kvstore.S3Options(sse_customer_key=SSE_C_KEY)
    db = await kvstore.open(f"s3://{bucket}/ssec", endpoint_url=endpoint_url, s3_options=options)
    seen = _capture_requests(db)
    try:
        await db.put(b"k", b"v")
        await db.close()
        db = await kvstore.open(f"s3://{bucket}/ssec", endpoint_url=endpoint_url, s3_options=options)
        seen += _capture_requests(db)
        assert await db.get(b"k") == b"v"
    finally:
        await db.close()
    object_requests = [(w, h) for w, h in seen if w.split()[0] in ("GET", "PUT", "HEAD") and "list-type" not in w]
    assert object_requests
    for what, headers in object_requests:
        assert headers.get("x-amz-server-side-encryption-customer-algorithm") == "AES256", what
        assert "x-amz-server-side-encryption-customer-key" in headers, what
    assert SSE_C_KEY.decode() not in repr(options) and SSE_C_KEY.decode() not in repr(db)


async def test_no_secret_in_logs_errors_or_reprs(moto_auth: str, caplog: pytest.LogCaptureFixture) -> None:
    secret, token = "wJalrXUtnFEMI-very-secret-key", "session-token-secret"
    caplog.set_level(logging.DEBUG)
    kwargs = dict(
        endpoint_url=moto_auth,
        aws_access_key_id="AKIAIOSFODNN7EXAMPLE",
        aws_secret_access_key=secret,
        aws_session_token=token,
    )
    opener = kvstore.open("s3://bucket/x", **kwargs)
    with pytest.raises(kvstore.AccessDeniedError) as info:
        await opener
    texts = [str(info.value), repr(info.value), repr(opener), caplog.text]
    texts += [str(e) for e in (info.value.__cause__, info.value.__context__) if e is not None]
    for text in texts:
        assert secret not in text and token not in text


async def test_object_names_never_derive_from_user_keys(target: Target) -> None:
    hostile = ["../../etc/passwd", "users/alice-secret", "segments/evil.seg", "manifest", "a" * 200]
    async with target.open() as db:
        for key in hostile:
            await db.put(key, b"x")
        await db.compact(full=True)
        await db.tag("t")
        names = [info.name async for info in engine_of(db).objects.list("")]
    for name in names:
        for key in hostile[:3] + ["a" * 200]:
            assert key not in name, name
    assert sum(n.endswith("manifest") for n in names) == 1
