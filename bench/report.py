"""The Markdown report of a run: one table per workload with every row's
medians (wall and CPU time, file size, peak RSS of dump and load), the
ratios the README quotes, and the summaries."""
from __future__ import annotations

from contenders import LOOP
from measure import SCALING_CODECS

MB = 1e6


def _get(res: dict, contender: str, op: str, field: str = "median_s"):
    for r in res["contenders"]:
        if r["contender"] == contender and op in r:
            return r[op].get(field)
    return None


def _size(res: dict, contender: str):
    for r in res["contenders"]:
        if r["contender"] == contender:
            return r.get("file_bytes")
    return None


def _fmt_t(v):
    if v is None:
        return "–"
    return f"{v:.4f}" if v < 10 else f"{v:.2f}"


def _fmt_mb(v):
    return "–" if v is None else f"{v / MB:.1f}"


def _ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def _fmt_r(v):
    return "–" if v is None else f"{v:.2f}×"


def render(results: list[dict], meta: dict) -> str:
    out = [f"# firkin benchmark ({meta['size']} run)", ""]
    out.append(f"{meta['started']}, {meta['cpu_count']} CPUs, Python {meta['versions']['python']}, "
               f"firkin {meta['firkin'].get('version')}, joblib {meta['versions']['joblib']}, "
               f"numpy {meta['versions']['numpy']}, scikit-learn {meta['versions']['scikit-learn']}, "
               f"pandas {meta['versions']['pandas']}; commit {meta['git']['commit'][:10]}"
               f"{' (dirty tree)' if meta['git']['dirty'] else ''}; "
               f"firkin imported from {meta['firkin'].get('file')}.")
    out.append("Medians over fresh processes; loads from the page cache; dumps of firkin, "
               "pickle5 and raw-write include fsync + rename, joblib.dump does not fsync; "
               "firkin-nodurable and pickle5-nosync rename without fsync. CPU = process CPU "
               "time (all threads). RSS Δ = peak RSS during the operation minus RSS before it. "
               f"Load average {meta.get('loadavg_start')} at the start, "
               f"{meta.get('loadavg_end')} at the end.")
    out.append("")
    for res in results:
        b = res["build"]
        extra = {k: v for k, v in b.items() if k in ("fit_s", "vocabulary", "documents", "arrays",
                                                      "nbytes", "total_nodes", "memory_bytes")}
        out.append(f"## {res['workload']}")
        out.append("")
        out.append(f"params {res['params']}; {extra}; repeat {res['repeat']}"
                   + ("" if res["checks_consistent"] else "; **loaded values differ!**"))
        out.append("")
        out.append("| contender | dump (s) | dump CPU (s) | load (s) | load CPU (s) "
                   "| file size (MB) | dump peak RSS Δ (MB) | load peak RSS Δ (MB) |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in res["contenders"]:
            d, l = r.get("dump", {}), r.get("load", {})
            cells = [r["contender"]]
            for x in (d, l):
                if x.get("error") and not x.get("n"):
                    cells += ["ERR", "ERR"]
                    continue
                t = _fmt_t(x.get("median_s"))
                cells.append(f"{t} (n={x['n']})" if x.get("error") else t)  # some runs failed
                cells.append(_fmt_t(x.get("cpu_median_s")))
            cells.append(_fmt_mb(r.get("file_bytes")))
            cells.append(_fmt_mb(d.get("peak_rss_delta_median")))
            cells.append(_fmt_mb(l.get("peak_rss_delta_median")))
            out.append("| " + " | ".join(cells) + " |")
        errs = [(r["contender"], op, r[op]["error"]) for r in res["contenders"]
                for op in ("dump", "load") if op in r and r[op].get("error")]
        for c, op, e in errs:
            out.append(f"\n- {c} {op} error: `{e[:300]}`")
        out.append("")
        w = res
        lines = []
        lines.append(f"- joblib/firkin: dump {_fmt_r(_ratio(_get(w, 'joblib', 'dump'), _get(w, 'firkin', 'dump')))}, "
                     f"load {_fmt_r(_ratio(_get(w, 'joblib', 'load'), _get(w, 'firkin', 'load')))} (>1: firkin faster)")
        lines.append(f"- pickle5/firkin: dump {_fmt_r(_ratio(_get(w, 'pickle5', 'dump'), _get(w, 'firkin', 'dump')))}, "
                     f"load {_fmt_r(_ratio(_get(w, 'pickle5', 'load'), _get(w, 'firkin', 'load')))} (>1: firkin faster)")
        lines.append(f"- same durability: firkin/pickle5 dump {_fmt_r(_ratio(_get(w, 'firkin', 'dump'), _get(w, 'pickle5', 'dump')))} "
                     f"(CPU {_fmt_r(_ratio(_get(w, 'firkin', 'dump', 'cpu_median_s'), _get(w, 'pickle5', 'dump', 'cpu_median_s')))}), "
                     f"firkin-nodurable/pickle5-nosync dump {_fmt_r(_ratio(_get(w, 'firkin-nodurable', 'dump'), _get(w, 'pickle5-nosync', 'dump')))}; "
                     f"firkin/pickle5 load {_fmt_r(_ratio(_get(w, 'firkin', 'load'), _get(w, 'pickle5', 'load')))} "
                     f"(CPU {_fmt_r(_ratio(_get(w, 'firkin', 'load', 'cpu_median_s'), _get(w, 'pickle5', 'load', 'cpu_median_s')))}) (<1: firkin faster)")
        lines.append(f"- durable=False: firkin-nodurable/joblib dump "
                     f"{_fmt_r(_ratio(_get(w, 'firkin-nodurable', 'dump'), _get(w, 'joblib', 'dump')))} "
                     f"(<1: firkin faster; neither fsyncs)")
        if _get(w, "firkin-nodurable-x100", "dump"):
            lines.append(f"- durable=False, {LOOP} dumps in one process: firkin-nodurable-x100/joblib-x100 "
                         f"{_fmt_r(_ratio(_get(w, 'firkin-nodurable-x100', 'dump'), _get(w, 'joblib-x100', 'dump')))} "
                         f"(CPU {_fmt_r(_ratio(_get(w, 'firkin-nodurable-x100', 'dump', 'cpu_median_s'), _get(w, 'joblib-x100', 'dump', 'cpu_median_s')))}; "
                         "<1: firkin faster)")
        lines.append(f"- mmap load: firkin-mmap {_fmt_t(_get(w, 'firkin-mmap', 'load'))} s, "
                     f"joblib-mmap {_fmt_t(_get(w, 'joblib-mmap', 'load'))} s")
        lines.append(f"- file size firkin/pickle5: {_fmt_r(_ratio(_size(w, 'firkin'), _size(w, 'pickle5')))}, "
                     f"firkin/joblib: {_fmt_r(_ratio(_size(w, 'firkin'), _size(w, 'joblib')))}")
        if _get(w, "firkin-trusted", "load"):
            lines.append(f"- trust policy (scan + find_class) cost on load: firkin/firkin-trusted "
                         f"{_fmt_r(_ratio(_get(w, 'firkin', 'load'), _get(w, 'firkin-trusted', 'load')))}")
        if _get(w, "firkin-joblibfile", "load"):
            lines.append(f"- loading joblib's file: joblib.load/firkin.load "
                         f"{_fmt_r(_ratio(_get(w, 'joblib', 'load'), _get(w, 'firkin-joblibfile', 'load')))} "
                         "(>1: firkin faster)")
        if _get(w, "firkin-progress", "dump") and _get(w, "firkin-noprogress", "dump"):
            lines.append(f"- progress bar cost: dump {_fmt_r(_ratio(_get(w, 'firkin-progress', 'dump'), _get(w, 'firkin-noprogress', 'dump')))}, "
                         f"load {_fmt_r(_ratio(_get(w, 'firkin-progress', 'load'), _get(w, 'firkin-noprogress', 'load')))} "
                         "(progress=True over progress=False)")
        if w["workload"] == "array512":
            lines.append(f"- firkin/raw-write dump: {_fmt_r(_ratio(_get(w, 'firkin', 'dump'), _get(w, 'raw-write', 'dump')))} "
                         "(1.00× = as fast as one write() + fsync + rename)")
            lines.append(f"- firkin/raw-readinto-prefaulted load: "
                         f"{_fmt_r(_ratio(_get(w, 'firkin', 'load'), _get(w, 'raw-readinto-prefaulted', 'load')))}; "
                         f"firkin/raw-readinto-alloc load: "
                         f"{_fmt_r(_ratio(_get(w, 'firkin', 'load'), _get(w, 'raw-readinto-alloc', 'load')))}; "
                         f"without checksums (firkin-noverify/raw-readinto-alloc): "
                         f"{_fmt_r(_ratio(_get(w, 'firkin-noverify', 'load'), _get(w, 'raw-readinto-alloc', 'load')))}")
        out.append("Ratios:")
        out.append("")
        out.extend(lines)
        out.append("")

    if len(results) > 1:
        out.append("## Summary (ratios of medians)")
        out.append("")
        out.append("| workload | joblib/firkin dump | joblib/firkin load | pickle5/firkin dump "
                   "| pickle5/firkin load | joblib/firkin-nodurable dump | size firkin/pickle5 "
                   "| firkin-mmap load (s) | joblib-mmap load (s) |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for w in results:
            out.append("| " + " | ".join([
                w["workload"],
                _fmt_r(_ratio(_get(w, "joblib", "dump"), _get(w, "firkin", "dump"))),
                _fmt_r(_ratio(_get(w, "joblib", "load"), _get(w, "firkin", "load"))),
                _fmt_r(_ratio(_get(w, "pickle5", "dump"), _get(w, "firkin", "dump"))),
                _fmt_r(_ratio(_get(w, "pickle5", "load"), _get(w, "firkin", "load"))),
                _fmt_r(_ratio(_get(w, "joblib", "dump"), _get(w, "firkin-nodurable", "dump"))),
                _fmt_r(_ratio(_size(w, "firkin"), _size(w, "pickle5"))),
                _fmt_t(_get(w, "firkin-mmap", "load")),
                _fmt_t(_get(w, "joblib-mmap", "load")),
            ]) + " |")
        out.append("")
    return "\n".join(out)


def _row(res: dict, contender: str):
    for r in res["contenders"]:
        if r["contender"] == contender:
            return r
    return None


def _cget(res: dict, contender: str, op: str, field: str = "median_s"):
    r = _row(res, contender)
    return None if r is None else (r.get(op) or {}).get(field)


def _fmt_ok(v):
    return "–" if v is None else ("pass" if v else "**FAIL**")


def _fmt_num(v, digits=0):
    return "–" if v is None else f"{v:.{digits}f}"


def compress_ratios(w: dict) -> dict:
    """The headline ratios of one workload (None where a contender is missing)."""
    jz_d, jz_l = _cget(w, "joblib-zlib-3", "dump"), _cget(w, "joblib-zlib-3", "load")
    jz_size = (_row(w, "joblib-zlib-3") or {}).get("file_bytes")
    fz = _row(w, "firkin-zlib-3") or {}
    fs = _row(w, "firkin-zstd-3") or {}
    firkin_rows = [r for r in w["contenders"] if r["lib"] == "firkin"]
    dump_deltas = [r["dump"]["peak_rss_delta_max"] for r in firkin_rows
                   if r["dump"]["peak_rss_delta_max"] is not None]
    return {
        "zlib3_dump_speedup": _ratio(jz_d, (fz.get("dump") or {}).get("median_s")),
        "zlib3_load_speedup": _ratio(jz_l, (fz.get("load") or {}).get("median_s")),
        "zlib3_size_ratio": _ratio(fz.get("file_bytes"), jz_size),
        "zstd3_dump_speedup": _ratio(jz_d, (fs.get("dump") or {}).get("median_s")),
        "zstd3_load_speedup": _ratio(jz_l, (fs.get("load") or {}).get("median_s")),
        "zstd3_size_ratio": _ratio(fs.get("file_bytes"), jz_size),
        "zlib3_over_none_dump": _ratio((fz.get("dump") or {}).get("median_s"),
                                       _cget(w, "firkin-none", "dump")),
        "zstd3_over_none_dump": _ratio((fs.get("dump") or {}).get("median_s"),
                                       _cget(w, "firkin-none", "dump")),
        "rss_all_ok": all(r["rss_ok"][op] for r in firkin_rows for op in ("dump", "load")
                          if r["rss_ok"][op] is not None),
        "firkin_dump_delta_max": max(dump_deltas, default=None),
    }


def render_compress(results: list[dict], meta: dict) -> str:
    out = [f"# firkin compression benchmark ({meta['size']} run)", ""]
    out.append(f"{meta['started']}, {meta['cpu_count']} CPUs, Python {meta['versions']['python']}, "
               f"firkin {meta['firkin'].get('version')}, joblib {meta['versions']['joblib']}, "
               f"lz4 {meta['versions'].get('lz4')}, numpy {meta['versions']['numpy']}; "
               f"commit {meta['git']['commit'][:10]}{' (dirty tree)' if meta['git']['dirty'] else ''}.")
    out.append("Medians over fresh processes; loads from the page cache; firkin dumps fsync + rename, "
               "joblib.dump does not. firkin uses all cores (threads=None). raw = size of the "
               "uncompressed firkin file; ratio = raw / file size; MB/s = raw / median time. "
               "RSS: Δ = peak during the operation minus RSS before it (abs = absolute peak); "
               "bound = arrays' bytes + threads·4·1 MiB + 32 MiB, checked against the largest Δ "
               "over the repetitions.")
    for note in meta.get("compress_skipped", []):
        out.append(f"Skipped: {note}.")
    out.append("")
    for w in results:
        out.append(f"## {w['workload']} (compression)")
        out.append("")
        out.append(f"params {w['params']}; raw {_fmt_mb(w['raw_bytes'])} MB; arrays' bytes "
                   f"{_fmt_mb(w['array_bytes'])} MB; RSS bound {_fmt_mb(w['rss_bound'])} MB "
                   f"({w['threads']} threads); repeat {w['repeat']}"
                   + ("" if w["checks_consistent"] else "; **loaded values differ!**"))
        out.append("")
        out.append("| contender | dump (s) | load (s) | size (MB) | ratio | dump MB/s | load MB/s "
                   "| dump RSS Δ / abs (MB) | load RSS Δ / abs (MB) | RSS ≤ bound (dump/load) |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in w["contenders"]:
            cells = [r["contender"]]
            for op in ("dump", "load"):
                x = r[op]
                if x.get("error") and not x.get("n"):
                    cells.append("ERR")
                elif x.get("error"):
                    cells.append(f"{_fmt_t(x.get('median_s'))} (n={x['n']})")
                else:
                    cells.append(_fmt_t(x.get("median_s")))
            cells.append(_fmt_mb(r["file_bytes"]))
            cells.append(_fmt_num(r["ratio"], 2))
            cells.append(_fmt_num(r["dump_MBps"]))
            cells.append(_fmt_num(r["load_MBps"]))
            for op in ("dump", "load"):
                cells.append(f"{_fmt_mb(r[op]['peak_rss_delta_median'])} / "
                             f"{_fmt_mb(r[op]['peak_rss_abs_median'])}")
            cells.append(f"{_fmt_ok(r['rss_ok']['dump'])} / {_fmt_ok(r['rss_ok']['load'])}")
            out.append("| " + " | ".join(cells) + " |")
        for r in w["contenders"]:
            for op in ("dump", "load"):
                if r[op].get("error"):
                    out.append(f"\n- {r['contender']} {op} error: `{r[op]['error'][:300]}`")
        out.append("")
        q = compress_ratios(w)
        out.append("Ratios (speedup > 1: firkin faster; size < 1: firkin smaller):")
        out.append("")
        out.append(f"- zlib 3: firkin vs joblib compress=3: dump {_fmt_r(q['zlib3_dump_speedup'])}, "
                   f"load {_fmt_r(q['zlib3_load_speedup'])}, size firkin/joblib "
                   f"{_fmt_r(q['zlib3_size_ratio'])}")
        out.append(f"- zstd 3: firkin vs joblib compress=3: dump {_fmt_r(q['zstd3_dump_speedup'])}, "
                   f"load {_fmt_r(q['zstd3_load_speedup'])}, size firkin/joblib "
                   f"{_fmt_r(q['zstd3_size_ratio'])}")
        target = ""
        if w["workload"] == "float_random" and q["zlib3_over_none_dump"] is not None:
            target = f" — {_fmt_ok(q['zlib3_over_none_dump'] <= 2)} (target ≤ 2 on incompressible data)"
        out.append(f"- firkin dump time, compress=3 / uncompressed: {_fmt_r(q['zlib3_over_none_dump'])}"
                   f"{target}; zstd 3 / uncompressed: {_fmt_r(q['zstd3_over_none_dump'])}")
        d = q["firkin_dump_delta_max"]
        out.append(f"- peak RSS: every firkin row within the bound: {_fmt_ok(q['rss_all_ok'])}; "
                   f"largest firkin dump Δ {_fmt_mb(d)} MB vs buffers-only "
                   f"threads·4·1 MiB + 32 MiB = {_fmt_mb(w['dump_overhead_bound'])} MB: "
                   f"{_fmt_ok(None if d is None else d <= w['dump_overhead_bound'])}")
        out.append("")

    out.append("## Summary (compression)")
    out.append("")
    out.append("| workload | zlib3 dump speedup | zlib3 load speedup | zlib3 size f/j "
               "| zstd3 dump speedup | zstd3 size f/j | zlib3/none dump | RSS bound |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---|")
    for w in results:
        q = compress_ratios(w)
        out.append("| " + " | ".join([
            w["workload"], _fmt_r(q["zlib3_dump_speedup"]), _fmt_r(q["zlib3_load_speedup"]),
            _fmt_r(q["zlib3_size_ratio"]), _fmt_r(q["zstd3_dump_speedup"]),
            _fmt_r(q["zstd3_size_ratio"]), _fmt_r(q["zlib3_over_none_dump"]),
            _fmt_ok(q["rss_all_ok"])]) + " |")
    out.append("")
    out.append("speedups are joblib compress=3 time / firkin time; size f/j = firkin file / joblib "
               "compress=3 file.")
    out.append("")
    return "\n".join(out)


def render_scaling(res: dict, meta: dict) -> str:
    out = [f"# firkin dump throughput vs threads ({meta['size']} run)", ""]
    out.append(f"{res['workload']} {res['params']}, raw {_fmt_mb(res['raw_bytes'])} MB; "
               f"{meta['cpu_count']} CPUs; MB/s = raw bytes / median dump time (fsync included); "
               f"repeat {res['repeat']}; load average at start {meta['loadavg_start']}.")
    out.append("")
    head = ["threads"]
    for c, lvl in SCALING_CODECS:
        head += [f"{c} {lvl} dump (s)", f"{c} {lvl} MB/s", f"{c} {lvl} vs 1 thread"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---:|" * len(head))
    by = {(r["codec"], r["level"], r["threads"]): r for r in res["rows"]}
    for t in res["thread_counts"]:
        cells = [str(t)]
        for c, lvl in SCALING_CODECS:
            r, r1 = by[(c, lvl, t)], by[(c, lvl, res["thread_counts"][0])]
            cells += [_fmt_t(r["dump"]["median_s"]), _fmt_num(r["dump_MBps"]),
                      _fmt_r(_ratio(r["dump_MBps"], r1["dump_MBps"]))]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    return "\n".join(out)


