#!/usr/bin/env python
"""The trust policy's cost on load, in process CPU time.

    python bench/policy_cost.py FILE [PAIRS]

Loads FILE (firkin, joblib or pickle) with trusted=True and with the default
policy (static scan + find_class), alternating, PAIRS times (default 30),
and prints the medians and their ratio. CPU time of this process, so that
the page cache and other processes on a shared machine weigh less than in
bench.py's wall-clock rows. Make the files with bench.py (its --dir keeps
them) or firkin.dump / joblib.dump of the workload.
"""
import gc
import statistics
import sys
import time

import firkin


def main():
    path = sys.argv[1]
    pairs = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    firkin.load(path)  # warm up: imports, page cache
    firkin.load(path, trusted=True)
    trusted, default = [], []
    gc.disable()
    for _ in range(pairs):
        t0 = time.process_time()
        firkin.load(path, trusted=True)
        trusted.append(time.process_time() - t0)
        t0 = time.process_time()
        firkin.load(path)
        default.append(time.process_time() - t0)
    a, b = statistics.median(trusted), statistics.median(default)
    print(f"{path}: trusted=True {a * 1e3:.1f} ms, default policy {b * 1e3:.1f} ms: "
          f"{b / a:.3f}x ({pairs} pairs)")


if __name__ == "__main__":
    main()
