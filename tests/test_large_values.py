"""Large values stored out of line (issue 22, item 1): written as value objects of their
own before the commit, referenced from segment entries, moved (never copied) by
compaction, collected by GC by the segments' rules (I6-I8), checked on every read."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import pytest
from targets import Target, engine_of, fault_injecting, gc_later

import kvstore
from kvstore import _value_store
from kvstore._commit import CommitRequest
from kvstore._objectstore import Blob
from kvstore.testing.faults import FaultInjectingStore, FaultKind, Operation, SimulatedCrash

pytestmark = pytest.mark.timeout(300)

LARGE = 256 * 1024  # the default StoreOptions.large_value_bytes
MiB = 1024 * 1024


async def _value_objects(db: kvstore.Store) -> set[str]:
    engine = engine_of(db)
    return {info.name async for info in engine.objects.list(engine.layout.values_prefix)}


async def test_values_over_the_threshold_are_stored_out_of_line_and_read_back(target: Target) -> None:
    assert kvstore.StoreOptions().large_value_bytes == LARGE
    at, over = os.urandom(LARGE), os.urandom(LARGE + 1)
    async with target.open() as db:
        await db.put("at", at)
        assert await _value_objects(db) == set()  # at the threshold: in the segment, as before
        await db.put("over", over)
        (name,) = await _value_objects(db)
        assert name.startswith(engine_of(db).layout.values_prefix) and name.endswith(".val")
        assert await db.get("over") == over and await db.get("at") == at
        assert await db.get_many(["over", "at", "none", "over"]) == [over, at, None, over]
        assert [(k, v) async for k, v in db.scan()] == [(b"at", at), (b"over", over)]
        assert [k async for k, _ in db.scan(reverse=True)] == [b"over", b"at"]
        async with db.transaction() as tx:
            assert await tx.get("over") == over
            tx.put("over2", over)
        assert len(await _value_objects(db)) == 2
        snap = await db.snapshot()
        await db.delete("over")
        assert await snap.get("over") == over and await db.get("over") is None
        assert (await db.verify()).ok


class _Recording(FaultInjectingStore):
    """Records the names of every GET and write it passes on."""

    def __init__(self, inner: object) -> None:
        super().__init__(inner)  # type: ignore[arg-type]
        self.names: list[tuple[str, str]] = []
        self.parts = 0

    async def get(
        self, name: str, *, byte_range: tuple[int, int] | None = None, if_none_match: str | None = None
    ) -> Blob | None:
        self.names.append(("get", name))
        return await super().get(name, byte_range=byte_range, if_none_match=if_none_match)

    async def put_if_absent(self, name: str, data: bytes) -> str:
        self.names.append(("put", name))
        return await super().put_if_absent(name, data)

    async def start_multipart(self, name: str) -> str:
        self.names.append(("put", name))
        return await super().start_multipart(name)

    async def upload_part(self, name: str, upload_id: str, part_number: int, data: bytes) -> str:
        self.parts += 1
        return await super().upload_part(name, upload_id, part_number, data)

    async def copy_if_match(self, source: str, destination: str, etag: str) -> str:
        self.names.append(("copy", source))
        return await super().copy_if_match(source, destination, etag)


async def test_64_mib_values_round_trip_in_one_put_and_larger_ones_in_parts(durable_target: Target) -> None:
    big, bigger = os.urandom(64 * MiB), os.urandom(64 * MiB + 1)
    made: list[_Recording] = []

    def wrap(inner: object) -> _Recording:
        made.append(_Recording(inner))
        return made[-1]

    async with durable_target.open(wrap_object_store=wrap) as db:
        await db.put("big", big)
        assert await db.get("big") == big
        (name,) = await _value_objects(db)
        assert ("put", name) in made[0].names and made[0].parts == 0  # one PUT
        await db.put("bigger", bigger)
        assert made[0].parts == 5  # 4 parts of 16 MiB and the last byte
    async with durable_target.open() as db:
        assert await db.get("big") == big and await db.get("bigger") == bigger


async def test_too_large_values_are_refused_with_a_clear_error(target: Target) -> None:
    async with target.open(options=kvstore.StoreOptions(max_value_bytes=2 * MiB)) as db:
        with pytest.raises(
            kvstore.InvalidValueError, match=r"over the 2097152-byte limit \(StoreOptions.max_value_bytes"
        ):
            await db.put("k", b"x" * (2 * MiB + 1))
        await db.put("k", b"x" * 2 * MiB)  # the limit itself is accepted, out of line
        assert await db.get("k") == b"x" * 2 * MiB
        with pytest.raises(kvstore.InvalidValueError, match="bulk loads and distributed writes keep values"):
            await db.bulk_load([("b", b"x" * (8 * MiB + 1))])
    with pytest.raises(kvstore.ValidationError, match="max_value_bytes must be between 1 and 5368709120"):
        kvstore.StoreOptions(max_value_bytes=5 * 1024 * MiB + 1)
    with pytest.raises(kvstore.ValidationError, match="large_value_bytes must be >= 1024"):
        kvstore.StoreOptions(large_value_bytes=10)


async def test_a_large_value_counts_as_its_reference_towards_the_transaction_limit(target: Target) -> None:
    options = kvstore.StoreOptions(max_transaction_bytes=1 * MiB)
    async with target.open(options=options) as db:
        async with db.transaction() as tx:
            for i in range(3):
                tx.put(f"k{i}", os.urandom(1 * MiB))  # 3 MiB of values, 3 references in the segment
        assert len(await db.get("k2")) == 1 * MiB


async def test_a_damaged_or_missing_value_object_is_a_corruption_error_saying_what_to_do(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'store'}"
    async with kvstore.open(url) as db:
        await db.put("k", os.urandom(LARGE + 1))
        (name,) = await _value_objects(db)
    path = tmp_path / "store" / name
    data = bytearray(path.read_bytes())
    original = bytes(data)
    data[100] ^= 1
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))
    async with kvstore.open(url) as db:
        with pytest.raises(kvstore.CorruptionError, match=r"is damaged: .*Run `Store.verify\(\)`; restore") as info:
            await db.get("k")
        assert info.value.object_name == name
        report = await db.verify()
        assert not report.ok and name in report.damaged
        path.write_bytes(original + b"!")  # the value's bytes and one more
        with pytest.raises(kvstore.CorruptionError, match=rf"is damaged: {LARGE + 2} bytes"):
            await db.get("k")
        path.unlink()
        with pytest.raises(kvstore.CorruptionError, match="which is missing"):
            await db.get("k")
        with pytest.raises(kvstore.CorruptionError, match="which is missing"):
            [_ async for _ in db.scan()]


async def test_compaction_moves_references_never_the_value_bytes(durable_target: Target) -> None:
    made: list[_Recording] = []

    def wrap(inner: object) -> _Recording:
        made.append(_Recording(inner))
        return made[-1]

    options = kvstore.StoreOptions(auto_compact=False)
    values = {f"k{i:02d}": os.urandom(LARGE + 1 + 1000 * i) for i in range(12)}
    async with durable_target.open(options=options, wrap_object_store=wrap) as db:
        for key, value in values.items():
            await db.put(key, value)
            await db.put(f"small-{key}", b"s")
        await db.put("k00", b"now small")  # an overwritten large value: its reference is dropped
        values["k00"] = b"now small"
        made[0].names.clear()
        (result,) = await db.compact(full=True)
        values_prefix = engine_of(db).layout.values_prefix
        assert [n for n in made[0].names if n[1].startswith(values_prefix)] == []
        # the output segment holds references: a few KiB for 3 MiB of values
        assert result.bytes_out < 20_000 < sum(map(len, values.values()))
        assert {k: v async for k, v in db.scan(prefix="k")} == {k.encode(): v for k, v in values.items()}
        assert (await db.verify()).ok


async def test_gc_collects_value_objects_of_overwritten_keys_keeps_tagged_ones(durable_target: Target) -> None:
    options = kvstore.StoreOptions(history_versions=0)
    async with durable_target.open(options=options) as db:
        tagged, overwritten, kept = os.urandom(LARGE + 1), os.urandom(LARGE + 2), os.urandom(LARGE + 3)
        await db.put("t", tagged)
        await db.tag("v1")
        await db.put("t", b"small now")  # "t"'s large value lives on only in the tag
        first = await _value_objects(db)
        await db.put("o", overwritten)
        (o_name,) = await _value_objects(db) - first
        await db.put("o", kept)  # overwritten: its first value object is garbage once compacted
        await db.compact(full=True)
        report = await gc_later(db)
        assert o_name in report.deleted
        left = await _value_objects(db)
        assert o_name not in left and first <= left and len(left) == 2
        assert await db.get("o") == kept
        assert await (await db.snapshot(tag="v1")).get("t") == tagged
        await db.delete_tag("v1")
        await db.compact(full=True)
        report = await gc_later(db)
        assert first <= set(report.deleted) and len(await _value_objects(db)) == 1
        assert (await db.verify()).ok


async def test_a_value_object_of_a_commit_that_never_landed_is_collected_after_the_grace_period(
    durable_target: Target,
) -> None:
    made, wrap = fault_injecting()
    async with durable_target.open(wrap_object_store=wrap) as db:
        await db.put("a", b"small")
        made[0].script("put_if_match", "denied")  # the commit's CAS is refused: nothing lands
        with pytest.raises(kvstore.AccessDeniedError):
            await db.put("k", os.urandom(LARGE + 1))
        (orphan,) = await _value_objects(db)
        assert await db.get("k") is None
        report = await db.gc()
        assert orphan not in report.deleted  # young: may belong to a commit in progress (I7)
        assert report.collectable_after.get(orphan) is not None
        report = await gc_later(db)
        assert orphan in report.deleted and await _value_objects(db) == set()


async def test_a_lost_answer_on_the_value_object_create_is_resolved_as_our_own(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_value_store, "MULTIPART_MIN_BYTES", 16 * MiB)  # 20 MiB: parts of 16 MiB
    made, wrap = fault_injecting()
    small, big = os.urandom(LARGE + 1), os.urandom(20 * MiB)
    async with target.open(wrap_object_store=wrap) as db:
        await db.put("warm", b"1")
        made[0].script("put_if_absent", "resent")  # the value object: applied, resent, 412
        await db.put("small", small)
        made[0].script("complete_multipart_if_absent", "resent")  # the multipart value's completion
        await db.put("big", big)
        assert made[0].injected["put_if_absent:resent"] == 1
        assert made[0].injected["complete_multipart_if_absent:resent"] == 1
        assert await db.get("small") == small and await db.get("big") == big
        assert len(await _value_objects(db)) == 2


async def test_a_commit_whose_cas_answer_was_lost_after_its_value_object_keeps_it(target: Target) -> None:
    made, wrap = fault_injecting()
    value = os.urandom(LARGE + 1)
    async with target.open(wrap_object_store=wrap) as db:
        await db.put("warm", b"1")
        made[0].script("put_if_match", "resent")  # the manifest CAS: applied, answer lost, 412
        version = await db.put("k", value)
        assert made[0].injected["put_if_match:resent"] == 1
        assert db.statistics()["ambiguous_commits_resolved"] == 1
        assert version == (await db.snapshot()).version
        assert await db.get("k") == value
        await db.compact(full=True)
        await gc_later(db)  # the value object is referenced: kept
        assert await db.get("k") == value


async def test_values_older_than_half_the_grace_period_are_never_committed(target: Target) -> None:
    async with target.open() as db:
        engine = engine_of(db)
        ref = await engine.values.write(os.urandom(LARGE + 1))
        grace = engine.options.segment_grace_period
        assert grace is not None
        request = CommitRequest(
            txn_id=engine.new_txn_id(),
            read_version=None,
            started=time.monotonic(),
            read_keys=set(),
            read_ranges=[],
            writes={b"k": ref},
            values="bytes",
            values_written_at=time.monotonic() - grace / 2 - 1,
        )
        with pytest.raises(kvstore.TransactionTooOldError, match="over half the GC grace period"):
            await engine.commit(request)
        assert await db.get("k") is None


async def test_a_byte_range_of_a_large_value_is_one_ranged_get(target: Target) -> None:
    value = os.urandom(LARGE + 100)
    async with target.open() as db:
        ref = await engine_of(db).values.write(value)
        values = engine_of(db).values
        assert await values.read_range(ref, b"k", 10, 1000) == value[10:1000]
        assert await values.read_range(ref, b"k", LARGE, LARGE + 1000) == value[LARGE:]  # clipped at the end
        assert await values.read_range(ref, b"k", 5, 5) == b""
        await engine_of(db).objects.delete(values.object_name(ref))
        with pytest.raises(kvstore.CorruptionError, match="which is missing"):
            await values.read_range(ref, b"k", 0, 10)


@pytest.mark.parametrize(
    "operation, fault, committed",
    [
        ("put_if_absent", "crash_after_apply", False),  # the value object stored; the writer dies
        ("put_if_match", "crash", False),  # value object written; dies before its commit CAS is sent
        ("put_if_match", "crash_after_apply", True),  # the CAS applied, its answer lost; dies
    ],
)
async def test_a_writer_dying_around_a_large_value_commit_leaves_all_or_garbage(
    durable_target: Target, operation: Operation, fault: FaultKind, committed: bool
) -> None:
    made, wrap = fault_injecting()
    value = os.urandom(LARGE + 1)
    db = await durable_target.open(wrap_object_store=wrap)
    await db.put("warm", b"1")
    made[0].script(operation, fault)
    # the crash itself, or what the committer reports of the interrupted commit
    with pytest.raises((SimulatedCrash, kvstore.CommitOutcomeUnknownError)):
        await db.put("k", value)
    with contextlib.suppress(SimulatedCrash):
        await db.close()  # the process is gone: nothing more reaches the store
    async with durable_target.open() as db:
        assert await db.get("k") == (value if committed else None)
        assert len(await _value_objects(db)) == 1
        await db.compact(full=True)
        await gc_later(db)  # the orphan goes; the committed value stays
        assert len(await _value_objects(db)) == (1 if committed else 0)
        assert await db.get("k") == (value if committed else None)
        assert (await db.verify()).ok
