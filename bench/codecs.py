#!/usr/bin/env python3
"""Compression of numeric arrays: firkin's codecs with and without filters
against joblib and python-blosc2.

    python bench/codecs.py [--mb 256] [--repeats 3] [--out bench/results/codecs.md]
                           [--workloads ints,smooth,rounded] [--contenders NAME,...]

Workloads (float64/int64, --mb megabytes each): `ints` small int64 values
(0..49), `smooth` a random walk (cumsum of normal steps), `rounded` normal
values rounded to 2 decimals. Every dump and every load runs in a fresh
process (peak RSS is that process's, over what it held before the
operation); repeats are interleaved (each round runs every contender once)
and the table shows medians. Dumps write to a file in --dir and end with
an fsync of the file for every contender (firkin also fsyncs its
directory); loads read from the page cache. Every load is checked against
the workload.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

WORKLOADS = ("ints", "smooth", "rounded")


def make_workload(name: str, mb: int):
    import numpy as np

    n = mb * (1 << 20) // 8
    rng = np.random.default_rng(0)
    if name == "ints":
        return rng.integers(0, 50, size=n, dtype=np.int64)
    if name == "smooth":
        return np.cumsum(rng.normal(size=n))
    if name == "rounded":
        return np.round(rng.normal(size=n) * 100) / 100
    raise ValueError(name)


# ------------------------------------------------------------ contenders

def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _firkin(compress, filters):
    def dump(a, path):
        import firkin
        firkin.dump(a, path, compress=compress, filters=filters, progress=False)

    def load(path):
        import firkin
        return firkin.load(path)
    return dump, load


def _joblib(compress):
    def dump(a, path):
        import joblib
        joblib.dump(a, path, compress=compress)
        _fsync(path)

    def load(path):
        import joblib
        return joblib.load(path)
    return dump, load


def _blosc2(codec, clevel, filt):
    def dump(a, path):
        import blosc2
        cparams = {"codec": getattr(blosc2.Codec, codec), "clevel": clevel,
                   "filters": [getattr(blosc2.Filter, filt)], "typesize": a.dtype.itemsize,
                   "nthreads": os.cpu_count()}
        blosc2.save_array(a, path, mode="w", cparams=cparams)
        _fsync(path)

    def load(path):
        import blosc2
        return blosc2.load_array(path, dparams={"nthreads": os.cpu_count()})
    return dump, load


CONTENDERS = {
    "firkin zstd 1 auto filter": _firkin(("zstd", 1), "auto"),
    "firkin zstd 1 no filter": _firkin(("zstd", 1), None),
    "firkin zstd 3 auto filter": _firkin(("zstd", 3), "auto"),
    "firkin zstd 3 no filter": _firkin(("zstd", 3), None),
    "firkin lz4 auto filter": _firkin("lz4", "auto"),
    "firkin lz4 no filter": _firkin("lz4", None),
    "firkin lz4 3 (HC) no filter": _firkin(("lz4", 3), None),
    "joblib compress=3": _joblib(3),
    # joblib's compress="lz4" needs the lz4 package, which the project's venv lacks
    "blosc2 zstd 1 shuffle": _blosc2("ZSTD", 1, "SHUFFLE"),
    "blosc2 zstd 1 bitshuffle": _blosc2("ZSTD", 1, "BITSHUFFLE"),
    "blosc2 zstd 1 no filter": _blosc2("ZSTD", 1, "NOFILTER"),
    "blosc2 zstd 5 shuffle": _blosc2("ZSTD", 5, "SHUFFLE"),
    "blosc2 zstd 5 bitshuffle": _blosc2("ZSTD", 5, "BITSHUFFLE"),
    "blosc2 lz4 5 shuffle": _blosc2("LZ4", 5, "SHUFFLE"),
}


# ------------------------------------------------------------ child side

def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> int:
    """Reset the peak RSS (Linux: clear_refs 5; the peak that ru_maxrss
    reports is inherited from the parent across fork and exec) and return
    the RSS now, in kB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kb("VmRSS")


def _peak_mb(base_kb: int) -> float:
    return (_status_kb("VmHWM") - base_kb) / 1024


def child(op: str, contender: str, npy: str, path: str) -> dict:
    import numpy as np

    dump, load = CONTENDERS[contender]
    if op == "dump":
        a = np.load(npy)
        dump(np.zeros(1000), path + ".warm")  # imports and first-call setup, outside the timing
        os.unlink(path + ".warm")
        base = _reset_peak()
        t = time.perf_counter()
        dump(a, path)
        dt = time.perf_counter() - t
        return {"s": dt, "rss_mb": _peak_mb(base), "size": os.path.getsize(path), "nbytes": a.nbytes}
    ref = np.load(npy, mmap_mode="r")
    dump(np.zeros(1000), path + ".warm")
    load(path + ".warm")
    os.unlink(path + ".warm")
    base = _reset_peak()
    t = time.perf_counter()
    b = load(path)
    dt = time.perf_counter() - t
    peak = _peak_mb(base)
    if not (b.dtype == ref.dtype and b.shape == ref.shape and np.array_equal(b, ref)):
        raise SystemExit(f"{contender}: the loaded array differs from the workload")
    return {"s": dt, "rss_mb": peak}


# ------------------------------------------------------------ parent side

def run_child(*args) -> dict:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", *args],
                         capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"child {args} failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument("--dir", default=None, help="where files are written (default: a temp dir)")
    ap.add_argument("--out", default=None, help="write the markdown table here too")
    ap.add_argument("--json", default=None, help="write the raw measurements here")
    ap.add_argument("--child", nargs=4, metavar=("OP", "CONTENDER", "NPY", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0

    import numpy as np

    workloads = args.workloads.split(",")
    contenders = [c.strip() for c in args.contenders.split(",")]
    for c in contenders:
        if c not in CONTENDERS:
            ap.error(f"unknown contender {c!r}; known: {list(CONTENDERS)}")
    work = tempfile.mkdtemp(prefix="firkin-codecs-", dir=args.dir)
    results = {w: {c: {"dump": [], "load": [], "dump_mb": [], "load_mb": [], "size": None}
                   for c in contenders} for w in workloads}
    nbytes = {}
    try:
        for w in workloads:
            npy = os.path.join(work, f"{w}.npy")
            a = make_workload(w, args.mb)
            nbytes[w] = a.nbytes
            np.save(npy, a)
            del a
            for rep in range(args.repeats):
                for c in contenders:  # interleaved: one of each per round
                    path = os.path.join(work, "out.bin")
                    d = run_child("dump", c, npy, path)
                    ld = run_child("load", c, npy, path)
                    os.unlink(path)
                    r = results[w][c]
                    r["dump"].append(d["s"])
                    r["load"].append(ld["s"])
                    r["dump_mb"].append(d["rss_mb"])
                    r["load_mb"].append(ld["rss_mb"])
                    r["size"] = d["size"]
                    print(f"{w:8s} {c:32s} round {rep + 1}: dump {d['s']:.3f} s load {ld['s']:.3f} s "
                          f"ratio {d['nbytes'] / d['size']:.2f}", file=sys.stderr, flush=True)
            os.unlink(npy)
    finally:
        for f in os.listdir(work):
            os.unlink(os.path.join(work, f))
        os.rmdir(work)

    lines = [(f"{args.mb} MB per workload, {args.repeats} interleaved rounds, medians; "
              f"{os.cpu_count()} CPUs; dumps end with fsync; loads from the page cache; "
              "RSS: peak over what the process held before the operation (a load's includes "
              "the array it returns)."), ""]
    med = statistics.median
    for w in workloads:
        ref = results[w].get("joblib compress=3")
        lines += [f"### {w}", "",
                  "| contender | dump s | load s | ratio | dump vs joblib compress=3 | dump RSS MB | load RSS MB |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for c in contenders:
            r = results[w][c]
            vs = f"{med(ref['dump']) / med(r['dump']):.1f}x" if ref else "-"
            lines.append(f"| {c} | {med(r['dump']):.3f} | {med(r['load']):.3f} | "
                         f"{nbytes[w] / r['size']:.2f} | {vs} | {med(r['dump_mb']):.0f} | "
                         f"{med(r['load_mb']):.0f} |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"mb": args.mb, "repeats": args.repeats, "nbytes": nbytes, "results": results}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
