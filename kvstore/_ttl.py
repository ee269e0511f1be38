"""Expiring puts (TTL): a value and the wall-clock time it expires at (no I/O).

`put(key, value, ttl=seconds)` stores an `Expiring` entry (segment ext code 1)
whose expiry is the writer's clock at the `put` plus `ttl`. Reads judge it
against the reader's clock (`clock`) at the moment they read: an expired put
reads exactly like a tombstone, at every version (a snapshot of a past
version, or a tag, included), so it hides the older values below it rather
than uncovering them. Expiry is not a write: it commits nothing, conflicts
with nothing and shows in no `watch`. Compaction turns an expired put into a
tombstone, which it then drops like any other.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Final

import msgpack

from ._errors import ValidationError

EXT_CODE: Final = 1
_OVERHEAD = 12  # bytes counted for an expiring entry besides its value

# The clock reads judge expiry by (seconds since the epoch). Tests move it on.
clock = time.time


@dataclass(frozen=True)
class Expiring:
    """A put that expires: its value bytes and its expiry (seconds since the epoch, UTC)."""

    value: bytes
    expires: float

    def to_ext(self) -> msgpack.ExtType:
        """The segment value: ext 1, msgpack([value, expires as float 64])."""
        return msgpack.ExtType(EXT_CODE, msgpack.packb([self.value, float(self.expires)], use_bin_type=True))

    @classmethod
    def from_ext(cls, data: bytes) -> Expiring:
        """Decode `to_ext`'s payload. ValueError when it is not one."""
        body = msgpack.unpackb(data, raw=False)
        if (
            not isinstance(body, list)
            or len(body) != 2
            or not isinstance(body[0], bytes)
            or not isinstance(body[1], float)
        ):
            raise ValueError("not an expiring value")
        return cls(body[0], body[1])

    @property
    def size(self) -> int:
        """Bytes it counts for in a block."""
        return len(self.value) + _OVERHEAD

    def expired(self, now: float) -> bool:
        """Whether it has expired at `now`."""
        return now >= self.expires


def checked_ttl(ttl: object) -> float:
    """`ttl` as seconds: a finite number above 0 (not a bool). ValidationError otherwise."""
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise ValidationError(f"ttl is a number of seconds, not {type(ttl).__name__}")
    if not math.isfinite(ttl) or ttl <= 0:
        raise ValidationError(f"ttl must be a finite number of seconds above 0, not {ttl}; delete the key instead")
    return float(ttl)


def expiring(value: bytes, ttl: float) -> Expiring:
    """`value` expiring `ttl` seconds from now (the writer's clock)."""
    return Expiring(value, clock() + ttl)
