"""What the model signature (always recorded) and a check sample (opt-in)
cost a dump, on bench.py's forest and pipeline workloads.

    python bench/model_signature_cost.py [--repeat N]

Prints, per workload: the median CPU time of firkin._model.signatures(),
of a whole dump to a file (fsync and rename included; the signature is part
of it), and of a dump with check_data= (1,000 rows), over interleaved runs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import firkin
from firkin import _model

import workloads  # the workloads, built as bench.py builds them


def cpu(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    from sklearn.datasets import make_classification

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.firkin")
        for name in ("forest", "pipeline"):
            p = workloads.SIZES["full"][name]
            value, _ = workloads.WORKLOADS[name].build(p)
            X, _ = make_classification(n_samples=1000, n_features=p["n_features"], random_state=1)
            sig = cpu(lambda v=value: _model.signatures(v), args.repeat * 20)
            plain = cpu(lambda v=value: firkin.dump(v, path), args.repeat)
            checked = cpu(lambda v=value, x=X: firkin.dump(v, path, check_data=x), args.repeat)
            print(f"{name:9} signatures() {sig * 1e6:8.1f} us   dump {plain * 1e3:8.2f} ms "
                  f"(signature {sig / plain:.2%} of it)   dump with check_data "
                  f"{checked * 1e3:8.2f} ms ({checked / plain:.2f}x)")


if __name__ == "__main__":
    main()
