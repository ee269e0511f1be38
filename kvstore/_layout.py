"""Every object name of a store, in one place.

    <prefix>manifest                   the current manifest (the only object ever replaced: CAS)
    <prefix>probe                      written once per process to prove conditional writes work
    <prefix>segments/<id>.seg          immutable segments: sorted entries (safe create)
    <prefix>segments/<id>.run          immutable sorted runs: lists of key-disjoint segments (safe create)
    <prefix>segments/zarr-sessions/<job>/<stamp>-<id>.stg   a Zarr session's staged-write records (safe create)
    <prefix>values/<id>.val            immutable out-of-line values, named by segment entries (safe create)
    <prefix>snapshots/<version>.mf     manifest copies kept by tags (server-side copy)
    <prefix>tags/<hash of name>.tag    tags (safe create)
    <prefix>gc/marks                   when GC first saw each unreferenced object (CAS, GC only)
    <prefix>doctor/<id>/...            `kvstore doctor`'s scratch objects, deleted when it ends
    <prefix>txn/<txn id hex>           decision of a cross-partition transaction (safe create, at the root)
    <prefix>partitions                 the partition map of a split store (CAS; `_partition_map`)
    <prefix>p/<id>/...                 one partition of a split store: a store layout of its own
    <prefix>ptags/<hash of name>.tag   a split store's tags: each partition's version (safe create)

Writers, readers, garbage collection and tags all name objects through a
`Layout`, so GC can never spell a live segment's name differently from the
writer that created it. Ids are generated (`new_object_id`) and tag names
hashed: no user input reaches an object path.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass


def new_object_id() -> str:
    """A time-ordered unique id: milliseconds since the epoch (hex) and 64 random bits."""
    return f"{time.time_ns() // 1_000_000:012x}-{secrets.token_hex(8)}"


@dataclass(frozen=True)
class Layout:
    """The object names of the store under `prefix` ('' or ending in '/')."""

    prefix: str

    @property
    def manifest(self) -> str:
        return f"{self.prefix}manifest"

    @property
    def partition_map(self) -> str:
        """The partition map of a store split into key ranges (absent: one partition, this layout)."""
        return f"{self.prefix}partitions"

    @property
    def partition_tags_prefix(self) -> str:
        return f"{self.prefix}ptags/"

    def partition_tag(self, name: str) -> str:
        """A partitioned store's tag: the versions of its partitions at one instant."""
        return f"{self.partition_tags_prefix}{hashlib.blake2b(name.encode(), digest_size=16).hexdigest()}.tag"

    def partition(self, pid: str) -> Layout:
        """The layout of partition `pid` (a generated id, never user input)."""
        return Layout(f"{self.prefix}p/{pid}/")

    @property
    def probe(self) -> str:
        return f"{self.prefix}probe"

    def doctor_scratch(self, run_id: str) -> str:
        """The prefix of one `kvstore doctor` run's scratch objects (ends with '/')."""
        return f"{self.prefix}doctor/{run_id}/"

    def decision(self, txn_id: bytes) -> str:
        """The create-once decision object of cross-partition transaction `txn_id` (`_two_phase`)."""
        return f"{self.prefix}txn/{txn_id.hex()}"

    @property
    def gc_marks(self) -> str:
        return f"{self.prefix}gc/marks"

    @property
    def segments_prefix(self) -> str:
        return f"{self.prefix}segments/"

    def segment(self, segment_id: str) -> str:
        return f"{self.segments_prefix}{segment_id}.seg"

    def run(self, run_id: str) -> str:
        return f"{self.segments_prefix}{run_id}.run"

    def zarr_session_records(self, job_id: str) -> str:
        """The prefix of Zarr session `job_id`'s records (`_zarr_staging`; ends with '/').
        Under ``segments/``, which GC sweeps: no manifest names a record."""
        return f"{self.segments_prefix}zarr-sessions/{job_id}/"

    def zarr_session_record(self, job_id: str, stamp: int, segment_id: str) -> str:
        """The record of one staged write (stamp in 20 digits: listing order is stamp order)."""
        return f"{self.zarr_session_records(job_id)}{stamp:020d}-{segment_id}.stg"

    @property
    def values_prefix(self) -> str:
        return f"{self.prefix}values/"

    def value(self, value_id: str) -> str:
        """The object of an out-of-line value (`_value_refs.ValueRef.id`)."""
        return f"{self.values_prefix}{value_id}.val"

    @property
    def snapshots_prefix(self) -> str:
        return f"{self.prefix}snapshots/"

    def snapshot(self, version: int) -> str:
        return f"{self.snapshots_prefix}{version:020d}.mf"

    @property
    def tags_prefix(self) -> str:
        return f"{self.prefix}tags/"

    def tag(self, name: str) -> str:
        return f"{self.tags_prefix}{hashlib.blake2b(name.encode(), digest_size=16).hexdigest()}.tag"
