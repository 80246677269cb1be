#!/usr/bin/env python
"""Plot the compression suite: throughput vs compression ratio per codec and level.

    python bench/plot.py                                   # bench/results/compress.json -> docs/compression.png
    python bench/plot.py bench/results/compress-quick.json --out /tmp/compression.png

One row per workload, two panels: dump MB/s and load MB/s (raw bytes / median
time, raw = size of the uncompressed firkin file, log scale) against the
compression ratio (raw bytes / file size). firkin points are filled and labelled
with their level; joblib points are hollow squares. Needs matplotlib (Agg
backend, no display).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

COLORS = {"none": "black", "zlib": "tab:blue", "zstd": "tab:orange", "lz4": "tab:green",
          "bz2": "tab:red", "xz": "tab:purple"}


def label(row: dict) -> str:
    if row["codec"] == "none":
        return "none"
    if row["lib"] == "joblib":
        return "joblib " + (f"{row['codec']} {row['level']}" if row["level"] is not None
                            else row["codec"])
    return str(row["level"])


def plot(data: dict, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    results = data["results"]
    if not results:
        raise SystemExit("no workloads in the results file")
    fig, axes = plt.subplots(len(results), 2, figsize=(12, 3.4 * len(results)), squeeze=False)
    for i, w in enumerate(results):
        for j, op in enumerate(("dump", "load")):
            ax = axes[i][j]
            for r in w["contenders"]:
                x, y = r.get("ratio"), r.get(f"{op}_MBps")
                if x is None or y is None:
                    continue
                color = COLORS.get(r["codec"], "gray")
                if r["lib"] == "joblib":
                    ax.scatter([x], [y], s=70, marker="s", facecolors="none", edgecolors=color,
                               linewidths=1.5, zorder=3)
                else:
                    ax.scatter([x], [y], s=45, marker="o", color=color, zorder=3)
                ax.annotate(label(r), (x, y), textcoords="offset points", xytext=(5, 4),
                            fontsize=7, color=color)
            for codec in COLORS:  # join a codec's firkin levels, in level order
                pts = sorted((r["level"], r["ratio"], r[f"{op}_MBps"]) for r in w["contenders"]
                             if r["lib"] == "firkin" and r["codec"] == codec
                             and r.get("ratio") is not None and r.get(f"{op}_MBps") is not None)
                if len(pts) > 1:
                    ax.plot([p[1] for p in pts], [p[2] for p in pts], color=COLORS[codec], alpha=0.35, linewidth=1, zorder=2)
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
            raw = w.get("raw_bytes")
            ax.set_title(f"{w['workload']} ({raw / 1e6:.{0 if raw >= 1e7 else 1}f} MB raw): {op}" if raw else
                         f"{w['workload']}: {op}", fontsize=10)
            ax.set_xlabel("compression ratio (raw / file size)")
            ax.set_ylabel(f"{op} MB/s (raw / time)")
    handles = [Line2D([], [], marker="o", linestyle="", color=c, label=f"firkin {k}")
               for k, c in COLORS.items()]
    handles.append(Line2D([], [], marker="s", linestyle="", markerfacecolor="none",
                          markeredgecolor="gray", label="joblib (hollow)"))
    meta = data.get("meta", {})
    height = fig.get_figheight()
    fig.suptitle(f"firkin compression ({meta.get('size', '?')} run, {meta.get('cpu_count', '?')} CPUs, "
                 f"{meta.get('started', '')}; firkin threads = all cores)",
                 y=1 - 0.08 / height, va="top", fontsize=10)
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8,
               bbox_to_anchor=(0.5, 1 - 0.35 / height), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.7 / height))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="?", default=os.path.join(HERE, "results", "compress.json"),
                    help="compress-suite results (default bench/results/compress.json)")
    ap.add_argument("--out", default=os.path.join(REPO, "docs", "compression.png"),
                    help="PNG to write (default docs/compression.png)")
    args = ap.parse_args(argv)
    with open(args.results) as f:
        data = json.load(f)
    plot(data, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
