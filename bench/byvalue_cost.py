#!/usr/bin/env python
"""What routing code saved by value costs: dump time of two firkin builds,
interleaved, on workloads without notebook code (forest, tfidf, 100k small
arrays) and on a notebook pipeline, plus cloudpickle on the same pipeline.

    python bench/byvalue_cost.py BASE_PYTHONPATH NEW_PYTHONPATH [--rounds 15] [--quick]

Each build runs in a worker process of its own that loads the workloads
once (built here and cached under bench/.cache) and times `firkin.dumps`
on request (process CPU time, all threads: less at the mercy of other
processes on a shared machine than wall time); the driver alternates the
workers round after round. Reported: median CPU time per dump and the
median of the per-round ratios NEW/BASE.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

NOTEBOOK = '''
import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

SCALE = 0.5

def center(X, mean):
    return X - mean

class Center(BaseEstimator, TransformerMixin):
    def fit(self, X, y=None):
        self.mean_ = X.mean(axis=0)
        return self
    def transform(self, X):
        return center(X, self.mean_)

rng = np.random.default_rng(0)
X = rng.normal(size=(2000, 20)); y = (X[:, 0] > 0).astype(int)
notebook = make_pipeline(Center(), FunctionTransformer(lambda Z: np.tanh(Z * SCALE)),
                         LogisticRegression()).fit(X, y)
'''

WORKER = r'''
import json, pickle, sys, time
sys.path.insert(0, sys.argv[1])
import firkin, cloudpickle
values = pickle.load(open(sys.argv[2], "rb"))
exec(compile(sys.argv[3], "<notebook>", "exec"), vars(sys.modules["__main__"]))
values["notebook"] = notebook
for line in sys.stdin:
    name, n, how = line.split()
    fn = (lambda v: cloudpickle.dumps(v, protocol=5)) if how == "cloudpickle" else firkin.dumps
    v = values[name]
    fn(v)
    times = []
    for _ in range(int(n)):
        t0 = time.process_time(); fn(v); times.append(time.process_time() - t0)
    print(json.dumps(times), flush=True)
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    import bench  # noqa: PLC0415 - bench/bench.py builds the workloads

    size = "quick" if args.quick else "full"
    cache = os.path.join(HERE, ".cache", f"byvalue-cost-{size}.pkl")
    names = ["forest", "tfidf", "small_arrays"]
    if not os.path.exists(cache):
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        values = {n: bench.build_workload(n, bench.SIZES[size][n])[0] for n in names}
        with open(cache, "wb") as f:
            pickle.dump(values, f, protocol=5)
    workers = {}
    for label, path in (("base", args.base), ("new", args.new)):
        workers[label] = subprocess.Popen([sys.executable, "-c", WORKER, path, cache, NOTEBOOK],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(label, name, n, how="firkin"):
        w = workers[label]
        w.stdin.write(f"{name} {n} {how}\n")
        w.stdin.flush()
        return json.loads(w.stdout.readline())

    per = {"small_arrays": 1, "tfidf": 1, "forest": 3, "notebook": 20}
    rows = []
    for name in names + ["notebook"]:
        times = {"base": [], "new": []}
        ratios = []
        for r in range(args.rounds):
            order = ("base", "new") if r % 2 == 0 else ("new", "base")
            got = {label: statistics.median(ask(label, name, per[name])) for label in order}
            for label in order:
                times[label].append(got[label])
            ratios.append(got["new"] / got["base"])
        row = {"workload": name, "base_ms": 1e3 * statistics.median(times["base"]),
               "new_ms": 1e3 * statistics.median(times["new"]), "ratio": statistics.median(ratios)}
        if name == "notebook":
            row["cloudpickle_ms"] = 1e3 * statistics.median(
                statistics.median(ask("new", name, per[name], "cloudpickle")) for _ in range(args.rounds))
        rows.append(row)
        print(json.dumps(row), flush=True)
    for w in workers.values():
        w.stdin.close()
        w.wait()
    print("\n| workload | base ms | new ms | new/base (median of rounds) |\n|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['workload']} | {row['base_ms']:.1f} | {row['new_ms']:.1f} | {row['ratio']:.3f} |")


if __name__ == "__main__":
    main()
