"""The object-store layer: one async protocol, its backends, and the retry wrapper.

The S3 backend (`._s3.S3ObjectStore`) is imported where an s3:// URL is
opened, since aiobotocore takes most of the import time.
"""

from ._local import LocalObjectStore
from ._memory import MemoryObjectStore
from ._protocol import (
    MAX_DELETE_BATCH,
    Blob,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    PreconditionFailed,
    TransientError,
)
from ._retry import RetryingObjectStore, RetryPolicy, follows_uncertain_attempt
from ._s3_options import S3Options

__all__ = [
    "MAX_DELETE_BATCH",
    "Blob",
    "LocalObjectStore",
    "MemoryObjectStore",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "PreconditionFailed",
    "RetryPolicy",
    "RetryingObjectStore",
    "S3Options",
    "TransientError",
    "follows_uncertain_attempt",
]
