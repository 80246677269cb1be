"""How a measurement is taken: each one is one operation in a fresh
interpreter (``bench.py --one SPEC``, run_one here), timed with
time.perf_counter and time.process_time, its peak RSS taken around it
(VmHWM reset through /proc/self/clear_refs, ru_maxrss as the fallback).
The parent side runs the suites: contenders interleaved round-robin,
repeated, medians kept with every sample."""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time

import contenders
from contenders import dumpers_for, loader_file, loaders_for
from workloads import BUILD_VERSION, SIZES, WORKLOADS, fingerprint

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BENCH = os.path.join(HERE, "bench.py")
MB = 1e6


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ measuring process

def _proc_status() -> dict:
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, val = line.split(":", 1)
                    out[key] = int(val.split()[0]) * 1024
    except OSError:
        pass
    return out


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def run_one(spec: dict) -> dict:
    """Inside a fresh interpreter: perform and time one operation."""
    import _pickle
    import gc
    import importlib
    import pickle
    import resource

    import firkin  # noqa: F401
    import joblib
    import numpy as np  # noqa: F401

    for mod in WORKLOADS[spec["workload"]].imports:
        importlib.import_module(mod)
    assert pickle.Pickler is _pickle.Pickler, "the C pickler is not in use"
    if spec.get("lib") is not None:
        # compressors that firkin or joblib would otherwise import inside the timed region
        import bz2  # noqa: F401
        import lzma  # noqa: F401
        import zlib  # noqa: F401

        import joblib.compressor  # noqa: F401  (imports lz4.frame when installed)
    value = None
    if spec["op"] == "dump":
        with open(spec["cache"], "rb") as f:
            value = pickle.load(f)
    elif spec["op"] != "load":
        raise ValueError(spec["op"])
    fn = contenders.make(spec, value)

    gc.collect()
    peak_reset = _reset_peak()
    st0 = _proc_status()
    ru0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    c0 = time.process_time()
    t0 = time.perf_counter()
    result = fn()
    t1 = time.perf_counter()
    c1 = time.process_time()
    ru1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    st1 = _proc_status()

    if peak_reset and "VmHWM" in st1 and "VmRSS" in st0:
        delta, method = st1["VmHWM"] - st0["VmRSS"], "vmhwm"
    else:  # only growth beyond the process's earlier peak is visible: a lower bound
        delta, method = ru1 - ru0, "ru_maxrss"
    out = {
        "time_s": t1 - t0,
        "cpu_s": c1 - c0,
        "rss_before": st0.get("VmRSS"),
        "peak_rss_delta": delta,
        "peak_rss_abs": max(st1.get("VmHWM", 0), ru1),
        "ru_maxrss_before": ru0,
        "ru_maxrss_after": ru1,
        "rss_method": method,
    }
    if spec["op"] == "load":
        out["check"] = (None if spec["contender"].startswith("raw-")
                        else fingerprint(spec["workload"], result))
    return out


# ------------------------------------------------------------------ parent side

def versions() -> dict:
    from importlib import metadata

    v = {"python": sys.version.split()[0], "platform": platform.platform()}
    for dist in ("numpy", "scikit-learn", "pandas", "joblib", "firkin", "lz4"):
        try:
            v[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            v[dist] = None
    return v


def git_state() -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def firkin_info() -> dict:
    code = ("import json, firkin, firkin._api as a, firkin._core as c;"
            "print(json.dumps({'version': firkin.__version__, 'file': firkin.__file__,"
            "'oob_threshold': getattr(a, 'OOB_THRESHOLD', None),"
            "'codecs': firkin.codecs() if hasattr(firkin, 'codecs') else None,"
            "'build_info': c.build_info() if hasattr(c, 'build_info') else None}))")
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        return json.loads(r.stdout.strip().splitlines()[-1])
    except Exception as exc:  # noqa: BLE001 - informational only
        return {"error": repr(exc)}


def child(args: list[str], timeout: float) -> dict:
    r = subprocess.run([sys.executable, BENCH, *args],
                       capture_output=True, text=True, timeout=timeout)
    for line in reversed(r.stdout.splitlines()):
        if line.startswith("@@RESULT "):
            return json.loads(line[len("@@RESULT "):])
    tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
    return {"error": f"exit {r.returncode}: " + " | ".join(tail)}


def warm_read(path: str) -> None:
    """Read a file once so that it is in the page cache."""
    with open(path, "rb", buffering=0) as f:
        while f.read(1 << 24):
            pass


def ensure_cache(name: str, size: str, cache_dir: str, vers: dict, rebuild: bool) -> dict:
    key = (f"{name}-{size}-b{BUILD_VERSION}-np{vers['numpy']}-sk{vers['scikit-learn']}"
           f"-pd{vers['pandas']}-py{vers['python']}")
    cache = os.path.join(cache_dir, key + ".pkl")
    info_path = os.path.join(cache_dir, key + ".json")
    if rebuild or not (os.path.exists(cache) and os.path.exists(info_path)):
        log(f"[{name}] building workload ({size}) ...")
        t0 = time.perf_counter()
        res = child(["--build", name, "--size", size, "--out", cache], timeout=1800)
        if "error" in res:
            raise RuntimeError(f"building {name} failed: {res['error']}")
        res["build_s"] = round(time.perf_counter() - t0, 1)
        with open(info_path, "w") as f:
            json.dump(res, f)
        log(f"[{name}] built in {res['build_s']} s: {res}")
    with open(info_path) as f:
        info = json.load(f)
    info["cache"] = cache
    info["cache_bytes"] = os.path.getsize(cache)
    return info


def rotated(items: list[str], k: int) -> list[str]:
    k %= len(items)
    return items[k:] + items[:k]


def _op_stats(runs: list[dict], error) -> dict:
    times = [s["time_s"] for s in runs]
    med = (lambda field: statistics.median([s[field] for s in runs]) if runs else None)
    return {
        "median_s": med("time_s"),
        "min_s": min(times, default=None),
        "max_s": max(times, default=None),
        "cpu_median_s": med("cpu_s"),
        "peak_rss_delta_median": med("peak_rss_delta"),
        "peak_rss_delta_max": max((s["peak_rss_delta"] for s in runs), default=None),
        "peak_rss_abs_median": med("peak_rss_abs"),
        "rss_before_median": med("rss_before") if runs and runs[0].get("rss_before") is not None else None,
        "n": len(runs),
        "times_s": times,
        "rss_method": runs[0]["rss_method"] if runs else None,
        "error": error,
        "check": runs[0].get("check") if runs else None,
    }


def _measure(spec: dict, timeout: float, label: str, samples: list, errors: dict, key) -> None:
    if key in errors:
        return
    try:
        res = child(["--one", json.dumps(spec)], timeout=timeout)
    except subprocess.TimeoutExpired:
        res = {"error": f"timed out after {timeout} s"}
    os.sync()  # flush writeback (joblib does not fsync) so it cannot leak into the next run
    if "error" in res:
        errors[key] = res["error"]
        log(f"{label}: ERROR {res['error']}")
        return
    samples.append(res)
    log(f"{label}: {res['time_s']:8.4f} s  peak +{res['peak_rss_delta'] / MB:8.1f} MB")


def _rounds(cache: str, files: dict, dumpers: list, reads: dict, repeat: int, measure,
            errors: dict) -> dict:
    """Every dumper, then every loader (reads: loader -> the file it reads),
    round-robin, rotated each repetition; measure(op, name, rep) takes one
    measurement. Returns the files' sizes; removes the files."""
    warm_read(cache)
    for rep in range(repeat):
        for d in rotated(dumpers, rep):
            if os.path.exists(files[d]):
                os.unlink(files[d])
            measure("dump", d, rep)
    sizes = {d: os.path.getsize(p) for d, p in files.items() if os.path.exists(p)}
    for p in files.values():
        if os.path.exists(p):
            warm_read(p)
    loaders = list(reads)
    for rep in range(repeat):
        for c in rotated(loaders, rep):
            if not os.path.exists(reads[c]):
                errors.setdefault(("load", c), "no file: its dump failed")
                continue
            measure("load", c, rep)
    for p in files.values():
        if os.path.exists(p):
            os.unlink(p)
    return sizes


def bench_workload(name: str, size: str, repeat: int, workdir: str, cache_info: dict,
                   timeout: float) -> dict:
    """The default suite on one workload: every dumper, then every loader on
    the files they wrote, interleaved round-robin, `repeat` times."""
    cache = cache_info["cache"]
    dumpers, loaders = dumpers_for(name), loaders_for(name)
    files = {d: os.path.join(workdir, f"{name}.{d}") for d in dumpers}
    samples: dict = {("dump", c): [] for c in dumpers}
    samples.update({("load", c): [] for c in loaders})
    errors: dict = {}

    def measure(op, contender, path, rep):
        spec = {"workload": name, "op": op, "contender": contender, "path": path, "cache": cache}
        _measure(spec, timeout, f"[{name}] {op:4s} {contender:24s} rep {rep + 1}/{repeat}",
                 samples[(op, contender)], errors, (op, contender))

    sizes = _rounds(cache, files, dumpers, {c: files[loader_file(c)] for c in loaders}, repeat,
                    lambda op, c, rep: measure(op, c, files[loader_file(c)], rep), errors)

    rows = []
    for c in dumpers + [c for c in loaders if c not in dumpers]:
        row = {"contender": c, "file_bytes": sizes.get(loader_file(c))}
        for op in ("dump", "load"):
            if (op, c) in samples:
                row[op] = _op_stats(samples[(op, c)], errors.get((op, c)))
        rows.append(row)
    checks = {r["contender"]: r["load"].get("check") for r in rows
              if "load" in r and r["load"].get("check")}
    consistent = len(set(checks.values())) <= 1
    if not consistent:
        log(f"[{name}] WARNING: loaded values differ between contenders: {checks}")
    return {"workload": name, "size": size, "params": SIZES[size][name], "repeat": repeat,
            "build": {k: v for k, v in cache_info.items() if k != "cache"},
            "contenders": rows, "checks_consistent": consistent}


# ------------------------------------------------------------------ compression suite

CHUNK = 1 << 20  # firkin's compression chunk (1 MiB)
RSS_SLACK = 32 << 20  # the "+ 32 MB" of the peak-RSS bound (32 MiB)
# (codec, level) for firkin; 'bz2' and 'xz' go through Python's bz2/lzma modules and are slow:
# by default they only run where the raw data is small or incompressible (see bench/README.md)
FIRKIN_CODECS = [("zlib", 1), ("zlib", 3), ("zlib", 6), ("zstd", 1), ("zstd", 3), ("zstd", 9),
                 ("lz4", 1), ("lz4", 3), ("bz2", 3), ("xz", 3)]
SLOW_CODECS = {"bz2", "xz"}
SLOW_CODEC_WORKLOADS = {"float_random", "forest", "dataframe"}
SCALING_WORKLOAD = "int64_compressible"
SCALING_CODECS = [("zstd", 3), ("zlib", 3)]


def compress_contenders(workload: str, codecs, lz4_ok: bool, all_codecs: bool,
                        skipped: list) -> list[dict]:
    """The contenders of the compression suite for one workload (firkin-none first)."""
    rows = [{"name": "firkin-none", "lib": "firkin", "compress": 0, "codec": "none", "level": 0}]
    for codec, level in FIRKIN_CODECS:
        if codecs is not None and codec not in codecs:
            skipped.append(f"firkin-{codec}-{level}: not in firkin.codecs()")
            continue
        if codec in SLOW_CODECS and not all_codecs and workload not in SLOW_CODEC_WORKLOADS:
            continue
        rows.append({"name": f"firkin-{codec}-{level}", "lib": "firkin", "compress": [codec, level],
                     "codec": codec, "level": level})
    if codecs is None or "zlib" in codecs:  # compress=3: firkin's own zlib chunks, memory-mappable
        rows.append({"name": "firkin-zlib-3-chunks", "lib": "firkin", "compress": 3,
                     "codec": "zlib", "level": 3})
    rows.append({"name": "joblib-zlib-3", "lib": "joblib", "compress": 3, "codec": "zlib", "level": 3})
    if lz4_ok:  # joblib's default lz4 level (LZ4FrameFile's 0: the fast mode)
        rows.append({"name": "joblib-lz4", "lib": "joblib", "compress": "lz4", "codec": "lz4",
                     "level": None})
    return rows


def ensure_array_bytes(info: dict, timeout: float) -> dict:
    """Bytes of the workload's out-of-band buffers under pickle protocol 5 (its arrays' data)."""
    if "array_bytes" not in info:
        res = child(["--array-bytes", info["cache"]], timeout=timeout)
        if "error" in res:
            raise RuntimeError(f"measuring array bytes failed: {res['error']}")
        info_path = info["cache"][:-len(".pkl")] + ".json"
        with open(info_path) as f:
            stored = json.load(f)
        stored.update(res)
        with open(info_path + ".tmp", "w") as f:
            json.dump(stored, f)
        os.replace(info_path + ".tmp", info_path)
        info.update(res)
    return info


def array_bytes_of(cache: str) -> dict:
    import pickle

    with open(cache, "rb") as f:
        value = pickle.load(f)
    bufs: list[int] = []
    stream = pickle.dumps(value, protocol=5, buffer_callback=lambda b: bufs.append(b.raw().nbytes))
    return {"array_bytes": int(sum(bufs)), "arrays": len(bufs), "inband_bytes": len(stream)}


def bench_compress_workload(name: str, size: str, repeat: int, workdir: str, cache_info: dict,
                            timeout: float, contenders: list[dict]) -> dict:
    cache = cache_info["cache"]
    names = [c["name"] for c in contenders]
    files = {n: os.path.join(workdir, f"{name}.{n}") for n in names}
    samples: dict = {(op, n): [] for op in ("dump", "load") for n in names}
    errors: dict = {}
    by_name = {c["name"]: c for c in contenders}

    def measure(op, n, rep):
        c = by_name[n]
        spec = {"workload": name, "op": op, "contender": n, "path": files[n], "cache": cache,
                "lib": c["lib"], "compress": c["compress"], "threads": None}
        _measure(spec, timeout, f"[{name}] {op:4s} {n:24s} rep {rep + 1}/{repeat}",
                 samples[(op, n)], errors, (op, n))

    sizes = _rounds(cache, files, names, files, repeat, measure, errors)

    threads = os.cpu_count() or 1
    array_bytes = cache_info.get("array_bytes")
    raw = sizes.get("firkin-none")
    bound = None if array_bytes is None else array_bytes + threads * 4 * CHUNK + RSS_SLACK
    dump_bound = threads * 4 * CHUNK + RSS_SLACK
    rows = []
    for c in contenders:
        n = c["name"]
        row = {"contender": n, "lib": c["lib"], "codec": c["codec"], "level": c["level"],
               "compress": c["compress"]}
        for op in ("dump", "load"):
            row[op] = _op_stats(samples[(op, n)], errors.get((op, n)))
        fb = sizes.get(n)
        row["file_bytes"] = fb
        row["ratio"] = None if raw is None or not fb else raw / fb
        for op in ("dump", "load"):
            t = row[op]["median_s"]
            row[f"{op}_MBps"] = None if raw is None or not t else raw / t / MB
        row["rss_ok"] = {op: (None if bound is None or row[op]["peak_rss_delta_max"] is None
                              else row[op]["peak_rss_delta_max"] <= bound) for op in ("dump", "load")}
        row["dump_overhead_ok"] = (None if row["dump"]["peak_rss_delta_max"] is None
                                   else row["dump"]["peak_rss_delta_max"] <= dump_bound)
        rows.append(row)

    checks = {r["contender"]: r["load"]["check"] for r in rows if r["load"].get("check")}
    consistent = len(set(checks.values())) <= 1
    if not consistent:
        log(f"[{name}] WARNING: loaded values differ between contenders: {checks}")
    return {"workload": name, "suite": "compress", "size": size, "params": SIZES[size][name],
            "repeat": repeat, "build": {k: v for k, v in cache_info.items() if k != "cache"},
            "raw_bytes": raw, "array_bytes": array_bytes, "threads": threads,
            "rss_bound": bound, "dump_overhead_bound": dump_bound,
            "contenders": rows, "checks_consistent": consistent}


def thread_counts() -> list[int]:
    n = os.cpu_count() or 1
    counts = [t for t in (1, 2, 4, 8, 16) if t < n]
    return counts + [min(n, 16)]


def run_threads_scaling(size: str, repeat: int, workdir: str, cache_info: dict,
                        timeout: float) -> dict:
    """Dump throughput of SCALING_WORKLOAD per codec and thread count (fresh processes)."""
    cache = cache_info["cache"]
    raw = cache_info.get("array_bytes") or cache_info.get("nbytes")
    counts = thread_counts()
    combos = [(c, lvl, t) for c, lvl in SCALING_CODECS for t in counts]
    labels = [f"{c}-{lvl}-t{t}" for c, lvl, t in combos]
    samples: dict = {lab: [] for lab in labels}
    errors: dict = {}
    path = os.path.join(workdir, f"{SCALING_WORKLOAD}.scaling")
    warm_read(cache)
    for rep in range(repeat):
        for lab in rotated(labels, rep):
            c, lvl, t = combos[labels.index(lab)]
            if os.path.exists(path):
                os.unlink(path)
            spec = {"workload": SCALING_WORKLOAD, "op": "dump", "contender": f"firkin-{lab}",
                    "path": path, "cache": cache, "lib": "firkin", "compress": [c, lvl],
                    "threads": t}
            _measure(spec, timeout, f"[scaling] dump {lab:16s} rep {rep + 1}/{repeat}",
                     samples[lab], errors, lab)
    if os.path.exists(path):
        os.unlink(path)
    rows = []
    for (c, lvl, t), lab in zip(combos, labels):
        st = _op_stats(samples[lab], errors.get(lab))
        rows.append({"codec": c, "level": lvl, "threads": t, "dump": st,
                     "dump_MBps": None if not st["median_s"] else raw / st["median_s"] / MB})
    return {"workload": SCALING_WORKLOAD, "size": size, "params": SIZES[size][SCALING_WORKLOAD],
            "raw_bytes": raw, "repeat": repeat, "thread_counts": counts, "rows": rows}


