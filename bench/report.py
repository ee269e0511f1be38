"""Turns results.json into the table (kvstore figure, baseline, ratio) and the target verdicts."""

from __future__ import annotations

from typing import Any

MEMORY_ALLOWANCE = 32 << 20  # fixed overhead allowed over the cache while scanning


def _get(d: Any, *path: Any) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    if isinstance(d, dict) and "unavailable" in d:
        return None
    return d


def _best(*values: Any) -> float | None:
    vals = [v for v in values if isinstance(v, (int, float)) and v == v]
    return max(vals) if vals else None


def _unavail(d: Any) -> str | None:
    if isinstance(d, dict) and "unavailable" in d:
        return str(d["unavailable"])
    return None


class Table:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(
        self,
        section: str,
        metric: str,
        kv: Any,
        unit: str,
        baseline: str = "",
        base: Any = None,
        note: str = "",
        higher_is_better: bool = True,
    ) -> None:
        ratio = None
        if isinstance(kv, (int, float)) and isinstance(base, (int, float)) and base:
            ratio = kv / base
        self.rows.append(
            {
                "section": section,
                "metric": metric,
                "kvstore": kv,
                "unit": unit,
                "baseline": baseline,
                "baseline_value": base,
                "ratio": ratio,
                "note": note,
            }
        )


def build(results: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    t = Table()
    targets: list[dict[str, Any]] = []

    def target(name: str, value: Any, threshold: Any, op: str, detail: str = "") -> None:
        if not isinstance(value, (int, float)) or not isinstance(threshold, (int, float)):
            status = "N/A"
        else:
            ok = value <= threshold if op == "<=" else value >= threshold
            status = "PASS" if ok else "MISS"
        targets.append(
            {"target": name, "value": value, "threshold": threshold, "op": op, "status": status, "detail": detail}
        )

    once = results.get("once", {})
    lat0 = next(iter(results.get("latency", {}).values()), {})

    for lat_key, r in results.get("latency", {}).items():
        S = f"@{lat_key} ms"
        fl = r.get("floor", {})
        nv = r.get("naive", {})
        peers = r.get("peers", {})
        sd, st, ic = peers.get("slatedb_default", {}), peers.get("slatedb_tuned", {}), peers.get("icechunk", {})
        seq = _get(r, "kv_sequential", "default")
        seq_nc = _get(r, "kv_sequential", "no_compaction") or seq
        commit_floor = _get(fl, "commit_floor_ms")
        commit_floor_objects = _get(fl, "commit_floor_objects_ms")
        seq_ni = _get(r, "kv_sequential", "no_inline")
        # -- commits
        sec = f"commit {S}"
        kv_seq_ms = _get(seq, "mean_ms")
        t.add(
            sec,
            "sequential commit latency (mean)",
            kv_seq_ms,
            "ms",
            "floor: CAS PUT",
            commit_floor,
            note=f"p50 {_fmt(_get(seq, 'p50_ms'))} / p99 {_fmt(_get(seq, 'p99_ms'))} ms",
        )
        if seq_nc is not seq:
            t.add(sec, "  same, auto_compact off", _get(seq_nc, "mean_ms"), "ms", "floor: CAS PUT", commit_floor)
        if seq_ni is not None:
            t.add(
                sec,
                "  same, inline segments off",
                _get(seq_ni, "mean_ms"),
                "ms",
                "floor: create PUT + CAS PUT",
                commit_floor_objects,
                note=f"inline on: {_fmt(kv_seq_ms)} ms",
            )
        t.add(
            sec,
            "  vs naive PUT (no transaction)",
            kv_seq_ms,
            "ms",
            "naive: 1 PUT",
            _get(nv, "sequential_put", "mean_ms"),
        )
        sd_seq = _get(sd, "sequential_put", "mean_ms")
        st_seq = _get(st, "sequential_put", "mean_ms")
        t.add(
            sec,
            "  vs SlateDB durable put",
            kv_seq_ms,
            "ms",
            "SlateDB default / tuned",
            min([v for v in (sd_seq, st_seq) if v] or [0]) or None,
            note=f"default {_fmt(sd_seq)} ms, tuned {_fmt(st_seq)} ms",
        )
        t.add(sec, "  vs Icechunk commit", kv_seq_ms, "ms", "Icechunk commit", _get(ic, "sequential_commit", "mean_ms"))
        cvf = r.get("kv_commit_vs_floor") or {}
        for label, c in cvf.items():
            if _get(c, "kv_mean_ms") is None:
                continue
            variant = {"default": "", "no_compaction": ", auto_compact off", "no_inline": ", inline segments off"}
            t.add(
                sec,
                "sequential commit, interleaved with the floor" + variant.get(label, f", {label}"),
                _get(c, "kv_mean_ms"),
                "ms",
                f"floor ({c.get('floor', 'create PUT + CAS PUT')}), same moments",
                _get(c, "floor_mean_ms"),
                note=f"p50 {_fmt(_get(c, 'kv_p50_ms'))} vs {_fmt(_get(c, 'floor_p50_ms'))} ms; "
                f"{_fmt(_get(c, 'requests_per_commit'))} req/commit",
            )
        req_commit = _get(seq_nc, "requests_per_commit")
        t.add(
            sec,
            "requests per small commit",
            req_commit,
            "req",
            "target",
            2,
            note=_kinds(_get(seq_nc, "requests_per_commit_by_kind")),
        )
        if seq_nc is not seq:
            t.add(
                sec,
                "  incl. background compaction",
                _get(seq, "requests_per_commit"),
                "req",
                "target",
                2,
                note=_kinds(_get(seq, "requests_per_commit_by_kind")),
            )
        t.add(
            sec,
            "  SlateDB requests per durable put (1 writer)",
            _get(sd, "writers", "1", "requests_per_put"),
            "req",
            note=f"tuned: {_fmt(_get(st, 'writers', '1', 'requests_per_put'))}",
        )
        kv_seq_rate = 1000 / kv_seq_ms if kv_seq_ms else None
        thr: dict[str, dict[str, float | None]] = {
            "kvstore": {},
            "naive": {},
            "slatedb_default": {},
            "slatedb_tuned": {},
            "icechunk": {},
            "multi": {},
        }
        for w, wr in (r.get("kv_writers") or {}).items():
            kvr = _get(wr, "rate")
            nvr = _get(nv, "writers", w, "rate")
            sdr, str_ = _get(sd, "writers", w, "rate"), _get(st, "writers", w, "rate")
            icr = _get(ic, "writers", w, "rate")
            thr["kvstore"][w], thr["naive"][w] = kvr, nvr
            thr["slatedb_default"][w], thr["slatedb_tuned"][w], thr["icechunk"][w] = sdr, str_, icr
            m = f"{w} writers, 1 process: commits/s"
            t.add(
                sec,
                m,
                kvr,
                "tx/s",
                "naive PUTs/s",
                nvr,
                note=f"{_fmt(_get(wr, 'tx_per_batch'))} tx/batch, {_fmt(_get(wr, 'requests_per_tx'), 3)} req/tx",
            )
            t.add(
                sec,
                "  vs SlateDB (better of default/tuned)",
                kvr,
                "tx/s",
                "SlateDB durable puts/s",
                _best(sdr, str_),
                note=f"default {_fmt(sdr)}, tuned {_fmt(str_)}",
            )
            t.add(
                sec,
                "  vs Icechunk",
                kvr,
                "tx/s",
                "Icechunk commits/s",
                icr,
                note=_unavail(ic)
                or (
                    f"{_get(ic, 'writers', w, 'unfinished')} commits unfinished at the cap"
                    if _get(ic, "writers", w, "unfinished")
                    else ""
                ),
            )
            t.add(sec, "  vs sequential kvstore commits", kvr, "tx/s", "kvstore sequential", kv_seq_rate)
            if w == "64" and r.get("kv_writers_64_no_compaction") is not None:
                t.add(
                    sec,
                    "  same, auto_compact off (diagnosis)",
                    _get(r, "kv_writers_64_no_compaction", "rate"),
                    "tx/s",
                    "64 writers, auto_compact on",
                    kvr,
                    note=f"{_fmt(_get(r, 'kv_writers_64_no_compaction', 'tx_per_batch'))} tx/batch",
                )
            if w == "64" and r.get("kv_writers_64_no_inline") is not None:
                t.add(
                    sec,
                    "  same, inline segments off",
                    _get(r, "kv_writers_64_no_inline", "rate"),
                    "tx/s",
                    "64 writers, inline on",
                    kvr,
                    note=f"{_fmt(_get(r, 'kv_writers_64_no_inline', 'requests_per_tx'), 3)} req/tx",
                )
        w64 = _get(r, "kv_writers", "64", "rate")
        p_dis = r.get("kv_4x16_disjoint", {})
        p_con = r.get("kv_4x16_contended", {})
        thr["multi"]["kvstore_4x16"] = _get(p_dis, "tx_per_s")
        thr["multi"]["icechunk_4x16"] = _get(ic, "processes", "rate")
        spread = _get(p_dis, "per_process_tx_per_s") or []
        t.add(
            sec,
            "4 processes x 16 writers, disjoint keys",
            _get(p_dis, "tx_per_s"),
            "tx/s",
            "1 process x 64",
            w64,
            note=f"{_fmt(_get(p_dis, 'batches_per_s'))} batches/s, {_fmt(_get(p_dis, 'cas_retries_per_s'))} CAS 412/s"
            + (f"; per process {_fmt(min(spread))}-{_fmt(max(spread))} tx/s" if spread else ""),
        )
        p_nc = r.get("kv_4x16_disjoint_no_compaction")
        w64_nc = _get(r, "kv_writers_64_no_compaction", "rate")
        if p_nc is not None:
            t.add(
                sec,
                "  same, auto_compact off (diagnosis)",
                _get(p_nc, "tx_per_s"),
                "tx/s",
                "1 x 64, auto_compact off",
                w64_nc,
                note=f"{_fmt(_get(p_nc, 'batches_per_s'))} batches/s, "
                f"{_fmt(_get(p_nc, 'cas_retries_per_s'))} CAS 412/s",
            )
        p_ni = r.get("kv_4x16_disjoint_no_inline")
        if p_ni is not None:
            t.add(
                sec,
                "  same, inline segments off",
                _get(p_ni, "tx_per_s"),
                "tx/s",
                "4 x 16, inline on",
                _get(p_dis, "tx_per_s"),
                note=f"{_fmt(_get(p_ni, 'batches_per_s'))} batches/s, "
                f"{_fmt(_get(p_ni, 'cas_retries_per_s'))} CAS 412/s",
            )
        t.add(
            sec,
            "  vs Icechunk 4 x 16",
            _get(p_dis, "tx_per_s"),
            "tx/s",
            "Icechunk 4x16 commits/s",
            _get(ic, "processes", "rate"),
            note="SlateDB: single writer per DB (fenced), no multi-process figure",
        )
        t.add(
            sec,
            "4 x 16, contended (RMW of 256 shared keys)",
            _get(p_con, "tx_per_s"),
            "tx/s",
            "4 x 16 disjoint",
            _get(p_dis, "tx_per_s"),
            note=f"{_fmt(_get(p_con, 'conflicts_per_s'))} conflicts/s retried",
        )
        c64 = r.get("kv_contended_1x64", {})
        t.add(
            sec,
            "1 x 64, contended (RMW of 256 keys)",
            _get(c64, "rate"),
            "tx/s",
            "1 x 64 disjoint",
            w64,
            note=f"{_fmt(_get(c64, 'conflicts_per_tx'), 3)} conflicts per committed tx",
        )
        r["throughput"] = thr
        # -- reads
        sec = f"reads {S}"
        wr = r.get("kv_warm_reads", {})
        warm = _get(wr, "snapshot", "gets_per_s")
        sd_get = _best(_get(sd, "best_gets_per_s"), _get(st, "best_gets_per_s"))
        t.add(
            sec,
            "warm point reads (snapshot, 1 segment)",
            warm,
            "gets/s",
            "SlateDB gets/s (best)",
            sd_get,
            note=f"default {_fmt(_get(sd, 'best_gets_per_s'))}, tuned {_fmt(_get(st, 'best_gets_per_s'))}",
        )
        t.add(
            sec,
            "  vs naive GET",
            warm,
            "gets/s",
            "naive GETs/s, 64 in flight",
            _get(nv, "gets", "concurrent64", "rate"),
        )
        t.add(
            sec,
            "  vs Icechunk chunk read",
            warm,
            "gets/s",
            "Icechunk reads/s",
            _get(ic, "gets", "sequential", "gets_per_s"),
        )
        aw = r.get("kv_warm_reads_after_writers", {})
        t.add(
            sec,
            "warm point reads after the 64-writer run",
            _get(aw, "gets_per_s"),
            "gets/s",
            "1-segment store",
            warm,
            note=f"store at version {_get(aw, 'version')}",
        )
        sg = _get(wr, "store_get")
        t.add(
            sec,
            "store-level db.get (latest, max_staleness 0)",
            _get(sg, "gets_per_s"),
            "gets/s",
            "floor: 304 GET/s",
            1000 / _get(fl, "get_304", "mean_ms") if _get(fl, "get_304", "mean_ms") else None,
            note=f"{_kinds(_get(sg, 'requests_per_get'))} per get",
        )
        cr = r.get("kv_cold_reads", {})
        t.add(
            sec,
            "cold point read, GETs (large segments)",
            _get(cr, "large_segments", "gets_first_read"),
            "GET",
            "target",
            2,
            note=f"index cached: {_fmt(_get(cr, 'large_segments', 'gets_index_cached'))} GET",
        )
        t.add(
            sec,
            "  latency of that first read",
            _get(cr, "large_segments", "first_read_ms"),
            "ms",
            "floor: 1 GET",
            _get(fl, "get", "mean_ms"),
        )
        t.add(
            sec,
            f"cold point read after {_get(cr, 'overlay_commits')} small commits",
            _get(cr, "after_small_commits", "gets_first_read"),
            "GET",
            "target",
            2,
            note=f"index cached: {_fmt(_get(cr, 'after_small_commits', 'gets_index_cached'))} GET",
        )
        # -- ceiling
        sec = f"single-manifest ceiling {S}"
        for n, c in (r.get("ceiling") or {}).items():
            t.add(
                sec,
                f"{n} process(es) x {_get(c, 'writers_per_process')} writers: committed batches/s",
                _get(c, "batches_per_s"),
                "batch/s",
                "1 / CAS floor",
                1000 / commit_floor if commit_floor else None,
                note=f"{_fmt(_get(c, 'tx_per_s'))} tx/s, {_fmt(_get(c, 'cas_retries_per_s'))} CAS 412/s",
            )
        # -- proxy validation
        if "floor_via_proxy" in peers:
            sec = f"latency model check {S}"
            t.add(
                sec,
                "GET through the delay proxy",
                _get(peers, "floor_via_proxy", "get", "mean_ms"),
                "ms",
                "in-process injected GET",
                _get(fl, "get", "mean_ms"),
            )
            t.add(
                sec,
                "PUT through the delay proxy",
                _get(peers, "floor_via_proxy", "put", "mean_ms"),
                "ms",
                "in-process injected PUT",
                _get(fl, "put", "mean_ms"),
                note="the proxy delays each direction; kvstore no longer sends Expect: 100-continue",
            )
            t.add(
                sec,
                "kvstore sequential commit through the proxy",
                _get(peers, "kv_sequential_via_proxy", "default", "mean_ms"),
                "ms",
                "in-process injected",
                kv_seq_ms,
            )

        # -- targets at this latency
        c_def = cvf.get("default") if isinstance(cvf.get("default"), dict) else None
        if _get(c_def, "ratio_mean") is not None:
            target(
                f"{S}: sequential commit latency <= 1.15 x floor (interleaved)",
                _get(c_def, "ratio_mean"),
                1.15,
                "<=",
                f"{_fmt(_get(c_def, 'kv_mean_ms'))} ms vs {_fmt(_get(c_def, 'floor_mean_ms'))} ms; auto_compact off: "
                f"{_fmt(_get(cvf, 'no_compaction', 'ratio_mean'))}x; measured apart: "
                f"{_fmt(_ratio(kv_seq_ms, commit_floor))}x (auto_compact off "
                f"{_fmt(_ratio(_get(seq_nc, 'mean_ms'), commit_floor))}x)",
            )
        else:
            target(
                f"{S}: sequential commit latency <= 1.15 x floor",
                _ratio(kv_seq_ms, commit_floor),
                1.15,
                "<=",
                f"{_fmt(kv_seq_ms)} ms vs {_fmt(commit_floor)} ms",
            )
        target(f"{S}: <= 2 requests per small commit", req_commit, 2, "<=")
        target(
            f"{S}: 64 writers >= 30 x sequential rate",
            _ratio(w64, kv_seq_rate),
            30,
            ">=",
            f"{_fmt(w64)} vs {_fmt(kv_seq_rate)} tx/s",
        )
        sd64 = _best(_get(sd, "writers", "64", "rate"), _get(st, "writers", "64", "rate"))
        target(
            f"{S}: 64 writers >= 2 x SlateDB durable puts (better config)",
            _ratio(w64, sd64),
            2,
            ">=",
            f"{_fmt(w64)} vs {_fmt(sd64)} /s" + (f" ({_unavail(sd)})" if _unavail(sd) else ""),
        )
        target(
            f"{S}: 4x16 disjoint >= 0.6 x 1x64",
            _ratio(_get(p_dis, "tx_per_s"), w64),
            0.6,
            ">=",
            f"{_fmt(_get(p_dis, 'tx_per_s'))} vs {_fmt(w64)} tx/s",
        )
        target(f"{S}: warm point reads >= 50,000 gets/s", warm, 50_000, ">=")
        target(
            f"{S}: warm point reads >= 5 x SlateDB gets",
            _ratio(warm, sd_get),
            5,
            ">=",
            f"{_fmt(warm)} vs {_fmt(sd_get)} /s",
        )
        target(
            f"{S}: cold point read <= 2 GETs (empty cache, large segment)",
            _get(cr, "large_segments", "gets_first_read"),
            2,
            "<=",
            f"index cached: {_fmt(_get(cr, 'large_segments', 'gets_index_cached'))}; after small commits: "
            f"{_fmt(_get(cr, 'after_small_commits', 'gets_first_read'))}",
        )

    # -- once
    sec = "scans from cache @0 ms"
    sc = once.get("kv_scans", {})
    sd0 = _get(lat0, "peers", "slatedb_default", "scan", "entries_per_s")
    scan_rate = _get(sc, "disjoint_segments", "entries_per_s")
    t.add(sec, "full scan, large disjoint segments", scan_rate, "entries/s", "SlateDB scan (next_batch 1024)", sd0)
    t.add(
        sec,
        "  vs naive LIST + GET per key",
        scan_rate,
        "entries/s",
        "naive scan",
        _get(lat0, "naive", "scan", "entries_per_s"),
    )
    t.add(
        sec,
        "full scan, 8 overlapping segments (merge)",
        _get(sc, "merge_8_segments", "entries_per_s"),
        "entries/s",
        "disjoint segments",
        scan_rate,
    )
    target("scans from cache >= 300,000 entries/s", scan_rate, 300_000, ">=")

    sec = "bulk load @0 ms"
    bk = once.get("bulk", {})
    bw = once.get("put_bandwidth", {})
    for how, label in (("bulk_load", "Store.bulk_load"), ("transactions", "transactions of 50k keys")):
        b = _get(bk, how)
        if b is None:
            continue
        t.add(
            sec,
            f"bulk load {_get(b, 'entries')} x (15 B key + 100 B value), {label}",
            _get(b, "mb_per_s"),
            "MB/s",
            "raw PUT bandwidth (best)",
            _get(bw, "best_mb_per_s"),
            note=f"{_fmt(_get(b, 'entries_per_s'))} entries/s; raw 1 stream {_fmt(_get(bw, 'x1', 'mb_per_s'))}, "
            f"4 streams {_fmt(_get(bw, 'x4', 'mb_per_s'))} MB/s; {_kinds(_get(b, 'delta', 'requests'))}",
        )
    target(
        "bulk load >= 0.5 x raw PUT bandwidth",
        _ratio(_get(bk, "mb_per_s"), _get(bw, "best_mb_per_s")),
        0.5,
        ">=",
        f"{_get(bk, 'method')}: {_fmt(_get(bk, 'mb_per_s'))} vs {_fmt(_get(bw, 'best_mb_per_s'))} MB/s",
    )

    sec = "memory @0 ms"
    mem = once.get("memory", {})
    verdicts = []
    for cache, m in mem.items():
        if not isinstance(m, dict) or "growth" not in m:
            continue
        c = int(cache)
        t.add(
            sec,
            f"peak RSS growth scanning {_mb(m['store_bytes'])} MiB, cache {_mb(c)} MiB",
            m["growth"] / 2**20,
            "MiB",
            "cache_bytes",
            c / 2**20,
            note=f"cache's own count at the end: {_mb(m['cache_accounted_bytes'])} MiB",
        )
        verdicts.append((m["growth"] <= c + MEMORY_ALLOWANCE and m["store_bytes"] > c, m["growth"], c))
    if verdicts:
        worst = max(verdicts, key=lambda v: v[1] - v[2])
        target(
            f"memory bounded by cache (+{MEMORY_ALLOWANCE >> 20} MiB) scanning a store > cache",
            (worst[1] - worst[2]) / 2**20,
            MEMORY_ALLOWANCE / 2**20,
            "<=",
            "growth over cache, MiB; " + ", ".join(f"cache {_mb(c)} MiB: +{_mb(g)} MiB" for _, g, c in verdicts),
        )

    sec = "local filesystem @0 ms"
    fs = once.get("fs", {})
    fseq = _get(fs, "kv_sequential", "default", "mean_ms")
    t.add(
        sec, "sequential commit latency", fseq, "ms", "floor: link + flock/rename", _get(fs, "floor", "commit_floor_ms")
    )
    for w, wr in (fs.get("kv_writers") or {}).items():
        t.add(
            sec,
            f"{w} writers: commits/s",
            _get(wr, "rate"),
            "tx/s",
            "kvstore sequential",
            1000 / fseq if fseq else None,
            note=f"{_fmt(_get(wr, 'tx_per_batch'))} tx/batch",
        )
    t.add(
        sec,
        "4 x 16 disjoint",
        _get(fs, "kv_4x16_disjoint", "tx_per_s"),
        "tx/s",
        "1 x 64",
        _get(fs, "kv_writers", "64", "rate"),
    )
    return t.rows, targets


def _ratio(a: Any, b: Any) -> float | None:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
        return a / b
    return None


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:
            return "-"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}g}"
    return str(v)


def _mb(b: float) -> str:
    """MiB."""
    return f"{b / 2**20:.0f}" if b >= 2**20 * 10 else f"{b / 2**20:.1f}"


def _kinds(d: Any) -> str:
    if not isinstance(d, dict):
        return ""
    return " + ".join(f"{_fmt(v, 2)} {k}" for k, v in sorted(d.items()))


def _peer_status(results: dict[str, Any]) -> list[str]:
    lines = []
    for lat, r in results.get("latency", {}).items():
        for name in ("slatedb_default", "slatedb_tuned", "icechunk"):
            p = r.get("peers", {}).get(name)
            if p is None:
                lines.append(f"@{lat} ms {name}: not run")
            elif "unavailable" in p:
                lines.append(f"@{lat} ms {name}: unavailable: {p['unavailable']}")
    return lines


def render_text(results: dict[str, Any]) -> str:
    rows = results.get("table", [])
    out = []
    m = results.get("meta", {})
    out.append(f"kvstore benchmark ({m.get('mode')}) {m.get('date')}  machine: {m.get('machine')}")
    out.append(f"load average at start: {m.get('loadavg_start')}  end: {m.get('loadavg_end')}")
    section = None
    for r in rows:
        if r["section"] != section:
            section = r["section"]
            out.append("")
            out.append(f"== {section}")
            out.append(
                f"  {'metric':<52} {'kvstore':>12} {'unit':<9} {'baseline':<34} {'value':>12} {'ratio':>8}  note"
            )
        out.append(
            f"  {r['metric']:<52} {_fmt(r['kvstore']):>12} {r['unit']:<9} {r['baseline']:<34} "
            f"{_fmt(r['baseline_value']):>12} {_ratio_fmt(r['ratio']):>8}  {r['note']}"
        )
    out.append("")
    out.append("== targets")
    for tg in results.get("targets", []):
        out.append(
            f"  [{tg['status']:<4}] {tg['target']}: {_fmt(tg['value'])} (need {tg['op']} {_fmt(tg['threshold'])})"
            + (f"  {tg['detail']}" if tg["detail"] else "")
        )
    status = _peer_status(results)
    if status:
        out.append("")
        out.append("== peers not measured")
        out.extend(f"  {s}" for s in status)
    prof = _profile_lines(results)
    if prof:
        out.append("")
        out.append("== profiles (client process)")
        out.extend(f"  {s}" for s in prof)
    return "\n".join(out)


def _profile_lines(results: dict[str, Any], top: int = 8) -> list[str]:
    lines = []
    for workload, p in (results.get("once", {}).get("profile") or {}).items():
        if not isinstance(p, dict) or "self_pct" not in p:
            continue
        lines.append(f"{workload}: {p.get('profiler')}, {p.get('samples', p.get('seconds'))} samples")
        lines.append("  by library: " + ", ".join(f"{k} {v}%" for k, v in p["by_library_pct"]))
        lines.append("  top self time: " + "; ".join(f"{k} {v}%" for k, v in p["self_pct"][:top]))
        lines.append("  kvstore inclusive: " + "; ".join(f"{k} {v}%" for k, v in p["kvstore_inclusive_pct"][:top]))
    return lines


def _ratio_fmt(r: Any) -> str:
    return "-" if r is None else f"{r:.2f}x"


def render_markdown(results: dict[str, Any]) -> str:
    out = [
        "| section | metric | kvstore | unit | baseline | baseline value | ratio | note |",
        "|---|---|---:|---|---|---:|---:|---|",
    ]
    for r in results.get("table", []):
        metric = r["metric"].replace("  ", "&nbsp;&nbsp;", 1) if r["metric"].startswith("  ") else r["metric"]
        out.append(
            f"| {r['section']} | {metric} | {_fmt(r['kvstore'])} | {r['unit']} | {r['baseline']} | "
            f"{_fmt(r['baseline_value'])} | {_ratio_fmt(r['ratio'])} | {r['note']} |"
        )
    out.append("")
    out.append("| target | status | value | needed | detail |")
    out.append("|---|---|---:|---|---|")
    for tg in results.get("targets", []):
        out.append(
            f"| {tg['target']} | **{tg['status']}** | {_fmt(tg['value'])} | {tg['op']} {_fmt(tg['threshold'])} | {tg['detail']} |"
        )
    status = _peer_status(results)
    if status:
        out.append("")
        out.extend(f"* {s}" for s in status)
    prof = _profile_lines(results)
    if prof:
        out.append("")
        out.append("Profiles (client process):")
        out.append("")
        out.extend(f"    {s}" for s in prof)
    return "\n".join(out) + "\n"
