"""Atomic operands: `add`, `max` and `min` on a signed 64-bit integer (no I/O).

An atomic operation is a blind write: it is recorded as an `Operands` entry
(segment ext code 2) and resolved when read, by folding it onto the newest
put or tombstone beneath it, like SlateDB's merge operators. Folding rules:

* a put replaces everything older; operands stack on the newest put below;
* a tombstone (or no entry at all) is an absent base: `add` starts from 0,
  `max` and `min` take their operand;
* `add` wraps around in two's complement, as FoundationDB's does (2**63 - 1
  plus 1 is -2**63); `max` and `min` compare signed.

The integer is stored as the store's codec writes an int: a msgpack int in a
msgpack store, 8 bytes little-endian (signed) in a bytes store. A base put of
anything else cannot take an operand: reading the key then raises
`AtomicOperandError` (a put or delete of the key cures it).

An entry may also carry its base (`Operands.base`): the put (or tombstone)
the operands apply to, when they could not be folded into one value because
that put is not an integer, or expires (`_ttl`: an expired put is a
tombstone, so the operands' value changes when it expires, and they are
folded only after that). Such an entry stands alone, like a put.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import msgpack

from ._errors import AtomicOperandError, ValidationError
from ._ttl import EXT_CODE as EXPIRING_EXT_CODE
from ._ttl import Expiring
from ._value_refs import EXT_CODE as VALUE_REF_EXT_CODE
from ._value_refs import REF_BYTES, ValueRef

EXT_CODE: Final = 2
ADD, MAX, MIN = 0, 1, 2
OP_NAMES: Final = {ADD: "add", MAX: "max", MIN: "min"}
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
_ENCODED_SIZE = 24  # bytes counted for an operand entry (block size accounting)

Op = tuple[int, int]  # (ADD | MAX | MIN, signed 64-bit operand)


@dataclass(frozen=True)
class Operands:
    """Atomic operations on one key, oldest first, and optionally the base they apply to.

    Without `has_base` the operands stack on the key's older entries. With `has_base`, `base` is the put (bytes) or the
    tombstone (None) beneath them, and older entries do not matter.
    """

    ops: tuple[Op, ...]
    has_base: bool = False
    base: bytes | None | Expiring | ValueRef = None

    def to_ext(self) -> msgpack.ExtType:
        """The segment value: ext 2, msgpack([[kind, n, kind, n, ...]] or [ops, base]);
        an expiring base is its own ext 1 value."""
        flat = [x for op in self.ops for x in op]
        body = [flat, self.base] if self.has_base else [flat]
        return msgpack.ExtType(EXT_CODE, msgpack.packb(body, use_bin_type=True, default=_expiring_ext))

    @classmethod
    def from_ext(cls, data: bytes) -> Operands:
        """Decode `to_ext`'s payload. ValueError when it is not one."""
        body = msgpack.unpackb(data, raw=False, use_list=True)
        if not isinstance(body, list) or len(body) not in (1, 2) or not isinstance(body[0], list):
            raise ValueError("not an operand list")
        flat = body[0]
        if len(flat) % 2 or not flat:
            raise ValueError("operands come in (kind, operand) pairs")
        ops = tuple((flat[i], flat[i + 1]) for i in range(0, len(flat), 2))
        if any(kind not in OP_NAMES or not isinstance(n, int) or not INT64_MIN <= n <= INT64_MAX for kind, n in ops):
            raise ValueError("unknown operand")
        if len(body) == 2:
            base = body[1]
            if isinstance(base, msgpack.ExtType) and base.code == EXPIRING_EXT_CODE:
                base = Expiring.from_ext(base.data)
            elif isinstance(base, msgpack.ExtType) and base.code == VALUE_REF_EXT_CODE:
                base = ValueRef.from_ext(base.data)
            if base is not None and not isinstance(base, (bytes, Expiring, ValueRef)):
                raise ValueError("an operand base is bytes, nil, an expiring put or a value reference")
            return cls(ops, True, base)
        return cls(ops)

    @property
    def size(self) -> int:
        """Bytes it counts for in a block (its encoding, roughly)."""
        base = self.base
        return (
            _ENCODED_SIZE
            + 10 * len(self.ops)
            + (
                0
                if base is None
                else len(base)
                if isinstance(base, bytes)
                else REF_BYTES
                if isinstance(base, ValueRef)
                else base.size
            )
        )


def _expiring_ext(obj: object) -> object:
    if isinstance(obj, (Expiring, ValueRef)):
        return obj.to_ext()
    raise TypeError(f"cannot store a {type(obj).__name__} as an operand base")


def checked_operand(kind: int, n: object) -> int:
    """`n` as an operand of `kind`: an int (not a bool) in the signed 64-bit range.
    ValidationError otherwise."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise ValidationError(f"{OP_NAMES[kind]} takes an int, not {type(n).__name__}")
    if not INT64_MIN <= n <= INT64_MAX:
        raise ValidationError(
            f"{OP_NAMES[kind]} takes a signed 64-bit int (-2**63 to 2**63 - 1), not {n}; "
            "atomic operations work on 64-bit counters, as FoundationDB's do"
        )
    return n


def apply(ops: Iterable[Op], start: int | None) -> int:
    """The value of applying `ops` in order to `start` (None: absent)."""
    value = start
    for kind, n in ops:
        if value is None:
            value = n  # add to absent is 0 + n; max/min of absent is n
        elif kind == ADD:
            value = (value + n - INT64_MIN) % 2**64 + INT64_MIN  # two's-complement wrap
        elif kind == MAX:
            value = max(value, n)
        else:
            value = min(value, n)
    assert value is not None  # ops is never empty
    return value


def _simplified(ops: Iterable[Op]) -> tuple[Op, ...]:
    """Adjacent operations of one kind folded into one (add: summed with wrap; max/min: kept
    the max/min), which gives the same result for any start."""
    out: list[Op] = []
    for kind, n in ops:
        if out and out[-1][0] == kind:
            prev = out[-1][1]
            out[-1] = (kind, apply([(ADD, n)], prev) if kind == ADD else max(prev, n) if kind == MAX else min(prev, n))
        else:
            out.append((kind, n))
    return tuple(out)


# A stored entry's value: put, tombstone, operands, expiring put, out-of-line put.
Value = bytes | None | Operands | Expiring | ValueRef


def stacks(value: object) -> bool:
    """Whether `value` is operands that need the key's older entries to be resolved."""
    return isinstance(value, Operands) and not value.has_base


def combine(older: Value, newer: Value, codec: str) -> Value:
    """One value equal to `older` then `newer` on the same key.

    A put or tombstone (or standalone operands) replaces what is older. Operands
    on a put or tombstone fold into a put of the result, or, when the put is not
    an integer, into operands carrying that put as their base (the error is then
    raised by the read, not by the write), as they do on an expiring put (whose
    expiry changes their value). Operands on operands concatenate.
    """
    if not stacks(newer):
        return newer
    assert isinstance(newer, Operands)
    if isinstance(older, Operands):
        ops = _simplified(older.ops + newer.ops)
        if not older.has_base:
            return Operands(ops)
        return _on_base(older.base, ops, codec)
    return _on_base(older, newer.ops, codec)


def _on_base(base: bytes | None | Expiring | ValueRef, ops: tuple[Op, ...], codec: str) -> Value:
    if isinstance(base, (Expiring, ValueRef)):  # a large value is never an integer: reads say so
        return Operands(ops, True, base)
    start = None if base is None else decode_int(base, codec)
    if base is not None and start is None:
        return Operands(ops, True, base)
    return encode_int(apply(ops, start), codec)


def live(value: bytes | None | Expiring | ValueRef, now: float) -> bytes | ValueRef | None:
    """A put's bytes (or reference) as read at `now`: an expiring put's while it lives, else None."""
    if isinstance(value, Expiring):
        return None if value.expired(now) else value.value
    return value


def settle(value: Value, codec: str, now: float) -> Value:
    """`value` as compaction keeps it at `now`: an expired put becomes a tombstone, and
    operands on an expired put fold onto nothing. (Expiry only ever moves that way.)"""
    if isinstance(value, Expiring):
        return None if value.expired(now) else value
    if isinstance(value, Operands) and isinstance(value.base, Expiring) and value.base.expired(now):
        return combine(None, Operands(value.ops), codec)
    return value


def resolve(value: Value, codec: str, key: bytes, now: float) -> bytes | ValueRef | None:
    """The value a read at `now` returns of a fully folded entry: a put's bytes, None
    for a tombstone or an expired put, the result of operands on their base or on
    nothing (stacking operands whose older entries were all folded in: none is left).
    AtomicOperandError when the base is not an integer in the store's codec."""
    if not isinstance(value, Operands):
        return live(value, now)
    base = live(value.base, now) if value.has_base else None
    if isinstance(base, ValueRef):  # out of line: over large_value_bytes, never an integer
        raise _not_an_int(key, base.length, codec, value.ops)
    start = None if base is None else decode_int(base, codec)
    if base is not None and start is None:
        raise _not_an_int(key, len(base), codec, value.ops)
    return encode_int(apply(value.ops, start), codec)


def decode_int(data: bytes, codec: str) -> int | None:
    """The integer a stored value holds in `codec`, or None if it holds none."""
    if codec == "msgpack":
        try:
            n = msgpack.unpackb(data, raw=False)
        except (ValueError, TypeError, msgpack.UnpackException):
            return None
        return n if isinstance(n, int) and not isinstance(n, bool) and INT64_MIN <= n <= INT64_MAX else None
    return int.from_bytes(data, "little", signed=True) if len(data) == 8 else None


def encode_int(n: int, codec: str) -> bytes:
    """A signed 64-bit integer as stored in `codec`."""
    if codec == "msgpack":
        packed: bytes = msgpack.packb(n)
        return packed
    return n.to_bytes(8, "little", signed=True)


def _not_an_int(key: bytes, size: int, codec: str, ops: tuple[Op, ...]) -> AtomicOperandError:
    what = "a msgpack int" if codec == "msgpack" else "8 bytes (a little-endian signed 64-bit int)"
    names = "/".join(sorted({OP_NAMES[k] for k, _ in ops}))
    return AtomicOperandError(
        f"key {key!r} holds a {size}-byte value that is not {what}, and {names} was applied to it, "
        "so it has no value; put an integer to the key (or delete it) to reset it, and keep counters "
        "on keys of their own",
        key=key,
    )


def codec_of(recorded: object) -> str:
    """The codec operands resolve in, from the codec a manifest records (None: bytes)."""
    return "msgpack" if recorded == "msgpack" else "bytes"
