"""The checksummed envelope: its zstd contexts are reused per thread."""

from __future__ import annotations

import os
import struct
from concurrent.futures import ThreadPoolExecutor

import pytest
import xxhash

from kvstore import CorruptionError
from kvstore._envelope import seal, unseal


def _document(i: int) -> bytes:
    # Compressible and larger than the 4 KiB threshold, different per caller.
    return b"".join(b"key-%06d=%s;" % (n, os.urandom(4).hex().encode()) for n in range(i, i + 2000))


def test_round_trip_from_many_threads() -> None:
    def round_trip(i: int) -> bool:
        payload = _document(i)
        sealed = seal(b"TEST", 1, payload)
        return len(sealed) < len(payload) and unseal(sealed, b"TEST", 1, f"doc{i}", "test") == payload

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(round_trip, range(64)))


def test_undecodable_payload_does_not_break_the_next_one() -> None:
    body = struct.pack("<4sHBx", b"TEST", 1, 1) + b"\x28\xb5\x2f\xfd not a zstd frame"
    damaged = body + struct.pack("<Q", xxhash.xxh3_64_intdigest(body))
    with pytest.raises(CorruptionError, match="undecodable"):
        unseal(damaged, b"TEST", 1, "bad", "test")
    payload = _document(0)
    assert unseal(seal(b"TEST", 1, payload), b"TEST", 1, "good", "test") == payload
