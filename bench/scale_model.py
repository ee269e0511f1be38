"""A model of kvstore at 100 GB and 1 TB on AWS S3 Standard (issue 21, item 5).

    .venv/bin/python bench/scale_model.py [--scale-json bench/results/scale-<date>.json] [--workers 16]
                                          [--out bench/results/scale-model.json]

This machine's disk holds about 80 GB, so 100 GB cannot be measured here. The model scales
what was measured (`bench/scale.py`, per process and per GB of logical data) with what
kvstore's code fixes (part, segment, read-ahead and step sizes: imported, not copied) and
what AWS publishes (request prices, per-connection bandwidth, first-byte latency):

* time of a phase = logical bytes / min(measured CPU rate of one process x workers x
  efficiency, what the object store streams to those processes): the measured phases are
  CPU-bound (decoding, merging and encoding in Python), so the CPU rate carries over from
  the local filesystem; the object store is the limit only where it is slower;
* requests from the code's sizes: a segment of `target_segment_bytes` is a multipart upload
  of 8 MiB parts (Create, the parts, Complete), read back in read-ahead windows of 4 MiB,
  plus its tail and index partitions; each compaction step adds a run-object PUT and a
  manifest CAS; the run object's size is measured by encoding one of that many segments;
* dollars = requests x AWS S3 Standard (us-east-1) request prices, plus storage per month.

The CPU rates default to the last quiet 20 GB run in docs/benchmarks.md; `--scale-json`
takes them from a `bench/scale.py` result instead (its largest size). Prints a table and
writes JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kvstore import S3Options, StoreOptions
from kvstore._compact import _RANGE_SEGMENTS, MAX_SUB_COMPACTIONS, merge_fan_in, merge_readahead
from kvstore._manifest import SegmentRef
from kvstore._run import encode_run
from kvstore._segment import BLOCK_TARGET_BYTES
from kvstore._segment_store import PART_BYTES, SCAN_READAHEAD_BYTES

GB = 1e9
MiB = 1 << 20
PAIR_BYTES = 116  # bench/scale.py's pairs: 16-byte keys, 100-byte values
CHUNK_BYTES = 64 * MiB  # bulk_load's default chunk_bytes

# AWS S3 Standard, us-east-1, from aws.amazon.com/s3/pricing (December 2026).
PUT_PRICE = 0.005 / 1000  # PUT, COPY, POST (multipart Create/UploadPart/Complete), LIST
GET_PRICE = 0.0004 / 1000
STORAGE_PRICE = 0.023  # per GB-month, first 50 TB
# AWS's published performance guidance: first byte in tens of ms, ~85-90 MB/s per connection.
FIRST_BYTE_S = 0.030
CONNECTION_MB_S = 85.0
# Index GETs of a segment read from end to end: its tail, then one partition per this many blocks.
BLOCKS_PER_INDEX_PARTITION = 64


@dataclass(frozen=True)
class Rates:
    """What one process did per second, in MB of logical data (measured)."""

    load_sorted_mb_s: float  # bulk load of input in key order: chunks stream into the run
    bulk_merge_mb_s: float  # one pass of a bulk load's merge of its chunks into one run
    compact_mb_s: float  # a merge that rewrites everything
    scan_mb_s: float  # a full scan, decoding every entry
    space_amplification: float  # segment bytes / logical bytes after compaction
    peak_rss_mib: dict[str, float]  # per phase
    source: str


# docs/benchmarks.md: the chunk and compaction rates of the quiet 20 GB run of 2026-12-02
# (its load wrote sorted chunks once: what input in key order costs); the bulk merge's rate
# from the 20 GB run of 2026-12-08 (load in random order, one merge pass; `rates_from`).
_CHUNK_PASS_MB_S = 21.6
_COMPACT_MB_S = 17.1
_BULK_MERGE_MB_S = 18.9  # 20 GB: 1,984 s, less 926 s of chunks at _CHUNK_PASS_MB_S, for one pass
DEFAULT_RATES = Rates(
    load_sorted_mb_s=_CHUNK_PASS_MB_S,
    bulk_merge_mb_s=_BULK_MERGE_MB_S,
    compact_mb_s=_COMPACT_MB_S,
    scan_mb_s=565_825 * PAIR_BYTES / 1e6,
    space_amplification=1.01,
    peak_rss_mib={"bulk load": 646, "compaction": 256, "reads": 289},  # the load's: 2026-12-08
    source="docs/benchmarks.md, 20 GB on the local filesystem (2026-12-02; bulk load 2026-12-08)",
)


def merge_passes(chunks: int, options: StoreOptions) -> int:
    """Passes of a bulk load's merge of `chunks` overlapping chunks (`_bulk.as_sorted_run`)."""
    fan_in = merge_fan_in(options.target_segment_bytes, options.compaction_memory_bytes)
    return max(1, math.ceil(math.log(chunks, fan_in))) if chunks > 1 else 0


def load_chunks(logical: float) -> int:
    """Chunks a bulk load of `logical` bytes of pairs writes (the default `chunk_bytes`)."""
    return math.ceil(logical / CHUNK_BYTES)


def rates_from(path: Path, options: StoreOptions) -> Rates:
    """The rates of the largest size in a bench/scale.py result: its load is in random order,
    so its time is the chunks' pass at the rate of sorted input (the default's) plus its
    merge passes, whose rate follows."""
    r = max(json.loads(path.read_text())["sizes"], key=lambda s: s["gb"])
    logical = r["logical_bytes"]
    compact = r["compact"]
    scan = r["reads"]["scan"]
    passes = merge_passes(load_chunks(logical), options)
    merging = r["load"]["seconds"] - logical / 1e6 / DEFAULT_RATES.load_sorted_mb_s
    return Rates(
        load_sorted_mb_s=DEFAULT_RATES.load_sorted_mb_s,
        bulk_merge_mb_s=passes * logical / 1e6 / merging,
        compact_mb_s=logical / compact["seconds"] / 1e6 if compact.get("results") else DEFAULT_RATES.compact_mb_s,
        scan_mb_s=scan["entries_per_s"] * PAIR_BYTES / 1e6,
        space_amplification=r["load"]["store"]["segment_bytes"] / logical,
        peak_rss_mib={
            "bulk load": r["load"]["peak_rss"] / MiB,
            "compaction": compact.get("peak_rss", 0) / MiB,
            "reads": r["reads"]["peak_rss"] / MiB,
        },
        source=f"{path} ({r['gb']:g} GB)",
    )


def streamed_mb_s(window: int, in_flight: int) -> float:
    """What one process reads with `in_flight` windows of `window` bytes outstanding."""
    per_window = FIRST_BYTE_S + window / (CONNECTION_MB_S * 1e6)
    return in_flight * window / per_window / 1e6


def run_object_bytes(segments: int) -> int:
    """The size of a run object listing `segments` segments (encoded by kvstore's code)."""
    rng = random.Random(0)  # random ids and keys: they compress as real ones do
    bounds = sorted(rng.randbytes(16) for _ in range(2 * segments))
    refs = [
        SegmentRef(rng.randbytes(16).hex(), bounds[2 * i], bounds[2 * i + 1], 550_000, 64 * MiB, 1, 9, level=1)
        for i in range(segments)
    ]
    return len(encode_run(refs))


def model(logical_gb: float, rates: Rates, workers: int, options: StoreOptions) -> dict[str, Any]:
    logical = logical_gb * GB
    stored = logical * rates.space_amplification
    segment = options.target_segment_bytes
    segments = math.ceil(stored / segment)
    blocks_per_segment = segment / BLOCK_TARGET_BYTES

    def write_requests(nbytes: float) -> float:  # a multipart upload per segment
        return nbytes / PART_BYTES + 2 * nbytes / segment

    def read_requests(nbytes: float, window: int = SCAN_READAHEAD_BYTES) -> float:
        # windows, plus each segment's tail and index
        return nbytes / window + (nbytes / segment) * (1 + blocks_per_segment / BLOCKS_PER_INDEX_PARTITION)

    read_mb_s = streamed_mb_s(SCAN_READAHEAD_BYTES, 2)  # two windows in flight while one is consumed
    write_mb_s = streamed_mb_s(PART_BYTES, 2)  # two parts in flight

    def seconds(cpu_mb_s: float, n: int, io_mb_s: float) -> float:
        # Processes after the first add 0.88 of one (measured: 2 Dask workers 1.76x one process).
        effective = cpu_mb_s * (1 + 0.88 * (n - 1))
        return logical / 1e6 / min(effective, io_mb_s * n)

    run_bytes = run_object_bytes(segments)
    out: dict[str, Any] = {"logical_gb": logical_gb, "stored_gb": stored / GB, "segments": segments}
    for n in (1, workers):
        # A step: the ranges that run at once (4 in one process, one per worker on a cluster).
        ranges = MAX_SUB_COMPACTIONS if n == 1 else max(MAX_SUB_COMPACTIONS, n)
        step_bytes = ranges * _RANGE_SEGMENTS * segment
        steps = math.ceil(stored / step_bytes)
        step_s = (_RANGE_SEGMENTS * segment * (MAX_SUB_COMPACTIONS if n == 1 else 1)) / 1e6 / rates.compact_mb_s
        sorted_puts = write_requests(stored) + 2  # the run's segments, its run object, the CAS
        compact_puts = write_requests(stored) + 2 * steps  # plus per step the run object and the CAS
        compact_gets = read_requests(stored)
        scan_gets = read_requests(stored)
        full_compaction = {
            "seconds": seconds(rates.compact_mb_s, n, min(read_mb_s, write_mb_s)),
            "steps": steps,
            "step_seconds": step_s,
            "run_object_bytes_last_step": run_bytes,
            "run_object_bytes_all_steps": run_bytes * (steps + 1) / 2,
            "puts": compact_puts,
            "gets": compact_gets,
            "dollars": compact_puts * PUT_PRICE + compact_gets * GET_PRICE,
        }
        if n == 1:
            # `bulk_load`: the chunks, then merge passes, each reading every chunk in the
            # read-ahead windows its fan-in leaves (`_compact.merge_readahead`): the first
            # pass has the most inputs, so the smallest windows; each input keeps two in
            # flight, up to the client's connection pool.
            chunks = load_chunks(logical)
            passes = merge_passes(chunks, options)
            fan_in = merge_fan_in(segment, options.compaction_memory_bytes)
            memory = options.compaction_memory_bytes
            window = merge_readahead(min(chunks, fan_in), segment, memory)
            merge_io_mb_s = streamed_mb_s(window, min(2 * min(chunks, fan_in), S3Options().max_pool_connections))
            random_puts = sorted_puts + passes * write_requests(stored)
            random_gets = sum(
                read_requests(stored, merge_readahead(min(math.ceil(chunks / fan_in**p), fan_in), segment, memory))
                for p in range(passes)
            )
            random_mb_s = 1 / (1 / rates.load_sorted_mb_s + passes / rates.bulk_merge_mb_s)
            bulk_load_random = {
                "seconds": seconds(random_mb_s, n, min(merge_io_mb_s, write_mb_s)),
                "note": f"{chunks:,} chunks, {passes} merge pass(es), {window // 1024:,} KiB windows",
                "puts": random_puts,
                "gets": random_gets,
            }
        else:
            # A distributed write (`kvstore.dask`): the workers write chunks, which land as
            # they are; `compact(full=True, client=...)` on the cluster then merges them.
            bulk_load_random = {
                "seconds": seconds(rates.load_sorted_mb_s, n, write_mb_s) + full_compaction["seconds"],
                "note": "a distributed write, then a full compaction on the cluster",
                "puts": sorted_puts + compact_puts,
                "gets": compact_gets,
            }
        bulk_load_random["dollars"] = bulk_load_random["puts"] * PUT_PRICE + bulk_load_random["gets"] * GET_PRICE
        out[f"{n} process" if n == 1 else f"{n} workers"] = {
            "bulk_load_sorted": {
                "seconds": seconds(rates.load_sorted_mb_s, n, write_mb_s),
                "puts": sorted_puts,
                "gets": 0,
                "dollars": sorted_puts * PUT_PRICE,
            },
            "bulk_load_random": bulk_load_random,
            "full_compaction": full_compaction,
            "full_scan": {
                "seconds": seconds(rates.scan_mb_s, n, read_mb_s),
                "gets": scan_gets,
                "dollars": scan_gets * GET_PRICE,
            },
        }
    out["cold_get_ms"] = 4 * FIRST_BYTE_S * 1e3  # the manifest's conditional GET, then at most 3 segment GETs
    out["peak_rss_mib"] = {phase: mib + run_bytes / MiB for phase, mib in rates.peak_rss_mib.items()}
    out["storage_dollars_per_month"] = stored / GB * STORAGE_PRICE
    return out


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def render(results: dict[str, Any]) -> str:
    lines = [
        "| size | phase | processes | time | requests (PUT-class / GET) | request cost | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in results["sizes"]:
        size = f"{m['logical_gb']:,.0f} GB"
        for who, phases in m.items():
            if not isinstance(phases, dict) or "full_scan" not in phases:
                continue
            comp, scan = phases["full_compaction"], phases["full_scan"]
            for name, what in (
                ("bulk_load_sorted", "bulk load (input in key order)"),
                ("bulk_load_random", "bulk load (any order: chunks, then one run)"),
            ):
                load = phases[name]
                note = load.get("note", "")
                lines.append(
                    f"| {size} | {what} | {who} | {_hours(load['seconds'])} | "
                    f"{load['puts']:,.0f} / {load['gets']:,.0f} | ${load['dollars']:.2f} | {note} |"
                )
            lines.append(
                f"| {size} | full compaction (all overlapping) | {who} | {_hours(comp['seconds'])} | "
                f"{comp['puts']:,.0f} / {comp['gets']:,.0f} | ${comp['dollars']:.2f} | "
                f"{comp['steps']:,} steps of {comp['step_seconds']:.0f} s; run object {comp['run_object_bytes_last_step'] / 1e6:.1f} MB at the end |"
            )
            lines.append(
                f"| {size} | full scan{'' if who == '1 process' else ' (disjoint key ranges)'} | {who} | {_hours(scan['seconds'])} | 0 / {scan['gets']:,.0f} | ${scan['dollars']:.2f} | |"
            )
        rss = ", ".join(f"{k} {v:,.0f} MiB" for k, v in m["peak_rss_mib"].items())
        lines.append(
            f"| {size} | memory, storage | | | | ${m['storage_dollars_per_month']:,.2f}/month stored | "
            f"peak RSS per process: {rss}; cold get ~{m['cold_get_ms']:.0f} ms |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale-json", type=Path, help="take the measured rates from this bench/scale.py result")
    ap.add_argument("--workers", type=int, default=16, help="worker processes of the cluster rows (Dask)")
    ap.add_argument("--sizes", default="100,1000", help="GB of logical data, comma-separated")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "scale-model.json")
    args = ap.parse_args()
    options = StoreOptions()
    rates = rates_from(args.scale_json, options) if args.scale_json else DEFAULT_RATES
    results = {
        "rates": asdict(rates),
        "assumptions": {
            "put_price_per_1000": PUT_PRICE * 1000,
            "get_price_per_1000": GET_PRICE * 1000,
            "storage_price_per_gb_month": STORAGE_PRICE,
            "first_byte_s": FIRST_BYTE_S,
            "connection_mb_s": CONNECTION_MB_S,
            "read_mb_s_per_process": streamed_mb_s(SCAN_READAHEAD_BYTES, 2),
            "write_mb_s_per_process": streamed_mb_s(PART_BYTES, 2),
            "workers": args.workers,
        },
        "sizes": [model(float(gb), rates, args.workers, options) for gb in args.sizes.split(",")],
    }
    print(
        f"rates per process: {rates.source}: load {rates.load_sorted_mb_s:.1f} (in key order), "
        f"a pass of its merge {rates.bulk_merge_mb_s:.1f} (any order), compaction {rates.compact_mb_s:.1f}, "
        f"scan {rates.scan_mb_s:.1f} MB/s"
    )
    print(render(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
