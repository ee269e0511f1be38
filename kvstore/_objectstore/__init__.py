"""The object-store layer: one async protocol, its backends, and the retry wrapper."""

from ._local import LocalObjectStore
from ._memory import MemoryObjectStore
from ._protocol import Blob, ObjectInfo, ObjectNotFound, ObjectStore, PreconditionFailed, TransientError
from ._retry import RetryingObjectStore, RetryPolicy
from ._s3 import S3ObjectStore, S3Options

__all__ = [
    "Blob",
    "LocalObjectStore",
    "MemoryObjectStore",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "PreconditionFailed",
    "RetryPolicy",
    "RetryingObjectStore",
    "S3ObjectStore",
    "S3Options",
    "TransientError",
]
