"""Store URLs: which backend, and where in it."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ._errors import InvalidURLError
from ._objectstore import LocalObjectStore, MemoryObjectStore, ObjectStore, S3Options

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-_]{1,254}$")
# A known scheme without its "://" (s3:/b, s3:b, file:rel, memory:x, s3//b): a typo, not
# a local directory named "s3:". Other words before a colon (data:2024, C:) are paths.
_MISTYPED = re.compile(r"^(s3|file|memory)(?::(?!//)|//)", re.IGNORECASE)
_PLACEHOLDER = {"s3": "bucket/prefix", "memory": "name", "file": "/absolute/path"}


@dataclass(frozen=True)
class Location:
    """A parsed store URL: the backend and the prefix of the store's objects in it."""

    url: str
    objects: ObjectStore
    prefix: str  # "" or ends with "/"


def parse_url(url: str | os.PathLike[str], s3: S3Options) -> Location:
    """`s3://bucket/prefix`, `file:///absolute/path`, a plain path, or `memory://name`."""
    if isinstance(url, os.PathLike):
        url = os.fspath(url)
    if not isinstance(url, str) or not url:
        raise InvalidURLError(f"a store URL is a non-empty str, not {url!r}")
    mistyped = _MISTYPED.match(url)
    if mistyped:
        raise InvalidURLError(
            f"{url!r} is not a store URL: {_corrected(mistyped.group(1).lower(), url[mistyped.end() :])}"
        )
    if "://" not in url:
        return _local(Path(url))
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "s3":
        bucket = parts.netloc
        if not _BUCKET.match(bucket):
            raise InvalidURLError(f"{url!r}: {bucket!r} is not a valid bucket name (s3://bucket/prefix)")
        prefix = unquote(parts.path).strip("/")
        if any(p in (".", "..") for p in prefix.split("/")) or "//" in prefix:
            raise InvalidURLError(f"{url!r}: the prefix may not contain empty, '.' or '..' parts")
        prefix = prefix + "/" if prefix else ""
        from ._objectstore._s3 import S3ObjectStore  # imports aiobotocore: only when needed

        return Location(f"s3://{bucket}/{prefix}", S3ObjectStore(bucket, s3), prefix)
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidURLError(f"{url!r}: {_corrected('file', parts.netloc + parts.path)}")
        return _local(Path(unquote(parts.path)))
    if scheme == "memory":
        name = parts.netloc + parts.path
        if not name:
            raise InvalidURLError(f"{url!r}: memory URLs need a name: memory://name")
        return Location(f"memory://{name}", MemoryObjectStore(name), "")
    raise InvalidURLError(
        f"unknown store URL scheme {parts.scheme!r} in {url!r}: use s3://bucket/prefix, "
        "file:///absolute/path (or a plain path) or memory://name"
    )


def s3_settings(s3_options: S3Options | None, **explicit: str | None) -> S3Options:
    """`s3_options` (or the defaults) with the settings given as keyword arguments
    (endpoint_url, profile, credentials...) that are not None put over it."""
    given: dict[str, Any] = {k: v for k, v in explicit.items() if v is not None}
    return replace(s3_options or S3Options(), **given)


def _corrected(scheme: str, rest: str) -> str:
    """What to write instead of `scheme` + a malformed separator + `rest`."""
    if scheme != "file" or not rest:
        return f"did you mean {scheme}://{rest.lstrip('/') or _PLACEHOLDER[scheme]}?"
    if rest.startswith("/"):
        return f"did you mean file://{rest}?"
    absolute = Path(rest).expanduser().absolute()
    return (
        f"file URLs name an absolute local path; for {rest!r} relative to the current directory "
        f"write the plain path {rest!r} (or file://{absolute}), for /{rest} write file:///{rest}"
    )


def _local(path: Path) -> Location:
    root = path.expanduser().absolute()
    if root.exists() and not root.is_dir():
        raise InvalidURLError(f"{root} is a file; a local store is a directory")
    return Location(f"file://{root}", LocalObjectStore(root), "")
