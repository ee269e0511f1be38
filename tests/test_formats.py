"""The segment and manifest formats, and what damaged bytes do."""

from __future__ import annotations

import random
import re
import time
from pathlib import Path
from unittest.mock import patch

import msgpack
import pytest
import xxhash
import zstandard
from segment_bytes import as_format_1, as_format_2, as_format_3, index_of, whole_index
from targets import Target, engine_of

import kvstore
import kvstore._segment as segment
from kvstore._manifest import MOVED_SETTING, CommitRecord, Manifest, SegmentRef, decode_manifest, encode_manifest
from kvstore._operands import ADD, MAX, MIN, Operands
from kvstore._segment import (
    CHECKSUM,
    FOOTER,
    HAS_VALUE_REFS,
    check_header,
    decode_block,
    encode_segment,
    parse_footer,
)
from kvstore._value_refs import ValueRef


def _entries(n: int, versions: int = 1) -> list[tuple[bytes, int, bytes | None]]:
    rng = random.Random(n)
    out = []
    for i in range(n):
        for v in range(versions, 0, -1):
            out.append((b"key%06d" % i, v, None if rng.random() < 0.1 else rng.randbytes(rng.randint(0, 300))))
    return out


@pytest.mark.parametrize("n, versions", [(1, 1), (5000, 1), (3000, 3)])
def test_segment_round_trip(n: int, versions: int) -> None:
    entries = _entries(n, versions)
    seg = encode_segment(entries, uniform_version=versions == 1)
    assert (seg.count, seg.min_key, seg.max_key) == (len(entries), entries[0][0], entries[-1][0])
    check_header(seg.data, "s")
    index = whole_index(seg.data)
    decoded = []
    for b in range(len(index.offsets)):
        block = decode_block(seg.data[index.offsets[b] : index.offsets[b] + index.lengths[b]], "s", b)
        assert block.keys[0] == index.first_keys[b] and block.keys[-1] == index.last_keys[b]
        vs = block.versions or [1] * len(block.keys)
        decoded.extend(zip(block.keys, vs, block.values, strict=True))
    assert decoded == entries
    if n > 1000:
        assert len(index.offsets) > 1  # large segments really have several blocks
        # a key whose versions fit in a block has them all in one block
        for b in range(1, len(index.offsets)):
            assert index.first_keys[b] > index.last_keys[b - 1]


@pytest.mark.parametrize("partitioned", [False, True])
def test_segment_detects_every_flipped_byte(monkeypatch: pytest.MonkeyPatch, partitioned: bool) -> None:
    if partitioned:  # small blocks, a partition per two blocks: every kind of part, several times
        monkeypatch.setattr(segment, "BLOCK_TARGET_BYTES", 1024)
        monkeypatch.setattr(segment, "PARTITION_TARGET_BYTES", 100)
    seg = encode_segment(_entries(40), uniform_version=True).data
    assert len(index_of(seg)[0].offsets) == (3 if partitioned else 1)
    for pos in range(len(seg)):
        damaged = bytearray(seg)
        damaged[pos] ^= 0x10
        with pytest.raises((kvstore.CorruptionError, kvstore.UnsupportedFormatError)) as info:
            check_header(damaged, "seg-x")
            _, parts = index_of(bytes(damaged), "seg-x")
            for part in parts:
                for b in part.blocks_between(None, None):
                    decode_block(damaged[slice(*part.span(b))], "seg-x", b)
        assert "seg-x" in str(info.value)


def test_segment_truncated() -> None:
    seg = encode_segment(_entries(10), uniform_version=True).data
    with pytest.raises(kvstore.CorruptionError, match="damaged footer|truncated"):
        parse_footer(seg[: -FOOTER.size // 2], "s")


GOLDEN_ENTRIES = [(b"apple", 2, b"red"), (b"apple", 1, b"green"), (b"kiwi", 1, None)]


def _golden(name: str) -> bytes:
    """The bytes of a hex dump in docs/format.md (offset, hex, # comment), offsets checked."""
    doc = (Path(__file__).parent.parent / "docs" / "format.md").read_text()
    match = re.search(rf"```hexdump {name}\n(.*?)```", doc, re.S)
    assert match, name
    data = b""
    for line in match.group(1).splitlines():
        offset, hex_bytes = line.split("#")[0].split()
        assert int(offset, 16) == len(data), line
        data += bytes.fromhex(hex_bytes)
    return data


@pytest.mark.parametrize("fmt", [1, 2, 3, 4])
def test_golden_segments_in_the_docs(fmt: int) -> None:
    golden = _golden(f"segment-format-{fmt}")
    written = encode_segment(GOLDEN_ENTRIES, uniform_version=False).data
    # the writer (format 4), and the helpers for what formats 1 to 3 wrote: format 3 only
    # lets a key's versions span blocks, and format 4 only adds ext-typed values, which
    # these few entries do not use
    written_as = {4: written, 3: as_format_3(written), 2: as_format_2(written), 1: as_format_1(written)}
    assert written_as[fmt] == golden
    check_header(golden, "s")
    assert parse_footer(golden, "s").format == fmt
    top, parts = index_of(golden)
    assert (top.first_keys, top.last_keys, top.first_blocks) == ([b"apple"], [b"kiwi"], [0, 1])
    (part,) = parts
    block = decode_block(golden[slice(*part.span(0))], "s", 0)
    assert list(zip(block.keys, block.versions or [], block.values, strict=True)) == GOLDEN_ENTRIES


GOLDEN_REF = ValueRef("01a2510f63f3-fd64715ed3f362fe", 300000, 0x1234_5678_9ABC_DEF0)


def test_golden_segment_with_a_value_reference_in_the_docs() -> None:
    golden = _golden("segment-value-ref")
    entries = [(b"apple", 2, GOLDEN_REF), (b"apple", 1, b"green"), (b"kiwi", 1, None)]
    assert encode_segment(entries, uniform_version=False).data == golden
    assert GOLDEN_REF.to_ext() == msgpack.ExtType(
        3, bytes.fromhex("93bd3031613235313066363366332d66643634373135656433663336326665ce000493e0cf123456789abcdef0")
    )
    footer = parse_footer(golden, "s")
    assert (footer.format, footer.flags) == (4, HAS_VALUE_REFS)
    (part,) = index_of(golden)[1]
    block = decode_block(golden[slice(*part.span(0))], "s", 0)
    assert list(zip(block.keys, block.versions or [], block.values, strict=True)) == entries
    # a reader of format 3 refuses it, naming the upgrade
    with patch("kvstore._segment.FORMAT", 3), pytest.raises(kvstore.UnsupportedFormatError, match="upgrade kvstore"):
        parse_footer(golden, "s")


def test_an_unknown_special_value_or_a_malformed_reference_is_damage() -> None:
    for ext in (msgpack.ExtType(9, b"\x90"), msgpack.ExtType(3, msgpack.packb(["", 1, 2])), msgpack.ExtType(3, b"x")):
        body = zstandard.ZstdCompressor(level=3).compress(msgpack.packb([[b"k"], [1], [ext]], use_bin_type=True))
        with pytest.raises(kvstore.CorruptionError, match="cannot decode its data block 0"):
            decode_block(body + CHECKSUM.pack(xxhash.xxh3_64_intdigest(body)), "s", 0)


def test_golden_operands_segment_in_the_docs() -> None:
    # docs/format.md, "Special values (format 4)": atomic operands are ext 2 in the value column
    golden = _golden("segment-operands")
    entries = [
        (b"hits", 3, Operands(((ADD, 5),))),
        (b"hits", 2, Operands(((ADD, -1), (MAX, 10)))),
        (b"hits", 1, (7).to_bytes(8, "little")),
    ]
    assert encode_segment(entries, uniform_version=False).data == golden
    (part,) = index_of(golden)[1]
    block = decode_block(golden[slice(*part.span(0))], "s", 0)
    assert list(zip(block.keys, block.versions or [], block.values, strict=True)) == entries
    assert parse_footer(golden, "s").format == 4
    assert msgpack.packb(Operands(((MIN, 3),), True, b"\x01").to_ext()).hex() == "c7070292920203c40101"


def test_unknown_ext_value_is_damage() -> None:
    # a value kind this kvstore does not know (an ext code not in the registry)
    data = encode_segment([(b"k", 1, Operands(((ADD, 1),)))], uniform_version=False).data
    (part,) = index_of(data)[1]
    block_bytes = data[slice(*part.span(0))]
    body = zstandard.ZstdDecompressor().decompress(block_bytes[:-8]).replace(b"\xd6\x02", b"\xd6\x63")
    frame = zstandard.ZstdCompressor(level=3).compress(body)
    with pytest.raises(kvstore.CorruptionError, match="cannot decode"):
        decode_block(frame + xxhash.xxh3_64_intdigest(frame).to_bytes(8, "little"), "s", 0)


def _manifest(log: int = 3) -> Manifest:
    m = Manifest(store_id="abc", version=0, created=time.time(), settings={"x": 1})
    for v in range(1, log + 1):
        ref = SegmentRef(f"seg{v}", b"a", b"z", 2, 100, v, v, commit_version=v)
        rec = CommitRecord(v, time.time(), (bytes(16),), f"seg{v}", 2, b"a", b"z", (b"a", b"z"), None)
        m = m.with_commit(rec, 2, add=(ref,))
    return m


def test_manifest_round_trip_and_bounded_log() -> None:
    m = _manifest(5)
    assert decode_manifest(encode_manifest(m), "m") == m
    assert m.version == 5 and len(m.log) == 2 and m.log_start == 3
    assert m.commits_after(3) == m.log
    assert m.commits_after(4) == m.log[1:]
    assert m.commits_after(5) == ()
    assert m.commits_after(2) is None  # the log no longer reaches back


def test_large_manifest_is_compressed() -> None:
    m = Manifest(store_id="abc", version=0, created=0.0)
    for v in range(1, 400):
        ref = SegmentRef(f"seg{v:05d}", b"aaaa", b"zzzz", 2, 100, v, v, commit_version=v)
        m = m.with_commit(CommitRecord(v, 0.0, (), ref.id, 1, b"a", b"a", (b"a",)), 1000, add=(ref,))
    data = encode_manifest(m)
    assert data[6] == 1  # zstd
    assert decode_manifest(data, "m") == m


def test_manifest_damage_is_detected() -> None:
    data = encode_manifest(_manifest())
    for pos in range(0, len(data), 7):
        damaged = bytearray(data)
        damaged[pos] ^= 0x40
        with pytest.raises((kvstore.CorruptionError, kvstore.UnsupportedFormatError)):
            decode_manifest(bytes(damaged), "m")


# Segment-object corruption: every commit writes its segment as an object.
SEGMENT_OBJECTS = kvstore.StoreOptions(inline_segment_bytes=0)


def _segment_files(root: Path) -> list[Path]:
    return sorted((root / "segments").glob("*.seg"))


async def test_corrupt_segment_names_the_object_and_spares_other_keys(tmp_path: Path) -> None:
    target = Target("file", str(tmp_path / "s"))
    async with target.open(options=SEGMENT_OBJECTS) as db:
        await db.put(b"a", b"in the first segment")
        await db.put(b"b", b"in the second segment")
    first = _segment_files(tmp_path / "s")[0]
    data = bytearray(first.read_bytes())
    data[12] ^= 0xFF  # inside the first data block
    first.write_bytes(bytes(data))
    async with target.open(options=SEGMENT_OBJECTS) as db:
        with pytest.raises(kvstore.CorruptionError, match=first.name) as info:
            await db.get(b"a")
        assert info.value.block == "data block 0"
        assert await db.get(b"b") == b"in the second segment"
        report = await db.verify()
        assert not report.ok
        assert list(report.damaged) == [f"segments/{first.name}"]


@pytest.mark.parametrize("where", ["header", "footer", "truncate"])
async def test_corrupt_segment_parts_are_reported_by_verify(tmp_path: Path, where: str) -> None:
    target = Target("file", str(tmp_path / "s"))
    async with target.open(options=SEGMENT_OBJECTS) as db:
        await db.put(b"a", b"1")
        await db.put(b"b", b"2")
    victim = _segment_files(tmp_path / "s")[1]
    data = bytearray(victim.read_bytes())
    if where == "header":
        data[0] ^= 0xFF
    elif where == "footer":
        data[-3] ^= 0xFF
    else:
        del data[len(data) // 2 :]
    victim.write_bytes(bytes(data))
    async with target.open(options=SEGMENT_OBJECTS) as db:
        report = await db.verify()
        assert list(report.damaged) == [f"segments/{victim.name}"]
        assert report.objects_checked == 3


async def test_corrupt_manifest_is_refused_with_its_name(durable_target: Target) -> None:
    async with durable_target.open() as db:
        await db.put(b"a", b"1")
        objects, name = engine_of(db).objects, engine_of(db).layout.manifest
        blob = await objects.get(name)
        assert blob is not None and blob.etag is not None
        damaged = bytearray(blob.data)
        damaged[len(damaged) // 2] ^= 0x01
        await objects.put_if_match(name, bytes(damaged), blob.etag)
    with pytest.raises(kvstore.CorruptionError, match="manifest .* is damaged"):
        await durable_target.open()


def test_commit_log_keeps_exact_keys_within_its_budget() -> None:
    from kvstore._manifest import LOG_KEYS_BUDGET_BYTES, CommitRecord, Manifest

    m = Manifest("id", 0, 0.0)
    keys = tuple(b"k%05d-%s" % (i, b"x" * 90) for i in range(40))  # ~4 KiB per record
    for v in range(1, 201):
        record = CommitRecord(v, 0.0, (b"t" * 16,), "s", len(keys), keys[0], keys[-1], keys, None, len(keys))
        m = m.with_commit(record, log_length=1000)
        encoded = encode_manifest(m)  # each encode extends the parent's packed log when it can
    exact = [r for r in m.log if r.keys is not None]
    assert sum(len(k) for r in exact for k in r.keys or ()) <= LOG_KEYS_BUDGET_BYTES
    assert exact and exact[-1].version == 200  # the newest records keep their keys
    assert all(r.keys is None for r in m.log[: len(m.log) - len(exact)])  # the oldest keep a range
    # A record without its key list still conflicts with any key in its range (conservative).
    assert m.log[0].wrote_any([keys[5]], [])
    # Encoding matches a fresh encode of the same manifest (the packed-log cache stays true).
    again = decode_manifest(encoded, "m")
    assert again.log == m.log
    # The exact-key total carried from commit to commit is the log's real one.
    from kvstore._manifest import _log_key_bytes

    real = sum(len(k) for r in m.log for k in r.keys or ())
    assert _log_key_bytes(m) == real == _log_key_bytes(again)
    short = Manifest("id", 0, 0.0)
    for v in range(1, 31):  # the log keeps 10 records: trimmed records leave the total too
        short = short.with_commit(CommitRecord(v, 0.0, (b"t" * 16,), "s", 1, b"k", b"k", (b"k" * v,)), log_length=10)
    assert _log_key_bytes(short) == sum(range(21, 31))


def test_run_object_golden_bytes() -> None:
    # docs/format.md, "Run object"
    from kvstore._run import decode_run, encode_run

    data = encode_run([SegmentRef("r", b"a", b"b", 1, 2, 3, 4)])
    assert data.hex() == "4b56524e01000000" + "9197a172c40161c40162010203" + "04" + "9026759f7fb43d46"
    [part] = decode_run(data, level=2, object_name="r.run").parts
    assert part == SegmentRef("r", b"a", b"b", 1, 2, 3, 4, None, 2)


def test_a_run_row_round_trips_and_format_2_manifests_are_read() -> None:
    from kvstore._envelope import seal, unseal

    run = SegmentRef("run", b"a", b"z", 10, 1000, 1, 9, None, 2, None, 7)
    m = Manifest(store_id="s", version=3, created=1.0, segments=(run, SegmentRef("seg", b"a", b"b", 1, 2, 3, 3)))
    decoded = decode_manifest(encode_manifest(m), "m")
    assert decoded == m and decoded.segments[0].is_run and not decoded.segments[1].is_run
    older = Manifest(store_id="s", version=3, created=1.0, segments=(SegmentRef("seg", b"a", b"b", 1, 2, 3, 3),))
    payload = unseal(encode_manifest(older), b"KVMF", 3, "m", "manifest")
    assert decode_manifest(seal(b"KVMF", 2, payload), "m") == older


def test_a_sealed_partition_is_format_4() -> None:
    """A release before format 4 knows no partitions: it must refuse a split's retired
    partition rather than commit into it (docs/format.md, "Partitions")."""
    assert encode_manifest(Manifest("s", 5, 0.0))[4:6] == (3).to_bytes(2, "little")
    sealed = Manifest("s", 5, 0.0, settings={MOVED_SETTING: {"at": b"m", "into": ["0001", "0002"]}})
    data = encode_manifest(sealed)
    assert data[4:6] == (4).to_bytes(2, "little")
    assert decode_manifest(data, "m").settings[MOVED_SETTING]["into"] == ["0001", "0002"]
