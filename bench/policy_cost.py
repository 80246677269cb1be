#!/usr/bin/env python
"""The trust policy's cost on load, in process CPU time.

    python bench/policy_cost.py FILE [PAIRS]
    python bench/policy_cost.py --rss FILE [RUNS]

Loads FILE (firkin, joblib or pickle) with trusted=True and with the default
policy (static scan + find_class), alternating, PAIRS times (default 30),
and prints the medians and their ratio. CPU time of this process, so that
the page cache and other processes on a shared machine weigh less than in
bench.py's wall-clock rows. Make the files with bench.py (its --dir keeps
them) or firkin.dump / joblib.dump of the workload.

--rss: the peak RSS each way instead, each load in a fresh interpreter
(ru_maxrss after the load minus before it, after the imports), RUNS times
each (default 3), medians. Compressed joblib files are decompressed whole
before the policy judges them: this shows what that costs in memory.
"""
import gc
import json
import statistics
import subprocess
import sys
import time

import firkin

RSS_CHILD = """
import resource, sys
import firkin, firkin._joblib
path, trusted = sys.argv[1], sys.argv[2] == "1"
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
value = firkin.load(path, trusted=True) if trusted else firkin.load(path)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def peak_rss(path: str, runs: int):
    got = {True: [], False: []}
    for _ in range(runs):
        for trusted in (True, False):
            out = subprocess.run([sys.executable, "-c", RSS_CHILD, path, "1" if trusted else "0"],
                                 check=True, capture_output=True, text=True).stdout
            got[trusted].append(int(out.split()[-1]) * 1024)  # ru_maxrss: KiB on Linux
    a, b = statistics.median(got[True]), statistics.median(got[False])
    mb = 1 << 20
    print(json.dumps({"file": path, "runs": runs, "trusted_peak_mb": round(a / mb, 1),
                      "policy_peak_mb": round(b / mb, 1), "ratio": round(b / a, 3)}))


def main():
    if sys.argv[1] == "--rss":
        peak_rss(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 3)
        return
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
