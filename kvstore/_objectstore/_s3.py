"""The S3 object store, on aiobotocore: any S3-compatible endpoint.

One request per call, never more: a resent conditional PUT whose first
attempt was applied comes back as 412 for our own write, and only the retry
layer above knows to resolve that. Two layers below would resend on their
own, and both are switched off:

* botocore's retries (`total_max_attempts=1`);
* aiohttp's transparent resend of an idempotent request (PUT, GET, DELETE)
  once when a kept-alive connection fails (RFC 9112 9.3.1). aiohttp has no
  public switch for it; `_SingleAttemptHTTPSession` turns off the session
  flag that aiohttp's own test client turns off for the same reason
  (`ClientSession._retry_connection`). If a future aiohttp drops that flag
  the resend comes back, and kvstore stays correct all the same: no caller
  concludes "not ours" from a 412 (see `_retry.py`).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import platform
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiobotocore
import aiohttp
import botocore
from aiobotocore.config import AioConfig
from aiobotocore.httpsession import AIOHTTPSession
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.handlers import add_expect_header
from botocore.utils import parse_timestamp

from .._errors import (
    AccessDeniedError,
    StoreNotFoundError,
    StoreUnavailableError,
    UnsafeEndpointError,
)
from .._version import __version__
from ._protocol import LIST_PAGE, MAX_DELETE_BATCH, Blob, ObjectInfo, ObjectNotFound, PreconditionFailed, TransientError
from ._s3_options import S3Options

_AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AllAccessDisabled",
        "AccountProblem",
        "403",
    }
)
_RETRYABLE_CODES = frozenset(
    {
        "ConditionalRequestConflict",
        "OperationAborted",
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
        "RequestLimitExceeded",
        "429",
        "503",
        "500",
        "409",
    }
)


class S3ObjectStore:
    """Objects in one bucket. The aiobotocore client is created on first use."""

    def __init__(self, bucket: str, options: S3Options) -> None:
        self._bucket = bucket
        self._options = options
        self._stack = AsyncExitStack()
        self._client: Any = None
        self._client_lock = asyncio.Lock()
        self._write_args = _encryption_args(options, write=True)
        self._read_args = _encryption_args(options, write=False)

    @property
    def description(self) -> str:
        where = self._options.endpoint_url or "AWS S3"
        return f"s3://{self._bucket} at {where}"

    async def get(
        self,
        name: str,
        *,
        byte_range: tuple[int, int] | None = None,
        if_none_match: str | None = None,
    ) -> Blob | None:
        args: dict[str, Any] = {"Bucket": self._bucket, "Key": name, **self._read_args}
        if byte_range is not None:
            args["Range"] = f"bytes={byte_range[0]}-{byte_range[1] - 1}"
        if if_none_match is not None:
            args["IfNoneMatch"] = if_none_match
        client = await self._get_client()
        try:
            response = await client.get_object(**args)
            async with response["Body"] as body:
                data = await body.read()
        except Exception as exc:
            if _code(exc) == "304":
                return None
            raise self._translate(exc, name) from exc
        return Blob(data, response.get("ETag"))

    async def put_if_absent(self, name: str, data: bytes) -> str:
        return await self._put(name, data, IfNoneMatch="*")

    async def put_if_match(self, name: str, data: bytes, etag: str) -> str:
        return await self._put(name, data, IfMatch=etag)

    async def copy_if_match(self, source: str, destination: str, etag: str) -> str:
        client = await self._get_client()
        args: dict[str, Any] = dict(self._write_args)
        if self._options.sse_customer_key is not None:
            args["CopySourceSSECustomerAlgorithm"] = "AES256"
            args["CopySourceSSECustomerKey"] = self._options.sse_customer_key
        try:
            response = await client.copy_object(
                Bucket=self._bucket,
                Key=destination,
                CopySource={"Bucket": self._bucket, "Key": source},
                CopySourceIfMatch=etag,
                IfNoneMatch="*",
                **args,
            )
        except Exception as exc:
            raise self._translate(exc, destination) from exc
        return str(response["CopyObjectResult"]["ETag"])

    async def start_multipart(self, name: str) -> str:
        client = await self._get_client()
        try:
            response = await client.create_multipart_upload(Bucket=self._bucket, Key=name, **self._write_args)
        except Exception as exc:
            raise self._translate(exc, name) from exc
        return str(response["UploadId"])

    async def upload_part(self, name: str, upload_id: str, part_number: int, data: bytes) -> str:
        client = await self._get_client()
        try:
            response = await client.upload_part(
                Bucket=self._bucket, Key=name, UploadId=upload_id, PartNumber=part_number, Body=data, **self._read_args
            )
        except Exception as exc:
            raise self._translate(exc, name) from exc
        return str(response["ETag"])

    async def complete_multipart_if_absent(self, name: str, upload_id: str, parts: Sequence[tuple[int, str]]) -> str:
        client = await self._get_client()
        try:
            response = await client.complete_multipart_upload(
                Bucket=self._bucket,
                Key=name,
                UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in parts]},
                IfNoneMatch="*",
            )
        except Exception as exc:
            raise self._translate(exc, name) from exc
        return str(response["ETag"])

    async def abort_multipart(self, name: str, upload_id: str) -> None:
        client = await self._get_client()
        try:
            await client.abort_multipart_upload(Bucket=self._bucket, Key=name, UploadId=upload_id)
        except Exception as exc:
            raise self._translate(exc, name) from exc

    async def head(self, name: str) -> ObjectInfo:
        client = await self._get_client()
        try:
            response = await client.head_object(Bucket=self._bucket, Key=name, **self._read_args)
        except Exception as exc:
            raise self._translate(exc, name) from exc
        return ObjectInfo(name, response["ContentLength"], response["ETag"], response["LastModified"].timestamp())

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        client = await self._get_client()
        paginator = client.get_paginator("list_objects_v2")
        try:
            pages = paginator.paginate(Bucket=self._bucket, Prefix=prefix, PaginationConfig={"PageSize": LIST_PAGE})
            async for page in pages:
                for item in page.get("Contents", ()):
                    yield ObjectInfo(item["Key"], item["Size"], item["ETag"], item["LastModified"].timestamp())
        except Exception as exc:
            raise self._translate(exc, prefix) from exc

    async def delete(self, name: str) -> None:
        client = await self._get_client()
        try:
            await client.delete_object(Bucket=self._bucket, Key=name)
        except Exception as exc:
            raise self._translate(exc, name) from exc

    async def delete_many(self, names: Sequence[str]) -> None:
        if not names:
            return
        assert len(names) <= MAX_DELETE_BATCH, "DeleteObjects takes at most 1000 keys"
        what = f"{names[0]} and {len(names) - 1} more"
        client = await self._get_client()
        try:
            # Quiet: the answer lists only the keys that failed. A missing key is deleted
            # as far as S3 is concerned, as with DeleteObject.
            response = await client.delete_objects(
                Bucket=self._bucket, Delete={"Objects": [{"Key": n} for n in names], "Quiet": True}
            )
        except Exception as exc:
            raise self._translate(exc, what) from exc
        failures = [
            self._translate_code(str(e.get("Code", "")), 0, str(e.get("Key", "")))
            for e in response.get("Errors", ())
            if e.get("Code") != "NoSuchKey"
        ]
        if failures:
            # A lasting failure (access denied) says more than a transient one, which a
            # retry of the whole batch might cure.
            raise next((f for f in failures if not isinstance(f, TransientError)), failures[0])

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None

    async def _put(self, name: str, data: bytes, **condition: str) -> str:
        client = await self._get_client()
        try:
            response = await client.put_object(
                Bucket=self._bucket, Key=name, Body=data, **condition, **self._write_args
            )
        except Exception as exc:
            raise self._translate(exc, name) from exc
        etag = response.get("ETag")
        if not etag:
            raise UnsafeEndpointError(f"{self.description} returned no ETag for a PUT; kvstore needs ETags")
        return str(etag)

    async def _get_client(self) -> Any:
        if self._client is not None:
            return self._client
        async with self._client_lock:
            if self._client is None:
                o = self._options
                session = _session_for(o.profile)
                region = o.region_name or session.get_config_variable("region") or "us-east-1"
                config = AioConfig(
                    retries={"total_max_attempts": 1},
                    http_session_cls=_SingleAttemptHTTPSession,
                    connect_timeout=o.connect_timeout,
                    read_timeout=o.read_timeout,
                    max_pool_connections=o.max_pool_connections,
                    s3={"addressing_style": o.addressing_style},
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                    # A fixed string: botocore otherwise rebuilds and sanitises its
                    # feature-tracking User-Agent twice per request (~9% of a request's
                    # client CPU in profiles).
                    user_agent=_USER_AGENT,
                )
                self._stack.callback(_redact_logs(await _secrets_of(o, session)))
                client = await self._stack.enter_async_context(
                    session.create_client(
                        "s3",
                        endpoint_url=o.endpoint_url,
                        region_name=region,
                        aws_access_key_id=o.aws_access_key_id,
                        aws_secret_access_key=o.aws_secret_access_key,
                        aws_session_token=o.aws_session_token,
                        config=config,
                    )
                )
                # botocore asks for `Expect: 100-continue` on every S3 PUT/POST with a body
                # (PutObject, UploadPart), and aiohttp then holds the body back until the
                # server's interim 100 arrives: one extra round trip per write. An early
                # refusal (412, 403) still arrives, after the body. The client's emitter is a
                # copy of the session's, so this touches no other client.
                client.meta.events.unregister("before-call.s3", add_expect_header)
                self._client = client
        return self._client

    def _translate(self, exc: Exception, name: str) -> Exception:
        """Map a botocore/aiohttp failure to the protocol's or kvstore's errors."""
        if isinstance(exc, ClientError):
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            return self._translate_code(_code(exc), status, name)
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)):
            return AccessDeniedError(
                f"no usable AWS credentials for {self.description}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, a profile, or pass credentials to kvstore.open"
            )
        if isinstance(exc, (BotoCoreError, aiohttp.ClientError, asyncio.TimeoutError, OSError)):
            return TransientError(f"{self.description}: {type(exc).__name__} on {name!r}")
        return exc

    def _translate_code(self, code: str, status: int, name: str) -> Exception:
        """Map an S3 error code (and HTTP status, 0 for a per-key error of a batch) to
        the protocol's or kvstore's errors."""
        if code in ("NoSuchKey", "404", "NotFound", "NoSuchUpload"):
            return ObjectNotFound(name)
        if code in ("PreconditionFailed", "412"):
            return PreconditionFailed(f"{name}: precondition failed")
        if code == "NoSuchBucket":
            return StoreNotFoundError(
                f"bucket {self._bucket!r} does not exist at {self._options.endpoint_url or 'AWS S3'}: "
                "create it first, or check the bucket name and endpoint_url"
            )
        if code in _AUTH_CODES or status == 403:
            return AccessDeniedError(
                f"{self.description} refused the credentials for {name!r} ({code}): check "
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / the profile, and that the policy "
                "allows this action (see docs/operations.md)"
            )
        if code == "NotImplemented" or status == 501:
            return UnsafeEndpointError(
                f"{self.description} does not implement a request kvstore needs ({code}) on {name!r}"
            )
        if code in _RETRYABLE_CODES or status in (409, 429) or status >= 500:
            return TransientError(f"{self.description}: {code} on {name!r}")
        return StoreUnavailableError(f"{self.description} rejected a request on {name!r}: {code} (HTTP {status})")


class _SingleAttemptHTTPSession(AIOHTTPSession):  # type: ignore[misc]  # untyped base
    """aiobotocore's HTTP session whose aiohttp sessions never resend a request."""

    async def _get_session(self, proxy_url: Any) -> aiohttp.ClientSession:
        session: aiohttp.ClientSession = await super()._get_session(proxy_url)
        if hasattr(session, "_retry_connection"):
            session._retry_connection = False
        return session


_USER_AGENT = (
    f"kvstore/{__version__} aiobotocore/{aiobotocore.__version__} botocore/{botocore.__version__} "
    f"python/{platform.python_version()}"
)

_sessions_lock = threading.Lock()
_sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str | None, AioSession]] = (
    weakref.WeakKeyDictionary()
)
_data_loader: Any = None


def _renew_sessions_lock() -> None:
    # In a forked child: a parent thread may have held the lock at the fork, and no
    # thread here would ever release it.
    global _sessions_lock
    _sessions_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_sessions_lock)


def _session_for(profile: str | None) -> AioSession:
    """The aiobotocore session for this event loop and profile, made once.

    A session per store would load and parse the S3 service model again
    (~120 ms of CPU per open). One session per process is not safe either:
    the session caches the resolved credentials, and refreshable ones (roles,
    SSO) hold an asyncio.Lock that must stay on one event loop; botocore
    sessions are not meant to be shared across threads, and every SyncStore
    runs its own loop thread. So: one session per (loop, profile), all of them
    sharing the process's data loader, whose service models are read-only.
    As with boto3's default session, the default credential chain is resolved
    once per session (refreshable credentials still refresh themselves).
    """
    global _data_loader
    loop = asyncio.get_running_loop()
    with _sessions_lock:
        by_profile = _sessions.setdefault(loop, {})
        session = by_profile.get(profile)
        if session is None:
            session = get_session()
            if _data_loader is None:
                _data_loader = session.get_component("data_loader")
            else:
                session.register_component("data_loader", _data_loader)
            if profile:
                session.set_config_variable("profile", profile)
            parsers = session.get_component("response_parser_factory")
            parsers.set_parser_defaults(timestamp_parser=_parse_timestamp)
            by_profile[profile] = session
        return session


def _parse_timestamp(value: str) -> datetime:
    """botocore's timestamp parser, fast for what S3 sends.

    botocore parses with dateutil: ~150 µs a call on our 2-core machine, ~5% of
    a GET or HEAD and ~0.15 s of CPU per 1000-key listing page. S3 sends
    IMF-fixdate in headers (Last-Modified) and ISO 8601 in XML (listings,
    CopyObject); the standard library parses those in ~10 µs and <1 µs.
    Anything else, or anything they would read without a time zone, goes to
    botocore's parser.
    """
    try:
        if value[-1:] == "Z":
            parsed = datetime.fromisoformat(value[:-1] + "+00:00")
        else:
            parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return parse_timestamp(value)  # type: ignore[no-any-return]
    if parsed.tzinfo is None:
        return parse_timestamp(value)  # type: ignore[no-any-return]
    return parsed


def _code(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def _encryption_args(o: S3Options, *, write: bool) -> dict[str, Any]:
    args: dict[str, Any] = {}
    if write and o.sse:
        args["ServerSideEncryption"] = o.sse
        if o.sse_kms_key_id:
            args["SSEKMSKeyId"] = o.sse_kms_key_id
    if o.sse_customer_key is not None:
        args["SSECustomerAlgorithm"] = "AES256"
        args["SSECustomerKey"] = o.sse_customer_key
    return args


async def _secrets_of(o: S3Options, session: Any) -> list[str]:
    """Every credential string that could show up in botocore's debug logs."""
    found = [o.aws_access_key_id, o.aws_secret_access_key, o.aws_session_token]
    if o.sse_customer_key is not None:
        found.append(base64.b64encode(o.sse_customer_key).decode())
        found.append(o.sse_customer_key.decode("latin-1"))
    try:
        credentials = await session.get_credentials()  # the default chain, when none were passed
        if credentials is not None:
            frozen = await credentials.get_frozen_credentials()
            found += [frozen.access_key, frozen.secret_key, frozen.token]
    except Exception:  # noqa: BLE001, S110 - a broken chain is reported when a request is sent
        pass
    return [s for s in found if s and len(s) >= 8]


class _RedactSecrets(logging.Filter):
    """Replaces known credential strings in log records with '<redacted>'."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self._secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(s in message for s in self._secrets):
            for s in self._secrets:
                message = message.replace(s, "<redacted>")
            record.msg, record.args = message, ()
        return True


def _redact_logs(secrets: list[str]) -> Callable[[], None]:
    """Attach a redacting filter to botocore's and aiobotocore's loggers (their debug
    output prints request headers); returns the function that detaches it."""
    redact = _RedactSecrets(secrets)
    names = [n for n in logging.Logger.manager.loggerDict if n.split(".")[0] in _CHATTY_LOGGERS]
    loggers = [logging.getLogger(n) for n in {*names, *_CHATTY_LOGGERS}]
    for logger in loggers:
        logger.addFilter(redact)

    def detach() -> None:
        for logger in loggers:
            logger.removeFilter(redact)

    return detach


_CHATTY_LOGGERS = ("botocore", "aiobotocore", "urllib3", "aiohttp")
