"""ETags for backends that compute their own: a quoted MD5 of the content, as S3 does."""

from __future__ import annotations

import hashlib


def content_etag(data: bytes) -> str:
    """The ETag S3 gives a single-part upload of `data`."""
    return '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'
