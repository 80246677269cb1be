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

See bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BUILD_VERSION = 1  # bump when a workload's definition changes (invalidates the cache)
MB = 1e6

ALL_WORKLOADS = ["array512", "forest", "tfidf", "pipeline", "small_arrays", "dataframe"]
BIG_WORKLOADS = {"array512", "tfidf", "dataframe"}  # fewer repetitions by default
# the compression suite (--suite compress); forest and dataframe are shared with the default suite
COMPRESS_WORKLOADS = ["int64_compressible", "float_rounded", "float_random", "forest", "dataframe"]

# workload parameters: full run and --quick
SIZES = {
    "full": {
        "array512": {"n": 64 * 1024 * 1024},
        "forest": {"n_estimators": 300, "n_samples": 2000, "n_features": 20},
        "tfidf": {"vocab": 600_000, "extra_tokens": 1_400_000, "doc_len": 200},
        "pipeline": {"n_samples": 1000, "n_features": 20},
        "small_arrays": {"count": 100_000, "length": 10},
        "dataframe": {"rows": 2_000_000},
        "int64_compressible": {"n": 32 * 1024 * 1024},  # 256 MiB
        "float_rounded": {"n": 16 * 1024 * 1024},  # 128 MiB
        "float_random": {"n": 16 * 1024 * 1024},  # 128 MiB
    },
    "quick": {
        "array512": {"n": 1024 * 1024},
        "forest": {"n_estimators": 20, "n_samples": 500, "n_features": 20},
        "tfidf": {"vocab": 20_000, "extra_tokens": 40_000, "doc_len": 200},
        "pipeline": {"n_samples": 1000, "n_features": 20},
        "small_arrays": {"count": 5_000, "length": 10},
        "dataframe": {"rows": 50_000},
        "int64_compressible": {"n": 2 * 1024 * 1024},
        "float_rounded": {"n": 1024 * 1024},
        "float_random": {"n": 1024 * 1024},
    },
}

# modules imported by a measuring process before anything is timed
WORKLOAD_IMPORTS = {
    "array512": [],
    "forest": ["sklearn.ensemble", "sklearn.tree"],
    "tfidf": ["sklearn.feature_extraction.text"],
    "pipeline": ["sklearn.pipeline", "sklearn.preprocessing", "sklearn.linear_model"],
    "small_arrays": [],
    "dataframe": ["pandas"],
    "int64_compressible": [],
    "float_rounded": [],
    "float_random": [],
}

DUMPERS = ["firkin", "joblib", "pickle5"]
LOADERS = ["firkin", "firkin-mmap", "joblib", "joblib-mmap", "pickle5"]
RAW_DUMPERS = ["raw-write"]
RAW_LOADERS = ["raw-readinto-prefaulted", "raw-readinto-alloc"]

# which file each loader reads (the one written by that dumper)
LOADER_FILE = {
    "firkin": "firkin", "firkin-mmap": "firkin",
    "joblib": "joblib", "joblib-mmap": "joblib",
    "pickle5": "pickle5",
    "raw-readinto-prefaulted": "raw-write", "raw-readinto-alloc": "raw-write",
    "firkin-trusted": "firkin", "firkin-progress": "firkin-progress", "firkin-joblibfile": "joblib",
    "firkin-noprogress": "firkin-noprogress",
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# extra rows: the cost of the trust policy (firkin vs firkin-trusted, which
# skips scan and find_class), firkin reading the file joblib wrote (the
# joblib drop-in), and the cost of a forced progress bar
POLICY_WORKLOADS = {"forest", "tfidf", "pipeline", "dataframe"}
PROGRESS_WORKLOADS = {"array512"}


def dumpers_for(workload: str) -> list[str]:
    return (DUMPERS + (RAW_DUMPERS if workload == "array512" else [])
            + (["firkin-progress", "firkin-noprogress"] if workload in PROGRESS_WORKLOADS else []))


def loaders_for(workload: str) -> list[str]:
    return (LOADERS + (RAW_LOADERS if workload == "array512" else [])
            + (["firkin-trusted"] if workload in POLICY_WORKLOADS else [])
            + (["firkin-progress", "firkin-noprogress"] if workload in PROGRESS_WORKLOADS else [])
            + ["firkin-joblibfile"])


# --------------------------------------------------------------------- building

def build_workload(name: str, p: dict):
    """Build one workload deterministically; returns (value, info dict)."""
    import numpy as np

    info: dict = {}
    if name == "array512":
        value = np.random.default_rng(0).random(p["n"])
        info["nbytes"] = value.nbytes
    elif name == "forest":
        from sklearn.datasets import make_classification
        from sklearn.ensemble import RandomForestClassifier

        X, y = make_classification(n_samples=p["n_samples"], n_features=p["n_features"],
                                   n_informative=10, random_state=0)
        value = RandomForestClassifier(n_estimators=p["n_estimators"], random_state=0)
        t0 = time.perf_counter()
        value.fit(X, y)
        info["fit_s"] = round(time.perf_counter() - t0, 3)
        info["total_nodes"] = int(sum(e.tree_.node_count for e in value.estimators_))
        if info["fit_s"] > 120:
            log(f"  warning: forest fit took {info['fit_s']} s")
    elif name == "tfidf":
        from sklearn.feature_extraction.text import TfidfVectorizer

        rng = np.random.default_rng(0)
        want = p["vocab"]
        # random lowercase words of 5..12 letters; distinct after np.unique
        letters = rng.integers(ord("a"), ord("z") + 1, size=(int(want * 1.1) + 100, 12),
                               dtype=np.uint8)
        lengths = rng.integers(5, 13, size=letters.shape[0])
        raw = letters.tobytes()
        words = {raw[i * 12:i * 12 + lengths[i]].decode("ascii") for i in range(letters.shape[0])}
        words = sorted(words)
        if len(words) < want:
            raise RuntimeError(f"tfidf: only {len(words)} distinct words generated")
        vocab = np.array(words, dtype=object)[rng.permutation(len(words))[:want]]
        # every word once, plus Zipf-distributed repeats so frequencies (and idf) vary
        extra = rng.zipf(1.3, size=p["extra_tokens"]) % want
        tokens = np.concatenate([vocab, vocab[extra]])
        tokens = tokens[rng.permutation(len(tokens))]
        L = p["doc_len"]
        corpus = [" ".join(tokens[i:i + L]) for i in range(0, len(tokens), L)]
        value = TfidfVectorizer()
        t0 = time.perf_counter()
        value.fit(corpus)
        info["fit_s"] = round(time.perf_counter() - t0, 3)
        info["documents"] = len(corpus)
        info["tokens"] = int(len(tokens))
        info["vocabulary"] = len(value.vocabulary_)
        if abs(info["vocabulary"] - want) > 0.02 * want:
            raise RuntimeError(f"tfidf: vocabulary has {info['vocabulary']} words, wanted ~{want}")
    elif name == "pipeline":
        from sklearn.datasets import make_classification
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler

        X, y = make_classification(n_samples=p["n_samples"], n_features=p["n_features"],
                                   random_state=0)
        value = Pipeline([("scaler", StandardScaler()), ("clf", LogisticRegression())])
        value.fit(X, y)
    elif name == "small_arrays":
        rows = np.random.default_rng(0).random((p["count"], p["length"]))
        value = [rows[i].copy() for i in range(p["count"])]
        info["arrays"] = len(value)
        info["payload_bytes"] = int(rows.nbytes)
    elif name == "dataframe":
        import pandas as pd

        rng = np.random.default_rng(0)
        n = p["rows"]
        cats = np.array(["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"])
        value = pd.DataFrame({
            "id": np.arange(n, dtype=np.int64),
            "x": rng.random(n),
            "y": rng.standard_normal(n),
            "count": rng.integers(0, 1000, size=n, dtype=np.int32),
            "category": pd.Categorical(cats[rng.integers(0, len(cats), size=n)]),
            "label": [f"item-{v:07d}" for v in rng.integers(0, 5_000_000, size=n)],
        })
        info["dtypes"] = {c: str(t) for c, t in value.dtypes.items()}
        info["memory_bytes"] = int(value.memory_usage(deep=True).sum())
    elif name == "int64_compressible":
        value = np.random.default_rng(0).integers(0, 50, size=p["n"], dtype=np.int64)
        info["nbytes"] = value.nbytes
    elif name == "float_rounded":
        value = np.round(np.random.default_rng(0).normal(size=p["n"]) * 100) / 100
        info["nbytes"] = value.nbytes
    elif name == "float_random":
        value = np.random.default_rng(0).random(p["n"])
        info["nbytes"] = value.nbytes
    else:
        raise ValueError(name)
    return value, info


def check_value(name: str, value) -> str:
    """A cheap fingerprint of a loaded value, compared across contenders."""
    import numpy as np

    if name in ("array512", "int64_compressible", "float_rounded", "float_random"):
        return f"{value.shape} {value.dtype} {float(np.asarray(value[:4096]).sum())!r}"
    if name == "forest":
        return f"{len(value.estimators_)} trees {sum(e.tree_.node_count for e in value.estimators_)} nodes"
    if name == "tfidf":
        return f"vocab {len(value.vocabulary_)} idf {float(np.asarray(value.idf_[:1000]).sum())!r}"
    if name == "pipeline":
        return f"{[s for s, _ in value.steps]} {float(value[-1].coef_.sum())!r}"
    if name == "small_arrays":
        return f"{len(value)} arrays {float(sum(a.sum() for a in value[:100]))!r}"
    if name == "dataframe":
        return f"{value.shape} {list(map(str, value.dtypes))} {float(value['x'].iloc[:1000].sum())!r}"
    return type(value).__name__


# ------------------------------------------------------------ measuring process

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


def _fsync_dir(dirname: str) -> None:
    fd = os.open(dirname, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: str, write) -> None:
    """Temp file in the same directory, write, flush, fsync, rename, fsync the dir (as firkin)."""
    dirname = os.path.dirname(path)
    tmp = os.path.join(dirname, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(dirname)


def run_one(spec: dict) -> dict:
    """Inside a fresh interpreter: perform and time one operation."""
    import gc
    import importlib
    import pickle
    import resource

    import numpy as np
    import _pickle

    import firkin
    import joblib

    for mod in WORKLOAD_IMPORTS[spec["workload"]]:
        importlib.import_module(mod)
    assert pickle.Pickler is _pickle.Pickler, "the C pickler is not in use"

    op, contender, path = spec["op"], spec["contender"], spec["path"]
    lib = spec.get("lib")  # compression suite / threads scaling: explicit compress and threads
    if lib is not None:
        # compressors that firkin or joblib would otherwise import inside the timed region
        import bz2  # noqa: F401
        import lzma  # noqa: F401
        import zlib  # noqa: F401
        import joblib.compressor  # noqa: F401  (imports lz4.frame when installed)
        compress = spec.get("compress", 0)
        if isinstance(compress, list):
            compress = tuple(compress)
        threads = spec.get("threads")
    value = None
    if op == "dump":
        with open(spec["cache"], "rb") as f:
            value = pickle.load(f)
        if lib == "firkin":
            def fn():
                firkin.dump(value, path, compress=compress, threads=threads)
        elif lib == "joblib":
            def fn():
                joblib.dump(value, path, compress=compress)
        elif contender == "firkin":
            def fn():
                firkin.dump(value, path)
        elif contender == "firkin-progress":
            import tqdm.auto  # noqa: F401  (imported outside the timed region)

            def fn():
                firkin.dump(value, path, progress=True)
        elif contender == "firkin-noprogress":
            def fn():
                firkin.dump(value, path, progress=False)
        elif contender == "joblib":
            def fn():
                joblib.dump(value, path)
        elif contender == "pickle5":
            def fn():
                _atomic_write(path, lambda f: pickle.Pickler(f, protocol=5).dump(value))
        elif contender == "raw-write":
            def fn():
                _atomic_write(path, lambda f: f.write(value.data))
        else:
            raise ValueError(contender)
    elif op == "load":
        buf = None
        if lib == "firkin":
            def fn():
                return firkin.load(path, threads=threads)
        elif lib == "joblib":
            def fn():
                return joblib.load(path)
        elif contender == "firkin":
            def fn():
                return firkin.load(path)
        elif contender == "firkin-mmap":
            def fn():
                return firkin.load(path, mmap_mode="r")
        elif contender == "firkin-trusted":
            def fn():
                return firkin.load(path, trusted=True)
        elif contender == "firkin-progress":
            import tqdm.auto  # noqa: F401

            def fn():
                return firkin.load(path, progress=True)
        elif contender == "firkin-noprogress":
            def fn():
                return firkin.load(path, progress=False)
        elif contender == "firkin-joblibfile":
            import firkin._compat  # noqa: F401  (imported outside the timed region, like joblib)

            def fn():
                return firkin.load(path)
        elif contender == "joblib":
            def fn():
                return joblib.load(path)
        elif contender == "joblib-mmap":
            def fn():
                return joblib.load(path, mmap_mode="r")
        elif contender == "pickle5":
            def fn():
                with open(path, "rb") as f:
                    return pickle.load(f)
        elif contender in ("raw-readinto-prefaulted", "raw-readinto-alloc"):
            def readinto(f, out):
                mv = memoryview(out).cast("B")
                pos = 0
                while pos < len(mv):
                    n = f.readinto(mv[pos:])
                    if not n:
                        raise EOFError(path)
                    pos += n
                return out

            if contender == "raw-readinto-prefaulted":
                buf = np.empty(os.path.getsize(path) // 8, dtype=np.float64)
                buf.fill(1.0)  # allocate and touch every page outside the timed region

                def fn():
                    with open(path, "rb", buffering=0) as f:
                        return readinto(f, buf)
            else:
                def fn():
                    with open(path, "rb", buffering=0) as f:
                        return readinto(f, np.empty(os.fstat(f.fileno()).st_size // 8,
                                                    dtype=np.float64))
        else:
            raise ValueError(contender)
    else:
        raise ValueError(op)

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
    if op == "load":
        out["check"] = None if contender.startswith("raw-") else check_value(spec["workload"], result)
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
    r = subprocess.run([sys.executable, os.path.abspath(__file__), *args],
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


def bench_workload(name: str, size: str, repeat: int, workdir: str, cache_info: dict,
                   timeout: float) -> dict:
    cache = cache_info["cache"]
    files = {d: os.path.join(workdir, f"{name}.{d}") for d in dumpers_for(name)}
    samples: dict = {("dump", c): [] for c in dumpers_for(name)}
    samples.update({("load", c): [] for c in loaders_for(name)})
    errors: dict = {}

    def measure(op, contender, path, rep):
        spec = {"workload": name, "op": op, "contender": contender, "path": path, "cache": cache}
        if (op, contender) in errors:
            return
        try:
            res = child(["--one", json.dumps(spec)], timeout=timeout)
        except subprocess.TimeoutExpired:
            res = {"error": f"timed out after {timeout} s"}
        os.sync()  # flush writeback (joblib does not fsync) so it cannot leak into the next run
        if "error" in res:
            errors[(op, contender)] = res["error"]
            log(f"[{name}] {op:4s} {contender:24s} rep {rep + 1}/{repeat}: ERROR {res['error']}")
            return
        samples[(op, contender)].append(res)
        log(f"[{name}] {op:4s} {contender:24s} rep {rep + 1}/{repeat}: {res['time_s']:8.4f} s  "
            f"peak +{res['peak_rss_delta'] / MB:8.1f} MB")

    warm_read(cache)
    for rep in range(repeat):
        for d in rotated(dumpers_for(name), rep):
            if os.path.exists(files[d]):
                os.unlink(files[d])
            measure("dump", d, files[d], rep)
    sizes = {d: os.path.getsize(p) for d, p in files.items() if os.path.exists(p)}
    for p in files.values():
        if os.path.exists(p):
            warm_read(p)
    for rep in range(repeat):
        for c in rotated(loaders_for(name), rep):
            src = files[LOADER_FILE[c]]
            if not os.path.exists(src):
                errors.setdefault(("load", c), "no file: its dump failed")
                continue
            measure("load", c, src, rep)
    for p in files.values():
        if os.path.exists(p):
            os.unlink(p)

    def med(key, field):
        vals = [s[field] for s in samples.get(key, [])]
        return statistics.median(vals) if vals else None

    contenders = []
    for c in dumpers_for(name) + [c for c in loaders_for(name) if c not in dumpers_for(name)]:
        row = {"contender": c}
        for op in ("dump", "load"):
            key = (op, c)
            if key not in samples:
                continue
            runs = samples[key]
            row[op] = {
                "median_s": med(key, "time_s"),
                "min_s": min((s["time_s"] for s in runs), default=None),
                "max_s": max((s["time_s"] for s in runs), default=None),
                "cpu_median_s": med(key, "cpu_s"),
                "peak_rss_delta_median": med(key, "peak_rss_delta"),
                "peak_rss_abs_median": med(key, "peak_rss_abs"),
                "n": len(runs),
                "times_s": [s["time_s"] for s in runs],
                "rss_method": runs[0]["rss_method"] if runs else None,
                "error": errors.get(key),
            }
            if op == "load" and runs:
                row[op]["check"] = runs[0].get("check")
        f = LOADER_FILE.get(c, c)
        row["file_bytes"] = sizes.get(f)
        contenders.append(row)

    checks = {r["contender"]: r["load"].get("check") for r in contenders
              if "load" in r and r["load"].get("check")}
    consistent = len(set(checks.values())) <= 1
    if not consistent:
        log(f"[{name}] WARNING: loaded values differ between contenders: {checks}")
    return {"workload": name, "size": size, "params": SIZES[size][name], "repeat": repeat,
            "build": {k: v for k, v in cache_info.items() if k != "cache"},
            "contenders": contenders, "checks_consistent": consistent}


# --------------------------------------------------------------------- reporting

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
               "pickle5 and raw-write include fsync + rename, joblib.dump does not fsync. "
               "RSS delta = peak RSS during the operation minus RSS before it.")
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
        out.append("| contender | dump median (s) | load median (s) | file size (MB) "
                   "| dump peak RSS delta (MB) | load peak RSS delta (MB) |")
        out.append("|---|---:|---:|---:|---:|---:|")
        for r in res["contenders"]:
            d, l = r.get("dump", {}), r.get("load", {})
            cells = [r["contender"]]
            for x in (d, l):
                if x.get("error") and not x.get("n"):
                    cells.append("ERR")
                elif x.get("error"):  # some repetitions failed
                    cells.append(f"{_fmt_t(x.get('median_s'))} (n={x['n']})")
                else:
                    cells.append(_fmt_t(x.get("median_s")))
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
                         f"{_fmt_r(_ratio(_get(w, 'firkin', 'load'), _get(w, 'raw-readinto-alloc', 'load')))}")
        out.append("Ratios:")
        out.append("")
        out.extend(lines)
        out.append("")

    if len(results) > 1:
        out.append("## Summary (ratios of medians)")
        out.append("")
        out.append("| workload | joblib/firkin dump | joblib/firkin load | pickle5/firkin dump "
                   "| pickle5/firkin load | size firkin/pickle5 | firkin-mmap load (s) | joblib-mmap load (s) |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for w in results:
            out.append("| " + " | ".join([
                w["workload"],
                _fmt_r(_ratio(_get(w, "joblib", "dump"), _get(w, "firkin", "dump"))),
                _fmt_r(_ratio(_get(w, "joblib", "load"), _get(w, "firkin", "load"))),
                _fmt_r(_ratio(_get(w, "pickle5", "dump"), _get(w, "firkin", "dump"))),
                _fmt_r(_ratio(_get(w, "pickle5", "load"), _get(w, "firkin", "load"))),
                _fmt_r(_ratio(_size(w, "firkin"), _size(w, "pickle5"))),
                _fmt_t(_get(w, "firkin-mmap", "load")),
                _fmt_t(_get(w, "joblib-mmap", "load")),
            ]) + " |")
        out.append("")
    return "\n".join(out)


def write_atomic(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# -------------------------------------------------------------- compression suite

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

    warm_read(cache)
    for rep in range(repeat):
        for n in rotated(names, rep):
            if os.path.exists(files[n]):
                os.unlink(files[n])
            measure("dump", n, rep)
    sizes = {n: os.path.getsize(p) for n, p in files.items() if os.path.exists(p)}
    for p in files.values():
        if os.path.exists(p):
            warm_read(p)
    for rep in range(repeat):
        for n in rotated(names, rep):
            if not os.path.exists(files[n]):
                errors.setdefault(("load", n), "no file: its dump failed")
                continue
            measure("load", n, rep)
    for p in files.values():
        if os.path.exists(p):
            os.unlink(p)

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
        row["load"]["check"] = samples[("load", n)][0].get("check") if samples[("load", n)] else None
        fb = sizes.get(n)
        row["file_bytes"] = fb
        row["ratio"] = _ratio(raw, fb)
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

        value, info = build_workload(args.build, SIZES[args.size][args.build])
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
