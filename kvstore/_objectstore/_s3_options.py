"""How to reach an S3 endpoint: kept apart from the S3 backend so that
`import kvstore` does not import aiobotocore until an s3:// store is opened."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class S3Options:
    """How to reach an S3-compatible endpoint. Unset fields use the AWS defaults
    (environment variables, shared config and credential files, instance roles).

    Encryption: `sse` is "AES256" (SSE-S3) or "aws:kms" (SSE-KMS, with
    `sse_kms_key_id`); `sse_customer_key` (32 raw bytes) selects SSE-C and is
    sent with every read and write.
    """

    endpoint_url: str | None = None
    region_name: str | None = None
    profile: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = field(default=None, repr=False)
    aws_session_token: str | None = field(default=None, repr=False)
    addressing_style: str = "auto"
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    max_pool_connections: int = 64
    sse: str | None = None
    sse_kms_key_id: str | None = None
    sse_customer_key: bytes | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        shown = {
            k: v
            for k, v in self.__dict__.items()
            if v is not None and k not in ("aws_secret_access_key", "aws_session_token", "sse_customer_key")
        }
        secret = [k for k in ("aws_secret_access_key", "aws_session_token", "sse_customer_key") if getattr(self, k)]
        body = ", ".join(f"{k}={v!r}" for k, v in shown.items())
        if secret:
            body += ", " + ", ".join(f"{k}=<redacted>" for k in secret)
        return f"S3Options({body})"
