"""Refusing endpoints that ignore conditional writes, before anything is written."""

from __future__ import annotations

import os

from ._errors import UnsafeEndpointError
from ._layout import Layout
from ._objectstore import ObjectNotFound, PreconditionFailed, RetryingObjectStore

_PROBE_BODY = b"kvstore conditional-write probe; safe to keep, never overwritten\n"
NO_SUCH_ETAG = '"00000000000000000000000000000000"'
# Stores already probed by this process (description + prefix).
_PROBED: set[str] = set()


async def check_conditional_writes(objects: RetryingObjectStore, layout: Layout) -> None:
    """Prove the endpoint honours If-None-Match: * and If-Match on `<prefix>probe`.

    Two or three PUTs the first time a process opens a store for writing; none
    afterwards. An endpoint that ignores either header raises UnsafeEndpointError.
    """
    name = layout.probe
    key = objects.description + "/" + name
    if key in _PROBED:
        return
    try:
        await objects.put_if_absent(name, unique_body())
    except PreconditionFailed:
        pass  # it exists and the create was refused: If-None-Match works
    else:
        try:
            # Different bytes: our own first create cannot pass for this one (a 412 on a
            # safe create counts as ours only when the object holds exactly our bytes).
            await objects.put_if_absent(name, unique_body())
        except PreconditionFailed:
            pass
        else:
            raise _unsafe(objects, "If-None-Match: * (a second create of the same object succeeded)")
    try:
        await objects.put_if_match(name, unique_body(), NO_SUCH_ETAG)
    except (PreconditionFailed, ObjectNotFound):
        pass
    else:
        raise _unsafe(objects, "If-Match (a write with a wrong ETag succeeded)")
    _PROBED.add(key)


def unique_body() -> bytes:
    """A body no other probe write has: a 412 must never be read as our own create."""
    return _PROBE_BODY + os.urandom(8).hex().encode() + b"\n"


def _unsafe(objects: RetryingObjectStore, what: str) -> UnsafeEndpointError:
    return UnsafeEndpointError(
        f"{objects.description} ignores {what}. Concurrent writers would overwrite each other "
        "there, so kvstore will not write to it. Use an endpoint with conditional writes "
        "(AWS S3, R2, MinIO, CoreWeave, LocalStack; see docs/operations.md), or open with read_only=True."
    )
