#!/usr/bin/env python
"""Side-by-side benchmark of firkin against joblib, pickle (protocol 5) and raw I/O.

    python bench/bench.py                                  # full run (~10 min)
    python bench/bench.py --workloads forest,pipeline --repeat 7
    python bench/bench.py --quick                          # smoke test (< 1 min)
    python bench/bench.py --suite compress                 # compression suite (~12 min)
    python bench/bench.py --suite all                      # both suites
    python bench/bench.py --threads-scaling --quick        # dump MB/s vs threads

Every measurement (one dump or one load of one workload by one contender) runs
in a fresh interpreter (``python bench.py --one SPEC``) that first imports
everything the workload needs and, for dumps, unpickles the workload from a
build cache; only the operation itself is timed (time.perf_counter). Peak RSS
is measured around the operation (VmHWM after resetting it through
/proc/self/clear_refs; getrusage's ru_maxrss is recorded too). Each
(contender, workload, op) is repeated and the median is reported. Contenders
are interleaved round-robin so that a burst of noise from other processes on
the machine hits all of them alike.

Loads are measured from the page cache: files were just written and are read
once more before the load phase, and nothing is dropped from the cache.

The code: workloads.py (what is measured, a registry), contenders.py (who,
a registry), measure.py (the measuring process and the suites), report.py
(the Markdown tables); this file is the command line. See bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

from measure import (
    SCALING_WORKLOAD,
    SLOW_CODEC_WORKLOADS,
    array_bytes_of,
    bench_compress_workload,
    bench_workload,
    compress_contenders,
    ensure_array_bytes,
    ensure_cache,
    firkin_info,
    git_state,
    log,
    run_one,
    run_threads_scaling,
    versions,
)
from report import render, render_compress, render_scaling
from workloads import ALL_WORKLOADS, COMPRESS_WORKLOADS, SIZES, WORKLOADS, build

HERE = os.path.dirname(os.path.abspath(__file__))
BIG_WORKLOADS = {n for n, w in WORKLOADS.items() if w.big}  # fewer repetitions by default


def write_atomic(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=["default", "compress", "all"], default=None,
                    help="default: firkin vs joblib/pickle/raw I/O (the default); compress: "
                         "codecs and levels vs joblib compression; all: both. With "
                         "--threads-scaling and no --suite, only the scaling study runs")
    ap.add_argument("--workloads", default=None,
                    help=f"comma-separated subset of the suite's workloads (default suite: "
                         f"{','.join(ALL_WORKLOADS)}; compress suite: {','.join(COMPRESS_WORKLOADS)})")
    ap.add_argument("--repeat", type=int, default=None,
                    help="repetitions per (contender, workload, op); default 5, 3 for "
                         f"{','.join(sorted(BIG_WORKLOADS))} and for every workload of the "
                         "compress suite; 1 with --quick")
    ap.add_argument("--quick", action="store_true",
                    help="much smaller workloads, for smoke testing (results are not meaningful)")
    ap.add_argument("--threads-scaling", action="store_true",
                    help=f"dump MB/s of {SCALING_WORKLOAD} with zstd 3 and zlib 3 for "
                         "threads = 1, 2, 4, 8, 16 (capped at the CPU count)")
    ap.add_argument("--all-codecs", action="store_true",
                    help="compress suite: run bz2 and xz on every workload (default: only on "
                         f"{','.join(sorted(SLOW_CODEC_WORKLOADS))})")
    ap.add_argument("--dir", default=None,
                    help="where the dumped files go (a fresh subdirectory is made and removed); "
                         "default: the system temp dir")
    ap.add_argument("--cache-dir", default=os.path.join(HERE, ".cache"),
                    help="where built workloads are cached (default bench/.cache)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild cached workloads")
    ap.add_argument("--json", default=None,
                    help="default-suite results file (default bench/results/latest.json, "
                         "quick.json with --quick)")
    ap.add_argument("--compress-json", default=None,
                    help="compress-suite results file (default bench/results/compress.json, "
                         "compress-quick.json with --quick)")
    ap.add_argument("--scaling-json", default=None,
                    help="threads-scaling results file (default bench/results/threads.json, "
                         "threads-quick.json with --quick)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per measuring process")
    # internal
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--build", help=argparse.SUPPRESS)
    ap.add_argument("--array-bytes", help=argparse.SUPPRESS)
    ap.add_argument("--size", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.one:
        res = run_one(json.loads(args.one))
        print("@@RESULT " + json.dumps(res), flush=True)
        return 0
    if args.build:
        import pickle

        value, info = build(args.build, args.size)
        tmp = args.out + ".tmp"
        with open(tmp, "wb") as f:
            pickle.dump(value, f, protocol=5)
        os.replace(tmp, args.out)
        print("@@RESULT " + json.dumps(info), flush=True)
        return 0
    if args.array_bytes:
        print("@@RESULT " + json.dumps(array_bytes_of(args.array_bytes)), flush=True)
        return 0

    if args.suite is None:
        suites = [] if args.threads_scaling else ["default"]
    elif args.suite == "all":
        suites = ["default", "compress"]
    else:
        suites = [args.suite]
    suite_workloads = {"default": ALL_WORKLOADS, "compress": COMPRESS_WORKLOADS}
    plan = {su: list(suite_workloads[su]) for su in suites}
    if args.workloads is not None:
        wanted = [w.strip() for w in args.workloads.split(",") if w.strip()]
        known = set().union(*(suite_workloads[su] for su in suites)) if suites else set()
        bad = [w for w in wanted if w not in known]
        if bad:
            ap.error(f"unknown workload(s) {bad} for suite(s) {suites}; choose from {sorted(known)}")
        plan = {su: [w for w in wanted if w in suite_workloads[su]] for su in suites}
    size = "quick" if args.quick else "full"
    results_dir = os.path.join(HERE, "results")
    json_path = args.json or os.path.join(results_dir, "quick.json" if args.quick else "latest.json")
    compress_json = args.compress_json or os.path.join(
        results_dir, "compress-quick.json" if args.quick else "compress.json")
    scaling_json = args.scaling_json or os.path.join(
        results_dir, "threads-quick.json" if args.quick else "threads.json")

    base = args.dir or tempfile.gettempdir()
    os.makedirs(base, exist_ok=True)
    need = 0
    if "array512" in plan.get("default", []):
        need = SIZES[size]["array512"]["n"] * 8 * 5  # four files + cache
    if "int64_compressible" in plan.get("compress", []) or args.threads_scaling:
        need = max(need, SIZES[size]["int64_compressible"]["n"] * 8 * 4)  # files + cache
    free = shutil.disk_usage(base).free
    if free < need + 1e9:
        log(f"not enough space in {base}: {free / 1e9:.1f} GB free, need ~{(need + 1e9) / 1e9:.1f} GB")
        return 2
    workdir = tempfile.mkdtemp(prefix="firkin-bench-", dir=base)
    os.makedirs(args.cache_dir, exist_ok=True)

    vers = versions()
    meta = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "argv": sys.argv,
        "size": size,
        "cpu_count": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "versions": vers,
        "git": git_state(),
        "firkin": firkin_info(),
        "workdir": workdir,
        "notes": ["loads are measured from the page cache (nothing dropped)",
                  "each measurement is one operation in a fresh interpreter; medians reported",
                  "firkin, pickle5 and raw-write dumps fsync and rename; joblib.dump does not fsync",
                  "peak_rss_delta: VmHWM (reset via /proc/self/clear_refs) after the operation "
                  "minus VmRSS before it; ru_maxrss delta is the fallback"],
    }
    log(f"firkin bench ({size}): suites {suites}"
        f"{' + threads scaling' if args.threads_scaling else ''}: {plan}; files in {workdir}; "
        f"load average {meta['loadavg_start']}")
    t_start = time.perf_counter()
    results, cresults, scaling = [], [], None
    try:
        for name in plan.get("default", []):
            t0 = time.perf_counter()
            info = ensure_cache(name, size, args.cache_dir, vers, args.rebuild)
            repeat = args.repeat or (1 if args.quick else (3 if name in BIG_WORKLOADS else 5))
            res = bench_workload(name, size, repeat, workdir, info, args.timeout)
            res["wall_s"] = round(time.perf_counter() - t0, 1)
            log(f"[{name}] done in {res['wall_s']} s")
            results.append(res)
        if "compress" in plan:
            codecs = meta["firkin"].get("codecs")
            lz4_ok = vers.get("lz4") is not None
            skipped: list[str] = []
            if not lz4_ok:
                skipped.append("joblib-lz4: the lz4 package is not installed")
            for name in plan["compress"]:
                t0 = time.perf_counter()
                info = ensure_cache(name, size, args.cache_dir, vers, args.rebuild)
                info = ensure_array_bytes(info, args.timeout)
                repeat = args.repeat or (1 if args.quick else 3)
                contenders = compress_contenders(name, codecs, lz4_ok, args.all_codecs, skipped)
                res = bench_compress_workload(name, size, repeat, workdir, info, args.timeout,
                                              contenders)
                res["wall_s"] = round(time.perf_counter() - t0, 1)
                log(f"[{name}] compress suite done in {res['wall_s']} s")
                cresults.append(res)
            meta["compress_skipped"] = sorted(set(skipped))
        if args.threads_scaling:
            t0 = time.perf_counter()
            info = ensure_cache(SCALING_WORKLOAD, size, args.cache_dir, vers, args.rebuild)
            info = ensure_array_bytes(info, args.timeout)
            scaling = run_threads_scaling(size, args.repeat or 3, workdir, info, args.timeout)
            scaling["wall_s"] = round(time.perf_counter() - t0, 1)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    meta["wall_s"] = round(time.perf_counter() - t_start, 1)
    meta["loadavg_end"] = os.getloadavg()
    written = []
    if "default" in plan:
        print(render(results, meta))
        write_atomic(json_path, json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
        written.append(json_path)
    if "compress" in plan:
        print(render_compress(cresults, meta))
        write_atomic(compress_json, json.dumps({"meta": meta, "results": cresults}, indent=1) + "\n")
        written.append(compress_json)
    if scaling is not None:
        print(render_scaling(scaling, meta))
        write_atomic(scaling_json, json.dumps({"meta": meta, "scaling": scaling}, indent=1) + "\n")
        written.append(scaling_json)
    log(f"total {meta['wall_s']} s; results written to {', '.join(map(os.path.relpath, written))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
